//! Pure: the masquerade ruleset — pod egress leaving the cluster takes the node's
//! address; nothing else is NATed.
//!
//! Contract: podnet's agent owns table `ip podnet-nat` outright (nothing else writes
//! there) and replaces it whole in one nf_tables transaction over netlink
//! (`Transaction::replace_table`: `add table`, `delete table`, then the definition —
//! atomic, so a failing transaction changes nothing and there is never a moment without
//! the rule; established flows keep their conntrack NAT bindings). No `nft` binary is
//! involved: the agent's image is the one static `podnet` binary.
//! - set `node-ips` (ipv4_addr): every node's InternalIP — pod → node traffic keeps the
//!   pod address (Kubernetes model: nodes see pods by their real IPs).
//! - chain `postrouting`: type nat, hook postrouting, priority srcnat (100) — the same
//!   place as iptables' `POSTROUTING` in the nat table, where flannel and kube-proxy's
//!   masquerade rules live. One rule: source in the cluster CIDR, destination neither in
//!   the cluster CIDR nor a node IP → `masquerade` (the outgoing link's address, i.e. the
//!   node IP on the underlay).
//! - set `no-masquerade` (ipv4_addr, intervals), only when the agent is given
//!   masquerade exceptions (`PODNET_MASQUERADE_EXCEPTIONS`): destinations outside the
//!   cluster that must see pods by their own addresses (a peered network, a VPN range),
//!   as ip-masq-agent's `nonMasqueradeCIDRs` in GKE/EKS. The rule then also says
//!   `ip daddr != @no-masquerade`. Overlapping or adjacent exceptions are aggregated
//!   first (nft refuses overlapping interval elements). Without exceptions neither the
//!   set nor the clause exists: no per-packet cost for a feature not in use.
//!
//! - VXLAN mode only: the overlay's outer packets — UDP to port 4789 between node IPs —
//!   are not tracked. Any nat or ct rule in a namespace switches conntrack on for all its
//!   traffic; the outer packets need no NAT and no state, and tracking them cost
//!   measurable throughput (scripts/bench-dataplane, 2026-11-30: VXLAN 0.89x → 0.93x of
//!   plain plumbing in a 4-round run). The inner packets are still tracked (Services,
//!   masquerade need it). Sent packets: chain `tunnel-output` here (type filter, hook
//!   output, priority raw), which sees only what the node itself sends. Received
//!   packets: not a prerouting chain, which every packet the node receives or forwards
//!   would walk (the pods' own traffic included, inner packets twice), but the netdev
//!   table `podnet-tunnel` ([`render_tunnel`]), whose one chain hooks `ingress` of the
//!   underlay link alone — before the IP stack, so conntrack finds them marked.
//!
//! flannel's equivalent is several iptables rules in shared chains (`FLANNEL-POSTRTG`),
//! re-checked one by one, and it leaves its tunnel traffic tracked; here the whole table
//! is one transaction with a set lookup.

use crate::{Mode, VXLAN_PORT};
use ipnet::Ipv4Net;
use podnet_nft::{
    BaseChain, Chain, ChainKind, CmpOp, Element, Expr, Family, Hook, Policy, Rule, Set, SetFlags,
    Stmt, Table, Type, Value,
};
use std::net::Ipv4Addr;

/// The nftables table the agent owns.
pub const MASQUERADE_TABLE: &str = "podnet-nat";
/// The named set of node IPs in it.
pub const NODE_IPS_SET: &str = "node-ips";
/// The named interval set of masquerade exceptions in it (only with exceptions).
pub const NO_MASQUERADE_SET: &str = "no-masquerade";
/// The netdev table of VXLAN mode (its chain hooks the underlay link's ingress).
pub const TUNNEL_TABLE: &str = "podnet-tunnel";

/// nft's `srcnat` and `raw` priorities.
const PRIORITY_SRCNAT: i32 = 100;
const PRIORITY_RAW: i32 = -300;

