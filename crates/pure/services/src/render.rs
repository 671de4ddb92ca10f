//! Pure: service ports → the nf_tables objects of podnet's Services table. Invariant: every
//! name comes from [`names`], and a port's objects are a function of the port, its endpoint
//! index ranges and the [`ProxyConfig`] only.
//!
//! The table is a contract (documented in docs/architecture.md); its fixed part:
//!
//! ```text
//! table ip podnet-services {
//!   map service-ips           ipv4_addr . inet_proto . inet_service : verdict  # VIP:port → picker
//!   map service-nodeports     inet_proto . inet_service : verdict              # node port → ext chain
//!   map no-endpoint-ips       (as service-ips)   → goto reject-service | drop
//!   map no-endpoint-nodeports (as service-nodeports)
//!   map endpoints-K           typeof numgen random mod 1 : ip daddr . th dport # index → endpoint
//!   map endpoint-chains-K     typeof numgen random mod 1 : verdict             # index → ep chain (affinity)
//!                             (K = index / 1024: one map per window, see names::endpoints_map)
//!   set hairpin               ipv4_addr . ipv4_addr                            # local endpoint, twice
//!   chain filter-prerouting / filter-output  (filter, dstnat - 10): ct state new → no-endpoints
//!   chain no-endpoints    ip daddr . meta l4proto . th dport vmap @no-endpoint-ips
//!                         fib daddr type local meta l4proto . th dport vmap @no-endpoint-nodeports
//!   chain reject-service  meta l4proto tcp reject with tcp reset; reject (icmp port unreachable)
//!   chain nat-prerouting / nat-output  (nat, dstnat): jump services
//!   chain services        [ip daddr SERVICE-CIDR ip saddr != CLUSTER-CIDR meta mark |= 0x4000]
//!                         ip daddr . meta l4proto . th dport vmap @service-ips
//!                         fib daddr type local meta l4proto . th dport vmap @service-nodeports
//!   chain nat-postrouting (nat, srcnat): jump masquerading
//!   chain masquerading    ct status dnat meta mark & 0x4000 == 0x4000 masquerade fully-random
//!                         ct status dnat ip saddr . ip daddr @hairpin masquerade fully-random
//! }
//! ```
//!
//! Per service port `X` (`ns/name/proto[/port]`):
//! - `svc-X` picks among the cluster endpoints, `local-X` among this node's:
//!   `meta l4proto P dnat ip addr . port to numgen random mod N offset BASE map @endpoints-K`;
//! - with ClientIP affinity, instead: one `ip saddr @aff-X/IP/PORT goto ep-X/IP/PORT` per
//!   endpoint, then `numgen random mod N offset BASE vmap @endpoint-chains-K`; each
//!   `ep-X/IP/PORT` chain does `update @aff-X/IP/PORT { ip saddr }` and DNATs to the endpoint
//!   (kube-proxy's shape, used only for affinity ports);
//! - `ext-X` (node port, external and load-balancer IPs): Cluster policy marks for
//!   masquerade and goes to `svc-X`; Local policy sends pod traffic (cluster CIDR) to
//!   `svc-X`, the rest to `local-X` (or drops it when the node has no endpoint), keeping the
//!   client's source IP.
//!
//! The only per-packet work that grows with the cluster is hash lookups: one in
//! `service-ips` (or `service-nodeports`), one in `endpoints`.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use podnet_nft::{
    AddrType, BaseChain, Chain, ChainKind, CmpOp, Element, Expr, Family, Hook, KeyDecl, Policy,
    Reject, Rule, Set, SetData, SetFlags, Stmt, Table, Type, Value, Verdict, ct_state, ct_status,
};

use crate::model::{Endpoint, PortName, ServicePort};

/// The table podnet's proxy owns (and no other).
pub const TABLE: &str = "podnet-services";
pub const FAMILY: Family = Family::Ip;
/// The packet mark bit that asks `masquerading` to SNAT a service connection (the bit
/// kube-proxy uses too).
pub const MASQ_MARK: u32 = 0x4000;

/// Every name in the table comes from here.
pub mod names {
    use super::*;

