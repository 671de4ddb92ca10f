//! Pure: a node's policy plan → the `ip podnet-policy` table.
//!
//! ```text
//! table ip podnet-policy
//!   map ingress-pods   pod IP → jump in-H       (isolated local pods only)
//!   map egress-pods    pod IP → jump out-H
//!   chain forward      filter hook forward:  ct established,related accept;
//!                      ip saddr vmap @egress-pods; ip daddr vmap @ingress-pods
//!   chain input        filter hook input:    ct established,related accept;
//!                      ip saddr vmap @egress-pods          (pods → their own node)
//!                      (both only while some local pod is isolated: see below)
//!   chain in-H         ip saddr @in-H-any return;
//!                      ip saddr @in-H-K meta l4proto . th dport @ports-K return;  (per K)
//!                      (and the same for `…-ranges` sets); goto refuse
//!   set in-H-any       addresses allowed on every port and protocol     (hash set)
//!   set in-H-any-ranges  address ranges allowed so                       (interval set)
//!   set in-H-K         addresses allowed on the ports of port set K     (hash set)
//!   set in-H-K-ranges  address ranges allowed so                         (interval set)
//!   set ports-K        protocol . port ranges (shared by every class using K)
//!   (a class has only the sets it has addresses for, and one rule per set)
//!   chain refuse       counter; Service (ct status dnat) or not tcp → icmp admin-prohibited;
//!                      tcp → reset
//! ```
//! (`out-H` the same with `ip daddr`.)
//!
//! The two base chains exist only while one of the pod maps has an element: a node none
//! of whose pods is isolated passes no packet through this table (every base chain is
//! one more hook call and rule walk for every packet the node forwards — the established
//! packets of every flow included — and the node pays it for a feature not in use). The
//! transaction that isolates the node's first pod adds them, with the pod's element; the
//! one that releases its last pod deletes them. The sets, the maps and `refuse` stay.
//!
//! Per packet of a new connection: two hash lookups (source pod, destination pod), then in
//! the class chain one lookup per address set: for any port, and per distinct port set
//! the class uses (usually one to three; a match costs one more lookup in a small port
//! set); pod peers are single addresses, in hash sets — ranges (`ipBlock`s) in interval
//! sets —
//! the same with 10 pods or 10k, and with 1 policy or 1000 unless they name that many
//! different port lists for one pod. Established and related packets (replies of allowed
//! connections) stop at the first rule.
//!
//! Pods with the same inputs — the same selecting policies, and for ingress under a named
//! port the same declared ports — share one class chain `in-H`/`out-H` (H: a hash of those
//! inputs, `Direction::class`): a cluster of many pods under a few policies makes few
//! chains, and a class keeps its name when what it allows changes (a peer pod
//! relabelled, a policy's rule edited): the change is a few elements of its sets, not a
//! new chain (until 2026-11-30 classes were named by what they allow and shared across
//! namespaces: fewer elements, but any change renamed and rebuilt every class it
//! touched). Traffic from the node itself to its pods goes through `output`, which this
//! table leaves alone: kubelet probes always pass, as upstream expects. Service traffic is
//! judged after DNAT (prerouting), so against the pod it lands on.
//!
//! Why no verdict map below the pod maps (until 2026-11-30 a class had an interval
//! verdict map `in-H-peers`, address → `return` | `goto ports-K`, with port chains): a
//! transaction that adds a `jump`/`goto` element or a rule with a lookup makes the kernel
//! validate the whole table at commit (`nft_table_validate`, kernel 6.18: from each base
//! chain, every element of every verdict map it reaches, recursively, nothing memoized),
//! so a peer verdict map was walked once per pod jumping to its class — with 1000 local
//! pods, ~15 ms of kernel time for any change that moved a pod (perf on
//! `benches/policy_scale.rs`: half of the run in `nft_rbtree_do_walk` under
//! `nft_lookup_validate`). Plain sets are not walked: a commit validates a few rules per
//! pod element. And why addresses are not in a concatenated `address . protocol . port`
//! set (one lookup per class): nf_tables' pipapo sets remove an element in time linear in
//! the set (`nft_pipapo_remove`), so a class losing 400 peers took seconds to update;
//! the interval (rbtree) address sets here remove in logarithmic time.
//!
//! Against Calico (a chain per policy and per profile, ipsets for selectors: rule count
//! per packet grows with the policies selecting a pod) and kube-router (the same shape on
//! iptables): the number of rules a packet traverses here does not grow with the
//! policies or the pods; the size lives in set elements. Refusals reject (TCP reset, ICMP admin-prohibited) rather than drop, so a
//! client learns at once — Cilium and Calico drop by default. (ICMP errors are
//! rate-limited by the kernel per client, `net.ipv4.icmp_ratelimit`: a burst of 6, then 1
//! a second; past that a refusal by ICMP is silent. Resets are not limited.)

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use podnet_nft::{
    BaseChain, Chain, ChainKind, CmpOp, Element, Expr, Family, Hook, Policy, Reject, Rule, Set,
    SetData, Stmt, Table, Type, Value, Verdict, ct_state, ct_status,
};

