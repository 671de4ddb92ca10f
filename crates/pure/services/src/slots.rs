//! Pure: the index space of the `endpoints` map. Invariant: live ranges never overlap, and a
//! range is handed out again only after it was freed.
//!
//! Each service port owns a contiguous range of `mark` keys in one shared map
//! (`endpoints: mark : ipv4_addr . inet_service`); its chain picks an endpoint with
//! `numgen random mod N offset BASE`. One flat map instead of kube-proxy's anonymous
//! per-service vmap: no set is created per service, so loading does not hit the kernel's
//! quadratic anonymous-set binding, and an endpoint change is one element delete + add.
//! Ranges are powers of two (at least [`MIN_RANGE`]), so a port that grows or shrinks within
//! its range keeps its base and only its elements and its one rule change.

use std::collections::BTreeMap;

/// Smallest range: most Services have a handful of endpoints.
pub const MIN_RANGE: u32 = 8;

/// Segregated free lists over the u32 key space.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Slots {
    next: u64,
    free: BTreeMap<u32, Vec<u32>>,
}

impl Slots {
    /// The range size for `n` endpoints.
    pub fn range_for(n: usize) -> u32 {
        let n = u32::try_from(n).unwrap_or(u32::MAX).max(MIN_RANGE);
        n.checked_next_power_of_two().unwrap_or(1 << 31)
    }

    /// A base for a range of `size` (a power of two), aligned to `size` (so a range never
    /// straddles a map shard window smaller than itself); `None` when the space is
    /// exhausted. The gap an alignment skips is not reused: with sizes handed out mostly
    /// at the minimum it stays small.
    pub fn alloc(&mut self, size: u32) -> Option<u32> {
        if let Some(base) = self.free.get_mut(&size).and_then(Vec::pop) {
            return Some(base);
        }
        let base = self.next.next_multiple_of(u64::from(size));
        let end = base + u64::from(size);
        if end > u64::from(u32::MAX) + 1 {
            return None;
        }
        self.next = end;
        Some(base as u32)
    }

    pub fn free(&mut self, base: u32, size: u32) {
        self.free.entry(size).or_default().push(base);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_powers_of_two_and_reused_after_free() {
        assert_eq!(Slots::range_for(0), 8);
        assert_eq!(Slots::range_for(8), 8);
        assert_eq!(Slots::range_for(9), 16);
        assert_eq!(Slots::range_for(5000), 8192);
        let mut s = Slots::default();
        let a = s.alloc(8).unwrap();
        let b = s.alloc(16).unwrap();
        let c = s.alloc(8).unwrap();
        assert_eq!((a, b, c), (0, 16, 32), "aligned to their size");
        s.free(a, 8);
        assert_eq!(s.alloc(16), Some(48), "a freed 8 is not a 16");
        assert_eq!(s.alloc(8), Some(0), "freed range reused");
    }

    #[test]
    fn exhaustion_is_reported() {
        let mut s = Slots::default();
        assert_eq!(s.alloc(1 << 31), Some(0));
        assert_eq!(s.alloc(1 << 31), Some(1 << 31));
        assert_eq!(s.alloc(8), None);
    }
}
