//! Pure: Service address allocation — cluster IPs from the service CIDR and node ports from
//! the node-port range, the first free one (as the API server's bitmap allocators do, but
//! sequential rather than random so tests are deterministic).
//!
//! Cluster IPs keep the API server's reserved static band (KEP-3070, GA in 1.26): the lowest
//! `min(max(16, size/16), 256)` addresses of the range are handed out dynamically only once
//! the rest is full, so addresses picked by hand — `10.96.0.10` for kube-dns — stay free.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;

/// The first free host address of `cidr` above the static band, else the first free one in
/// it (network and broadcast excluded). `None` when the CIDR is full.
pub fn plan_cluster_ip(cidr: IpNet, used: &BTreeSet<IpAddr>) -> Option<IpAddr> {
    let band = static_band(cidr);
    let offset = |ip: &IpAddr| as_u128(*ip) - as_u128(cidr.network());
    // The network address is never handed out (IPv6's hosts() includes it).
    let hosts = || cidr.hosts().filter(|ip| offset(ip) > 0);
    let free = |ip: &IpAddr| !used.contains(ip);
    hosts()
        .skip_while(|ip| offset(ip) < band)
        .find(free)
        .or_else(|| hosts().take_while(|ip| offset(ip) < band).find(free))
}

fn as_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The size of the reserved static band of a service range (KEP-3070).
pub fn static_band(cidr: IpNet) -> u128 {
    let bits = u32::from(cidr.max_prefix_len() - cidr.prefix_len());
    let size = 1u128.checked_shl(bits).unwrap_or(u128::MAX);
    (size / 16).clamp(16, 256)
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
    fn dynamic_cluster_ips_leave_the_static_band_until_the_rest_is_full() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let cidr: IpNet = "10.96.0.0/12".parse().unwrap();
        assert_eq!(static_band(cidr), 256);
        assert_eq!(
            plan_cluster_ip(cidr, &BTreeSet::new()),
            Some(ip("10.96.1.0"))
        );
        // A /28 (16 addresses) is all band: allocation falls back to it.
        let small: IpNet = "10.0.0.0/28".parse().unwrap();
        assert_eq!(
            plan_cluster_ip(small, &BTreeSet::new()),
            Some(ip("10.0.0.1"))
        );
        // A /24: band 16; 10.0.0.16.. first, then the band once the rest is used.
        let c24: IpNet = "10.0.0.0/24".parse().unwrap();
        let mut used: BTreeSet<IpAddr> = BTreeSet::new();
        assert_eq!(plan_cluster_ip(c24, &used), Some(ip("10.0.0.16")));
        used.extend((16..255).map(|i| ip(&format!("10.0.0.{i}"))));
        assert_eq!(plan_cluster_ip(c24, &used), Some(ip("10.0.0.1")));
        let v6: IpNet = "fd00:10:96::/108".parse().unwrap();
        assert_eq!(
            plan_cluster_ip(v6, &BTreeSet::new()),
            Some(ip("fd00:10:96::100"))
        );
    }

    #[test]
    fn node_ports() {
        let mut used = BTreeSet::from([30000, 30001]);
        assert_eq!(plan_node_port((30000, 30002), &used), Some(30002));
        used.insert(30002);
        assert_eq!(plan_node_port((30000, 30002), &used), None);
    }
}
