//! Pure: the masquerade ruleset — pod egress leaving the cluster takes the node's
//! address; nothing else is NATed.
//!
//! Contract: podnet's agent owns table `ip podnet-nat` outright (nothing else writes
//! there) and replaces it whole in one `nft -f` transaction (`add table`, `delete table`,
//! then the definition: atomic, so a failing script changes nothing and there is never a
//! moment without the rule; established flows keep their conntrack NAT bindings).
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
//! - VXLAN mode only: chains `tunnel-prerouting` / `tunnel-output` (type filter, priority
//!   raw) mark the overlay's outer packets — UDP to port 4789 between node IPs — `notrack`.
//!   Any nat or ct rule in a namespace switches conntrack on for all its traffic; the outer
//!   packets need no NAT and no state, and tracking them cost measurable throughput
//!   (scripts/bench-dataplane, 2026-11-30: VXLAN 0.89x → 0.93x of plain plumbing in a
//!   4-round run). The inner packets are still tracked (Services, masquerade need it).
//!
//! flannel's equivalent is several iptables rules in shared chains (`FLANNEL-POSTRTG`),
//! re-checked one by one, and it leaves its tunnel traffic tracked; here the whole table
//! is one transaction with a set lookup.

use crate::{Mode, VXLAN_PORT};
use ipnet::Ipv4Net;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// The nftables table the agent owns.
pub const MASQUERADE_TABLE: &str = "podnet-nat";
/// The named set of node IPs in it.
pub const NODE_IPS_SET: &str = "node-ips";
/// The named interval set of masquerade exceptions in it (only with exceptions).
pub const NO_MASQUERADE_SET: &str = "no-masquerade";

/// The `nft -f -` script that atomically replaces table `ip podnet-nat`:
///
/// ```text
/// add table ip podnet-nat
/// delete table ip podnet-nat
/// table ip podnet-nat {
///     set node-ips {
///         type ipv4_addr
///         elements = { 192.168.50.11, 192.168.50.12 }
///     }
///     chain postrouting {
///         type nat hook postrouting priority srcnat; policy accept;
///         ip saddr 10.244.0.0/16 ip daddr != 10.244.0.0/16 ip daddr != @node-ips masquerade
///     }
/// }
/// ```
/// In VXLAN mode the two `tunnel-*` chains follow `postrouting` (see the module doc).
/// With `exceptions`, the interval set `no-masquerade` holds them (aggregated) and the
/// rule gains `ip daddr != @no-masquerade`.
/// Node IPs are sorted and deduplicated, so equal inputs render equal text.
pub fn render_masquerade(
    cluster_cidr: Ipv4Net,
    exceptions: &[Ipv4Net],
    node_ips: &[Ipv4Addr],
    mode: Mode,
) -> String {
    let cidr = cluster_cidr.trunc();
    let mut ips: Vec<Ipv4Addr> = node_ips.to_vec();
    ips.sort();
    ips.dedup();
    let exceptions = Ipv4Net::aggregate(&exceptions.to_vec());
    let t = MASQUERADE_TABLE;
    let mut s = String::new();
    let _ = writeln!(s, "add table ip {t}");
    let _ = writeln!(s, "delete table ip {t}");
    let _ = writeln!(s, "table ip {t} {{");
    let _ = writeln!(s, "\tset {NODE_IPS_SET} {{");
    let _ = writeln!(s, "\t\ttype ipv4_addr");
    if !ips.is_empty() {
        let list: Vec<String> = ips.iter().map(|i| i.to_string()).collect();
        let _ = writeln!(s, "\t\telements = {{ {} }}", list.join(", "));
    }
    let _ = writeln!(s, "\t}}");
    let mut except = String::new();
    if !exceptions.is_empty() {
        let list: Vec<String> = exceptions.iter().map(|n| n.to_string()).collect();
        let _ = writeln!(s, "\tset {NO_MASQUERADE_SET} {{");
        let _ = writeln!(s, "\t\ttype ipv4_addr");
        let _ = writeln!(s, "\t\tflags interval");
        let _ = writeln!(s, "\t\telements = {{ {} }}", list.join(", "));
        let _ = writeln!(s, "\t}}");
        except = format!(" ip daddr != @{NO_MASQUERADE_SET}");
    }
    let _ = writeln!(s, "\tchain postrouting {{");
    let _ = writeln!(
        s,
        "\t\ttype nat hook postrouting priority srcnat; policy accept;"
    );
    let _ = writeln!(
        s,
        "\t\tip saddr {cidr} ip daddr != {cidr} ip daddr != @{NODE_IPS_SET}{except} masquerade"
    );
    let _ = writeln!(s, "\t}}");
    if mode == Mode::Vxlan {
        for (chain, hook) in [
            ("tunnel-prerouting", "prerouting"),
            ("tunnel-output", "output"),
        ] {
            let _ = writeln!(s, "\tchain {chain} {{");
            let _ = writeln!(
                s,
                "\t\ttype filter hook {hook} priority raw; policy accept;"
            );
            let _ = writeln!(
                s,
                "\t\tip saddr @{NODE_IPS_SET} ip daddr @{NODE_IPS_SET} udp dport {VXLAN_PORT} notrack"
            );
            let _ = writeln!(s, "\t}}");
        }
    }
    let _ = writeln!(s, "}}");
    s
}
