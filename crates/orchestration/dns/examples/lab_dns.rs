//! A DNS server for load tests on loopback: the lab's API server in process with
//! `SERVICES` ClusterIP Services (`svc-<i>.default`, cluster IP `10.96.<i/250>.<i%250+1>`),
//! `podnet-dns` serving them on `LISTEN`, names outside the zone forwarded to `UPSTREAM`.
//! Writes `<name> A` query lines for dnsperf to `QUERIES` (when set), and the same names
//! as hosts lines to `HOSTS` (for dnsmasq/unbound baselines).
//!
//! `cargo run --release -p podnet-dns-server --example lab_dns` with the environment
//! `LISTEN=127.0.0.1:5300 SERVICES=1000 QUERIES=/tmp/q.txt HOSTS=/tmp/hosts`; runs until
//! killed.

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use podnet_dns_server::{Config, Server};
use std::io::Write;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn main() -> anyhow::Result<()> {
    let listen = env("LISTEN", "127.0.0.1:5300").parse()?;
    let n: usize = env("SERVICES", "1000").parse()?;
    let upstreams = std::env::var("UPSTREAM")
        .ok()
        .map(|u| u.parse())
        .transpose()?
        .into_iter()
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(podnet_apiserver::serve(listener, Default::default()));
        let client = kube::Client::try_from(kube::Config::new(format!("http://{addr}").parse()?))?;
        let api: Api<Service> = Api::namespaced(client.clone(), "default");
        let mut queries = Vec::new();
        let mut hosts = Vec::new();
        for i in 0..n {
            let ip = format!("10.96.{}.{}", 1 + i / 250, i % 250 + 1);
            let svc: Service = serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("svc-{i}")},
                "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}]}}))?;
            api.create(&PostParams::default(), &svc).await?;
            let name = format!("svc-{i}.default.svc.cluster.local");
            queries.push(format!("{name} A\n"));
            hosts.push(format!("{ip} {name}\n"));
        }
        if let Ok(path) = std::env::var("QUERIES") {
            std::fs::File::create(path)?.write_all(queries.concat().as_bytes())?;
        }
        if let Ok(path) = std::env::var("HOSTS") {
            std::fs::File::create(path)?.write_all(hosts.concat().as_bytes())?;
        }
        let config = Config {
            listen,
            metrics_addr: env("METRICS", "127.0.0.1:9153").parse()?,
            upstreams,
            udp_workers: env("WORKERS", "0").parse()?,
            ..Config::default()
        };
        let server = Server::bind(config)?;
        eprintln!("serving {n} Services on {}", server.local_addr());
        server.serve(client).await
    })
}
