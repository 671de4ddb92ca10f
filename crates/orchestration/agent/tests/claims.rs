//! Pod CIDR claims against the real lab API server with its own allocation off
//! (`allocate_node_cidrs: false`, as a cluster without `--allocate-node-cidrs`): many
//! agents at once, each a thread with its own runtime and its own API connection, run
//! the agent's claim step (`Claimer::ensure`, what `podnet_agent::run` calls before a
//! sync) and must end with distinct subnets, each node holding exactly one Lease; a
//! restarted agent keeps its subnet; a deleted node's stale claim goes to exactly one of
//! the agents racing for it; hand-set Node pod CIDRs are respected and a full cluster is
//! an error, not a double allocation; after a cluster CIDR change each node claims anew
//! and releases its old claim.

use ipnet::Ipv4Net;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{Api, ListParams, PostParams};
use podnet_agent::claim::{self, Claimer};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Barrier};

const NAMESPACE: &str = "podnet-system";
const AGENTS: usize = 12;

/// The API server on loopback (its own thread and runtime, for the whole test); its URL.
fn start_api_server() -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let config = podnet_apiserver::Config {
                allocate_node_cidrs: false,
                ..Default::default()
            };
            podnet_apiserver::serve(listener, config).await.unwrap();
        });
    });
    format!("http://{}", rx.recv().unwrap())
}

fn client(url: &str) -> kube::Client {
    kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap()
}

