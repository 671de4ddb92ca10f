//! Integration: podnet first in a conflist with Debian's reference plugins (tuning,
//! portmap, bandwidth, firewall from containernetworking-plugins), run by `podnet cni`
//! the way libcni runs a chain. Each reference plugin reads podnet's result as its
//! prevResult and must do its job; real traffic goes through portmap's DNAT.

mod common;

use common::*;
use podnet_netlink::netns;
use std::process::Command;

const REFERENCE_DIR: &str = "/usr/lib/cni";

fn cli(
    node: &Node,
    verb: &str,
    conflist: &std::path::Path,
    pod: &std::path::Path,
    caps: &str,
) -> String {
    let bin_dir = node.work.path().join("bin");
    let out = Command::new(PODNET)
        .args(["cni", verb, "--conflist"])
        .arg(conflist)
        .arg("--netns")
        .arg(pod)
        .args(["--container-id", "chained-1", "--plugin-dir"])
        .arg(&bin_dir)
        .args(["--plugin-dir", REFERENCE_DIR, "--cache-dir"])
        .arg(node.work.path().join("cache"))
        .arg("--exec-netns")
        .arg(&node.node)
        .args(["--capability-args", caps])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "podnet cni {verb} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn in_node(node: &Node, args: &[&str]) -> String {
    let name = node.node.file_name().unwrap().to_str().unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", name])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn reference_plugins_chain_after_podnet() {
    for p in ["tuning", "portmap", "bandwidth", "firewall"] {
        assert!(
            std::path::Path::new(REFERENCE_DIR).join(p).exists(),
            "Debian's containernetworking-plugins must be installed ({REFERENCE_DIR}/{p} missing)"
        );
    }
    let mut node = Node::new();
    let pod = node.pod("web");
    let bin_dir = node.work.path().join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::os::unix::fs::symlink(PODNET, bin_dir.join("podnet")).unwrap();
    let conflist = node.work.path().join("chain.conflist");
    std::fs::write(
        &conflist,
        serde_json::json!({
            "cniVersion": "1.0.0", "name": "chain",
            "plugins": [
                {"type": "podnet", "bridge": "pnbr0",
                 "ipam": {"ranges": [[{"subnet": "10.99.5.0/24"}]], "dataDir": node.data_dir()}},
                {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.arp_notify": "1"}},
                {"type": "portmap", "capabilities": {"portMappings": true}},
                {"type": "bandwidth", "capabilities": {"bandwidth": true}},
                {"type": "firewall"}
            ]
        })
        .to_string(),
    )
    .unwrap();
    let caps = r#"{"portMappings": [{"hostPort": 30080, "containerPort": 8080, "protocol": "tcp"}],
                   "bandwidth": {"ingressRate": 100000000, "ingressBurst": 1000000,
                                 "egressRate": 100000000, "egressBurst": 1000000}}"#;

    let result: serde_json::Value =
        serde_json::from_str(&cli(&node, "add", &conflist, &pod, caps)).unwrap();
    assert_eq!(result["ips"][0]["address"], "10.99.5.2/24", "{result}");
    let pod_ip: std::net::IpAddr = "10.99.5.2".parse().unwrap();
    let host_veth = result["interfaces"][1]["name"]
        .as_str()
        .unwrap()
        .to_string();

    // tuning: the sysctl is set inside the pod.
    let arp_notify = netns::run_in(netns::open(&pod).unwrap(), || {
        std::fs::read_to_string("/proc/sys/net/ipv4/conf/eth0/arp_notify").unwrap()
    })
    .unwrap();
    assert_eq!(arp_notify.trim(), "1");
    // bandwidth: a token bucket on podnet's host veth, found through the prevResult.
    let qdisc = in_node(&node, &["tc", "qdisc", "show", "dev", &host_veth]);
    assert!(
        qdisc.contains("tbf"),
        "no tbf qdisc on {host_veth}: {qdisc}"
    );
    // firewall and portmap: rules for the pod's address.
    let rules = in_node(&node, &["iptables-save"]);
    assert!(
        rules.contains("CNI-FORWARD") && rules.contains("10.99.5.2"),
        "firewall rules missing:\n{rules}"
    );
    assert!(
        rules.contains("--dport 30080"),
        "portmap rules missing:\n{rules}"
    );
    // portmap with real traffic: the node's host port reaches the pod's server.
    let server = serve_once(&pod, pod_ip, 8080);
    let reply = connect_from(&node.node, "10.99.5.1".parse().unwrap(), 30080).unwrap();
    assert!(reply.starts_with("peer="), "{reply}");
    server.join().unwrap();

    cli(&node, "del", &conflist, &pod, caps);
    assert!(node.allocations().is_empty());
    assert!(node.host_veths().is_empty());
    node.wait_reaped();
    let rules = in_node(&node, &["iptables-save"]);
    assert!(
        !rules.contains("10.99.5.2"),
        "rules for the pod survived DEL:\n{rules}"
    );
}
