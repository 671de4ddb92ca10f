//! Property tests of the incremental path: on random sequences of NetworkPolicy, Pod and
//! Namespace changes (seeded, so a failure replays: policies of every shape, bad ones
//! included; pod labels, addresses, ports, nodes, phases; namespace labels and deletions),
//! after every sync the [`Planner`]'s table equals `render(plan_pods(…))` of the whole
//! snapshot, and its transaction, applied to a model of the kernel that refuses what
//! nf_tables refuses (a missing element deleted, an element overwritten, a chain or set
//! deleted while something names it, a rule or element naming something missing), turns
//! the previous table into exactly that one.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use podnet_nft::{Chain, ElemData, Element, Op, Rule, Set, Stmt, Table, Transaction, Verdict};
use podnet_policy::{
    Cluster, NamespaceInput, Planner, PodInput, PolicyInput, plan_pods, read_policies, render,
};
use serde_json::{Value, json};

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn pick<T: Clone>(&mut self, v: &[T]) -> T {
        v[self.below(v.len())].clone()
    }
}

const NAMESPACES: [&str; 3] = ["a", "b", "c"];
const PODS: usize = 12;
const POLICIES: usize = 8;
const NODE: &str = "node-1";

fn namespace(rng: &mut Rng, name: &str) -> Namespace {
    let mut labels = json!({"team": rng.pick(&["x", "y"])});
    if rng.chance(50) {
        labels["env"] = json!(rng.pick(&["prod", "dev"]));
    }
    if rng.chance(80) {
        labels["kubernetes.io/metadata.name"] = json!(name);
    }
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
}

/// Pod `i` (its namespace is fixed by `i`; addresses are its own: no two pods share one).
fn pod(rng: &mut Rng, i: usize) -> Pod {
    let ns = NAMESPACES[i % NAMESPACES.len()];
    let mut labels = json!({"app": rng.pick(&["web", "api", "db"])});
    if rng.chance(50) {
        labels["tier"] = json!(rng.pick(&["front", "back"]));
    }
    let mut ports = Vec::new();
    if rng.chance(60) {
        ports.push(
            json!({"name": "http", "containerPort": rng.pick(&[80, 8080]), "protocol": "TCP"}),
        );
    }
    if rng.chance(30) {
        ports.push(json!({"name": "dns", "containerPort": 53, "protocol": "UDP"}));
    }
    let phase = if rng.chance(5) {
        "Succeeded"
    } else {
        "Running"
    };
    let mut status = json!({"phase": phase});
    if rng.chance(95) {
        // Some pods move between the cluster range and 10.1.x (inside ipBlocks' except).
        let net = if rng.chance(20) { 1 } else { 244 };
        status["podIP"] = json!(format!("10.{net}.{i}.{}", 1 + rng.below(3)));
    }
    let mut spec = json!({
        "nodeName": if rng.chance(60) { NODE } else { "node-2" },
        "containers": [{"name": "c", "ports": ports}],
    });
    if rng.chance(5) {
        spec["hostNetwork"] = json!(true);
    }
    serde_json::from_value(json!({
        "metadata": {"name": format!("pod-{i}"), "namespace": ns, "labels": labels},
        "spec": spec,
        "status": status,
    }))
    .unwrap()
}

fn selector(rng: &mut Rng) -> Value {
    match rng.below(5) {
        0 => json!({}),
        1 => json!({"matchLabels": {"app": rng.pick(&["web", "api", "db"])}}),
        2 => json!({"matchExpressions": [{"key": "tier", "operator": "In",
                     "values": [rng.pick(&["front", "back"])]}]}),
        3 => json!({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}),
        _ => json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["db"]}]}),
    }
}

fn ns_selector(rng: &mut Rng) -> Value {
    match rng.below(4) {
        0 => json!({}),
        1 => json!({"matchLabels": {"team": rng.pick(&["x", "y"])}}),
        2 => json!({"matchLabels": {"kubernetes.io/metadata.name": rng.pick(&NAMESPACES)}}),
        _ => json!({"matchExpressions": [{"key": "env", "operator": "Exists"}]}),
    }
}

