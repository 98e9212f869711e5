//! The `vlan` CNI plugin executable.

fn main() {
    cni::plugins::main("vlan")
}
