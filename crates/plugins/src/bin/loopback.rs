//! The `loopback` CNI plugin executable.

fn main() {
    cni::plugins::main("loopback")
}
