//! From a logged message to rows: validate, dead-letter, deduplicate, record gaps.
//!
//! [`process`] is a pure function of (dedup state, WAL record): that is what makes replay
//! after a crash produce exactly what the first run produced.

use std::sync::Arc;

use bytes::Bytes;
use gridmeter_core::text::clip;
use gridmeter_core::wire::{self, json, meta, Limits};
use gridmeter_core::{Batch, DeviceId, Quality, Reading};

use gridmeter_core::wire::confirm::SeqRanges;

use crate::confirm::Durable;
use crate::dedup::{DedupState, Verdict};
use crate::metrics::Metrics;
use crate::wal::WalRecord;

/// The rows of the three tables the collector writes (types of the shared table layer).
pub use gridmeter_tables::deadletter::DeadRow;
pub use gridmeter_tables::devices::Received as DeviceDoc;
pub use gridmeter_tables::gaps::GapRow;
pub use gridmeter_tables::raw::RawRow;

/// Everything one WAL segment produced.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SegmentOutput {
    pub raw: Vec<RawRow>,
    pub dead: Vec<DeadRow>,
    pub gaps: Vec<GapRow>,
    /// Device metadata documents received (retained `gridmeter/v1/{id}/meta` messages), for
    /// the `devices` table.
    pub devices: Vec<DeviceDoc>,
    /// Every seq and gap record the segment's messages carried that is now recorded (landed
    /// new, a duplicate of one landed, or dead-lettered with its seq): what becomes durable
    /// with this segment and is confirmed to the devices ([`crate::confirm`]).
    pub durable: Durable,
}

/// A segment is sealed once its dead letters hold this many bytes (payload and detail).
pub const MAX_SEGMENT_DEAD_BYTES: usize = 32 * 1024 * 1024;

impl SegmentOutput {
    /// Whether the segment produced no rows (it may still have seqs to confirm).
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
            && self.dead.is_empty()
            && self.gaps.is_empty()
            && self.devices.is_empty()
    }

    /// Rows of the tables together (a metadata document counts as one).
    pub fn rows(&self) -> usize {
        self.raw.len() + self.dead.len() + self.gaps.len() + self.devices.len()
    }

    /// Bytes of dead-letter payloads and details held.
    pub fn dead_bytes(&self) -> usize {
        self.dead
            .iter()
            .map(|d| d.payload.len() + d.detail.len() + d.topic.len())
            .sum()
    }
}

/// The rules [`process`] applies (from the collector config; see the README).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub limits: Limits,
    /// A reading whose `ts` is more than this after its message's `received_at` is out of
    /// range (`ts_out_of_range`): the device clock runs ahead.
    pub clock_skew_tolerance_us: i64,
    /// A reading whose `ts` is more than this before `received_at` is out of range.
    pub max_backfill_us: i64,
    /// Most intervals of landed and lost seqs kept per device (see [`crate::dedup`]).
    pub max_open_holes: usize,
    /// Most gap records of one message processed; the rest go to the dead letters
    /// (`too_many_gaps`).
    pub max_gap_records: usize,
    /// Dead-letter payloads are cut to this many bytes (the detail says so).
    pub deadletter_max_payload_bytes: usize,
    /// Holes the per-device cap passes over are declared `missing` (hole detection on).
    pub detect_missing: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            limits: Limits::default(),
            clock_skew_tolerance_us: 300_000_000,
            max_backfill_us: 400 * 86_400_000_000,
            max_open_holes: 64,
            max_gap_records: 64,
            deadletter_max_payload_bytes: 64 * 1024,
            detect_missing: true,
        }
    }
}

/// Most characters of a dead-letter detail.
pub const DETAIL_CHARS: usize = 1000;

/// Merging a gap row looks back at most this many rows of the segment.
const GAP_MERGE_WINDOW: usize = 16;

/// A dead letter for `rec` with a bounded detail and a payload cut to the policy's size.
fn dead_row(
    rec: &WalRecord,
    reason: impl Into<String>,
    detail: &str,
    payload: &[u8],
    policy: &Policy,
) -> DeadRow {
    let max = policy.deadletter_max_payload_bytes;
    let mut detail = clip(detail, DETAIL_CHARS);
    let payload = if payload.len() > max {
        detail.push_str(&format!(
            " (payload truncated to {max} of {} bytes)",
            payload.len()
        ));
        // A copy: a slice would keep the whole message buffer alive.
        Bytes::copy_from_slice(&payload[..max])
    } else {
        Bytes::copy_from_slice(payload)
    };
    DeadRow {
        received_at_us: rec.received_at_us,
        topic: rec.topic.clone(),
        reason: reason.into(),
        detail,
        payload,
    }
}

