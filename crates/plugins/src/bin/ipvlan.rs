//! The `ipvlan` CNI plugin executable.

fn main() {
    cni::plugins::main("ipvlan")
}
