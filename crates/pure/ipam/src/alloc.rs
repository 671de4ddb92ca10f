//! Pure: the allocation table and the operations on it (allocate, release, GC).

use crate::config::{Pool, RangeSet};
use crate::config::{from_u128, to_u128};
use crate::{IpamError, Result};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Who holds an address: one attachment (container ID + interface name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

impl Owner {
    pub fn new(container_id: impl Into<String>, ifname: impl Into<String>) -> Self {
        Owner {
            container_id: container_id.into(),
            ifname: ifname.into(),
        }
    }
}

/// An address handed to an owner, with what the pod needs to use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The address with the subnet's prefix length.
    pub address: IpNet,
    pub gateway: IpAddr,
}

/// The allocation table of one network: persisted as JSON by the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Allocations {
    /// Address → holder.
    pub entries: BTreeMap<IpAddr, Owner>,
    /// Range set key → the address reserved last there (the round-robin cursor).
    #[serde(default)]
    pub last_reserved: BTreeMap<String, IpAddr>,
}

impl Allocations {
    /// The addresses `owner` holds, in address order.
    pub fn held_by(&self, owner: &Owner) -> Vec<IpAddr> {
        self.entries
            .iter()
            .filter(|(_, o)| *o == owner)
            .map(|(ip, _)| *ip)
            .collect()
    }

    /// Gives `owner` one address from every range set of `pool`.
    ///
    /// Idempotent: an owner that already holds an address in a set keeps it (a repeated ADD
    /// returns the same address). `requested` are static addresses (CNI_ARGS `IP`, runtime
    /// config `ips`), at most one per set; a set without a request gets the next free
    /// address after its cursor. Returns the leases, one per set, in set order. On error
    /// the table is unchanged.
    pub fn allocate(
        &mut self,
        pool: &Pool,
        owner: &Owner,
        requested: &[IpAddr],
    ) -> Result<Vec<Lease>> {
        let mut wanted: Vec<Option<IpAddr>> = vec![None; pool.sets.len()];
        for ip in requested {
            let i = pool
                .sets
                .iter()
                .position(|s| s.contains(*ip))
                .ok_or(IpamError::OutsideRanges { ip: *ip })?;
            if wanted[i].replace(*ip).is_some() {
                return Err(IpamError::TwoForOneSet {
                    set: pool.sets[i].key(),
                });
            }
        }
        let held = self.held_by(owner);
        let mut picks = Vec::with_capacity(pool.sets.len());
        for (set, want) in pool.sets.iter().zip(&wanted) {
            let already = held.iter().copied().find(|ip| set.contains(*ip));
            let ip = match (already, want) {
                (Some(ip), None) => ip,
                (Some(ip), Some(w)) if ip == *w => ip,
                (_, Some(w)) => {
                    if let Some(holder) = self.entries.get(w).filter(|o| *o != owner) {
                        return Err(IpamError::Taken {
                            ip: *w,
                            holder: holder.container_id.clone(),
                        });
                    }
                    *w
                }
                (None, None) => self.next_free(set, &picks)?,
            };
            picks.push(ip);
        }
        // Commit only once every set has an address, so a failure changes nothing.
        let mut leases = Vec::with_capacity(picks.len());
        for (set, ip) in pool.sets.iter().zip(picks) {
            if !held.contains(&ip) {
                self.entries.insert(ip, owner.clone());
                self.last_reserved.insert(set.key(), ip);
            }
            let range = set.range_of(ip).expect("picked inside the set");
            leases.push(Lease {
                address: IpNet::new(ip, range.subnet.prefix_len()).expect("prefix from a subnet"),
                gateway: range.gateway,
            });
        }
        // An owner that held addresses outside every set (the config changed) drops them.
        for ip in held {
            if !pool.sets.iter().any(|s| s.contains(ip)) {
                self.entries.remove(&ip);
            }
        }
        Ok(leases)
    }

