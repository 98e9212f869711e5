//! The `bandwidth` CNI plugin executable.

fn main() {
    cni::plugins::main("bandwidth")
}
