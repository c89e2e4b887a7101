//! Where each buffered reading is on its way to being safe (in memory; SQLite holds the
//! readings themselves).
//!
//! ```text
//!            next_batch              PUBACK (success)           confirmation
//!  unsent ─────────────▶ in flight ──────────────────▶ awaiting ─────────────▶ deleted
//!    ▲                      │ connection lost             │ resend due
//!    └──────────────────────┴─────────────────────────────┘
//! ```
//!
//! - *in flight*: published, no PUBACK yet. Never dropped by the disk budget (it may be
//!   acknowledged in a moment), released when the connection is lost.
//! - *awaiting*: the broker took it, the collector has not yet confirmed it landed. It stays
//!   in SQLite and counts against the disk budget; the forwarder resends it when its
//!   confirmation is overdue. A broker that refused the publish (an MQTT 5 reason code) puts
//!   it here too, so it is retried with the same backoff instead of in a tight loop.
//! - a confirmation deletes the row whatever its state.
//!
//! Nothing here is persisted: after a restart every buffered reading is unsent and is sent
//! again, which is harmless (the collector deduplicates by `(device_id, seq)` and confirms
//! duplicates again).

use std::collections::HashSet;
use std::ops::RangeInclusive;
use std::time::Instant;

use rangemap::{RangeInclusiveMap, RangeInclusiveSet};

/// When a reading was first published and how often it has been resent since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentInfo {
    /// First publish (the age of the oldest unconfirmed reading counts from here).
    pub first_sent: Instant,
    /// Times it went back to unsent because its confirmation was overdue.
    pub resends: u32,
}

/// The delivery state of the buffer's readings and gap records (see the module docs).
#[derive(Debug, Default)]
pub struct Delivery {
    in_flight: RangeInclusiveSet<u64>,
    awaiting: RangeInclusiveSet<u64>,
    sent: RangeInclusiveMap<u64, SentInfo>,
    in_flight_gaps: HashSet<i64>,
    awaiting_gaps: HashSet<i64>,
}

fn count(set: &RangeInclusiveSet<u64>) -> u64 {
    set.iter()
        .fold(0u64, |n, r| n.saturating_add(r.end() - r.start() + 1))
}

impl Delivery {
    /// Whether `seq` is in flight or awaiting (not to be taken again).
    pub fn is_taken(&self, seq: u64) -> bool {
        self.in_flight.contains(&seq) || self.awaiting.contains(&seq)
    }

    /// Whether `seq` is in flight (published, no PUBACK yet).
    pub fn is_in_flight(&self, seq: u64) -> bool {
        self.in_flight.contains(&seq)
    }

    /// Whether the gap record `id` is in flight or awaiting.
    pub fn is_gap_taken(&self, id: i64) -> bool {
        self.in_flight_gaps.contains(&id) || self.awaiting_gaps.contains(&id)
    }

    /// The lowest stretch `[lo, hi]` of seqs ≥ `from` that are neither in flight nor
    /// awaiting (`hi` is `u64::MAX` when nothing above is taken).
    pub fn next_free_up(&self, from: u64) -> Option<(u64, u64)> {
        let mut x = from;
        loop {
            match self.covering(x) {
                Some(end) if end == u64::MAX => return None,
                Some(end) => x = end + 1,
                None => {
                    let next = [&self.in_flight, &self.awaiting]
                        .iter()
                        .filter_map(|s| s.overlapping(x..=u64::MAX).next().map(|r| *r.start()))
                        .min();
                    return Some((x, next.map_or(u64::MAX, |n| n - 1)));
                }
            }
        }
    }

    /// The highest stretch `[lo, hi]` of free seqs ≤ `to` (`lo` is 0 when nothing below is
    /// taken).
    pub fn next_free_down(&self, to: u64) -> Option<(u64, u64)> {
        let mut y = to;
        loop {
            let covering = [&self.in_flight, &self.awaiting]
                .iter()
                .filter_map(|s| s.get(&y).map(|r| *r.start()))
                .min();
            match covering {
                Some(0) => return None,
                Some(start) => y = start - 1,
                None => {
                    let prev = [&self.in_flight, &self.awaiting]
                        .iter()
                        .filter_map(|s| s.overlapping(0..=y).next_back().map(|r| *r.end()))
                        .max();
                    return Some((prev.map_or(0, |p| p + 1), y));
                }
            }
        }
    }

    /// End of the taken range that contains `x`, following adjacent ranges of either set.
    fn covering(&self, x: u64) -> Option<u64> {
        let mut end = None;
        let mut at = x;
        loop {
            let e = [&self.in_flight, &self.awaiting]
                .iter()
                .filter_map(|s| s.get(&at).map(|r| *r.end()))
                .max();
            match e {
                Some(e) => {
                    end = Some(e);
                    if e == u64::MAX {
                        return end;
                    }
                    at = e + 1;
                }
                None => return end,
            }
        }
    }

