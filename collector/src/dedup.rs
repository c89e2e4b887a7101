//! Deduplication by `(device_id, seq)`, seq conflicts and bounded per-device state.
//!
//! Per device the collector keeps the seqs already landed (`seen`) and the seqs reported or
//! declared lost (`lost`), each an [`IntervalSet`] of disjoint intervals in a `BTreeMap`
//! (O(log n) inserts). Agents number readings 1, 2, 3, … and publish them mostly in order,
//! so `seen` is almost always one interval; each seq still missing in the middle adds one.
//!
//! **Bounded.** The two sets together may hold at most `max_open_holes` intervals per device
//! (collector config, default 64). Past that, the lowest intervals are forgotten: the
//! device's `floor` rises over them, and the hole just above the floor (the oldest one) is
//! declared `missing` at once (when hole detection is on). Below the floor the collector no
//! longer knows which seqs it landed: a reading there is landed again (never dropped; the
//! readers of `raw/` deduplicate by `(device_id, seq)`) unless it is a seq regression.
//!
//! **Content history.** For the [`CONTENT_HISTORY`] highest seqs landed, a fingerprint
//! (CRC-32 of channel, kind, unit, ts and value) is kept. A seq among them that arrives again
//! with another fingerprint is a `seq_conflict`. A seq already landed (or below the floor)
//! that arrives with a `ts` newer than any reading the device ever landed cannot be a
//! redelivery (a redelivered reading carries the `ts` it had): it is a `seq_regression`, an
//! agent that restarted from 1 after losing its buffer and its seq lease, or two agents
//! sharing one identity. Neither is landed; both go to the dead letters.
//!
//! Memory per device: ≈ 150 bytes (map entry, id, fields) + 16 × [`CONTENT_HISTORY`] bytes of
//! history + ≈ 40 bytes per interval (B-tree entry) × at most `max_open_holes`: ≈ 450 bytes
//! for a device publishing in order, ≈ 3 KB at the cap. The checkpoint stores the same with
//! varints (≈ 200 bytes for a device in order, under 2 KB at the cap): proportional to the
//! number of devices, whatever holes a device creates.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Number of the highest seqs per device whose content fingerprint is kept.
pub const CONTENT_HISTORY: usize = 16;

/// A set of `u64`, stored as disjoint, non-adjacent inclusive intervals (start → end).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IntervalSet {
    map: BTreeMap<u64, u64>,
}

impl Serialize for IntervalSet {
    /// As a sequence of `(start, end)` pairs, ascending (the checkpoint's format).
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.map.iter())
    }
}

impl<'de> Deserialize<'de> for IntervalSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let pairs = Vec::<(u64, u64)>::deserialize(d)?;
        let mut set = IntervalSet::new();
        for (a, b) in pairs {
            set.insert_range(a, b);
        }
        Ok(set)
    }
}