    pub const SERVICE_IPS: &str = "service-ips";
    pub const SERVICE_NODEPORTS: &str = "service-nodeports";
    pub const NO_ENDPOINT_IPS: &str = "no-endpoint-ips";
    pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
    /// Endpoint indexes per map (see [`endpoints_map`]).
    pub const SHARD_WINDOW: u32 = 1024;
    pub const HAIRPIN: &str = "hairpin";
    pub const NO_ENDPOINTS: &str = "no-endpoints";
    pub const REJECT: &str = "reject-service";
    pub const SERVICES: &str = "services";
    pub const MASQUERADING: &str = "masquerading";

    /// The `endpoints` map holding index `base`: one map per [`SHARD_WINDOW`] indexes.
    /// Every rule that looks a map up binds it, and the kernel checks each element added
    /// to a map against every binding (`nft_add_set_elem`), so one map shared by all N
    /// pickers would make a full load O(N × elements); a window holds at most
    /// `SHARD_WINDOW / MIN_RANGE` = 128 pickers, keeping the load linear.
    pub fn endpoints_map(base: u32) -> String {
        format!("endpoints-{}", base / SHARD_WINDOW)
    }
    /// The affinity pickers' verdict map holding index `base`, sharded likewise.
    pub fn endpoint_chains_map(base: u32) -> String {
        format!("endpoint-chains-{}", base / SHARD_WINDOW)
    }
    /// Picker among the cluster endpoints.
    pub fn cluster_chain(p: &PortName) -> String {
        format!("svc-{p}")
    }
    /// Picker among this node's endpoints.
    pub fn local_chain(p: &PortName) -> String {
        format!("local-{p}")
    }
    /// Entry for external traffic (node port, external and load-balancer IPs).
    pub fn external_chain(p: &PortName) -> String {
        format!("ext-{p}")
    }
    /// Per-endpoint chain of an affinity port.
    pub fn endpoint_chain(p: &PortName, e: &Endpoint) -> String {
        format!("ep-{p}/{}/{}", e.ip, e.port)
    }
    /// Per-endpoint affinity set of an affinity port.
    pub fn affinity_set(p: &PortName, e: &Endpoint) -> String {
        format!("aff-{p}/{}/{}", e.ip, e.port)
    }
}

/// What the table needs to know of the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Pods' addresses: traffic from elsewhere to a cluster IP is masqueraded (as
    /// kube-proxy with `--cluster-cidr`), and pods keep Local-policy short-circuits.
    pub cluster_cidr: Option<(Ipv4Addr, u8)>,
    /// Cluster IPs' range, for that masquerade rule.
    pub service_cidr: Option<(Ipv4Addr, u8)>,
}

/// The objects one service port owns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortObjects {
    pub chains: Vec<(String, Vec<Rule>)>,
    pub sets: Vec<Set>,
    /// (map, element).
    pub elements: Vec<(String, Element)>,
    /// Maps this port shares with others (the `endpoints-K` shards it uses).
    pub shared_sets: Vec<Set>,
    /// Local endpoint IPs (for the shared `hairpin` set).
    pub hairpin: BTreeSet<Ipv4Addr>,
}

/// Index ranges a port's pickers use in `endpoints` / `endpoint-chains`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ranges {
    pub cluster: Option<u32>,
    pub local: Option<u32>,
}

fn numgen_key() -> KeyDecl {
    KeyDecl::Typeof(vec![Expr::Numgen {
        modulus: 1,
        offset: 0,
    }])
}

/// The `endpoints-K` map declaration.
pub fn endpoints_set(name: String) -> Set {
    Set {
        key: numgen_key(),
        data: Some(SetData::Typeof(vec![Expr::IpDaddr, Expr::ThDport])),
        ..Set::new(name, vec![])
    }
}

/// The `endpoint-chains-K` map declaration.
pub fn endpoint_chains_set(name: String) -> Set {
    Set {
        key: numgen_key(),
        data: Some(SetData::Verdict),
        ..Set::new(name, vec![])
    }
}

fn m(expr: Expr, op: CmpOp, value: Value) -> Stmt {
    Stmt::Match { expr, op, value }
}

fn goto(chain: String) -> Stmt {
    Stmt::Verdict(Verdict::Goto(chain))
}

fn proto(p: &PortName) -> Value {
    Value::Proto(p.protocol.number())
}

