//! NetworkPolicy semantics on the upstream e2e model: namespaces x, y, z, pods a, b, c in
//! each (labels pod=a/b/c), serving TCP/UDP/SCTP on 80 and 81 with named ports
//! `serve-80-tcp` etc.; verdicts by `explain`, which uses the same segments the table does.

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use podnet_policy::model::{Segment, merge};
use podnet_policy::render::prefixes;
use podnet_policy::*;
use serde_json::{Value, json};
use std::net::Ipv4Addr;

fn ip(ns: &str, pod: &str) -> Ipv4Addr {
    let n = ["x", "y", "z"].iter().position(|x| *x == ns).unwrap() as u8;
    let p = ["a", "b", "c"].iter().position(|x| *x == pod).unwrap() as u8;
    Ipv4Addr::new(10, 244, n + 1, 10 + p)
}

fn model() -> Cluster {
    let mut pods = Vec::new();
    let mut namespaces = Vec::new();
    for ns in ["x", "y", "z"] {
        namespaces.push(
            serde_json::from_value::<Namespace>(json!({"metadata": {"name": ns,
                "labels": {"ns": ns}}}))
            .unwrap(),
        );
        for pod in ["a", "b", "c"] {
            let mut ports = Vec::new();
            for (proto, l) in [("TCP", "tcp"), ("UDP", "udp"), ("SCTP", "sctp")] {
                for port in [80, 81] {
                    ports.push(json!({"name": format!("serve-{port}-{l}"),
                        "containerPort": port, "protocol": proto}));
                }
            }
            pods.push(
                serde_json::from_value::<Pod>(json!({
                    "metadata": {"name": pod, "namespace": ns, "labels": {"pod": pod}},
                    "spec": {"nodeName": "node-1", "containers": [{"name": "c", "ports": ports}]},
                    "status": {"phase": "Running", "podIP": ip(ns, pod).to_string()},
                }))
                .unwrap(),
            );
        }
    }
    Cluster::new(&pods, &namespaces)
}

fn policy(ns: &str, name: &str, spec: Value) -> NetworkPolicy {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}))
        .unwrap()
}

fn read(nps: &[NetworkPolicy]) -> Vec<Policy> {
    let (p, problems) = read_policies(nps);
    assert!(problems.is_empty(), "{problems:?}");
    p
}

/// Whether `from` reaches `to` on `proto`/`port`.
fn reach(
    ps: &[Policy],
    c: &Cluster,
    from: (&str, &str),
    to: (&str, &str),
    proto: u8,
    port: u16,
) -> bool {
    explain(ps, c, ip(from.0, from.1), ip(to.0, to.1), proto, port).allowed()
}

#[test]
fn default_deny_ingress_isolates_only_its_namespace() {
    let c = model();
    let ps = read(&[policy("x", "deny", json!({"podSelector": {}}))]);
    assert!(!reach(&ps, &c, ("y", "a"), ("x", "a"), TCP, 80));
    assert!(!reach(&ps, &c, ("x", "b"), ("x", "a"), TCP, 80));
    assert!(
        reach(&ps, &c, ("x", "a"), ("y", "a"), TCP, 80),
        "egress is not isolated"
    );
    assert!(reach(&ps, &c, ("z", "c"), ("y", "b"), UDP, 81));
    let plan = plan_pods(&ps, &c, None);
    assert_eq!(plan.len(), 3);
    assert!(
        plan.iter()
            .all(|p| p.egress.is_none() && p.ingress.as_ref().unwrap().allowed.is_empty())
    );
}

#[test]
fn peers_by_pod_and_namespace_selector_with_ports() {
    let c = model();
    // x/a admits pods labelled pod=b in namespaces labelled ns=y, on TCP 80 only.
    let ps = read(&[policy(
        "x",
        "allow-yb",
        json!({
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}},
                              "podSelector": {"matchLabels": {"pod": "b"}}}],
                     "ports": [{"port": 80}]}]}),
    )]);
    assert!(reach(&ps, &c, ("y", "b"), ("x", "a"), TCP, 80));
    assert!(!reach(&ps, &c, ("y", "b"), ("x", "a"), TCP, 81));
    assert!(!reach(&ps, &c, ("y", "b"), ("x", "a"), UDP, 80));
    assert!(!reach(&ps, &c, ("y", "a"), ("x", "a"), TCP, 80));
    assert!(
        !reach(&ps, &c, ("x", "b"), ("x", "a"), TCP, 80),
        "own namespace is not y"
    );
    assert!(
        reach(&ps, &c, ("y", "a"), ("x", "b"), TCP, 81),
        "x/b is not selected"
    );
    // Only a podSelector: pods of the policy's own namespace.
    let ps = read(&[policy(
        "x",
        "same-ns",
        json!({
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"podSelector": {"matchExpressions":
            [{"key": "pod", "operator": "In", "values": ["b", "c"]}]}}]}]}),
    )]);
    assert!(reach(&ps, &c, ("x", "b"), ("x", "a"), UDP, 81));
    assert!(reach(&ps, &c, ("x", "c"), ("x", "a"), SCTP, 80));
    assert!(!reach(&ps, &c, ("y", "b"), ("x", "a"), TCP, 80));
    // Only a namespaceSelector (NotIn): every pod of those namespaces.
    let ps = read(&[policy(
        "x",
        "not-y",
        json!({
        "podSelector": {},
        "ingress": [{"from": [{"namespaceSelector": {"matchExpressions":
            [{"key": "ns", "operator": "NotIn", "values": ["y"]}]}}]}]}),
    )]);
    assert!(reach(&ps, &c, ("z", "a"), ("x", "c"), TCP, 80));
    assert!(reach(&ps, &c, ("x", "a"), ("x", "c"), TCP, 80));
    assert!(!reach(&ps, &c, ("y", "a"), ("x", "c"), TCP, 80));
}

