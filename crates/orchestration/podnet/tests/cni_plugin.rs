//! Integration: the `podnet` binary as a CNI plugin, exec'd like a runtime execs it,
//! against real network namespaces, netlink and files. Needs root; never skips.

mod common;

use common::*;
use std::collections::BTreeSet;

#[test]
fn add_then_tcp_between_pods_then_check_then_del() {
    let mut node = Node::new();
    let conf = node.v4_conf();
    let (pa, pb) = (node.pod("a"), node.pod("b"));
    let ra = node.add(&conf, "ctr-a", &pa);
    let rb = node.add(&conf, "ctr-b", &pb);
    let (ip_a, ip_b) = (ra.first_ip(), rb.first_ip());
    assert_eq!(ip_a.to_string(), "10.99.0.2");
    assert_eq!(ip_b.to_string(), "10.99.0.3");

    let result = ra.ok();
    assert_eq!(result["cniVersion"], "1.1.0");
    let ifaces = result["interfaces"].as_array().unwrap();
    assert_eq!(
        ifaces.len(),
        3,
        "bridge, host veth, pod interface: {result}"
    );
    assert_eq!(ifaces[0]["name"], "pnbr0");
    assert_eq!(ifaces[2]["name"], "eth0");
    assert_eq!(ifaces[2]["sandbox"], pa.to_str().unwrap());
    assert!(ifaces[0].get("sandbox").is_none());
    assert_eq!(result["ips"][0]["gateway"], "10.99.0.1");
    assert_eq!(result["ips"][0]["interface"], 2);
    assert_eq!(result["routes"][0]["dst"], "0.0.0.0/0");

    // Real TCP, and no NAT: the server sees the client's pod IP.
    let server = serve_once(&pa, ip_a, 7001);
    assert_eq!(
        connect_from(&pb, ip_a, 7001).unwrap(),
        format!("peer={ip_b}")
    );
    server.join().unwrap();
    // The node reaches a pod through the bridge's gateway address.
    let server = serve_once(&pa, ip_a, 7002);
    assert_eq!(
        connect_from(&node.node, ip_a, 7002).unwrap(),
        "peer=10.99.0.1"
    );
    server.join().unwrap();

    // Bridge port settings.
    let mut nl = node.netlink();
    let bridge = nl.link_by_name("pnbr0").unwrap().unwrap();
    let veth = &result["interfaces"][1]["name"];
    let host = nl.link_by_name(veth.as_str().unwrap()).unwrap().unwrap();
    assert_eq!(host.master, Some(bridge.index));
    assert!(host.up && bridge.up);

    let check_conf = with_prev(&conf, &result);
    node.plugin(&attach_env("CHECK", "ctr-a", &pa), &check_conf)
        .ok();

    node.del(&conf, "ctr-a", &pa).ok();
    node.del(&conf, "ctr-a", &pa).ok(); // twice: still fine
    node.del(&conf, "ctr-b", &pb).ok();
    assert!(
        node.allocations().is_empty(),
        "allocations left: {:?}",
        node.allocations()
    );
    assert!(
        node.host_veths().is_empty(),
        "veths left: {:?}",
        node.host_veths()
    );
    // The pod namespace is clean again: no eth0.
    let mut pod_nl =
        podnet_netlink::Netlink::open_in(podnet_netlink::netns::open(&pa).unwrap()).unwrap();
    assert!(pod_nl.link_by_name("eth0").unwrap().is_none());
    // The retired pairs are deleted in the background, soon.
    node.wait_reaped();
    assert!(pod_nl.links().unwrap().iter().all(|l| l.name == "lo"));
}