fn peer(rng: &mut Rng) -> Value {
    match rng.below(6) {
        0 | 1 => json!({"podSelector": selector(rng)}),
        2 => json!({"namespaceSelector": ns_selector(rng)}),
        3 => json!({"namespaceSelector": ns_selector(rng), "podSelector": selector(rng)}),
        4 => json!({"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}),
        _ => json!({"ipBlock": {"cidr": format!("10.244.{}.0/24", rng.below(PODS))}}),
    }
}

fn ports(rng: &mut Rng) -> Value {
    let mut v = Vec::new();
    for _ in 0..rng.below(3) {
        v.push(match rng.below(5) {
            0 => json!({"port": rng.pick(&[80, 8080, 443])}),
            1 => json!({"protocol": "UDP", "port": 53}),
            2 => json!({"port": 8000, "endPort": 8100}),
            3 => json!({"port": "http"}),
            _ => json!({"protocol": "UDP", "port": "dns"}),
        });
    }
    json!(v)
}

fn rules(rng: &mut Rng, key: &str) -> Value {
    let mut v = Vec::new();
    for _ in 0..rng.below(3) {
        let mut r = json!({});
        if rng.chance(80) {
            let peers: Vec<Value> = (0..1 + rng.below(2)).map(|_| peer(rng)).collect();
            r[key] = json!(peers);
        }
        if rng.chance(70) {
            r["ports"] = ports(rng);
        }
        v.push(r);
    }
    json!(v)
}

fn policy(rng: &mut Rng, j: usize) -> NetworkPolicy {
    let ns = NAMESPACES[j % NAMESPACES.len()];
    let mut spec = json!({"podSelector": selector(rng)});
    if rng.chance(80) {
        spec["ingress"] = rules(rng, "from");
    }
    if rng.chance(50) {
        spec["egress"] = rules(rng, "to");
    }
    match rng.below(4) {
        0 => spec["policyTypes"] = json!(["Ingress", "Egress"]),
        1 => spec["policyTypes"] = json!(["Egress"]),
        _ => {}
    }
    if rng.chance(5) {
        // Unreadable: isolates its pods and allows nothing.
        spec["ingress"] = json!([{"from": [{"ipBlock": {"cidr": "not-a-cidr"}}]}]);
    }
    serde_json::from_value(
        json!({"metadata": {"name": format!("np-{j}"), "namespace": ns},
        "spec": spec}),
    )
    .unwrap()
}

/// The cluster as the API server holds it.
#[derive(Default)]
struct World {
    policies: BTreeMap<usize, NetworkPolicy>,
    pods: BTreeMap<usize, Pod>,
    namespaces: BTreeMap<usize, Namespace>,
}

impl World {
    fn full(&self) -> (Table, Vec<podnet_policy::Problem>) {
        let nps: Vec<NetworkPolicy> = self.policies.values().cloned().collect();
        let pods: Vec<Pod> = self.pods.values().cloned().collect();
        let nss: Vec<Namespace> = self.namespaces.values().cloned().collect();
        let (policies, mut problems) = read_policies(&nps);
        problems.sort();
        let cluster = Cluster::new(&pods, &nss);
        (
            render(&plan_pods(&policies, &cluster, Some(NODE))),
            problems,
        )
    }
}

/// One random change, told to the planner as a watch event would.
fn change(rng: &mut Rng, world: &mut World, planner: &mut Planner) {
    match rng.below(10) {
        0..=2 => {
            let j = rng.below(POLICIES);
            if rng.chance(15) {
                if let Some(np) = world.policies.remove(&j) {
                    planner.delete_policy(PolicyInput::new(&np).key());
                }
            } else {
                let np = policy(rng, j);
                planner.set_policy(PolicyInput::new(&np));
                world.policies.insert(j, np);
            }
        }
        3..=7 => {
            let i = rng.below(PODS);
            if rng.chance(15) {
                if let Some(p) = world.pods.remove(&i) {
                    planner.delete_pod(PodInput::new(&p).key());
                }
            } else {
                let mut p = match (world.pods.get(&i), rng.chance(60)) {
                    // Often only the labels change, as a relabel does.
                    (Some(old), true) => old.clone(),
                    _ => pod(rng, i),
                };
                let fresh = pod(rng, i);
                p.metadata.labels = fresh.metadata.labels;
                planner.set_pod(PodInput::new(&p));
                world.pods.insert(i, p);
            }
        }
        _ => {
            let k = rng.below(NAMESPACES.len());
            if rng.chance(25) {
                if let Some(n) = world.namespaces.remove(&k) {
                    planner.delete_namespace(NamespaceInput::new(&n).name());
                }
            } else {
                let n = namespace(rng, NAMESPACES[k]);
                planner.set_namespace(NamespaceInput::new(&n));
                world.namespaces.insert(k, n);
            }
        }
    }
}

/// nf_tables as far as these transactions go: what it holds, and what it refuses.
#[derive(Default)]
struct Kernel {
    sets: BTreeMap<String, (Set, Vec<Element>)>,
    chains: BTreeMap<String, (Chain, Vec<Rule>)>,
}

fn rule_names(rule: &Rule) -> (Vec<&str>, Vec<&str>) {
    let (mut sets, mut chains) = (Vec::new(), Vec::new());
    for s in &rule.stmts {
        match s {
            Stmt::Vmap { map, .. } => sets.push(map.as_str()),
            Stmt::InSet { set, .. } => sets.push(set.as_str()),
            Stmt::Verdict(Verdict::Jump(c) | Verdict::Goto(c)) => chains.push(c.as_str()),
            _ => {}
        }
    }
    (sets, chains)
}

fn elem_chain(e: &Element) -> Option<&str> {
    match &e.data {
        Some(ElemData::Verdict(Verdict::Jump(c) | Verdict::Goto(c))) => Some(c),
        _ => None,
    }
}

impl Kernel {
    fn apply(&mut self, tx: &Transaction) -> Result<(), String> {
        for op in &tx.ops {
            self.op(op).map_err(|e| format!("{e}: {op:?}"))?;
        }
        Ok(())
    }

    fn chain_named(&self, name: &str) -> bool {
        self.chains
            .values()
            .any(|(_, rules)| rules.iter().any(|r| rule_names(r).1.contains(&name)))
            || self
                .sets
                .values()
                .any(|(_, elems)| elems.iter().any(|e| elem_chain(e) == Some(name)))
    }

    fn op(&mut self, op: &Op) -> Result<(), String> {
        match op {
            Op::AddTable => {}
            Op::DeleteTable => {
                self.sets.clear();
                self.chains.clear();
            }
            Op::AddSet(s) => match self.sets.get(&s.name) {
                Some((old, _)) if old != s => return Err("set redeclared".into()),
                Some(_) => {}
                None => {
                    self.sets.insert(s.name.clone(), (s.clone(), Vec::new()));
                }
            },
            Op::AddChain(c) => match self.chains.get(&c.name) {
                Some((old, _)) if old != c => return Err("chain redeclared".into()),
                Some(_) => {}
                None => {
                    self.chains.insert(c.name.clone(), (c.clone(), Vec::new()));
                }
            },
            Op::FlushChain(c) => self.chains.get_mut(c).ok_or("no chain")?.1.clear(),
            Op::DeleteChain(c) => {
                if !self.chains.get(c).ok_or("no chain")?.1.is_empty() {
                    return Err("chain not empty".into());
                }
                if self.chain_named(c) {
                    return Err("chain in use".into());
                }
                self.chains.remove(c);
            }
            Op::AddRule { chain, rule } => {
                let (sets, chains) = rule_names(rule);
                if sets.iter().any(|s| !self.sets.contains_key(*s))
                    || chains.iter().any(|c| !self.chains.contains_key(*c))
                {
                    return Err("rule names something missing".into());
                }
                self.chains
                    .get_mut(chain)
                    .ok_or("no chain")?
                    .1
                    .push(rule.clone());
            }
            Op::FlushSet(s) | Op::FlushMap(s) => self.sets.get_mut(s).ok_or("no set")?.1.clear(),
            Op::DeleteSet(s) => {
                self.sets.get(s).ok_or("no set")?;
                if self
                    .chains
                    .values()
                    .any(|(_, rules)| rules.iter().any(|r| rule_names(r).0.contains(&s.as_str())))
                {
                    return Err("set in use".into());
                }
                self.sets.remove(s);
            }
            Op::AddElements { set, elems } => {
                for e in elems {
                    if let Some(c) = elem_chain(e)
                        && !self.chains.contains_key(c)
                    {
                        return Err(format!("element names missing chain {c}"));
                    }
                    let held = &mut self.sets.get_mut(set).ok_or("no set")?.1;
                    match held.iter().find(|h| h.key == e.key) {
                        Some(h) if h.data != e.data => return Err("element exists".into()),
                        Some(_) => {}
                        None => held.push(e.clone()),
                    }
                }
            }
            Op::DeleteElements { set, elems } => {
                let held = &mut self.sets.get_mut(set).ok_or("no set")?.1;
                for e in elems {
                    let at = held
                        .iter()
                        .position(|h| h.key == e.key)
                        .ok_or("no element")?;
                    held.remove(at);
                }
            }
        }
        Ok(())
    }

    /// Whether the kernel holds exactly `table` (element order aside).
    fn assert_holds(&self, table: &Table, context: &str) {
        let sorted = |elems: &[Element]| {
            let mut v: Vec<String> = elems.iter().map(|e| format!("{e:?}")).collect();
            v.sort();
            v
        };
        let want: BTreeMap<&str, (&Set, Vec<String>)> = table
            .sets
            .iter()
            .map(|(s, e)| (s.name.as_str(), (s, sorted(e))))
            .collect();
        let have: BTreeMap<&str, (&Set, Vec<String>)> = self
            .sets
            .iter()
            .map(|(n, (s, e))| (n.as_str(), (s, sorted(e))))
            .collect();
        assert_eq!(have, want, "sets after the transaction: {context}");
        let want: BTreeMap<&str, &(Chain, Vec<Rule>)> = table
            .chains
            .iter()
            .map(|c| (c.0.name.as_str(), c))
            .collect();
        let have: BTreeMap<&str, &(Chain, Vec<Rule>)> =
            self.chains.iter().map(|(n, c)| (n.as_str(), c)).collect();
        assert_eq!(have, want, "chains after the transaction: {context}");
    }
}

fn run(seed: u64, steps: usize) -> (usize, usize, usize) {
    let mut rng = Rng(seed);
    let mut world = World::default();
    let mut planner = Planner::new(NODE);
    let mut kernel = Kernel::default();
    // Start from a populated cluster: the first sync is the full one.
    for (k, name) in NAMESPACES.iter().enumerate() {
        if rng.chance(80) {
            let n = namespace(&mut rng, name);
            planner.set_namespace(NamespaceInput::new(&n));
            world.namespaces.insert(k, n);
        }
    }
    for _ in 0..20 {
        change(&mut rng, &mut world, &mut planner);
    }
    let (mut incremental, mut replaced, mut isolated_max) = (0, 0, 0);
    for step in 0..steps {
        let context = format!("seed {seed}, step {step}");
        let sync = planner.sync();
        let (full, problems) = world.full();
        assert_eq!(planner.table(), full, "planner's table: {context}");
        assert_eq!(planner.problems(), problems, "problems: {context}");
        if sync.replace {
            replaced += 1;
            assert_eq!(
                sync.transaction,
                Transaction::replace_table(&full),
                "{context}"
            );
        } else {
            incremental += 1;
        }
        if step % 17 == 5 {
            // A refused transaction: the kernel keeps what it had; the next is a replace.
            planner.failed();
        } else {
            kernel
                .apply(&sync.transaction)
                .unwrap_or_else(|e| panic!("kernel refused ({context}): {e}"));
            kernel.assert_holds(&full, &context);
        }
        isolated_max = isolated_max.max(sync.isolated.0 + sync.isolated.1);
        let again = planner.sync();
        assert!(
            again.transaction.is_empty() || again.replace,
            "a sync with nothing changed sends nothing: {context}: {:?}",
            again.transaction
        );
        if again.replace {
            replaced += 1;
            kernel.apply(&again.transaction).unwrap();
            kernel.assert_holds(&full, &context);
        }
        for _ in 0..1 + rng.below(3) {
            change(&mut rng, &mut world, &mut planner);
        }
    }
    (incremental, replaced, isolated_max)
}

#[test]
fn incremental_syncs_equal_the_full_recompute() {
    let mut totals = (0, 0, 0);
    for seed in 0..40 {
        let (i, r, m) = run(seed, 150);
        totals = (totals.0 + i, totals.1 + r, totals.2.max(m));
    }
    // The property test exercises both paths and isolates pods.
    assert!(totals.0 > 4000, "{totals:?}");
    assert!(totals.1 > 300, "{totals:?}");
    assert!(totals.2 >= 4, "{totals:?}");
}

#[test]
fn a_label_change_nobody_selects_sends_nothing() {
    let mut planner = Planner::new(NODE);
    let np: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": "allow-web", "namespace": "a"},
        "spec": {"podSelector": {"matchLabels": {"app": "db"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]}
    }))
    .unwrap();
    planner.set_policy(PolicyInput::new(&np));
    let mk = |name: &str, app: &str, ip: &str, extra: Value| -> Pod {
        let mut labels = json!({"app": app});
        if let Value::Object(m) = extra {
            labels.as_object_mut().unwrap().extend(m);
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "a", "labels": labels},
            "spec": {"nodeName": NODE, "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIP": ip},
        }))
        .unwrap()
    };
    planner.set_pod(PodInput::new(&mk("db", "db", "10.244.0.2", json!({}))));
    planner.set_pod(PodInput::new(&mk("web", "web", "10.244.0.3", json!({}))));
    let first = planner.sync();
    assert!(first.replace);
    assert_eq!(first.isolated, (1, 0));
    // A label no selector looks at: nothing to plan, nothing to send.
    planner.set_pod(PodInput::new(&mk(
        "web",
        "web",
        "10.244.0.3",
        json!({"x": "1"}),
    )));
    assert!(planner.sync().transaction.is_empty());
    // The peer leaves the allowance: its class keeps its name; its only set, now empty,
    // goes (a class has only the sets it has addresses for).
    planner.set_pod(PodInput::new(&mk("web", "api", "10.244.0.3", json!({}))));
    let summary = |tx: &Transaction| -> Vec<String> {
        tx.ops
            .iter()
            .map(|op| match op {
                Op::DeleteElements { set, elems } => format!("delete {} from {set}", elems.len()),
                Op::AddElements { set, elems } => format!("add {} to {set}", elems.len()),
                Op::AddRule { chain, .. } => format!("rule {chain}"),
                Op::AddSet(s) => format!("add set {}", s.name),
                other => format!("{other:?}"),
            })
            .collect()
    };
    let table = planner.table();
    let class = table.chains.last().unwrap().0.name.clone();
    assert!(class.starts_with("in-"), "{table:?}");
    assert_eq!(
        summary(&planner.sync().transaction),
        [
            format!("FlushChain({class:?})"),
            format!("rule {class}"),
            format!("DeleteSet({:?})", format!("{class}-any")),
        ]
    );
    // And comes back: the set, its rule and one element.
    planner.set_pod(PodInput::new(&mk("web", "web", "10.244.0.3", json!({}))));
    assert_eq!(
        summary(&planner.sync().transaction),
        [
            format!("add set {class}-any"),
            format!("FlushChain({class:?})"),
            format!("rule {class}"),
            format!("rule {class}"),
            format!("add 1 to {class}-any"),
        ]
    );
    // Another peer on the same terms: one element, nothing else.
    planner.set_pod(PodInput::new(&mk("web2", "web", "10.244.0.9", json!({}))));
    assert_eq!(
        summary(&planner.sync().transaction),
        [format!("add 1 to {class}-any")]
    );
    // The selected pod's own label moves it out of the policy: its map element goes, and
    // its class with it; it was the node's only isolated pod, so the base chains go too
    // (no packet passes the table while no local pod is isolated).
    planner.set_pod(PodInput::new(&mk("db", "cache", "10.244.0.2", json!({}))));
    let tx = planner.sync().transaction;
    assert_eq!(
        summary(&tx),
        [
            "delete 1 from ingress-pods".to_string(),
            format!("FlushChain({class:?})"),
            "FlushChain(\"forward\")".to_string(),
            "DeleteChain(\"forward\")".to_string(),
            "FlushChain(\"input\")".to_string(),
            "DeleteChain(\"input\")".to_string(),
            format!("DeleteSet({:?})", format!("{class}-any")),
            format!("DeleteChain({class:?})"),
        ]
    );
    let bases = |t: &podnet_nft::Table| -> Vec<String> {
        t.chains
            .iter()
            .filter(|(c, _)| c.base.is_some())
            .map(|(c, _)| c.name.clone())
            .collect()
    };
    assert!(bases(&planner.table()).is_empty());
    // Isolated again: the base chains come back, after the pod's element and its class.
    planner.set_pod(PodInput::new(&mk("db", "db", "10.244.0.2", json!({}))));
    let ops = summary(&planner.sync().transaction);
    let at = |s: &str| ops.iter().position(|o| o.starts_with(s)).expect(s);
    assert!(
        at("add 1 to ingress-pods") < at("AddChain(Chain { name: \"forward\""),
        "{ops:?}"
    );
    assert_eq!(
        ops.iter().filter(|o| o.as_str() == "rule forward").count(),
        3
    );
    assert_eq!(ops.iter().filter(|o| o.as_str() == "rule input").count(), 2);
    assert_eq!(bases(&planner.table()), ["forward", "input"]);
}
