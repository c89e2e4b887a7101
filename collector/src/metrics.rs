//! The collector's Prometheus metrics (names from the project's metrics catalogue).
//!
//! Labels are bounded: `reason` comes from a fixed set of labels (`BatchError::reason`,
//! `Reject::reason`, gap reasons). Nothing is labelled by device: per-device freshness is a
//! histogram over devices ([`Metrics::device_last_seen_age_seconds`]) plus two gauges.

use prometheus::{
    exponential_buckets, Counter, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, Opts, Registry,
};

/// A device not heard from for longer than this counts as stale.
pub const STALE_AFTER_SECS: f64 = 600.0;

#[derive(Clone)]
pub struct Metrics {
    pub messages_received: IntCounter,
    pub messages_rejected: IntCounterVec,
    pub readings_received: IntCounter,
    pub readings_accepted: IntCounter,
    pub readings_rejected: IntCounterVec,
    pub readings_duplicate: IntCounter,
    pub gap_seqs: IntCounterVec,
    pub clock_suspect_readings: IntCounter,
    /// Readings whose `(device_id, seq)` was landed before with other content
    /// (`seq_conflict`) or whose seqs went backwards (`seq_regression`).
    pub seq_conflicts: IntCounterVec,
    pub landing_latency_seconds: Histogram,
    pub transmission_delay_seconds: Histogram,
    pub devices_seen: IntGauge,
    pub devices_stale: IntGauge,
    /// Recomputed periodically from scratch (reset, then one observation per device).
    pub device_last_seen_age_seconds: HistogramVec,
    pub bytes_written: IntCounter,
    pub devices_updated: IntCounter,
    pub write_errors: IntCounter,
    pub deadletter: IntCounterVec,
    pub wal_bytes: IntGauge,
    /// Time the ingest thread waited to hand a sealed segment to the landing: landing
    /// (Parquet, commits) is slower than ingest while it grows.
    pub landing_wait_seconds: Counter,
    pub connected: IntGauge,
    pub confirmations_sent: IntCounter,
}

fn counter(name: &str, help: &str) -> prometheus::Result<IntCounter> {
    IntCounter::new(name, help)
}