    /// Marks a batch's seqs and gap records in flight.
    pub fn take(&mut self, runs: &[(u64, u64)], gap_ids: &[i64]) {
        for &(a, b) in runs {
            self.in_flight.insert(a..=b);
        }
        self.in_flight_gaps.extend(gap_ids);
    }

    /// The broker took the batch (or refused it, to be retried later): what of it is still
    /// in flight now awaits its confirmation. Returns the most resends any of its seqs has
    /// had, for the resend backoff.
    pub fn published(&mut self, runs: &[(u64, u64)], gap_ids: &[i64], now: Instant) -> u32 {
        let mut resends = 0;
        for &(a, b) in runs {
            let pieces: Vec<RangeInclusive<u64>> = self
                .in_flight
                .overlapping(a..=b)
                .map(|r| (*r.start()).max(a)..=(*r.end()).min(b))
                .collect();
            for p in pieces {
                self.in_flight.remove(p.clone());
                self.awaiting.insert(p.clone());
                let known: Vec<(RangeInclusive<u64>, SentInfo)> = self
                    .sent
                    .overlapping(p.clone())
                    .map(|(r, v)| (r.clone(), *v))
                    .collect();
                for (_, info) in &known {
                    resends = resends.max(info.resends);
                }
                // Seqs published for the first time start their clock now.
                let mut fresh = RangeInclusiveSet::new();
                fresh.insert(p.clone());
                for (r, _) in &known {
                    fresh.remove(r.clone());
                }
                for r in fresh.iter() {
                    self.sent.insert(
                        r.clone(),
                        SentInfo {
                            first_sent: now,
                            resends: 0,
                        },
                    );
                }
            }
        }
        for id in gap_ids {
            if self.in_flight_gaps.remove(id) {
                self.awaiting_gaps.insert(*id);
            }
        }
        resends
    }

    /// The connection is gone: everything in flight is unsent again (awaiting stays).
    pub fn release_in_flight(&mut self) {
        self.in_flight.clear();
        self.in_flight_gaps.clear();
    }

    /// A confirmation is overdue: the batch's awaiting seqs and gap records are unsent
    /// again, and their resend count goes up. Returns how many readings were released and
    /// the lowest released seq.
    pub fn resend(&mut self, runs: &[(u64, u64)], gap_ids: &[i64]) -> (u64, Option<u64>) {
        let (mut n, mut lowest) = (0u64, None::<u64>);
        for &(a, b) in runs {
            let pieces: Vec<RangeInclusive<u64>> = self
                .awaiting
                .overlapping(a..=b)
                .map(|r| (*r.start()).max(a)..=(*r.end()).min(b))
                .collect();
            for p in pieces {
                n += p.end() - p.start() + 1;
                lowest = Some(lowest.map_or(*p.start(), |l| l.min(*p.start())));
                self.awaiting.remove(p.clone());
                let known: Vec<(RangeInclusive<u64>, SentInfo)> = self
                    .sent
                    .overlapping(p.clone())
                    .map(|(r, v)| ((*r.start()).max(*p.start())..=(*r.end()).min(*p.end()), *v))
                    .collect();
                for (r, info) in known {
                    self.sent.insert(
                        r,
                        SentInfo {
                            first_sent: info.first_sent,
                            resends: info.resends.saturating_add(1),
                        },
                    );
                }
            }
        }
        for id in gap_ids {
            self.awaiting_gaps.remove(id);
        }
        (n, lowest)
    }

    /// Whether any seq of `runs` or gap record of `gap_ids` still awaits its confirmation.
    pub fn any_awaiting(&self, runs: &[(u64, u64)], gap_ids: &[i64]) -> bool {
        runs.iter().any(|&(a, b)| self.awaiting.overlaps(&(a..=b)))
            || gap_ids.iter().any(|id| self.awaiting_gaps.contains(id))
    }

    /// `[a, b]` is confirmed (or its rows are gone): forget it in every state. Returns when
    /// the earliest of its seqs was first published, if any was.
    pub fn forget(&mut self, a: u64, b: u64) -> Option<Instant> {
        self.in_flight.remove(a..=b);
        self.awaiting.remove(a..=b);
        let first = self
            .sent
            .overlapping(a..=b)
            .map(|(_, v)| v.first_sent)
            .min();
        self.sent.remove(a..=b);
        first
    }

    /// Gap record `id` is confirmed (or gone).
    pub fn forget_gap(&mut self, id: i64) {
        self.in_flight_gaps.remove(&id);
        self.awaiting_gaps.remove(&id);
    }

