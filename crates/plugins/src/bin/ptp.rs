//! The `ptp` CNI plugin executable.

fn main() {
    cni::plugins::main("ptp")
}