    /// The first free address after the set's cursor, wrapping once around all ranges.
    /// Bounded by the number of allocations in the set, never by the size of the range.
    fn next_free(&self, set: &RangeSet, also_taken: &[IpAddr]) -> Result<IpAddr> {
        let v4 = set.is_ipv4();
        let used = |n: u128| {
            let ip = from_u128(n, v4);
            self.entries.contains_key(&ip)
                || also_taken.contains(&ip)
                || set.ranges.iter().any(|r| r.gateway == ip)
        };
        let capacity: u128 = set.ranges.iter().map(|r| r.len()).sum();
        let taken_in_set = self.entries.keys().filter(|ip| set.contains(**ip)).count() as u128
            + set.ranges.len() as u128;
        // Start just after the cursor, in the range that holds it (or at the first range).
        let cursor = self
            .last_reserved
            .get(&set.key())
            .copied()
            .filter(|ip| set.contains(*ip));
        let (mut ri, mut n) = match cursor {
            Some(c) => {
                let ri = set
                    .ranges
                    .iter()
                    .position(|r| r.contains(c))
                    .expect("cursor in set");
                (ri, to_u128(c) + 1)
            }
            None => (0, to_u128(set.ranges[0].start)),
        };
        let steps = capacity.min(taken_in_set + 1);
        for _ in 0..=steps {
            let r = &set.ranges[ri];
            if n > to_u128(r.end) {
                ri = (ri + 1) % set.ranges.len();
                n = to_u128(set.ranges[ri].start);
            }
            if !used(n) {
                return Ok(from_u128(n, v4));
            }
            n += 1;
        }
        Err(IpamError::Exhausted { set: set.key() })
    }

    /// Releases everything `owner` holds; returns what was released.
    pub fn release(&mut self, owner: &Owner) -> Vec<IpAddr> {
        let held = self.held_by(owner);
        for ip in &held {
            self.entries.remove(ip);
        }
        held
    }

    /// Releases every allocation whose owner is not in `valid` (CNI GC); returns what was
    /// released, with its former owner.
    pub fn retain_valid(&mut self, valid: &BTreeSet<Owner>) -> Vec<(IpAddr, Owner)> {
        let stale: Vec<(IpAddr, Owner)> = self
            .entries
            .iter()
            .filter(|(_, o)| !valid.contains(*o))
            .map(|(ip, o)| (*ip, o.clone()))
            .collect();
        for (ip, _) in &stale {
            self.entries.remove(ip);
        }
        stale
    }

