//! Pure: the pod-to-pod fast path — table `netdev podnet-fastpath`.
//!
//! Packets between pods skip the node's IP stack: a netdev `ingress` chain on each local
//! pod's host veth sends a pod's packet for a peer node's pod CIDR straight to the next
//! hop (`fwd ip to … device …`: TTL decremented, neighbour resolved, as the IP forward
//! path would), and one on the peer-facing device (the VXLAN device, or in host-gw mode
//! the underlay link) sends a peer pod's packet for a local pod straight to the bridge.
//! A packet from one local pod to another is sent to the bridge the same way (as if the
//! node routed it): bridged, it would meet conntrack through br_netfilter
//! (`bridge-nf-call-iptables`, which same-node Service replies need). None of these
//! packets is seen by conntrack, the IP hooks or the routing code; without the fast path
//! each costs every node it crosses a conntrack lookup and the walk of every IP base chain
//! (measured in docs/benchmarks.md). The one visible difference: same-node packets arrive
//! with TTL one less and the bridge's MAC as source, as routed packets do.
//!
//! ```text
//! table netdev podnet-fastpath
//!   set slow         pods whose packets keep the full path (see below)
//!   set peer-cidrs   the peers' pod CIDRs                           (interval)
//!   map next-hops    peer pod CIDR → next hop (the route's gateway)  (interval)
//!   chain pod-<veth> filter hook ingress device <veth>: jump to-peers   (one per local pod)
//!   chain to-peers   FOR-A-LOCAL-POD ip saddr LOCAL ip ttl > 1
//!                    ip saddr != @slow ip daddr != @slow fwd ip to ip daddr device BRIDGE
//!                    ip daddr @peer-cidrs ip saddr LOCAL ip ttl > 1
//!                    ip saddr != @slow ip daddr != @slow
//!                    fwd ip to ip daddr map @next-hops device PEER-DEVICE
//!   chain from-peers filter hook ingress device PEER-DEVICE:
//!                    FOR-A-LOCAL-POD ip saddr @peer-cidrs ip ttl > 1
//!                    ip saddr != @slow ip daddr != @slow fwd ip to ip daddr device BRIDGE
//!   FOR-A-LOCAL-POD: ip daddr LOCAL ip daddr != NETWORK ip daddr != GATEWAY
//!                    ip daddr != BROADCAST
//! ```
//!
//! What keeps it correct — conntrack is needed on a node only for what that node itself
//! NATs or filters statefully, so each node decides for its own packets, and decides the
//! same way for both directions of a flow (every condition is symmetric in source and
//! destination: a flow is fast in both directions on a node, or in neither):
//! - **Services**: a pod's connection to a Service is DNATed on the client's node, and its
//!   replies must meet that conntrack entry there to be un-NATed. Every Service endpoint
//!   address of the cluster is in `slow` on every node (the agent adds it before the
//!   Services table can DNAT to it, and removes it only after conntrack holds no DNATed
//!   flow to it). Traffic to a cluster IP, a node port or an external IP never matches
//!   (its destination is no pod CIDR).
//! - **NetworkPolicy**: every local pod a policy isolates is in `slow`, so its packets
//!   meet the policy table and conntrack's `established` state as before.
//! - **Masquerade** applies to traffic leaving the cluster CIDR only; none of it matches.
//! - Packets the IP stack must answer stay there: TTL about to expire (time exceeded),
//!   packets for the node's own addresses in its pod CIDR (network address: the VXLAN
//!   device's; gateway: the bridge's) or its broadcast address, anything not IPv4.
//! - The bridge keeps learning the pods' MACs although their fast packets never cross it:
//!   the node's neighbour entries for the pods it sends to are re-probed every ~30 s
//!   (nothing confirms them from above for forwarded packets), and each pod's ARP answer
//!   crosses the bridge — within its 300 s ageing time, so nothing is flooded.
//! - Until the agent knows every input (the peers and devices, and the Services and
//!   policies when it handles them), the table holds its chains without the two `fwd`
//!   rules ("disarmed"): everything takes the full path. A flow moving from one path to
//!   the other is picked up by conntrack mid-stream (as after a conntrack flush); only
//!   flows no node NATs or filters ever move.
//! - The fast path sends each packet to its device as is (no fragmentation): the pods'
//!   MTU is the path's by construction (`Mode::pod_mtu`), and GSO packets are segmented by
//!   the egress device as after routing.
//!
//! Why netdev `fwd` and not a flowtable: a flowtable offloads flows conntrack has already
//! confirmed (the first packets still take the slow path, and every flow still costs a
//! conntrack entry); this kernel is built without flowtables anyway. Cilium skips the IP
//! stack the same way with eBPF (`bpf_redirect_neigh`); this kernel has no `act_bpf`, and
//! podnet keeps one data-plane language. Why not one chain for all pods: a netdev chain
//! binds to named devices (no wildcard on this kernel, checked on 6.18); the hook follows
//! the name, so a chain may be created before its veth exists and outlives it.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use podnet_nft::{
    BaseChain, Chain, ChainKind, CmpOp, Device, Element, Expr, Family, FwdTo, Hook, Policy, Rule,
    Set, SetData, Stmt, Table, Type, Value, Verdict,
};

