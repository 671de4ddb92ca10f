//! `run` end to end with the control plane's pod CIDR allocation off (root; a network
//! namespace of its own): the agent claims a subnet (a Lease) and writes it into the CNI
//! config, routes to a peer by the subnet the peer's claim holds, and when its Node gets
//! `spec.podCIDR` after all, moves to it and releases its claim. A claim deleted by hand
//! is made again on the same subnet.

mod common;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use podnet_agent::Config;
use podnet_agent::claim;
use serde_json::json;
use std::process::Command;
use std::time::{Duration, Instant};

async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !f().await {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn routes(ns: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", ns, "route", "show", "proto", "201"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// node → subnet of the claims it holds (`None`: released).
async fn holders(api: &Api<Lease>) -> Vec<(Option<String>, String)> {
    let mut out: Vec<(Option<String>, String)> = api
        .list(&ListParams::default().labels(&claim::selector()))
        .await
        .unwrap()
        .items
        .iter()
        .map(|l| {
            let c = claim::read_claim(l).unwrap();
            (c.holder, c.cidr.to_string())
        })
        .collect();
    out.sort();
    out
}

#[test]
fn the_agent_claims_its_subnet_when_the_cluster_allocates_none() {
    let conf = tempfile::tempdir().unwrap();
    let conf_dir = conf.path().to_path_buf();
    common::in_node_namespace("claim", "192.168.88.1", &[], move |name| async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = podnet_apiserver::Config {
            allocate_node_cidrs: false,
            ..Default::default()
        };
        tokio::spawn(podnet_apiserver::serve(listener, server));
        let client =
            kube::Client::try_from(kube::Config::new(format!("http://{addr}").parse().unwrap()))
                .unwrap();
        let namespace: Namespace =
            serde_json::from_value(json!({"metadata": {"name": "podnet-system"}})).unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap();
        let nodes: Api<Node> = Api::all(client.clone());
        common::add_node(&nodes, "me", "192.168.88.1").await;
        common::add_node(&nodes, "peer", "192.168.88.2").await;
        // The peer's agent has claimed 10.244.77.0/24.
        let leases: Api<Lease> = Api::namespaced(client.clone(), "podnet-system");
        let peer: Lease = serde_json::from_value(json!({
                "metadata": {"name": "podcidr-10-244-77-0-24",
                             "labels": {claim::CLAIM_LABEL: claim::CLAIM_LABEL_VALUE}},
                "spec": {"holderIdentity": "peer"}}))
        .unwrap();
        leases.create(&PostParams::default(), &peer).await.unwrap();

        let config = Config {
            resync: Duration::from_secs(60),
            proxy_services: false,
            enforce_policy: false,
            service_cidr: None,
            claim_namespace: Some("podnet-system".into()),
            claim_grace: Duration::from_millis(300),
            ..common::config(conf_dir.clone(), "127.0.0.1:19211")
        };
        let agent = tokio::spawn(podnet_agent::run(config, client.clone()));
        let file = conf_dir.join("10-podnet.conflist");
        let conflist = || std::fs::read_to_string(&file).unwrap_or_default();

        // Its claim: one Lease held by "me", the subnet in the CNI config.
        let mut mine = String::new();
        eventually("a claim held by me", async || {
            let h = holders(&leases).await;
            match h.iter().find(|(n, _)| n.as_deref() == Some("me")) {
                Some((_, c)) => {
                    mine = c.clone();
                    true
                }
                None => false,
            }
        })
        .await;
        assert_ne!(mine, "10.244.77.0/24");
        let network = mine.split('/').next().unwrap().to_string();
        eventually("conflist with the claimed subnet", async || {
            conflist().contains(&network)
        })
        .await;
        let ns_name = name.clone();
        eventually("route to the peer's claimed subnet", async || {
            routes(&ns_name).contains("10.244.77.0/24 via 192.168.88.2")
        })
        .await;
        assert_eq!(
            holders(&leases).await,
            vec![
                (Some("me".into()), mine.clone()),
                (Some("peer".into()), "10.244.77.0/24".into())
            ]
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
        );

        // Someone deletes this node's claim by hand: the agent claims the same subnet
        // again (its pods hold addresses from it), not a new one.
        let claim_name = podnet_cluster::claim_name(mine.parse().unwrap());
        leases
            .delete(&claim_name, &DeleteParams::default())
            .await
            .unwrap();
        eventually(
            "the deleted claim made again, on the same subnet",
            async || leases.get_opt(&claim_name).await.unwrap().is_some(),
        )
        .await;
        assert!(
            holders(&leases)
                .await
                .contains(&(Some("me".into()), mine.clone())),
            "{:?}",
            holders(&leases).await
        );
        assert!(conflist().contains(&network));

        // The control plane allocates after all: spec.podCIDR wins, the claim is
        // given back.
        let spec = json!({"spec": {"podCIDR": "10.244.200.0/24"}});
        nodes
            .patch("me", &PatchParams::default(), &Patch::Merge(&spec))
            .await
            .unwrap();
        eventually("conflist with spec.podCIDR", async || {
            conflist().contains("10.244.200.0")
        })
        .await;
        eventually("claim released", async || {
            holders(&leases)
                .await
                .iter()
                .any(|(n, c)| n.is_none() && *c == mine)
        })
        .await;
        assert!(routes(&name).contains("10.244.77.0/24 via 192.168.88.2"));
        // Counted: at least the first claim and the claim made again, and the release.
        let metrics = common::http_get("127.0.0.1:19211", "/metrics");
        let count = |labels: &str| -> u64 {
            let line = format!("podnet_agent_pod_cidr_claims_total{{{labels}}} ");
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(line.as_str()))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        assert!(count(r#"op="claim",result="ok""#) >= 2, "{metrics}");
        assert!(count(r#"op="release",result="ok""#) >= 1, "{metrics}");
        assert_eq!(count(r#"op="claim",result="error""#), 0, "{metrics}");
        agent.abort();
    });
}
