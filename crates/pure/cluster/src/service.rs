//! Pure: Service address allocation — cluster IPs from the service CIDR and node ports from
//! the node-port range, the first free one (as the API server's bitmap allocators do, but
//! sequential rather than random so tests are deterministic).

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;

/// The first host address of `cidr` not in `used` (network and broadcast excluded).
/// `None` when the CIDR is full.
pub fn plan_cluster_ip(cidr: IpNet, used: &BTreeSet<IpAddr>) -> Option<IpAddr> {
    cidr.hosts().find(|ip| !used.contains(ip))
}

/// The first port of the inclusive `range` not in `used`.
pub fn plan_node_port(range: (u16, u16), used: &BTreeSet<u16>) -> Option<u16> {
    (range.0..=range.1).find(|p| !used.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ips_skip_used_and_exhaust() {
        let cidr: IpNet = "10.96.0.0/30".parse().unwrap();
        let mut used = BTreeSet::new();
        let a = plan_cluster_ip(cidr, &used).unwrap();
        assert_eq!(a, "10.96.0.1".parse::<IpAddr>().unwrap());
        used.insert(a);
        let b = plan_cluster_ip(cidr, &used).unwrap();
        assert_eq!(b, "10.96.0.2".parse::<IpAddr>().unwrap());
        used.insert(b);
        assert_eq!(plan_cluster_ip(cidr, &used), None);
        used.remove(&a);
        assert_eq!(plan_cluster_ip(cidr, &used), Some(a));
    }

    #[test]
    fn node_ports() {
        let mut used = BTreeSet::from([30000, 30001]);
        assert_eq!(plan_node_port((30000, 30002), &used), Some(30002));
        used.insert(30002);
        assert_eq!(plan_node_port((30000, 30002), &used), None);
    }
}
