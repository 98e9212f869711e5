//! The `bridge` CNI plugin executable.

fn main() {
    cni::plugins::main("bridge")
}
