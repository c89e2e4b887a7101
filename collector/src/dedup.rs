//! Deduplication by `(device_id, seq)`: per device, the set of seqs already landed, kept as
//! sorted disjoint intervals.
//!
//! Agents number readings 1, 2, 3, … and publish them mostly in order, so a device's seen
//! set is almost always one interval `[first, last]`: 16 bytes plus the `Vec` header. Each
//! seq missing in the middle (out-of-order delivery, a gap) adds one interval (16 bytes)
//! until it is filled. Bound: memory = Σ over devices of (≈ 120 bytes of map entry, id and
//! [`DeviceState`] + 16 bytes × open holes); 100 000 devices with a few holes each ≈ 15 MB.
//! There is no window that forgets old seqs: a redelivery of any age is recognised.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// A set of `u64`, stored as sorted, disjoint, non-adjacent inclusive intervals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntervalSet {
    ranges: Vec<(u64, u64)>,
}

impl IntervalSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Index of the first range whose end is ≥ `x`.
    fn first_ending_at_or_after(&self, x: u64) -> usize {
        self.ranges.partition_point(|&(_, e)| e < x)
    }

    pub fn contains(&self, x: u64) -> bool {
        let i = self.first_ending_at_or_after(x);
        self.ranges.get(i).is_some_and(|&(s, _)| s <= x)
    }

    /// Whether every element of `[a, b]` is in the set.
    pub fn contains_range(&self, a: u64, b: u64) -> bool {
        let i = self.first_ending_at_or_after(a);
        self.ranges.get(i).is_some_and(|&(s, e)| s <= a && e >= b)
    }

    /// Inserts `x`; `true` if it was not there (a new reading), `false` for a duplicate.
    pub fn insert(&mut self, x: u64) -> bool {
        if self.contains(x) {
            return false;
        }
        self.insert_range(x, x);
        true
    }

    /// Inserts `[a, b]` (a ≤ b), merging with overlapping or adjacent ranges.
    pub fn insert_range(&mut self, a: u64, b: u64) {
        let (a, b) = (a.min(b), a.max(b));
        // Ranges that overlap or touch [a, b]: end ≥ a-1 and start ≤ b+1.
        let lo = self.first_ending_at_or_after(a.saturating_sub(1));
        let mut hi = lo;
        let (mut s, mut e) = (a, b);
        while hi < self.ranges.len() && self.ranges[hi].0 <= b.saturating_add(1) {
            s = s.min(self.ranges[hi].0);
            e = e.max(self.ranges[hi].1);
            hi += 1;
        }
        self.ranges.splice(lo..hi, [(s, e)]);
    }

    /// Removes `[a, b]` (a ≤ b), splitting a range that straddles it.
    pub fn remove_range(&mut self, a: u64, b: u64) {
        let (a, b) = (a.min(b), a.max(b));
        let mut kept = Vec::with_capacity(self.ranges.len() + 1);
        for &(s, e) in &self.ranges {
            if e < a || s > b {
                kept.push((s, e));
                continue;
            }
            if s < a {
                kept.push((s, a - 1));
            }
            if e > b {
                kept.push((b + 1, e));
            }
        }
        self.ranges = kept;
    }

    pub fn min(&self) -> Option<u64> {
        self.ranges.first().map(|r| r.0)
    }

    pub fn max(&self) -> Option<u64> {
        self.ranges.last().map(|r| r.1)
    }

    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Number of elements.
    pub fn len(&self) -> u64 {
        self.ranges.iter().map(|(s, e)| e - s + 1).sum()
    }

    /// The sub-ranges of `[a, b]` in neither `self` nor `other`.
    pub fn holes(&self, other: &IntervalSet, a: u64, b: u64) -> Vec<(u64, u64)> {
        if a > b {
            return Vec::new();
        }
        let mut covered = self.clone();
        for &(s, e) in &other.ranges {
            covered.insert_range(s, e);
        }
        let mut out = Vec::new();
        let mut next = a;
        for &(s, e) in &covered.ranges {
            if e < next {
                continue;
            }
            if s > b {
                break;
            }
            if s > next {
                out.push((next, s - 1));
            }
            next = match e.checked_add(1) {
                Some(n) => n,
                None => return out,
            };
            if next > b {
                return out;
            }
        }
        if next <= b {
            out.push((next, b));
        }
        out
    }
}

