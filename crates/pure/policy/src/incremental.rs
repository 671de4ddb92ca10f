//! Pure: the node's policy plan and its `ip podnet-policy` table kept up to date event by
//! event — the agent's path. [`plan_pods`](crate::plan_pods) + [`render`](crate::render)
//! stay the whole-snapshot reference this must agree with (property-tested in
//! `tests/incremental.rs`: after every step [`Planner::table`] equals the full recompute,
//! and each transaction, applied to a model of nf_tables that refuses what the kernel
//! refuses, turns the previous table into exactly that one).
//!
//! State kept between syncs: the read policies by `ns/name`, every pod as a [`PodView`]
//! by `ns/name`, namespace labels; per isolated local pod its address and its class per
//! direction; per class its inputs (selecting policies, and for ingress under a named
//! port the pods' declared ports), what it allows now, its port sets and its number of
//! pods; per port set (`ports-K`) the number of classes using it; the pod maps' elements.
//!
//! A class is named by its inputs, not by what it allows (`Direction::class`), so what
//! it allows can change in place. An event marks, at once (the state before it is at
//! hand):
//! - a policy: the local pods its old or new version selects (their class may change),
//!   and the classes it is an input of (what they allow may change: computed again);
//! - a pod: itself if local; and in the classes of every policy with a peer that matched
//!   the pod before or after (a label-only change: before xor after; egress named ports
//!   over an `ipBlock` or over everything: the pod's address or ports moved inside it)
//!   its old and new address — a peer pod counts only at its own address, so those
//!   classes are computed again at those addresses only ([`ports_at`] + [`set_point`]);
//! - a namespace: the classes of every policy with a `namespaceSelector` that matched
//!   its labels before xor after.
//!
//! [`Planner::sync`] then moves the marked pods between classes (a new class is computed
//! in full and created; one left empty is deleted), recomputes the marked classes, and
//! builds the transaction from what changed: pod map elements out and in, the elements
//! of the changed classes' address sets that differ (from a walk of the old and new
//! segments, not of whole sets), address sets and port sets that come or go, and a
//! class chain's rules only when its port sets changed. No whole table is built or
//! compared on this path: one policy or pod label change among 1000 policies and 1000
//! local pods costs a few milliseconds of planning and a few dozen operations
//! (`benches/policy_scale.rs`).
//!
//! The first sync plans every local pod and replaces the table atomically (the previous
//! run's rules hold until then: fail closed across restarts); after [`Planner::failed`]
//! the next sync replaces the whole table too.
//!
//! Against Calico's and Cilium's agents: Calico's calculation graph also follows selector
//! matches incrementally, but renders a chain per policy and an ipset per selector (per
//! packet: rules ∝ policies); Cilium regenerates the policy of every endpoint an identity
//! change reaches and writes per-endpoint BPF map entries. Here a pod relabelled touches
//! only its own address in the classes whose peers it enters or leaves — usually a
//! handful of set elements — and a packet still meets a constant number of rules.
//!
//! The cost of naming classes by inputs: pods of different namespaces never share a
//! class (the policies differ by name), so a cluster has more classes and set elements
//! than with classes shared by equal allowances (the bench's 1000 policies: 551 classes
//! and 187k elements against 237 and 32k; 208k before an address range became one
//! element instead of its prefixes), and the first load takes that much longer: most of
//! a first sync is the kernel inserting elements.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use podnet_nft::{Element, Family, Op, Set, Table, Transaction};

use crate::model::{
    Allowed, Directions, Index, Peer, PodView, Policy, PortMatch, PortSet, Problem, Segment,
    class_of, compute_direction, implied_labels, namespace_labels, ports_at, read_policy,
    set_point,
};
use crate::render::{
    Part, SetId, TABLE, assemble, base_chains, class_elements, class_rules, names, pod_element,
    ports_hash, render_class, render_ports,
};

/// A NetworkPolicy as the planner keeps it: read once, when its event arrives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyInput {
    key: String,
    policy: Option<Policy>,
    problem: Option<Problem>,
}

impl PolicyInput {
    pub fn new(np: &NetworkPolicy) -> PolicyInput {
        let (policy, problem) = read_policy(np);
        PolicyInput {
            key: object_key(
                np.metadata.namespace.as_deref(),
                np.metadata.name.as_deref(),
            ),
            policy,
            problem,
        }
    }

    /// `ns/name`.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// A Pod as the planner keeps it (`view: None`: not a peer nor isolated — host network,
/// no IPv4 address yet, finished).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInput {
    key: String,
    view: Option<PodView>,
}

impl PodInput {
    pub fn new(p: &Pod) -> PodInput {
        PodInput {
            key: object_key(p.metadata.namespace.as_deref(), p.metadata.name.as_deref()),
            view: PodView::from_pod(p),
        }
    }

    /// `ns/name`.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// A Namespace's labels as selectors see them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceInput {
    name: String,
    labels: Option<BTreeMap<String, String>>,
}