#[test]
fn named_ports_resolve_per_destination_pod() {
    let mut c = model();
    // x/b serves "serve-80-tcp" on 8080 instead of 80.
    for p in &mut c.pods {
        if p.namespace == "x" && p.name == "b" {
            for port in &mut p.ports {
                if port.0 == "serve-80-tcp" {
                    port.2 = 8080;
                }
            }
        }
    }
    let ps = read(&[policy(
        "x",
        "named",
        json!({
        "podSelector": {},
        "ingress": [{"ports": [{"port": "serve-80-tcp"}]}]}),
    )]);
    assert!(reach(&ps, &c, ("y", "a"), ("x", "a"), TCP, 80));
    assert!(!reach(&ps, &c, ("y", "a"), ("x", "b"), TCP, 80));
    assert!(reach(&ps, &c, ("y", "a"), ("x", "b"), TCP, 8080));
    assert!(
        !reach(&ps, &c, ("y", "a"), ("x", "a"), UDP, 80),
        "the name is TCP's"
    );
    // Egress: the name resolves against each destination.
    let ps = read(&[policy(
        "y",
        "egress-named",
        json!({
        "podSelector": {"matchLabels": {"pod": "a"}},
        "egress": [{"ports": [{"port": "serve-80-tcp", "protocol": "TCP"}]}]}),
    )]);
    assert!(reach(&ps, &c, ("y", "a"), ("x", "b"), TCP, 8080));
    assert!(!reach(&ps, &c, ("y", "a"), ("x", "b"), TCP, 80));
    assert!(reach(&ps, &c, ("y", "a"), ("z", "c"), TCP, 80));
}

#[test]
fn ip_blocks_with_except_and_port_ranges() {
    let c = model();
    let ps = read(&[policy(
        "x",
        "block",
        json!({
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"ipBlock": {"cidr": "10.244.0.0/16",
                                           "except": [ip("y", "b").to_string() + "/32",
                                                      "10.244.3.0/24"]}}],
                     "ports": [{"port": 80, "endPort": 81, "protocol": "UDP"}]}]}),
    )]);
    assert!(reach(&ps, &c, ("y", "a"), ("x", "a"), UDP, 80));
    assert!(reach(&ps, &c, ("y", "c"), ("x", "a"), UDP, 81));
    assert!(!reach(&ps, &c, ("y", "a"), ("x", "a"), TCP, 80));
    assert!(
        !reach(&ps, &c, ("y", "b"), ("x", "a"), UDP, 80),
        "excepted /32"
    );
    assert!(
        !reach(&ps, &c, ("z", "a"), ("x", "a"), UDP, 80),
        "excepted /24"
    );
    let a = plan_pods(&ps, &c, None);
    let segs = &a[0].ingress.as_ref().unwrap().allowed;
    assert_eq!(segs.len(), 3, "{segs:?}"); // below y/b, y/b..y/c gap split, and the rest
}

#[test]
fn egress_isolation_policy_types_and_additivity() {
    let c = model();
    // Egress rules without policyTypes: Ingress and Egress.
    let ps = read(&[policy(
        "y",
        "dns-only",
        json!({
        "podSelector": {},
        "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}]}),
    )]);
    assert!(!reach(&ps, &c, ("y", "a"), ("x", "a"), TCP, 80));
    assert!(reach(&ps, &c, ("y", "a"), ("x", "a"), UDP, 53));
    assert!(
        !reach(&ps, &c, ("x", "a"), ("y", "a"), TCP, 80),
        "ingress defaulted on"
    );
    // Only Egress in policyTypes: ingress stays open.
    let ps = read(&[policy(
        "y",
        "egress-deny",
        json!({"podSelector": {}, "policyTypes": ["Egress"]}),
    )]);
    assert!(reach(&ps, &c, ("x", "a"), ("y", "a"), TCP, 80));
    assert!(!reach(&ps, &c, ("y", "a"), ("x", "a"), TCP, 80));
    // Additive: a second policy opens what the first did not.
    let ps = read(&[
        policy("x", "deny", json!({"podSelector": {}})),
        policy(
            "x",
            "allow-z",
            json!({"podSelector": {"matchLabels": {"pod": "c"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}]}]}),
        ),
    ]);
    assert!(reach(&ps, &c, ("z", "b"), ("x", "c"), TCP, 81));
    assert!(!reach(&ps, &c, ("z", "b"), ("x", "b"), TCP, 81));
    let e = explain(&ps, &c, ip("z", "b"), ip("x", "c"), TCP, 81);
    assert_eq!(
        e.ingress,
        Finding::Isolated {
            policies: vec!["x/allow-z".into(), "x/deny".into()],
            allowed_by: Some(("x/allow-z".into(), 0)),
        }
    );
    assert!(e.to_string().ends_with("verdict: allowed"), "{e}");
}

