//! Apply-layer test of multipath routes in a fresh network namespace (prefix
//! `prt<pid>-`, removed on drop, also when the test panics). Needs root and `ip`, used
//! only to set up a link and to read the route back independently of the code under test.

use podnet_netlink::{MultipathRouteSpec, Netlink, NextHop, Op, netns};
use std::process::Command;

struct Namespace(String);

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = netns::delete_named(&self.0);
    }
}

fn ip(ns: &str, args: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", ns])
        .args(args.split_whitespace())
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip -n {ns} {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_multipath_route_has_every_next_hop() {
    assert!(nix::unistd::geteuid().is_root(), "needs root (no skipping)");
    let ns = Namespace(format!("prt{}-a", std::process::id()));
    let _ = netns::delete_named(&ns.0);
    netns::create_named(&ns.0).expect("create namespace");
    ip(&ns.0, "link add a0 type veth peer name a1");
    ip(&ns.0, "addr add 10.78.0.1/24 dev a0");
    ip(&ns.0, "link set a0 up");
    ip(&ns.0, "link set a1 up");

    let mut nl = Netlink::open_in(netns::open(netns::named_path(&ns.0)).unwrap()).unwrap();
    let a0 = nl.link_by_name("a0").unwrap().expect("a0");
    let route = MultipathRouteSpec {
        dst: "10.79.0.0/24".parse().unwrap(),
        nexthops: ["10.78.0.11", "10.78.0.12"]
            .iter()
            .map(|g| NextHop {
                gateway: g.parse().unwrap(),
                oif: a0.index,
            })
            .collect(),
    };
    nl.run(Op::add_multipath_route(&route)).unwrap();
    let shown = ip(&ns.0, "route show 10.79.0.0/24");
    for hop in [
        "nexthop via 10.78.0.11 dev a0",
        "nexthop via 10.78.0.12 dev a0",
    ] {
        assert!(shown.contains(hop), "{hop} missing in\n{shown}");
    }
    // A second add of the same destination is refused, typed.
    assert!(matches!(
        nl.run(Op::add_multipath_route(&route)),
        Err(podnet_netlink::Error::Exists { .. })
    ));
}
