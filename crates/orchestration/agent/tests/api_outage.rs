//! The API server becomes unreachable under a running agent (issue 7, "robust against the
//! API"): the data plane stays exactly as it was, the agent retries with backoff (not in
//! a hot loop), and once the API is back it follows changes made meanwhile.
//!
//! The agent reaches the lab's API server through a TCP relay in the test, which can be
//! "cut": every relayed connection is closed at once and new ones are accepted and closed
//! straight away (counted, so the retry rate is visible). The API server itself keeps
//! running with its state, as a real one would behind a broken network. The agent's
//! resync period is 1 s, so several resyncs (from its caches) happen during the outage.

mod common;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, PostParams};
use podnet_agent::Config;
use serde_json::json;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::AbortHandle;

/// A TCP relay to the API server that can be cut and restored.
struct Relay {
    up: AtomicBool,
    /// Open relayed connections, aborted when the relay is cut.
    live: Mutex<Vec<AbortHandle>>,
    /// When each connection refused while cut arrived.
    refused: Mutex<Vec<Instant>>,
}

impl Relay {
    async fn start(upstream: SocketAddr) -> (Arc<Relay>, SocketAddr) {
        let relay = Arc::new(Relay {
            up: AtomicBool::new(true),
            live: Mutex::new(Vec::new()),
            refused: Mutex::new(Vec::new()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let r = relay.clone();
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                if !r.up.load(Ordering::SeqCst) {
                    r.refused.lock().unwrap().push(Instant::now());
                    drop(conn);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut conn, &mut up).await;
                    }
                });
                r.live.lock().unwrap().push(task.abort_handle());
            }
        });
        (relay, addr)
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for t in self.live.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

fn run(ns: &str, cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(out.status.success(), "{cmd} {args:?} in {ns}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Everything the agent programs in the namespace: its routes, its nf_tables tables.
fn data_plane(ns: &str) -> String {
    let routes = run(ns, "ip", &["-n", ns, "route", "show", "proto", "201"]);
    let tables = run(ns, "ip", &["netns", "exec", ns, "nft", "list", "ruleset"]);
    format!("{routes}\n{tables}")
}

async fn eventually(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out after {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

#[test]
fn api_outage_keeps_the_data_plane_and_retries_with_backoff() {
    let conf = tempfile::tempdir().unwrap();
    let conf_dir = conf.path().to_path_buf();
    common::in_node_namespace("outage", "192.168.89.1", &[], move |name| async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api_addr = listener.local_addr().unwrap();
        tokio::spawn(podnet_apiserver::serve(listener, Default::default()));
        let (relay, relay_addr) = Relay::start(api_addr).await;
        // The test's own client goes straight to the API server; the agent's through
        // the relay.
        let direct = kube::Client::try_from(kube::Config::new(
            format!("http://{api_addr}").parse().unwrap(),
        ))
        .unwrap();
        let via_relay = kube::Client::try_from(kube::Config::new(
            format!("http://{relay_addr}").parse().unwrap(),
        ))
        .unwrap();
        let nodes: Api<Node> = Api::all(direct.clone());
        common::add_node(&nodes, "me", "192.168.89.1").await;
        common::add_node(&nodes, "peer", "192.168.89.2").await;
        let svc: Service = serde_json::from_value(json!({"metadata": {"name": "web"},
                "spec": {"clusterIP": "10.96.0.70", "ports": [{"port": 80, "targetPort": 8080}]}}))
        .unwrap();
        Api::<Service>::namespaced(direct.clone(), "default")
            .create(&PostParams::default(), &svc)
            .await
            .unwrap();
        let slice: EndpointSlice = serde_json::from_value(json!({"metadata": {"name": "web-1",
                    "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4", "ports": [{"port": 8080, "protocol": "TCP"}],
                "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": true}}]}))
        .unwrap();
        Api::<EndpointSlice>::namespaced(direct.clone(), "default")
            .create(&PostParams::default(), &slice)
            .await
            .unwrap();

        let config = Config {
            resync: Duration::from_secs(1),
            ..common::config(conf_dir.clone(), "127.0.0.1:19202")
        };
        let agent = tokio::spawn(podnet_agent::run(config, via_relay));
        let n = name.clone();
        let limit = Duration::from_secs(10);
        eventually(
            "route to the peer and the service programmed",
            limit,
            || {
                let d = data_plane(&n);
                d.contains("via 192.168.89.2") && d.contains("10.244.1.5")
            },
        )
        .await;
        // Let the first syncs settle, then take the picture.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let before = data_plane(&name);

        relay.cut();
        let cut_at = Instant::now();
        for second in 1..=8 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert_eq!(
                data_plane(&name),
                before,
                "the data plane changed {second} s into the API outage"
            );
            assert!(!agent.is_finished(), "the agent ended during the outage");
        }
        let attempts: Vec<Duration> = relay
            .refused
            .lock()
            .unwrap()
            .iter()
            .map(|t| t.duration_since(cut_at))
            .collect();
        // Six watches (nodes, services, endpointslices, pods, namespaces,
        // networkpolicies) retry with backoff: a handful of attempts each in 8 s, not
        // a hot loop (which would be thousands).
        assert!(
            !attempts.is_empty(),
            "the agent did not try to reach the API server during the outage"
        );
        assert!(
            attempts.len() <= 6 * 8,
            "{} connection attempts in 8 s: no backoff ({attempts:?})",
            attempts.len()
        );
        let first_half = attempts
            .iter()
            .filter(|t| **t < Duration::from_secs(4))
            .count();
        let second_half = attempts.len() - first_half;
        assert!(
            second_half <= first_half,
            "retries did not slow down: {first_half} in 0–4 s, {second_half} in 4–8 s"
        );
        eprintln!(
            "outage: {} attempts ({first_half} in 0–4 s, {second_half} in 4–8 s)",
            attempts.len()
        );

        // A node joins while the agent cannot see it; once the API is back the agent
        // catches up (its backoff is capped, so this is bounded).
        common::add_node(&nodes, "late", "192.168.89.3").await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            !data_plane(&name).contains("via 192.168.89.3"),
            "the agent saw a change while the API was unreachable"
        );
        relay.restore();
        let n = name.clone();
        let took = eventually(
            "the node added during the outage is followed",
            Duration::from_secs(40),
            || data_plane(&n).contains("via 192.168.89.3"),
        )
        .await;
        eprintln!("caught up {took:?} after the API came back");
        let after = data_plane(&name);
        assert!(after.contains("via 192.168.89.2"), "{after}");
        assert!(after.contains("10.244.1.5"), "{after}");
        agent.abort();
    });
}