#[test]
fn a_bad_policy_isolates_and_allows_nothing() {
    let c = model();
    let (ps, problems) = read_policies(&[policy(
        "x",
        "bad",
        json!({
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}),
    )]);
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0].to_string().contains("x/bad") && problems[0].message.contains("10.0.0.0/33"),
        "{problems:?}"
    );
    assert!(!reach(&ps, &c, ("y", "a"), ("x", "a"), TCP, 80));
    assert!(reach(&ps, &c, ("y", "a"), ("x", "b"), TCP, 80));
    let (_, problems) = read_policies(&[policy(
        "x",
        "bad-port",
        json!({
        "podSelector": {}, "ingress": [{"ports": [{"endPort": 90}]}]}),
    )]);
    assert!(
        problems[0].message.contains("endPort needs port"),
        "{problems:?}"
    );
}

#[test]
fn merging_unions_ports_where_runs_overlap() {
    let tcp = |a, b| PortSet::ranges(vec![(TCP, a, b)]);
    let got = merge(vec![
        Segment {
            first: 10,
            last: 20,
            ports: tcp(80, 80),
        },
        Segment {
            first: 15,
            last: 30,
            ports: tcp(81, 90),
        },
        Segment {
            first: 31,
            last: 40,
            ports: tcp(81, 90),
        },
        Segment {
            first: 50,
            last: 50,
            ports: PortSet::All,
        },
    ]);
    assert_eq!(
        got,
        vec![
            Segment {
                first: 10,
                last: 14,
                ports: tcp(80, 80)
            },
            Segment {
                first: 15,
                last: 20,
                ports: tcp(80, 90)
            },
            Segment {
                first: 21,
                last: 40,
                ports: tcp(81, 90)
            },
            Segment {
                first: 50,
                last: 50,
                ports: PortSet::All
            },
        ]
    );
    assert_eq!(
        merge(vec![Segment {
            first: 0,
            last: u32::MAX,
            ports: PortSet::All
        }])
        .len(),
        1
    );
}

#[test]
fn ranges_become_the_fewest_prefixes() {
    let v4 = |s: &str| u32::from(s.parse::<Ipv4Addr>().unwrap());
    assert_eq!(prefixes(0, u32::MAX), [(Ipv4Addr::UNSPECIFIED, 0)]);
    assert_eq!(
        prefixes(v4("10.0.0.1"), v4("10.0.0.6")),
        [
            ("10.0.0.1".parse().unwrap(), 32),
            ("10.0.0.2".parse().unwrap(), 31),
            ("10.0.0.4".parse().unwrap(), 31),
            ("10.0.0.6".parse().unwrap(), 32),
        ]
    );
    assert_eq!(prefixes(v4("10.244.0.0"), v4("10.244.255.255")).len(), 1);
}

#[test]
fn pods_with_equal_allowances_share_a_class_and_names_are_stable() {
    let c = model();
    let ps = read(&[
        policy("x", "deny", json!({"podSelector": {}})),
        policy(
            "y",
            "web",
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}),
        ),
    ]);
    let plan = plan_pods(&ps, &c, None);
    let t = render(&plan);
    let chains: Vec<&str> = t.chains.iter().map(|(c, _)| c.name.as_str()).collect();
    let classes = chains.iter().filter(|n| n.starts_with("in-")).count();
    assert_eq!(classes, 2, "{chains:?}"); // deny-all (x) and port 80 (y)
    // x's class allows nothing: no address set; y's allows every address (a range) on
    // port 80: one interval set, and the port set.
    let sets: Vec<&str> = t.sets.iter().map(|(s, _)| s.name.as_str()).collect();
    assert_eq!(sets.iter().filter(|n| n.starts_with("ports-")).count(), 1);
    assert_eq!(
        sets.iter().filter(|n| n.ends_with("-ranges")).count(),
        1,
        "{sets:?}"
    );
    assert_eq!(sets.len(), 4, "{sets:?}"); // with the two pod maps
    assert_eq!(
        render(&plan_pods(&ps, &c, None)),
        t,
        "same input, same table"
    );
    let text = podnet_nft::render_table(&t);
    assert!(text.contains("ip daddr vmap @ingress-pods"), "{text}");
    assert!(text.contains("tcp . 80"), "{text}");
    assert!(text.contains("meta l4proto . th dport @ports-"), "{text}");
}