#[test]
fn del_frees_the_names_at_once_and_gc_deletes_pairs_a_reaper_left() {
    let mut node = Node::new();
    let conf = node.v4_conf();
    let pa = node.pod("a");
    // DEL then an immediate ADD of the same attachment in the same namespace: DEL has
    // already renamed both ends, so nothing collides with the pair still being reaped.
    let first = node.add(&conf, "ctr-a", &pa).first_ip().to_string();
    node.del(&conf, "ctr-a", &pa).ok();
    let again = node.add(&conf, "ctr-a", &pa);
    assert_ne!(again.first_ip().to_string(), first, "round robin");
    let pb = node.pod("b");
    let server = serve_once(&pa, again.first_ip(), 7100);
    node.add(&conf, "ctr-b", &pb);
    let reply = connect_from(&pb, again.first_ip(), 7100).unwrap();
    assert!(reply.starts_with("peer="), "{reply}");
    server.join().unwrap();
    node.del(&conf, "ctr-a", &pa).ok();
    node.del(&conf, "ctr-b", &pb).ok();
    node.wait_reaped();
    assert!(node.host_veths().is_empty());

    // A pair whose reaper died (made by hand here, with a retired name): GC deletes it.
    let tomb = podnet_cni_spec::naming::tombstone_name(&podnet_cni_spec::naming::host_veth_name(
        "dead", "eth0",
    ));
    let pc = node.pod("c");
    node.netlink()
        .create_veth(&podnet_netlink::VethSpec {
            name: &tomb,
            peer_name: "eth9",
            peer_netns: podnet_netlink::netns::open(&pc).unwrap(),
            mtu: None,
            peer_mac: None,
            master: None,
            up: false,
        })
        .unwrap();
    assert_eq!(node.retired_veths(), vec![tomb]);
    let mut gc: serde_json::Value = serde_json::from_str(&conf).unwrap();
    gc["cni.dev/valid-attachments"] = serde_json::json!([]);
    node.plugin(
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")],
        &gc.to_string(),
    )
    .ok();
    assert!(node.retired_veths().is_empty());
}

fn with_prev(conf: &str, result: &serde_json::Value) -> String {
    let mut c: serde_json::Value = serde_json::from_str(conf).unwrap();
    c["prevResult"] = result.clone();
    c.to_string()
}

#[test]
fn del_succeeds_when_the_namespace_is_already_gone() {
    let mut node = Node::new();
    let conf = node.v4_conf();
    let pa = node.pod("a");
    node.add(&conf, "ctr-a", &pa).ok();
    node.remove_pod(&pa);
    node.del(&conf, "ctr-a", &pa).ok();
    node.plugin(
        &[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "ctr-a"),
            ("CNI_IFNAME", "eth0"),
        ],
        &conf,
    )
    .ok();
    assert!(node.allocations().is_empty());
    assert!(node.host_veths().is_empty());
}

#[test]
fn repeated_add_returns_the_same_address() {
    let mut node = Node::new();
    let conf = node.v4_conf();
    let pa = node.pod("a");
    let first = node.add(&conf, "ctr-a", &pa).first_ip();
    let again = node.add(&conf, "ctr-a", &pa).first_ip();
    assert_eq!(first, again);
    assert_eq!(node.allocations().len(), 1);
    assert_eq!(node.host_veths().len(), 1);
}

