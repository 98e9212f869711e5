//! External interface selection against the real kernel. Each test runs in its own network namespace (a thread that
//! `unshare`s CLONE_NEWNET, with a current-thread tokio runtime), never in the root namespace.
//!
//! Topology in every namespace (veth pairs, as there is no `dummy` module here):
//!   ext0 (MTU 1500) 192.0.2.1/24, 2001:db8:1::1/64  <->  ext0p (up, no address)
//!   int0 (MTU 1400) 198.51.100.1/24, 198.51.100.2/24, 2001:db8:2::1/64  <->  int0p
//!   default via 192.0.2.254 dev ext0; default via 2001:db8:1::fe dev ext0

use flanneld::iface::{lookup, ExternalInterface, IfaceError, IpStack, SelectOptions};
use kernel::link::VethSpec;
use kernel::route::Route;
use kernel::{Netlink, Netns};
use nix::sched::CloneFlags;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Runs `f` in a fresh network namespace on its own thread and runtime.
fn in_netns<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    testkit::require_root();
    std::thread::spawn(move || {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET)
            .expect("unshare(CLONE_NEWNET) (these tests need root)");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(f())
    })
    .join()
    .expect("test thread panicked")
}

const IFA_F_TENTATIVE: u32 = 0x40;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

struct Topo {
    nl: Netlink,
    ext0: u32,
    int0: u32,
}

async fn veth(nl: &Netlink, ns: &Netns, name: &str, peer: &str, mtu: u32) -> u32 {
    nl.create_veth(&VethSpec {
        host_name: name,
        peer_name: peer,
        peer_netns_fd: ns.raw_fd(),
        mtu: Some(mtu),
        peer_mac: None,
        controller: None,
    })
    .await
    .unwrap();
    let a = nl.link_by_name(name).await.unwrap().unwrap().index;
    let b = nl.link_by_name(peer).await.unwrap().unwrap().index;
    nl.set_up(a).await.unwrap();
    nl.set_up(b).await.unwrap();
    a
}

