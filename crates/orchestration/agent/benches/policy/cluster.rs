//! A generated cluster for the NetworkPolicy benchmarks (issue 5), shared by
//! `benches/policy_scale.rs` and `podnet-netlink`'s `examples/policy_conn.rs` (included by
//! path): k8s-openapi objects as the API server sends them.
//!
//! - [`NAMESPACES`] namespaces `ns-0…`, labelled `team` (5 values) and `env` (prod/staging);
//! - `local` pods on `node-0` (the node under test) at 10.244.0.2…, `remote` pods on
//!   `node-1…9` at 10.244.64.0…, spread over the namespaces, labelled `app` (8 per
//!   namespace), `tier` (web/api/db), `version` on half of them; containers declare the
//!   named ports `http` 8080/TCP, `metrics` 9090/TCP, and on db pods `db` 5432/TCP and
//!   `dns` 53/UDP;
//! - pod 0 is the bench client (ns-0, `app=bench-client`, 10.244.0.2), pod 1 the bench
//!   server (ns-0, `app=bench-server`, 10.244.0.3, named port `http` 8080);
//! - policies of mixed shapes ([`policy`]): per namespace a default-deny ingress, then
//!   podSelector peers, namespaceSelector peers, both in one peer, ipBlock with except and
//!   endPort, egress with pod and namespace peers and named ports, matchExpressions
//!   (In/NotIn/Exists/DoesNotExist), ingress+egress; in ns-0 also `allow-bench`, the one
//!   policy admitting the bench client to the bench server on 8080–8084.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Container, ContainerPort, Namespace, Pod, PodSpec, PodStatus};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

pub const NAMESPACES: u32 = 50;
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
pub const SERVER: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 3);
const TIERS: [&str; 3] = ["web", "api", "db"];

fn labels(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn meta(ns: Option<String>, name: String, l: BTreeMap<String, String>, rv: u64) -> ObjectMeta {
    ObjectMeta {
        uid: Some(format!("{:08x}-0000-4000-8000-{:012x}", name.len(), rv)),
        name: Some(name),
        namespace: ns,
        resource_version: Some(rv.to_string()),
        labels: Some(l),
        ..Default::default()
    }
}

pub fn namespaces() -> Vec<Namespace> {
    (0..NAMESPACES)
        .map(|i| {
            let name = format!("ns-{i}");
            Namespace {
                metadata: meta(
                    None,
                    name.clone(),
                    labels(&[
                        ("kubernetes.io/metadata.name", name),
                        ("team", format!("team-{}", i % 5)),
                        ("env", if i % 2 == 0 { "prod" } else { "staging" }.into()),
                    ]),
                    u64::from(i) + 1,
                ),
                ..Default::default()
            }
        })
        .collect()
}

/// Pod `i` (`i < local`: on node-0). `generation` changes its `app` label.
pub fn pod(i: u32, local: u32, generation: u32) -> Pod {
    let ns = i % NAMESPACES;
    let k = i / NAMESPACES;
    let (node, ip) = if i < local {
        ("node-0".to_string(), u32::from(CLIENT) + i)
    } else {
        (
            format!("node-{}", 1 + i % 9),
            u32::from(Ipv4Addr::new(10, 244, 64, 0)) + (i - local),
        )
    };
    let tier = TIERS[(k % 3) as usize];
    let (ns, app) = match i {
        0 => (0, "bench-client".to_string()),
        1 => (0, "bench-server".to_string()),
        _ => (ns, format!("app-{}", (k + generation) % 8)),
    };
    let mut l = labels(&[("app", app), ("tier", tier.into())]);
    if k.is_multiple_of(2) {
        l.insert("version".into(), format!("v{}", k % 3));
    }
    let port = |name: &str, n: i32, proto: &str| ContainerPort {
        name: Some(name.into()),
        container_port: n,
        protocol: Some(proto.into()),
        ..Default::default()
    };
    let mut ports = vec![port("http", 8080, "TCP"), port("metrics", 9090, "TCP")];
    if tier == "db" && i > 1 {
        ports.push(port("db", 5432, "TCP"));
        ports.push(port("dns", 53, "UDP"));
    }
    Pod {
        metadata: meta(
            Some(format!("ns-{ns}")),
            format!("pod-{i}"),
            l,
            1000 + u64::from(i) * 7 + u64::from(generation),
        ),
        spec: Some(PodSpec {
            node_name: Some(node),
            containers: vec![Container {
                name: "main".into(),
                image: Some("registry.example/app:1".into()),
                ports: Some(ports),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(Ipv4Addr::from(ip).to_string()),
            ..Default::default()
        }),
    }
}

pub fn pods(local: u32, remote: u32) -> Vec<Pod> {
    (0..local + remote).map(|i| pod(i, local, 0)).collect()
}

fn sel(pairs: &[(&str, String)]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels(pairs)),
        match_expressions: None,
    }
}

fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.into(),
        operator: op.into(),
        values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
    }
}