use crate::model::{Allowed, PodPolicy, PortSet, Segment};

pub const TABLE: &str = "podnet-policy";

/// Chain, set and map names of the policy table.
pub mod names {
    pub const FORWARD: &str = "forward";
    pub const INPUT: &str = "input";
    pub const REFUSE: &str = "refuse";
    pub const INGRESS_PODS: &str = "ingress-pods";
    pub const EGRESS_PODS: &str = "egress-pods";

    /// The class chain of pods allowing the same sources (`in-H`) or destinations (`out-H`).
    pub fn class(ingress: bool, hash: u64) -> String {
        format!("{}-{hash:016x}", if ingress { "in" } else { "out" })
    }

    /// A class's addresses allowed on every port.
    pub fn any(class: &str) -> String {
        format!("{class}-any")
    }

    /// A class's addresses allowed on the port set `ports` (its hash).
    pub fn peers(class: &str, ports: u64) -> String {
        format!("{class}-{ports:016x}")
    }

    /// A port set (protocol . port ranges), named by its hash.
    pub fn ports(hash: u64) -> String {
        format!("ports-{hash:016x}")
    }
}

/// FNV-1a over the `Debug` text of `v`: a hash that is the same in every process and
/// release (names must be stable). The text is fed to the hash as it is formatted, never
/// held.
pub(crate) fn stable_hash(v: &impl std::fmt::Debug) -> u64 {
    struct Fnv(u64);
    impl std::fmt::Write for Fnv {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0 = s.bytes().fold(self.0, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
            Ok(())
        }
    }
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    let _ = std::fmt::Write::write_fmt(&mut h, format_args!("{v:?}"));
    h.0
}

/// The node's policy table.
pub fn render<'p>(pods: &'p [PodPolicy]) -> Table {
    let mut classes: BTreeMap<String, (bool, &'p Allowed)> = BTreeMap::new();
    let mut pod_maps: [Vec<Element>; 2] = [Vec::new(), Vec::new()];
    for p in pods {
        for (i, dir) in [(0, &p.ingress), (1, &p.egress)] {
            let Some(d) = dir else { continue };
            let ingress = i == 0;
            let name = names::class(ingress, d.class);
            classes.entry(name.clone()).or_insert((ingress, &d.allowed));
            pod_maps[i].push(pod_element(p.ip, name));
        }
    }
    // Each distinct port set is hashed once.
    let mut hashes: HashMap<&'p [(u8, u16, u16)], u64> = HashMap::new();
    let mut port_sets: BTreeMap<u64, &'p [(u8, u16, u16)]> = BTreeMap::new();
    let mut hash = |r: &'p [(u8, u16, u16)]| -> u64 {
        *hashes.entry(r).or_insert_with(|| {
            let h = ports_hash(r);
            port_sets.insert(h, r);
            h
        })
    };
    let classes: Vec<Part> = classes
        .into_iter()
        .map(|(name, (ingress, allowed))| render_class(&name, ingress, allowed, &mut hash))
        .collect();
    let [ingress_elems, egress_elems] = pod_maps;
    assemble(
        ingress_elems,
        egress_elems,
        classes,
        port_sets.into_iter().map(|(h, r)| render_ports(h, r)),
    )
}