/// The whole table `ip podnet-nat`; the agent applies it with
/// `Transaction::replace_table`. Rendered (`podnet_nft::render_table`):
///
/// ```text
/// table ip podnet-nat {
///     set node-ips {
///         type ipv4_addr
///         elements = { 192.168.50.11, 192.168.50.12 }
///     }
///     chain postrouting {
///         type nat hook postrouting priority 100; policy accept;
///         ip saddr 10.244.0.0/16 ip daddr != 10.244.0.0/16 ip daddr != @node-ips masquerade
///     }
/// }
/// ```
/// In VXLAN mode chain `tunnel-output` follows `postrouting` (see the module doc).
/// With `exceptions`, the interval set `no-masquerade` holds them (aggregated) and the
/// rule gains `ip daddr != @no-masquerade`.
/// Node IPs are sorted and deduplicated, so equal inputs give equal tables.
pub fn render_masquerade(
    cluster_cidr: Ipv4Net,
    exceptions: &[Ipv4Net],
    node_ips: &[Ipv4Addr],
    mode: Mode,
) -> Table {
    let cidr = cluster_cidr.trunc();
    let cidr = Value::Ipv4Prefix(cidr.network(), cidr.prefix_len());
    let exceptions = Ipv4Net::aggregate(&exceptions.to_vec());
    let mut t = Table::new(Family::Ip, MASQUERADE_TABLE);
    t.sets.push(node_ips_set(node_ips));
    let in_set = |set: &str, key: Expr, negate: bool| Stmt::InSet {
        keys: vec![key],
        set: set.to_string(),
        negate,
    };
    let mut rule = vec![
        Stmt::Match {
            expr: Expr::IpSaddr,
            op: CmpOp::Eq,
            value: cidr.clone(),
        },
        Stmt::Match {
            expr: Expr::IpDaddr,
            op: CmpOp::Ne,
            value: cidr,
        },
        in_set(NODE_IPS_SET, Expr::IpDaddr, true),
    ];
    if !exceptions.is_empty() {
        let mut set = Set::new(NO_MASQUERADE_SET, vec![Type::Ipv4Addr]);
        set.flags = SetFlags {
            interval: true,
            ..SetFlags::default()
        };
        t.sets.push((
            set,
            exceptions
                .iter()
                .map(|n| Element::key(vec![Value::Ipv4Prefix(n.network(), n.prefix_len())]))
                .collect(),
        ));
        rule.push(in_set(NO_MASQUERADE_SET, Expr::IpDaddr, true));
    }
    rule.push(Stmt::Masquerade {
        fully_random: false,
    });
    let base = |kind, hook, priority| BaseChain {
        kind,
        hook,
        priority,
        policy: Policy::Accept,
        device: None,
    };
    t.chains.push((
        Chain::base(
            "postrouting",
            base(ChainKind::Nat, Hook::Postrouting, PRIORITY_SRCNAT),
        ),
        vec![Rule::new(rule)],
    ));
    if mode == Mode::Vxlan {
        // Every packet the node sends passes here: the two compares reject nearly all of
        // them before the set lookups.
        t.chains.push((
            Chain::base(
                "tunnel-output",
                base(ChainKind::Filter, Hook::Output, PRIORITY_RAW),
            ),
            vec![untrack_tunnel()],
        ));
    }
    t
}

/// The VXLAN mode's netdev table `podnet-tunnel`, bound to the underlay link `underlay`
/// (the link holding the node IP); the agent applies it with `Transaction::replace_table`.
///
/// ```text
/// table netdev podnet-tunnel {
///     set node-ips {
///         type ipv4_addr
///         elements = { 192.168.50.11, 192.168.50.12 }
///     }
///     chain underlay-ingress {
///         type filter hook ingress device "eth0" priority -300; policy accept;
///         meta l4proto udp th dport 4789 ip saddr @node-ips ip daddr @node-ips notrack
///     }
/// }
/// ```
/// The chain sees only what arrives on the underlay: the outer packets and node-to-node
/// traffic, never the pods' packets on the bridge or the inner packets the VXLAN device
/// hands up. (A netdev chain is bound to its device: were the underlay link replaced,
/// the kernel unhooks the chain with the old one; the agent re-reads the link name at
/// every sync and replaces the table when it changed. On a multi-homed node, outer
/// packets that arrive on another link than the node IP's stay tracked: slower, still
/// correct.)
pub fn render_tunnel(node_ips: &[Ipv4Addr], underlay: &str) -> Table {
    let mut t = Table::new(Family::Netdev, TUNNEL_TABLE);
    t.sets.push(node_ips_set(node_ips));
    t.chains.push((
        Chain::base(
            "underlay-ingress",
            BaseChain {
                kind: ChainKind::Filter,
                hook: Hook::Ingress,
                priority: PRIORITY_RAW,
                policy: Policy::Accept,
                device: Some(underlay.to_string()),
            },
        ),
        vec![untrack_tunnel()],
    ));
    t
}

/// Set `node-ips`: `node_ips` sorted and deduplicated.
fn node_ips_set(node_ips: &[Ipv4Addr]) -> (Set, Vec<Element>) {
    let mut ips: Vec<Ipv4Addr> = node_ips.to_vec();
    ips.sort();
    ips.dedup();
    (
        Set::new(NODE_IPS_SET, vec![Type::Ipv4Addr]),
        ips.into_iter()
            .map(|ip| Element::key(vec![Value::Ipv4(ip)]))
            .collect(),
    )
}

/// `meta l4proto udp th dport 4789 ip saddr @node-ips ip daddr @node-ips notrack`.
fn untrack_tunnel() -> Rule {
    let in_nodes = |key| Stmt::InSet {
        keys: vec![key],
        set: NODE_IPS_SET.to_string(),
        negate: false,
    };
    Rule::new(vec![
        Stmt::Match {
            expr: Expr::MetaL4Proto,
            op: CmpOp::Eq,
            value: Value::UDP,
        },
        Stmt::Match {
            expr: Expr::ThDport,
            op: CmpOp::Eq,
            value: Value::Port(VXLAN_PORT),
        },
        in_nodes(Expr::IpSaddr),
        in_nodes(Expr::IpDaddr),
        Stmt::NoTrack,
    ])
}
