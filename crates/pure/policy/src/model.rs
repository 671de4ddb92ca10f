//! Pure: NetworkPolicy semantics (networking.k8s.io/v1) — which pods are isolated, per
//! direction, and which peers and ports each isolated pod admits — as address segments
//! with port sets, ready to become nf_tables interval maps.
//!
//! The rules, as the API reference states them:
//! - a policy selects pods of its own namespace (`podSelector`; empty = all of them);
//! - `policyTypes` omitted means Ingress, plus Egress when the policy has egress rules;
//! - a pod is isolated for a direction when some policy selecting it has that type;
//!   policies are additive (the union of what they allow), and a non-isolated direction
//!   allows everything;
//! - a rule with no peers (`from`/`to` empty) matches every address; with no ports, every
//!   port and protocol; a peer with only `podSelector` means pods of the policy's
//!   namespace, with `namespaceSelector` pods of the matching namespaces, with both the
//!   pods matching both; `ipBlock` is a CIDR minus its `except` CIDRs;
//! - a port is a number, a number range (`endPort`) or a name; a name is resolved per
//!   destination pod from its containers' ports (same name and protocol) — for ingress the
//!   selected pod, for egress each destination pod — and matches nothing where it does
//!   not resolve.
//!
//! Choices where the API leaves room (each also made by Calico or Cilium):
//! - `ipBlock` matches any address, pod addresses included;
//! - host-network pods are not peers (their address is their node's: admitting it would
//!   admit all of that node's traffic) and are not isolated;
//! - a policy that cannot be read (an invalid CIDR, an unknown operator) is reported and
//!   contributes no allowance, but still isolates the pods its `podSelector` picks: a
//!   broken policy never opens traffic.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::rc::Rc;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use podnet_cluster::Selector;

/// IP protocol numbers of the protocols a policy can name.
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const SCTP: u8 = 132;

/// A NetworkPolicy podnet could not read: reported, never half-applied.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// `NetworkPolicy ns/name`.
    pub object: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.object, self.message)
    }
}

/// A pod as policy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    pub labels: BTreeMap<String, String>,
    pub node: Option<String>,
    /// Declared container ports: (name, protocol, number).
    pub ports: Vec<(String, u8, u16)>,
}

impl PodView {
    /// A Pod with an IPv4 address that is running (or about to), not on the host network.
    pub fn from_pod(p: &Pod) -> Option<PodView> {
        let spec = p.spec.as_ref()?;
        if spec.host_network == Some(true) {
            return None;
        }
        let status = p.status.as_ref()?;
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            return None;
        }
        let ip: Ipv4Addr = status.pod_ip.as_deref()?.parse().ok()?;
        let ports = spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|cp| {
                let name = cp.name.clone()?;
                let proto = protocol(cp.protocol.as_deref())?;
                Some((name, proto, u16::try_from(cp.container_port).ok()?))
            })
            .collect();
        Some(PodView {
            namespace: p
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            name: p.metadata.name.clone().unwrap_or_default(),
            ip,
            labels: p.metadata.labels.clone().unwrap_or_default(),
            node: spec.node_name.clone(),
            ports,
        })
    }

    /// `ns/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    fn named_port(&self, name: &str, proto: u8) -> Option<u16> {
        self.ports
            .iter()
            .find(|(n, p, _)| n == name && *p == proto)
            .map(|(_, _, port)| *port)
    }
}

fn protocol(p: Option<&str>) -> Option<u8> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(TCP),
        "UDP" => Some(UDP),
        "SCTP" => Some(SCTP),
        _ => None,
    }
}

/// Pods and namespace labels: everything selectors are evaluated against.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    pub pods: Vec<PodView>,
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
}

/// A Namespace's name and the labels selectors see (its own, plus
/// `kubernetes.io/metadata.name` if the object lacks it); `None` without a name.
pub fn namespace_labels(n: &Namespace) -> Option<(String, BTreeMap<String, String>)> {
    let name = n.metadata.name.clone()?;
    let mut labels = n.metadata.labels.clone().unwrap_or_default();
    // The API server sets it; a namespace object written before it did still
    // answers to it (NamespaceDefaultLabelName, GA in 1.22).
    labels
        .entry("kubernetes.io/metadata.name".into())
        .or_insert_with(|| name.clone());
    Some((name, labels))
}

/// The labels of a namespace with pods but no Namespace object: its name only.
pub(crate) fn implied_labels(ns: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("kubernetes.io/metadata.name".to_string(), ns.to_string())])
}

impl Cluster {
    pub fn new(pods: &[Pod], namespaces: &[Namespace]) -> Cluster {
        let namespaces = namespaces.iter().filter_map(namespace_labels).collect();
        Cluster {
            pods: pods.iter().filter_map(PodView::from_pod).collect(),
            namespaces,
        }
    }
}

