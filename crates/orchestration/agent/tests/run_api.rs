//! `run` end to end inside a test namespace: the lab's API server on loopback, Nodes
//! created through the API, the agent writes the CNI config, programs the route, serves
//! /healthz and /metrics, follows a node leaving, and programs Services: a connection to a
//! cluster IP reaches its endpoint (DNAT by the agent's nf_tables table), a Service without
//! endpoints refuses at once, an endpoint change is followed, and a UDP client that keeps
//! its source port follows its Service to a new endpoint (its conntrack entry is deleted).

mod common;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
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

#[test]
fn agent_runs_against_the_lab_api_server() {
    let conf = tempfile::tempdir().unwrap();
    let conf_dir = conf.path().to_path_buf();
    common::in_node_namespace(
        "run",
        "192.168.88.1",
        &["route add 10.96.0.0/12 dev eth0"],
        move |name| async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(podnet_apiserver::serve(listener, Default::default()));
            let client = kube::Client::try_from(kube::Config::new(
                format!("http://{addr}").parse().unwrap(),
            ))
            .unwrap();
            let api: Api<Node> = Api::all(client.clone());
            common::add_node(&api, "me", "192.168.88.1").await;
            common::add_node(&api, "peer", "192.168.88.2").await;
            let config = common::config(conf_dir.clone(), "127.0.0.1:19201");
            let agent = tokio::spawn(podnet_agent::run(config, client.clone()));
            let file = conf_dir.join("10-podnet.conflist");
            eventually("conflist written", || file.exists()).await;
            eventually("healthy", || {
                TcpStream::connect("127.0.0.1:19201").is_ok()
                    && common::http_get("127.0.0.1:19201", "/healthz").starts_with("HTTP/1.1 200")
            })
            .await;
            let ns_name = name.clone();
            eventually("route to the peer", || {
                routes(&ns_name).contains("via 192.168.88.2")
            })
            .await;
            let metrics = common::http_get("127.0.0.1:19201", "/metrics");
            for m in [
                "podnet_agent_syncs_total{result=\"ok\"}",
                "podnet_agent_sync_duration_seconds_bucket",
                "podnet_agent_peers 1",
                "podnet_agent_routes 1",
                "podnet_agent_kernel_writes_total",
            ] {
                assert!(metrics.contains(m), "{m} missing in\n{metrics}");
            }
            api.delete("peer", &DeleteParams::default()).await.unwrap();
            eventually("route removed", || routes(&ns_name).trim().is_empty()).await;
            services(client).await;
            let metrics = common::http_get("127.0.0.1:19201", "/metrics");
            for m in [
                "podnet_agent_service_syncs_total{result=\"ok\"}",
                "podnet_agent_service_ports 3",
                "podnet_agent_service_problems 0",
            ] {
                assert!(metrics.contains(m), "{m} missing in\n{metrics}");
            }
            agent.abort();
        },
    );
}

/// Runs on the test namespace's runtime: listeners and clients are inside it.
async fn services(client: kube::Client) {
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // Two endpoints on this node's address, each answering with its own name.
    for (port, answer) in [(8080u16, "first"), (8081, "second")] {
        let l = tokio::net::TcpListener::bind(("192.168.88.1", port))
            .await
            .unwrap();
        tokio::spawn(async move {
            loop {
                let (mut c, _) = l.accept().await.unwrap();
                let _ = c.write_all(answer.as_bytes()).await;
            }
        });
    }
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    for (name, ip) in [("web", "10.96.0.50"), ("empty", "10.96.0.51")] {
        let svc: Service = serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}))
        .unwrap();
        svcs.create(&PostParams::default(), &svc).await.unwrap();
    }
    let slices: Api<EndpointSlice> = Api::namespaced(client, "default");
    let slice = |port: u16| -> EndpointSlice {
        serde_json::from_value(json!({"metadata": {"name": "web-manual",
                "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["192.168.88.1"], "conditions": {"ready": true}, "nodeName": "me"}]}))
        .unwrap()
    };
    slices
        .create(&PostParams::default(), &slice(8080))
        .await
        .unwrap();

    async fn answer(addr: &str) -> std::io::Result<String> {
        let mut c = tokio::net::TcpStream::connect(addr).await?;
        let mut s = String::new();
        c.read_to_string(&mut s).await?;
        Ok(s)
    }
    let start = Instant::now();
    loop {
        match answer("10.96.0.50:80").await {
            Ok(s) => {
                assert_eq!(s, "first");
                break;
            }
            Err(e) => assert!(start.elapsed() < Duration::from_secs(10), "cluster IP: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // No endpoints: refused at once (a TCP reset from the agent's table), not a timeout.
    let t = Instant::now();
    let err = answer("10.96.0.51:80").await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // The endpoint moves to another port: new connections follow within a second.
    let mut s = slices.get("web-manual").await.unwrap();
    s.ports = slice(8081).ports;
    slices
        .replace("web-manual", &PostParams::default(), &s)
        .await
        .unwrap();
    let t = Instant::now();
    loop {
        if answer("10.96.0.50:80").await.ok().as_deref() == Some("second") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "endpoint change not followed in 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    udp_follows_its_service(svcs, slices).await;
}

/// kubernetes#19029: a UDP client sending from one source port to a cluster IP keeps its
/// conntrack entry alive; when the endpoint changes, the agent must delete that entry, or
/// the client keeps reaching the old endpoint forever.
async fn udp_follows_its_service(
    svcs: Api<k8s_openapi::api::core::v1::Service>,
    slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice>,
) {
    for (port, answer) in [(9053u16, "old"), (9054, "new")] {
        let s = tokio::net::UdpSocket::bind(("192.168.88.1", port))
            .await
            .unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            loop {
                let (_, from) = s.recv_from(&mut buf).await.unwrap();
                let _ = s.send_to(answer.as_bytes(), from).await;
            }
        });
    }
    let svc = serde_json::from_value(json!({"metadata": {"name": "dns"},
        "spec": {"clusterIP": "10.96.0.53", "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}}))
    .unwrap();
    svcs.create(&PostParams::default(), &svc).await.unwrap();
    let slice = |port: u16| -> k8s_openapi::api::discovery::v1::EndpointSlice {
        serde_json::from_value(json!({"metadata": {"name": "dns-manual",
                "labels": {"kubernetes.io/service-name": "dns"}},
            "addressType": "IPv4", "ports": [{"name": "dns", "port": port, "protocol": "UDP"}],
            "endpoints": [{"addresses": ["192.168.88.1"], "conditions": {"ready": true}}]}))
        .unwrap()
    };
    slices
        .create(&PostParams::default(), &slice(9053))
        .await
        .unwrap();
    let client = tokio::net::UdpSocket::bind("192.168.88.1:40053")
        .await
        .unwrap();
    client.connect("10.96.0.53:53").await.unwrap();
    let ask = || async {
        let _ = client.send(b"?").await;
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(200), client.recv(&mut buf)).await {
            Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).to_string(),
            _ => String::new(),
        }
    };
    let t = Instant::now();
    while ask().await != "old" {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "UDP service never answered"
        );
    }
    let mut s = slices.get("dns-manual").await.unwrap();
    s.ports = slice(9054).ports;
    slices
        .replace("dns-manual", &PostParams::default(), &s)
        .await
        .unwrap();
    let t = Instant::now();
    loop {
        // The old endpoint still answers: only a deleted conntrack entry moves the flow.
        if ask().await == "new" {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "a UDP client with a fixed source port still reaches the old endpoint"
        );
    }
}