async fn topo() -> Topo {
    // No duplicate address detection, so IPv6 addresses are usable (not tentative) at once.
    for scope in ["all", "default"] {
        kernel::sysctl::set(&["net", "ipv6", "conf", scope, "accept_dad"], "0").unwrap();
    }
    let nl = Netlink::current().unwrap();
    let ns = Netns::current().unwrap();
    let ext0 = veth(&nl, &ns, "ext0", "ext0p", 1500).await;
    let int0 = veth(&nl, &ns, "int0", "int0p", 1400).await;
    for (idx, a) in [
        (ext0, "192.0.2.1/24"),
        (ext0, "2001:db8:1::1/64"),
        (int0, "198.51.100.1/24"),
        (int0, "198.51.100.2/24"),
        (int0, "2001:db8:2::1/64"),
    ] {
        nl.add_address(idx, a.parse().unwrap()).await.unwrap();
    }
    // Even without DAD an IPv6 address is tentative until the kernel's address work runs after carrier is up.
    for _ in 0..500 {
        let mut tentative = false;
        for idx in [ext0, int0] {
            for a in nl.addresses(idx).await.unwrap() {
                tentative |= a.net.addr().is_ipv6() && a.flags() & IFA_F_TENTATIVE != 0;
            }
        }
        if !tentative {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    nl.add_route(
        &Route::new("0.0.0.0/0".parse().unwrap())
            .via(ip("192.0.2.254"))
            .dev(ext0),
        false,
    )
    .await
    .unwrap();
    nl.add_route(
        &Route::new("::/0".parse().unwrap())
            .via(ip("2001:db8:1::fe"))
            .dev(ext0),
        false,
    )
    .await
    .unwrap();
    Topo { nl, ext0, int0 }
}

fn opts() -> SelectOptions {
    SelectOptions::default()
}

async fn pick(t: &Topo, o: &SelectOptions, stack: IpStack) -> ExternalInterface {
    match lookup(&t.nl, o, stack).await {
        Ok(e) => e,
        Err(e) => panic!("{o:?} {stack:?}: {e}"),
    }
}

fn default_route_interface() {
    in_netns(|| async {
        let t = topo().await;
        let e = pick(&t, &opts(), IpStack::V4).await;
        assert_eq!(
            e,
            ExternalInterface {
                index: t.ext0,
                name: "ext0".into(),
                mtu: 1500,
                iface_addr: Some(Ipv4Addr::new(192, 0, 2, 1)),
                iface_v6_addr: None,
                ext_addr: Some(Ipv4Addr::new(192, 0, 2, 1)),
                ext_v6_addr: None,
            }
        );
        let e = pick(&t, &opts(), IpStack::V6).await;
        assert_eq!(e.name, "ext0");
        assert_eq!(e.iface_v6_addr, Some("2001:db8:1::1".parse().unwrap()));
        assert_eq!(e.ext_v6_addr, e.iface_v6_addr);
        assert_eq!(e.iface_addr, None);
        let e = pick(&t, &opts(), IpStack::Dual).await;
        assert_eq!(e.name, "ext0");
        assert_eq!(e.iface_addr, Some(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(e.iface_v6_addr, Some("2001:db8:1::1".parse().unwrap()));
    });
}

fn dual_stack_default_routes_must_share_the_interface() {
    in_netns(|| async {
        let t = topo().await;
        t.nl.delete_route(
            &Route::new("::/0".parse().unwrap())
                .via(ip("2001:db8:1::fe"))
                .dev(t.ext0),
        )
        .await
        .unwrap();
        t.nl.add_route(
            &Route::new("::/0".parse().unwrap())
                .via(ip("2001:db8:2::fe"))
                .dev(t.int0),
            false,
        )
        .await
        .unwrap();
        let e = lookup(&t.nl, &opts(), IpStack::Dual).await.unwrap_err();
        assert!(
            matches!(&e, IfaceError::DualStackMismatch { v4, v6 } if v4 == "ext0" && v6 == "int0"),
            "{e}"
        );
        assert_eq!(pick(&t, &opts(), IpStack::V6).await.name, "int0");
    });
}

fn no_default_route() {
    in_netns(|| async {
        let t = topo().await;
        t.nl.delete_route(
            &Route::new("0.0.0.0/0".parse().unwrap())
                .via(ip("192.0.2.254"))
                .dev(t.ext0),
        )
        .await
        .unwrap();
        let e = lookup(&t.nl, &opts(), IpStack::V4).await.unwrap_err();
        assert!(
            matches!(e, IfaceError::NoDefaultRoute { ipv6: false }),
            "{e}"
        );
        assert!(e.to_string().contains("IPv4 default route"));
    });
}

fn iface_by_name_and_ip() {
    in_netns(|| async {
        let t = topo().await;
        let mut o = opts();
        o.ifaces = vec!["int0".into()];
        let e = pick(&t, &o, IpStack::V4).await;
        assert_eq!((e.index, e.mtu), (t.int0, 1400));
        assert_eq!(e.iface_addr, Some(Ipv4Addr::new(198, 51, 100, 1)));

        // By IP: the given (second) address is used.
        o.ifaces = vec!["198.51.100.2".into()];
        let e = pick(&t, &o, IpStack::V4).await;
        assert_eq!(e.name, "int0");
        assert_eq!(e.iface_addr, Some(Ipv4Addr::new(198, 51, 100, 2)));
        assert_eq!(e.ext_addr, e.iface_addr);

        // In order: missing name, missing IP, then a match.
        o.ifaces = vec!["eth9".into(), "203.0.113.1".into(), "ext0".into()];
        assert_eq!(pick(&t, &o, IpStack::V4).await.name, "ext0");

        // Dual-stack by IPv6 address.
        o.ifaces = vec!["2001:db8:2::1".into()];
        let e = pick(&t, &o, IpStack::Dual).await;
        assert_eq!(e.name, "int0");
        assert_eq!(e.iface_v6_addr, Some("2001:db8:2::1".parse().unwrap()));
        assert_eq!(e.iface_addr, Some(Ipv4Addr::new(198, 51, 100, 1)));

        // Nothing matches: every attempt is named.
        o.ifaces = vec!["eth9".into(), "203.0.113.1".into()];
        o.iface_regexes = vec!["^wlan".into()];
        let s = lookup(&t.nl, &o, IpStack::V4)
            .await
            .unwrap_err()
            .to_string();
        for part in [
            "--iface=eth9",
            "no interface named \"eth9\"",
            "--iface=203.0.113.1",
            "no interface has the address 203.0.113.1",
            "--iface-regex=^wlan",
            "ext0:[192.0.2.1]",
        ] {
            assert!(s.contains(part), "{part:?} missing in: {s}");
        }
        // The peers have no IPv4 address: skipped for the next candidate.
        o.ifaces = vec!["int0p".into(), "int0".into()];
        o.iface_regexes.clear();
        assert_eq!(pick(&t, &o, IpStack::V4).await.name, "int0");
    });
}

fn iface_regex_addresses_then_names() {
    in_netns(|| async {
        let t = topo().await;
        let mut o = opts();
        o.iface_regexes = vec![r"^198\.51\.100\.2$".into()];
        let e = pick(&t, &o, IpStack::V4).await;
        assert_eq!(e.name, "int0");
        assert_eq!(e.iface_addr, Some(Ipv4Addr::new(198, 51, 100, 2)));

        o.iface_regexes = vec![r"^int\d$".into()];
        let e = pick(&t, &o, IpStack::V4).await;
        assert_eq!(e.name, "int0");
        assert_eq!(e.iface_addr, Some(Ipv4Addr::new(198, 51, 100, 1)));

        o.iface_regexes = vec![r"^2001:db8:2::".into()];
        let e = pick(&t, &o, IpStack::V6).await;
        assert_eq!(e.name, "int0");
        assert_eq!(e.iface_v6_addr, Some("2001:db8:2::1".parse().unwrap()));

        // --iface is tried first, then the regexes in order.
        o.ifaces = vec!["nope".into()];
        o.iface_regexes = vec!["^nothing$".into(), "^ext".into()];
        assert_eq!(pick(&t, &o, IpStack::V4).await.name, "ext0");
    });
}

fn iface_can_reach() {
    in_netns(|| async {
        let t = topo().await;
        // The kernel layer's `ip route get`.
        let r = t.nl.route_get(ip("198.51.100.77")).await.unwrap();
        assert_eq!(r.oif, Some(t.int0));
        assert_eq!(r.src, Some(ip("198.51.100.1")));
        let r = t.nl.route_get(ip("203.0.113.9")).await.unwrap();
        assert_eq!((r.oif, r.gateway), (Some(t.ext0), Some(ip("192.0.2.254"))));

        let mut o = opts();
        o.can_reach = Some(ip("198.51.100.77"));
        let e = pick(&t, &o, IpStack::V4).await;
        assert_eq!(e.name, "int0");
        assert_eq!(e.iface_addr, Some(Ipv4Addr::new(198, 51, 100, 1)));

        o.can_reach = Some(ip("203.0.113.9"));
        let e = pick(&t, &o, IpStack::V4).await;
        assert_eq!(e.name, "ext0");
        assert_eq!(e.iface_addr, Some(Ipv4Addr::new(192, 0, 2, 1)));

        o.can_reach = Some(ip("2001:db8:2::77"));
        let e = pick(&t, &o, IpStack::Dual).await;
        assert_eq!(e.name, "int0");
        assert_eq!(e.iface_v6_addr, Some("2001:db8:2::1".parse().unwrap()));
        assert_eq!(e.iface_addr, Some(Ipv4Addr::new(198, 51, 100, 1)));

        // Unreachable: the error names the address and the kernel's reason.
        t.nl.delete_route(
            &Route::new("0.0.0.0/0".parse().unwrap())
                .via(ip("192.0.2.254"))
                .dev(t.ext0),
        )
        .await
        .unwrap();
        o.can_reach = Some(ip("203.0.113.9"));
        let s = lookup(&t.nl, &o, IpStack::V4)
            .await
            .unwrap_err()
            .to_string();
        assert!(s.contains("--iface-can-reach=203.0.113.9"), "{s}");
        assert!(s.contains("unreachable"), "{s}");
    });
}

fn public_ip() {
    in_netns(|| async {
        let t = topo().await;
        let mut o = opts();
        // Local: that interface and that address (upstream looks the interface up by the public IP).
        o.public_ip = Some(Ipv4Addr::new(198, 51, 100, 2));
        let e = pick(&t, &o, IpStack::V4).await;
        assert_eq!(e.name, "int0");
        assert_eq!(e.iface_addr, Some(Ipv4Addr::new(198, 51, 100, 2)));
        assert_eq!(e.ext_addr, Some(Ipv4Addr::new(198, 51, 100, 2)));

        // Not local (NAT): the default route's interface, the public address published.
        o.public_ip = Some(Ipv4Addr::new(203, 0, 113, 50));
        o.public_ipv6 = Some(Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 50));
        let e = pick(&t, &o, IpStack::Dual).await;
        assert_eq!(e.name, "ext0");
        assert_eq!(e.iface_addr, Some(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(e.ext_addr, Some(Ipv4Addr::new(203, 0, 113, 50)));
        assert_eq!(e.ext_v6_addr, o.public_ipv6);

        // With --iface the public IP only changes what is published.
        o.ifaces = vec!["int0".into()];
        let e = pick(&t, &o, IpStack::V4).await;
        assert_eq!(e.name, "int0");
        assert_eq!(e.iface_addr, Some(Ipv4Addr::new(198, 51, 100, 1)));
        assert_eq!(e.ext_addr, Some(Ipv4Addr::new(203, 0, 113, 50)));
    });
}

fn from_command_line() {
    in_netns(|| async {
        let t = topo().await;
        let cli = flanneld::cli::parse_from(
            ["flanneld", "-iface=eth9", "-iface-regex", r"^198\.51"],
            |k| (k == "FLANNELD_PUBLIC_IP").then(|| "203.0.113.7".to_string()),
        )
        .unwrap();
        let e = pick(&t, &SelectOptions::from_cli(&cli), IpStack::V4).await;
        assert_eq!(e.name, "int0");
        assert_eq!(e.ext_addr, Some(Ipv4Addr::new(203, 0, 113, 7)));
    });
}

testkit::main!(
    default_route_interface,
    dual_stack_default_routes_must_share_the_interface,
    no_default_route,
    iface_by_name_and_ip,
    iface_regex_addresses_then_names,
    iface_can_reach,
    public_ip,
    from_command_line,
);