/// The fast path's table (netdev family).
pub const FASTPATH_TABLE: &str = "podnet-fastpath";
/// The set of pod addresses whose packets keep the full path.
pub const SLOW_SET: &str = "slow";
const PEER_CIDRS: &str = "peer-cidrs";
const NEXT_HOPS: &str = "next-hops";
const TO_PEERS: &str = "to-peers";
const FROM_PEERS: &str = "from-peers";
/// Prefix of the per-pod base chains: `pod-<host veth>`.
pub const POD_CHAIN_PREFIX: &str = "pod-";
/// The chains' hook priority (netdev ingress; no other podnet chain shares these devices
/// except the tunnel table's, on the underlay link, at raw priority).
const PRIORITY: i32 = 0;

/// What the fast path is built from; everything else in [`render_fastpath`] follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FastPathPlan {
    /// This node's pod CIDR.
    pub pod_cidr: Ipv4Net,
    /// The bridge the local pods hang on.
    pub bridge: Device,
    /// Where packets for the peers go: the VXLAN device, or the underlay link.
    pub peer_device: Device,
    /// Peer pod CIDR → next hop (the gateway of podnet's route to it).
    pub next_hops: Vec<(Ipv4Net, Ipv4Addr)>,
    /// The host veths of the local pods.
    pub pod_links: BTreeSet<String>,
    /// Whether the `fwd` rules are in (see the module doc: "disarmed").
    pub armed: bool,
}

