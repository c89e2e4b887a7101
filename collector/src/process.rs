//! From a logged message to rows: validate, dead-letter, deduplicate, record gaps.
//!
//! [`process`] is a pure function of (dedup state, WAL record): that is what makes replay
//! after a crash produce exactly what the first run produced.

use std::sync::Arc;

use bytes::Bytes;
use gridmeter_core::wire::{self, Limits};
use gridmeter_core::{Quality, Reading};

use gridmeter_core::wire::confirm::SeqRanges;

use crate::confirm::Durable;
use crate::dedup::{DedupState, IntervalSet};
use crate::metrics::Metrics;
use crate::wal::WalRecord;

/// An accepted reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRow {
    pub device_id: Arc<str>,
    pub reading: Reading,
    pub received_at_us: i64,
}

/// Something that could not be accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadRow {
    pub received_at_us: i64,
    pub topic: String,
    pub reason: String,
    pub detail: String,
    /// The whole payload (batch-level error) or the element (reading-level).
    pub payload: Bytes,
}

/// A seq range that will not (or did not) arrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GapRow {
    pub device_id: String,
    pub from_seq: u64,
    pub to_seq: u64,
    /// `buffer_full`, `buffer_corrupt` (as sent by the agent) or `missing`.
    pub reason: String,
    pub recorded_at_us: i64,
}

/// Everything one WAL segment produced.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SegmentOutput {
    pub raw: Vec<RawRow>,
    pub dead: Vec<DeadRow>,
    pub gaps: Vec<GapRow>,
    /// Every seq and gap record the segment's messages carried, new or duplicate: what
    /// becomes durable with this segment and is confirmed to the devices ([`crate::confirm`]).
    pub durable: Durable,
}

impl SegmentOutput {
    /// Whether the segment produced no rows (it may still have seqs to confirm).
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty() && self.dead.is_empty() && self.gaps.is_empty()
    }
}

/// Processes one logged message into `out`, updating `state`. `metrics` is `None` during
/// replay (those messages were counted when first received).
///
/// `clock_skew_tolerance_us`: a reading whose `ts` is more than this after the message's
/// `received_at` comes from a device clock that runs ahead. It is kept (never dropped: the
/// value is still a real measurement) with the `clock_suspect` quality flag added. Only
/// `received_at` from the WAL is used, so replay flags exactly the same readings.
pub fn process(
    state: &mut DedupState,
    rec: &WalRecord,
    limits: &Limits,
    clock_skew_tolerance_us: i64,
    out: &mut SegmentOutput,
    metrics: Option<&Metrics>,
) {
    state.clock_us = state.clock_us.max(rec.received_at_us);
    if let Some(m) = metrics {
        m.messages_received.inc();
    }
    let decoded = match wire::decode_for_topic(&rec.topic, &rec.payload, limits) {
        Ok(d) => d,
        Err(e) => {
            let reason = e.reason();
            if let Some(m) = metrics {
                m.messages_rejected.with_label_values(&[reason]).inc();
                m.deadletter.with_label_values(&[reason]).inc();
            }
            out.dead.push(DeadRow {
                received_at_us: rec.received_at_us,
                topic: rec.topic.clone(),
                reason: reason.to_string(),
                detail: e.to_string(),
                payload: rec.payload.clone(),
            });
            return;
        }
    };
    if let Some(m) = metrics {
        m.readings_received
            .inc_by((decoded.readings.len() + decoded.rejects.len()) as u64);
    }
    for r in &decoded.rejects {
        let reason = r.reason();
        if let Some(m) = metrics {
            m.readings_rejected
                .with_label_values(&[reason.as_str()])
                .inc();
            m.deadletter.with_label_values(&[reason.as_str()]).inc();
        }
        out.dead.push(DeadRow {
            received_at_us: rec.received_at_us,
            topic: rec.topic.clone(),
            reason,
            detail: r.to_string(),
            payload: Bytes::from(r.raw.clone().into_bytes()),
        });
    }
    let id: Arc<str> = Arc::from(decoded.device_id.as_str());
    let dev = state.devices.entry(id.to_string()).or_default();
    dev.last_seen_us = dev.last_seen_us.max(rec.received_at_us);
    let mut durable_seqs = SeqRanges::new();
    let mut durable_gaps = SeqRanges::new();
    for g in &decoded.gaps {
        // Only the part not already recorded as lost is new: an agent that resends an
        // extended gap record after a reconnect (1..50, then 1..80) adds 51..80, so no seq
        // is written or counted twice. A redelivery of the same record adds nothing.
        //
        // Seqs already landed are not lost either: an agent may drop a reading that waits
        // for its confirmation to stay within its disk budget, and report it as a gap
        // although the reading had arrived.
        let (a, b) = (g.from_seq.min(g.to_seq), g.from_seq.max(g.to_seq));
        durable_gaps.push_range(g.from_seq, g.to_seq);
        let mut fresh = IntervalSet::new();
        fresh.insert_range(a, b);
        for &(s, e) in dev.lost.ranges().iter().chain(dev.seen.ranges()) {
            if e >= a && s <= b {
                fresh.remove_range(s, e);
            }
        }
        dev.lost.insert_range(a, b);
        for &(from, to) in fresh.ranges() {
            if let Some(m) = metrics {
                m.gap_seqs
                    .with_label_values(&[g.reason.as_str()])
                    .inc_by(to - from + 1);
            }
            push_gap(out, &id, from, to, g.reason.as_str(), rec.received_at_us);
        }
    }
    let (mut accepted, mut dups) = (0u64, 0u64);
    // Observed locally and flushed once per message: one atomic update per bucket touched
    // instead of several per reading.
    let delay_hist = metrics.map(|m| m.transmission_delay_seconds.local());
    for mut r in decoded.readings {
        durable_seqs.push(r.seq);
        if dev.seen.insert(r.seq) {
            accepted += 1;
            if r.ts.timestamp_micros() - rec.received_at_us > clock_skew_tolerance_us {
                r.quality = r.quality.with(Quality::CLOCK_SUSPECT);
                if let Some(m) = metrics {
                    m.clock_suspect_readings.inc();
                }
            }
            if let Some(h) = &delay_hist {
                let delay = (rec.received_at_us - r.ts.timestamp_micros()) as f64 / 1e6;
                h.observe(delay.max(0.0));
            }
            out.raw.push(RawRow {
                device_id: id.clone(),
                reading: r,
                received_at_us: rec.received_at_us,
            });
        } else {
            dups += 1;
        }
    }
    if let Some(h) = delay_hist {
        h.flush();
    }
    let (seqs, gaps) = out.durable.device(&decoded.device_id);
    seqs.extend(&durable_seqs);
    gaps.extend(&durable_gaps);
    if let Some(m) = metrics {
        m.readings_accepted.inc_by(accepted);
        m.readings_duplicate.inc_by(dups);
    }
}