/// A port clause, normalized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortMatch {
    /// A protocol's ports `first..=last` (a whole protocol is `0..=65535`).
    Numbers { proto: u8, first: u16, last: u16 },
    /// A container port name, resolved per destination pod.
    Named { proto: u8, name: String },
}

/// A peer clause, normalized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// Pods matching `pods` in the namespaces matching `namespaces` (`None`: the policy's
    /// own namespace).
    Pods {
        namespaces: Option<Selector>,
        pods: Selector,
    },
    /// `cidr` minus `except`.
    Block { cidr: Ipv4Net, except: Vec<Ipv4Net> },
}

/// One ingress or egress rule: `None` peers or ports mean "all".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub peers: Option<Vec<Peer>>,
    pub ports: Option<Vec<PortMatch>>,
}

/// A NetworkPolicy, normalized. `ingress`/`egress` are `None` when the policy does not
/// have that type, `Some(rules)` when it does (no rules: it isolates and allows nothing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub pods: Selector,
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
}

impl Policy {
    /// `ns/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn selects(&self, pod: &PodView) -> bool {
        pod.namespace == self.namespace && self.pods.matches(&pod.labels)
    }
}

/// Normalizes a NetworkPolicy. A policy with an unreadable rule comes back with no rules
/// (isolating, allowing nothing) and the problem; one whose pod selector is unreadable
/// comes back as `None`.
pub fn read_policy(np: &NetworkPolicy) -> (Option<Policy>, Option<Problem>) {
    let namespace = np
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = np.metadata.name.clone().unwrap_or_default();
    let problem = |message: String| Problem {
        object: format!("NetworkPolicy {namespace}/{name}"),
        message,
    };
    let Some(spec) = np.spec.as_ref() else {
        return (None, Some(problem("no spec".into())));
    };
    // An absent podSelector is the empty selector: every pod of the namespace.
    let pods = match spec
        .pod_selector
        .as_ref()
        .map(Selector::from_label_selector)
        .unwrap_or(Ok(Selector::default()))
    {
        Ok(s) => s,
        Err(e) => return (None, Some(problem(format!("podSelector: {e}")))),
    };
    let has_egress_rules = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
    let (ingress_type, egress_type) = match &spec.policy_types {
        Some(types) => (
            types.iter().any(|t| t == "Ingress"),
            types.iter().any(|t| t == "Egress"),
        ),
        None => (true, has_egress_rules),
    };
    let read = |rules: Option<&Vec<NetworkPolicyRule>>, dir: &str| -> Result<Vec<Rule>, String> {
        rules
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(i, r)| read_rule(r).map_err(|e| format!("{dir}[{i}]: {e}")))
            .collect()
    };
    let ingress_rules = spec.ingress.as_ref().map(|v| {
        v.iter()
            .map(|r| NetworkPolicyRule {
                peers: r.from.clone(),
                ports: r.ports.clone(),
            })
            .collect::<Vec<_>>()
    });
    let egress_rules = spec.egress.as_ref().map(|v| {
        v.iter()
            .map(|r| NetworkPolicyRule {
                peers: r.to.clone(),
                ports: r.ports.clone(),
            })
            .collect::<Vec<_>>()
    });
    let ingress = ingress_type.then(|| read(ingress_rules.as_ref(), "ingress"));
    let egress = egress_type.then(|| read(egress_rules.as_ref(), "egress"));
    let mut problems = Vec::new();
    let mut keep = |r: Option<Result<Vec<Rule>, String>>| match r {
        None => None,
        Some(Ok(rules)) => Some(rules),
        Some(Err(e)) => {
            problems.push(e);
            Some(Vec::new())
        }
    };
    let policy = Policy {
        namespace: namespace.clone(),
        name: name.clone(),
        pods,
        ingress: keep(ingress),
        egress: keep(egress),
    };
    let problem = (!problems.is_empty()).then(|| {
        problem(format!(
            "{}; its pods stay isolated and it allows nothing",
            problems.join("; ")
        ))
    });
    (Some(policy), problem)
}

/// The shape both rule directions share.
struct NetworkPolicyRule {
    peers: Option<Vec<NetworkPolicyPeer>>,
    ports: Option<Vec<NetworkPolicyPort>>,
}

