//! Backends against the real kernel, each test in its own network namespace.

use flanneld::backend::{self, Local, Peer, PeerData};
use kernel::Netlink;
use serde_json::json;
use std::process::Command;

/// Runs `f` on a thread in a fresh network namespace with a veth "underlay" `ul0` (192.0.2.1/24).
fn in_netns<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    testkit::require_root();
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let nl = Netlink::current().unwrap();
            let me = kernel::Netns::current().unwrap();
            nl.create_veth(&kernel::link::VethSpec {
                host_name: "ul0",
                peer_name: "ul0p",
                peer_netns_fd: me.raw_fd(),
                mtu: Some(1500),
                peer_mac: None,
                controller: None,
            })
            .await
            .unwrap();
            let ul = nl.link_by_name("ul0").await.unwrap().unwrap();
            let p = nl.link_by_name("ul0p").await.unwrap().unwrap();
            nl.set_up(p.index).await.unwrap();
            nl.add_address(ul.index, "192.0.2.1/24".parse().unwrap())
                .await
                .unwrap();
            f().await;
        });
    })
    .join()
    .unwrap();
}

fn local(index: u32) -> Local {
    Local {
        network: Some("10.244.0.0/16".parse().unwrap()),
        ipv6_network: None,
        subnet: Some("10.244.1.0/24".parse().unwrap()),
        ipv6_subnet: None,
        ext_index: index,
        ext_name: "ul0".into(),
        ext_mtu: 1500,
        iface_addr: Some("192.0.2.1".parse().unwrap()),
        iface_v6_addr: None,
        public_ip: Some("192.0.2.1".parse().unwrap()),
        public_ipv6: None,
    }
}

