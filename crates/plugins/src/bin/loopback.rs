//! The `loopback` CNI plugin executable.

fn main() {
    cni::plugins::main(cni::plugins::Builtin::Loopback)
}
