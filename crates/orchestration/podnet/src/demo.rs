//! Orchestration: `podnet demo` — one node, two pods, real packets. A node namespace
//! stands in for the machine (the host's own namespace is never touched); the plugin is
//! executed exactly as a runtime executes it; everything is removed at the end, also on
//! failure.

use anyhow::{Context, Result, bail};
use podnet_kubelet::cni::{Attachment, ConfList, Runtime};
use podnet_netlink::netns;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

/// Named namespaces removed on drop.
struct Namespaces(Vec<String>);

impl Namespaces {
    fn add(&mut self, name: String) -> Result<PathBuf> {
        let path = netns::create_named(&name)?;
        self.0.push(name);
        Ok(path)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in self.0.drain(..).rev() {
            if let Err(e) = netns::delete_named(&n) {
                eprintln!("podnet demo: cleanup of {n}: {e}");
            }
        }
    }
}

pub fn run() -> Result<()> {
    let prefix = format!("pndemo{}", std::process::id());
    let work = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&work)?;
    let result = run_in(&prefix, &work);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn run_in(prefix: &str, work: &std::path::Path) -> Result<()> {
    let mut spaces = Namespaces(Vec::new());
    let node = spaces.add(format!("{prefix}-node"))?;
    let pod_a = spaces.add(format!("{prefix}-pod-a"))?;
    let pod_b = spaces.add(format!("{prefix}-pod-b"))?;
    println!(
        "node namespace {}  pods {} {}",
        node.display(),
        pod_a.display(),
        pod_b.display()
    );

    let bin_dir = work.join("bin");
    std::fs::create_dir_all(&bin_dir)?;
    std::os::unix::fs::symlink(std::env::current_exe()?, bin_dir.join("podnet"))?;
    let conflist = serde_json::json!({
        "cniVersion": "1.1.0", "name": "demo",
        "plugins": [{"type": "podnet", "bridge": "podnet0",
                     "ipam": {"ranges": [[{"subnet": "10.244.1.0/24"}]], "dataDir": work.join("ipam")}}]
    });
    let list = ConfList::parse(conflist.to_string().as_bytes())?;
    let rt = Runtime {
        plugin_dirs: vec![bin_dir],
        cache_dir: work.join("cache"),
        exec_netns: Some(node),
    };
    let att = |id: &str, ns: &PathBuf| Attachment {
        container_id: id.into(),
        netns: ns.display().to_string(),
        ifname: "eth0".into(),
        ..Default::default()
    };
    let (a, b) = (att("pod-a", &pod_a), att("pod-b", &pod_b));

    let ip_a = first_ip(&rt.add(&list, &a)?)?;
    let ip_b = first_ip(&rt.add(&list, &b)?)?;
    println!("ADD pod-a → {ip_a}   ADD pod-b → {ip_b}   (bridge podnet0, gateway 10.244.1.1)");

    // pod-a serves; pod-b connects to pod-a's IP. Sockets belong to the namespace of the
    // thread that creates them.
    let listener = netns::run_in(netns::open(&pod_a)?, || TcpListener::bind((ip_a, 8080)))??;
    let server = std::thread::spawn(move || -> Result<String> {
        let (mut conn, peer) = listener.accept()?;
        let mut buf = [0u8; 64];
        let n = conn.read(&mut buf)?;
        conn.write_all(
            format!(
                "pod-a saw {} say {:?}",
                peer.ip(),
                String::from_utf8_lossy(&buf[..n])
            )
            .as_bytes(),
        )?;
        Ok(peer.ip().to_string())
    });
    let reply = netns::run_in(netns::open(&pod_b)?, || -> Result<String> {
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::new(ip_a, 8080), Duration::from_secs(3))?;
        s.write_all(b"hello")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })??;
    let seen = server.join().expect("server thread")?;
    println!("TCP pod-b → {ip_a}:8080: {reply}");
    if seen != ip_b.to_string() {
        bail!(
            "pod-a saw {seen}, expected pod-b's own address {ip_b} (NAT where there must be none)"
        );
    }
    rt.check(&list, &a)?;
    rt.check(&list, &b)?;
    println!("CHECK both: ok");
    rt.del(&list, &a)?;
    rt.del(&list, &b)?;
    println!("DEL both: ok — the pods saw each other's real IPs; no NAT on the way");
    Ok(())
}

fn first_ip(result: &serde_json::Value) -> Result<std::net::IpAddr> {
    let addr = result["ips"][0]["address"]
        .as_str()
        .context("result has no address")?;
    Ok(addr.parse::<ipnet::IpNet>()?.addr())
}