impl NamespaceInput {
    pub fn new(n: &Namespace) -> NamespaceInput {
        match namespace_labels(n) {
            Some((name, labels)) => NamespaceInput {
                name,
                labels: Some(labels),
            },
            // Nameless: nothing can live in it (`Cluster::new` skips it too).
            None => NamespaceInput {
                name: String::new(),
                labels: None,
            },
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// `ns/name` as `read_policy` and `PodView::key` spell it.
fn object_key(namespace: Option<&str>, name: Option<&str>) -> String {
    format!(
        "{}/{}",
        namespace.unwrap_or("default"),
        name.unwrap_or_default()
    )
}

/// What a sync sends, and what the node's table then holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicySync {
    /// Empty: nothing changed, nothing to send.
    pub transaction: Transaction,
    /// Whether the transaction replaces the whole table (first sync, after a failure).
    pub replace: bool,
    /// Local pods isolated for ingress, for egress.
    pub isolated: (usize, usize),
}

/// An isolated local pod as programmed: its address and its class per direction.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Planned {
    ip: Ipv4Addr,
    class: [Option<String>; 2],
}

/// A class: the pods whose direction has the same inputs, and what they allow.
#[derive(Debug)]
struct Class {
    ingress: bool,
    /// The selecting policies (`ns/name`).
    policies: Vec<String>,
    /// For ingress under a named port: the pods' declared ports (else empty).
    ports: Vec<(String, u8, u16)>,
    /// What it allows now (its sets' content).
    allowed: Allowed,
    /// Its port sets (by hash) and how many of its segments use each.
    ks: BTreeMap<u64, usize>,
    /// Its address sets and how many of its segments each holds.
    sets: BTreeMap<SetId, usize>,
    /// Pods in it.
    refs: usize,
}

/// A port set's `(protocol, first, last)` ranges.
type Ranges = Vec<(u8, u16, u16)>;

/// rustc's FxHash, for the port-list → hash map looked up once per segment (200k times in
/// a first sync): SipHash over a few small integers cost more than the rest of the
/// lookup. Keys are port lists of the cluster's policies, a few distinct ones.
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Port sets (`ports-K`) with the number of classes using each, and the hashes naming them.
#[derive(Debug, Default)]
struct PortSets {
    /// Hash → (ranges, classes using it).
    sets: BTreeMap<u64, (Ranges, usize)>,
    hashes: HashMap<Vec<(u8, u16, u16)>, u64, std::hash::BuildHasherDefault<FxHasher>>,
    /// Created during the current sync.
    created: BTreeSet<u64>,
    /// Released to no class during the current sync.
    released: BTreeSet<u64>,
}

impl PortSets {
    /// The hash naming `ranges` (remembered while a class uses it).
    fn hash(&mut self, ranges: &[(u8, u16, u16)]) -> u64 {
        match self.hashes.get(ranges) {
            Some(h) => *h,
            None => {
                let h = ports_hash(ranges);
                self.hashes.insert(ranges.to_vec(), h);
                h
            }
        }
    }

    /// One more class uses port set `k`.
    fn acquire(&mut self, k: u64, ranges: &[(u8, u16, u16)]) {
        let entry = self.sets.entry(k).or_insert_with(|| {
            self.created.insert(k);
            (ranges.to_vec(), 0)
        });
        entry.1 += 1;
    }

    /// One class fewer uses port set `k`.
    fn release(&mut self, k: u64) {
        let entry = self.sets.get_mut(&k).expect("acquired port set");
        entry.1 -= 1;
        if entry.1 == 0 {
            self.released.insert(k);
        }
    }

    /// Ends a sync: (created and used, removed) port sets; drops the unused.
    fn settle(&mut self) -> (Vec<u64>, Vec<u64>) {
        let mut removed = Vec::new();
        for k in std::mem::take(&mut self.released) {
            if self.sets.get(&k).is_none_or(|e| e.1 > 0) {
                continue;
            }
            let (ranges, _) = self.sets.remove(&k).expect("port set");
            self.hashes.remove(&ranges);
            if !self.created.remove(&k) {
                removed.push(k);
            }
        }
        let created = std::mem::take(&mut self.created).into_iter().collect();
        (created, removed)
    }
}

/// What changed in one class's sets: elements by set, and port sets it took up or left.
#[derive(Debug)]
struct ClassDelta {
    name: String,
    gone: BTreeMap<String, Vec<Element>>,
    added: BTreeMap<String, Vec<Element>>,
    /// Address sets that come and go.
    appeared: Vec<SetId>,
    disappeared: Vec<SetId>,
}

/// Everything one sync changed, for its transaction.
struct Changed<'s> {
    /// The base chains come (`Some(true)`: the first local pod is isolated) or go
    /// (`Some(false)`: the last one is released); `None`: they stay as they are.
    guard: Option<bool>,
    classes: &'s BTreeSet<String>,
    ports: &'s [u64],
    deltas: &'s [ClassDelta],
    removed: &'s [(String, Vec<String>)],
    removed_ports: &'s [u64],
    touched: &'s [BTreeMap<Ipv4Addr, Option<String>>; 2],
}

impl Class {
    /// A pod as the computation of this class sees it: its declared ports only.
    fn shell(&self) -> PodView {
        PodView {
            namespace: String::new(),
            name: String::new(),
            ip: Ipv4Addr::UNSPECIFIED,
            labels: BTreeMap::new(),
            node: None,
            ports: self.ports.clone(),
        }
    }
}

