//! Confirmations: the collector telling a device which of its seqs are durable.
//!
//! A broker's PUBACK only says that the broker took a message; the broker can still lose it
//! (a crash before its next save, an ACL that drops it, a full queue, an expired session).
//! So a device keeps every reading until the collector confirms that it has landed:
//!
//! - topic `gridmeter/v1/{device_id}/confirm`, QoS 1, published by the collector;
//! - payload (JSON): `{"v":1,"device_id":"inv-042","seqs":[[1,500],[503,640]],"gaps":[[900,910]]}`,
//!   where `seqs` are inclusive ranges of readings that are durable and `gaps` inclusive
//!   ranges of gap records (`from_seq`, `to_seq`) that are durable.
//!
//! A confirmation is idempotent and may repeat: a redelivered reading that is already landed
//! is confirmed again, so a lost confirmation heals itself with the next resend. See
//! docs/wire-format.md ("Confirmations").

use serde::{Deserialize, Serialize};

use crate::model::DeviceId;

/// Version of the confirmation payload.
pub const VERSION: u32 = 1;

/// Most ranges (`seqs` plus `gaps`) one confirmation message carries; larger sets are split
/// with [`Confirmation::split`]. At about 25 bytes per range that is a 250 KB payload.
pub const MAX_RANGES_PER_MESSAGE: usize = 10_000;

/// The topic the collector publishes `device`'s confirmations on.
pub fn confirm_topic_for(device: &DeviceId) -> String {
    format!("{}{device}/confirm", super::TOPIC_PREFIX)
}

/// A set of seqs as sorted, disjoint, non-adjacent inclusive ranges.
///
/// [`push`](SeqRanges::push) is O(1) for seqs that arrive in ascending order (the common
/// case: an agent numbers and sends its readings in order) and O(log n + k) otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqRanges {
    ranges: Vec<(u64, u64)>,
}

impl SeqRanges {
    /// An empty set.
    pub fn new() -> SeqRanges {
        SeqRanges::default()
    }

    /// Adds one seq.
    pub fn push(&mut self, seq: u64) {
        self.push_range(seq, seq);
    }

    /// Adds the inclusive range `[a, b]` (the bounds may come in either order).
    pub fn push_range(&mut self, a: u64, b: u64) {
        let (a, b) = (a.min(b), a.max(b));
        if let Some(last) = self.ranges.last_mut() {
            if a > last.1.saturating_add(1) {
                self.ranges.push((a, b));
                return;
            }
            if a >= last.0 {
                last.1 = last.1.max(b);
                return;
            }
        } else {
            self.ranges.push((a, b));
            return;
        }
        // Out of order: merge every range that overlaps or touches [a, b].
        let lo = self
            .ranges
            .partition_point(|&(_, e)| e < a.saturating_sub(1));
        let mut hi = lo;
        let (mut s, mut e) = (a, b);
        while hi < self.ranges.len() && self.ranges[hi].0 <= b.saturating_add(1) {
            s = s.min(self.ranges[hi].0);
            e = e.max(self.ranges[hi].1);
            hi += 1;
        }
        self.ranges.splice(lo..hi, [(s, e)]);
    }

    /// Adds every range of `other`.
    pub fn extend(&mut self, other: &SeqRanges) {
        for &(a, b) in &other.ranges {
            self.push_range(a, b);
        }
    }

    /// The ranges, ascending.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Number of seqs in the set (saturating at `u64::MAX`).
    pub fn count(&self) -> u64 {
        self.ranges.iter().fold(0u64, |n, &(a, b)| {
            n.saturating_add((b - a).saturating_add(1))
        })
    }

    /// Whether `seq` is in the set.
    pub fn contains(&self, seq: u64) -> bool {
        self.covers(seq, seq)
    }

    /// Whether every seq of `[a, b]` is in the set.
    pub fn covers(&self, a: u64, b: u64) -> bool {
        let i = self.ranges.partition_point(|&(_, e)| e < a);
        self.ranges.get(i).is_some_and(|&(s, e)| s <= a && e >= b)
    }
}

