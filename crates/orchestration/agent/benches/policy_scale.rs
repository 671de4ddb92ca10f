//! Scale of the agent's NetworkPolicy path (issue 5; root: runs in a throwaway network
//! namespace): a generated cluster (`policy/cluster.rs`: ~50 namespaces, LOCAL pods on the
//! node under test plus REMOTE pods elsewhere, POLICIES policies of mixed shapes) as
//! `k8s-openapi` objects goes through `PolicySyncer::sync` into a real nf_tables table over
//! netlink: the first sync (and, separately, its parts: read + cluster, plan, render,
//! transaction, kernel), then single-policy changes (one policy's port or peer) and pod
//! label changes (each timed from `sync` called to transaction applied: the agent's whole
//! path, read and plan included), and the process's memory.
//!
//! `cargo bench -p podnet-agent --bench policy_scale [-- --policies N --local N --remote N
//! --changes N]` (defaults 1000, 1000, 1000, 200).

use std::time::{Duration, Instant};

use podnet_agent::policy::PolicySyncer;
use podnet_netlink::netns;
use podnet_nft::Transaction;
use podnet_policy::{Cluster, plan_pods, read_policies, render};

#[path = "policy/cluster.rs"]
mod cluster;

struct Ns(String);

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = netns::delete_named(&self.0);
    }
}

