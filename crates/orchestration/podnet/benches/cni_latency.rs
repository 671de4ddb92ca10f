//! Benchmark: ADD and DEL latency of podnet against Debian's reference `bridge` +
//! `host-local` plugins on the same configuration, in one run.
//!
//!     cargo bench -p podnet --bench cni_latency [-- ROUNDS]
//!     PODNET_BIN=target/image/podnet cargo bench -p podnet --bench cni_latency
//!
//! `PODNET_BIN` picks the podnet binary to time (default: this build's release binary);
//! `target/image/podnet` is the static one the image ships (scripts/build-image).
//!
//! Both plugins are exec'd the same way (a child spawned from a thread inside the node's
//! namespace, no `ip netns exec`), one attachment per fresh pod namespace, interleaved
//! round by round so drift on the machine hits both alike. Needs root.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use std::time::{Duration, Instant};

const REFERENCE_BRIDGE: &str = "/usr/lib/cni/bridge";

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    assert!(
        std::path::Path::new(REFERENCE_BRIDGE).exists(),
        "install containernetworking-plugins first"
    );
    let podnet = std::env::var("PODNET_BIN")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| PODNET.to_string());
    let mut node = Node::new();
    let podnet_conf = node.conf("1.0.0", r#"[[{"subnet": "10.98.0.0/24"}]]"#);
    let ref_conf = format!(
        r#"{{"cniVersion": "1.0.0", "name": "refnet", "type": "bridge", "bridge": "refbr0",
            "isGateway": true, "ipam": {{"type": "host-local", "subnet": "10.98.1.0/24",
            "dataDir": "{}"}}}}"#,
        node.work.path().join("host-local").display()
    );
    let warmup = 3;
    let mut t = [Vec::new(), Vec::new(), Vec::new(), Vec::new()]; // podnet add/del, ref add/del
    // What exec alone costs: podnet answering VERSION, spawned the same way.
    let mut floor = Vec::new();
    let version = r#"{"cniVersion": "1.0.0"}"#;
    for i in 0..rounds + warmup {
        let (pp, pr) = (node.pod(&format!("p{i}")), node.pod(&format!("r{i}")));
        let id = format!("bench{i}");
        // The reference finds host-local through CNI_PATH.
        let reference = |cmd: &str, ns: &std::path::Path| {
            let mut env = attach_env(cmd, &id, ns);
            env.retain(|(k, _)| *k != "CNI_PATH");
            env.push(("CNI_PATH", "/usr/lib/cni"));
            exec_in(&node.node, REFERENCE_BRIDGE, &env, &ref_conf)
        };
        let timed = |f: &dyn Fn() -> Outcome| {
            let start = Instant::now();
            let out = f();
            let took = start.elapsed();
            out.ok();
            took
        };
        let fl = timed(&|| exec_in(&node.node, &podnet, &[("CNI_COMMAND", "VERSION")], version));
        let ours = |cmd: &str| exec_in(&node.node, &podnet, &attach_env(cmd, &id, &pp), &podnet_conf);
        let pa = timed(&|| ours("ADD"));
        let ra = timed(&|| reference("ADD", &pr));
        let pd = timed(&|| ours("DEL"));
        let rd = timed(&|| reference("DEL", &pr));
        if i >= warmup {
            for (v, d) in t.iter_mut().zip([pa, pd, ra, rd]) {
                v.push(d);
            }
            floor.push(fl);
        }
        node.remove_pod(&pp);
        node.remove_pod(&pr);
    }
    let stats = |v: &mut Vec<Duration>| {
        v.sort();
        (v[v.len() / 2], v[v.len() * 9 / 10])
    };
    let [pa, pd, ra, rd] = &mut t;
    let (pa, pd, ra, rd) = (stats(pa), stats(pd), stats(ra), stats(rd));
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "CNI latency, {rounds} rounds (+{warmup} warm-up), one fresh pod namespace per attachment"
    );
    println!("podnet: {podnet}");
    println!(
        "{:<8} {:>14} {:>14} {:>14} {:>14} {:>8}",
        "verb", "podnet p50", "podnet p90", "ref p50", "ref p90", "ratio"
    );
    for (verb, p, r) in [("ADD", pa, ra), ("DEL", pd, rd)] {
        println!(
            "{verb:<8} {:>11.2} ms {:>11.2} ms {:>11.2} ms {:>11.2} ms {:>7.2}x",
            ms(p.0),
            ms(p.1),
            ms(r.0),
            ms(r.1),
            ms(p.0) / ms(r.0)
        );
    }
    let fl = stats(&mut floor);
    println!(
        "{:<8} {:>11.2} ms {:>11.2} ms   (podnet VERSION: the cost of exec alone)",
        "exec",
        ms(fl.0),
        ms(fl.1)
    );
    println!("(ratio = podnet p50 / reference bridge+host-local p50; target <= 0.25x)");
}
