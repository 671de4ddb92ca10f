//! Property tests of the incremental path: on random sequences of Service and
//! EndpointSlice changes (seeded, so a failure replays), the [`Planner`] agrees with the
//! whole-snapshot `plan_services` after every step, and a [`Proxy`] fed only the changed
//! Services (`sync_services`) builds the same transactions, problems and table as one fed
//! the whole plan (`sync`) — including refused ports (colliding cluster IPs), retried
//! once their address is free, and full replaces after a failed transaction.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use podnet_services::{
    NodeContext, ObjectName, Planner, Proxy, ProxyConfig, ServicePort, Snapshot, plan_services,
};
use serde_json::json;

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

const NAMESPACES: [&str; 2] = ["a", "b"];
const SERVICES: usize = 8;

fn node() -> NodeContext {
    NodeContext::new("node-1")
}

/// A random Service named `svc-{i}`: mostly well-formed, sometimes bad (unparsable
/// cluster IP, bad affinity timeout, duplicate port), headless, ExternalName or another
/// proxy's; cluster IPs come from a small pool so that ports collide.
fn random_service(rng: &mut Rng, ns: &str, i: usize) -> Service {
    let cluster_ip = match rng.below(20) {
        0 => "None".to_string(),
        1 => "not-an-ip".to_string(),
        _ => format!("10.96.0.{}", 10 + rng.below(6)),
    };
    let kind = *rng.pick(&[
        "ClusterIP",
        "ClusterIP",
        "NodePort",
        "LoadBalancer",
        "ExternalName",
    ]);
    let mut ports = Vec::new();
    for k in 0..1 + rng.below(2) {
        let name = *rng.pick(&["http", "dns", "metrics"]);
        let protocol = *rng.pick(&["TCP", "TCP", "UDP", "SCTP"]);
        let mut p = json!({"name": name, "port": 80 + rng.below(3), "protocol": protocol,
                           "targetPort": name});
        if kind != "ClusterIP" {
            p["nodePort"] = json!(30000 + rng.below(4) + 10 * k);
        }
        ports.push(p);
    }
    let mut spec = json!({"type": kind, "clusterIP": cluster_ip, "ports": ports});
    if rng.chance(20) {
        spec["externalIPs"] = json!([format!("172.18.0.{}", 100 + rng.below(3))]);
    }
    if rng.chance(30) {
        spec["externalTrafficPolicy"] = json!("Local");
        spec["healthCheckNodePort"] = json!(32000 + rng.below(3));
    }
    if rng.chance(25) {
        spec["internalTrafficPolicy"] = json!("Local");
    }
    if rng.chance(20) {
        spec["sessionAffinity"] = json!("ClientIP");
        let timeout = if rng.chance(15) {
            0
        } else {
            60 + rng.below(100)
        };
        spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": timeout}});
    }
    let mut metadata = json!({"name": format!("svc-{i}"), "namespace": ns});
    if rng.chance(5) {
        metadata["labels"] = json!({"service.kubernetes.io/service-proxy-name": "other"});
    }
    let mut status = json!({});
    if kind == "LoadBalancer" && rng.chance(60) {
        status =
            json!({"loadBalancer": {"ingress": [{"ip": format!("172.18.1.{}", rng.below(3))}]}});
    }
    serde_json::from_value(json!({"metadata": metadata, "spec": spec, "status": status})).unwrap()
}

/// A random slice `slice-{j}` of a random Service (label), with endpoints from a small
/// address pool (so slices of one Service overlap) in random conditions.
fn random_slice(rng: &mut Rng, ns: &str, j: usize) -> EndpointSlice {
    let mut endpoints = Vec::new();
    for _ in 0..rng.below(4) {
        let ip = format!("10.244.{}.{}", 1 + rng.below(2), 1 + rng.below(5));
        let mut e = json!({"addresses": [ip], "nodeName": rng.pick(&["node-1", "node-2"])});
        if rng.chance(70) {
            e["conditions"] = json!({"ready": rng.chance(60), "serving": rng.chance(70),
                                     "terminating": rng.chance(30)});
        }
        endpoints.push(e);
    }
    let mut ports = Vec::new();
    for _ in 0..1 + rng.below(2) {
        let protocol = *rng.pick(&["TCP", "TCP", "UDP", "SCTP", "ICMP"]);
        ports.push(
            json!({"name": rng.pick(&["http", "dns", "metrics"]), "port": 8080 + rng.below(3),
                          "protocol": protocol}),
        );
    }
    let mut labels = json!({});
    if !rng.chance(5) {
        labels = json!({"kubernetes.io/service-name": format!("svc-{}", rng.below(SERVICES))});
    }
    let address_type = if rng.chance(5) { "IPv6" } else { "IPv4" };
    serde_json::from_value(json!({
        "metadata": {"name": format!("slice-{j}"), "namespace": ns, "labels": labels},
        "addressType": address_type, "ports": ports, "endpoints": endpoints}))
    .unwrap()
}

/// The cluster as the API would list it.
#[derive(Default)]
struct Cluster {
    services: BTreeMap<(String, String), Service>,
    slices: BTreeMap<(String, String), EndpointSlice>,
}