    /// Free addresses per range set (gateways excluded), in set order.
    pub fn free_per_set(&self, pool: &Pool) -> Vec<u128> {
        pool.sets
            .iter()
            .map(|set| {
                let capacity: u128 = set
                    .ranges
                    .iter()
                    .map(|r| r.len() - u128::from(r.contains(r.gateway)))
                    .sum();
                let used = self.entries.keys().filter(|ip| set.contains(**ip)).count() as u128;
                capacity.saturating_sub(used)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IpamSpec;
    use proptest::prelude::*;

    fn pool(json: &str) -> Pool {
        serde_json::from_str::<IpamSpec>(json)
            .unwrap()
            .validate()
            .unwrap()
    }

    fn owner(i: usize) -> Owner {
        Owner::new(format!("c{i}"), "eth0")
    }

    #[test]
    fn first_address_skips_gateway_and_repeats_are_idempotent() {
        let p = pool(r#"{"subnet":"10.1.0.0/24"}"#);
        let mut t = Allocations::default();
        let l = t.allocate(&p, &owner(1), &[]).unwrap();
        assert_eq!(l[0].address.to_string(), "10.1.0.2/24");
        assert_eq!(l[0].gateway.to_string(), "10.1.0.1");
        assert_eq!(t.allocate(&p, &owner(1), &[]).unwrap(), l);
        assert_eq!(t.entries.len(), 1);
    }

    #[test]
    fn round_robin_does_not_hand_out_the_address_freed_last() {
        let p = pool(r#"{"subnet":"10.1.0.0/24"}"#);
        let mut t = Allocations::default();
        let a = t.allocate(&p, &owner(1), &[]).unwrap();
        t.allocate(&p, &owner(2), &[]).unwrap();
        t.release(&owner(1));
        let c = t.allocate(&p, &owner(3), &[]).unwrap();
        assert_ne!(c[0].address, a[0].address);
        assert_eq!(c[0].address.to_string(), "10.1.0.4/24");
    }

    #[test]
    fn wraps_around_and_reports_exhaustion() {
        let p = pool(r#"{"subnet":"10.1.0.0/29"}"#); // .2 .. .6 usable (5)
        let mut t = Allocations::default();
        for i in 0..5 {
            t.allocate(&p, &owner(i), &[]).unwrap();
        }
        assert_eq!(t.free_per_set(&p), vec![0]);
        let err = t.allocate(&p, &owner(9), &[]).unwrap_err();
        assert_eq!(
            err,
            IpamError::Exhausted {
                set: "10.1.0.0/29".into()
            }
        );
        t.release(&owner(1)); // frees .3 — behind the cursor (.6), found by wrapping
        let l = t.allocate(&p, &owner(9), &[]).unwrap();
        assert_eq!(l[0].address.to_string(), "10.1.0.3/29");
    }

    #[test]
    fn exhausted_ipv6_slash_64_answers_without_scanning_the_range() {
        let p = pool(
            r#"{"ranges":[[{"subnet":"fd00::/64","rangeStart":"fd00::2","rangeEnd":"fd00::3"}]]}"#,
        );
        let mut t = Allocations::default();
        t.allocate(&p, &owner(1), &[]).unwrap();
        t.allocate(&p, &owner(2), &[]).unwrap();
        assert!(matches!(
            t.allocate(&p, &owner(3), &[]),
            Err(IpamError::Exhausted { .. })
        ));
        let big = pool(r#"{"subnet":"fd00::/64"}"#);
        let mut t = Allocations::default();
        assert_eq!(
            t.allocate(&big, &owner(1), &[]).unwrap()[0]
                .address
                .to_string(),
            "fd00::2/64"
        );
    }

    #[test]
    fn dual_stack_gets_one_address_per_set() {
        let p = pool(r#"{"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"fd00::/64"}]]}"#);
        let mut t = Allocations::default();
        let l = t.allocate(&p, &owner(1), &[]).unwrap();
        assert_eq!(l.len(), 2);
        assert!(l[0].address.addr().is_ipv4() && l[1].address.addr().is_ipv6());
        assert_eq!(t.held_by(&owner(1)).len(), 2);
    }

    #[test]
    fn static_requests_are_checked() {
        let p = pool(r#"{"subnet":"10.1.0.0/24"}"#);
        let mut t = Allocations::default();
        let ip: IpAddr = "10.1.0.50".parse().unwrap();
        assert_eq!(
            t.allocate(&p, &owner(1), &[ip]).unwrap()[0].address.addr(),
            ip
        );
        assert!(matches!(
            t.allocate(&p, &owner(2), &[ip]),
            Err(IpamError::Taken { .. })
        ));
        let out: IpAddr = "10.9.0.1".parse().unwrap();
        assert!(matches!(
            t.allocate(&p, &owner(2), &[out]),
            Err(IpamError::OutsideRanges { .. })
        ));
        let before = t.clone();
        let two = ["10.1.0.60".parse().unwrap(), "10.1.0.61".parse().unwrap()];
        assert!(matches!(
            t.allocate(&p, &owner(3), &two),
            Err(IpamError::TwoForOneSet { .. })
        ));
        assert_eq!(t, before, "a failed allocation changes nothing");
    }

    #[test]
    fn gc_keeps_only_valid_attachments() {
        let p = pool(r#"{"subnet":"10.1.0.0/24"}"#);
        let mut t = Allocations::default();
        for i in 0..4 {
            t.allocate(&p, &owner(i), &[]).unwrap();
        }
        let valid: BTreeSet<Owner> = [owner(1), owner(3)].into_iter().collect();
        let gone = t.retain_valid(&valid);
        assert_eq!(gone.len(), 2);
        assert_eq!(t.entries.len(), 2);
        assert!(t.entries.values().all(|o| valid.contains(o)));
    }

    #[test]
    fn table_round_trips_through_json() {
        let p = pool(r#"{"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"fd00::/64"}]]}"#);
        let mut t = Allocations::default();
        t.allocate(&p, &owner(1), &[]).unwrap();
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<Allocations>(&json).unwrap(), t);
    }

    proptest! {
        /// Any interleaving of allocations and releases keeps addresses unique, inside the
        /// range, off the gateway, and the free count consistent.
        #[test]
        fn never_hands_out_one_address_twice(ops in proptest::collection::vec((0usize..40, any::<bool>()), 1..300)) {
            let p = pool(r#"{"subnet":"10.1.0.0/27"}"#);
            let mut t = Allocations::default();
            for (who, alloc) in ops {
                if alloc {
                    let _ = t.allocate(&p, &owner(who), &[]);
                } else {
                    t.release(&owner(who));
                }
                let owners: BTreeSet<&Owner> = t.entries.values().collect();
                prop_assert_eq!(owners.len(), t.entries.len());
                for ip in t.entries.keys() {
                    prop_assert!(p.sets[0].contains(*ip));
                    prop_assert_ne!(ip.to_string(), "10.1.0.1");
                }
                prop_assert_eq!(t.free_per_set(&p)[0] as usize + t.entries.len(), 29);
            }
        }
    }
}
