//! Pure: the pod CIDR a node claims for itself when the control plane does not allocate
//! them (podnet's agents: one `coordination.k8s.io` Lease per subnet, named after it) —
//! which subnet to try, and the object name of a subnet and back.
//!
//! Invariant: `plan_claim` never returns a subnet overlapping a taken one, and returns
//! one whenever the cluster CIDR has a free subnet. The API server's name uniqueness, not
//! this function, is what keeps two nodes off one subnet: the plan only picks the
//! candidate to try.

use crate::cidr::CidrError;
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;

/// The prefix of every claim's name.
pub const CLAIM_NAME_PREFIX: &str = "podcidr-";

/// `podcidr-10-244-3-0-24` for 10.244.3.0/24: a valid object name that *is* the subnet,
/// so the API's name uniqueness is subnet uniqueness.
pub fn claim_name(cidr: Ipv4Net) -> String {
    let cidr = cidr.trunc();
    let [a, b, c, d] = cidr.network().octets();
    format!("{CLAIM_NAME_PREFIX}{a}-{b}-{c}-{d}-{}", cidr.prefix_len())
}

/// The subnet a claim's name stands for; `None` unless the name is exactly what
/// [`claim_name`] makes of it (no leading zeros, host bits clear).
pub fn parse_claim_name(name: &str) -> Option<Ipv4Net> {
    let rest = name.strip_prefix(CLAIM_NAME_PREFIX)?;
    let parts: Vec<&str> = rest.split('-').collect();
    let [a, b, c, d, len] = parts[..] else {
        return None;
    };
    let octets = [a, b, c, d].map(|o| o.parse::<u8>().ok());
    let [Some(a), Some(b), Some(c), Some(d)] = octets else {
        return None;
    };
    let net = Ipv4Net::new(Ipv4Addr::new(a, b, c, d), len.parse().ok()?).ok()?;
    (claim_name(net) == name).then_some(net)
}

/// The `/prefix` subnet of `cluster` that `node` should try to claim: the first one that
/// overlaps nothing in `taken`, searching from a place derived from the node's name
/// (FNV-1a of the name, modulo the number of subnets) and wrapping around.
///
/// Why not simply the first free subnet (as `plan_pod_cidr`, the control plane's
/// allocator, does): there one writer decides; here N agents starting together would
/// all try the same subnet first, N−1 fail and try the next, and so on — O(N²)
/// requests. Starting from a name-derived place they spread out and collide only by
/// chance; and a node that lost its claim tends to get the same subnet back. Taken
/// entries of any size are honoured (a hand-set podCIDR that covers several subnets).
pub fn plan_claim(
    cluster: Ipv4Net,
    prefix: u8,
    taken: &[Ipv4Net],
    node: &str,
) -> Result<Ipv4Net, CidrError> {
    let cluster = cluster.trunc();
    if prefix < cluster.prefix_len() || prefix > 32 {
        return Err(CidrError::BadPrefix {
            cluster: cluster.into(),
            prefix,
        });
    }
    let size = 1u64 << (32 - prefix);
    let total = 1u64 << (prefix - cluster.prefix_len());
    let base = u64::from(u32::from(cluster.network()));
    let intervals = merged(taken);
    let start = fnv1a(node) % total;
    for (from, to) in [(start, total), (0, start)] {
        let mut i = from;
        while i < to {
            let lo = base + i * size;
            let hi = lo + size - 1;
            let k = intervals.partition_point(|&(_, end)| end < lo);
            match intervals.get(k) {
                // Overlaps: go on after the end of what it overlaps.
                Some(&(s, end)) if s <= hi => i = (end - base) / size + 1,
                _ => {
                    let addr = Ipv4Addr::from(u32::try_from(lo).expect("inside the cluster"));
                    return Ok(Ipv4Net::new(addr, prefix).expect("prefix checked"));
                }
            }
        }
    }
    Err(CidrError::Exhausted {
        cluster: cluster.into(),
        prefix,
        used: taken.len(),
    })
}

/// Which of `len` equally good candidates `node` should try first (FNV-1a of the name,
/// modulo `len`): agents racing for one of several stale claims spread out, as
/// [`plan_claim`]'s starting place does. `len` must not be 0.
pub fn pick_index(node: &str, len: usize) -> usize {
    (fnv1a(node) % len as u64) as usize
}