fn read_rule(r: &NetworkPolicyRule) -> Result<Rule, String> {
    let peers = match r.peers.as_deref() {
        None | Some([]) => None,
        Some(list) => Some(
            list.iter()
                .enumerate()
                .map(|(i, p)| read_peer(p).map_err(|e| format!("peer {i}: {e}")))
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .flatten()
                .collect(),
        ),
    };
    let ports = match r.ports.as_deref() {
        None | Some([]) => None,
        Some(list) => Some(
            list.iter()
                .enumerate()
                .map(|(i, p)| read_port(p).map_err(|e| format!("ports[{i}]: {e}")))
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    Ok(Rule { peers, ports })
}

/// A peer; `None` for an IPv6 block (this table is IPv4).
fn read_peer(p: &NetworkPolicyPeer) -> Result<Option<Peer>, String> {
    if let Some(b) = &p.ip_block {
        if p.pod_selector.is_some() || p.namespace_selector.is_some() {
            return Err("ipBlock cannot be combined with selectors".into());
        }
        let cidr: ipnet::IpNet = b
            .cidr
            .parse()
            .map_err(|_| format!("ipBlock.cidr {:?} is not a CIDR", b.cidr))?;
        let ipnet::IpNet::V4(cidr) = cidr else {
            return Ok(None);
        };
        let mut except = Vec::new();
        for e in b.except.iter().flatten() {
            match e.parse::<ipnet::IpNet>() {
                Ok(ipnet::IpNet::V4(n)) if cidr.contains(&n) => except.push(n.trunc()),
                Ok(ipnet::IpNet::V4(_)) => {
                    return Err(format!("ipBlock.except {e:?} is not inside {cidr}"));
                }
                Ok(ipnet::IpNet::V6(_)) => {
                    return Err(format!("ipBlock.except {e:?} is not IPv4 like its cidr"));
                }
                Err(_) => return Err(format!("ipBlock.except {e:?} is not a CIDR")),
            }
        }
        return Ok(Some(Peer::Block {
            cidr: cidr.trunc(),
            except,
        }));
    }
    let sel = |s: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector| {
        Selector::from_label_selector(s).map_err(|e| e.to_string())
    };
    let namespaces = p.namespace_selector.as_ref().map(sel).transpose()?;
    let pods = p
        .pod_selector
        .as_ref()
        .map(sel)
        .transpose()?
        .unwrap_or_default();
    if namespaces.is_none() && p.pod_selector.is_none() {
        return Err("a peer needs podSelector, namespaceSelector or ipBlock".into());
    }
    Ok(Some(Peer::Pods { namespaces, pods }))
}

fn read_port(p: &NetworkPolicyPort) -> Result<PortMatch, String> {
    let proto = protocol(p.protocol.as_deref())
        .ok_or_else(|| format!("protocol {:?} is not TCP, UDP or SCTP", p.protocol))?;
    let in_range = |n: i32| u16::try_from(n).ok().filter(|n| *n > 0);
    match (&p.port, p.end_port) {
        (None, None) => Ok(PortMatch::Numbers {
            proto,
            first: 0,
            last: 65535,
        }),
        (None, Some(_)) => Err("endPort needs port".into()),
        (Some(IntOrString::String(_)), Some(_)) => Err("endPort needs a numeric port".into()),
        (Some(IntOrString::String(name)), None) => Ok(PortMatch::Named {
            proto,
            name: name.clone(),
        }),
        (Some(IntOrString::Int(n)), end) => {
            let first = in_range(*n).ok_or_else(|| format!("port {n} is not in 1-65535"))?;
            let last = match end {
                None => first,
                Some(e) => in_range(e)
                    .filter(|e| *e >= first)
                    .ok_or_else(|| format!("endPort {e} is not in {first}-65535"))?,
            };
            Ok(PortMatch::Numbers { proto, first, last })
        }
    }
}

/// Ports allowed: every protocol and port, or a normalized list of per-protocol ranges.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortSet {
    All,
    /// Sorted, non-overlapping, non-adjacent `(protocol, first, last)`.
    Ranges(Vec<(u8, u16, u16)>),
}

impl PortSet {
    pub fn ranges(mut v: Vec<(u8, u16, u16)>) -> PortSet {
        v.sort_unstable();
        let mut out: Vec<(u8, u16, u16)> = Vec::with_capacity(v.len());
        for (p, a, b) in v {
            match out.last_mut() {
                Some((lp, _, lb)) if *lp == p && u32::from(a) <= u32::from(*lb) + 1 => {
                    *lb = (*lb).max(b)
                }
                _ => out.push((p, a, b)),
            }
        }
        PortSet::Ranges(out)
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, PortSet::Ranges(v) if v.is_empty())
    }

    pub fn union(&self, other: &PortSet) -> PortSet {
        match (self, other) {
            (PortSet::All, _) | (_, PortSet::All) => PortSet::All,
            (PortSet::Ranges(a), PortSet::Ranges(b)) => {
                PortSet::ranges(a.iter().chain(b).copied().collect())
            }
        }
    }

    pub fn contains(&self, proto: u8, port: u16) -> bool {
        match self {
            PortSet::All => true,
            PortSet::Ranges(v) => v
                .iter()
                .any(|(p, a, b)| *p == proto && (*a..=*b).contains(&port)),
        }
    }
}

/// A run of addresses `first..=last` (as integers) allowed on `ports`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Segment {
    pub first: u32,
    pub last: u32,
    pub ports: PortSet,
}

/// What one isolated pod admits in one direction: disjoint, sorted segments (addresses
/// absent from every segment are refused).
pub type Allowed = Vec<Segment>;