impl IntervalSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// The interval containing `x`, if any.
    fn containing(&self, x: u64) -> Option<(u64, u64)> {
        self.map
            .range(..=x)
            .next_back()
            .filter(|(_, &e)| e >= x)
            .map(|(&s, &e)| (s, e))
    }

    pub fn contains(&self, x: u64) -> bool {
        self.containing(x).is_some()
    }

    /// Whether every element of `[a, b]` is in the set.
    pub fn contains_range(&self, a: u64, b: u64) -> bool {
        self.containing(a).is_some_and(|(_, e)| e >= b)
    }

    /// Inserts `x`; `true` if it was not there (a new reading), `false` for a duplicate.
    pub fn insert(&mut self, x: u64) -> bool {
        // Fast path: the next seq after the highest interval (agents count upwards).
        if let Some(mut last) = self.map.last_entry() {
            let end = *last.get();
            if x > *last.key() && x <= end {
                return false;
            }
            if end.checked_add(1) == Some(x) {
                *last.get_mut() = x;
                return true;
            }
        }
        if self.contains(x) {
            return false;
        }
        self.insert_range(x, x);
        true
    }

    /// Inserts `[a, b]` (either order), merging with overlapping or adjacent intervals.
    pub fn insert_range(&mut self, a: u64, b: u64) {
        let (a, b) = (a.min(b), a.max(b));
        let (mut s, mut e) = (a, b);
        if let Some((&ps, &pe)) = self.map.range(..a).next_back() {
            if pe.saturating_add(1) >= a {
                s = ps;
                e = e.max(pe);
                self.map.remove(&ps);
            }
        }
        let upper = b.saturating_add(1);
        while let Some((&ks, &ke)) = self.map.range(a..).next() {
            if ks > upper {
                break;
            }
            e = e.max(ke);
            self.map.remove(&ks);
        }
        self.map.insert(s, e);
    }

    /// Removes `[a, b]` (either order), splitting an interval that straddles it.
    pub fn remove_range(&mut self, a: u64, b: u64) {
        let (a, b) = (a.min(b), a.max(b));
        if let Some((&ps, &pe)) = self.map.range(..a).next_back() {
            if pe >= a {
                // a > ps ≥ 0, so a - 1 does not underflow.
                self.map.insert(ps, a - 1);
                if pe > b {
                    self.map.insert(b + 1, pe);
                }
            }
        }
        while let Some((&ks, &ke)) = self.map.range(a..).next() {
            if ks > b {
                break;
            }
            self.map.remove(&ks);
            if ke > b {
                self.map.insert(b + 1, ke);
                break;
            }
        }
    }

    /// Removes every element at or below `x`.
    pub fn remove_through(&mut self, x: u64) {
        self.remove_range(0, x);
    }

    pub fn min(&self) -> Option<u64> {
        self.map.first_key_value().map(|(&s, _)| s)
    }

    pub fn max(&self) -> Option<u64> {
        self.map.last_key_value().map(|(_, &e)| e)
    }

    /// The lowest interval.
    pub fn first(&self) -> Option<(u64, u64)> {
        self.map.first_key_value().map(|(&s, &e)| (s, e))
    }

    /// The intervals, ascending.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        self.map.iter().map(|(&s, &e)| (s, e)).collect()
    }

    /// Number of intervals.
    pub fn intervals(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Number of elements (`u128`: `0..=u64::MAX` holds 2^64).
    pub fn len(&self) -> u128 {
        self.map.iter().map(|(&s, &e)| (e - s) as u128 + 1).sum()
    }

    /// The intervals overlapping `[a, b]`, clipped to it, ascending.
    fn overlapping(&self, a: u64, b: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let before = self.containing(a).filter(|&(s, _)| s < a);
        before
            .into_iter()
            .chain(self.map.range(a..=b).map(|(&s, &e)| (s, e)))
            .map(move |(s, e)| (s.max(a), e.min(b)))
    }

    /// The sub-ranges of `[a, b]` in neither `self` nor `other`. O(k log n) for k intervals
    /// overlapping `[a, b]`.
    pub fn holes(&self, other: &IntervalSet, a: u64, b: u64) -> Vec<(u64, u64)> {
        if a > b {
            return Vec::new();
        }
        let mut covered: Vec<(u64, u64)> = self.overlapping(a, b).collect();
        covered.extend(other.overlapping(a, b));
        covered.sort_unstable();
        let mut out = Vec::new();
        let mut next = a;
        for (s, e) in covered {
            if e < next {
                continue;
            }
            if s > next {
                out.push((next, s - 1));
            }
            match e.checked_add(1) {
                Some(n) if n <= b => next = n,
                _ => return out,
            }
        }
        out.push((next, b));
        out
    }
}

/// What a reading's `(device_id, seq)` is to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not landed before (or below the floor, where the collector cannot tell): land it.
    New,
    /// Landed before with the same content (as far as remembered): drop it.
    Duplicate,
    /// Landed before with other content: `seq_conflict`.
    Conflict,
    /// Landed before, but this `ts` is newer than anything the device ever landed: the
    /// agent's seqs went backwards, `seq_regression`.
    Regression,
}