/// What the collector confirms to one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmation {
    /// The device whose seqs these are.
    pub device_id: DeviceId,
    /// Readings that are durable.
    pub seqs: SeqRanges,
    /// Gap records (by their `from_seq`..`to_seq`) that are durable.
    pub gaps: SeqRanges,
}

/// A confirmation payload that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfirmError {
    #[error("confirmation is not valid JSON of the expected shape: {0}")]
    Json(String),
    #[error("confirmation version {0} is not supported (expected {VERSION})")]
    Version(u32),
    #[error("confirmation device_id: {0}")]
    Device(String),
    #[error("confirmation {field}[{index}]: from {from} is above to {to}")]
    Range {
        field: &'static str,
        index: usize,
        from: u64,
        to: u64,
    },
    #[error("confirmation holds {count} ranges; the limit is {limit}")]
    TooManyRanges { count: usize, limit: usize },
}

#[derive(Serialize, Deserialize)]
struct Wire {
    v: u32,
    device_id: String,
    #[serde(default)]
    seqs: Vec<(u64, u64)>,
    #[serde(default)]
    gaps: Vec<(u64, u64)>,
}

impl Confirmation {
    /// An empty confirmation for `device_id`.
    pub fn new(device_id: DeviceId) -> Confirmation {
        Confirmation {
            device_id,
            seqs: SeqRanges::new(),
            gaps: SeqRanges::new(),
        }
    }

