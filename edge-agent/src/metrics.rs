//! The agent's Prometheus metrics, registered into the registry the caller passes in (no
//! global state: the demo runs ~200 agents in one process, each with its own registry).

use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Handles to every agent metric (names are the shared catalogue; labels are bounded: the
/// configured source names and a fixed set of drop reasons).
#[derive(Clone)]
pub struct AgentMetrics {
    pub collected: IntCounterVec,
    pub sent: IntCounter,
    pub dropped: IntCounterVec,
    pub buffer_rows: IntGauge,
    pub buffer_bytes: IntGauge,
    pub buffer_budget_bytes: IntGauge,
    pub oldest_unsent_age: Gauge,
    pub connected: IntGauge,
    pub publish_latency: Histogram,
    pub source_errors: IntCounterVec,
    /// Readings a source produced that fail the collector's validation (never buffered).
    pub invalid: IntCounterVec,
    pub reconnects: IntCounter,
    pub gap_records_pending: IntGauge,
    pub buffer_corruptions: IntCounter,
    pub confirmed: IntCounter,
    pub confirmations: IntCounter,
    pub resends: IntCounter,
    pub publish_refused: IntCounterVec,
    pub unconfirmed: IntGauge,
    pub oldest_unconfirmed_age: Gauge,
    pub confirmation_latency: Histogram,
}

impl AgentMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<AgentMetrics> {
        let m = AgentMetrics {
            collected: IntCounterVec::new(
                Opts::new(
                    "gridmeter_agent_readings_collected_total",
                    "Readings produced by a source and handed to the buffer.",
                ),
                &["source"],
            )?,
            sent: IntCounter::new(
                "gridmeter_agent_readings_sent_total",
                "Readings the broker took (PUBACK with success); they stay buffered until confirmed.",
            )?,
            dropped: IntCounterVec::new(
                Opts::new(
                    "gridmeter_agent_readings_dropped_total",
                    "Readings dropped by the agent (reported upstream as gap records).",
                ),
                &["reason"],
            )?,
            buffer_rows: IntGauge::new(
                "gridmeter_agent_buffer_rows",
                "Readings in the SQLite buffer: unsent, in flight or awaiting their confirmation.",
            )?,
            buffer_bytes: IntGauge::new(
                "gridmeter_agent_buffer_bytes",
                "Logical bytes of the buffered readings (counted against the budget).",
            )?,
            buffer_budget_bytes: IntGauge::new(
                "gridmeter_agent_buffer_budget_bytes",
                "max_buffer_bytes: above it the oldest readings are dropped.",
            )?,
            oldest_unsent_age: Gauge::new(
                "gridmeter_agent_oldest_unsent_age_seconds",
                "Age (now minus event time) of the oldest buffered reading; 0 when empty.",
            )?,
            connected: IntGauge::new(
                "gridmeter_agent_connected",
                "1 while the MQTT connection is up (CONNACK received).",
            )?,
            publish_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "gridmeter_agent_publish_latency_seconds",
                    "Time from handing a batch to the MQTT client to its PUBACK.",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
            )?,
            source_errors: IntCounterVec::new(
                Opts::new(
                    "gridmeter_agent_source_errors_total",
                    "Failed polls or undecodable values of a source, by reason (connect, timeout, crc, exception, decode, io, device_status).",
                ),
                &["source", "reason"],
            )?,
            invalid: IntCounterVec::new(
                Opts::new(
                    "gridmeter_agent_readings_invalid_total",
                    "Readings a source produced that fail the collector's validation (bad unit, channel, value); refused before buffering.",
                ),
                &["source"],
            )?,
            reconnects: IntCounter::new(
                "gridmeter_agent_reconnects_total",
                "Connection attempts after the first one.",
            )?,
            gap_records_pending: IntGauge::new(
                "gridmeter_agent_gap_records_pending",
                "Gap records not yet confirmed (or PUBACKed, with require_confirmation = false).",
            )?,
            buffer_corruptions: IntCounter::new(
                "gridmeter_agent_buffer_corruptions_total",
                "Corrupt SQLite buffer files set aside (renamed *.corrupt-<ts>) and replaced by a fresh buffer.",
            )?,
            confirmed: IntCounter::new(
                "gridmeter_agent_readings_confirmed_total",
                "Readings deleted from the buffer: confirmed landed by the collector (or PUBACKed, with require_confirmation = false).",
            )?,
            confirmations: IntCounter::new(
                "gridmeter_agent_confirmations_received_total",
                "Confirmation messages received from collectors.",
            )?,
            resends: IntCounter::new(
                "gridmeter_agent_resends_total",
                "Readings sent again because their confirmation did not come within the confirm timeout.",
            )?,
            publish_refused: IntCounterVec::new(
                Opts::new(
                    "gridmeter_agent_publish_refused_total",
                    "Publishes the broker refused with an MQTT 5 reason code (the readings stay buffered and are retried).",
                ),
                &["reason"],
            )?,
            unconfirmed: IntGauge::new(
                "gridmeter_agent_unconfirmed_readings",
                "Readings the broker took that the collector has not confirmed yet (counted against the disk budget).",
            )?,
            confirmation_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "gridmeter_agent_confirmation_latency_seconds",
                    "Per confirmation: time since the earliest reading it covers was first published (what a lost agent disk could lose).",
                )
                .buckets(vec![
                    0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
                ]),
            )?,
            oldest_unconfirmed_age: Gauge::new(
                "gridmeter_agent_oldest_unconfirmed_age_seconds",
                "Time since the oldest unconfirmed reading was first published; 0 when none.",
            )?,
        };
        registry.register(Box::new(m.buffer_corruptions.clone()))?;
        registry.register(Box::new(m.collected.clone()))?;
        registry.register(Box::new(m.sent.clone()))?;
        registry.register(Box::new(m.dropped.clone()))?;
        registry.register(Box::new(m.buffer_rows.clone()))?;
        registry.register(Box::new(m.buffer_bytes.clone()))?;
        registry.register(Box::new(m.buffer_budget_bytes.clone()))?;
        registry.register(Box::new(m.oldest_unsent_age.clone()))?;
        registry.register(Box::new(m.connected.clone()))?;
        registry.register(Box::new(m.publish_latency.clone()))?;
        registry.register(Box::new(m.source_errors.clone()))?;
        registry.register(Box::new(m.invalid.clone()))?;
        registry.register(Box::new(m.reconnects.clone()))?;
        registry.register(Box::new(m.gap_records_pending.clone()))?;
        registry.register(Box::new(m.confirmed.clone()))?;
        registry.register(Box::new(m.confirmations.clone()))?;
        registry.register(Box::new(m.resends.clone()))?;
        registry.register(Box::new(m.publish_refused.clone()))?;
        registry.register(Box::new(m.unconfirmed.clone()))?;
        registry.register(Box::new(m.oldest_unconfirmed_age.clone()))?;
        registry.register(Box::new(m.confirmation_latency.clone()))?;
        // Make the drop reason visible at 0 so alerts can use rate() from the start.
        m.dropped.with_label_values(&["buffer_full"]);
        Ok(m)
    }
}