/// What the collector remembers about one device. Part of the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    /// Seqs landed in the raw table (above the floor).
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
    /// Seqs at or below this are forgotten (see the module docs).
    pub floor: Option<u64>,
    /// Newest `ts` (µs) of a reading landed.
    pub max_ts_us: i64,
    /// `(seq, fingerprint)` of the [`CONTENT_HISTORY`] highest seqs landed, ascending.
    pub recent: Vec<(u64, u32)>,
}

impl Default for DeviceState {
    fn default() -> Self {
        DeviceState {
            seen: IntervalSet::new(),
            lost: IntervalSet::new(),
            declared_through: None,
            pending_mark: 0,
            pending_since_us: 0,
            last_seen_us: 0,
            floor: None,
            max_ts_us: i64::MIN,
            recent: Vec::new(),
        }
    }
}

impl DeviceState {
    fn below_floor(&self, seq: u64) -> bool {
        self.floor.is_some_and(|f| seq <= f)
    }

    /// What a reading with `seq`, content `fingerprint` and `ts_us` is (see [`Verdict`]).
    pub fn verdict(&self, seq: u64, fingerprint: u32, ts_us: i64) -> Verdict {
        if let Ok(i) = self.recent.binary_search_by_key(&seq, |&(s, _)| s) {
            return if self.recent[i].1 == fingerprint {
                Verdict::Duplicate
            } else {
                Verdict::Conflict
            };
        }
        let seen = self.seen.contains(seq);
        if (seen || self.below_floor(seq)) && ts_us > self.max_ts_us {
            return Verdict::Regression;
        }
        if seen {
            Verdict::Duplicate
        } else {
            Verdict::New
        }
    }

    /// Records a reading as landed.
    pub fn land(&mut self, seq: u64, fingerprint: u32, ts_us: i64) {
        self.max_ts_us = self.max_ts_us.max(ts_us);
        if self.below_floor(seq) {
            return;
        }
        self.seen.insert(seq);
        match self.recent.binary_search_by_key(&seq, |&(s, _)| s) {
            Ok(_) => {}
            Err(i) if self.recent.len() < CONTENT_HISTORY => {
                self.recent.insert(i, (seq, fingerprint))
            }
            Err(0) => {}
            Err(i) => {
                self.recent.remove(0);
                self.recent.insert(i - 1, (seq, fingerprint));
            }
        }
    }

    /// The parts of `[a, b]` not yet known (neither landed, nor lost, nor below the floor).
    pub fn unknown(&self, a: u64, b: u64) -> Vec<(u64, u64)> {
        let a = match self.floor {
            Some(f) if f >= b => return Vec::new(),
            Some(f) => a.max(f + 1),
            None => a,
        };
        self.seen.holes(&self.lost, a, b)
    }