fn tuple() -> Vec<Expr> {
    vec![Expr::IpDaddr, Expr::MetaL4Proto, Expr::ThDport]
}

/// The fixed part of the table (no service ports).
pub fn render_base(config: &ProxyConfig) -> Table {
    let chain = |name: &str, kind, hook, priority| {
        Chain::base(
            name,
            BaseChain {
                kind,
                hook,
                priority,
                policy: Policy::Accept,
            },
        )
    };
    let vmap = |name: &str, key: Vec<Type>| Set::map(name, key, SetData::Verdict);
    let ip_key = vec![Type::Ipv4Addr, Type::InetProto, Type::InetService];
    let port_key = vec![Type::InetProto, Type::InetService];
    let hairpin = Set::new(names::HAIRPIN, vec![Type::Ipv4Addr, Type::Ipv4Addr]);
    let mut t = Table::new(FAMILY, TABLE);
    t.sets = [
        vmap(names::SERVICE_IPS, ip_key.clone()),
        vmap(names::SERVICE_NODEPORTS, port_key.clone()),
        vmap(names::NO_ENDPOINT_IPS, ip_key),
        vmap(names::NO_ENDPOINT_NODEPORTS, port_key),
        hairpin,
    ]
    .into_iter()
    .map(|s| (s, Vec::new()))
    .collect();

    let jump = |c: &str| Rule::new(vec![Stmt::Verdict(Verdict::Jump(c.into()))]);
    let new_conn = || Stmt::MatchBits {
        expr: Expr::CtState,
        mask: ct_state::NEW,
        op: CmpOp::Ne,
        value: 0,
    };
    let local_dst = || {
        m(
            Expr::FibDaddrType,
            CmpOp::Eq,
            Value::AddrType(AddrType::Local),
        )
    };
    let dnat_status = || Stmt::MatchBits {
        expr: Expr::CtStatus,
        mask: ct_status::DNAT,
        op: CmpOp::Ne,
        value: 0,
    };
    let mut services = Vec::new();
    if let (Some((cip, clen)), Some((sip, slen))) = (config.cluster_cidr, config.service_cidr) {
        services.push(
            Rule::new(vec![
                m(Expr::IpDaddr, CmpOp::Eq, Value::Ipv4Prefix(sip, slen)),
                m(Expr::IpSaddr, CmpOp::Ne, Value::Ipv4Prefix(cip, clen)),
                Stmt::MarkSetOr(MASQ_MARK),
            ])
            .with_comment("off-cluster clients of cluster IPs are masqueraded"),
        );
    }
    services.push(Rule::new(vec![Stmt::Vmap {
        keys: tuple(),
        map: names::SERVICE_IPS.into(),
    }]));
    services.push(Rule::new(vec![
        local_dst(),
        Stmt::Vmap {
            keys: vec![Expr::MetaL4Proto, Expr::ThDport],
            map: names::SERVICE_NODEPORTS.into(),
        },
    ]));
    t.chains = vec![
        (
            chain(
                "filter-prerouting",
                ChainKind::Filter,
                Hook::Prerouting,
                -110,
            ),
            vec![Rule::new(vec![
                new_conn(),
                Stmt::Verdict(Verdict::Jump(names::NO_ENDPOINTS.into())),
            ])],
        ),
        (
            chain("filter-output", ChainKind::Filter, Hook::Output, -110),
            vec![Rule::new(vec![
                new_conn(),
                Stmt::Verdict(Verdict::Jump(names::NO_ENDPOINTS.into())),
            ])],
        ),
        (
            Chain::regular(names::NO_ENDPOINTS),
            vec![
                Rule::new(vec![Stmt::Vmap {
                    keys: tuple(),
                    map: names::NO_ENDPOINT_IPS.into(),
                }]),
                Rule::new(vec![
                    local_dst(),
                    Stmt::Vmap {
                        keys: vec![Expr::MetaL4Proto, Expr::ThDport],
                        map: names::NO_ENDPOINT_NODEPORTS.into(),
                    },
                ]),
            ],
        ),
        (
            Chain::regular(names::REJECT),
            vec![
                Rule::new(vec![
                    m(Expr::MetaL4Proto, CmpOp::Eq, Value::TCP),
                    Stmt::Reject(Reject::TcpReset),
                ]),
                Rule::new(vec![Stmt::Reject(Reject::IcmpPortUnreachable)]),
            ],
        ),
        (
            chain("nat-prerouting", ChainKind::Nat, Hook::Prerouting, -100),
            vec![jump(names::SERVICES)],
        ),
        (
            chain("nat-output", ChainKind::Nat, Hook::Output, -100),
            vec![jump(names::SERVICES)],
        ),
        (Chain::regular(names::SERVICES), services),
        (
            chain("nat-postrouting", ChainKind::Nat, Hook::Postrouting, 100),
            vec![jump(names::MASQUERADING)],
        ),
        (
            Chain::regular(names::MASQUERADING),
            vec![
                Rule::new(vec![
                    dnat_status(),
                    Stmt::MatchBits {
                        expr: Expr::MetaMark,
                        mask: MASQ_MARK,
                        op: CmpOp::Eq,
                        value: MASQ_MARK,
                    },
                    Stmt::Masquerade { fully_random: true },
                ]),
                Rule::new(vec![
                    dnat_status(),
                    Stmt::InSet {
                        keys: vec![Expr::IpSaddr, Expr::IpDaddr],
                        set: names::HAIRPIN.into(),
                        negate: false,
                    },
                    Stmt::Masquerade { fully_random: true },
                ])
                .with_comment("a pod reaching itself through its Service"),
            ],
        ),
    ];
    t
}

