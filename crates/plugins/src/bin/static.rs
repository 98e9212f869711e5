//! The `static` CNI plugin executable.

fn main() {
    cni::plugins::main("static")
}
