//! Golden tests of the pure layer: plans in both modes, diffs, the nft ruleset, the CNI
//! config. Expected text lives in `tests/golden/`; `UPDATE_GOLDEN=1` rewrites it.

use ipnet::Ipv4Net;
use podnet_nodenet::{
    KernelState, Mode, NodeInfo, diff, plan_node, render_cni_conflist, render_masquerade,
    render_tunnel,
};
use std::net::Ipv4Addr;
use std::path::PathBuf;

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 creates it)", path.display()));
    assert_eq!(actual, expected, "golden file {name} differs");
}

fn node(name: &str, ip: &str, cidr: &str) -> NodeInfo {
    NodeInfo {
        name: name.into(),
        ip: ip.parse().unwrap(),
        pod_cidr: cidr.parse().unwrap(),
    }
}

fn cluster() -> Vec<NodeInfo> {
    vec![
        node("w1", "192.168.50.11", "10.244.1.0/24"),
        node("w3", "192.168.50.13", "10.244.3.0/24"),
        node("w2", "192.168.50.12", "10.244.2.0/24"),
    ]
}

#[test]
fn host_gw_plan() {
    let nodes = cluster();
    let plan = plan_node(&nodes[0], &nodes, Mode::HostGw, 1500);
    golden("plan-host-gw.txt", &plan.render());
}

#[test]
fn vxlan_plan() {
    let nodes = cluster();
    let plan = plan_node(&nodes[0], &nodes, Mode::Vxlan, 1500);
    golden("plan-vxlan.txt", &plan.render());
}

#[test]
fn conflicting_peers_are_skipped_not_fatal() {
    let mut nodes = cluster();
    nodes.push(node("w4", "192.168.50.14", "10.244.2.0/23"));
    nodes.push(node("w5", "192.168.50.11", "10.244.5.0/24"));
    nodes.push(node("w6", "192.168.50.16", "10.244.1.128/25"));
    let plan = plan_node(&nodes[0], &nodes, Mode::Vxlan, 9000);
    golden("plan-vxlan-conflicts.txt", &plan.render());
}

#[test]
fn first_sync_from_empty_kernel_is_the_whole_plan() {
    let nodes = cluster();
    let plan = plan_node(&nodes[0], &nodes, Mode::Vxlan, 1500);
    golden(
        "diff-vxlan-from-empty.txt",
        &diff(&KernelState::default(), &plan).render(),
    );
}

#[test]
fn second_sync_is_empty_in_both_modes() {
    let nodes = cluster();
    for mode in [Mode::HostGw, Mode::Vxlan] {
        let plan = plan_node(&nodes[0], &nodes, mode, 1500);
        let changes = diff(&plan.as_state(), &plan);
        assert!(changes.is_empty(), "{mode}: {}", changes.render());
    }
}

#[test]
fn node_leaving_removes_exactly_its_entries() {
    let nodes = cluster();
    let before = plan_node(&nodes[0], &nodes, Mode::Vxlan, 1500);
    let after = plan_node(&nodes[0], &nodes[..2], Mode::Vxlan, 1500);
    golden(
        "diff-vxlan-node-leaves.txt",
        &diff(&before.as_state(), &after).render(),
    );
}

#[test]
fn node_ip_change_replaces_in_place() {
    let mut nodes = cluster();
    let before = plan_node(&nodes[0], &nodes, Mode::HostGw, 1500);
    nodes[2].ip = "192.168.50.22".parse().unwrap();
    let after = plan_node(&nodes[0], &nodes, Mode::HostGw, 1500);
    golden(
        "diff-host-gw-ip-change.txt",
        &diff(&before.as_state(), &after).render(),
    );
}

#[test]
fn mode_switches_both_ways() {
    let nodes = cluster();
    let gw = plan_node(&nodes[0], &nodes, Mode::HostGw, 1500);
    let vx = plan_node(&nodes[0], &nodes, Mode::Vxlan, 1500);
    golden(
        "diff-host-gw-to-vxlan.txt",
        &diff(&gw.as_state(), &vx).render(),
    );
    golden(
        "diff-vxlan-to-host-gw.txt",
        &diff(&vx.as_state(), &gw).render(),
    );
}

