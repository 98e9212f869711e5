//! The `host-device` CNI plugin executable.

fn main() {
    cni::plugins::main("host-device")
}
