//! The `host-local` CNI plugin executable.

fn main() {
    cni::plugins::main("host-local")
}