impl Cluster {
    fn plan(&self) -> (Vec<ServicePort>, Vec<podnet_services::Problem>) {
        let services: Vec<Service> = self.services.values().cloned().collect();
        // In name order: the order the planner merges a Service's slices in.
        let slices: Vec<EndpointSlice> = self.slices.values().cloned().collect();
        plan_services(
            Snapshot {
                services: &services,
                slices: &slices,
            },
            &node(),
        )
    }
}

/// One random change, told to the cluster and the planner.
fn random_change(rng: &mut Rng, cluster: &mut Cluster, planner: &mut Planner) {
    let ns = *rng.pick(&NAMESPACES);
    match rng.below(10) {
        0..=2 => {
            let i = rng.below(SERVICES);
            let s = random_service(rng, ns, i);
            planner.apply_service(&s);
            cluster.services.insert((ns.into(), format!("svc-{i}")), s);
        }
        3 => {
            let name = format!("svc-{}", rng.below(SERVICES));
            planner.delete_service(&ObjectName::new(ns, &name));
            cluster.services.remove(&(ns.into(), name));
        }
        4..=8 => {
            let j = rng.below(12);
            let s = random_slice(rng, ns, j);
            planner.apply_slice(&s);
            cluster.slices.insert((ns.into(), format!("slice-{j}")), s);
        }
        _ => {
            let name = format!("slice-{}", rng.below(12));
            planner.delete_slice(&ObjectName::new(ns, &name));
            cluster.slices.remove(&(ns.into(), name));
        }
    }
}

fn config() -> ProxyConfig {
    ProxyConfig {
        cluster_cidr: Some(("10.244.0.0".parse().unwrap(), 16)),
        service_cidr: Some(("10.96.0.0".parse().unwrap(), 12)),
    }
}

#[test]
fn incremental_planning_and_syncing_equal_full_ones() {
    for seed in 0..40u64 {
        let mut rng = Rng(seed);
        let mut cluster = Cluster::default();
        let mut planner = Planner::new(node());
        // The latest ports the planner gave per Service.
        let mut planned: BTreeMap<ObjectName, Vec<ServicePort>> = BTreeMap::new();
        let mut full = Proxy::new(config());
        let mut incremental = Proxy::new(config());
        for step in 0..150 {
            for _ in 0..1 + rng.below(4) {
                random_change(&mut rng, &mut cluster, &mut planner);
            }
            let updates = planner.plan();
            assert!(!planner.is_dirty());
            for (service, ports) in &updates {
                planned.insert(service.clone(), ports.clone());
            }
            let (want, want_problems) = cluster.plan();
            let mut got: Vec<ServicePort> = planned.values().flatten().cloned().collect();
            got.sort_by(|a, b| a.name.cmp(&b.name));
            assert_eq!(got, want, "seed {seed} step {step}: planned ports");
            assert_eq!(
                planner.problems(),
                want_problems,
                "seed {seed} step {step}: problems"
            );

            let a = full.sync(want);
            let b = incremental.sync_services(updates);
            let ctx = format!("seed {seed} step {step}");
            assert_eq!(a.transaction, b.transaction, "{ctx}: transaction");
            assert_eq!(a.problems, b.problems, "{ctx}: problems");
            assert_eq!(a.changed, b.changed, "{ctx}: changed ports");
            assert_eq!(a.stale_udp, b.stale_udp, "{ctx}: stale UDP endpoints");
            assert_eq!(a.fresh_udp, b.fresh_udp, "{ctx}: fresh UDP addresses");
            assert_eq!(full.table(), incremental.table(), "{ctx}: table");
            assert_eq!(
                full.ports().collect::<Vec<_>>(),
                incremental.ports().collect::<Vec<_>>()
            );
            if rng.chance(5) {
                full.failed();
                incremental.failed();
            }
        }
    }
}

#[test]
fn replace_all_deletes_what_is_missing_and_dirties_only_changes() {
    let mut rng = Rng(7);
    let mut cluster = Cluster::default();
    let mut planner = Planner::new(node());
    for _ in 0..60 {
        random_change(&mut rng, &mut cluster, &mut planner);
    }
    planner.plan();
    // The same snapshot again: nothing to re-plan.
    let services: Vec<Service> = cluster.services.values().cloned().collect();
    let slices: Vec<EndpointSlice> = cluster.slices.values().cloned().collect();
    planner.replace_all(&services, &slices);
    assert!(
        !planner.is_dirty(),
        "an unchanged snapshot re-plans nothing"
    );
    // An empty snapshot: every Service planned before comes back with no ports.
    planner.replace_all(&[], &[]);
    let updates = planner.plan();
    assert!(!updates.is_empty());
    assert!(updates.iter().all(|(_, ports)| ports.is_empty()));
    assert_eq!(planner.services(), 0);
    assert!(planner.problems().is_empty());
}

#[test]
fn the_property_test_sees_collisions_and_problems() {
    // Guards the generator: the equality above would prove little without refused
    // ports and bad objects in the sequences.
    let (mut refused, mut bad) = (0, 0);
    for seed in 0..10u64 {
        let mut rng = Rng(seed);
        let mut cluster = Cluster::default();
        let mut planner = Planner::new(node());
        let mut proxy = Proxy::new(config());
        for _ in 0..100 {
            random_change(&mut rng, &mut cluster, &mut planner);
            let plan = proxy.sync_services(planner.plan());
            refused += plan.problems.len();
            bad += planner.problems().len();
        }
    }
    assert!(refused > 50, "refused ports: {refused}");
    assert!(bad > 50, "bad objects: {bad}");
}