/// A class: its sets (with elements; whether for every port) and its chain (with rules).
pub(crate) type Part = (Vec<(bool, (Set, Vec<Element>))>, (Chain, Vec<Rule>));

/// The table from its pod map elements, its classes (in name order) and its port sets (in
/// name order).
pub(crate) fn assemble(
    ingress_elems: Vec<Element>,
    egress_elems: Vec<Element>,
    classes: impl IntoIterator<Item = Part>,
    ports: impl IntoIterator<Item = (Set, Vec<Element>)>,
) -> Table {
    let mut t = Table::new(Family::Ip, TABLE);
    let guarded = !ingress_elems.is_empty() || !egress_elems.is_empty();
    t.sets.push((pods_map(names::INGRESS_PODS), ingress_elems));
    t.sets.push((pods_map(names::EGRESS_PODS), egress_elems));
    if guarded {
        t.chains.extend(base_chains());
    }
    t.chains.push((
        Chain::regular(names::REFUSE),
        vec![
            // A connection to a Service (DNAT in prerouting) is refused with ICMP, not a
            // reset: for a packet that came in through the node's bridge (br_netfilter),
            // nf_reject_ipv4 sends the reset straight out of the bridge port
            // (`dev_queue_xmit`), past the NAT hooks, so it carries the pod's address
            // instead of the Service's and the client ignores it until it times out. The
            // ICMP error goes through the output path and is translated. Kernel 6.18,
            // confirmed in the lab: a pod's SYN to a Service whose same-node pod refuses it
            // got its reset from the pod IP (timed out); with this rule, EHOSTUNREACH at
            // once. (Across nodes the reset was fine: the client's node un-NATs it.)
            Rule::new(vec![
                Stmt::Counter,
                Stmt::MatchBits {
                    expr: Expr::CtStatus,
                    mask: ct_status::DNAT,
                    op: CmpOp::Ne,
                    value: 0,
                },
                Stmt::Reject(Reject::IcmpAdminProhibited),
            ]),
            Rule::new(vec![
                Stmt::Match {
                    expr: Expr::MetaL4Proto,
                    op: CmpOp::Eq,
                    value: Value::TCP,
                },
                Stmt::Reject(Reject::TcpReset),
            ]),
            Rule::new(vec![Stmt::Reject(Reject::IcmpAdminProhibited)]),
        ],
    ));
    // Sets by kind, each kind in name order: the classes' sets for every port, their
    // port-set address sets, then the port sets.
    let mut peers = Vec::new();
    for (sets, chain) in classes {
        for (any, set) in sets {
            if any {
                t.sets.push(set);
            } else {
                peers.push(set);
            }
        }
        t.chains.push(chain);
    }
    t.sets.extend(peers);
    t.sets.extend(ports);
    t
}

/// The base chains `forward` and `input` with their rules: present while some local pod
/// is isolated (see the module doc).
pub(crate) fn base_chains() -> [(Chain, Vec<Rule>); 2] {
    let filter = |hook| BaseChain {
        kind: ChainKind::Filter,
        hook,
        priority: 0,
        policy: Policy::Accept,
        device: None,
    };
    let established = || {
        Rule::new(vec![
            Stmt::MatchBits {
                expr: Expr::CtState,
                mask: ct_state::ESTABLISHED | ct_state::RELATED,
                op: CmpOp::Ne,
                value: 0,
            },
            Stmt::Verdict(Verdict::Accept),
        ])
    };
    [
        (
            Chain::base(names::FORWARD, filter(Hook::Forward)),
            vec![
                established(),
                vmap(Expr::IpSaddr, names::EGRESS_PODS),
                vmap(Expr::IpDaddr, names::INGRESS_PODS),
            ],
        ),
        (
            Chain::base(names::INPUT, filter(Hook::Input)),
            vec![established(), vmap(Expr::IpSaddr, names::EGRESS_PODS)],
        ),
    ]
}