/// Runs `f` on a fresh current-thread runtime (one per simulated agent).
fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// The namespace and Nodes `node-0`…; `spec` gives some of them a pod CIDR.
fn setup(url: &str, nodes: usize, spec: &[(&str, &str)]) {
    block_on(async move {
        let c = client(url);
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": NAMESPACE}})).unwrap();
        Api::<Namespace>::all(c.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
        let api: Api<Node> = Api::all(c);
        let mut all: Vec<(String, Option<&str>)> =
            (0..nodes).map(|i| (format!("node-{i}"), None)).collect();
        all.extend(spec.iter().map(|(n, c)| (n.to_string(), Some(*c))));
        for (name, cidr) in all {
            let node: Node = serde_json::from_value(
                json!({"metadata": {"name": name}, "spec": {"podCIDR": cidr}}),
            )
            .unwrap();
            let created = api.create(&PostParams::default(), &node).await.unwrap();
            assert_eq!(
                created.spec.and_then(|s| s.pod_cidr).as_deref(),
                cidr,
                "the server allocates nothing"
            );
        }
    });
}

/// `nodes` agents claim at once (released together by a barrier); node → result.
fn claim_all(
    url: &str,
    nodes: &[String],
    cluster: &str,
) -> BTreeMap<String, Result<Ipv4Net, String>> {
    let barrier = Arc::new(Barrier::new(nodes.len()));
    let cluster: Ipv4Net = cluster.parse().unwrap();
    let threads: Vec<_> = nodes
        .iter()
        .map(|node| {
            let (url, node, barrier) = (url.to_string(), node.clone(), barrier.clone());
            std::thread::spawn(move || {
                let r = block_on(async {
                    let c = client(&url);
                    let claimer = Claimer::new(c.clone(), NAMESPACE, &node, cluster, 24);
                    let nodes_api: Api<Node> = Api::all(c);
                    let list_nodes = || {
                        let api = nodes_api.clone();
                        async move { Ok(api.list(&ListParams::default()).await?.items) }
                    };
                    barrier.wait();
                    claimer.ensure(list_nodes).await
                })
                .map_err(|e| format!("{e:#}"));
                (node, r)
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

fn leases(url: &str) -> Vec<Lease> {
    block_on(async move {
        Api::<Lease>::namespaced(client(url), NAMESPACE)
            .list(&ListParams::default().labels(&claim::selector()))
            .await
            .unwrap()
            .items
    })
}

/// Holder → the subnets of the claims it holds.
fn by_holder(leases: &[Lease]) -> BTreeMap<String, Vec<Ipv4Net>> {
    let mut out: BTreeMap<String, Vec<Ipv4Net>> = BTreeMap::new();
    for l in leases {
        let c = claim::read_claim(l).expect("every labelled Lease is a claim");
        out.entry(c.holder.unwrap_or_default())
            .or_default()
            .push(c.cidr);
    }
    out
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("node-{i}")).collect()
}

/// Distinct subnets of `cluster`, and each node holds exactly its one.
fn assert_one_each(
    got: &BTreeMap<String, Result<Ipv4Net, String>>,
    leases: &[Lease],
    cluster: &str,
) {
    let cluster: Ipv4Net = cluster.parse().unwrap();
    let cidrs: BTreeSet<Ipv4Net> = got
        .values()
        .map(|r| *r.as_ref().expect("every agent got a subnet"))
        .collect();
    assert_eq!(cidrs.len(), got.len(), "two agents got one subnet: {got:?}");
    for c in &cidrs {
        assert!(cluster.contains(c) && c.prefix_len() == 24, "{c}");
    }
    let held = by_holder(leases);
    for (node, r) in got {
        assert_eq!(
            held.get(node),
            Some(&vec![*r.as_ref().unwrap()]),
            "{node}: {held:?}"
        );
    }
}

#[test]
fn many_agents_at_once_get_distinct_subnets_and_keep_them_across_a_restart() {
    let url = start_api_server();
    setup(&url, AGENTS, &[]);
    let nodes = names(AGENTS);
    let got = claim_all(&url, &nodes, "10.244.0.0/16");
    let first = leases(&url);
    assert_one_each(&got, &first, "10.244.0.0/16");
    assert_eq!(first.len(), AGENTS, "one Lease per agent, nothing extra");
    for l in &first {
        let c = claim::read_claim(l).unwrap();
        assert_eq!(
            l.metadata.annotations.as_ref().unwrap()[claim::CIDR_ANNOTATION],
            c.cidr.to_string()
        );
        let spec = l.spec.as_ref().unwrap();
        assert_eq!(spec.lease_transitions, Some(0));
        assert!(spec.lease_duration_seconds.is_none(), "claims never expire");
    }

    // Every agent restarts (at once): same subnets, the same Leases renewed.
    let again = claim_all(&url, &nodes, "10.244.0.0/16");
    assert_eq!(again, got);
    let second = leases(&url);
    assert_eq!(second.len(), AGENTS);
    let versions = |ls: &[Lease]| -> BTreeMap<String, (String, String)> {
        ls.iter()
            .map(|l| {
                (
                    l.metadata.name.clone().unwrap(),
                    (
                        l.metadata.uid.clone().unwrap(),
                        l.metadata.resource_version.clone().unwrap(),
                    ),
                )
            })
            .collect()
    };
    let (v1, v2) = (versions(&first), versions(&second));
    assert_eq!(v1.keys().collect::<Vec<_>>(), v2.keys().collect::<Vec<_>>());
    for (name, (uid, rv)) in &v1 {
        assert_eq!(&v2[name].0, uid, "{name}: the same object");
        assert_ne!(&v2[name].1, rv, "{name}: renewed by a conditional write");
    }
}

#[test]
fn a_deleted_nodes_claim_is_taken_over_exactly_once() {
    let url = start_api_server();
    setup(&url, AGENTS, &[]);
    // A claim left by node "gone", which no longer exists, and one released by its holder.
    block_on(async {
        let api: Api<Lease> = Api::namespaced(client(&url), NAMESPACE);
        for (name, holder) in [
            ("podcidr-10-244-200-0-24", Some("gone")),
            ("podcidr-10-244-201-0-24", None),
        ] {
            let lease: Lease = serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {claim::CLAIM_LABEL: claim::CLAIM_LABEL_VALUE}},
                "spec": {"holderIdentity": holder, "leaseTransitions": 3}}))
            .unwrap();
            api.create(&PostParams::default(), &lease).await.unwrap();
        }
    });
    let got = claim_all(&url, &names(AGENTS), "10.244.0.0/16");
    let all = leases(&url);
    assert_one_each(&got, &all, "10.244.0.0/16");
    // Reused, not left behind: 12 agents, 12 Leases, the stale two among them.
    assert_eq!(all.len(), AGENTS);
    for stale in ["10.244.200.0/24", "10.244.201.0/24"] {
        let stale: Ipv4Net = stale.parse().unwrap();
        let winners: Vec<&String> = got
            .iter()
            .filter(|(_, r)| r.as_ref().ok() == Some(&stale))
            .map(|(n, _)| n)
            .collect();
        assert_eq!(winners.len(), 1, "{stale}: {got:?}");
        let lease = all
            .iter()
            .find(|l| claim::read_claim(l).unwrap().cidr == stale)
            .unwrap();
        let spec = lease.spec.as_ref().unwrap();
        assert_eq!(spec.holder_identity.as_ref(), Some(winners[0]));
        assert_eq!(
            spec.lease_transitions,
            Some(4),
            "one transition: taken over once"
        );
    }
}

#[test]
fn node_pod_cidrs_are_respected_and_a_full_cluster_is_an_error() {
    let url = start_api_server();
    // 10.0.0.0/22 holds four /24s; a hand-set /23 takes two of them.
    setup(&url, 3, &[("fixed", "10.0.0.0/23")]);
    let got = claim_all(&url, &names(3), "10.0.0.0/22");
    let ok: BTreeSet<Ipv4Net> = got.values().filter_map(|r| r.clone().ok()).collect();
    assert_eq!(
        ok,
        BTreeSet::from([
            "10.0.2.0/24".parse().unwrap(),
            "10.0.3.0/24".parse().unwrap()
        ])
    );
    let failed: Vec<&String> = got.values().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(failed.len(), 1, "{got:?}");
    assert!(failed[0].contains("has no free /24"), "{}", failed[0]);
    assert_eq!(leases(&url).len(), 2);
}

#[test]
fn after_a_cluster_cidr_change_old_claims_are_given_back() {
    let url = start_api_server();
    setup(&url, 3, &[]);
    let nodes = names(3);
    let before = claim_all(&url, &nodes, "10.244.0.0/16");
    assert_one_each(&before, &leases(&url), "10.244.0.0/16");
    // The agents restart with another cluster CIDR: new subnets, and the old claims are
    // released (no holder: free for anyone, as a released Lease is).
    let after = claim_all(&url, &nodes, "10.250.0.0/16");
    let all = leases(&url);
    let held = by_holder(&all);
    for (node, r) in &after {
        assert_eq!(
            held.get(node),
            Some(&vec![*r.as_ref().unwrap()]),
            "{held:?}"
        );
    }
    let mut released = held.get("").cloned().unwrap_or_default();
    released.sort();
    let mut old: Vec<Ipv4Net> = before.values().map(|r| *r.as_ref().unwrap()).collect();
    old.sort();
    assert_eq!(released, old, "{held:?}");
}
