//! Pure: service ports → the nf_tables objects of podnet's Services table. Invariant: every
//! name comes from [`names`], and a port's objects are a function of the port and the
//! [`ProxyConfig`] only.
//!
//! The table is a contract (documented in docs/architecture.md). Its size lives in map
//! elements: the chains and rules are a fixed part plus a few shared *pickers*, one per
//! endpoint count in use, so a table of 50k Services × 5 endpoints has a dozen chains, not
//! 50k (the kernel's cost of loading a table is dominated by its chains and rules: each
//! rule looks its maps and chains up by name). The fixed part:
//!
//! ```text
//! table ip podnet-services {
//!   map service-ips           ipv4_addr . inet_proto . inet_service : verdict  # frontend → picker
//!   map service-nodeports     inet_proto . inet_service : verdict              # node port → picker
//!   map no-endpoint-ips       (as service-ips)   → goto reject-service | drop
//!   map no-endpoint-nodeports (as service-nodeports)
//!   set hairpin               ipv4_addr . ipv4_addr                            # local endpoint, twice
//!   chain filter-prerouting / filter-output  (filter, dstnat - 10): ct state new → no-endpoints
//!                         (only while some frontend has no endpoint: [`filter_hook_chains`])
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
//! Shared pickers, present while some port uses them (`N`, `M`: endpoint counts ≥ 1). A
//! *frontend* is what a client connects to: a cluster, external or load-balancer IP with
//! the port's protocol and port, or a node port's protocol and port.
//! ```text
//!   map endpoints-N       typeof ip daddr . meta l4proto . th dport . numgen random mod 1
//!                                : ip daddr . th dport         # (frontend, index) → cluster endpoint
//!   map local-endpoints-M (the same)                           # … → this node's endpoint
//!   map nodeport-endpoints-N / nodeport-local-endpoints-M
//!                         typeof meta l4proto . th dport . numgen random mod 1 : ip daddr . th dport
//!   chain pick-N          dnat ip addr . port to ip daddr . meta l4proto . th dport
//!                                . numgen random mod N map @endpoints-N
//!   chain local-pick-M / nodeport-pick-N / nodeport-local-pick-M   (the same over their map)
//!   chain ext-pick-N      meta mark |= 0x4000; goto pick-N     # externalTrafficPolicy Cluster
//!   chain ext-local-N-M   ip saddr CLUSTER-CIDR goto pick-N    # externalTrafficPolicy Local
//!                         goto local-pick-M (or drop when the node has none: ext-local-N-0)
//!   chain ext-nodeport-pick-N / ext-nodeport-local-N-M        (the same for node ports)
//! ```
//! A port's cluster IP is an element of `service-ips` (`goto pick-N`, or `goto
//! local-pick-M` with internalTrafficPolicy Local) and N (M) elements of that picker's
//! map; each external and load-balancer IP likewise (`goto ext-pick-N` /
//! `ext-local-N-M`, or directly `local-pick-M` / `drop` when no pod short-cut applies);
//! its node port the same in the `nodeport` maps. Per new connection: one lookup in
//! `service-ips` (or `service-nodeports`), one in the picker's map, as with a chain per
//! service. Each endpoints map is bound by exactly one rule (its picker): the kernel
//! checks every element added to a map against every rule bound to it
//! (`nft_add_set_elem` walks `set->bindings`), so a map per endpoint count keeps a load
//! linear. When a port's endpoint count changes, its elements move to the other count's
//! map and its dispatch element changes, in one transaction: O(endpoints of the port).
//!
//! ClientIP affinity ports keep chains of their own (kube-proxy's shape; rare):
//! - `svc-X` picks among the cluster endpoints, `local-X` among this node's: one
//!   `ip saddr @aff-X/IP/PORT goto ep-X/IP/PORT` per endpoint, then
//!   `numgen random mod N vmap @picks-svc-X` (`@picks-local-X`), a map of index → endpoint
//!   chain; each `ep-X/IP/PORT` chain does `update @aff-X/IP/PORT { ip saddr }` and DNATs
//!   to the endpoint;
//! - `ext-X` (node port, external and load-balancer IPs): Cluster policy marks for
//!   masquerade and goes to `svc-X`; Local policy sends pod traffic (cluster CIDR) to
//!   `svc-X`, the rest to `local-X` (or drops it when the node has no endpoint), keeping the
//!   client's source IP.
//!
//! Against kube-proxy's nftables shape (a `service-X` chain per port, an `endpoint-X`
//! chain per endpoint, an anonymous `numgen` verdict map per service): the same two
//! lookups per new connection, but no object per Service or endpoint besides map elements,
//! so a full load is linear in elements and an endpoint change is one element out and one
//! in, whatever the table's size.

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