fn pods_map(name: &str) -> Set {
    Set::map(name, vec![Type::Ipv4Addr], SetData::Verdict)
}

fn vmap(key: Expr, map: &str) -> Rule {
    Rule::new(vec![Stmt::Vmap {
        keys: vec![key],
        map: map.into(),
    }])
}

fn refuse() -> Rule {
    Rule::new(vec![Stmt::Verdict(Verdict::Goto(names::REFUSE.into()))])
}

/// An element of `ingress-pods` / `egress-pods`: `ip : jump class`.
pub(crate) fn pod_element(ip: Ipv4Addr, class: String) -> Element {
    Element::verdict(vec![Value::Ipv4(ip)], Verdict::Jump(class))
}

/// The hash naming a port set (`ports-K`, `{class}-K`).
pub(crate) fn ports_hash(ranges: &[(u8, u16, u16)]) -> u64 {
    stable_hash(&ranges)
}

/// One of a class's address sets: for every port (`ports: None`) or for port set K, of
/// single addresses (a hash set: one kernel element each, inserted and found in constant
/// time) or of address ranges (an interval set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct SetId {
    pub(crate) ports: Option<u64>,
    pub(crate) ranges: bool,
}

impl SetId {
    /// The set `seg` belongs to (`hash` names port sets).
    pub(crate) fn of<'a>(
        seg: &'a Segment,
        hash: &mut impl FnMut(&'a [(u8, u16, u16)]) -> u64,
    ) -> SetId {
        SetId {
            ports: match &seg.ports {
                PortSet::All => None,
                PortSet::Ranges(r) => Some(hash(r)),
            },
            ranges: seg.first != seg.last,
        }
    }

    pub(crate) fn name(&self, class: &str) -> String {
        let base = match self.ports {
            None => names::any(class),
            Some(k) => names::peers(class, k),
        };
        if self.ranges {
            format!("{base}-ranges")
        } else {
            base
        }
    }

    pub(crate) fn set(&self, class: &str) -> Set {
        let mut set = Set::new(self.name(class), vec![Type::Ipv4Addr]);
        set.flags.interval = self.ranges;
        set
    }
}

/// A class's sets and chain: per [`SetId`] it has segments of, a set named
/// `{class}-any` / `{class}-K` (single addresses allowed on every port / on port set K) or
/// `…-ranges` (address ranges), and
/// ```text
/// chain in-H
///   ip saddr @in-H-any return                                      (any port)
///   ip saddr @in-H-K meta l4proto . th dport @ports-K return       (port set K)
///   …one rule per set, in SetId order
///   goto refuse
/// ```
/// (`ip daddr` for an egress class `out-H`); `hash` names port sets. Each set comes with
/// whether it is for every port (those are listed first in the table).
pub(crate) fn render_class<'a>(
    class: &str,
    ingress: bool,
    allowed: &'a Allowed,
    hash: &mut impl FnMut(&'a [(u8, u16, u16)]) -> u64,
) -> Part {
    let mut ids: BTreeMap<SetId, Vec<&'a Segment>> = BTreeMap::new();
    for seg in allowed {
        ids.entry(SetId::of(seg, hash)).or_default().push(seg);
    }
    let sets = ids
        .iter()
        .map(|(id, segs)| {
            let mut elems = Vec::with_capacity(segs.len());
            for seg in segs {
                push_elements(seg, &mut elems);
            }
            (id.ports.is_none(), (id.set(class), elems))
        })
        .collect();
    let ids: Vec<SetId> = ids.into_keys().collect();
    (
        sets,
        (Chain::regular(class), class_rules(class, ingress, &ids)),
    )
}