fn ns(tag: &str) -> (Ns, std::os::fd::OwnedFd) {
    let ns = Ns(format!("pnpb{}-{tag}", std::process::id()));
    let _ = netns::delete_named(&ns.0);
    netns::create_named(&ns.0).expect("create namespace (root needed)");
    let fd = netns::open(netns::named_path(&ns.0)).expect("open namespace");
    (ns, fd)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// (VmRSS, VmHWM) in MiB.
fn memory() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
            .unwrap_or(f64::NAN)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn summary(times: &mut [Duration]) -> String {
    times.sort();
    format!(
        "p50 {} p99 {} max {}",
        ms(percentile(times, 0.5)),
        ms(percentile(times, 0.99)),
        ms(*times.last().unwrap())
    )
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut policies_n, mut local, mut remote, mut changes) = (1000u32, 1000u32, 1000u32, 200u32);
    let mut dump: Option<String> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().and_then(|v| v.parse().ok()).expect("a number");
        match a.as_str() {
            "--policies" => policies_n = val(),
            "--local" => local = val(),
            "--remote" => remote = val(),
            "--changes" => changes = val(),
            // Writes the plans (first, after the changes) as Debug text: FILE.first, FILE.last.
            "--dump" => dump = it.next().cloned(),
            _ => {} // cargo bench passes --bench
        }
    }
    println!(
        "Targets (issue 5): {policies_n} policies over {local} local pods compiled and applied < 1 s; one policy change applied < 20 ms."
    );
    let (rss_start, _) = memory();
    let namespaces = cluster::namespaces();
    let mut pods = cluster::pods(local, remote);
    let mut policies = cluster::policies(policies_n);

    // The parts of a first sync, without the syncer (same steps as PolicySyncer::sync).
    let (_parts_ns, fd) = ns("parts");
    let mut nft = podnet_netlink::nftables::Nftables::open_in(&fd).expect("nf_tables socket");
    let t = Instant::now();
    let (read, problems) = read_policies(&policies);
    let c = Cluster::new(&pods, &namespaces);
    let t_read = t.elapsed();
    assert!(problems.is_empty(), "{problems:?}");
    let t = Instant::now();
    let plan = plan_pods(&read, &c, Some("node-0"));
    let t_plan = t.elapsed();
    let t = Instant::now();
    let table = render(&plan);
    let t_render = t.elapsed();
    let t = Instant::now();
    let tx = Transaction::replace_table(&table);
    let t_tx = t.elapsed();
    let t = Instant::now();
    nft.apply(&tx).expect("load");
    let t_kernel = t.elapsed();
    let (ins, outs) = podnet_policy::render::isolated(&plan);
    let classes = table
        .chains
        .iter()
        .filter(|(ch, _)| ch.name.starts_with("in-") || ch.name.starts_with("out-"))
        .count();
    let elements: usize = table.sets.iter().map(|(_, e)| e.len()).sum();
    println!(
        "cluster: {} namespaces, {} pods ({local} on node-0), {} policies | table: {} isolated ingress, {} egress; {} class chains, {} chains, {} sets, {} elements; {} ops",
        namespaces.len(),
        pods.len(),
        policies.len(),
        ins.len(),
        outs.len(),
        classes,
        table.chains.len(),
        table.sets.len(),
        elements,
        tx.len(),
    );
    println!(
        "first sync, parts: read_policies + Cluster::new {} | plan_pods {} | render {} | transaction {} | Nftables::apply (encode + kernel) {} | sum {}",
        ms(t_read),
        ms(t_plan),
        ms(t_render),
        ms(t_tx),
        ms(t_kernel),
        ms(t_read + t_plan + t_render + t_tx + t_kernel)
    );
    assert!(
        ins.contains(&cluster::SERVER),
        "the bench server is isolated"
    );
    if let Some(f) = &dump {
        std::fs::write(format!("{f}.first"), format!("{plan:#?}\n{table:#?}")).expect("dump");
    }
    drop((plan, table, tx, c, read, nft));

    // The agent's syncer, from an empty namespace.
    let (_ns, fd) = ns("sync");
    let kernel = podnet_netlink::nftables::Nftables::open_in(&fd).expect("nf_tables socket");
    let mut syncer = PolicySyncer::new("node-0".into(), kernel);
    let t = Instant::now();
    let first = syncer
        .sync(&policies, &pods, &namespaces)
        .expect("first sync");
    let first_t = t.elapsed();
    let (rss_loaded, hwm_loaded) = memory();
    println!(
        "first sync (PolicySyncer::sync, empty kernel table): {} ({} ops, isolated {:?})",
        ms(first_t),
        first.ops,
        first.isolated
    );
    let t = Instant::now();
    let again = syncer.sync(&policies, &pods, &namespaces).expect("resync");
    println!(
        "resync with nothing changed: {} ({} ops)",
        ms(t.elapsed()),
        again.ops
    );
    assert_eq!(again.ops, 0, "an unchanged cluster sends nothing");

    // Single-policy changes: policy j gets variant v (a port or a peer), and next time
    // another policy; every change is a new object, as a watch event brings it.
    let mut state = 0x5eedu64;
    let mut rnd = |n: u32| {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % u64::from(n)) as u32
    };
    let mut times = Vec::new();
    let (mut ops, mut empty) = (0usize, 0u32);
    for c in 0..changes {
        let j = rnd(policies_n);
        policies[j as usize] = cluster::policy(j, 1 + c % 7);
        let t = Instant::now();
        let r = syncer.sync(&policies, &pods, &namespaces).expect("sync");
        times.push(t.elapsed());
        ops += r.ops;
        empty += u32::from(r.ops == 0);
    }
    println!(
        "{changes} single-policy changes: {} ({:.1} ops each; {empty} changed nothing on this node)",
        summary(&mut times),
        ops as f64 / f64::from(changes.max(1))
    );
    // Pod label changes: one pod's `app` label (local or remote).
    let mut times = Vec::new();
    let (mut ops, mut empty) = (0usize, 0u32);
    let total = local + remote;
    for c in 0..changes {
        let i = 2 + rnd(total - 2);
        pods[i as usize] = cluster::pod(i, local, 1 + c % 7);
        let t = Instant::now();
        let r = syncer.sync(&policies, &pods, &namespaces).expect("sync");
        times.push(t.elapsed());
        ops += r.ops;
        empty += u32::from(r.ops == 0);
    }
    println!(
        "{changes} pod label changes: {} ({:.1} ops each; {empty} changed nothing on this node)",
        summary(&mut times),
        ops as f64 / f64::from(changes.max(1))
    );

    // Where a change's time goes, without the kernel (the last state, one more change, to
    // a variant no earlier change used).
    let j = rnd(policies_n);
    policies[j as usize] = cluster::policy(j, 8);
    let old = syncer.table().expect("programmed").clone();
    let t = Instant::now();
    let (read, _) = read_policies(&policies);
    let c = Cluster::new(&pods, &namespaces);
    let t_read = t.elapsed();
    let t = Instant::now();
    let plan = plan_pods(&read, &c, Some("node-0"));
    let t_plan = t.elapsed();
    let t = Instant::now();
    let table = render(&plan);
    let t_render = t.elapsed();
    if let Some(f) = &dump {
        std::fs::write(format!("{f}.last"), format!("{plan:#?}\n{table:#?}")).expect("dump");
    }
    let t = Instant::now();
    let tx = podnet_nft::diff_tables(&old, &table);
    let t_diff = t.elapsed();
    println!(
        "one change, parts (no kernel): read + cluster {} | plan {} | render {} | diff {} ({} ops)",
        ms(t_read),
        ms(t_plan),
        ms(t_render),
        ms(t_diff),
        tx.len()
    );
    let (rss_end, hwm_end) = memory();
    println!(
        "RSS: start {rss_start:.0} MiB, after first sync {rss_loaded:.0} MiB (peak {hwm_loaded:.0}), end {rss_end:.0} MiB (peak {hwm_end:.0})"
    );
}