    /// Readings awaiting their confirmation.
    pub fn awaiting_count(&self) -> u64 {
        count(&self.awaiting)
    }

    /// Readings in flight.
    pub fn in_flight_count(&self) -> u64 {
        count(&self.in_flight)
    }

    /// When the oldest reading still awaiting its confirmation was first published.
    pub fn oldest_awaiting(&self) -> Option<Instant> {
        self.awaiting
            .iter()
            .flat_map(|r| self.sent.overlapping(r.clone()).map(|(_, v)| v.first_sent))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum State {
        InFlight,
        Awaiting,
    }

    fn free_up_reference(m: &BTreeMap<u64, State>, from: u64, top: u64) -> Option<(u64, u64)> {
        let lo = (from..=top).find(|s| !m.contains_key(s))?;
        let hi = (lo..=top)
            .take_while(|s| !m.contains_key(s))
            .last()
            .unwrap();
        Some((lo, if hi == top { u64::MAX } else { hi }))
    }

    proptest! {
        /// Against a per-seq reference model: every state change, and the free-stretch
        /// search used to take batches without re-reading taken rows.
        #[test]
        fn matches_a_per_seq_model(ops in proptest::collection::vec((0u8..5, 0u64..60, 0u64..6), 1..80)) {
            let top = 80u64;
            let mut d = Delivery::default();
            let mut m: BTreeMap<u64, State> = BTreeMap::new();
            let now = Instant::now();
            for (op, a, len) in ops {
                let b = a + len;
                match op {
                    0 => {
                        // take only free seqs, as next_batch does
                        let free: Vec<u64> = (a..=b).filter(|s| !m.contains_key(s)).collect();
                        let runs: Vec<(u64, u64)> = free.iter().map(|&s| (s, s)).collect();
                        d.take(&runs, &[]);
                        for s in free { m.insert(s, State::InFlight); }
                    }
                    1 => {
                        d.published(&[(a, b)], &[], now);
                        for s in a..=b {
                            if m.get(&s) == Some(&State::InFlight) { m.insert(s, State::Awaiting); }
                        }
                    }
                    2 => {
                        d.resend(&[(a, b)], &[]);
                        for s in a..=b {
                            if m.get(&s) == Some(&State::Awaiting) { m.remove(&s); }
                        }
                    }
                    3 => {
                        d.forget(a, b);
                        for s in a..=b { m.remove(&s); }
                    }
                    _ => {
                        d.release_in_flight();
                        m.retain(|_, st| *st != State::InFlight);
                    }
                }
                for s in 0..=top {
                    prop_assert_eq!(d.is_taken(s), m.contains_key(&s), "seq {}", s);
                    prop_assert_eq!(d.is_in_flight(s), m.get(&s) == Some(&State::InFlight));
                }
                prop_assert_eq!(d.awaiting_count(), m.values().filter(|s| **s == State::Awaiting).count() as u64);
                for from in [0u64, 7, 30, 61] {
                    prop_assert_eq!(d.next_free_up(from), free_up_reference(&m, from, top + 1));
                }
                if d.awaiting_count() > 0 {
                    prop_assert_eq!(d.oldest_awaiting(), Some(now));
                }
            }
        }
    }

    #[test]
    fn free_down_skips_taken_ranges() {
        let mut d = Delivery::default();
        d.take(&[(90, 100), (50, 60)], &[]);
        d.published(&[(50, 60)], &[], Instant::now());
        assert_eq!(d.next_free_down(100), Some((61, 89)));
        assert_eq!(d.next_free_down(95), Some((61, 89)));
        assert_eq!(d.next_free_down(55), Some((0, 49)));
        d.take(&[(0, 49)], &[]);
        assert_eq!(d.next_free_down(60), None);
    }

    #[test]
    fn resends_count_up_and_keep_the_first_send_time() {
        let mut d = Delivery::default();
        let t0 = Instant::now();
        d.take(&[(1, 10)], &[7]);
        assert_eq!(d.published(&[(1, 10)], &[7], t0), 0);
        assert!(d.any_awaiting(&[(1, 10)], &[]));
        assert_eq!(d.resend(&[(1, 10)], &[7]), (10, Some(1)));
        assert!(!d.is_gap_taken(7));
        let t1 = t0 + std::time::Duration::from_secs(5);
        d.take(&[(1, 4)], &[]);
        assert_eq!(d.published(&[(1, 4)], &[], t1), 1);
        assert_eq!(
            d.oldest_awaiting(),
            Some(t0),
            "the age counts from the first send"
        );
        d.forget(1, 4);
        assert_eq!(d.awaiting_count(), 0);
        assert_eq!(d.oldest_awaiting(), None);
    }
}