/// Which policies isolate a pod in one direction, and what they allow together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Direction {
    /// `ns/name` of the policies (sorted).
    pub policies: Vec<String>,
    /// What `allowed` is computed from, hashed (stable across processes): the direction,
    /// the policies, and for ingress under a named port the pod's declared ports. Equal
    /// classes have equal allowances; the table has one class chain per class, so a change
    /// of what a class allows changes that chain's sets in place, never its name.
    pub class: u64,
    pub allowed: Allowed,
}

/// A local pod's verdict inputs: `None` for a direction it is not isolated in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodPolicy {
    pub pod: String,
    pub ip: Ipv4Addr,
    pub ingress: Option<Direction>,
    pub egress: Option<Direction>,
}

/// Reads every policy (problems reported, bad ones isolating without allowing).
pub fn read_policies(policies: &[NetworkPolicy]) -> (Vec<Policy>, Vec<Problem>) {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for np in policies {
        let (p, problem) = read_policy(np);
        out.extend(p);
        problems.extend(problem);
    }
    (out, problems)
}

/// The policy of every pod on `node` (every pod when `node` is `None`) that some policy
/// isolates, sorted by pod IP.
///
/// Cost: pods and policies are indexed by namespace once; each peer's pods are found once
/// (a namespace selector is evaluated per namespace, not per pod) and shared by every pod
/// the rule applies to; pods that get the same policies (and, for ingress, declare the
/// same container ports) share one computed [`Direction`].
pub fn plan_pods(policies: &[Policy], cluster: &Cluster, node: Option<&str>) -> Vec<PodPolicy> {
    let mut directions = Directions::new(
        policies,
        Index::new(cluster.pods.iter(), &cluster.namespaces),
    );
    let mut out: Vec<PodPolicy> = cluster
        .pods
        .iter()
        .filter(|p| node.is_none() || p.node.as_deref() == node)
        .filter_map(|pod| directions.pod_policy(pod))
        .collect();
    out.sort_by_key(|p| p.ip);
    out
}

/// Computes pods' [`PodPolicy`] against one state of the policies and the cluster; pods
/// with the same inputs share one computation (the planning step of [`plan_pods`] and of
/// the incremental [`crate::Planner`]).
pub(crate) struct Directions<'c> {
    by_ns: HashMap<&'c str, Vec<&'c Policy>>,
    index: Index<'c>,
    done: HashMap<DirectionKey<'c>, Option<Direction>>,
}

impl<'c> Directions<'c> {
    pub(crate) fn new(
        policies: impl IntoIterator<Item = &'c Policy>,
        index: Index<'c>,
    ) -> Directions<'c> {
        let mut by_ns: HashMap<&str, Vec<&Policy>> = HashMap::new();
        for p in policies {
            by_ns.entry(p.namespace.as_str()).or_default().push(p);
        }
        Directions {
            by_ns,
            index,
            done: HashMap::new(),
        }
    }

    /// What isolates `pod` and what it admits (`None`: isolated in no direction).
    pub(crate) fn pod_policy(&mut self, pod: &'c PodView) -> Option<PodPolicy> {
        let ingress = self.direction(pod, true);
        let egress = self.direction(pod, false);
        (ingress.is_some() || egress.is_some()).then(|| PodPolicy {
            pod: pod.key(),
            ip: pod.ip,
            ingress,
            egress,
        })
    }

    /// The index the directions are computed against.
    pub(crate) fn index(&self) -> &Index<'c> {
        &self.index
    }

    /// The policies selecting `pod` that have rules of this direction.
    pub(crate) fn selecting(&self, pod: &PodView, ingress: bool) -> Vec<&'c Policy> {
        self.by_ns
            .get(pod.namespace.as_str())
            .into_iter()
            .flatten()
            .copied()
            .filter(|p| p.selects(pod))
            .filter(|p| {
                if ingress {
                    p.ingress.is_some()
                } else {
                    p.egress.is_some()
                }
            })
            .collect()
    }

    fn direction(&mut self, pod: &'c PodView, ingress: bool) -> Option<Direction> {
        let selecting = self.selecting(pod, ingress);
        if selecting.is_empty() {
            return None;
        }
        // What a direction depends on: the policies, and for ingress the selected pod's
        // declared ports (named ports resolve against it); egress does not look at the pod.
        let key = DirectionKey {
            ingress,
            policies: selecting
                .iter()
                .map(|p| *p as *const Policy as usize)
                .collect(),
            ports: if ingress { &pod.ports } else { &[] },
        };
        let index = &self.index;
        self.done
            .entry(key)
            .or_insert_with(|| Some(compute_direction(&selecting, index, pod, ingress)))
            .clone()
    }
}

/// Identifies a computed direction: policies by address (they outlive the plan).
#[derive(PartialEq, Eq, Hash)]
struct DirectionKey<'c> {
    ingress: bool,
    policies: Vec<usize>,
    ports: &'c [(String, u8, u16)],
}

