//! Pure: a node's desired network plumbing towards its peers — routes (host-gw), VXLAN
//! device, FDB and neighbour entries, the masquerade ruleset, the CNI config — as
//! functions of the nodes (name, InternalIP, podCIDR). No I/O, no Kubernetes types.
//!
//! Data flows `plan_node` → `NodePlan`, then `diff(&KernelState, &NodePlan)` → `Changes`:
//! the only writes a sync makes. A second sync with nothing changed yields no changes.
//!
//! Compared with flannel: flannel's VXLAN backend gives `flannel.1` a random MAC and
//! publishes it in a Node annotation (`flannel.alpha.coreos.com/backend-data`), so every
//! agent must be allowed to write Nodes and a peer is unreachable until the annotation
//! arrives. podnet derives the VTEP MAC from the node name ([`vtep_mac`]): every agent
//! computes every peer's MAC from what it already watches, needs no write access to the
//! API, and a recreated device keeps its MAC (peers' FDB entries stay valid). flannel
//! also recognises its routes by comparing them with its lease list; podnet tags its
//! routes with its own route protocol ([`ROUTE_PROTOCOL`]), so after a restart it finds
//! exactly its own routes in one dump and never touches anyone else's.

mod conflist;
mod fastpath;
mod masquerade;
mod plan;

pub use conflist::render_cni_conflist;
pub use fastpath::{
    FASTPATH_TABLE, FastPathPlan, POD_CHAIN_PREFIX, SLOW_SET, pod_chain, render_fastpath,
    slow_elements,
};
pub use masquerade::{
    MASQUERADE_TABLE, NO_MASQUERADE_SET, NODE_IPS_SET, TUNNEL_TABLE, render_masquerade,
    render_tunnel,
};
pub use plan::{
    Changes, Fdb, KernelState, Neigh, NodeInfo, NodePlan, Route, VxlanDevice, VxlanPlan,
    VxlanState, diff, plan_node,
};

use std::fmt;
use std::str::FromStr;

/// The route protocol podnet's routes carry (`ip route … proto 201`). iproute2's
/// `rt_protos` (Debian bookworm) names 0–4, 8–16, 18, 42, 99, 186–189 and 192; 201 is
/// free there and not used by the usual CNIs (Calico's felix uses 80, BIRD 12).
pub const ROUTE_PROTOCOL: u8 = 201;
/// The VXLAN device's name (≤ 15 bytes, the kernel's IFNAMSIZ − 1).
pub const VXLAN_DEVICE: &str = "podnet.vxlan";
/// The bridge the CNI config names: the local pods' gateway.
pub const POD_BRIDGE: &str = "podnet0";
/// VXLAN network identifier (flannel uses 1 too).
pub const VXLAN_VNI: u32 = 1;
/// The IANA VXLAN port (Linux's own default, 8472, is not).
pub const VXLAN_PORT: u16 = 4789;
/// Bytes VXLAN adds over IPv4: outer IP 20 + UDP 8 + VXLAN 8 + inner Ethernet 14.
pub const VXLAN_OVERHEAD: u32 = 50;

/// How pod traffic crosses between nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Direct routes `podCIDR via nodeIP`: nodes share one L2 segment.
    HostGw,
    /// A VXLAN overlay: any underlay that carries UDP between node IPs.
    Vxlan,
}

impl Mode {
    /// The MTU pods get on an underlay of `underlay_mtu`.
    pub fn pod_mtu(self, underlay_mtu: u32) -> u32 {
        match self {
            Mode::HostGw => underlay_mtu,
            Mode::Vxlan => underlay_mtu.saturating_sub(VXLAN_OVERHEAD),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::HostGw => "host-gw",
            Mode::Vxlan => "vxlan",
        })
    }
}

/// An unknown mode name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown mode {0:?} (expected \"host-gw\" or \"vxlan\")")]
pub struct ParseModeError(pub String);

impl FromStr for Mode {
    type Err = ParseModeError;
    fn from_str(s: &str) -> Result<Mode, ParseModeError> {
        match s {
            "host-gw" => Ok(Mode::HostGw),
            "vxlan" => Ok(Mode::Vxlan),
            other => Err(ParseModeError(other.to_string())),
        }
    }
}

/// The VTEP MAC of node `node_name`: FNV-1a 64 of `"podnet-vtep/" + name` through the
/// splitmix64 finaliser (FNV alone barely moves the high bytes for names differing in
/// the last character), first six bytes, made locally administered unicast (`x2:…`). Deterministic, so peers compute it
/// without annotations; two nodes collide with probability 2⁻⁴⁶ — `plan_node` detects a
/// collision and skips the later peer rather than misdirecting frames.
pub fn vtep_mac(node_name: &str) -> [u8; 6] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in b"podnet-vtep/".iter().chain(node_name.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    let b = h.to_be_bytes();
    [(b[0] & 0xfe) | 0x02, b[1], b[2], b[3], b[4], b[5]]
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_parses_and_prints() {
        assert_eq!("host-gw".parse(), Ok(Mode::HostGw));
        assert_eq!("vxlan".parse(), Ok(Mode::Vxlan));
        assert!("hostgw".parse::<Mode>().is_err());
        assert_eq!(Mode::Vxlan.to_string(), "vxlan");
        assert_eq!(Mode::HostGw.pod_mtu(1500), 1500);
        assert_eq!(Mode::Vxlan.pod_mtu(1500), 1450);
    }

    #[test]
    fn vtep_mac_is_stable_local_unicast_and_distinct() {
        let a = vtep_mac("w1");
        assert_eq!(a, vtep_mac("w1"));
        assert_ne!(a, vtep_mac("w2"));
        assert_eq!(a[0] & 0x01, 0, "unicast");
        assert_eq!(a[0] & 0x02, 0x02, "locally administered");
        // Pinned: agents of different versions must compute the same MAC for a peer.
        assert_eq!(format_mac(a), "6e:b6:62:29:ce:63");
        let (b, c) = (vtep_mac("w2"), vtep_mac("w3"));
        let differing = b.iter().zip(c.iter()).filter(|(x, y)| x != y).count();
        assert!(differing >= 4, "names one letter apart map to distant MACs");
    }

    #[test]
    fn device_name_fits_ifnamsiz() {
        assert!(VXLAN_DEVICE.len() <= 15);
    }
}