/// The taken subnets as sorted, merged, inclusive address intervals.
fn merged(taken: &[Ipv4Net]) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = taken
        .iter()
        .map(|t| {
            let t = t.trunc();
            (
                u64::from(u32::from(t.network())),
                u64::from(u32::from(t.broadcast())),
            )
        })
        .collect();
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if s <= last.1 + 1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// FNV-1a, 64 bits: stable across releases and platforms (a node's starting place must
/// not move when podnet is upgraded).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn names_round_trip_and_only_canonical_names_parse() {
        let n = net("10.244.3.0/24");
        assert_eq!(claim_name(n), "podcidr-10-244-3-0-24");
        assert_eq!(parse_claim_name("podcidr-10-244-3-0-24"), Some(n));
        assert_eq!(claim_name(net("10.244.3.7/24")), "podcidr-10-244-3-0-24");
        for bad in [
            "podcidr-10-244-3-7-24",
            "podcidr-10-244-03-0-24",
            "podcidr-10-244-3-0",
            "podcidr-10-244-3-0-33",
            "podcidr-10-244-3-0-24-1",
            "podcidr-256-0-0-0-8",
            "lease-10-244-3-0-24",
        ] {
            assert_eq!(parse_claim_name(bad), None, "{bad}");
        }
        for n in ["0.0.0.0/0", "10.0.0.0/8", "10.244.255.128/25", "1.2.3.4/32"] {
            assert_eq!(parse_claim_name(&claim_name(net(n))), Some(net(n)));
        }
    }

    #[test]
    fn the_start_depends_on_the_name_and_wraps_around() {
        let c = net("10.244.0.0/16");
        let first = plan_claim(c, 24, &[], "node-a").unwrap();
        assert_eq!(first, plan_claim(c, 24, &[], "node-a").unwrap());
        assert!(c.contains(&first) && first.prefix_len() == 24);
        // Taken: the next one after it.
        let next = plan_claim(c, 24, &[first], "node-a").unwrap();
        assert_eq!(
            u32::from(next.network()),
            (u32::from(first.network()) + 256 - u32::from(c.network())) % 65536
                + u32::from(c.network())
        );
        // Everything from the start to the end taken: wraps to the cluster's first.
        let start = u32::from(first.network());
        let tail: Vec<Ipv4Net> = (start..=u32::from(net("10.244.255.0/24").network()))
            .step_by(256)
            .map(|a| Ipv4Net::new(a.into(), 24).unwrap())
            .collect();
        assert_ne!(
            start,
            u32::from(c.network()),
            "pick a name that does not start at 0"
        );
        assert_eq!(
            plan_claim(c, 24, &tail, "node-a").unwrap(),
            net("10.244.0.0/24")
        );
    }

    #[test]
    fn names_spread_over_the_cluster() {
        let c = net("10.244.0.0/16");
        let starts: BTreeSet<Ipv4Net> = (1..=8)
            .map(|i| plan_claim(c, 24, &[], &format!("node-{i}")).unwrap())
            .collect();
        assert!(starts.len() >= 7, "{starts:?}");
    }

    #[test]
    fn overlapping_taken_of_any_size_is_skipped() {
        let c = net("10.0.0.0/22");
        // Four /24s; a /23 and a /25 cover three of them.
        let taken = [net("10.0.0.0/23"), net("10.0.3.128/25")];
        for node in ["a", "b", "c", "d", "e"] {
            assert_eq!(
                plan_claim(c, 24, &taken, node).unwrap(),
                net("10.0.2.0/24"),
                "{node}"
            );
        }
        // Something outside the cluster takes nothing inside it.
        let outside = [net("192.168.0.0/16"), net("10.0.4.0/24")];
        assert!(c.contains(&plan_claim(c, 24, &outside, "a").unwrap()));
        // A taken supernet of the whole cluster takes everything.
        assert!(matches!(
            plan_claim(c, 24, &[net("10.0.0.0/8")], "a"),
            Err(CidrError::Exhausted { .. })
        ));
    }

    #[test]
    fn claims_one_by_one_fill_the_cluster_without_overlap_then_exhaust() {
        let c = net("10.0.0.0/20");
        let mut taken = Vec::new();
        for i in 0..16 {
            let n = plan_claim(c, 24, &taken, &format!("node-{i}")).unwrap();
            assert!(c.contains(&n));
            assert!(
                !taken
                    .iter()
                    .any(|t: &Ipv4Net| t.contains(&n.network()) || n.contains(&t.network())),
                "{n} overlaps {taken:?}"
            );
            taken.push(n);
        }
        assert!(matches!(
            plan_claim(c, 24, &taken, "node-x"),
            Err(CidrError::Exhausted { used: 16, .. })
        ));
        let freed = taken.remove(5);
        assert_eq!(plan_claim(c, 24, &taken, "node-x").unwrap(), freed);
    }

    #[test]
    fn bad_prefixes_and_the_edges_of_the_address_space() {
        let c = net("10.244.0.0/16");
        assert!(matches!(
            plan_claim(c, 8, &[], "a"),
            Err(CidrError::BadPrefix { prefix: 8, .. })
        ));
        assert!(matches!(
            plan_claim(c, 33, &[], "a"),
            Err(CidrError::BadPrefix { .. })
        ));
        // The whole space in /1s; the top of the space is reachable.
        let all = net("0.0.0.0/0");
        let low = net("0.0.0.0/1");
        assert_eq!(plan_claim(all, 1, &[low], "a").unwrap(), net("128.0.0.0/1"));
        let top = net("255.255.255.255/32");
        let c = net("255.255.255.254/31");
        assert_eq!(
            plan_claim(c, 32, &[net("255.255.255.254/32")], "a").unwrap(),
            top
        );
        assert_eq!(plan_claim(c, 31, &[], "a").unwrap(), c);
    }
}