/// The objects of one service port, given its index ranges (allocated by the caller for
/// the pickers it has endpoints for: `cluster` for `cluster_endpoints`, `local` for
/// `local_endpoints`).
pub fn render_port(port: &ServicePort, ranges: Ranges, config: &ProxyConfig) -> PortObjects {
    let name = &port.name;
    let mut out = PortObjects::default();
    let cluster = ranges
        .cluster
        .filter(|_| !port.cluster_endpoints.is_empty())
        .map(|base| {
            picker(
                &mut out,
                port,
                names::cluster_chain(name),
                &port.cluster_endpoints,
                base,
            );
            names::cluster_chain(name)
        });
    let local = ranges
        .local
        .filter(|_| !port.local_endpoints.is_empty())
        .map(|base| {
            picker(
                &mut out,
                port,
                names::local_chain(name),
                &port.local_endpoints,
                base,
            );
            names::local_chain(name)
        });
    for e in port.cluster_endpoints.iter().chain(&port.local_endpoints) {
        if e.local {
            out.hairpin.insert(e.ip);
        }
    }

    let ip_key = |ip: Ipv4Addr| vec![Value::Ipv4(ip), proto(name), Value::Port(port.port)];
    // No usable endpoint anywhere: refuse at once. Endpoints exist but none for this
    // policy on this node: drop, as kube-proxy does.
    let refusal = if port.has_endpoints {
        Verdict::Drop
    } else {
        Verdict::Goto(names::REJECT.into())
    };
    let internal = if port.internal_local {
        &local
    } else {
        &cluster
    };
    match internal {
        Some(chain) => out.elements.push((
            names::SERVICE_IPS.into(),
            Element::verdict(ip_key(port.cluster_ip), Verdict::Goto(chain.clone())),
        )),
        None => out.elements.push((
            names::NO_ENDPOINT_IPS.into(),
            Element::verdict(ip_key(port.cluster_ip), refusal.clone()),
        )),
    }

    let external_ips: Vec<Ipv4Addr> = port
        .external_ips
        .iter()
        .chain(&port.load_balancer_ips)
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if external_ips.is_empty() && port.node_port.is_none() {
        return out;
    }
    let entry = if port.has_endpoints {
        let ext = names::external_chain(name);
        let mut rules = Vec::new();
        if port.external_local {
            if let (Some(svc), Some((cidr, len))) = (&cluster, config.cluster_cidr) {
                rules.push(Rule::new(vec![
                    m(Expr::IpSaddr, CmpOp::Eq, Value::Ipv4Prefix(cidr, len)),
                    goto(svc.clone()),
                ]));
            }
            rules.push(Rule::new(vec![match &local {
                Some(l) => goto(l.clone()),
                None => Stmt::Verdict(Verdict::Drop),
            }]));
        } else {
            rules.push(Rule::new(vec![Stmt::MarkSetOr(MASQ_MARK)]));
            rules.push(Rule::new(vec![match &cluster {
                Some(c) => goto(c.clone()),
                None => Stmt::Verdict(Verdict::Drop),
            }]));
        }
        out.chains.push((ext.clone(), rules));
        Some(ext)
    } else {
        None
    };
    let (ips_map, ports_map, verdict) = match entry {
        Some(ext) => (
            names::SERVICE_IPS,
            names::SERVICE_NODEPORTS,
            Verdict::Goto(ext),
        ),
        None => (
            names::NO_ENDPOINT_IPS,
            names::NO_ENDPOINT_NODEPORTS,
            refusal,
        ),
    };
    for ip in external_ips {
        out.elements.push((
            ips_map.into(),
            Element::verdict(ip_key(ip), verdict.clone()),
        ));
    }
    if let Some(np) = port.node_port {
        out.elements.push((
            ports_map.into(),
            Element::verdict(vec![proto(name), Value::Port(np)], verdict),
        ));
    }
    out
}