#[test]
fn check_names_every_difference() {
    let mut node = Node::new();
    let conf = node.v4_conf();
    let pa = node.pod("a");
    let result = node.add(&conf, "ctr-a", &pa).ok();
    // Break it: drop the pod's address and take the host veth down.
    let status = std::process::Command::new("ip")
        .args([
            "-n",
            pa.file_name().unwrap().to_str().unwrap(),
            "addr",
            "flush",
            "dev",
            "eth0",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let mut nl = node.netlink();
    let host = nl
        .link_by_name(result["interfaces"][1]["name"].as_str().unwrap())
        .unwrap()
        .unwrap();
    nl.set_up(host.index, false).unwrap();
    let err = node
        .plugin(
            &attach_env("CHECK", "ctr-a", &pa),
            &with_prev(&conf, &result),
        )
        .err(100);
    let details = err["details"].as_str().unwrap();
    assert!(
        details.contains("address 10.99.0.2/24 is missing from eth0"),
        "{details}"
    );
    assert!(details.contains("is down"), "{details}");
    assert!(details.contains("route 0.0.0.0/0"), "{details}");
}

#[test]
fn hundred_concurrent_adds_get_distinct_addresses_and_del_frees_all() {
    let mut node = Node::new();
    let conf = node.v4_conf();
    let pods: Vec<_> = (0..100).map(|i| node.pod(&format!("p{i}"))).collect();
    let node = &node;
    let ips: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let conf = &conf;
                s.spawn(move || node.add(conf, &format!("c{i}"), ns).first_ip().to_string())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let distinct: BTreeSet<_> = ips.iter().collect();
    assert_eq!(distinct.len(), 100, "duplicate addresses: {ips:?}");
    assert_eq!(node.allocations().len(), 100);
    assert_eq!(node.host_veths().len(), 100);
    std::thread::scope(|s| {
        for (i, ns) in pods.iter().enumerate() {
            let conf = &conf;
            s.spawn(move || node.del(conf, &format!("c{i}"), ns).ok());
        }
    });
    assert!(node.allocations().is_empty());
    assert!(node.host_veths().is_empty());
    node.wait_reaped();
}

#[test]
fn killed_mid_add_leaves_no_duplicate_and_gc_recovers_the_leak() {
    let mut node = Node::new();
    let conf = node.v4_conf();
    let (p1, p2, p3, p4) = (node.pod("1"), node.pod("2"), node.pod("3"), node.pod("4"));
    for (id, ns, fault) in [("k1", &p1, "after-ipam"), ("k2", &p2, "after-veth")] {
        let mut env = attach_env("ADD", id, ns);
        env.push(("PODNET_CNI_FAULT", fault));
        let out = node.plugin(&env, &conf);
        assert_eq!(out.signal, Some(9), "expected SIGKILL at {fault}: {out:?}");
    }
    // Both reservations survived the kill; a veth was left by the second.
    let leaked: BTreeSet<String> = node.allocations().into_iter().map(|(ip, _)| ip).collect();
    assert_eq!(leaked.len(), 2);
    assert_eq!(node.host_veths().len(), 1);
    // New pods never get a leaked address.
    let ip3 = node.add(&conf, "c3", &p3).first_ip().to_string();
    let ip4 = node.add(&conf, "c4", &p4).first_ip().to_string();
    assert!(!leaked.contains(&ip3) && !leaked.contains(&ip4) && ip3 != ip4);
    // The runtime's retry of the killed ADD gets the address it had reserved.
    let retry = node.add(&conf, "k2", &p2).first_ip().to_string();
    assert!(leaked.contains(&retry));
    // GC with only c3 and c4 valid releases k1 and k2 and removes their veths.
    let mut gc: serde_json::Value = serde_json::from_str(&conf).unwrap();
    gc["cni.dev/valid-attachments"] = serde_json::json!([{"containerID": "c3", "ifname": "eth0"}, {"containerID": "c4", "ifname": "eth0"}]);
    node.plugin(
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")],
        &gc.to_string(),
    )
    .ok();
    let left: BTreeSet<String> = node.allocations().into_iter().map(|(_, c)| c).collect();
    assert_eq!(
        left,
        ["c3".to_string(), "c4".to_string()].into_iter().collect()
    );
    assert_eq!(node.host_veths().len(), 2);
}

#[test]
fn dual_stack_pods_talk_over_ipv6() {
    let mut node = Node::new();
    let conf = node.conf(
        "1.0.0",
        r#"[[{"subnet": "10.99.1.0/24"}], [{"subnet": "fd99:1::/64"}]]"#,
    );
    let (pa, pb) = (node.pod("a"), node.pod("b"));
    let ra = node.add(&conf, "a", &pa).ok();
    let rb = node.add(&conf, "b", &pb).ok();
    let v6 = |r: &serde_json::Value| {
        r["ips"][1]["address"]
            .as_str()
            .unwrap()
            .parse::<ipnet::IpNet>()
            .unwrap()
            .addr()
    };
    assert_eq!(v6(&ra).to_string(), "fd99:1::2");
    assert!(
        ra["ips"][1].get("version").is_none(),
        "1.0.0 results carry no ip version"
    );
    let server = serve_once(&pa, v6(&ra), 7003);
    assert_eq!(
        connect_from(&pb, v6(&ra), 7003).unwrap(),
        format!("peer={}", v6(&rb))
    );
    server.join().unwrap();
}

#[test]
fn static_ip_and_mac_from_cni_args_and_runtime_config() {
    let mut node = Node::new();
    let conf = node.v4_conf();
    let (pa, pb) = (node.pod("a"), node.pod("b"));
    let mut env = attach_env("ADD", "a", &pa);
    env.push((
        "CNI_ARGS",
        "IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.99.0.50;MAC=02:12:34:56:78:9a",
    ));
    let r = node.plugin(&env, &conf).ok();
    assert_eq!(r["ips"][0]["address"], "10.99.0.50/24");
    assert_eq!(r["interfaces"][2]["mac"], "02:12:34:56:78:9a");
    let mut c: serde_json::Value = serde_json::from_str(&conf).unwrap();
    c["runtimeConfig"] = serde_json::json!({"ips": ["10.99.0.60/24"]});
    assert_eq!(
        node.add(&c.to_string(), "b", &pb).ok()["ips"][0]["address"],
        "10.99.0.60/24"
    );
    // Taken by someone else: refused, nothing left behind.
    let pc = node.pod("c");
    let e = node.add(&c.to_string(), "c", &pc).err(7);
    assert!(
        e["msg"].as_str().unwrap().contains("already allocated"),
        "{e}"
    );
    assert_eq!(node.allocations().len(), 2);
}

#[test]
fn failed_add_rolls_back_everything() {
    let mut node = Node::new();
    let conf = node.v4_conf();
    let pa = node.pod("a");
    // Someone else's eth0 is already in the pod: podnet must refuse and undo its steps.
    let name = pa.file_name().unwrap().to_str().unwrap();
    let st = std::process::Command::new("ip")
        .args(["-n", name, "link", "add", "eth0", "type", "bridge"])
        .status()
        .unwrap();
    assert!(st.success());
    let e = node.add(&conf, "a", &pa).err(5);
    assert!(e["msg"].as_str().unwrap().contains("already exists"), "{e}");
    assert!(node.allocations().is_empty(), "reservation not rolled back");
    assert!(node.host_veths().is_empty(), "veth not rolled back");
}

#[test]
fn status_reports_an_exhausted_pool() {
    let mut node = Node::new();
    let conf = node.conf("1.1.0", r#"[[{"subnet": "10.99.2.0/30"}]]"#); // one usable address
    let (pa, pb) = (node.pod("a"), node.pod("b"));
    let status = [("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/opt/cni/bin")];
    node.plugin(&status, &conf).ok();
    node.add(&conf, "a", &pa).ok();
    let e = node.plugin(&status, &conf).err(50);
    assert!(e["msg"].as_str().unwrap().contains("10.99.2.0/30"), "{e}");
    node.add(&conf, "b", &pb).err(11);
}

#[test]
fn results_follow_the_requested_version() {
    for (version, has_ip_version) in [
        ("0.3.0", true),
        ("0.3.1", true),
        ("0.4.0", true),
        ("1.0.0", false),
        ("1.1.0", false),
    ] {
        let mut node = Node::new();
        let conf = node.conf(version, r#"[[{"subnet": "10.99.3.0/24"}]]"#);
        let pa = node.pod("a");
        let r = node.add(&conf, "a", &pa).ok();
        assert_eq!(r["cniVersion"], version);
        assert_eq!(
            r["ips"][0].get("version").is_some(),
            has_ip_version,
            "{version}: {r}"
        );
        assert_eq!(
            r["interfaces"][2].get("mtu").is_some(),
            version == "1.1.0",
            "{version}: {r}"
        );
    }
}

#[test]
fn bad_input_gets_the_spec_error_codes() {
    let mut node = Node::new();
    let conf = node.v4_conf();
    let pa = node.pod("a");
    let add = attach_env("ADD", "a", &pa);
    node.plugin(&add, "{ not json").err(6);
    node.plugin(&add, "").err(6);
    let e = node.plugin(&add, &conf.replace("1.1.0", "0.2.0")).err(1);
    assert_eq!(
        e["cniVersion"], "1.1.0",
        "error for an unknown version is written in the latest"
    );
    node.plugin(&add, &conf.replace("\"10.99.0.0/24\"", "\"10.99.0.1/24\""))
        .err(7);
    node.plugin(
        &add,
        &conf.replace(
            "\"bridge\": \"pnbr0\"",
            "\"bridge\": \"way-too-long-bridge-name\"",
        ),
    )
    .err(7);
    node.plugin(
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/x"),
        ],
        &conf,
    )
    .err(4);
    node.plugin(&[("CNI_COMMAND", "JUMP")], &conf).err(4);
    node.plugin(
        &attach_env(
            "ADD",
            "a",
            std::path::Path::new("/run/netns/does-not-exist-pn"),
        ),
        &conf,
    )
    .err(3);
    let mut bad_args = add.clone();
    bad_args.push(("CNI_ARGS", "FOO=bar"));
    node.plugin(&bad_args, &conf).err(2);
    let e = node
        .plugin(
            &attach_env("CHECK", "a", &pa),
            &conf.replace("1.1.0", "0.3.1"),
        )
        .err(1);
    assert_eq!(e["cniVersion"], "0.3.1");
    node.plugin(&[("CNI_COMMAND", "GC")], &conf).err(7); // GC without valid-attachments
    assert!(
        node.allocations().is_empty(),
        "a refused request must not allocate"
    );
    let v = node
        .plugin(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion": "0.4.0"}"#)
        .ok();
    assert_eq!(
        v["supportedVersions"],
        serde_json::json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
    assert_eq!(v["cniVersion"], "0.4.0");
}