fn counter_vec(name: &str, help: &str, label: &str) -> prometheus::Result<IntCounterVec> {
    IntCounterVec::new(Opts::new(name, help), &[label])
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Metrics> {
        let m = Metrics {
            messages_received: counter(
                "gridmeter_collector_messages_received_total",
                "MQTT messages received (including redeliveries)",
            )?,
            messages_rejected: counter_vec(
                "gridmeter_collector_messages_rejected_total",
                "Messages that could not be read at all, by reason (sent to dead letters)",
                "reason",
            )?,
            readings_received: counter(
                "gridmeter_collector_readings_received_total",
                "Readings in readable messages, good or bad",
            )?,
            readings_accepted: counter(
                "gridmeter_collector_readings_accepted_total",
                "Readings accepted into the raw landing (first time seen)",
            )?,
            readings_rejected: counter_vec(
                "gridmeter_collector_readings_rejected_total",
                "Readings that failed validation, by reason (sent to dead letters)",
                "reason",
            )?,
            readings_duplicate: counter(
                "gridmeter_collector_readings_duplicate_total",
                "Readings whose (device_id, seq) was already landed",
            )?,
            gap_seqs: counter_vec(
                "gridmeter_collector_gap_seqs_total",
                "Seqs reported lost by agents (buffer_full, buffer_corrupt) or never seen (missing)",
                "reason",
            )?,
            clock_suspect_readings: counter(
                "gridmeter_collector_clock_suspect_readings_total",
                "Accepted readings flagged clock_suspect (by the agent: its clock went backwards)",
            )?,
            seq_conflicts: counter_vec(
                "gridmeter_collector_seq_conflicts_total",
                "Readings whose (device_id, seq) was landed before with other content (seq_conflict) or whose seqs went backwards (seq_regression); sent to dead letters",
                "reason",
            )?,
            landing_latency_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "gridmeter_collector_landing_latency_seconds",
                    "From receiving a message to its readings being durable and the message acked",
                )
                .buckets(exponential_buckets(0.0005, 2.0, 16)?),
            )?,
            transmission_delay_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "gridmeter_collector_transmission_delay_seconds",
                    "received_at minus reading ts",
                )
                .buckets(exponential_buckets(0.01, 4.0, 12)?),
            )?,
            devices_seen: IntGauge::new(
                "gridmeter_collector_devices_seen",
                "Devices this collector has landed readings for",
            )?,
            devices_stale: IntGauge::new(
                "gridmeter_collector_devices_stale",
                "Devices not heard from for more than 10 minutes",
            )?,
            device_last_seen_age_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "gridmeter_collector_device_last_seen_age_seconds",
                    "Distribution over devices of the time since each was last heard from (refreshed periodically)",
                )
                .buckets(vec![10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 21600.0, 86400.0, 604800.0]),
                &[],
            )?,
            bytes_written: counter(
                "gridmeter_collector_bytes_written_total",
                "Bytes written to the WAL and the object store",
            )?,
            devices_updated: counter(
                "gridmeter_collector_devices_updated_total",
                "Devices whose rows in the devices table a metadata document changed",
            )?,
            write_errors: counter(
                "gridmeter_collector_write_errors_total",
                "Failed writes to the WAL or the object store (retried)",
            )?,
            deadletter: counter_vec(
                "gridmeter_collector_deadletter_total",
                "Dead-letter records written, by reason",
                "reason",
            )?,
            wal_bytes: IntGauge::new(
                "gridmeter_collector_wal_bytes",
                "Bytes in WAL segments not yet landed",
            )?,
            landing_wait_seconds: Counter::new(
                "gridmeter_collector_landing_wait_seconds_total",
                "Seconds the ingest thread waited for the landing to take a sealed WAL segment (backpressure from Parquet and commits)",
            )?,
            connected: IntGauge::new(
                "gridmeter_collector_connected",
                "1 while connected to the broker",
            )?,
            confirmations_sent: counter(
                "gridmeter_collector_confirmations_sent_total",
                "Confirmation messages published to devices (one per device per landed segment, or per WAL group with confirm_after = \"wal\")",
            )?,
        };
        registry.register(Box::new(m.messages_received.clone()))?;
        registry.register(Box::new(m.messages_rejected.clone()))?;
        registry.register(Box::new(m.readings_received.clone()))?;
        registry.register(Box::new(m.devices_updated.clone()))?;
        registry.register(Box::new(m.readings_accepted.clone()))?;
        registry.register(Box::new(m.readings_rejected.clone()))?;
        registry.register(Box::new(m.readings_duplicate.clone()))?;
        registry.register(Box::new(m.gap_seqs.clone()))?;
        registry.register(Box::new(m.clock_suspect_readings.clone()))?;
        registry.register(Box::new(m.seq_conflicts.clone()))?;
        // Visible at 0 so alerts can use increase() from the start.
        for reason in ["seq_conflict", "seq_regression"] {
            m.seq_conflicts.with_label_values(&[reason]);
        }
        registry.register(Box::new(m.landing_latency_seconds.clone()))?;
        registry.register(Box::new(m.transmission_delay_seconds.clone()))?;
        registry.register(Box::new(m.devices_seen.clone()))?;
        registry.register(Box::new(m.devices_stale.clone()))?;
        registry.register(Box::new(m.device_last_seen_age_seconds.clone()))?;
        registry.register(Box::new(m.bytes_written.clone()))?;
        registry.register(Box::new(m.write_errors.clone()))?;
        registry.register(Box::new(m.deadletter.clone()))?;
        registry.register(Box::new(m.wal_bytes.clone()))?;
        registry.register(Box::new(m.landing_wait_seconds.clone()))?;
        registry.register(Box::new(m.connected.clone()))?;
        registry.register(Box::new(m.confirmations_sent.clone()))?;
        Ok(m)
    }

    /// Recomputes the per-device freshness metrics from last-seen times (µs since epoch).
    pub fn refresh_device_ages(&self, last_seen_us: impl Iterator<Item = i64>, now_us: i64) {
        self.device_last_seen_age_seconds.reset();
        let h = self
            .device_last_seen_age_seconds
            .with_label_values::<&str>(&[]);
        let (mut n, mut stale) = (0i64, 0i64);
        for t in last_seen_us {
            let age = ((now_us - t) as f64 / 1e6).max(0.0);
            h.observe(age);
            n += 1;
            if age > STALE_AFTER_SECS {
                stale += 1;
            }
        }
        self.devices_seen.set(n);
        self.devices_stale.set(stale);
    }
}
