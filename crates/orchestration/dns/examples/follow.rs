//! How fast answers follow the cluster: against a running API server (`API`, e.g.
//! `http://127.0.0.1:6443`) and a DNS server watching it (`DNS`, e.g. `127.0.0.1:1053`),
//! makes sure `SERVICES` ClusterIP Services exist in namespace `follow` (two named ports
//! each), waits until the DNS server answers for the last one, then `ROUNDS` times:
//! creates a Service and measures the time from the API request until its name answers
//! with an address, then deletes it and measures until the name is NXDOMAIN (queries
//! every millisecond over UDP). Services are only created when the last one does not
//! answer yet (so a second run, or one against a second server, reuses them).
//!
//! `cargo run --release -p podnet-dns-server --example follow` with that environment;
//! used for issue 6's "within 1 s" figures in docs/benchmarks.md.

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::{Api, DeleteParams, PostParams};
use podnet_dns::wire;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// The rcode and answer count of an A query for `name`.
fn ask(sock: &UdpSocket, dns: SocketAddr, name: &str, id: u16) -> Option<(u16, u16)> {
    let mut q = Vec::new();
    wire::write_header(&mut q, id, wire::flag::RD, [1, 0, 0, 0]);
    q.extend_from_slice(&wire::name_from_str(name)?);
    q.extend_from_slice(&[0, 1, 0, 1]);
    sock.send_to(&q, dns).ok()?;
    let mut buf = [0u8; 1500];
    loop {
        let n = sock.recv(&mut buf).ok()?;
        if n >= 12 && u16::from_be_bytes([buf[0], buf[1]]) == id {
            let rcode = u16::from_be_bytes([buf[2], buf[3]]) & 0xF;
            return Some((rcode, u16::from_be_bytes([buf[6], buf[7]])));
        }
    }
}

/// Polls every millisecond until `done` holds for the answer; the time it took.
fn until(
    sock: &UdpSocket,
    dns: SocketAddr,
    name: &str,
    since: Instant,
    limit: Duration,
    done: impl Fn(u16, u16) -> bool,
) -> anyhow::Result<Duration> {
    let mut id = 0u16;
    loop {
        id = id.wrapping_add(1);
        if let Some((rcode, an)) = ask(sock, dns, name, id)
            && done(rcode, an)
        {
            return Ok(since.elapsed());
        }
        anyhow::ensure!(
            since.elapsed() < limit,
            "{name}: no change within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn service(name: &str) -> anyhow::Result<Service> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"ports": [{"name": "http", "port": 80}, {"name": "metrics", "port": 9090}]}
    }))?)
}

fn summary(label: &str, mut v: Vec<Duration>) {
    if v.is_empty() {
        return;
    }
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{label}: median {:.1} ms, max {:.1} ms, min {:.1} ms ({} rounds)",
        ms(v[v.len() / 2]),
        ms(v[v.len() - 1]),
        ms(v[0]),
        v.len()
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let api_url = env("API", "http://127.0.0.1:6443");
    let dns: SocketAddr = env("DNS", "127.0.0.1:1053").parse()?;
    let n: usize = env("SERVICES", "10000").parse()?;
    let rounds: usize = env("ROUNDS", "20").parse()?;
    let client = kube::Client::try_from(kube::Config::new(api_url.parse()?))?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "follow"}}))?;
    let _ = namespaces.create(&PostParams::default(), &ns).await;
    let api: Api<Service> = Api::namespaced(client, "follow");
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let last = format!("svc-{}.follow.svc.cluster.local", n - 1);
    // Created by an earlier run when the last one answers already.
    let exists = matches!(ask(&sock, dns, &last, 1), Some((0, an)) if an > 0);
    let started = Instant::now();
    let created = futures::stream::iter(0..if exists { 0 } else { n })
        .map(|i| {
            let api = api.clone();
            async move {
                let svc = service(&format!("svc-{i}"))?;
                match api.create(&PostParams::default(), &svc).await {
                    Ok(_) => Ok(1),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(0),
                    Err(e) => Err(anyhow::Error::from(e)),
                }
            }
        })
        .buffer_unordered(32)
        .fold(Ok(0usize), |acc: anyhow::Result<usize>, r| async move {
            Ok(acc? + r?)
        })
        .await?;
    eprintln!(
        "follow: {created} Services created ({n} wanted) in {:?}",
        started.elapsed()
    );
    until(
        &sock,
        dns,
        &last,
        Instant::now(),
        Duration::from_secs(600),
        |rcode, an| rcode == 0 && an > 0,
    )?;
    eprintln!("follow: the DNS server answers for {last}");
    let (mut add, mut del) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        let name = format!("probe-{}-{r}", std::process::id());
        let fqdn = format!("{name}.follow.svc.cluster.local");
        let t = Instant::now();
        api.create(&PostParams::default(), &service(&name)?).await?;
        add.push(until(
            &sock,
            dns,
            &fqdn,
            t,
            Duration::from_secs(30),
            |rc, an| rc == 0 && an > 0,
        )?);
        let t = Instant::now();
        api.delete(&name, &DeleteParams::default()).await?;
        del.push(until(
            &sock,
            dns,
            &fqdn,
            t,
            Duration::from_secs(30),
            |rc, _| rc == 3,
        )?);
    }
    println!("{n} Services in the cluster");
    summary("Service created → its A record answered", add);
    summary("Service deleted → NXDOMAIN", del);
    Ok(())
}