/// The table without the elements of `slow` (the agent keeps those apart: at 50k
/// Services they are the bulk of the table and change one by one).
pub fn render_fastpath(plan: &FastPathPlan) -> Table {
    let mut t = Table::new(Family::Netdev, FASTPATH_TABLE);
    t.sets
        .push((Set::new(SLOW_SET, vec![Type::Ipv4Addr]), Vec::new()));
    let mut hops = plan.next_hops.clone();
    hops.sort();
    hops.dedup_by_key(|h| h.0);
    let mut cidrs = Set::new(PEER_CIDRS, vec![Type::Ipv4Addr]);
    cidrs.flags.interval = true;
    t.sets.push((
        cidrs,
        hops.iter()
            .map(|(c, _)| Element::key(vec![prefix(*c)]))
            .collect(),
    ));
    let mut map = Set::map(
        NEXT_HOPS,
        vec![Type::Ipv4Addr],
        SetData::Types(vec![Type::Ipv4Addr]),
    );
    map.flags.interval = true;
    t.sets.push((
        map,
        hops.iter()
            .map(|(c, gw)| Element::values(vec![prefix(*c)], vec![Value::Ipv4(*gw)]))
            .collect(),
    ));

    let local = prefix(plan.pod_cidr);
    let slow = |key| Stmt::InSet {
        keys: vec![key],
        set: SLOW_SET.into(),
        negate: true,
    };
    let ttl = Stmt::Match {
        expr: Expr::IpTtl,
        op: CmpOp::Gt,
        value: Value::Byte(1),
    };
    let to_peers = Rule::new(vec![
        Stmt::InSet {
            keys: vec![Expr::IpDaddr],
            set: PEER_CIDRS.into(),
            negate: false,
        },
        m(Expr::IpSaddr, CmpOp::Eq, local.clone()),
        ttl.clone(),
        slow(Expr::IpSaddr),
        slow(Expr::IpDaddr),
        Stmt::Fwd {
            to: FwdTo::Map {
                keys: vec![Expr::IpDaddr],
                map: NEXT_HOPS.into(),
            },
            device: plan.peer_device.clone(),
        },
    ]);
    // The node's own addresses in its pod CIDR and the broadcast address stay with the
    // IP stack (`fwd` would look for them as neighbours on the bridge).
    let network = plan.pod_cidr.network();
    let gateway = Ipv4Addr::from(u32::from(network).wrapping_add(1));
    let for_a_local_pod = || {
        vec![
            m(Expr::IpDaddr, CmpOp::Eq, local.clone()),
            m(Expr::IpDaddr, CmpOp::Ne, Value::Ipv4(network)),
            m(Expr::IpDaddr, CmpOp::Ne, Value::Ipv4(gateway)),
            m(
                Expr::IpDaddr,
                CmpOp::Ne,
                Value::Ipv4(plan.pod_cidr.broadcast()),
            ),
        ]
    };
    let to_bridge = || Stmt::Fwd {
        to: FwdTo::Key(Expr::IpDaddr),
        device: plan.bridge.clone(),
    };
    let mut to_local = for_a_local_pod();
    to_local.extend([
        m(Expr::IpSaddr, CmpOp::Eq, local.clone()),
        ttl.clone(),
        slow(Expr::IpSaddr),
        slow(Expr::IpDaddr),
        to_bridge(),
    ]);
    let mut from_peers = for_a_local_pod();
    from_peers.extend([
        Stmt::InSet {
            keys: vec![Expr::IpSaddr],
            set: PEER_CIDRS.into(),
            negate: false,
        },
        ttl,
        slow(Expr::IpSaddr),
        slow(Expr::IpDaddr),
        to_bridge(),
    ]);
    let armed = |rs: Vec<Rule>| if plan.armed { rs } else { Vec::new() };
    t.chains.push((
        Chain::regular(TO_PEERS),
        armed(vec![Rule::new(to_local), to_peers]),
    ));
    t.chains.push((
        Chain::base(FROM_PEERS, ingress(&plan.peer_device.name)),
        armed(vec![Rule::new(from_peers)]),
    ));
    for link in &plan.pod_links {
        t.chains.push((
            Chain::base(pod_chain(link), ingress(link)),
            vec![Rule::new(vec![Stmt::Verdict(Verdict::Jump(
                TO_PEERS.into(),
            ))])],
        ));
    }
    t
}

/// The base chain of a local pod's host veth.
pub fn pod_chain(link: &str) -> String {
    format!("{POD_CHAIN_PREFIX}{link}")
}

/// Elements of `slow`.
pub fn slow_elements(ips: impl IntoIterator<Item = Ipv4Addr>) -> Vec<Element> {
    ips.into_iter()
        .map(|ip| Element::key(vec![Value::Ipv4(ip)]))
        .collect()
}

fn ingress(device: &str) -> BaseChain {
    BaseChain {
        kind: ChainKind::Filter,
        hook: Hook::Ingress,
        priority: PRIORITY,
        policy: Policy::Accept,
        device: Some(device.to_string()),
    }
}

fn prefix(n: Ipv4Net) -> Value {
    Value::Ipv4Prefix(n.network(), n.prefix_len())
}

fn m(expr: Expr, op: CmpOp, value: Value) -> Stmt {
    Stmt::Match { expr, op, value }
}