    /// Whether it confirms nothing.
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty() && self.gaps.is_empty()
    }

    /// The JSON payload.
    pub fn encode(&self) -> Vec<u8> {
        let wire = Wire {
            v: VERSION,
            device_id: self.device_id.to_string(),
            seqs: self.seqs.ranges().to_vec(),
            gaps: self.gaps.ranges().to_vec(),
        };
        // Serialising integers and a validated id cannot fail.
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// Splits into messages of at most `max_ranges` ranges each (at least one range each).
    pub fn split(self, max_ranges: usize) -> Vec<Confirmation> {
        let max = max_ranges.max(1);
        if self.seqs.ranges.len() + self.gaps.ranges.len() <= max {
            return vec![self];
        }
        let mut out = Vec::new();
        let mut current = Confirmation::new(self.device_id.clone());
        let mut n = 0;
        let all = self
            .seqs
            .ranges
            .iter()
            .map(|r| (true, *r))
            .chain(self.gaps.ranges.iter().map(|r| (false, *r)));
        for (is_seq, (a, b)) in all {
            if n == max {
                out.push(std::mem::replace(
                    &mut current,
                    Confirmation::new(self.device_id.clone()),
                ));
                n = 0;
            }
            let target = if is_seq {
                &mut current.seqs
            } else {
                &mut current.gaps
            };
            target.ranges.push((a, b));
            n += 1;
        }
        if n > 0 {
            out.push(current);
        }
        out
    }

    /// Reads a payload; at most `max_ranges` ranges are accepted. Ranges are normalised
    /// (sorted and merged); each must have `from <= to`.
    pub fn decode(payload: &[u8], max_ranges: usize) -> Result<Confirmation, ConfirmError> {
        let wire: Wire = serde_json::from_slice(payload).map_err(|e| {
            // serde_json's messages quote at most a short token of the input.
            let mut m = e.to_string();
            m.truncate(200);
            ConfirmError::Json(m)
        })?;
        if wire.v != VERSION {
            return Err(ConfirmError::Version(wire.v));
        }
        let count = wire.seqs.len() + wire.gaps.len();
        if count > max_ranges {
            return Err(ConfirmError::TooManyRanges {
                count,
                limit: max_ranges,
            });
        }
        let device_id =
            DeviceId::new(wire.device_id).map_err(|e| ConfirmError::Device(e.to_string()))?;
        let ranges = |field: &'static str, v: Vec<(u64, u64)>| {
            let mut set = SeqRanges::new();
            for (index, (from, to)) in v.into_iter().enumerate() {
                if from > to {
                    return Err(ConfirmError::Range {
                        field,
                        index,
                        from,
                        to,
                    });
                }
                set.push_range(from, to);
            }
            Ok(set)
        };
        Ok(Confirmation {
            device_id,
            seqs: ranges("seqs", wire.seqs)?,
            gaps: ranges("gaps", wire.gaps)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dev() -> DeviceId {
        DeviceId::new("inv-042").unwrap()
    }

    #[test]
    fn payload_round_trips_and_is_documented_json() {
        let mut c = Confirmation::new(dev());
        for s in (1..=500).chain(503..=640) {
            c.seqs.push(s);
        }
        c.gaps.push_range(900, 910);
        let p = c.encode();
        assert_eq!(
            std::str::from_utf8(&p).unwrap(),
            r#"{"v":1,"device_id":"inv-042","seqs":[[1,500],[503,640]],"gaps":[[900,910]]}"#
        );
        assert_eq!(Confirmation::decode(&p, 100).unwrap(), c);
        assert_eq!(
            confirm_topic_for(&dev()),
            "gridmeter/v1/inv-042/confirm".to_string()
        );
    }

    #[test]
    fn bad_payloads_are_refused_with_short_messages() {
        let long = format!(
            r#"{{"v":1,"device_id":"{}","seqs":[]}}"#,
            "x".repeat(100_000)
        );
        let e = Confirmation::decode(long.as_bytes(), 10).unwrap_err();
        assert!(e.to_string().len() < 300, "{e}");
        assert!(matches!(
            Confirmation::decode(br#"{"v":2,"device_id":"a"}"#, 10),
            Err(ConfirmError::Version(2))
        ));
        assert!(matches!(
            Confirmation::decode(br#"{"v":1,"device_id":"a","seqs":[[5,4]]}"#, 10),
            Err(ConfirmError::Range { index: 0, .. })
        ));
        assert!(matches!(
            Confirmation::decode(br#"{"v":1,"device_id":"a","seqs":[[1,1],[3,3]]}"#, 1),
            Err(ConfirmError::TooManyRanges { count: 2, .. })
        ));
        let e = Confirmation::decode(&vec![b'['; 100_000], 10).unwrap_err();
        assert!(e.to_string().len() < 300, "{e}");
    }

    #[test]
    fn split_keeps_every_range() {
        let mut c = Confirmation::new(dev());
        for i in 0..25u64 {
            c.seqs.push(i * 10);
        }
        for i in 0..7u64 {
            c.gaps.push(i * 10);
        }
        let parts = c.clone().split(10);
        assert_eq!(parts.len(), 4);
        let mut merged = Confirmation::new(dev());
        for p in &parts {
            assert!(p.seqs.ranges().len() + p.gaps.ranges().len() <= 10);
            merged.seqs.extend(&p.seqs);
            merged.gaps.extend(&p.gaps);
        }
        assert_eq!(merged, c);
    }

    proptest! {
        #[test]
        fn seq_ranges_equal_a_btreeset(ops in proptest::collection::vec((0u64..200, 0u64..8), 0..60)) {
            let mut set = SeqRanges::new();
            let mut reference = std::collections::BTreeSet::new();
            for (a, len) in ops {
                set.push_range(a, a + len);
                reference.extend(a..=a + len);
            }
            let expanded: Vec<u64> = set.ranges().iter().flat_map(|&(a, b)| a..=b).collect();
            prop_assert_eq!(expanded, reference.iter().copied().collect::<Vec<_>>());
            for w in set.ranges().windows(2) {
                prop_assert!(w[0].1 + 1 < w[1].0, "ranges must be disjoint and non-adjacent");
            }
            prop_assert_eq!(set.count(), reference.len() as u64);
            for x in 0..210u64 {
                prop_assert_eq!(set.contains(x), reference.contains(&x));
            }
        }
    }
}