/// Appends an agent gap row, merging it into a row of this segment with the same device
/// and reason that it overlaps or touches (the pieces are disjoint from earlier ones, so
/// merging never double counts; it only keeps the gaps table small).
fn push_gap(out: &mut SegmentOutput, device: &str, from: u64, to: u64, reason: &str, at_us: i64) {
    for row in out.gaps.iter_mut().rev() {
        if row.device_id == device
            && row.reason == reason
            && row.from_seq <= to.saturating_add(1)
            && from <= row.to_seq.saturating_add(1)
        {
            row.from_seq = row.from_seq.min(from);
            row.to_seq = row.to_seq.max(to);
            return;
        }
    }
    out.gaps.push(GapRow {
        device_id: device.to_string(),
        from_seq: from,
        to_seq: to,
        reason: reason.to_string(),
        recorded_at_us: at_us,
    });
}

/// At the end of a segment: declares holes open for `after_us` as `missing` gap rows.
pub fn declare_missing(
    state: &mut DedupState,
    after_us: i64,
    out: &mut SegmentOutput,
    metrics: Option<&Metrics>,
) {
    let now = state.clock_us;
    for (device_id, a, b) in state.declare_missing(after_us) {
        if let Some(m) = metrics {
            m.gap_seqs.with_label_values(&["missing"]).inc_by(b - a + 1);
        }
        out.gaps.push(GapRow {
            device_id,
            from_seq: a,
            to_seq: b,
            reason: "missing".into(),
            recorded_at_us: now,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridmeter_core::wire::compact;
    use gridmeter_core::{Batch, Channel, DeviceId, Gap, GapReason, Kind};

    const T0: i64 = 1_795_000_000;

    fn reading(seq: u64, ts_secs: i64, quality: Quality) -> Reading {
        Reading {
            seq,
            ts: chrono::DateTime::from_timestamp(ts_secs, 0).unwrap(),
            channel: Channel::new("energy_import").unwrap(),
            kind: Kind::Counter,
            unit: "Wh".into(),
            value: rust_decimal::Decimal::new(seq as i64, 0),
            quality,
        }
    }

    fn rec(readings: Vec<Reading>, gaps: Vec<Gap>) -> WalRecord {
        let b = Batch {
            device_id: DeviceId::new("m1").unwrap(),
            readings,
            gaps,
        };
        WalRecord {
            received_at_us: T0 * 1_000_000,
            topic: "gridmeter/v1/m1/readings".into(),
            payload: Bytes::from(compact::encode(&b).unwrap()),
        }
    }

    fn gap(from_seq: u64, to_seq: u64, reason: GapReason) -> Gap {
        Gap {
            from_seq,
            to_seq,
            reason,
        }
    }

    #[test]
    fn readings_from_a_clock_ahead_are_kept_and_flagged() {
        let registry = prometheus::Registry::new();
        let m = Metrics::new(&registry).unwrap();
        let mut st = DedupState::default();
        let mut out = SegmentOutput::default();
        let r = rec(
            vec![
                reading(1, T0 + 300, Quality::GOOD),  // exactly at the tolerance
                reading(2, T0 + 301, Quality::GOOD),  // ahead
                reading(3, T0 - 3600, Quality::GOOD), // behind: backfill, fine
                reading(4, T0, Quality::CLOCK_SUSPECT), // agent-flagged stays flagged
                reading(5, T0 + 86_400, Quality::CLOCK_SUSPECT), // both: flagged once
            ],
            vec![],
        );
        process(
            &mut st,
            &r,
            &Limits::default(),
            300_000_000,
            &mut out,
            Some(&m),
        );
        let flagged: Vec<(u64, bool)> = out
            .raw
            .iter()
            .map(|r| {
                (
                    r.reading.seq,
                    r.reading.quality.contains(Quality::CLOCK_SUSPECT),
                )
            })
            .collect();
        assert_eq!(
            flagged,
            vec![(1, false), (2, true), (3, false), (4, true), (5, true)]
        );
        assert_eq!(out.raw.len(), 5, "nothing is dropped");
        assert_eq!(m.clock_suspect_readings.get(), 2);
        // A redelivery is a duplicate: not landed, not counted again.
        process(
            &mut st,
            &r,
            &Limits::default(),
            300_000_000,
            &mut out,
            Some(&m),
        );
        assert_eq!(out.raw.len(), 5);
        assert_eq!(m.clock_suspect_readings.get(), 2);
    }

    #[test]
    fn extended_gap_records_are_merged_and_counted_once() {
        let registry = prometheus::Registry::new();
        let m = Metrics::new(&registry).unwrap();
        let mut st = DedupState::default();
        let mut out = SegmentOutput::default();
        let tol = 300_000_000;
        let full = GapReason::BufferFull;
        let lim = Limits::default();
        process(
            &mut st,
            &rec(vec![], vec![gap(1, 50, full)]),
            &lim,
            tol,
            &mut out,
            Some(&m),
        );
        // After a reconnect: the same record again, then extended; plus an adjacent one.
        process(
            &mut st,
            &rec(vec![], vec![gap(1, 50, full)]),
            &lim,
            tol,
            &mut out,
            Some(&m),
        );
        process(
            &mut st,
            &rec(vec![], vec![gap(1, 80, full)]),
            &lim,
            tol,
            &mut out,
            Some(&m),
        );
        process(
            &mut st,
            &rec(vec![], vec![gap(81, 90, full)]),
            &lim,
            tol,
            &mut out,
            Some(&m),
        );
        // Another reason is its own row; its overlap with buffer_full is not counted again.
        let corrupt = GapReason::BufferCorrupt;
        process(
            &mut st,
            &rec(vec![], vec![gap(85, 120, corrupt)]),
            &lim,
            tol,
            &mut out,
            Some(&m),
        );
        let rows: Vec<(u64, u64, &str)> = out
            .gaps
            .iter()
            .map(|g| (g.from_seq, g.to_seq, g.reason.as_str()))
            .collect();
        assert_eq!(
            rows,
            vec![(1, 90, "buffer_full"), (91, 120, "buffer_corrupt")]
        );
        let count = |reason: &str| m.gap_seqs.with_label_values(&[reason]).get();
        assert_eq!(count("buffer_full"), 90);
        assert_eq!(count("buffer_corrupt"), 30);
        // In a later segment an extension only adds the new part.
        let mut out2 = SegmentOutput::default();
        process(
            &mut st,
            &rec(vec![], vec![gap(1, 100, full)]),
            &lim,
            tol,
            &mut out2,
            Some(&m),
        );
        assert_eq!(out2.gaps.len(), 0, "1..100 is already covered");
        process(
            &mut st,
            &rec(vec![], vec![gap(1, 130, full)]),
            &lim,
            tol,
            &mut out2,
            Some(&m),
        );
        let rows: Vec<(u64, u64)> = out2.gaps.iter().map(|g| (g.from_seq, g.to_seq)).collect();
        assert_eq!(rows, vec![(121, 130)]);
        assert_eq!(count("buffer_full"), 100);
    }

    #[test]
    fn interval_set_remove_range_splits() {
        let mut s = IntervalSet::new();
        s.insert_range(1, 10);
        s.insert_range(20, 30);
        s.remove_range(5, 22);
        assert_eq!(s.ranges(), &[(1, 4), (23, 30)]);
        s.remove_range(1, 100);
        assert!(s.is_empty());
    }
}
