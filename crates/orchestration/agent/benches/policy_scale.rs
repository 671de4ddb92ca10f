//! Scale of the agent's NetworkPolicy path (issue 5; root: runs in a throwaway network
//! namespace): a generated cluster (`policy/cluster.rs`: ~50 namespaces, LOCAL pods on the
//! node under test plus REMOTE pods elsewhere, POLICIES policies of mixed shapes) as
//! `k8s-openapi` objects goes into a real nf_tables table over netlink. First the parts of
//! a full recompute (read + cluster, plan, render, transaction, kernel: the reference the
//! incremental path must equal); then the agent's own path (`policy::run`): watch events
//! into `Changes` (the first list as kube's watcher sends it: Init, InitApply × N,
//! InitDone), `PolicySyncer::sync_changes`, the transaction applied; then single-policy
//! changes (one policy's port or peer) and pod label changes, each timed from the watch
//! event handed over to the transaction applied by the kernel; the table is checked
//! against the full recompute at the end; and the process's memory. Not included: the API
//! client's JSON decoding and the tokio hop of the run loop.
//!
//! `cargo bench -p podnet-agent --bench policy_scale [-- --policies N --local N --remote N
//! --changes N]` (defaults 1000, 1000, 1000, 200).

use std::time::{Duration, Instant};

