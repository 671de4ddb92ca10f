//! `run` end to end inside a test namespace: the lab's API server on loopback, Nodes
//! created through the API, the agent writes the CNI config, programs the route, serves
//! /healthz and /metrics, and follows a node leaving.

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use podnet_agent::{Config, Mode};
use podnet_netlink::netns;
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

struct Ns(String);
impl Drop for Ns {
    fn drop(&mut self) {
        let _ = netns::delete_named(&self.0);
    }
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

async fn add_node(api: &Api<Node>, name: &str, ip: &str) {
    let n: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": name}
    }))
    .unwrap();
    api.create(&PostParams::default(), &n).await.unwrap();
    let status = json!({"status": {"addresses": [{"type": "InternalIP", "address": ip}]}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

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
    let name = format!("pa{}-run", std::process::id());
    netns::create_named(&name).unwrap();
    let ns = Ns(name.clone());
    let conf = tempfile::tempdir().unwrap();
    let conf_dir = conf.path().to_path_buf();
    let path = netns::named_path(&ns.0);
    std::thread::spawn(move || {
        let fd = netns::open(path).unwrap();
        let _g = netns::enter(&fd).unwrap();
        for args in [
            "link set lo up",
            "link add eth0 type veth peer name eth1",
            "addr add 192.168.88.1/24 dev eth0",
            "link set eth0 up",
            "link set eth1 up",
        ] {
            assert!(
                Command::new("ip")
                    .args(args.split(' '))
                    .status()
                    .unwrap()
                    .success()
            );
        }
        // Worker threads are created from this thread, so they start in the namespace too.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(podnet_apiserver::serve(listener, Default::default()));
            let client = kube::Client::try_from(kube::Config::new(
                format!("http://{addr}").parse().unwrap(),
            ))
            .unwrap();
            let api: Api<Node> = Api::all(client.clone());
            add_node(&api, "me", "192.168.88.1").await;
            add_node(&api, "peer", "192.168.88.2").await;
            let config = Config {
                node_name: "me".into(),
                mode: Mode::HostGw,
                cluster_cidr: "10.244.0.0/16".parse().unwrap(),
                cni_conf_dir: conf_dir.clone(),
                cni_data_dir: "/var/lib/cni/podnet".into(),
                underlay_mtu: 1500,
                metrics_addr: "127.0.0.1:19201".parse().unwrap(),
                resync: Duration::from_secs(60),
            };
            let agent = tokio::spawn(podnet_agent::run(config, client));
            let file = conf_dir.join("10-podnet.conflist");
            eventually("conflist written", || file.exists()).await;
            eventually("healthy", || {
                TcpStream::connect("127.0.0.1:19201").is_ok()
                    && http_get("127.0.0.1:19201", "/healthz").starts_with("HTTP/1.1 200")
            })
            .await;
            let ns_name = name.clone();
            eventually("route to the peer", || {
                routes(&ns_name).contains("via 192.168.88.2")
            })
            .await;
            let metrics = http_get("127.0.0.1:19201", "/metrics");
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
            agent.abort();
        });
    })
    .join()
    .expect("agent thread");
}
