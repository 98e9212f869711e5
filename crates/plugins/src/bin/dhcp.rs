//! The `dhcp` CNI plugin executable; `dhcp daemon` runs its daemon.

fn main() {
    cni::plugins::dhcp::main()
}
