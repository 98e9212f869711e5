//! The `portmap` CNI plugin executable.

fn main() {
    cni::plugins::main("portmap")
}
