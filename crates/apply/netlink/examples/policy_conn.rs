//! Per-packet cost of NetworkPolicy (issue 5): loads the tables `scripts/bench-policy`
//! measures (root). The client and server processes are `services_conn`'s.
//!
//! `load NETNS POLICIES`: the generated cluster of the agent's `policy_scale` bench
//! (`crates/orchestration/agent/benches/policy/cluster.rs`: 1000 pods on node-0 and 1000
//! elsewhere, ~50 namespaces) with its first POLICIES policies → `read_policies`,
//! `Cluster::new`, `plan_pods` for node-0, `render` → one transaction → [`Nftables::apply`]
//! in the named namespace, as the agent's `PolicySyncer` does. With 1000 policies the bench
//! server pod (10.244.0.3) is isolated and only `ns-0/allow-bench` admits the bench client
//! (10.244.0.2) on TCP 8080–8084; with 0 the table is present and isolates nobody.

#[path = "../../../orchestration/agent/benches/policy/cluster.rs"]
mod cluster;

use std::time::Instant;

use podnet_netlink::netns;
use podnet_netlink::nftables::Nftables;
use podnet_nft::Transaction;
use podnet_policy::{Cluster, plan_pods, read_policies, render};

fn load(ns: &str, policies: u32) -> Result<(), String> {
    let t0 = Instant::now();
    let (read, problems) = read_policies(&cluster::policies(policies));
    if !problems.is_empty() {
        return Err(format!("policy problems: {:?}", &problems[..1]));
    }
    let c = Cluster::new(&cluster::pods(1000, 1000), &cluster::namespaces());
    let plan = plan_pods(&read, &c, Some("node-0"));
    let server = plan.iter().find(|p| p.ip == cluster::SERVER);
    if policies > 0 {
        let d = server
            .and_then(|p| p.ingress.as_ref())
            .ok_or("the server pod is not isolated")?;
        if d.policies != ["ns-0/allow-bench", "ns-0/default-deny"] {
            return Err(format!("server pod isolated by {:?}", d.policies));
        }
    } else if !plan.is_empty() {
        return Err("pods isolated without policies".into());
    }
    let table = render(&plan);
    let tx = Transaction::replace_table(&table);
    let planned = t0.elapsed();
    let fd = netns::open(netns::named_path(ns)).map_err(|e| e.to_string())?;
    let mut nft = Nftables::open_in(&fd).map_err(|e| e.to_string())?;
    let t1 = Instant::now();
    nft.apply(&tx).map_err(|e| e.to_string())?;
    let elements: usize = table.sets.iter().map(|(_, e)| e.len()).sum();
    eprintln!(
        "policy table: {policies} policies, {} isolated pods in {ns}: {} chains, {} sets, {elements} elements, {} ops, planned in {:.0} ms, applied in {:.0} ms",
        plan.len(),
        table.chains.len(),
        table.sets.len(),
        tx.len(),
        planned.as_secs_f64() * 1e3,
        t1.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match (args.first().map(String::as_str), args.get(1), args.get(2)) {
        (Some("load"), Some(ns), Some(n)) => match n.parse() {
            Ok(n) => load(ns, n),
            Err(_) => Err(format!("not a number: {n}")),
        },
        _ => Err("usage: policy_conn load NETNS POLICIES".into()),
    };
    if let Err(e) = result {
        eprintln!("policy_conn: {e}");
        std::process::exit(1);
    }
}
