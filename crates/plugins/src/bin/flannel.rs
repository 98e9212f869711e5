//! The `flannel` CNI plugin executable.

fn main() {
    cni::plugins::main("flannel")
}
