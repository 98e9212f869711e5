//! The `flannel` CNI plugin executable.

fn main() {
    cni::plugins::main(cni::plugins::Builtin::Flannel)
}