fn vx_peer(n: u8, public: &str, mac: &str) -> Peer {
    Peer {
        subnet: Some(format!("10.244.{n}.0/24").parse().unwrap()),
        ipv6_subnet: None,
        public_ip: Some(public.parse().unwrap()),
        public_ipv6: None,
        data: PeerData::Vtep {
            v4: kernel::Mac::parse(mac),
            v6: None,
        },
    }
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn vxlan_programs_and_prunes_peers() {
    in_netns(|| async {
        let nl = Netlink::current().unwrap();
        let ul = nl.link_by_name("ul0").await.unwrap().unwrap();
        // Before the lease exists (as in the daemon) the device is made but carries no address yet.
        let mut before = local(ul.index);
        before.subnet = None;
        let mut b = backend::build("vxlan", &json!({"Type": "vxlan"}), &before).unwrap();
        let p = b.setup(&nl).await.unwrap();
        assert!(
            p.backend_data.is_some(),
            "VtepMAC must be known before the lease is acquired"
        );
        assert!(!ip(&["addr", "show", "flannel.1"]).contains("10.244.1.0/32"));
        b.set_lease(&nl, &local(ul.index)).await.unwrap();
        assert_eq!(p.mtu, 1450);
        assert_eq!(p.backend_type, "vxlan");
        let mac = p.backend_data.as_ref().unwrap().to_value()["VtepMAC"]
            .as_str()
            .unwrap()
            .to_string();
        let d = ip(&["-d", "link", "show", "flannel.1"]);
        assert!(d.contains("vxlan id 1 local 192.0.2.1 dev ul0"), "{d}");
        assert!(
            d.contains("dstport 8472") && d.contains("nolearning"),
            "{d}"
        );
        assert!(ip(&["addr", "show", "flannel.1"]).contains("10.244.1.0/32"));

        let own = Peer {
            subnet: Some("10.244.1.0/24".parse().unwrap()),
            ..vx_peer(1, "192.0.2.1", &mac)
        };
        let peers = vec![
            own.clone(),
            vx_peer(2, "192.0.2.2", "0e:00:00:00:00:02"),
            vx_peer(3, "198.51.100.3", "0e:00:00:00:00:03"),
        ];
        let r = b.reconcile(&nl, &peers).await.unwrap();
        assert_eq!(r.added, 6);
        let routes = ip(&["route", "show", "dev", "flannel.1"]);
        assert!(
            routes.contains("10.244.2.0/24 via 10.244.2.0 proto 121 onlink"),
            "{routes}"
        );
        assert!(
            routes.contains("10.244.3.0/24 via 10.244.3.0 proto 121 onlink"),
            "{routes}"
        );
        assert!(
            !routes.contains("10.244.1.0/24"),
            "own subnet must not be routed: {routes}"
        );
        let neigh = ip(&["neigh", "show", "dev", "flannel.1"]);
        assert!(
            neigh.contains("10.244.2.0 lladdr 0e:00:00:00:00:02 PERMANENT"),
            "{neigh}"
        );
        let fdb = Command::new("bridge")
            .args(["fdb", "show", "dev", "flannel.1"])
            .output()
            .unwrap();
        let fdb = String::from_utf8_lossy(&fdb.stdout);
        assert!(
            fdb.contains("0e:00:00:00:00:03 dst 198.51.100.3 self permanent"),
            "{fdb}"
        );

        // Same desired state: nothing to do.
        assert_eq!(b.reconcile(&nl, &peers).await.unwrap().added, 0);

        // Peer 3 left, peer 2 changed MAC: old entries go, new ones come.
        let peers2 = vec![own, vx_peer(2, "192.0.2.2", "0e:00:00:00:00:22")];
        let r = b.reconcile(&nl, &peers2).await.unwrap();
        assert!(r.removed >= 3, "{r:?}");
        let routes = ip(&["route", "show", "dev", "flannel.1"]);
        assert!(!routes.contains("10.244.3.0"), "{routes}");
        let neigh = ip(&["neigh", "show", "dev", "flannel.1"]);
        assert!(
            neigh.contains("0e:00:00:00:00:22") && !neigh.contains("0e:00:00:00:00:02 "),
            "{neigh}"
        );
        let fdb = Command::new("bridge")
            .args(["fdb", "show", "dev", "flannel.1"])
            .output()
            .unwrap();
        let fdb = String::from_utf8_lossy(&fdb.stdout);
        assert!(
            !fdb.contains("198.51.100.3") && !fdb.contains("0e:00:00:00:00:02 "),
            "{fdb}"
        );

        // A route someone else added outside the flannel network is left alone.
        assert!(Command::new("ip")
            .args(["route", "add", "203.0.113.0/24", "dev", "flannel.1"])
            .status()
            .unwrap()
            .success());
        b.reconcile(&nl, &[]).await.unwrap();
        assert!(ip(&["route", "show", "dev", "flannel.1"]).contains("203.0.113.0/24"));

        // Restart: a new backend adopts the device with the same MAC.
        let mut b2 = backend::build("vxlan", &json!({}), &local(ul.index)).unwrap();
        let p2 = b2.setup(&nl).await.unwrap();
        assert_eq!(
            p2.backend_data.unwrap().to_value()["VtepMAC"]
                .as_str()
                .unwrap(),
            mac
        );
    });
}

fn vxlan_direct_routing_uses_host_route_on_same_segment() {
    in_netns(|| async {
        let nl = Netlink::current().unwrap();
        let ul = nl.link_by_name("ul0").await.unwrap().unwrap();
        let mut b =
            backend::build("vxlan", &json!({"DirectRouting": true}), &local(ul.index)).unwrap();
        b.setup(&nl).await.unwrap();
        let peers = vec![
            vx_peer(2, "192.0.2.2", "0e:00:00:00:00:02"),
            vx_peer(3, "198.51.100.3", "0e:00:00:00:00:03"),
        ];
        b.reconcile(&nl, &peers).await.unwrap();
        let all = ip(&["route"]);
        assert!(all.contains("10.244.2.0/24 via 192.0.2.2 dev ul0"), "{all}");
        assert!(
            all.contains("10.244.3.0/24 via 10.244.3.0 dev flannel.1 proto 121 onlink"),
            "{all}"
        );
        b.reconcile(&nl, &[]).await.unwrap();
        assert!(!ip(&["route"]).contains("10.244.2.0/24"));
    });
}

fn host_gw_routes_and_nat_check() {
    in_netns(|| async {
        let nl = Netlink::current().unwrap();
        let ul = nl.link_by_name("ul0").await.unwrap().unwrap();
        let mut nat = local(ul.index);
        nat.public_ip = Some("198.51.100.9".parse().unwrap());
        let e = backend::build("host-gw", &json!({}), &nat)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("198.51.100.9") && e.contains("ul0"), "{e}");

        let mut b = backend::build("host-gw", &json!({}), &local(ul.index)).unwrap();
        assert_eq!(b.setup(&nl).await.unwrap().mtu, 1500);
        let mut p = vx_peer(2, "192.0.2.2", "");
        p.data = PeerData::None;
        b.reconcile(&nl, &[p.clone()]).await.unwrap();
        assert!(ip(&["route"]).contains("10.244.2.0/24 via 192.0.2.2 dev ul0"));
        // Stale route from a peer that left while we were down.
        assert!(Command::new("ip")
            .args([
                "route",
                "add",
                "10.244.7.0/24",
                "via",
                "192.0.2.7",
                "dev",
                "ul0"
            ])
            .status()
            .unwrap()
            .success());
        let r = b.reconcile(&nl, &[p]).await.unwrap();
        assert_eq!(r.removed, 1);
        assert!(!ip(&["route"]).contains("10.244.7.0"));
        // Admission: host-gw refuses a vxlan lease, and a peer that is not on our L2 segment.
        let lease = |ip: &str, kind: &str| {
            subnet::Lease::new(
                "10.244.4.0-24".parse().unwrap(),
                subnet::LeaseAttrs {
                    public_ip: ip.parse().unwrap(),
                    backend_type: kind.into(),
                    ..Default::default()
                },
                subnet::Expiration::Unknown,
                1,
            )
        };
        let mut peer = vx_peer(4, "192.0.2.4", "");
        let e = b
            .admit_peer(&lease("192.0.2.4", "vxlan"), &mut peer, &mut vec![])
            .unwrap_err();
        assert!(e.contains("this network runs host-gw"), "{e}");
        b.refresh(&nl).await.unwrap();
        assert_eq!(
            b.admit_peer(&lease("192.0.2.4", "host-gw"), &mut peer, &mut vec![]),
            Ok(())
        );
        let mut far = vx_peer(4, "198.51.100.4", "");
        let e = b
            .admit_peer(&lease("198.51.100.4", "host-gw"), &mut far, &mut vec![])
            .unwrap_err();
        assert!(e.contains("198.51.100.4") && e.contains("ul0"), "{e}");
    });
}

fn unknown_backend_is_named() {
    let e = backend::build("ipsec-ish", &json!({}), &local(1))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("ipsec-ish"), "{e}");
}

testkit::main!(
    vxlan_programs_and_prunes_peers,
    vxlan_direct_routing_uses_host_route_on_same_segment,
    host_gw_routes_and_nat_check,
    unknown_backend_is_named,
);