/// The content fingerprint of a reading: CRC-32 of channel, kind, unit, ts and value.
pub fn fingerprint(r: &Reading) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(r.channel.as_str().as_bytes());
    h.update(&[0, r.kind.code(), 0]);
    h.update(r.unit.as_bytes());
    h.update(&[0]);
    h.update(&r.ts.timestamp_micros().to_le_bytes());
    h.update(&r.value.normalize().serialize());
    h.finalize()
}

fn rfc3339(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .unwrap_or_else(|| format!("{us} µs"))
}

/// A reading alone, as wire JSON (the payload of a reading-level dead letter).
fn reading_json(device: &DeviceId, r: &Reading) -> Vec<u8> {
    json::encode(&Batch {
        device_id: device.clone(),
        readings: vec![r.clone()],
        gaps: vec![],
    })
}

/// Processes one logged message into `out`, updating `state`. `metrics` is `None` during
/// replay (those messages were counted when first received). Only `received_at` from the
/// WAL is used as "now", so replay makes exactly the same decisions.
///
/// - A message that cannot be read goes whole to the dead letters (payload cut to
///   `deadletter_max_payload_bytes`); a bad reading goes alone, its neighbours are kept.
/// - A reading whose `ts` lies outside `[received_at − max_backfill, received_at +
///   clock_skew_tolerance]` goes to the dead letters as `ts_out_of_range`.
/// - A `(device_id, seq)` already landed is dropped as a duplicate, or dead-lettered as
///   `seq_conflict` / `seq_regression` (see [`crate::dedup`]).
pub fn process(
    state: &mut DedupState,
    rec: &WalRecord,
    policy: &Policy,
    out: &mut SegmentOutput,
    metrics: Option<&Metrics>,
) {
    state.clock_us = state.clock_us.max(rec.received_at_us);
    if let Some(m) = metrics {
        m.messages_received.inc();
    }
    if let Some(device) = meta::device_from_meta_topic(&rec.topic) {
        return process_meta(rec, &device, policy, out, metrics);
    }
    let decoded = match wire::decode_for_topic(&rec.topic, &rec.payload, &policy.limits) {
        Ok(d) => d,
        Err(e) => {
            let reason = e.reason();
            if let Some(m) = metrics {
                m.messages_rejected.with_label_values(&[reason]).inc();
                m.deadletter.with_label_values(&[reason]).inc();
            }
            out.dead
                .push(dead_row(rec, reason, &e.to_string(), &rec.payload, policy));
            return;
        }
    };
    if let Some(m) = metrics {
        m.readings_received
            .inc_by((decoded.readings.len() + decoded.rejects.len()) as u64);
    }
    let reading_dead = |out: &mut SegmentOutput, reason: &str, detail: &str, payload: &[u8]| {
        if let Some(m) = metrics {
            m.readings_rejected.with_label_values(&[reason]).inc();
            m.deadletter.with_label_values(&[reason]).inc();
        }
        out.dead
            .push(dead_row(rec, reason, detail, payload, policy));
    };
    for r in &decoded.rejects {
        reading_dead(out, &r.reason(), &r.to_string(), r.raw.as_bytes());
    }
    let id: Arc<str> = Arc::from(decoded.device_id.as_str());
    let dev = state.devices.entry(id.to_string()).or_default();
    dev.last_seen_us = dev.last_seen_us.max(rec.received_at_us);
    let mut new_gaps: Vec<GapRow> = Vec::new();
    let gap = |from, to, reason: &str| GapRow {
        device_id: id.to_string(),
        from_seq: from,
        to_seq: to,
        reason: reason.to_string(),
        recorded_at_us: rec.received_at_us,
    };
    let (kept, excess) = decoded
        .gaps
        .split_at(decoded.gaps.len().min(policy.max_gap_records));
    if !excess.is_empty() {
        let reason = "too_many_gaps";
        if let Some(m) = metrics {
            m.deadletter.with_label_values(&[reason]).inc();
        }
        let listed: Vec<String> = excess
            .iter()
            .take(20)
            .map(|g| format!("{}..={} {}", g.from_seq, g.to_seq, g.reason))
            .collect();
        let detail = format!(
            "gaps[{}..{}]: {} gap records beyond the limit of {} per message (max_gap_records) were not recorded",
            kept.len(),
            decoded.gaps.len(),
            excess.len(),
            policy.max_gap_records
        );
        out.dead.push(dead_row(
            rec,
            reason,
            &detail,
            listed.join("\n").as_bytes(),
            policy,
        ));
    }
    let (lo, hi) = (
        rec.received_at_us.saturating_sub(policy.max_backfill_us),
        rec.received_at_us
            .saturating_add(policy.clock_skew_tolerance_us),
    );
    let (mut accepted, mut dups, mut suspect) = (0u64, 0u64, 0u64);
    // What this message makes durable; merged into `out` only at the end, so a message that
    // panics half-way confirms nothing.
    let mut durable_seqs = SeqRanges::new();
    let mut durable_gaps = SeqRanges::new();
    // Observed locally and flushed once per message: one atomic update per bucket touched
    // instead of several per reading.
    let delay_hist = metrics.map(|m| m.transmission_delay_seconds.local());
    for r in decoded.readings {
        // New, duplicate or dead-lettered below: recorded either way once the segment lands.
        durable_seqs.push(r.seq);
        let ts_us = r.ts.timestamp_micros();
        if r.seq > i64::MAX as u64 {
            // The tables store seqs as Delta `long` (no unsigned types in Delta).
            let detail = format!(
                "seq {} is above 2^63 - 1, the largest seq the tables store",
                r.seq
            );
            reading_dead(
                out,
                "seq_out_of_range",
                &detail,
                &reading_json(&decoded.device_id, &r),
            );
            continue;
        }
        if ts_us < lo || ts_us > hi {
            let detail = format!(
                "seq {}: ts {} is outside [{}, {}] (received_at − max_backfill, received_at + clock_skew_tolerance)",
                r.seq,
                rfc3339(ts_us),
                rfc3339(lo),
                rfc3339(hi)
            );
            reading_dead(
                out,
                "ts_out_of_range",
                &detail,
                &reading_json(&decoded.device_id, &r),
            );
            continue;
        }
        let fp = fingerprint(&r);
        match dev.verdict(r.seq, fp, ts_us) {
            Verdict::New => {}
            Verdict::Duplicate => {
                dups += 1;
                continue;
            }
            Verdict::Conflict => {
                let detail = format!(
                    "seq {} was landed with other content (channel, kind, unit, ts or value): two agents may share this identity",
                    r.seq
                );
                if let Some(m) = metrics {
                    m.seq_conflicts.with_label_values(&["seq_conflict"]).inc();
                }
                reading_dead(
                    out,
                    "seq_conflict",
                    &detail,
                    &reading_json(&decoded.device_id, &r),
                );
                continue;
            }
            Verdict::Regression => {
                let detail = format!(
                    "seq {} is not above this device's highest landed seq {} but its ts {} is newer than any reading landed for it ({}): its seqs went backwards (an agent restarted from 1 after losing its buffer and seq lease, or two agents share this identity)",
                    r.seq,
                    dev.seen.max().or(dev.floor).unwrap_or(0),
                    rfc3339(ts_us),
                    rfc3339(dev.max_ts_us)
                );
                if let Some(m) = metrics {
                    m.seq_conflicts.with_label_values(&["seq_regression"]).inc();
                }
                reading_dead(
                    out,
                    "seq_regression",
                    &detail,
                    &reading_json(&decoded.device_id, &r),
                );
                continue;
            }
        }
        #[cfg(test)]
        tests::maybe_inject_fault(&decoded.device_id, r.seq);
        dev.land(r.seq, fp, ts_us);
        accepted += 1;
        if r.quality.contains(Quality::CLOCK_SUSPECT) {
            suspect += 1;
        }
        if let Some(h) = &delay_hist {
            let delay = (rec.received_at_us - ts_us) as f64 / 1e6;
            h.observe(delay.max(0.0));
        }
        out.raw.push(RawRow {
            device_id: id.clone(),
            reading: r,
            received_at_us: rec.received_at_us,
        });
    }
    if let Some(h) = delay_hist {
        h.flush();
    }
    // After the readings: a gap record never declares lost a seq its own message landed.
    for g in kept {
        durable_gaps.push_range(g.from_seq, g.to_seq);
        // Only the part not already known (landed, or recorded as lost) is new: an agent
        // that resends an extended gap record after a reconnect (1..50, then 1..80) adds
        // 51..80, so no seq is written or counted twice. A redelivery adds nothing.
        let (a, b) = (g.from_seq.min(g.to_seq), g.from_seq.max(g.to_seq));
        let fresh = dev.unknown(a, b);
        dev.lost.insert_range(a, b);
        for (from, to) in fresh {
            if let Some(m) = metrics {
                m.gap_seqs
                    .with_label_values(&[g.reason.as_str()])
                    .inc_by((to - from).saturating_add(1));
            }
            new_gaps.push(gap(from, to, g.reason.as_str()));
        }
    }
    for (from, to) in dev.enforce_cap(policy.max_open_holes) {
        if policy.detect_missing {
            if let Some(m) = metrics {
                m.gap_seqs
                    .with_label_values(&["missing"])
                    .inc_by((to - from).saturating_add(1));
            }
            new_gaps.push(gap(from, to, "missing"));
        }
    }
    for g in new_gaps {
        push_gap(out, g);
    }
    if let Some(m) = metrics {
        m.readings_accepted.inc_by(accepted);
        m.readings_duplicate.inc_by(dups);
        m.clock_suspect_readings.inc_by(suspect);
    }
    let (seqs, gaps) = out.durable.device(&decoded.device_id);
    seqs.extend(&durable_seqs);
    gaps.extend(&durable_gaps);
}

