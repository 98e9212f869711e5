//! The `host-local` CNI plugin executable.

fn main() {
    cni::plugins::main(cni::plugins::Builtin::HostLocal)
}