    /// Keeps at most `cap` (≥ 2) intervals in `seen` and `lost` together by raising the
    /// floor over the lowest ones. Returns the holes passed over that way (the oldest
    /// holes), which the caller declares `missing` when hole detection is on.
    pub fn enforce_cap(&mut self, cap: usize) -> Vec<(u64, u64)> {
        let cap = cap.max(2);
        let mut passed = Vec::new();
        while self.seen.intervals() + self.lost.intervals() > cap {
            let lowest = match (self.seen.first(), self.lost.first()) {
                (Some(s), Some(l)) => s.min(l),
                (Some(s), None) => s,
                (None, Some(l)) => l,
                (None, None) => break,
            };
            let mut floor = self.floor.map_or(lowest.1, |f| f.max(lowest.1));
            self.seen.remove_through(floor);
            self.lost.remove_through(floor);
            let next = match (self.seen.min(), self.lost.min()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let (Some(n), Some(above)) = (next, floor.checked_add(1)) {
                if n > above {
                    passed.push((above, n - 1));
                    floor = n - 1;
                }
            }
            self.floor = Some(floor);
        }
        if let Some(f) = self.floor {
            self.declared_through = Some(self.declared_through.map_or(f, |d| d.max(f)));
            self.recent.retain(|&(s, _)| s > f);
        }
        passed
    }
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
            if now.saturating_sub(d.pending_since_us) < after_us {
                continue;
            }
            // Start below the first seq ever seen: a collector meeting a device at seq
            // 1 000 000 does not declare 1..999 999 missing.
            let from = match d.declared_through {
                Some(t) => t.checked_add(1),
                None => d.seen.min(),
            };
            let to = d.pending_mark;
            if let Some(from) = from.filter(|&f| d.pending_mark > 0 && f <= to) {
                for (a, b) in d.unknown(from, to) {
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
        fn behaves_like_a_hash_set(ops in prop::collection::vec((0u64..200, 0u64..8), 0..300)) {
            let mut set = IntervalSet::new();
            let mut reference = HashSet::new();
            for (x, w) in ops {
                match w {
                    0 => {
                        set.insert_range(x, x + 3);
                        for y in x..=x + 3 { reference.insert(y); }
                    }
                    1 => {
                        set.remove_range(x, x + 5);
                        for y in x..=x + 5 { reference.remove(&y); }
                    }
                    _ => prop_assert_eq!(set.insert(x), reference.insert(x)),
                }
                // invariant: sorted, disjoint, non-adjacent
                for win in set.ranges().windows(2) {
                    prop_assert!(win[0].1 + 1 < win[1].0, "{:?}", set.ranges());
                }
            }
            for y in 0..210 {
                prop_assert_eq!(set.contains(y), reference.contains(&y));
            }
            prop_assert_eq!(set.len(), reference.len() as u128);
            let holes = set.holes(&IntervalSet::new(), 0, 205);
            let mut from_holes = HashSet::new();
            for (a, b) in holes { for y in a..=b { from_holes.insert(y); } }
            let expect: HashSet<u64> = (0..=205).filter(|y| !reference.contains(y)).collect();
            prop_assert_eq!(from_holes, expect);
        }
    }

    proptest! {
        #[test]
        fn holes_of_two_sets_are_what_neither_holds(
            a in prop::collection::vec((0u64..150, 0u64..6), 0..40),
            b in prop::collection::vec((0u64..150, 0u64..6), 0..40),
            lo in 0u64..160,
            len in 0u64..60,
        ) {
            let (mut x, mut y) = (IntervalSet::new(), IntervalSet::new());
            let mut held = HashSet::new();
            for (s, w) in a { x.insert_range(s, s + w); held.extend(s..=s + w); }
            for (s, w) in b { y.insert_range(s, s + w); held.extend(s..=s + w); }
            let hi = lo + len;
            let mut got = HashSet::new();
            let holes = x.holes(&y, lo, hi);
            for w in holes.windows(2) {
                prop_assert!(w[0].1 + 1 < w[1].0, "{:?}", holes);
            }
            for (s, e) in holes { got.extend(s..=e); }
            let want: HashSet<u64> = (lo..=hi).filter(|v| !held.contains(v)).collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn the_cap_never_forgets_above_the_floor(seqs in prop::collection::vec(0u64..500, 0..400), cap in 2usize..10) {
            let mut d = DeviceState::default();
            let mut landed = HashSet::new();
            for s in seqs {
                if d.verdict(s, 0, 0) == Verdict::New {
                    d.land(s, 0, 0);
                    landed.insert(s);
                }
                d.enforce_cap(cap);
                prop_assert!(d.seen.intervals() + d.lost.intervals() <= cap);
                // Above the floor the collector knows exactly what it landed.
                for v in 0..500u64 {
                    if !d.below_floor(v) {
                        prop_assert_eq!(d.seen.contains(v), landed.contains(&v));
                    }
                }
            }
        }
    }

    #[test]
    fn extremes() {
        let mut s = IntervalSet::new();
        assert!(s.insert(u64::MAX));
        assert!(s.insert(0));
        assert!(!s.insert(u64::MAX));
        s.insert_range(1, u64::MAX - 1);
        assert_eq!(s.ranges(), vec![(0, u64::MAX)]);
        assert_eq!(s.len(), 1u128 << 64);
        assert!(s.holes(&IntervalSet::new(), 0, u64::MAX).is_empty());
        s.remove_range(0, u64::MAX);
        assert!(s.is_empty());
        assert_eq!(
            s.holes(&IntervalSet::new(), 0, u64::MAX),
            vec![(0, u64::MAX)]
        );
        s.insert_range(u64::MAX, 0);
        s.remove_range(5, 5);
        assert_eq!(s.ranges(), vec![(0, 4), (6, u64::MAX)]);
    }

    #[test]
    fn serialises_as_the_pairs_it_holds() {
        let mut s = IntervalSet::new();
        s.insert_range(1, 10);
        s.insert_range(20, 30);
        let bytes = postcard::to_allocvec(&s).unwrap();
        // The same bytes as a Vec<(u64, u64)>: checkpoints of earlier versions still load.
        assert_eq!(
            bytes,
            postcard::to_allocvec(&vec![(1u64, 10u64), (20, 30)]).unwrap()
        );
        assert_eq!(postcard::from_bytes::<IntervalSet>(&bytes).unwrap(), s);
    }

    #[test]
    fn interval_set_remove_range_splits() {
        let mut s = IntervalSet::new();
        s.insert_range(1, 10);
        s.insert_range(20, 30);
        s.remove_range(5, 22);
        assert_eq!(s.ranges(), vec![(1, 4), (23, 30)]);
        s.remove_range(1, 100);
        assert!(s.is_empty());
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

    /// Hostile: a device that sends only odd seqs creates a hole per reading. Its state
    /// stays at the cap, the oldest holes are passed over (to be declared missing), in
    /// O(log n) per insert.
    #[test]
    fn hostile_holes_are_capped_per_device() {
        let mut d = DeviceState::default();
        let mut passed = Vec::new();
        for i in 0..200_000u64 {
            let seq = 2 * i + 1;
            assert_eq!(d.verdict(seq, 0, i as i64), Verdict::New);
            d.land(seq, 0, i as i64);
            passed.extend(d.enforce_cap(64));
            assert!(d.seen.intervals() + d.lost.intervals() <= 64);
        }
        // Every hole below the kept intervals was passed over exactly once, oldest first.
        assert_eq!(passed.len(), 200_000 - 64);
        assert_eq!(passed[0], (2, 2));
        assert!(passed.windows(2).all(|w| w[0].1 < w[1].0));
        let floor = d.floor.unwrap();
        assert_eq!(d.seen.min(), Some(floor + 1));
        // Below the floor a reading is landed again, never dropped (readers dedup on read)…
        assert_eq!(d.verdict(3, 0, 0), Verdict::New);
        // …unless its ts is newer than anything landed: a regression.
        assert_eq!(d.verdict(3, 0, i64::MAX), Verdict::Regression);
        let bytes = postcard::to_allocvec(&d).unwrap();
        assert!(bytes.len() < 2000, "{} bytes", bytes.len());
    }

    #[test]
    fn content_history_tells_conflicts_from_duplicates() {
        let mut d = DeviceState::default();
        for seq in 1..=100u64 {
            d.land(seq, seq as u32, seq as i64 * 1000);
        }
        assert_eq!(d.recent.len(), CONTENT_HISTORY);
        assert_eq!(d.recent[0].0, 100 - CONTENT_HISTORY as u64 + 1);
        assert_eq!(d.verdict(100, 100, 100_000), Verdict::Duplicate);
        assert_eq!(d.verdict(100, 7, 100_000), Verdict::Conflict);
        assert_eq!(d.verdict(101, 7, 1), Verdict::New);
        // Older than the history: a redelivery (its old ts) is a duplicate…
        assert_eq!(d.verdict(5, 9, 5_000), Verdict::Duplicate);
        // …a reading newer than everything landed is a regression.
        assert_eq!(d.verdict(5, 9, 100_001), Verdict::Regression);
    }
}