pub(crate) fn compute_direction(
    selecting: &[&Policy],
    index: &Index<'_>,
    pod: &PodView,
    ingress: bool,
) -> Direction {
    let mut table = PortTable::default();
    let mut runs: Vec<(u32, u32, u32)> = Vec::new();
    for policy in selecting {
        for rule in rules_of(policy, ingress) {
            rule_runs_into(
                policy,
                rule,
                index,
                pod,
                ingress,
                &mut |first, last, ports| runs.push((first, last, table.id(ports))),
            );
        }
    }
    let key = class_of(selecting, pod, ingress);
    Direction {
        policies: key.policies,
        class: key.hash,
        allowed: merge_interned(runs, &mut table),
    }
}

/// A policy's rules of one direction.
fn rules_of(policy: &Policy, ingress: bool) -> impl Iterator<Item = &Rule> {
    if ingress {
        &policy.ingress
    } else {
        &policy.egress
    }
    .iter()
    .flatten()
}

/// The inputs of a direction besides the cluster: its policies (sorted names) and, for
/// ingress under a named port, the selected pod's declared ports; `hash` is
/// [`Direction::class`].
pub(crate) struct ClassKey {
    pub(crate) policies: Vec<String>,
    pub(crate) ports: Vec<(String, u8, u16)>,
    pub(crate) hash: u64,
}

/// The [`ClassKey`] of the direction `selecting` make for `pod`.
pub(crate) fn class_of(selecting: &[&Policy], pod: &PodView, ingress: bool) -> ClassKey {
    let mut policies: Vec<String> = selecting.iter().map(|p| p.key()).collect();
    policies.sort();
    policies.dedup();
    // Named ports of ingress rules resolve against the selected pod; nothing else does.
    let named = ingress
        && selecting.iter().any(|p| {
            rules_of(p, true)
                .flat_map(|r| r.ports.iter().flatten())
                .any(|m| matches!(m, PortMatch::Named { .. }))
        });
    let ports = if named { pod.ports.clone() } else { Vec::new() };
    // The direction is in the class name's prefix (`in-`/`out-`).
    let hash = crate::render::stable_hash(&(&policies, &ports));
    ClassKey {
        policies,
        ports,
        hash,
    }
}

