//! Pure: pod CIDR per node — the next free subnet of the cluster CIDR, never two nodes the
//! same (the node IPAM controller's "range allocator").
//!
//! The free list is not stored: it is derived from the CIDRs the existing nodes hold, so a
//! deleted node's CIDR is free again the moment the node is gone and a restart cannot leak.

use ipnet::IpNet;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("node CIDR prefix /{prefix} does not fit in cluster CIDR {cluster}")]
    BadPrefix { cluster: IpNet, prefix: u8 },
    #[error("cluster CIDR {cluster} has no free /{prefix} left ({used} in use)")]
    Exhausted {
        cluster: IpNet,
        prefix: u8,
        used: usize,
    },
}

/// The first `/prefix` subnet of `cluster` that overlaps none of `used`.
pub fn plan_pod_cidr(cluster: IpNet, prefix: u8, used: &[IpNet]) -> Result<IpNet, CidrError> {
    let subnets = cluster
        .subnets(prefix)
        .map_err(|_| CidrError::BadPrefix { cluster, prefix })?;
    for candidate in subnets {
        if !used.iter().any(|u| overlaps(u, &candidate)) {
            return Ok(candidate);
        }
    }
    Err(CidrError::Exhausted {
        cluster,
        prefix,
        used: used.len(),
    })
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn first_then_next() {
        let c = net("10.244.0.0/16");
        assert_eq!(plan_pod_cidr(c, 24, &[]).unwrap(), net("10.244.0.0/24"));
        assert_eq!(
            plan_pod_cidr(c, 24, &[net("10.244.0.0/24")]).unwrap(),
            net("10.244.1.0/24")
        );
    }

    #[test]
    fn reuses_a_freed_hole() {
        let c = net("10.244.0.0/16");
        let used = [net("10.244.0.0/24"), net("10.244.2.0/24")];
        assert_eq!(plan_pod_cidr(c, 24, &used).unwrap(), net("10.244.1.0/24"));
    }

    #[test]
    fn overlapping_foreign_cidr_is_avoided() {
        let c = net("10.244.0.0/16");
        // A node registered by hand with a /23 covers two /24s.
        let used = [net("10.244.0.0/23")];
        assert_eq!(plan_pod_cidr(c, 24, &used).unwrap(), net("10.244.2.0/24"));
    }

    #[test]
    fn exhaustion_and_bad_prefix() {
        let c = net("10.244.0.0/23");
        let used = [net("10.244.0.0/24"), net("10.244.1.0/24")];
        assert!(matches!(
            plan_pod_cidr(c, 24, &used),
            Err(CidrError::Exhausted { used: 2, .. })
        ));
        assert!(matches!(
            plan_pod_cidr(c, 16, &[]),
            Err(CidrError::BadPrefix { .. })
        ));
    }

    #[test]
    fn allocating_all_gives_distinct_cidrs() {
        let c = net("10.0.0.0/20");
        let mut used = Vec::new();
        for _ in 0..16 {
            let n = plan_pod_cidr(c, 24, &used).unwrap();
            assert!(!used.contains(&n));
            used.push(n);
        }
        assert!(plan_pod_cidr(c, 24, &used).is_err());
        used.remove(5);
        assert_eq!(plan_pod_cidr(c, 24, &used).unwrap(), net("10.0.5.0/24"));
    }
}