#[test]
fn changed_device_is_recreated_with_its_entries() {
    let nodes = cluster();
    let before = plan_node(&nodes[0], &nodes, Mode::Vxlan, 1500);
    let after = plan_node(&nodes[0], &nodes, Mode::Vxlan, 9000);
    golden(
        "diff-vxlan-mtu-change.txt",
        &diff(&before.as_state(), &after).render(),
    );
}

#[test]
fn masquerade_ruleset() {
    let ips: Vec<Ipv4Addr> = ["192.168.50.12", "192.168.50.11", "192.168.50.12"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let cidr: Ipv4Net = "10.244.0.0/16".parse().unwrap();
    golden(
        "masquerade.nft",
        &podnet_nft::render_table(&render_masquerade(cidr, &[], &ips, Mode::HostGw)),
    );
    golden(
        "masquerade-no-nodes.nft",
        &podnet_nft::render_table(&render_masquerade(cidr, &[], &[], Mode::HostGw)),
    );
    golden(
        "masquerade-vxlan.nft",
        &podnet_nft::render_table(&render_masquerade(cidr, &[], &ips, Mode::Vxlan)),
    );
    // VXLAN mode's netdev table on the underlay link: node IPs sorted and deduplicated.
    golden(
        "tunnel-vxlan.nft",
        &podnet_nft::render_table(&render_tunnel(&ips, "eth0")),
    );
    // Exceptions: overlapping and adjacent ranges are aggregated (nft refuses
    // overlapping interval elements), host bits dropped.
    let exceptions: Vec<Ipv4Net> = [
        "172.16.0.0/13",
        "172.20.0.0/14",
        "192.168.0.0/17",
        "192.168.128.0/17",
        "100.64.1.7/32",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    golden(
        "masquerade-exceptions.nft",
        &podnet_nft::render_table(&render_masquerade(cidr, &exceptions, &ips, Mode::HostGw)),
    );
}

#[test]
fn cni_conflist_is_what_the_plugin_parses() {
    let text = render_cni_conflist(
        "10.244.1.0/24".parse().unwrap(),
        1450,
        "/var/lib/cni/podnet",
    );
    golden("10-podnet.conflist", &text);
    let conf = podnet_cni_spec::config::NetConf::parse(text.as_bytes()).expect("plugin accepts it");
    assert_eq!(conf.bridge, "podnet0");
    assert_eq!(conf.mtu, Some(1450));
    assert_eq!(conf.data_dir, "/var/lib/cni/podnet");
    assert!(conf.is_gateway && conf.is_default_gateway && conf.hairpin);
}

fn fastpath_plan(armed: bool) -> podnet_nodenet::FastPathPlan {
    let nodes = cluster();
    let plan = plan_node(&nodes[0], &nodes, Mode::Vxlan, 1500);
    podnet_nodenet::FastPathPlan {
        pod_cidr: nodes[0].pod_cidr,
        bridge: podnet_nft::Device {
            name: "podnet0".into(),
            index: 4,
        },
        peer_device: podnet_nft::Device {
            name: "podnet.vxlan".into(),
            index: 3,
        },
        next_hops: plan.routes.iter().map(|(d, r)| (*d, r.gateway)).collect(),
        pod_links: ["pn0123456789ab".to_string(), "pn00000000beef".to_string()].into(),
        armed,
    }
}

#[test]
fn fastpath_table_vxlan() {
    let t = podnet_nodenet::render_fastpath(&fastpath_plan(true));
    podnet_nft::validate(&podnet_nft::Transaction::replace_table(&t)).unwrap();
    golden("fastpath-vxlan.nft", &podnet_nft::render_table(&t));
}

#[test]
fn disarmed_fastpath_has_its_chains_and_no_fwd() {
    let armed = podnet_nodenet::render_fastpath(&fastpath_plan(true));
    let disarmed = podnet_nodenet::render_fastpath(&fastpath_plan(false));
    let text = podnet_nft::render_table(&disarmed);
    assert!(!text.contains("fwd"), "{text}");
    let names = |t: &podnet_nft::Table| -> Vec<String> {
        t.chains.iter().map(|(c, _)| c.name.clone()).collect()
    };
    assert_eq!(names(&armed), names(&disarmed));
    assert!(text.contains("chain pod-pn0123456789ab"), "{text}");
}