/// The node's plan and table, kept up to date object by object (see the module doc).
#[derive(Debug)]
pub struct Planner {
    node: String,
    policies: BTreeMap<String, Policy>,
    problems: BTreeMap<String, Problem>,
    /// Every pod with a [`PodView`], by `ns/name` (a namespace's pods are one range).
    pods: BTreeMap<String, PodView>,
    /// Keys of the pods on this node.
    local: BTreeSet<String>,
    /// Namespaces with an object: name → labels.
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// Local pods whose classes may change.
    dirty_pods: BTreeSet<String>,
    /// Classes to compute again in full (one of their policies or a namespace changed).
    dirty_classes: BTreeSet<String>,
    /// Classes to compute again at some addresses (a peer pod came, left or changed there).
    points: BTreeMap<String, BTreeSet<u32>>,
    /// The next sync plans every local pod (the first one).
    replan_all: bool,
    /// The next transaction replaces the whole table (the first one, after a failure).
    replace: bool,
    planned: HashMap<String, Planned>,
    /// What `ingress-pods` (0) and `egress-pods` (1) hold: address → pod → class. The
    /// element of an address is its first pod's (addresses are unique among running pods;
    /// a stale duplicate must not make the map ambiguous).
    maps: [BTreeMap<Ipv4Addr, BTreeMap<String, String>>; 2],
    classes: BTreeMap<String, Class>,
    ports: PortSets,
    /// Policy → the classes it is an input of.
    by_policy: HashMap<String, BTreeSet<String>>,
}