/// A device's metadata document: kept for the `devices` table, or dead-lettered as
/// `bad_metadata` with why.
fn process_meta(
    rec: &WalRecord,
    device: &DeviceId,
    policy: &Policy,
    out: &mut SegmentOutput,
    metrics: Option<&Metrics>,
) {
    match meta::decode(&rec.payload, device) {
        Ok(meta) => out.devices.push(DeviceDoc {
            meta,
            received_at_us: rec.received_at_us,
        }),
        Err(e) => {
            let reason = "bad_metadata";
            if let Some(m) = metrics {
                m.messages_rejected.with_label_values(&[reason]).inc();
                m.deadletter.with_label_values(&[reason]).inc();
            }
            out.dead
                .push(dead_row(rec, reason, &e.to_string(), &rec.payload, policy));
        }
    }
}

/// [`process`], isolated: if processing the message panics, everything it did to `state`
/// and `out` is undone and the message goes to the dead letters as `processing_failed`, so
/// one poison message can neither stop ingest nor, replayed from the WAL, crash-loop the
/// collector. Deterministic like [`process`].
pub fn process_isolated(
    state: &mut DedupState,
    rec: &WalRecord,
    policy: &Policy,
    out: &mut SegmentOutput,
    metrics: Option<&Metrics>,
) {
    let lens = (
        out.raw.len(),
        out.dead.len(),
        out.gaps.len(),
        out.devices.len(),
    );
    let clock = state.clock_us;
    // Only the topic's device can be changed: a payload naming another is refused first.
    let device = wire::device_from_topic(&rec.topic)
        .ok()
        .map(|d| d.to_string());
    let before = device
        .as_ref()
        .map(|d| (d.clone(), state.devices.get(d).cloned()));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        process(state, rec, policy, out, metrics)
    }));
    let Err(panic) = result else { return };
    let why = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into());
    out.raw.truncate(lens.0);
    out.dead.truncate(lens.1);
    out.gaps.truncate(lens.2);
    out.devices.truncate(lens.3);
    state.clock_us = clock.max(rec.received_at_us);
    match before {
        Some((d, Some(s))) => {
            state.devices.insert(d, s);
        }
        Some((d, None)) => {
            state.devices.remove(&d);
        }
        None => {}
    }
    let reason = "processing_failed";
    tracing::error!(topic = %clip(&rec.topic, 200), received_at_us = rec.received_at_us, "processing a message failed ({}); it goes to the dead letters", clip(&why, 200));
    if let Some(m) = metrics {
        m.messages_rejected.with_label_values(&[reason]).inc();
        m.deadletter.with_label_values(&[reason]).inc();
    }
    let detail = format!("processing the message panicked: {}", clip(&why, 300));
    out.dead
        .push(dead_row(rec, reason, &detail, &rec.payload, policy));
}

