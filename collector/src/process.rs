//! From a logged message to rows: validate, dead-letter, deduplicate, record gaps.
//!
//! [`process`] is a pure function of (dedup state, WAL record): that is what makes replay
//! after a crash produce exactly what the first run produced.

use std::sync::Arc;

use bytes::Bytes;
use gridmeter_core::wire::{self, Limits};
use gridmeter_core::Reading;

use crate::dedup::DedupState;
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
}

impl SegmentOutput {
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty() && self.dead.is_empty() && self.gaps.is_empty()
    }
}

/// Processes one logged message into `out`, updating `state`. `metrics` is `None` during
/// replay (those messages were counted when first received).
pub fn process(
    state: &mut DedupState,
    rec: &WalRecord,
    limits: &Limits,
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
    for g in &decoded.gaps {
        if dev.lost.contains_range(g.from_seq, g.to_seq) {
            continue; // the same gap record again (a redelivery)
        }
        dev.lost.insert_range(g.from_seq, g.to_seq);
        if let Some(m) = metrics {
            m.gap_seqs
                .with_label_values(&[g.reason.as_str()])
                .inc_by(g.len());
        }
        out.gaps.push(GapRow {
            device_id: id.to_string(),
            from_seq: g.from_seq,
            to_seq: g.to_seq,
            reason: g.reason.as_str().to_string(),
            recorded_at_us: rec.received_at_us,
        });
    }
    let (mut accepted, mut dups) = (0u64, 0u64);
    for r in decoded.readings {
        if dev.seen.insert(r.seq) {
            accepted += 1;
            if let Some(m) = metrics {
                let delay = (rec.received_at_us - r.ts.timestamp_micros()) as f64 / 1e6;
                m.transmission_delay_seconds.observe(delay.max(0.0));
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
    if let Some(m) = metrics {
        m.readings_accepted.inc_by(accepted);
        m.readings_duplicate.inc_by(dups);
    }
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