impl Planner {
    /// A planner for `node`'s pods; its first sync replaces the table.
    pub fn new(node: impl Into<String>) -> Planner {
        Planner {
            node: node.into(),
            policies: BTreeMap::new(),
            problems: BTreeMap::new(),
            pods: BTreeMap::new(),
            local: BTreeSet::new(),
            namespaces: BTreeMap::new(),
            dirty_pods: BTreeSet::new(),
            dirty_classes: BTreeSet::new(),
            points: BTreeMap::new(),
            replan_all: true,
            replace: true,
            planned: HashMap::new(),
            maps: [BTreeMap::new(), BTreeMap::new()],
            classes: BTreeMap::new(),
            ports: PortSets::default(),
            by_policy: HashMap::new(),
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// The policies that could not be read (sorted by object).
    pub fn problems(&self) -> Vec<Problem> {
        self.problems.values().cloned().collect()
    }

    /// Takes a NetworkPolicy's latest state.
    pub fn set_policy(&mut self, input: PolicyInput) {
        let PolicyInput {
            key,
            policy,
            problem,
        } = input;
        match problem {
            Some(p) => self.problems.insert(key.clone(), p),
            None => self.problems.remove(&key),
        };
        let old = match policy {
            Some(p) => self.policies.insert(key.clone(), p),
            None => self.policies.remove(&key),
        };
        let new = self.policies.get(&key);
        if old.as_ref() == new || self.replan_all {
            return;
        }
        // Which pods it selects (their classes' inputs), and what its classes allow.
        for p in [old.as_ref(), new].into_iter().flatten() {
            mark_selected(p, &self.pods, &self.local, &mut self.dirty_pods);
        }
        self.dirty_classes
            .extend(self.by_policy.get(&key).into_iter().flatten().cloned());
    }

    pub fn delete_policy(&mut self, key: &str) {
        self.set_policy(PolicyInput {
            key: key.to_string(),
            policy: None,
            problem: None,
        });
    }

    /// Takes a Pod's latest state.
    pub fn set_pod(&mut self, input: PodInput) {
        let PodInput { key, view } = input;
        let old = match view {
            Some(v) => self.pods.insert(key.clone(), v),
            None => self.pods.remove(&key),
        };
        let new = self.pods.get(&key);
        if old.as_ref() == new {
            return;
        }
        let is_local =
            |p: Option<&PodView>| p.is_some_and(|p| p.node.as_deref() == Some(&self.node));
        let (was_local, now_local) = (is_local(old.as_ref()), is_local(new));
        if now_local {
            self.local.insert(key.clone());
        } else {
            self.local.remove(&key);
        }
        if was_local || now_local {
            self.dirty_pods.insert(key.clone());
        }
        if self.replan_all {
            return;
        }
        // As a peer, the pod counts only at its addresses, before and after.
        let addrs: Vec<u32> = [old.as_ref(), new]
            .into_iter()
            .flatten()
            .map(|p| u32::from(p.ip))
            .collect();
        for p in self.policies.values() {
            if depends_on_pod(p, old.as_ref(), new, &self.namespaces) {
                for class in self.by_policy.get(&p.key()).into_iter().flatten() {
                    self.points.entry(class.clone()).or_default().extend(&addrs);
                }
            }
        }
    }

    pub fn delete_pod(&mut self, key: &str) {
        self.set_pod(PodInput {
            key: key.to_string(),
            view: None,
        });
    }

    /// Takes a Namespace's latest state.
    pub fn set_namespace(&mut self, input: NamespaceInput) {
        let NamespaceInput { name, labels } = input;
        if name.is_empty() {
            return;
        }
        let before = self.labels_of(&name);
        match labels {
            Some(l) => self.namespaces.insert(name.clone(), l),
            None => self.namespaces.remove(&name),
        };
        let after = self.labels_of(&name);
        if before == after || self.replan_all || !has_pods(&self.pods, &name) {
            return;
        }
        for p in self.policies.values() {
            if depends_on_namespace(p, &before, &after) {
                self.dirty_classes
                    .extend(self.by_policy.get(&p.key()).into_iter().flatten().cloned());
            }
        }
    }

    pub fn delete_namespace(&mut self, name: &str) {
        self.set_namespace(NamespaceInput {
            name: name.to_string(),
            labels: None,
        });
    }

    /// Deletes the policies for which `keep(ns/name)` is false (after a re-list).
    pub fn retain_policies(&mut self, keep: impl Fn(&str) -> bool) {
        let gone: BTreeSet<String> = self
            .policies
            .keys()
            .chain(self.problems.keys())
            .filter(|k| !keep(k))
            .cloned()
            .collect();
        for k in gone {
            self.delete_policy(&k);
        }
    }

    /// Deletes the pods for which `keep(ns/name)` is false.
    pub fn retain_pods(&mut self, keep: impl Fn(&str) -> bool) {
        let gone: Vec<String> = self.pods.keys().filter(|k| !keep(k)).cloned().collect();
        for k in gone {
            self.delete_pod(&k);
        }
    }

    /// Deletes the namespaces for which `keep(name)` is false.
    pub fn retain_namespaces(&mut self, keep: impl Fn(&str) -> bool) {
        let gone: Vec<String> = self
            .namespaces
            .keys()
            .filter(|k| !keep(k))
            .cloned()
            .collect();
        for k in gone {
            self.delete_namespace(&k);
        }
    }

    /// Takes a whole snapshot: every object's state; what is not in it is deleted.
    pub fn replace_all(
        &mut self,
        policies: &[NetworkPolicy],
        pods: &[Pod],
        namespaces: &[Namespace],
    ) {
        let mut listed = BTreeSet::new();
        for n in namespaces {
            let input = NamespaceInput::new(n);
            listed.insert(input.name.clone());
            self.set_namespace(input);
        }
        self.retain_namespaces(|n| listed.contains(n));
        let mut listed = BTreeSet::new();
        for p in pods {
            let input = PodInput::new(p);
            listed.insert(input.key.clone());
            self.set_pod(input);
        }
        self.retain_pods(|k| listed.contains(k));
        let mut listed = BTreeSet::new();
        for p in policies {
            let input = PolicyInput::new(p);
            listed.insert(input.key.clone());
            self.set_policy(input);
        }
        self.retain_policies(|k| listed.contains(k));
    }

    /// The next sync replaces the whole table (the last transaction was refused: the
    /// kernel holds an older table than the planner's).
    pub fn failed(&mut self) {
        self.replace = true;
    }

    /// Plans what the events since the last sync can have changed and returns the
    /// transaction that brings the table there.
    pub fn sync(&mut self) -> PolicySync {
        let guarded_before = self.guarded();
        let keys: Vec<String> = if std::mem::take(&mut self.replan_all) {
            self.dirty_pods.clear();
            self.local
                .iter()
                .chain(self.planned.keys())
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        } else {
            std::mem::take(&mut self.dirty_pods).into_iter().collect()
        };
        let dirty_classes = std::mem::take(&mut self.dirty_classes);
        let points = std::mem::take(&mut self.points);
        // The pod maps' elements before this sync, of the addresses it touches.
        let mut touched: [BTreeMap<Ipv4Addr, Option<String>>; 2] =
            [BTreeMap::new(), BTreeMap::new()];
        // Classes created, and classes whose allowance changed (as it was before).
        let mut created: BTreeSet<String> = BTreeSet::new();
        let mut changed: BTreeMap<String, Allowed> = BTreeMap::new();
        let mut released: BTreeSet<String> = BTreeSet::new();
        if !keys.is_empty() || !dirty_classes.is_empty() || !points.is_empty() {
            let Planner {
                node,
                policies,
                pods,
                namespaces,
                planned,
                maps,
                classes,
                ports,
                by_policy,
                ..
            } = self;
            let directions =
                Directions::new(policies.values(), Index::new(pods.values(), namespaces));
            let index = directions.index();
            // 1. Which class each marked pod is in (a new class is computed in full).
            for key in keys {
                let pod = pods
                    .get(&key)
                    .filter(|p| p.node.as_deref() == Some(node.as_str()));
                let class = |ingress: bool,
                             classes: &mut BTreeMap<String, Class>,
                             by_policy: &mut HashMap<String, BTreeSet<String>>,
                             ports: &mut PortSets,
                             created: &mut BTreeSet<String>|
                 -> Option<String> {
                    let pod = pod?;
                    let selecting = directions.selecting(pod, ingress);
                    if selecting.is_empty() {
                        return None;
                    }
                    let key = class_of(&selecting, pod, ingress);
                    let name = names::class(ingress, key.hash);
                    if !classes.contains_key(&name) {
                        let d = compute_direction(&selecting, index, pod, ingress);
                        for p in &key.policies {
                            by_policy.entry(p.clone()).or_default().insert(name.clone());
                        }
                        let mut ks: BTreeMap<u64, usize> = BTreeMap::new();
                        let mut sets: BTreeMap<SetId, usize> = BTreeMap::new();
                        for seg in &d.allowed {
                            // SetId::of, the port list hashed once.
                            let k = match &seg.ports {
                                PortSet::All => None,
                                PortSet::Ranges(r) => Some(ports.hash(r)),
                            };
                            let id = SetId {
                                ports: k,
                                ranges: seg.first != seg.last,
                            };
                            *sets.entry(id).or_insert(0) += 1;
                            if let (PortSet::Ranges(r), Some(k)) = (&seg.ports, k) {
                                let n = ks.entry(k).or_insert(0);
                                *n += 1;
                                if *n == 1 {
                                    ports.acquire(k, r);
                                }
                            }
                        }
                        classes.insert(
                            name.clone(),
                            Class {
                                ingress,
                                policies: key.policies,
                                ports: key.ports,
                                allowed: d.allowed,
                                ks,
                                sets,
                                refs: 0,
                            },
                        );
                        created.insert(name.clone());
                    }
                    Some(name)
                };
                let new_classes = [
                    class(true, classes, by_policy, ports, &mut created),
                    class(false, classes, by_policy, ports, &mut created),
                ];
                let new = match (pod, &new_classes) {
                    (_, [None, None]) | (None, _) => None,
                    (Some(p), _) => Some(Planned {
                        ip: p.ip,
                        class: new_classes,
                    }),
                };
                if planned.get(&key) == new.as_ref() {
                    continue;
                }
                let old = match &new {
                    Some(n) => planned.insert(key.clone(), n.clone()),
                    None => planned.remove(&key),
                };
                for (i, map) in maps.iter_mut().enumerate() {
                    if let Some(n) = &new
                        && let Some(c) = &n.class[i]
                    {
                        classes.get_mut(c).expect("class").refs += 1;
                        touched[i]
                            .entry(n.ip)
                            .or_insert_with(|| element_of(map, n.ip));
                        map.entry(n.ip).or_default().insert(key.clone(), c.clone());
                    }
                    if let Some(o) = &old
                        && let Some(c) = &o.class[i]
                    {
                        let class = classes.get_mut(c).expect("class");
                        class.refs -= 1;
                        if class.refs == 0 {
                            released.insert(c.clone());
                        }
                        if new.as_ref().is_some_and(|n| n.ip == o.ip) {
                            // Same address: the entry was just replaced.
                            if new.as_ref().and_then(|n| n.class[i].as_ref()).is_some() {
                                continue;
                            }
                        }
                        touched[i]
                            .entry(o.ip)
                            .or_insert_with(|| element_of(map, o.ip));
                        let at = map.get_mut(&o.ip).expect("mapped address");
                        at.remove(&key);
                        if at.is_empty() {
                            map.remove(&o.ip);
                        }
                    }
                }
            }
            // 2. Classes whose inputs changed: computed again in full.
            let selecting_of = |class: &Class| -> Option<Vec<&Policy>> {
                class.policies.iter().map(|k| policies.get(k)).collect()
            };
            for name in &dirty_classes {
                let Some(class) = classes.get(name) else {
                    continue;
                };
                if created.contains(name) || class.refs == 0 {
                    continue;
                }
                let Some(selecting) = selecting_of(class) else {
                    continue;
                };
                let d = compute_direction(&selecting, index, &class.shell(), class.ingress);
                if d.allowed != class.allowed {
                    let class = classes.get_mut(name).expect("class");
                    let old = std::mem::replace(&mut class.allowed, d.allowed);
                    changed.entry(name.clone()).or_insert(old);
                }
            }
            // 3. Classes a peer pod changed: computed again at its addresses only.
            for (name, addrs) in &points {
                let Some(class) = classes.get(name) else {
                    continue;
                };
                if created.contains(name) || dirty_classes.contains(name) || class.refs == 0 {
                    continue;
                }
                let Some(selecting) = selecting_of(class) else {
                    continue;
                };
                let shell = class.shell();
                let updates: Vec<(u32, Option<PortSet>)> = addrs
                    .iter()
                    .map(|a| (*a, ports_at(&selecting, index, &shell, class.ingress, *a)))
                    .filter(|(a, p)| ports_in(&class.allowed, *a) != p.as_ref())
                    .collect();
                if updates.is_empty() {
                    continue;
                }
                let class = classes.get_mut(name).expect("class");
                changed
                    .entry(name.clone())
                    .or_insert_with(|| class.allowed.clone());
                for (a, p) in updates {
                    set_point(&mut class.allowed, a, p);
                }
            }
        }
        // 4. Classes no pod is in any more (one created and dropped in this sync is
        // forgotten without a trace).
        let mut removed: Vec<(String, Vec<String>)> = Vec::new();
        for name in released {
            if self.classes.get(&name).is_none_or(|c| c.refs > 0) {
                continue;
            }
            let class = self.classes.remove(&name).expect("class");
            for p in &class.policies {
                if let Some(set) = self.by_policy.get_mut(p) {
                    set.remove(&name);
                    if set.is_empty() {
                        self.by_policy.remove(p);
                    }
                }
            }
            let sets = class.sets.keys().map(|id| id.name(&name)).collect();
            for k in class.ks.keys() {
                self.ports.release(*k);
            }
            changed.remove(&name);
            if !created.remove(&name) {
                removed.push((name, sets));
            }
        }
        // 5. Classes whose allowance changed: their elements, and the port sets they use.
        let mut deltas: Vec<ClassDelta> = Vec::new();
        for (name, before) in &changed {
            if created.contains(name) {
                continue;
            }
            let class = self.classes.get_mut(name).expect("class");
            let (gone, added) = segment_changes(before, &class.allowed);
            let ports = &mut self.ports;
            let mut hash = |r: &[(u8, u16, u16)]| ports.hash(r);
            let mut delta = ClassDelta {
                name: name.clone(),
                gone: class_elements(name, gone.iter().copied(), &mut hash),
                added: class_elements(name, added.iter().copied(), &mut hash),
                appeared: Vec::new(),
                disappeared: Vec::new(),
            };
            // Port sets taken up (with their ranges) and left.
            let mut acquired: Vec<(u64, &Ranges)> = Vec::new();
            let mut dropped: Vec<u64> = Vec::new();
            for seg in &gone {
                let id = SetId::of(seg, &mut |r| self.ports.hash(r));
                let n = class.sets.get_mut(&id).expect("counted set");
                *n -= 1;
                if *n == 0 {
                    class.sets.remove(&id);
                    delta.disappeared.push(id);
                }
                if let PortSet::Ranges(r) = &seg.ports {
                    let k = self.ports.hash(r);
                    let n = class.ks.get_mut(&k).expect("counted port set");
                    *n -= 1;
                    if *n == 0 {
                        class.ks.remove(&k);
                        dropped.push(k);
                    }
                }
            }
            for seg in &added {
                let id = SetId::of(seg, &mut |r| self.ports.hash(r));
                let n = class.sets.entry(id).or_insert(0);
                *n += 1;
                if *n == 1 {
                    delta.appeared.push(id);
                }
                if let PortSet::Ranges(r) = &seg.ports {
                    let k = self.ports.hash(r);
                    let n = class.ks.entry(k).or_insert(0);
                    *n += 1;
                    if *n == 1 {
                        acquired.push((k, r));
                    }
                }
            }
            // Gone and back in one sync: the set (or port set use) stays.
            let back: Vec<SetId> = delta
                .appeared
                .iter()
                .filter(|id| delta.disappeared.contains(id))
                .copied()
                .collect();
            delta.appeared.retain(|id| !back.contains(id));
            delta.disappeared.retain(|id| !back.contains(id));
            for (k, r) in &acquired {
                if !dropped.contains(k) {
                    self.ports.acquire(*k, r);
                }
            }
            for k in &dropped {
                if !acquired.iter().any(|(a, _)| a == k) {
                    self.ports.release(*k);
                }
            }
            deltas.push(delta);
        }
        let (created_ports, removed_ports) = self.ports.settle();
        let isolated = (self.maps[0].len(), self.maps[1].len());
        if std::mem::take(&mut self.replace) {
            return PolicySync {
                transaction: Transaction::replace_table_owned(self.table()),
                replace: true,
                isolated,
            };
        }
        let tx = self.transaction(Changed {
            guard: (guarded_before != self.guarded()).then(|| self.guarded()),
            classes: &created,
            ports: &created_ports,
            deltas: &deltas,
            removed: &removed,
            removed_ports: &removed_ports,
            touched: &touched,
        });
        PolicySync {
            transaction: tx,
            replace: false,
            isolated,
        }
    }

    /// The transaction of one sync (the order `podnet_nft::diff_tables` uses): new sets and
    /// chains; elements out (pod maps, changed classes' sets); chains whose rules change
    /// flushed; their rules; elements in; then the sets and chains that go.
    fn transaction(&self, c: Changed<'_>) -> Transaction {
        let mut tx = Transaction::new(Family::Ip, TABLE);
        let created: Vec<Part> = c.classes.iter().map(|n| self.render(n)).collect();
        let new_ports: Vec<(Set, Vec<Element>)> = c
            .ports
            .iter()
            .map(|k| render_ports(*k, &self.ports.sets[k].0))
            .collect();
        for (set, _) in &new_ports {
            tx.push(Op::AddSet(set.clone()));
        }
        for (sets, _) in &created {
            for (_, (set, _)) in sets {
                tx.push(Op::AddSet(set.clone()));
            }
        }
        for d in c.deltas {
            for id in &d.appeared {
                tx.push(Op::AddSet(id.set(&d.name)));
            }
        }
        for (_, (chain, _)) in &created {
            tx.push(Op::AddChain(chain.clone()));
        }
        let map_names = [names::INGRESS_PODS, names::EGRESS_PODS];
        let mut pod_adds: [Vec<Element>; 2] = [Vec::new(), Vec::new()];
        for (i, touched) in c.touched.iter().enumerate() {
            let mut gone = Vec::new();
            for (ip, before) in touched {
                let after = element_of(&self.maps[i], *ip);
                if *before == after {
                    continue;
                }
                if let Some(c) = before {
                    gone.push(pod_element(*ip, c.clone()));
                }
                if let Some(c) = after {
                    pod_adds[i].push(pod_element(*ip, c));
                }
            }
            if !gone.is_empty() {
                tx.push(Op::DeleteElements {
                    set: map_names[i].into(),
                    elems: gone,
                });
            }
        }
        // Element changes of the sets that stay; a set that comes gets all its elements,
        // one that goes is deleted whole.
        let mut adds: Vec<(String, Vec<Element>)> = Vec::new();
        for d in c.deltas {
            let new_set = |set: &str| d.appeared.iter().any(|id| id.name(&d.name) == set);
            let old_set = |set: &str| d.disappeared.iter().any(|id| id.name(&d.name) == set);
            let sets: BTreeSet<&String> = d.gone.keys().chain(d.added.keys()).collect();
            for set in sets {
                let empty = Vec::new();
                let gone = d.gone.get(set).unwrap_or(&empty);
                let added = d.added.get(set).unwrap_or(&empty);
                if new_set(set) {
                    adds.push((set.clone(), added.clone()));
                    continue;
                }
                if old_set(set) {
                    continue;
                }
                // An element both out and in stays (a guard: elements are whole segments
                // since ranges are no longer written as prefixes, and a segment both gone
                // and added differs in its ports, so in its set).
                let out: HashSet<&Element> = gone.iter().collect();
                let both: HashSet<&Element> = added.iter().filter(|e| out.contains(e)).collect();
                let gone: Vec<Element> =
                    gone.iter().filter(|e| !both.contains(e)).cloned().collect();
                let added: Vec<Element> = added
                    .iter()
                    .filter(|e| !both.contains(e))
                    .cloned()
                    .collect();
                if !gone.is_empty() {
                    tx.push(Op::DeleteElements {
                        set: set.clone(),
                        elems: gone,
                    });
                }
                if !added.is_empty() {
                    adds.push((set.clone(), added));
                }
            }
        }
        let rules_changed: Vec<&ClassDelta> = c
            .deltas
            .iter()
            .filter(|d| !d.appeared.is_empty() || !d.disappeared.is_empty())
            .collect();
        for (name, _) in c.removed {
            tx.push(Op::FlushChain(name.clone()));
        }
        for d in &rules_changed {
            tx.push(Op::FlushChain(d.name.clone()));
        }
        for (_, (chain, rules)) in &created {
            for rule in rules {
                tx.push(Op::AddRule {
                    chain: chain.name.clone(),
                    rule: rule.clone(),
                });
            }
        }
        for d in &rules_changed {
            let class = &self.classes[&d.name];
            let ids: Vec<SetId> = class.sets.keys().copied().collect();
            for rule in class_rules(&d.name, class.ingress, &ids) {
                tx.push(Op::AddRule {
                    chain: d.name.clone(),
                    rule,
                });
            }
        }
        let news = new_ports
            .into_iter()
            .chain(
                created
                    .into_iter()
                    .flat_map(|(sets, _)| sets.into_iter().map(|(_, set)| set)),
            )
            .map(|(set, elems)| (set.name, elems));
        for (set, elems) in news.chain(adds) {
            if !elems.is_empty() {
                tx.push(Op::AddElements { set, elems });
            }
        }
        for (i, elems) in pod_adds.into_iter().enumerate() {
            if !elems.is_empty() {
                tx.push(Op::AddElements {
                    set: map_names[i].into(),
                    elems,
                });
            }
        }
        // The base chains, last in: by then every class chain their maps jump to exists.
        for (chain, rules) in base_chains() {
            match c.guard {
                Some(true) => {
                    tx.add_chain(chain, rules);
                }
                Some(false) => {
                    tx.push(Op::FlushChain(chain.name.clone()));
                    tx.push(Op::DeleteChain(chain.name));
                }
                None => {}
            }
        }
        for (_, sets) in c.removed {
            for set in sets {
                tx.push(Op::DeleteSet(set.clone()));
            }
        }
        for d in c.deltas {
            for id in &d.disappeared {
                tx.push(Op::DeleteSet(id.name(&d.name)));
            }
        }
        for k in c.removed_ports {
            tx.push(Op::DeleteSet(names::ports(*k)));
        }
        for (name, _) in c.removed {
            tx.push(Op::DeleteChain(name.clone()));
        }
        tx
    }

    /// A class's sets and chain, rendered.
    fn render(&self, name: &str) -> Part {
        let class = &self.classes[name];
        render_class(name, class.ingress, &class.allowed, &mut |r| {
            self.ports.hashes[r]
        })
    }

    /// The addresses of the local pods isolated in either direction (as of the last
    /// [`Planner::sync`]).
    pub fn isolated_pods(&self) -> BTreeSet<Ipv4Addr> {
        self.maps[0]
            .keys()
            .chain(self.maps[1].keys())
            .copied()
            .collect()
    }

    /// Whether some local pod is isolated (in either direction): the base chains exist.
    fn guarded(&self) -> bool {
        !self.maps[0].is_empty() || !self.maps[1].is_empty()
    }

    /// The whole table as the planner holds it (the first sync's and a full replace's;
    /// tests compare it with `render(plan_pods(…))`).
    pub fn table(&self) -> Table {
        let elems = |map: &BTreeMap<Ipv4Addr, BTreeMap<String, String>>| -> Vec<Element> {
            map.keys()
                .filter_map(|ip| element_of(map, *ip).map(|c| pod_element(*ip, c)))
                .collect()
        };
        assemble(
            elems(&self.maps[0]),
            elems(&self.maps[1]),
            self.classes.keys().map(|n| self.render(n)),
            self.ports
                .sets
                .iter()
                .map(|(k, (ranges, _))| render_ports(*k, ranges)),
        )
    }

    fn labels_of(&self, ns: &str) -> BTreeMap<String, String> {
        self.namespaces
            .get(ns)
            .cloned()
            .unwrap_or_else(|| implied_labels(ns))
    }
}

/// What `allowed` admits at `addr`.
fn ports_in(allowed: &Allowed, addr: u32) -> Option<&PortSet> {
    let i = allowed.partition_point(|s| s.last < addr);
    allowed.get(i).filter(|s| s.first <= addr).map(|s| &s.ports)
}

/// The segments only in `before` and those only in `after` (both sorted and disjoint).
fn segment_changes<'a>(
    before: &'a Allowed,
    after: &'a Allowed,
) -> (Vec<&'a Segment>, Vec<&'a Segment>) {
    let (mut gone, mut added) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < before.len() || j < after.len() {
        match (before.get(i), after.get(j)) {
            (Some(a), Some(b)) if a == b => {
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a < b => {
                gone.push(a);
                i += 1;
            }
            (Some(_), Some(b)) => {
                added.push(b);
                j += 1;
            }
            (Some(a), None) => {
                gone.push(a);
                i += 1;
            }
            (None, Some(b)) => {
                added.push(b);
                j += 1;
            }
            (None, None) => break,
        }
    }
    (gone, added)
}

/// The class an address's map element jumps to: its first pod's.
fn element_of(map: &BTreeMap<Ipv4Addr, BTreeMap<String, String>>, ip: Ipv4Addr) -> Option<String> {
    map.get(&ip).and_then(|pods| pods.values().next()).cloned()
}

/// Whether `ns` has pods (keys `ns/name` sort between `ns/` and `ns0`: '0' follows '/').
fn has_pods(pods: &BTreeMap<String, PodView>, ns: &str) -> bool {
    pods.range(format!("{ns}/")..format!("{ns}0"))
        .next()
        .is_some()
}

/// Marks the local pods `policy` selects.
fn mark_selected(
    policy: &Policy,
    pods: &BTreeMap<String, PodView>,
    local: &BTreeSet<String>,
    dirty: &mut BTreeSet<String>,
) {
    let from = format!("{}/", policy.namespace);
    let to = format!("{}0", policy.namespace);
    for key in local.range(from..to) {
        if pods.get(key).is_some_and(|p| policy.selects(p)) {
            dirty.insert(key.clone());
        }
    }
}

/// Whether a change of a pod from `old` to `new` can change what `policy` allows the pods
/// it selects (see the module doc).
fn depends_on_pod(
    policy: &Policy,
    old: Option<&PodView>,
    new: Option<&PodView>,
    namespaces: &BTreeMap<String, BTreeMap<String, String>>,
) -> bool {
    // Whether the pod's address or ports changed (a peer's contribution is its address,
    // and for egress its named ports): otherwise only a selector's verdict can change.
    let moved = match (old, new) {
        (Some(o), Some(n)) => o.ip != n.ip || o.ports != n.ports,
        _ => true,
    };
    let matches = |pod: Option<&PodView>,
                   namespaces_sel: Option<&podnet_cluster::Selector>,
                   pods_sel: &podnet_cluster::Selector| {
        pod.is_some_and(|p| {
            let ns_ok = match namespaces_sel {
                None => p.namespace == policy.namespace,
                Some(s) => match namespaces.get(&p.namespace) {
                    Some(l) => s.matches(l),
                    None => s.matches(&implied_labels(&p.namespace)),
                },
            };
            ns_ok && pods_sel.matches(&p.labels)
        })
    };
    let in_block =
        |pod: Option<&PodView>, cidr: &ipnet::Ipv4Net| pod.is_some_and(|p| cidr.contains(&p.ip));
    for (rules, egress) in [(&policy.ingress, false), (&policy.egress, true)] {
        for rule in rules.iter().flatten() {
            // Egress named ports resolve against each destination pod, peers or not.
            let per_destination = egress
                && rule
                    .ports
                    .iter()
                    .flatten()
                    .any(|p| matches!(p, PortMatch::Named { .. }));
            match &rule.peers {
                None => {
                    if per_destination && moved {
                        return true;
                    }
                }
                Some(peers) => {
                    for peer in peers {
                        match peer {
                            Peer::Pods {
                                namespaces: ns_sel,
                                pods: pod_sel,
                            } => {
                                let (a, b) = (
                                    matches(old, ns_sel.as_ref(), pod_sel),
                                    matches(new, ns_sel.as_ref(), pod_sel),
                                );
                                if a != b || (moved && (a || b)) {
                                    return true;
                                }
                            }
                            Peer::Block { cidr, .. } => {
                                if per_destination
                                    && moved
                                    && (in_block(old, cidr) || in_block(new, cidr))
                                {
                                    return true;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    false
}

/// Whether a namespace's labels going from `before` to `after` can change what `policy`
/// allows: some peer's namespace selector matches one and not the other.
fn depends_on_namespace(
    policy: &Policy,
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
) -> bool {
    [&policy.ingress, &policy.egress]
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|r| r.peers.iter().flatten())
        .any(|peer| match peer {
            Peer::Pods {
                namespaces: Some(s),
                ..
            } => s.matches(before) != s.matches(after),
            _ => false,
        })
}