fn pod_peer(s: LabelSelector) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(s),
        ..Default::default()
    }
}

fn ns_peer(s: LabelSelector) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(s),
        ..Default::default()
    }
}

fn port(proto: &str, p: IntOrString, end: Option<i32>) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: Some(proto.into()),
        port: Some(p),
        end_port: end,
    }
}

fn num(proto: &str, n: i32) -> NetworkPolicyPort {
    port(proto, IntOrString::Int(n), None)
}

fn named(proto: &str, n: &str) -> NetworkPolicyPort {
    port(proto, IntOrString::String(n.into()), None)
}

fn ingress(
    from: Vec<NetworkPolicyPeer>,
    ports: Vec<NetworkPolicyPort>,
) -> NetworkPolicyIngressRule {
    NetworkPolicyIngressRule {
        from: (!from.is_empty()).then_some(from),
        ports: (!ports.is_empty()).then_some(ports),
    }
}

fn egress(to: Vec<NetworkPolicyPeer>, ports: Vec<NetworkPolicyPort>) -> NetworkPolicyEgressRule {
    NetworkPolicyEgressRule {
        to: (!to.is_empty()).then_some(to),
        ports: (!ports.is_empty()).then_some(ports),
    }
}

/// Policy `j` of `n`; `variant` changes one port or peer (the benchmark's single changes).
pub fn policy(j: u32, variant: u32) -> NetworkPolicy {
    let ns = j % NAMESPACES;
    let k = j / NAMESPACES;
    let app = |d: u32| format!("app-{}", (k + d) % 8);
    let v = variant as i32;
    let mut spec = NetworkPolicySpec {
        pod_selector: Some(sel(&[("app", app(0))])),
        ..Default::default()
    };
    let name;
    if k == 0 {
        name = "default-deny".to_string();
        spec.pod_selector = Some(LabelSelector::default());
        spec.policy_types = Some(vec!["Ingress".into()]);
        // Variants of a default deny: admit the namespace's own web tier on a port.
        if variant > 0 {
            spec.ingress = Some(vec![ingress(
                vec![pod_peer(sel(&[("tier", "web".into())]))],
                vec![num("TCP", 7000 + v)],
            )]);
        }
    } else if ns == 0 && k == 1 {
        name = "allow-bench".to_string();
        spec.pod_selector = Some(sel(&[("app", "bench-server".into())]));
        spec.ingress = Some(vec![ingress(
            vec![pod_peer(sel(&[("app", "bench-client".into())]))],
            vec![port("TCP", IntOrString::Int(8080), Some(8084 + v))],
        )]);
    } else {
        let shape = k % 8;
        name = format!("p{k}-s{shape}");
        match shape {
            // podSelector peers, numeric ports.
            0 | 1 => {
                spec.ingress = Some(vec![ingress(
                    vec![
                        pod_peer(sel(&[("tier", "web".into())])),
                        pod_peer(sel(&[("app", app(1 + variant))])),
                    ],
                    vec![num("TCP", 8080), num("TCP", 9090 + v)],
                )]);
            }
            // namespaceSelector peers, a named port.
            2 => {
                spec.ingress = Some(vec![ingress(
                    vec![ns_peer(sel(&[(
                        "team",
                        format!("team-{}", (k + variant) % 5),
                    )]))],
                    vec![named(
                        "TCP",
                        if variant.is_multiple_of(2) {
                            "http"
                        } else {
                            "metrics"
                        },
                    )],
                )]);
            }
            // Both in one peer, matchExpressions In.
            3 => {
                spec.ingress = Some(vec![ingress(
                    vec![NetworkPolicyPeer {
                        namespace_selector: Some(sel(&[("env", "prod".into())])),
                        pod_selector: Some(LabelSelector {
                            match_labels: None,
                            match_expressions: Some(vec![expr(
                                "app",
                                "In",
                                &[&app(2 + variant), &app(3)],
                            )]),
                        }),
                        ..Default::default()
                    }],
                    vec![num("TCP", 9090 + v)],
                )]);
            }
            // ipBlock with except, endPort.
            4 => {
                spec.ingress = Some(vec![ingress(
                    vec![NetworkPolicyPeer {
                        ip_block: Some(IPBlock {
                            cidr: "10.0.0.0/8".into(),
                            except: Some(vec![
                                "10.244.0.0/16".into(),
                                format!("10.{}.0.0/16", 1 + (k + variant) % 200),
                            ]),
                        }),
                        ..Default::default()
                    }],
                    vec![port("TCP", IntOrString::Int(30000), Some(30100 + v))],
                )]);
            }
            // Egress: pods of the db tier on a named port, DNS in ns-0 (UDP, named).
            5 => {
                spec.policy_types = Some(vec!["Egress".into()]);
                spec.egress = Some(vec![
                    egress(
                        vec![pod_peer(sel(&[("tier", "db".into())]))],
                        vec![named("TCP", "db"), num("TCP", 5433 + v)],
                    ),
                    egress(
                        vec![ns_peer(sel(&[(
                            "kubernetes.io/metadata.name",
                            "ns-0".into(),
                        )]))],
                        vec![named("UDP", "dns")],
                    ),
                ]);
            }
            // matchExpressions NotIn / Exists / DoesNotExist, SCTP and UDP.
            6 => {
                spec.pod_selector = Some(LabelSelector {
                    match_labels: Some(labels(&[("app", app(0))])),
                    match_expressions: Some(vec![expr("version", "Exists", &[])]),
                });
                spec.ingress = Some(vec![ingress(
                    vec![
                        pod_peer(LabelSelector {
                            match_labels: None,
                            match_expressions: Some(vec![
                                expr("tier", "NotIn", &["db"]),
                                expr("version", "DoesNotExist", &[]),
                            ]),
                        }),
                        ns_peer(LabelSelector {
                            match_labels: None,
                            match_expressions: Some(vec![expr(
                                "team",
                                "In",
                                &["team-1", "team-3"],
                            )]),
                        }),
                    ],
                    vec![num("UDP", 5000 + v), num("SCTP", 5001)],
                )]);
            }
            // Ingress and egress; egress to another namespace's api tier.
            _ => {
                spec.policy_types = Some(vec!["Ingress".into(), "Egress".into()]);
                spec.ingress = Some(vec![ingress(
                    vec![ns_peer(sel(&[("env", "staging".into())]))],
                    vec![num("TCP", 443 + v)],
                )]);
                spec.egress = Some(vec![egress(
                    vec![NetworkPolicyPeer {
                        namespace_selector: Some(sel(&[(
                            "kubernetes.io/metadata.name",
                            format!("ns-{}", (ns + 1 + variant) % NAMESPACES),
                        )])),
                        pod_selector: Some(sel(&[("tier", "api".into())])),
                        ..Default::default()
                    }],
                    vec![named("TCP", "http")],
                )]);
            }
        }
    }
    NetworkPolicy {
        metadata: meta(
            Some(format!("ns-{ns}")),
            name,
            BTreeMap::new(),
            100_000 + u64::from(j) * 1000 + u64::from(variant),
        ),
        spec: Some(spec),
    }
}

pub fn policies(n: u32) -> Vec<NetworkPolicy> {
    (0..n).map(|j| policy(j, 0)).collect()
}