/// The rules of a class chain with the address sets `ids` (sorted).
pub(crate) fn class_rules(class: &str, ingress: bool, ids: &[SetId]) -> Vec<Rule> {
    let addr = if ingress {
        Expr::IpSaddr
    } else {
        Expr::IpDaddr
    };
    let lookup = |keys: Vec<Expr>, set: String| Stmt::InSet {
        keys,
        set,
        negate: false,
    };
    let mut rules: Vec<Rule> = ids
        .iter()
        .map(|id| {
            let mut stmts = vec![lookup(vec![addr], id.name(class))];
            if let Some(k) = id.ports {
                stmts.push(lookup(
                    vec![Expr::MetaL4Proto, Expr::ThDport],
                    names::ports(k),
                ));
            }
            stmts.push(Stmt::Verdict(Verdict::Return));
            Rule::new(stmts)
        })
        .collect();
    rules.push(refuse());
    rules
}

/// The elements `segments` put in a class's sets, by set name.
pub(crate) fn class_elements<'a>(
    class: &str,
    segments: impl IntoIterator<Item = &'a Segment>,
    hash: &mut impl FnMut(&'a [(u8, u16, u16)]) -> u64,
) -> BTreeMap<String, Vec<Element>> {
    // Named once per set, not per segment (a first sync has 200k segments).
    let mut out: BTreeMap<SetId, Vec<Element>> = BTreeMap::new();
    for seg in segments {
        push_elements(seg, out.entry(SetId::of(seg, hash)).or_default());
    }
    out.into_iter()
        .map(|(id, elems)| (id.name(class), elems))
        .collect()
}

/// The element of one segment: its address (a hash set's element) or its range (an
/// interval set's). One range, not its prefixes: the kernel holds an interval as two
/// elements (start, and end + 1) whatever its prefixes, and the ranges between peer pods
/// inside an `ipBlock` span several prefixes each (the bench's 1000 policies: 40k ranges,
/// 61k prefixes; until 2026-11-30 a range was written as its prefixes).
fn push_elements(seg: &Segment, elems: &mut Vec<Element>) {
    elems.push(Element::key(vec![if seg.first != seg.last {
        Value::Ipv4Range(Ipv4Addr::from(seg.first), Ipv4Addr::from(seg.last))
    } else {
        Value::Ipv4(Ipv4Addr::from(seg.first))
    }]));
}

/// `set ports-K`: protocol . port ranges (a concatenated interval set: every element
/// carries its range end).
pub(crate) fn render_ports(hash: u64, ranges: &[(u8, u16, u16)]) -> (Set, Vec<Element>) {
    let mut set = Set::new(names::ports(hash), vec![Type::InetProto, Type::InetService]);
    set.flags.interval = true;
    let elems = ranges
        .iter()
        .map(|(p, a, b)| Element::key(vec![Value::Proto(*p), Value::PortRange(*a, *b)]))
        .collect();
    (set, elems)
}

/// The fewest CIDR prefixes covering `first..=last` exactly.
pub fn prefixes(first: u32, last: u32) -> Vec<(Ipv4Addr, u8)> {
    let mut out = Vec::new();
    let (mut a, end) = (u64::from(first), u64::from(last));
    while a <= end {
        // The largest block aligned at `a` that fits.
        let mut size = if a == 0 {
            1u64 << 32
        } else {
            1u64 << a.trailing_zeros().min(32)
        };
        while a + size - 1 > end {
            size >>= 1;
        }
        out.push((Ipv4Addr::from(a as u32), (32 - size.trailing_zeros()) as u8));
        a += size;
    }
    out
}

/// Pods with a verdict chain, by direction (for dumps and tests).
pub fn isolated(pods: &[PodPolicy]) -> (BTreeSet<Ipv4Addr>, BTreeSet<Ipv4Addr>) {
    let pick = |f: fn(&PodPolicy) -> bool| pods.iter().filter(|p| f(p)).map(|p| p.ip).collect();
    (pick(|p| p.ingress.is_some()), pick(|p| p.egress.is_some()))
}