/// Appends a gap row, merging it into a recent row of this segment with the same device
/// and reason that it overlaps or touches (the pieces are disjoint from earlier ones, so
/// merging never double counts; it only keeps the gaps table small).
fn push_gap(out: &mut SegmentOutput, g: GapRow) {
    for row in out.gaps.iter_mut().rev().take(GAP_MERGE_WINDOW) {
        if row.device_id == g.device_id
            && row.reason == g.reason
            && row.from_seq <= g.to_seq.saturating_add(1)
            && g.from_seq <= row.to_seq.saturating_add(1)
        {
            row.from_seq = row.from_seq.min(g.from_seq);
            row.to_seq = row.to_seq.max(g.to_seq);
            return;
        }
    }
    out.gaps.push(g);
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
            m.gap_seqs
                .with_label_values(&["missing"])
                .inc_by((b - a).saturating_add(1));
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
pub(crate) mod tests {
    use super::*;
    use gridmeter_core::wire::compact;
    use gridmeter_core::{Batch, Channel, DeviceId, Gap, GapReason, Kind};

    const T0: i64 = 1_795_000_000;
    const DAY: i64 = 86_400;

    /// The fault the isolation tests inject: processing device `test-poison`'s seq 13
    /// panics (after its earlier readings were taken).
    pub(crate) fn maybe_inject_fault(device: &DeviceId, seq: u64) {
        if device.as_str() == "test-poison" && seq == 13 {
            panic!("injected fault at seq 13");
        }
    }

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

    fn rec_for(dev: &str, readings: Vec<Reading>, gaps: Vec<Gap>) -> WalRecord {
        let b = Batch {
            device_id: DeviceId::new(dev).unwrap(),
            readings,
            gaps,
        };
        WalRecord {
            received_at_us: T0 * 1_000_000,
            topic: format!("gridmeter/v1/{dev}/readings"),
            payload: Bytes::from(compact::encode(&b).unwrap()),
        }
    }

    fn rec(readings: Vec<Reading>, gaps: Vec<Gap>) -> WalRecord {
        rec_for("m1", readings, gaps)
    }

    fn run(st: &mut DedupState, r: &WalRecord, out: &mut SegmentOutput, m: &Metrics) {
        process_isolated(st, r, &Policy::default(), out, Some(m));
    }

    fn gap(from_seq: u64, to_seq: u64, reason: GapReason) -> Gap {
        Gap {
            from_seq,
            to_seq,
            reason,
        }
    }

    fn metrics() -> Metrics {
        Metrics::new(&prometheus::Registry::new()).unwrap()
    }

    fn reasons(out: &SegmentOutput) -> Vec<&str> {
        out.dead.iter().map(|d| d.reason.as_str()).collect()
    }

    fn seqs(out: &SegmentOutput) -> Vec<u64> {
        out.raw.iter().map(|r| r.reading.seq).collect()
    }

    #[test]
    fn hostile_seq_above_the_tables_range_is_dead_lettered() {
        let m = metrics();
        let mut st = DedupState::default();
        let mut out = SegmentOutput::default();
        let big = i64::MAX as u64 + 1;
        run(
            &mut st,
            &rec(
                vec![
                    reading(1, T0, Quality::GOOD),
                    reading(big, T0, Quality::GOOD),
                    reading(u64::MAX, T0, Quality::GOOD),
                ],
                vec![],
            ),
            &mut out,
            &m,
        );
        assert_eq!(seqs(&out), vec![1], "the good neighbour lands");
        assert_eq!(reasons(&out), vec!["seq_out_of_range", "seq_out_of_range"]);
        assert!(
            out.dead[0].detail.contains("2^63 - 1"),
            "{}",
            out.dead[0].detail
        );
        // Every row that lands fits the table: the batch builds.
        let rows: Vec<&RawRow> = out.raw.iter().collect();
        assert!(gridmeter_tables::raw::batch(&rows).is_ok());
    }

    #[test]
    fn hostile_timestamps_outside_the_window_are_dead_lettered() {
        let m = metrics();
        let mut st = DedupState::default();
        let mut out = SegmentOutput::default();
        let r = rec(
            vec![
                reading(1, T0 + 300, Quality::GOOD),  // exactly at the tolerance
                reading(2, T0 + 301, Quality::GOOD),  // ahead
                reading(3, T0 - 3600, Quality::GOOD), // behind: backfill, fine
                reading(4, T0, Quality::CLOCK_SUSPECT), // agent-flagged: kept, flagged
                reading(5, T0 - 400 * DAY, Quality::GOOD), // the oldest backfill accepted
                reading(6, T0 - 400 * DAY - 1, Quality::GOOD),
                reading(7, 0, Quality::GOOD),             // 1970
                reading(8, 4_102_444_800, Quality::GOOD), // 2100
            ],
            vec![],
        );
        run(&mut st, &r, &mut out, &m);
        assert_eq!(seqs(&out), vec![1, 3, 4, 5], "the good neighbours land");
        assert_eq!(reasons(&out), vec!["ts_out_of_range"; 4]);
        assert!(
            out.dead[0].detail.starts_with(
                "seq 2: ts 2026-11-18T11:11:41Z is outside [2025-10-14T11:06:40Z, 2026-11-18T11:11:40Z]"
            ),
            "{}",
            out.dead[0].detail
        );
        let payload: serde_json::Value = serde_json::from_slice(&out.dead[0].payload).unwrap();
        assert_eq!(
            payload["readings"][0]["seq"], 2,
            "the reading is kept as JSON"
        );
        assert_eq!(m.clock_suspect_readings.get(), 1);
        assert_eq!(
            m.readings_rejected
                .with_label_values(&["ts_out_of_range"])
                .get(),
            4
        );
        // Not landed, so not "seen": the seqs stay holes (declared missing in time).
        assert!(!st.devices["m1"].seen.contains(2));
        // A redelivery: the landed ones are duplicates.
        run(&mut st, &r, &mut out, &m);
        assert_eq!(out.raw.len(), 4);
        assert_eq!(m.readings_duplicate.get(), 4);
    }

    #[test]
    fn extended_gap_records_are_merged_and_counted_once() {
        let m = metrics();
        let mut st = DedupState::default();
        let mut out = SegmentOutput::default();
        let full = GapReason::BufferFull;
        run(&mut st, &rec(vec![], vec![gap(1, 50, full)]), &mut out, &m);
        // After a reconnect: the same record again, then extended; plus an adjacent one.
        run(&mut st, &rec(vec![], vec![gap(1, 50, full)]), &mut out, &m);
        run(&mut st, &rec(vec![], vec![gap(1, 80, full)]), &mut out, &m);
        run(&mut st, &rec(vec![], vec![gap(81, 90, full)]), &mut out, &m);
        // Another reason is its own row; its overlap with buffer_full is not counted again.
        let corrupt = GapReason::BufferCorrupt;
        run(
            &mut st,
            &rec(vec![], vec![gap(85, 120, corrupt)]),
            &mut out,
            &m,
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
        run(
            &mut st,
            &rec(vec![], vec![gap(1, 100, full)]),
            &mut out2,
            &m,
        );
        assert_eq!(out2.gaps.len(), 0, "1..100 is already covered");
        run(
            &mut st,
            &rec(vec![], vec![gap(1, 130, full)]),
            &mut out2,
            &m,
        );
        let rows: Vec<(u64, u64)> = out2.gaps.iter().map(|g| (g.from_seq, g.to_seq)).collect();
        assert_eq!(rows, vec![(121, 130)]);
        assert_eq!(count("buffer_full"), 100);
    }

    #[test]
    fn hostile_gap_over_every_seq_does_not_overflow() {
        let m = metrics();
        let mut st = DedupState::default();
        let mut out = SegmentOutput::default();
        let full = GapReason::BufferFull;
        run(
            &mut st,
            &rec(
                vec![reading(5, T0, Quality::GOOD)],
                vec![gap(0, u64::MAX, full)],
            ),
            &mut out,
            &m,
        );
        run(
            &mut st,
            &rec(vec![], vec![gap(0, u64::MAX, full)]),
            &mut out,
            &m,
        );
        assert!(out.dead.is_empty(), "{:?}", out.dead);
        assert_eq!(seqs(&out), vec![5]);
        let rows: Vec<(u64, u64)> = out.gaps.iter().map(|g| (g.from_seq, g.to_seq)).collect();
        assert_eq!(
            rows,
            vec![(0, 4), (6, u64::MAX)],
            "the landed seq is not lost"
        );
        assert_eq!(
            m.gap_seqs.with_label_values(&["buffer_full"]).get(),
            u64::MAX,
            "counted, saturating"
        );
        let mut out2 = SegmentOutput::default();
        declare_missing(&mut st, 1, &mut out2, Some(&m));
        st.clock_us += 10;
        declare_missing(&mut st, 1, &mut out2, Some(&m));
        assert!(out2.gaps.is_empty());
    }

    #[test]
    fn hostile_gap_records_per_message_are_capped() {
        let m = metrics();
        let mut st = DedupState::default();
        let mut out = SegmentOutput::default();
        let gaps = (0..5000u64)
            .map(|i| gap(10 * i + 100, 10 * i + 104, GapReason::BufferFull))
            .collect();
        run(
            &mut st,
            &rec(
                (1..=3).map(|s| reading(s, T0, Quality::GOOD)).collect(),
                gaps,
            ),
            &mut out,
            &m,
        );
        assert_eq!(seqs(&out), vec![1, 2, 3], "the readings are kept");
        assert_eq!(reasons(&out), vec!["too_many_gaps"]);
        assert!(
            out.dead[0]
                .detail
                .starts_with("gaps[64..5000]: 4936 gap records beyond the limit of 64"),
            "{}",
            out.dead[0].detail
        );
        let full = out
            .gaps
            .iter()
            .filter(|g| g.reason == "buffer_full")
            .count();
        assert_eq!(full, 64);
        assert_eq!(m.gap_seqs.with_label_values(&["buffer_full"]).get(), 64 * 5);
        let dev = &st.devices["m1"];
        assert!(dev.seen.intervals() + dev.lost.intervals() <= 64);
    }

    #[test]
    fn hostile_seq_conflict_is_dead_lettered_not_dropped() {
        let m = metrics();
        let mut st = DedupState::default();
        let mut out = SegmentOutput::default();
        let batch: Vec<Reading> = (1..=10)
            .map(|s| reading(s, T0 - 100 + s as i64, Quality::GOOD))
            .collect();
        run(&mut st, &rec(batch.clone(), vec![]), &mut out, &m);
        // A second agent with the same identity: seq 9 with another value, seq 10 with
        // another ts; a redelivery of 8; a new 11.
        let mut other = vec![batch[7].clone(), batch[8].clone(), batch[9].clone()];
        other[1].value += rust_decimal::Decimal::ONE;
        other[2].ts += chrono::Duration::seconds(-1);
        other.push(reading(11, T0, Quality::GOOD));
        run(&mut st, &rec(other, vec![]), &mut out, &m);
        assert_eq!(seqs(&out), (1..=11).collect::<Vec<_>>());
        assert_eq!(reasons(&out), vec!["seq_conflict", "seq_conflict"]);
        assert!(out.dead[0]
            .detail
            .starts_with("seq 9 was landed with other content"));
        assert_eq!(
            m.seq_conflicts.with_label_values(&["seq_conflict"]).get(),
            2
        );
        assert_eq!(m.readings_duplicate.get(), 1);
    }

    #[test]
    fn hostile_seq_regression_is_dead_lettered() {
        let m = metrics();
        let mut st = DedupState::default();
        let mut out = SegmentOutput::default();
        for start in (1..=1000u64).step_by(100) {
            let b = (start..start + 100)
                .map(|s| reading(s, T0 - 2000 + s as i64, Quality::GOOD))
                .collect();
            run(&mut st, &rec(b, vec![]), &mut out, &m);
        }
        assert_eq!(out.raw.len(), 1000);
        // The agent lost its buffer and its lease and restarts from 1, ten seconds later.
        let restarted = (1..=20)
            .map(|s| reading(s, T0 - 990 + s as i64, Quality::GOOD))
            .collect();
        run(&mut st, &rec(restarted, vec![]), &mut out, &m);
        assert_eq!(out.raw.len(), 1000, "nothing of it lands");
        assert_eq!(reasons(&out), vec!["seq_regression"; 20]);
        assert!(
            out.dead[0]
                .detail
                .starts_with("seq 1 is not above this device's highest landed seq 1000 but its ts"),
            "{}",
            out.dead[0].detail
        );
        assert_eq!(
            m.seq_conflicts.with_label_values(&["seq_regression"]).get(),
            20
        );
        // A plain redelivery of old seqs is still a duplicate.
        run(
            &mut st,
            &rec(
                (1..=5)
                    .map(|s| reading(s, T0 - 2000 + s as i64, Quality::GOOD))
                    .collect(),
                vec![],
            ),
            &mut out,
            &m,
        );
        assert_eq!(out.dead.len(), 20);
        assert_eq!(m.readings_duplicate.get(), 5);
    }

    #[test]
    fn hostile_holes_are_bounded_and_declared_missing() {
        let m = metrics();
        let mut st = DedupState::default();
        let mut out = SegmentOutput::default();
        // 100 000 readings with every other seq missing: 100 000 holes.
        for chunk in (0..100_000u64).collect::<Vec<_>>().chunks(1000) {
            let b = chunk
                .iter()
                .map(|i| reading(2 * i + 1, T0 - 1000, Quality::GOOD))
                .collect();
            run(&mut st, &rec(b, vec![]), &mut out, &m);
        }
        assert_eq!(out.raw.len(), 100_000);
        let dev = &st.devices["m1"];
        assert!(dev.seen.intervals() + dev.lost.intervals() <= 64);
        // The oldest holes are declared missing at once, each once.
        assert_eq!(out.gaps.len(), 100_000 - 64);
        assert_eq!((out.gaps[0].from_seq, out.gaps[0].to_seq), (2, 2));
        assert!(out
            .gaps
            .iter()
            .all(|g| g.reason == "missing" && g.from_seq == g.to_seq));
        assert_eq!(
            m.gap_seqs.with_label_values(&["missing"]).get(),
            100_000 - 64
        );
        // The checkpoint stays proportional to devices, not to holes.
        let bytes = postcard::to_allocvec(&st).unwrap();
        assert!(bytes.len() < 2048, "checkpoint of {} bytes", bytes.len());
    }

    #[test]
    fn hostile_panic_is_isolated_and_rolled_back() {
        let m = metrics();
        let mut st = DedupState::default();
        let mut out = SegmentOutput::default();
        run(
            &mut st,
            &rec_for("test-poison", vec![reading(1, T0, Quality::GOOD)], vec![]),
            &mut out,
            &m,
        );
        let before = st.devices["test-poison"].clone();
        // Seqs 10..=20: processing panics at 13, after 10..=12 were taken.
        let poison = rec_for(
            "test-poison",
            (10..=20).map(|s| reading(s, T0, Quality::GOOD)).collect(),
            vec![gap(2, 5, GapReason::BufferFull)],
        );
        run(&mut st, &poison, &mut out, &m);
        run(
            &mut st,
            &rec_for("good", vec![reading(1, T0, Quality::GOOD)], vec![]),
            &mut out,
            &m,
        );
        assert_eq!(reasons(&out), vec!["processing_failed"]);
        assert!(
            out.dead[0]
                .detail
                .contains("panicked: injected fault at seq 13"),
            "{}",
            out.dead[0].detail
        );
        assert_eq!(out.dead[0].payload, poison.payload, "the message is kept");
        assert_eq!(
            st.devices["test-poison"], before,
            "the device's state is rolled back"
        );
        assert!(out.gaps.is_empty(), "so is its gap record");
        let landed: Vec<(&str, u64)> = out
            .raw
            .iter()
            .map(|r| (&*r.device_id, r.reading.seq))
            .collect();
        assert_eq!(landed, vec![("test-poison", 1), ("good", 1)]);
        assert_eq!(
            m.messages_rejected
                .with_label_values(&["processing_failed"])
                .get(),
            1
        );
        // 10..=12 were not marked landed: they land when they come without the poison.
        run(
            &mut st,
            &rec_for(
                "test-poison",
                (10..=12).map(|s| reading(s, T0, Quality::GOOD)).collect(),
                vec![],
            ),
            &mut out,
            &m,
        );
        assert_eq!(out.raw.len(), 5);
    }

    #[test]
    fn hostile_dead_letter_payloads_are_truncated() {
        let m = metrics();
        let mut st = DedupState::default();
        let mut out = SegmentOutput::default();
        let policy = Policy {
            deadletter_max_payload_bytes: 1000,
            ..Policy::default()
        };
        let mut payload = br#"{"device_id":"m1","readings":[{"#.to_vec();
        payload.extend(vec![b'x'; 1_500_000]);
        let r = WalRecord {
            received_at_us: T0 * 1_000_000,
            topic: "gridmeter/v1/m1/readings".into(),
            payload: Bytes::from(payload),
        };
        process_isolated(&mut st, &r, &policy, &mut out, Some(&m));
        assert_eq!(reasons(&out), vec!["bad_json"]);
        assert_eq!(out.dead[0].payload.len(), 1000);
        assert!(
            out.dead[0]
                .detail
                .ends_with("(payload truncated to 1000 of 1500031 bytes)"),
            "{}",
            out.dead[0].detail
        );
        assert!(out.dead[0].detail.len() < DETAIL_CHARS + 100);
    }
}
