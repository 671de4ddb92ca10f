//! The pure share of the agent's first NetworkPolicy sync (issue 5), for profiling without
//! a kernel or root: the generated cluster of the agent's `policy_scale` bench
//! (`crates/orchestration/agent/benches/policy/cluster.rs`) → [`Planner::replace_all`] →
//! [`Planner::sync`] (plan, classes, transaction) → the netlink batch
//! (`podnet_nft::encode_transaction`), each step timed, and the table's shape.
//!
//! `cargo run --release -p podnet-policy --example first_sync [-- POLICIES [ROUNDS]]`

#[path = "../../../orchestration/agent/benches/policy/cluster.rs"]
mod cluster;

use std::time::Instant;

use podnet_policy::Planner;

fn main() {
    let mut args = std::env::args().skip(1);
    let policies_n: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let rounds: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let (namespaces, pods, policies) = (
        cluster::namespaces(),
        cluster::pods(1000, 1000),
        cluster::policies(policies_n),
    );
    for _ in 0..rounds {
        let t = Instant::now();
        let mut planner = Planner::new("node-0");
        planner.replace_all(&policies, &pods, &namespaces);
        let t_read = t.elapsed();
        let t = Instant::now();
        let plan = planner.sync();
        let t_sync = t.elapsed();
        // Per packet: a new connection to an isolated pod walks its class chain, one rule
        // per address set (a lookup, and one in a port set on a match).
        let table = planner.table();
        let rules: Vec<usize> = table
            .chains
            .iter()
            .filter(|(c, _)| c.name.starts_with("in-") || c.name.starts_with("out-"))
            .map(|(_, r)| r.len())
            .collect();
        let server = table
            .sets
            .iter()
            .find(|(s, _)| s.name == podnet_policy::render::names::INGRESS_PODS)
            .and_then(|(_, e)| {
                e.iter()
                    .find(|e| e.key == [podnet_nft::Value::Ipv4(cluster::SERVER)])
            })
            .and_then(|e| match &e.data {
                Some(podnet_nft::ElemData::Verdict(podnet_nft::Verdict::Jump(c))) => {
                    Some(c.clone())
                }
                _ => None,
            })
            .unwrap_or_else(|| "(not isolated)".into());
        let server_rules = table
            .chains
            .iter()
            .find(|(c, _)| c.name == server)
            .map_or(0, |(_, r)| r.len());
        let mut sorted = rules.clone();
        sorted.sort_unstable();
        println!(
            "class chains: {} rules each on average, median {}, max {} (with the final goto refuse); the bench server's class {server}: {} rules",
            rules.iter().sum::<usize>() as f64 / rules.len().max(1) as f64,
            sorted.get(sorted.len() / 2).copied().unwrap_or(0),
            sorted.last().copied().unwrap_or(0),
            server_rules
        );
        let t = Instant::now();
        let batch = podnet_nft::encode_transaction(&plan.transaction, 1).expect("encode");
        let t_encode = t.elapsed();
        let elements: usize = plan
            .transaction
            .ops
            .iter()
            .map(|op| match op {
                podnet_nft::Op::AddElements { elems, .. } => elems.len(),
                _ => 0,
            })
            .sum();
        // The kernel holds an interval set's element as two (its start, and its end + 1).
        let intervals: usize = plan
            .transaction
            .ops
            .iter()
            .map(|op| match op {
                podnet_nft::Op::AddElements { elems, .. } => elems
                    .iter()
                    .filter(|e| {
                        matches!(
                            e.key[0],
                            podnet_nft::Value::Ipv4Range(..) | podnet_nft::Value::Ipv4Prefix(..)
                        )
                    })
                    .count(),
                _ => 0,
            })
            .sum();
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        println!(
            "replace_all {:.2} ms | sync {:.2} ms | encode {:.2} ms ({} ops, {elements} elements of which {intervals} intervals, {} kernel elements, {} bytes)",
            ms(t_read),
            ms(t_sync),
            ms(t_encode),
            plan.transaction.len(),
            elements + intervals,
            batch.bytes.len(),
        );
    }
}
