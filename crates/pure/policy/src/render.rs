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
//!   chain in-H         ip saddr vmap @in-H-peers; goto refuse
//!   map in-H-peers     address ranges → return (any port) | goto ports-K   (interval map)
//!   chain ports-K      meta l4proto . th dport @ports-K return; goto refuse
//!   set ports-K        protocol . port ranges                               (interval set)
//!   chain refuse       counter; tcp → reset; else icmp admin-prohibited
//! ```
//!
//! Per packet of a new connection: two hash lookups (source pod, destination pod), one
//! interval lookup in the class's peer map, and for port-restricted peers one lookup in a
//! small port set — the same work with 1 policy or 1000, 10 pods or 10k. Established and
//! related packets (replies of allowed connections) stop at the first rule.
//!
//! Pods with the same allowances share one class chain `in-H`/`out-H` (H: a hash of what
//! they allow), and equal port sets share `ports-K`: a cluster of many pods under a few
//! policies makes few chains, and names stay stable across syncs (a change touches only the
//! classes it changes). Traffic from the node itself to its pods goes through `output`,
//! which this table leaves alone: kubelet probes always pass, as upstream expects. Service
//! traffic is judged after DNAT (prerouting), so against the pod it lands on.
//!
//! Against Calico (a chain per policy and per profile, ipsets for selectors: rule count
//! per packet grows with the policies selecting a pod) and kube-router (the same shape on
//! iptables): the number of rules a packet traverses here is constant; the size lives in
//! set elements. Refusals reject (TCP reset, ICMP admin-prohibited) rather than drop, so a
//! client learns at once — Cilium and Calico drop by default.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use podnet_nft::{
    BaseChain, Chain, ChainKind, CmpOp, Element, Expr, Family, Hook, Policy, Reject, Rule, Set,
    SetData, Stmt, Table, Type, Value, Verdict, ct_state,
};

use crate::model::{Allowed, PodPolicy, PortSet};

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

    /// The peer map of a class chain.
    pub fn peers(class: &str) -> String {
        format!("{class}-peers")
    }

    /// The chain and set of one port set.
    pub fn ports(hash: u64) -> String {
        format!("ports-{hash:016x}")
    }
}

/// FNV-1a over the `Debug` text of `v`: a hash that is the same in every process and
/// release (names must be stable). The text is fed to the hash as it is formatted, never
/// held (this runs once per distinct allowance and port set per sync).
fn stable_hash(v: &impl std::fmt::Debug) -> u64 {
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
pub fn render(pods: &[PodPolicy]) -> Table {
    let mut t = Table::new(Family::Ip, TABLE);
    let filter = |hook| BaseChain {
        kind: ChainKind::Filter,
        hook,
        priority: 0,
        policy: Policy::Accept,
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
    let vmap = |key: Expr, map: &str| {
        Rule::new(vec![Stmt::Vmap {
            keys: vec![key],
            map: map.into(),
        }])
    };
    let mut classes: BTreeMap<String, (bool, &Allowed)> = BTreeMap::new();
    // Each distinct allowance is named (hashed) once, however many pods share it.
    let mut named: [HashMap<&Allowed, String>; 2] = [HashMap::new(), HashMap::new()];
    let mut pod_maps: [Vec<Element>; 2] = [Vec::new(), Vec::new()];
    for p in pods {
        for (i, dir) in [(0, &p.ingress), (1, &p.egress)] {
            let Some(d) = dir else { continue };
            let ingress = i == 0;
            let name = named[i]
                .entry(&d.allowed)
                .or_insert_with(|| {
                    let name = names::class(ingress, stable_hash(&d.allowed));
                    classes.insert(name.clone(), (ingress, &d.allowed));
                    name
                })
                .clone();
            pod_maps[i].push(Element::verdict(
                vec![Value::Ipv4(p.ip)],
                Verdict::Jump(name),
            ));
        }
    }
    let pods_map = |name: &str, elems: Vec<Element>| {
        (
            Set::map(name, vec![Type::Ipv4Addr], SetData::Verdict),
            elems,
        )
    };
    let [ingress_elems, egress_elems] = pod_maps;
    t.sets.push(pods_map(names::INGRESS_PODS, ingress_elems));
    t.sets.push(pods_map(names::EGRESS_PODS, egress_elems));
    t.chains.push((
        Chain::base(names::FORWARD, filter(Hook::Forward)),
        vec![
            established(),
            vmap(Expr::IpSaddr, names::EGRESS_PODS),
            vmap(Expr::IpDaddr, names::INGRESS_PODS),
        ],
    ));
    t.chains.push((
        Chain::base(names::INPUT, filter(Hook::Input)),
        vec![established(), vmap(Expr::IpSaddr, names::EGRESS_PODS)],
    ));
    t.chains.push((
        Chain::regular(names::REFUSE),
        vec![
            Rule::new(vec![
                Stmt::Counter,
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
    let refuse = || Rule::new(vec![Stmt::Verdict(Verdict::Goto(names::REFUSE.into()))]);
    let mut port_sets: BTreeMap<String, Vec<(u8, u16, u16)>> = BTreeMap::new();
    let mut port_names: HashMap<&Vec<(u8, u16, u16)>, String> = HashMap::new();
    for (class, (ingress, allowed)) in classes {
        let peers = names::peers(&class);
        let mut elems = Vec::new();
        for seg in allowed {
            let verdict = match &seg.ports {
                PortSet::All => Verdict::Return,
                PortSet::Ranges(r) => {
                    let name = port_names
                        .entry(r)
                        .or_insert_with(|| {
                            let name = names::ports(stable_hash(r));
                            port_sets.insert(name.clone(), r.clone());
                            name
                        })
                        .clone();
                    Verdict::Goto(name)
                }
            };
            for (a, len) in prefixes(seg.first, seg.last) {
                elems.push(Element::verdict(
                    vec![Value::Ipv4Prefix(a, len)],
                    verdict.clone(),
                ));
            }
        }
        let mut map = Set::map(&peers, vec![Type::Ipv4Addr], SetData::Verdict);
        map.flags.interval = true;
        t.sets.push((map, elems));
        let key = if ingress {
            Expr::IpSaddr
        } else {
            Expr::IpDaddr
        };
        t.chains
            .push((Chain::regular(class), vec![vmap(key, &peers), refuse()]));
    }
    for (name, ranges) in port_sets {
        let mut set = Set::new(&name, vec![Type::InetProto, Type::InetService]);
        set.flags.interval = true;
        let elems = ranges
            .iter()
            // A concatenated interval set: every element carries its range end.
            .map(|(p, a, b)| Element::key(vec![Value::Proto(*p), Value::PortRange(*a, *b)]))
            .collect();
        t.sets.push((set, elems));
        t.chains.push((
            Chain::regular(&name),
            vec![
                Rule::new(vec![
                    Stmt::InSet {
                        keys: vec![Expr::MetaL4Proto, Expr::ThDport],
                        set: name.clone(),
                        negate: false,
                    },
                    Stmt::Verdict(Verdict::Return),
                ]),
                refuse(),
            ],
        ));
    }
    t
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