/// Which frontends a picker serves: addresses (`ip daddr . meta l4proto . th dport`) or
/// node ports (`meta l4proto . th dport`, on any local address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Frontend {
    Address,
    NodePort,
}

/// Which endpoints a picker picks from: the cluster's, or this node's (Local policies).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoints {
    Cluster,
    Local,
}

/// Every name in the table comes from here.
pub mod names {
    use super::*;

    pub const SERVICE_IPS: &str = "service-ips";
    pub const SERVICE_NODEPORTS: &str = "service-nodeports";
    pub const NO_ENDPOINT_IPS: &str = "no-endpoint-ips";
    pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
    pub const HAIRPIN: &str = "hairpin";
    pub const NO_ENDPOINTS: &str = "no-endpoints";
    pub const REJECT: &str = "reject-service";
    pub const SERVICES: &str = "services";
    pub const MASQUERADING: &str = "masquerading";
    pub const FILTER_PREROUTING: &str = "filter-prerouting";
    pub const FILTER_OUTPUT: &str = "filter-output";

    fn prefix(f: Frontend, e: Endpoints) -> &'static str {
        match (f, e) {
            (Frontend::Address, Endpoints::Cluster) => "",
            (Frontend::Address, Endpoints::Local) => "local-",
            (Frontend::NodePort, Endpoints::Cluster) => "nodeport-",
            (Frontend::NodePort, Endpoints::Local) => "nodeport-local-",
        }
    }
    /// The map of (frontend, index) → endpoint for ports with `n` such endpoints.
    pub fn endpoints_map(f: Frontend, e: Endpoints, n: u32) -> String {
        format!("{}endpoints-{n}", prefix(f, e))
    }
    /// The chain picking one of `n` endpoints from [`endpoints_map`].
    pub fn pick_chain(f: Frontend, e: Endpoints, n: u32) -> String {
        format!("{}pick-{n}", prefix(f, e))
    }
    /// externalTrafficPolicy Cluster: mark for masquerade, then [`pick_chain`].
    pub fn external_pick_chain(f: Frontend, n: u32) -> String {
        format!("ext-{}pick-{n}", prefix(f, Endpoints::Cluster))
    }
    /// externalTrafficPolicy Local: pods to the cluster's `n`, others to this node's `m`
    /// endpoints (dropped when `m` is 0).
    pub fn external_local_chain(f: Frontend, n: u32, m: u32) -> String {
        format!("ext-{}local-{n}-{m}", prefix(f, Endpoints::Cluster))
    }
    /// Picker among the cluster endpoints (affinity ports).
    pub fn cluster_chain(p: &PortName) -> String {
        format!("svc-{p}")
    }
    /// Picker among this node's endpoints (affinity ports).
    pub fn local_chain(p: &PortName) -> String {
        format!("local-{p}")
    }
    /// Entry for external traffic (affinity ports).
    pub fn external_chain(p: &PortName) -> String {
        format!("ext-{p}")
    }
    /// Index → endpoint chain map of an affinity picker `chain`.
    pub fn picks_map(chain: &str) -> String {
        format!("picks-{chain}")
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

/// A map a port has elements in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Map {
    ServiceIps,
    ServiceNodeports,
    NoEndpointIps,
    NoEndpointNodeports,
    /// A shared picker's map ([`names::endpoints_map`]).
    Endpoints(Frontend, Endpoints, u32),
    /// An affinity picker's own map ([`names::picks_map`]).
    Picks(String),
}

