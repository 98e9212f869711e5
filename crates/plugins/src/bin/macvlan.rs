//! The `macvlan` CNI plugin executable.

fn main() {
    cni::plugins::main("macvlan")
}