/// What the collector remembers about one device. Part of the checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    /// Seqs landed in the raw table.
    pub seen: IntervalSet,
    /// Seqs the agent reported lost (gap records), or the collector declared missing.
    pub lost: IntervalSet,
    /// Holes at or below this seq have been examined (declared missing or not).
    pub declared_through: Option<u64>,
    /// The highest seq seen when the current hole-examination period started.
    pub pending_mark: u64,
    /// received_at (µs) when the current period started.
    pub pending_since_us: i64,
    /// received_at (µs) of the latest message.
    pub last_seen_us: i64,
}

/// The dedup and gap state of every device, plus the WAL clock.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupState {
    pub devices: HashMap<String, DeviceState>,
    /// Largest received_at (µs) in the WAL so far: the clock used for hole declaration, so
    /// that replaying the WAL declares exactly the same holes.
    pub clock_us: i64,
}

impl DedupState {
    /// Declares holes that stayed open for `after_us` of WAL time as missing. Each hole is
    /// declared once: at most `after_us` to `2 × after_us` after a later seq arrived.
    /// Returns `(device_id, from_seq, to_seq)`, sorted.
    pub fn declare_missing(&mut self, after_us: i64) -> Vec<(String, u64, u64)> {
        let now = self.clock_us;
        let mut out = Vec::new();
        for (id, d) in self.devices.iter_mut() {
            let Some(max) = d.seen.max() else { continue };
            if now - d.pending_since_us < after_us {
                continue;
            }
            // Start below the first seq ever seen: a collector meeting a device at seq
            // 1 000 000 does not declare 1..999 999 missing.
            let from = match d.declared_through {
                Some(t) => t + 1,
                None => d.seen.min().unwrap_or(1),
            };
            let to = d.pending_mark;
            if d.pending_mark > 0 && from <= to {
                let holes = d.seen.holes(&d.lost, from, to);
                for &(a, b) in &holes {
                    d.lost.insert_range(a, b);
                    out.push((id.clone(), a, b));
                }
                d.declared_through = Some(to);
            }
            d.pending_mark = max;
            d.pending_since_us = now;
        }
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    proptest! {
        #[test]
        fn behaves_like_a_hash_set(ops in prop::collection::vec((0u64..200, 0u64..6), 0..300)) {
            let mut set = IntervalSet::new();
            let mut reference = HashSet::new();
            for (x, w) in ops {
                if w == 0 {
                    // a range insert
                    set.insert_range(x, x + 3);
                    for y in x..=x + 3 { reference.insert(y); }
                } else {
                    prop_assert_eq!(set.insert(x), reference.insert(x));
                }
                // invariant: sorted, disjoint, non-adjacent
                for win in set.ranges().windows(2) {
                    prop_assert!(win[0].1 + 1 < win[1].0, "{:?}", set.ranges());
                }
            }
            for y in 0..210 {
                prop_assert_eq!(set.contains(y), reference.contains(&y));
            }
            prop_assert_eq!(set.len(), reference.len() as u64);
            let holes = set.holes(&IntervalSet::new(), 0, 205);
            let mut from_holes = HashSet::new();
            for (a, b) in holes { for y in a..=b { from_holes.insert(y); } }
            let expect: HashSet<u64> = (0..=205).filter(|y| !reference.contains(y)).collect();
            prop_assert_eq!(from_holes, expect);
        }
    }

    #[test]
    fn extremes() {
        let mut s = IntervalSet::new();
        assert!(s.insert(u64::MAX));
        assert!(s.insert(0));
        assert!(!s.insert(u64::MAX));
        s.insert_range(1, u64::MAX - 1);
        assert_eq!(s.ranges(), &[(0, u64::MAX)]);
        assert!(s.holes(&IntervalSet::new(), 0, u64::MAX).is_empty());
    }

    #[test]
    fn missing_holes_are_declared_once_after_the_grace_period() {
        let mut st = DedupState::default();
        let sec = 1_000_000i64;
        let d = st.devices.entry("d".into()).or_default();
        for s in [10u64, 11, 12, 15, 16] {
            d.seen.insert(s);
        }
        d.lost.insert_range(13, 13); // reported by the agent
        st.clock_us = 100 * sec;
        // First period: sets the mark only.
        assert!(st.declare_missing(60 * sec).is_empty());
        st.clock_us = 130 * sec;
        assert!(
            st.declare_missing(60 * sec).is_empty(),
            "grace period not over"
        );
        st.clock_us = 161 * sec;
        assert_eq!(
            st.declare_missing(60 * sec),
            vec![("d".to_string(), 14, 14)]
        );
        st.clock_us = 300 * sec;
        assert!(
            st.declare_missing(60 * sec).is_empty(),
            "declared only once"
        );
    }
}