impl Map {
    pub fn name(&self) -> String {
        match self {
            Map::ServiceIps => names::SERVICE_IPS.into(),
            Map::ServiceNodeports => names::SERVICE_NODEPORTS.into(),
            Map::NoEndpointIps => names::NO_ENDPOINT_IPS.into(),
            Map::NoEndpointNodeports => names::NO_ENDPOINT_NODEPORTS.into(),
            Map::Endpoints(f, e, n) => names::endpoints_map(*f, *e, *n),
            Map::Picks(name) => name.clone(),
        }
    }

    /// The dispatch maps, where a frontend belongs to one port: their position in the
    /// frontend key ([`frontend_key`]).
    fn dispatch_index(&self) -> Option<u64> {
        match self {
            Map::ServiceIps => Some(0),
            Map::ServiceNodeports => Some(1),
            Map::NoEndpointIps => Some(2),
            Map::NoEndpointNodeports => Some(3),
            Map::Endpoints(..) | Map::Picks(_) => None,
        }
    }
}

/// The element of a dispatch map as one number (map, address, protocol, port), for the
/// proxy's record of which frontends are taken; `None` for the other maps (their keys
/// start with a frontend their port's dispatch element claims, or are the port's own).
pub fn frontend_key(map: &Map, key: &[Value]) -> Option<u64> {
    let mut k = map.dispatch_index()? << 58;
    for v in key {
        match v {
            Value::Ipv4(a) => k |= u64::from(u32::from(*a)) << 24,
            Value::Proto(p) => k |= u64::from(*p) << 16,
            Value::Port(p) => k |= u64::from(*p),
            _ => return None,
        }
    }
    Some(k)
}

/// A picker shared by every port with the same endpoint counts: its chain (and map) are a
/// function of this value and the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Shared {
    /// `pick-N` and its map `endpoints-N` (or the local / node-port variants).
    Pick(Frontend, Endpoints, u32),
    /// `ext-pick-N`: externalTrafficPolicy Cluster.
    ExternalPick(Frontend, u32),
    /// `ext-local-N-M`: externalTrafficPolicy Local with the pods' short-cut.
    ExternalLocal(Frontend, u32, u32),
}

impl Shared {
    pub fn chain(&self) -> String {
        match *self {
            Shared::Pick(f, e, n) => names::pick_chain(f, e, n),
            Shared::ExternalPick(f, n) => names::external_pick_chain(f, n),
            Shared::ExternalLocal(f, n, m) => names::external_local_chain(f, n, m),
        }
    }

    /// The map the picker binds.
    pub fn set(&self) -> Option<Set> {
        match *self {
            Shared::Pick(f, e, n) => Some(endpoints_set(f, e, n)),
            _ => None,
        }
    }

    /// The chain's rules.
    pub fn rules(&self, config: &ProxyConfig) -> Vec<Rule> {
        match *self {
            // pick-N: dnat ip addr . port to ip daddr . meta l4proto . th dport
            //           . numgen random mod N map @endpoints-N
            Shared::Pick(f, e, n) => {
                let mut keys = frontend_keys(f);
                keys.push(numgen(n));
                vec![Rule::new(vec![Stmt::DnatMap {
                    keys,
                    map: names::endpoints_map(f, e, n),
                    ipv6: false,
                }])]
            }
            // ext-pick-N: meta mark set meta mark | 0x4000; goto pick-N
            Shared::ExternalPick(f, n) => vec![
                Rule::new(vec![Stmt::MarkSetOr(MASQ_MARK)]),
                Rule::new(vec![goto(names::pick_chain(f, Endpoints::Cluster, n))]),
            ],
            // ext-local-N-M: ip saddr CLUSTER-CIDR goto pick-N; goto local-pick-M | drop
            Shared::ExternalLocal(f, n, m_) => {
                let mut rules = Vec::new();
                if let Some((cidr, len)) = config.cluster_cidr {
                    rules.push(Rule::new(vec![
                        m(Expr::IpSaddr, CmpOp::Eq, Value::Ipv4Prefix(cidr, len)),
                        goto(names::pick_chain(f, Endpoints::Cluster, n)),
                    ]));
                }
                rules.push(Rule::new(vec![if m_ > 0 {
                    goto(names::pick_chain(f, Endpoints::Local, m_))
                } else {
                    Stmt::Verdict(Verdict::Drop)
                }]));
                rules
            }
        }
    }
}

