//! The `tuning` CNI plugin executable.

fn main() {
    cni::plugins::main("tuning")
}
