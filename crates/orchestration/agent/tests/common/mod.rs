//! What the tests that run the whole agent against the lab's API server share: a node
//! namespace with a runtime inside it, Nodes made through the API, a default `Config`.
#![allow(dead_code)] // each test file uses a part

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use podnet_agent::{Config, Mode};
use podnet_netlink::netns;
use serde_json::json;
use std::future::Future;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// A named network namespace, removed on drop (also when the test panics).
pub struct Ns(pub String);

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = netns::delete_named(&self.0);
    }
}

/// Runs `body(namespace name)` on a 2-thread tokio runtime whose threads live in a fresh
/// namespace `pa<pid>-<tag>`: lo up, a veth `eth0` (with `address`, /24) — `eth1`, and
/// `extra` more `ip` commands. The namespace is removed afterwards; a panic in `body`
/// fails the test.
pub fn in_node_namespace<F, Fut>(tag: &str, address: &str, extra: &[&str], body: F)
where
    F: FnOnce(String) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let name = format!("pa{}-{tag}", std::process::id());
    netns::create_named(&name).unwrap();
    let ns = Ns(name.clone());
    let path = netns::named_path(&ns.0);
    let mut setup: Vec<String> = [
        "link set lo up",
        "link add eth0 type veth peer name eth1",
        &format!("addr add {address}/24 dev eth0"),
        "link set eth0 up",
        "link set eth1 up",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    setup.extend(extra.iter().map(|s| s.to_string()));
    std::thread::spawn(move || {
        let fd = netns::open(path).unwrap();
        let _g = netns::enter(&fd).unwrap();
        for args in &setup {
            assert!(
                Command::new("ip")
                    .args(args.split(' '))
                    .status()
                    .unwrap()
                    .success(),
                "ip {args}"
            );
        }
        // Worker threads are created from this thread, so they start in the namespace too.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(body(name));
    })
    .join()
    .expect("agent thread");
}

/// A Node with an InternalIP, made through the API.
pub async fn add_node(api: &Api<Node>, name: &str, ip: &str) {
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

/// The agent of node "me" with everything on (Services, policy), host-gw, 10.244.0.0/16;
/// tests change what they need with `..config(…)`.
pub fn config(cni_conf_dir: PathBuf, metrics_addr: &str) -> Config {
    Config {
        node_name: "me".into(),
        mode: Mode::HostGw,
        cluster_cidr: "10.244.0.0/16".parse().unwrap(),
        cni_conf_dir,
        cni_data_dir: "/var/lib/cni/podnet".into(),
        underlay_mtu: 1500,
        metrics_addr: metrics_addr.parse().unwrap(),
        resync: Duration::from_secs(60),
        proxy_services: true,
        enforce_policy: true,
        service_cidr: Some("10.96.0.0/12".parse().unwrap()),
        masquerade_exceptions: Vec::new(),
        node_port_range: podnet_services::DEFAULT_NODE_PORT_RANGE,
        node_cidr_mask: 24,
        claim_namespace: None,
        claim_grace: podnet_agent::CLAIM_GRACE,
        fast_path: true,
    }
}

/// GET `path` from the agent's HTTP server (health, metrics); the whole response.
/// Blocking: the agent runs on the other worker of the test's runtime.
pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
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