/// The objects one service port owns or uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortObjects {
    /// Chains and sets of the port's own (affinity ports only).
    pub chains: Vec<(String, Vec<Rule>)>,
    pub sets: Vec<Set>,
    /// (map, element).
    pub elements: Vec<(Map, Element)>,
    /// Pickers this port uses (each once).
    pub shared: Vec<Shared>,
    /// Local endpoint IPs (for the shared `hairpin` set).
    pub hairpin: BTreeSet<Ipv4Addr>,
    /// Every endpoint IP the port can DNAT to (what the fast path must leave to conntrack).
    pub endpoints: BTreeSet<Ipv4Addr>,
}

/// The key expressions of a frontend.
fn frontend_keys(f: Frontend) -> Vec<Expr> {
    match f {
        Frontend::Address => vec![Expr::IpDaddr, Expr::MetaL4Proto, Expr::ThDport],
        Frontend::NodePort => vec![Expr::MetaL4Proto, Expr::ThDport],
    }
}

/// A `numgen random mod n` expression (in a map declaration `n` is 1: nft stores the
/// expression, the kernel only its width).
fn numgen(n: u32) -> Expr {
    Expr::Numgen {
        modulus: n,
        offset: 0,
    }
}

/// The declaration of an endpoints map: (frontend, index) → endpoint address . port.
pub fn endpoints_set(f: Frontend, e: Endpoints, n: u32) -> Set {
    let mut key = frontend_keys(f);
    key.push(numgen(1));
    Set {
        key: KeyDecl::Typeof(key),
        data: Some(SetData::Typeof(vec![Expr::IpDaddr, Expr::ThDport])),
        ..Set::new(names::endpoints_map(f, e, n), vec![])
    }
}

