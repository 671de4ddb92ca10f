//! Benchmark: ADD and DEL latency of podnet against Debian's reference `bridge` +
//! `host-local` plugins on the same configuration, in one run.
//!
//!     scripts/build-image --binary-only                  # the shipped binary (optional)
//!     cargo bench -p podnet --bench cni_latency [-- ROUNDS]
//!
//! Times, interleaved round by round: this build's release `podnet` (dynamically linked,
//! position-independent: what `cargo build --release` gives) and, when it exists,
//! `target/image/podnet` — the static, non-PIE binary the image ships and
//! `podnet install-cni` puts in the node's /opt/cni/bin, i.e. the plugin a runtime runs
//! (`PODNET_IMAGE_BIN` names another). Every binary is exec'd the same way (a child
//! spawned from a thread inside the node's namespace, no `ip netns exec`), one attachment
//! per fresh pod namespace, so drift on the machine hits all alike. Needs root.

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
    let image_bin = std::env::var("PODNET_IMAGE_BIN")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../../target/image/podnet").to_string()
        });
    let mut bins = vec![("cargo release build", PODNET.to_string())];
    if std::path::Path::new(&image_bin).exists() {
        bins.push(("image (static, no PIE)", image_bin));
    } else {
        println!("{image_bin} not found: scripts/build-image --binary-only makes it");
    }
    let mut node = Node::new();
    let podnet_conf = node.conf("1.0.0", r#"[[{"subnet": "10.98.0.0/24"}]]"#);
    let ref_conf = format!(
        r#"{{"cniVersion": "1.0.0", "name": "refnet", "type": "bridge", "bridge": "refbr0",
            "isGateway": true, "ipam": {{"type": "host-local", "subnet": "10.98.1.0/24",
            "dataDir": "{}"}}}}"#,
        node.work.path().join("host-local").display()
    );
    let warmup = 3;
    // Per podnet binary: add, del, exec (VERSION: what exec alone costs).
    let mut ours: Vec<[Vec<Duration>; 3]> = bins.iter().map(|_| Default::default()).collect();
    let (mut ref_add, mut ref_del) = (Vec::new(), Vec::new());
    let version = r#"{"cniVersion": "1.0.0"}"#;
    let timed = |f: &dyn Fn() -> Outcome| {
        let start = Instant::now();
        let out = f();
        let took = start.elapsed();
        out.ok();
        took
    };
    for i in 0..rounds + warmup {
        let pr = node.pod(&format!("r{i}"));
        let id = format!("bench{i}");
        // The reference finds host-local through CNI_PATH.
        let reference = |cmd: &str| {
            let mut env = attach_env(cmd, &id, &pr);
            env.retain(|(k, _)| *k != "CNI_PATH");
            env.push(("CNI_PATH", "/usr/lib/cni"));
            exec_in(&node.node, REFERENCE_BRIDGE, &env, &ref_conf)
        };
        let ra = timed(&|| reference("ADD"));
        let rd = timed(&|| reference("DEL"));
        if i >= warmup {
            ref_add.push(ra);
            ref_del.push(rd);
        }
        node.remove_pod(&pr);
        for (b, (_, bin)) in bins.iter().enumerate() {
            let pp = node.pod(&format!("p{i}b{b}"));
            let run =
                |cmd: &str| exec_in(&node.node, bin, &attach_env(cmd, &id, &pp), &podnet_conf);
            let fl = timed(&|| exec_in(&node.node, bin, &[("CNI_COMMAND", "VERSION")], version));
            let pa = timed(&|| run("ADD"));
            let pd = timed(&|| run("DEL"));
            if i >= warmup {
                for (v, d) in ours[b].iter_mut().zip([pa, pd, fl]) {
                    v.push(d);
                }
            }
            node.remove_pod(&pp);
        }
    }
    let stats = |v: &mut Vec<Duration>| {
        v.sort();
        (v[v.len() / 2], v[v.len() * 9 / 10])
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (ra, rd) = (stats(&mut ref_add), stats(&mut ref_del));
    println!(
        "CNI latency, {rounds} rounds (+{warmup} warm-up), one fresh pod namespace per attachment"
    );
    println!(
        "reference (bridge + host-local): ADD p50 {:.2} ms p90 {:.2} ms, DEL p50 {:.2} ms p90 {:.2} ms",
        ms(ra.0),
        ms(ra.1),
        ms(rd.0),
        ms(rd.1)
    );
    println!(
        "{:<24} {:<5} {:>9} {:>9} {:>7}",
        "podnet", "verb", "p50", "p90", "ratio"
    );
    for ((label, _), t) in bins.iter().zip(ours.iter_mut()) {
        let [add, del, exec] = t;
        for (verb, v, r) in [
            ("ADD", add, Some(ra)),
            ("DEL", del, Some(rd)),
            ("exec", exec, None),
        ] {
            let (p50, p90) = stats(v);
            let ratio = r.map_or("-".to_string(), |r| format!("{:.2}x", ms(p50) / ms(r.0)));
            println!(
                "{label:<24} {verb:<5} {:>6.2} ms {:>6.2} ms {ratio:>7}",
                ms(p50),
                ms(p90)
            );
        }
    }
    println!("(exec = the binary answering VERSION: the cost of exec alone)");
    println!("(ratio = podnet p50 / reference bridge+host-local p50; target <= 0.25x)");
}