use kube::runtime::watcher::Event;
use podnet_agent::policy::{Changes, PolicySyncer};
use podnet_netlink::netns;
use podnet_nft::Transaction;
use podnet_policy::{Cluster, Planner, PodInput, PolicyInput, plan_pods, read_policies, render};

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
    let (mut policies_n, mut local, mut remote, mut changes_n) =
        (1000u32, 1000u32, 1000u32, 200u32);
    let mut dump: Option<String> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().and_then(|v| v.parse().ok()).expect("a number");
        match a.as_str() {
            "--policies" => policies_n = val(),
            "--local" => local = val(),
            "--remote" => remote = val(),
            "--changes" => changes_n = val(),
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

    // The agent's path, from an empty namespace: the first lists as events, then the
    // first sync (a full replace).
    let (_ns, fd) = ns("sync");
    let kernel = podnet_netlink::nftables::Nftables::open_in(&fd).expect("nf_tables socket");
    let mut syncer = PolicySyncer::new("node-0".into(), kernel);
    let mut changes = Changes::new();
    let t = Instant::now();
    changes.namespace_event(Event::Init);
    changes.pod_event(Event::Init);
    changes.policy_event(Event::Init);
    for n in &namespaces {
        changes.namespace_event(Event::InitApply(n.clone()));
    }
    for p in &pods {
        changes.pod_event(Event::InitApply(p.clone()));
    }
    for np in &policies {
        changes.policy_event(Event::InitApply(np.clone()));
    }
    changes.namespace_event(Event::InitDone);
    changes.pod_event(Event::InitDone);
    changes.policy_event(Event::InitDone);
    assert!(changes.ready());
    let t_events = t.elapsed();
    let t = Instant::now();
    let first = syncer.sync_changes(changes.take()).expect("first sync");
    let first_t = t.elapsed();
    let (rss_loaded, hwm_loaded) = memory();
    println!(
        "first sync (events read {} + PolicySyncer::sync_changes {}, empty kernel table): {} ({} ops, isolated {:?})",
        ms(t_events),
        ms(first_t),
        ms(t_events + first_t),
        first.ops,
        first.isolated
    );
    let t = Instant::now();
    let again = syncer.sync_changes(changes.take()).expect("resync");
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
    // A planner without a kernel, fed the same events: the pure share of each change.
    let mut shadow = Planner::new("node-0");
    shadow.replace_all(&policies, &pods, &namespaces);
    shadow.sync();
    let mut pure = Vec::new();
    let mut times = Vec::new();
    let (mut ops, mut empty) = (0usize, 0u32);
    for c in 0..changes_n {
        let j = rnd(policies_n);
        let changed = cluster::policy(j, 1 + c % 7);
        policies[j as usize] = changed.clone();
        let t = Instant::now();
        changes.policy_event(Event::Apply(changed));
        let r = syncer.sync_changes(changes.take()).expect("sync");
        times.push(t.elapsed());
        let t = Instant::now();
        shadow.set_policy(PolicyInput::new(&policies[j as usize]));
        shadow.sync();
        pure.push(t.elapsed());
        ops += r.ops;
        empty += u32::from(r.ops == 0);
    }
    println!(
        "{changes_n} single-policy changes (event → kernel): {} ({:.1} ops each; {empty} changed nothing on this node); the planner alone (no kernel): {}",
        summary(&mut times),
        ops as f64 / f64::from(changes_n.max(1)),
        summary(&mut pure)
    );
    // Pod label changes: one pod's `app` label (local or remote).
    let mut pure = Vec::new();
    let mut times = Vec::new();
    let (mut ops, mut empty) = (0usize, 0u32);
    let total = local + remote;
    for c in 0..changes_n {
        let i = 2 + rnd(total - 2);
        let changed = cluster::pod(i, local, 1 + c % 7);
        pods[i as usize] = changed.clone();
        let t = Instant::now();
        changes.pod_event(Event::Apply(changed));
        let r = syncer.sync_changes(changes.take()).expect("sync");
        times.push(t.elapsed());
        let t = Instant::now();
        shadow.set_pod(PodInput::new(&pods[i as usize]));
        shadow.sync();
        pure.push(t.elapsed());
        ops += r.ops;
        empty += u32::from(r.ops == 0);
    }
    println!(
        "{changes_n} pod label changes (event → kernel): {} ({:.1} ops each; {empty} changed nothing on this node); the planner alone (no kernel): {}",
        summary(&mut times),
        ops as f64 / f64::from(changes_n.max(1)),
        summary(&mut pure)
    );

    // Where a change's time goes, without the kernel (the last state, one more change, to
    // a variant no earlier change used): the full recompute the agent did before, and the
    // incremental planner.
    let j = rnd(policies_n);
    policies[j as usize] = cluster::policy(j, 8);
    let old = syncer.table();
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
        "one policy change, full recompute (no kernel): read + cluster {} | plan {} | render {} | diff {} | sum {} ({} ops)",
        ms(t_read),
        ms(t_plan),
        ms(t_render),
        ms(t_diff),
        ms(t_read + t_plan + t_render + t_diff),
        tx.len()
    );
    let mut planner = Planner::new("node-0");
    let mut before = policies.clone();
    before[j as usize] = cluster::policy(j, 0);
    planner.replace_all(&before, &pods, &namespaces);
    planner.sync();
    let t = Instant::now();
    let input = PolicyInput::new(&policies[j as usize]);
    let t_input = t.elapsed();
    let t = Instant::now();
    planner.set_policy(input);
    let t_event = t.elapsed();
    let t = Instant::now();
    let inc = planner.sync();
    let t_sync = t.elapsed();
    println!(
        "the same change, incremental (no kernel): read {} | Planner::set_policy (mark pods) {} | Planner::sync (plan, classes, transaction) {} | sum {} ({} ops)",
        ms(t_input),
        ms(t_event),
        ms(t_sync),
        ms(t_input + t_event + t_sync),
        inc.transaction.len()
    );
    let i = 2 + rnd(total - 2);
    let changed = cluster::pod(i, local, 8);
    let t = Instant::now();
    let input = PodInput::new(&changed);
    planner.set_pod(input);
    let t_event = t.elapsed();
    let t = Instant::now();
    let inc = planner.sync();
    let t_sync = t.elapsed();
    println!(
        "one pod label change, incremental (no kernel): read + Planner::set_pod (mark pods) {} | Planner::sync {} ({} ops)",
        ms(t_event),
        ms(t_sync),
        inc.transaction.len()
    );
    // The syncer's table is the full recompute's (the kernel accepted every transaction
    // that led there).
    changes.policy_event(Event::Apply(policies[j as usize].clone()));
    syncer.sync_changes(changes.take()).expect("sync");
    assert!(
        syncer.table() == table,
        "the incremental table equals the full recompute"
    );
    let (rss_end, hwm_end) = memory();
    println!(
        "RSS: start {rss_start:.0} MiB, after first sync {rss_loaded:.0} MiB (peak {hwm_loaded:.0}), end {rss_end:.0} MiB (peak {hwm_end:.0})"
    );
}