/// A picker chain over `eps` using indexes `base..base + eps.len()`.
fn picker(out: &mut PortObjects, port: &ServicePort, chain: String, eps: &[Endpoint], base: u32) {
    let name = &port.name;
    let n = u32::try_from(eps.len()).expect("endpoint count fits the index range");
    let numgen = Expr::Numgen {
        modulus: n,
        offset: base,
    };
    let l4 = || m(Expr::MetaL4Proto, CmpOp::Eq, proto(name));
    let Some(timeout) = port.affinity_seconds else {
        let map = names::endpoints_map(base);
        if !out.shared_sets.iter().any(|s| s.name == map) {
            out.shared_sets.push(endpoints_set(map.clone()));
        }
        out.chains.push((
            chain,
            vec![Rule::new(vec![
                l4(),
                Stmt::DnatMap {
                    keys: vec![numgen],
                    map: map.clone(),
                    ipv6: false,
                },
            ])],
        ));
        for (i, e) in eps.iter().enumerate() {
            out.elements.push((
                map.clone(),
                Element::values(
                    vec![Value::Integer(base + i as u32)],
                    vec![Value::Ipv4(e.ip), Value::Port(e.port)],
                ),
            ));
        }
        return;
    };
    let timeout = Duration::from_secs(u64::from(timeout));
    let map = names::endpoint_chains_map(base);
    if !out.shared_sets.iter().any(|s| s.name == map) {
        out.shared_sets.push(endpoint_chains_set(map.clone()));
    }
    let mut rules = Vec::new();
    for (i, e) in eps.iter().enumerate() {
        let ep_chain = names::endpoint_chain(name, e);
        let aff = names::affinity_set(name, e);
        rules.push(Rule::new(vec![
            Stmt::InSet {
                keys: vec![Expr::IpSaddr],
                set: aff.clone(),
                negate: false,
            },
            goto(ep_chain.clone()),
        ]));
        out.elements.push((
            map.clone(),
            Element::verdict(
                vec![Value::Integer(base + i as u32)],
                Verdict::Goto(ep_chain.clone()),
            ),
        ));
        if out.chains.iter().any(|(c, _)| *c == ep_chain) {
            continue; // shared by the cluster and the local picker
        }
        out.sets.push(Set {
            flags: SetFlags {
                interval: false,
                timeout: true,
                dynamic: true,
            },
            timeout: Some(timeout),
            size: Some(65535),
            ..Set::new(aff.clone(), vec![Type::Ipv4Addr])
        });
        out.chains.push((
            ep_chain,
            vec![
                Rule::new(vec![Stmt::SetUpdate {
                    set: aff,
                    keys: vec![Expr::IpSaddr],
                    timeout: None,
                }]),
                Rule::new(vec![
                    l4(),
                    Stmt::Dnat {
                        addr: e.ip.into(),
                        port: Some(e.port),
                    },
                ]),
            ],
        ));
    }
    rules.push(Rule::new(vec![Stmt::Vmap {
        keys: vec![numgen],
        map,
    }]));
    out.chains.push((chain, rules));
}