/// What `selecting` admit (as in [`compute_direction`]) at the one address `addr`: the
/// union of the ports of every rule covering it (`None`: nothing). The point update of an
/// allowance when a pod with that address appears, leaves or changes.
pub(crate) fn ports_at(
    selecting: &[&Policy],
    index: &Index<'_>,
    pod: &PodView,
    ingress: bool,
    addr: u32,
) -> Option<PortSet> {
    let mut acc: Option<PortSet> = None;
    let mut add = |p: PortSet| {
        if !p.is_empty() {
            acc = Some(match acc.take() {
                None => p,
                Some(q) => q.union(&p),
            });
        }
    };
    let at: Vec<&PodView> = index.pods_in(addr, addr).collect();
    for policy in selecting {
        for rule in rules_of(policy, ingress) {
            let ports = RulePorts::new(rule);
            let ingress_ports = if ingress {
                ports.for_pod(Some(pod))
            } else {
                PortSet::All
            };
            // Egress named ports resolve against each destination pod inside the peer.
            let per_destination = !ingress && !ports.named.is_empty();
            let block = |add: &mut dyn FnMut(PortSet)| {
                if ingress {
                    add(ingress_ports.clone());
                } else {
                    add(ports.for_pod(None));
                    if per_destination {
                        for d in &at {
                            add(ports.for_pod(Some(d)));
                        }
                    }
                }
            };
            match &rule.peers {
                None => block(&mut add),
                Some(peers) => {
                    for peer in peers {
                        match peer {
                            Peer::Pods { namespaces, pods } => {
                                for q in &at {
                                    if index.peer_matches(
                                        &policy.namespace,
                                        namespaces.as_ref(),
                                        pods,
                                        q,
                                    ) {
                                        add(if ingress {
                                            ingress_ports.clone()
                                        } else {
                                            ports.for_pod(Some(q))
                                        });
                                    }
                                }
                            }
                            Peer::Block { cidr, except } => {
                                let a = Ipv4Addr::from(addr);
                                if cidr.contains(&a) && !except.iter().any(|e| e.contains(&a)) {
                                    block(&mut add);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    acc
}

/// Sets what `allowed` admits at `addr` to `ports` (`None`: nothing), keeping it
/// canonical: sorted, disjoint, neighbours with equal ports joined — what [`merge`]
/// makes of the same address → ports function.
pub(crate) fn set_point(allowed: &mut Allowed, addr: u32, ports: Option<PortSet>) {
    let i = allowed.partition_point(|s| s.last < addr);
    // The segment holding `addr` (if any) and its neighbours: nothing further can join.
    let (lo, hi) = (i.saturating_sub(1), (i + 2).min(allowed.len()));
    let mut pieces: Vec<Segment> = Vec::with_capacity(5);
    for s in &allowed[lo..hi] {
        if s.first <= addr && addr <= s.last {
            if s.first < addr {
                pieces.push(Segment {
                    first: s.first,
                    last: addr - 1,
                    ports: s.ports.clone(),
                });
            }
            if s.last > addr {
                pieces.push(Segment {
                    first: addr + 1,
                    last: s.last,
                    ports: s.ports.clone(),
                });
            }
        } else {
            pieces.push(s.clone());
        }
    }
    if let Some(p) = ports.filter(|p| !p.is_empty()) {
        pieces.push(Segment {
            first: addr,
            last: addr,
            ports: p,
        });
    }
    pieces.sort_by_key(|s| s.first);
    let mut joined: Vec<Segment> = Vec::with_capacity(pieces.len());
    for s in pieces {
        match joined.last_mut() {
            Some(prev)
                if u64::from(prev.last) + 1 == u64::from(s.first) && prev.ports == s.ports =>
            {
                prev.last = s.last;
            }
            _ => joined.push(s),
        }
    }
    allowed.splice(lo..hi, joined);
}

/// Port sets of one computation, interned: runs carry ids, unions are memoized.
#[derive(Default)]
struct PortTable {
    sets: Vec<PortSet>,
    ids: HashMap<PortSet, u32>,
    unions: HashMap<(u32, u32), u32>,
    last: Option<u32>,
}

impl PortTable {
    fn id(&mut self, p: &PortSet) -> u32 {
        // Runs come in long stretches with one port set (a rule's peers): check the last first.
        if let Some(last) = self.last
            && self.sets[last as usize] == *p
        {
            return last;
        }
        let id = match self.ids.get(p) {
            Some(id) => *id,
            None => {
                let id = self.sets.len() as u32;
                self.sets.push(p.clone());
                self.ids.insert(p.clone(), id);
                id
            }
        };
        self.last = Some(id);
        id
    }

    fn union(&mut self, a: u32, b: u32) -> u32 {
        if a == b {
            return a;
        }
        let key = (a.min(b), a.max(b));
        if let Some(id) = self.unions.get(&key) {
            return *id;
        }
        let u = self.sets[a as usize].union(&self.sets[b as usize]);
        let id = self.id(&u);
        self.unions.insert(key, id);
        id
    }
}

/// [`merge`] over interned port sets (equal ids: equal sets); the same result.
fn merge_interned(mut runs: Vec<(u32, u32, u32)>, table: &mut PortTable) -> Allowed {
    if runs.is_empty() {
        return Vec::new();
    }
    let mut points: Vec<u64> = runs
        .iter()
        .flat_map(|r| [u64::from(r.0), u64::from(r.1) + 1])
        .collect();
    points.sort_unstable();
    points.dedup();
    runs.sort_unstable();
    let mut out: Vec<(u32, u32, u32)> = Vec::new();
    let mut active: Vec<usize> = Vec::new();
    let mut next_run = 0;
    for w in points.windows(2) {
        let (start, end) = (w[0], w[1] - 1);
        while next_run < runs.len() && u64::from(runs[next_run].0) <= start {
            active.push(next_run);
            next_run += 1;
        }
        active.retain(|i| u64::from(runs[*i].1) >= start);
        let mut ports: Option<u32> = None;
        for i in &active {
            let id = runs[*i].2;
            ports = Some(match ports {
                None => id,
                Some(p) => table.union(p, id),
            });
        }
        let Some(ports) = ports else { continue };
        match out.last_mut() {
            Some(prev) if u64::from(prev.1) + 1 == start && prev.2 == ports => {
                prev.1 = end as u32;
            }
            _ => out.push((start as u32, end as u32, ports)),
        }
    }
    out.into_iter()
        .map(|(first, last, id)| Segment {
            first,
            last,
            ports: table.sets[id as usize].clone(),
        })
        .collect()
}

/// The cluster's pods indexed for selector evaluation: by namespace, by address, and each
/// peer's matching pods once per plan.
pub(crate) struct Index<'a> {
    pods: Vec<&'a PodView>,
    /// Namespace labels by name.
    namespaces: &'a BTreeMap<String, BTreeMap<String, String>>,
    /// Pod indices per namespace (namespaces with pods only: others have no peers).
    by_ns: BTreeMap<&'a str, Vec<usize>>,
    /// (address, pod index), sorted.
    by_ip: Vec<(u32, usize)>,
    /// Labels of namespaces that have pods but no Namespace object.
    implied: HashMap<&'a str, BTreeMap<String, String>>,
    /// Pods matching a peer, keyed by the peer's address (policies outlive the index).
    peers: RefCell<HashMap<usize, Rc<[usize]>>>,
}

impl<'a> Index<'a> {
    pub(crate) fn new(
        pods: impl IntoIterator<Item = &'a PodView>,
        namespaces: &'a BTreeMap<String, BTreeMap<String, String>>,
    ) -> Index<'a> {
        let pods: Vec<&PodView> = pods.into_iter().collect();
        let mut by_ns: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        let mut implied = HashMap::new();
        for (i, p) in pods.iter().enumerate() {
            by_ns.entry(p.namespace.as_str()).or_default().push(i);
            if !namespaces.contains_key(&p.namespace) {
                implied
                    .entry(p.namespace.as_str())
                    .or_insert_with(|| implied_labels(&p.namespace));
            }
        }
        let mut by_ip: Vec<(u32, usize)> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| (u32::from(p.ip), i))
            .collect();
        by_ip.sort_unstable();
        Index {
            pods,
            namespaces,
            by_ns,
            by_ip,
            implied,
            peers: RefCell::new(HashMap::new()),
        }
    }

    fn namespace_labels(&self, ns: &str) -> &BTreeMap<String, String> {
        match self.namespaces.get(ns) {
            Some(l) => l,
            None => &self.implied[ns],
        }
    }

    /// Pods with addresses in `first..=last`.
    fn pods_in(&self, first: u32, last: u32) -> impl Iterator<Item = &'a PodView> + '_ {
        let from = self.by_ip.partition_point(|(a, _)| *a < first);
        self.by_ip[from..]
            .iter()
            .take_while(move |(a, _)| *a <= last)
            .map(|(_, i)| self.pods[*i])
    }

    /// Whether pod `q` is one of the pods a `Peer::Pods` of a policy in `policy_ns` matches.
    pub(crate) fn peer_matches(
        &self,
        policy_ns: &str,
        namespaces: Option<&Selector>,
        pods: &Selector,
        q: &PodView,
    ) -> bool {
        let ns_ok = match namespaces {
            None => q.namespace == policy_ns,
            Some(s) => s.matches(self.namespace_labels(&q.namespace)),
        };
        ns_ok && pods.matches(&q.labels)
    }

    /// The pods a `Peer::Pods` of a policy in `policy_ns` matches.
    fn peer_pods(
        &self,
        peer: &Peer,
        policy_ns: &str,
        namespaces: &Option<Selector>,
        pods: &Selector,
    ) -> Rc<[usize]> {
        let key = peer as *const Peer as usize;
        if let Some(found) = self.peers.borrow().get(&key) {
            return found.clone();
        }
        let in_ns = |ns: &str| -> Vec<usize> {
            self.by_ns
                .get(ns)
                .into_iter()
                .flatten()
                .copied()
                .filter(|i| pods.matches(&self.pods[*i].labels))
                .collect()
        };
        let found: Rc<[usize]> = match namespaces {
            None => in_ns(policy_ns).into(),
            Some(s) => self
                .by_ns
                .keys()
                .filter(|ns| s.matches(self.namespace_labels(ns)))
                .flat_map(|ns| in_ns(ns))
                .collect::<Vec<_>>()
                .into(),
        };
        self.peers.borrow_mut().insert(key, found.clone());
        found
    }
}

/// The (address run, ports) pairs one rule allows for `pod` (the selected pod).
pub(crate) fn rule_runs(
    policy: &Policy,
    rule: &Rule,
    index: &Index<'_>,
    pod: &PodView,
    ingress: bool,
) -> Vec<Segment> {
    let mut out = Vec::new();
    rule_runs_into(
        policy,
        rule,
        index,
        pod,
        ingress,
        &mut |first, last, ports| {
            out.push(Segment {
                first,
                last,
                ports: ports.clone(),
            })
        },
    );
    out
}

/// [`rule_runs`], each pair handed to `emit` (never with an empty port set).
fn rule_runs_into(
    policy: &Policy,
    rule: &Rule,
    index: &Index<'_>,
    pod: &PodView,
    ingress: bool,
    emit: &mut dyn FnMut(u32, u32, &PortSet),
) {
    let rule_ports = RulePorts::new(rule);
    // The ports on which the rule admits traffic to `dst` (None: a non-pod address).
    let ports_for = |dst: Option<&PodView>| rule_ports.for_pod(dst);
    let named = &rule_ports.named;
    let mut push = |first: u32, last: u32, ports: &PortSet| {
        if !ports.is_empty() {
            emit(first, last, ports);
        }
    };
    // Named ports of egress rules resolve against each destination pod inside the peer.
    let per_destination = !ingress && !named.is_empty();
    let blocks = |peer_first: u32, peer_last: u32, push: &mut dyn FnMut(u32, u32, &PortSet)| {
        push(peer_first, peer_last, &ports_for(None));
        if per_destination {
            for d in index.pods_in(peer_first, peer_last) {
                let a = u32::from(d.ip);
                push(a, a, &ports_for(Some(d)));
            }
        }
    };
    let ingress_ports = if ingress {
        ports_for(Some(pod))
    } else {
        PortSet::All
    };
    match &rule.peers {
        None => {
            if ingress {
                push(0, u32::MAX, &ingress_ports);
            } else {
                blocks(0, u32::MAX, &mut push);
            }
        }
        Some(peers) => {
            for peer in peers {
                match peer {
                    Peer::Pods { namespaces, pods } => {
                        if ingress && ingress_ports.is_empty() {
                            continue;
                        }
                        let found = index.peer_pods(peer, &policy.namespace, namespaces, pods);
                        for q in found.iter().map(|i| index.pods[*i]) {
                            let a = u32::from(q.ip);
                            if ingress {
                                push(a, a, &ingress_ports);
                            } else {
                                push(a, a, &ports_for(Some(q)));
                            }
                        }
                    }
                    Peer::Block { cidr, except } => {
                        for (first, last) in block_runs(*cidr, except) {
                            if ingress {
                                push(first, last, &ingress_ports);
                            } else {
                                blocks(first, last, &mut push);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A rule's port clauses, split: numbers apply everywhere, names per destination pod.
struct RulePorts<'r> {
    all: bool,
    numbers: Vec<(u8, u16, u16)>,
    named: Vec<(u8, &'r str)>,
}

impl<'r> RulePorts<'r> {
    fn new(rule: &'r Rule) -> RulePorts<'r> {
        let mut out = RulePorts {
            all: rule.ports.is_none(),
            numbers: Vec::new(),
            named: Vec::new(),
        };
        for p in rule.ports.iter().flatten() {
            match p {
                PortMatch::Numbers { proto, first, last } => {
                    out.numbers.push((*proto, *first, *last))
                }
                PortMatch::Named { proto, name } => out.named.push((*proto, name.as_str())),
            }
        }
        out
    }

    /// The ports on which the rule admits traffic to `dst` (None: a non-pod address).
    fn for_pod(&self, dst: Option<&PodView>) -> PortSet {
        if self.all {
            return PortSet::All;
        }
        let mut v = self.numbers.clone();
        if let Some(d) = dst {
            v.extend(
                self.named
                    .iter()
                    .filter_map(|(proto, name)| d.named_port(name, *proto).map(|n| (*proto, n, n))),
            );
        }
        PortSet::ranges(v)
    }
}

/// `cidr` minus `except`, as sorted disjoint address runs.
fn block_runs(cidr: Ipv4Net, except: &[Ipv4Net]) -> Vec<(u32, u32)> {
    let mut holes: Vec<(u32, u32)> = except
        .iter()
        .map(|e| (u32::from(e.network()), u32::from(e.broadcast())))
        .collect();
    holes.sort_unstable();
    let (mut next, last) = (
        u64::from(u32::from(cidr.network())),
        u64::from(u32::from(cidr.broadcast())),
    );
    let mut out = Vec::new();
    for (a, b) in holes {
        let (a, b) = (u64::from(a), u64::from(b));
        if a > next {
            out.push((next as u32, (a - 1) as u32));
        }
        next = next.max(b + 1);
    }
    if next <= last {
        out.push((next as u32, last as u32));
    }
    out
}

/// Overlapping runs → disjoint sorted segments, each with the union of the ports of the
/// runs covering it; neighbours with equal ports are joined.
pub fn merge(mut runs: Vec<Segment>) -> Allowed {
    if runs.is_empty() {
        return Vec::new();
    }
    // Breakpoints: every run start and every run end + 1.
    let mut points: Vec<u64> = runs
        .iter()
        .flat_map(|r| [u64::from(r.first), u64::from(r.last) + 1])
        .collect();
    points.sort_unstable();
    points.dedup();
    runs.sort_by_key(|r| r.first);
    let mut out: Vec<Segment> = Vec::new();
    let mut active: Vec<usize> = Vec::new();
    let mut next_run = 0;
    for w in points.windows(2) {
        let (start, end) = (w[0], w[1] - 1);
        while next_run < runs.len() && u64::from(runs[next_run].first) <= start {
            active.push(next_run);
            next_run += 1;
        }
        active.retain(|i| u64::from(runs[*i].last) >= start);
        let mut ports: Option<PortSet> = None;
        for i in &active {
            ports = Some(match ports {
                None => runs[*i].ports.clone(),
                Some(p) => p.union(&runs[*i].ports),
            });
        }
        let Some(ports) = ports else { continue };
        match out.last_mut() {
            Some(prev) if u64::from(prev.last) + 1 == start && prev.ports == ports => {
                prev.last = end as u32;
            }
            _ => out.push(Segment {
                first: start as u32,
                last: end as u32,
                ports,
            }),
        }
    }
    out
}

/// Whether `allowed` admits `addr` on `proto`/`port`.
pub fn admits(allowed: &Allowed, addr: Ipv4Addr, proto: u8, port: u16) -> bool {
    let a = u32::from(addr);
    allowed
        .iter()
        .any(|s| (s.first..=s.last).contains(&a) && s.ports.contains(proto, port))
}