/// A picker's map of index → endpoint chain (affinity ports).
fn picks_set(name: String) -> Set {
    Set {
        key: KeyDecl::Typeof(vec![numgen(1)]),
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

fn count(eps: &[Endpoint]) -> u32 {
    u32::try_from(eps.len()).expect("endpoint count fits u32")
}

/// The base chains `filter-prerouting` / `filter-output` (filter, dstnat - 10):
/// `ct state new jump no-endpoints`. The proxy adds them only while some frontend has no
/// endpoint (an element of `no-endpoint-ips` or `no-endpoint-nodeports`): otherwise
/// `no-endpoints` could match nothing, and a base chain is one more hook call and rule
/// for every packet the node forwards or sends (the policy table's base chains are gated
/// the same way).
pub fn filter_hook_chains() -> [(Chain, Vec<Rule>); 2] {
    let new_conn_jump = || {
        vec![Rule::new(vec![
            Stmt::MatchBits {
                expr: Expr::CtState,
                mask: ct_state::NEW,
                op: CmpOp::Ne,
                value: 0,
            },
            Stmt::Verdict(Verdict::Jump(names::NO_ENDPOINTS.into())),
        ])]
    };
    let base = |hook| BaseChain {
        kind: ChainKind::Filter,
        hook,
        priority: -110,
        policy: Policy::Accept,
        device: None,
    };
    [
        (
            Chain::base(names::FILTER_PREROUTING, base(Hook::Prerouting)),
            new_conn_jump(),
        ),
        (
            Chain::base(names::FILTER_OUTPUT, base(Hook::Output)),
            new_conn_jump(),
        ),
    ]
}

/// The fixed part of the table (no service ports), with the [`filter_hook_chains`] when
/// `no_endpoint_frontends`.
pub fn render_base(config: &ProxyConfig, no_endpoint_frontends: bool) -> Table {
    let chain = |name: &str, kind, hook, priority| {
        Chain::base(
            name,
            BaseChain {
                kind,
                hook,
                priority,
                policy: Policy::Accept,
                device: None,
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
    if no_endpoint_frontends {
        t.chains.splice(0..0, filter_hook_chains());
    }
    t
}

/// The objects of one service port.
pub fn render_port(port: &ServicePort, config: &ProxyConfig) -> PortObjects {
    let mut out = PortObjects::default();
    for e in port.cluster_endpoints.iter().chain(&port.local_endpoints) {
        if e.local {
            out.hairpin.insert(e.ip);
        }
        out.endpoints.insert(e.ip);
    }
    if port.affinity_seconds.is_some() {
        render_affinity_port(&mut out, port, config);
        return out;
    }
    let name = &port.name;
    let (n, m_) = (count(&port.cluster_endpoints), count(&port.local_endpoints));
    // No usable endpoint anywhere: refuse at once. Endpoints exist but none for this
    // policy on this node: drop, as kube-proxy does.
    let refusal = if port.has_endpoints {
        Verdict::Drop
    } else {
        Verdict::Goto(names::REJECT.into())
    };
    let addr_key = |ip: Ipv4Addr| vec![Value::Ipv4(ip), proto(name), Value::Port(port.port)];

    // The cluster IP.
    let (list, k) = if port.internal_local {
        (Endpoints::Local, m_)
    } else {
        (Endpoints::Cluster, n)
    };
    if k > 0 {
        let chain = pick(
            &mut out,
            port,
            Frontend::Address,
            list,
            addr_key(port.cluster_ip),
        );
        out.elements.push((
            Map::ServiceIps,
            Element::verdict(addr_key(port.cluster_ip), Verdict::Goto(chain)),
        ));
    } else {
        out.elements.push((
            Map::NoEndpointIps,
            Element::verdict(addr_key(port.cluster_ip), refusal.clone()),
        ));
    }

    // External and load-balancer IPs, the node port.
    let external_ips: BTreeSet<Ipv4Addr> = port
        .external_ips
        .iter()
        .chain(&port.load_balancer_ips)
        .copied()
        .collect();
    let mut frontends: Vec<(Frontend, Vec<Value>)> = external_ips
        .into_iter()
        .map(|ip| (Frontend::Address, addr_key(ip)))
        .collect();
    if let Some(np) = port.node_port {
        frontends.push((Frontend::NodePort, vec![proto(name), Value::Port(np)]));
    }
    for (f, key) in frontends {
        let (dispatch, no_endpoint) = match f {
            Frontend::Address => (Map::ServiceIps, Map::NoEndpointIps),
            Frontend::NodePort => (Map::ServiceNodeports, Map::NoEndpointNodeports),
        };
        if !port.has_endpoints {
            out.elements
                .push((no_endpoint, Element::verdict(key, refusal.clone())));
            continue;
        }
        let verdict = if port.external_local {
            // Pods (cluster CIDR) may use the cluster's endpoints; the rest keeps its
            // source address and goes to this node's (or nowhere).
            let pods = config.cluster_cidr.filter(|_| n > 0);
            let local = (m_ > 0).then(|| pick(&mut out, port, f, Endpoints::Local, key.clone()));
            match (pods, local) {
                (None, Some(local)) => Verdict::Goto(local),
                (None, None) => Verdict::Drop,
                (Some(_), _) => {
                    pick(&mut out, port, f, Endpoints::Cluster, key.clone());
                    Verdict::Goto(share(&mut out, Shared::ExternalLocal(f, n, m_)))
                }
            }
        } else if n > 0 {
            pick(&mut out, port, f, Endpoints::Cluster, key.clone());
            Verdict::Goto(share(&mut out, Shared::ExternalPick(f, n)))
        } else {
            Verdict::Drop
        };
        out.elements
            .push((dispatch, Element::verdict(key, verdict)));
    }
    out
}

/// Records that the port uses `s`; returns its chain.
fn share(out: &mut PortObjects, s: Shared) -> String {
    if !out.shared.contains(&s) {
        out.shared.push(s);
    }
    s.chain()
}

/// The elements of `port`'s frontend `key` in the picker over its `list` endpoints (which
/// must not be empty), the picker and its map; returns the picker's name.
fn pick(
    out: &mut PortObjects,
    port: &ServicePort,
    f: Frontend,
    list: Endpoints,
    key: Vec<Value>,
) -> String {
    let eps = match list {
        Endpoints::Cluster => &port.cluster_endpoints,
        Endpoints::Local => &port.local_endpoints,
    };
    let n = count(eps);
    for (i, e) in (0u32..).zip(eps) {
        let mut k = Vec::with_capacity(key.len() + 1);
        k.extend_from_slice(&key);
        k.push(Value::Integer(i));
        out.elements.push((
            Map::Endpoints(f, list, n),
            Element::values(k, vec![Value::Ipv4(e.ip), Value::Port(e.port)]),
        ));
    }
    share(out, Shared::Pick(f, list, n))
}

/// A ClientIP affinity port: chains of its own (see the module doc).
fn render_affinity_port(out: &mut PortObjects, port: &ServicePort, config: &ProxyConfig) {
    let name = &port.name;
    let cluster = (!port.cluster_endpoints.is_empty()).then(|| {
        let chain = names::cluster_chain(name);
        affinity_picker(out, port, chain.clone(), &port.cluster_endpoints);
        chain
    });
    let local = (!port.local_endpoints.is_empty()).then(|| {
        let chain = names::local_chain(name);
        affinity_picker(out, port, chain.clone(), &port.local_endpoints);
        chain
    });

    let ip_key = |ip: Ipv4Addr| vec![Value::Ipv4(ip), proto(name), Value::Port(port.port)];
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
            Map::ServiceIps,
            Element::verdict(ip_key(port.cluster_ip), Verdict::Goto(chain.clone())),
        )),
        None => out.elements.push((
            Map::NoEndpointIps,
            Element::verdict(ip_key(port.cluster_ip), refusal.clone()),
        )),
    }

    let external_ips: BTreeSet<Ipv4Addr> = port
        .external_ips
        .iter()
        .chain(&port.load_balancer_ips)
        .copied()
        .collect();
    if external_ips.is_empty() && port.node_port.is_none() {
        return;
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
        Some(ext) => (Map::ServiceIps, Map::ServiceNodeports, Verdict::Goto(ext)),
        None => (Map::NoEndpointIps, Map::NoEndpointNodeports, refusal),
    };
    for ip in external_ips {
        out.elements.push((
            ips_map.clone(),
            Element::verdict(ip_key(ip), verdict.clone()),
        ));
    }
    if let Some(np) = port.node_port {
        out.elements.push((
            ports_map,
            Element::verdict(vec![proto(name), Value::Port(np)], verdict),
        ));
    }
}

/// An affinity picker chain over `eps`: an endpoint the client used recently, else a
/// random one through the chain's own `picks-` map.
fn affinity_picker(out: &mut PortObjects, port: &ServicePort, chain: String, eps: &[Endpoint]) {
    let name = &port.name;
    let timeout = Duration::from_secs(u64::from(port.affinity_seconds.unwrap_or_default()));
    let map = names::picks_map(&chain);
    out.sets.push(picks_set(map.clone()));
    let l4 = || m(Expr::MetaL4Proto, CmpOp::Eq, proto(name));
    let mut rules = Vec::new();
    for (i, e) in (0u32..).zip(eps) {
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
            Map::Picks(map.clone()),
            Element::verdict(vec![Value::Integer(i)], Verdict::Goto(ep_chain.clone())),
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
        keys: vec![numgen(count(eps))],
        map,
    }]));
    out.chains.push((chain, rules));
}
