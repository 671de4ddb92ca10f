//! Pure: names podnet gives kernel objects. One helper per kind, unit-tested at the
//! kernel's length limit (15 bytes for interface names).

/// The host-side veth of an attachment: `pn` + 12 hex digits of a hash of
/// (container ID, interface name). Deterministic, so DEL and GC find it without state, and
/// 14 bytes, inside IFNAMSIZ-1 = 15.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let h = fnv1a64(&[container_id.as_bytes(), b"/", ifname.as_bytes()]);
    format!("pn{:012x}", h >> 16)
}

/// Is `name` shaped like a host veth podnet made?
pub fn is_host_veth_name(name: &str) -> bool {
    name.len() == 14 && name.starts_with("pn") && name[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// The name a host veth takes when DEL retires it: `pnz` + the same 12 hex digits (15
/// bytes). Both ends are renamed at once, so the attachment's names are free again the
/// moment DEL returns, while the kernel's slow part of deleting the pair runs in the
/// background (see the CNI bridge module).
pub fn tombstone_name(host_veth: &str) -> String {
    format!("pnz{}", host_veth.get(2..).unwrap_or_default())
}

/// Is `name` shaped like a retired veth ([`tombstone_name`])?
pub fn is_tombstone_name(name: &str) -> bool {
    name.len() == 15 && name.starts_with("pnz") && name[3..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// A stable, locally administered unicast MAC for a bridge. Setting the bridge's MAC
/// explicitly stops the kernel from re-deriving it from the lowest port MAC whenever a
/// port comes or goes — which would silently invalidate every pod's ARP entry for the
/// gateway.
pub fn bridge_mac(bridge: &str) -> [u8; 6] {
    let h = fnv1a64(&[b"bridge/", bridge.as_bytes()]).to_be_bytes();
    [0x02, h[0], h[1], h[2], h[3], h[4]]
}

fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_fit_and_differ() {
        let long_id = "f".repeat(64);
        let a = host_veth_name(&long_id, "eth0");
        let b = host_veth_name(&long_id, "eth1");
        assert_eq!(a.len(), 14);
        assert!(a.len() <= 15);
        assert_ne!(a, b);
        assert_eq!(a, host_veth_name(&long_id, "eth0"));
        assert!(is_host_veth_name(&a));
        assert!(!is_host_veth_name("podnet0"));
        assert_eq!(host_veth_name("", "").len(), 14);
        let t = tombstone_name(&a);
        assert_eq!(t.len(), 15);
        assert!(is_tombstone_name(&t));
        assert!(!is_host_veth_name(&t));
        assert!(!is_tombstone_name(&a));
        assert_eq!(&t[3..], &a[2..]);
    }

    #[test]
    fn bridge_mac_is_local_unicast() {
        let m = bridge_mac("podnet0");
        assert_eq!(m[0] & 0b11, 0b10);
        assert_ne!(m, bridge_mac("podnet1"));
    }
}
