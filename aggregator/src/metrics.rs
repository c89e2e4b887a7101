//! The aggregator's Prometheus metrics (names from the metrics catalogue; the only label is
//! the window table name, a handful of values).

use gridmeter_tables::usage::UsageRow;
use gridmeter_tables::Flags;
use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

#[derive(Clone)]
pub struct Metrics {
    pub readings_processed: IntCounter,
    pub late_readings: IntCounter,
    pub revisions: IntCounterVec,
    /// Wall clock minus the most advanced device watermark.
    pub watermark_lag: Gauge,
    pub commit_duration: Histogram,
    pub commits: IntCounterVec,
    pub commit_errors: IntCounter,
    pub last_success: Gauge,
    /// Devices held back because one of their series could not be aggregated.
    pub devices_held: IntGauge,
    /// Validation failures recorded, by rule.
    pub exceptions: IntCounterVec,
    /// Usage rows written, by window table.
    pub rows_written: IntCounterVec,
    /// Usage rows written flagged estimated, by window table and method.
    pub estimated_rows: IntCounterVec,
    /// Usage rows written flagged edited, by window table.
    pub edited_rows: IntCounterVec,
    /// Share of the usage written by the last commit of a window table that is estimated
    /// (sum of |usage| of estimated rows / sum of |usage|).
    pub estimated_share: GaugeVec,
}

fn vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|_| unreachable!())
}

impl Metrics {
    /// Metrics not registered anywhere (tests, one-shot commands).
    pub fn unregistered() -> Metrics {
        let c = |n: &str, h: &str| IntCounter::new(n, h).unwrap_or_else(|_| unreachable!());
        Metrics {
            readings_processed: c(
                "gridmeter_aggregator_readings_processed_total",
                "Raw readings read from new raw files",
            ),
            late_readings: c(
                "gridmeter_aggregator_late_readings_total",
                "Readings older than their device's watermark when they were processed",
            ),
            revisions: IntCounterVec::new(
                Opts::new(
                    "gridmeter_aggregator_revisions_total",
                    "Usage rows written with revision > 1",
                ),
                &["window"],
            )
            .unwrap_or_else(|_| unreachable!()),
            watermark_lag: Gauge::new(
                "gridmeter_aggregator_watermark_lag_seconds",
                "Now minus the most advanced device watermark",
            )
            .unwrap_or_else(|_| unreachable!()),
            commit_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "gridmeter_aggregator_commit_duration_seconds",
                    "Time to commit one usage table",
                )
                .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            )
            .unwrap_or_else(|_| unreachable!()),
            commits: IntCounterVec::new(
                Opts::new("gridmeter_aggregator_commits_total", "Usage table commits"),
                &["window"],
            )
            .unwrap_or_else(|_| unreachable!()),
            commit_errors: c(
                "gridmeter_aggregator_commit_errors_total",
                "Usage table commits that failed",
            ),
            last_success: Gauge::new(
                "gridmeter_aggregator_last_success_timestamp_seconds",
                "Unix time of the last successful run",
            )
            .unwrap_or_else(|_| unreachable!()),
            devices_held: IntGauge::new(
                "gridmeter_aggregator_devices_held",
                "Devices whose aggregation is held back (a series failed or would create too many windows); see usage/_state/aggregator.json",
            )
            .unwrap_or_else(|_| unreachable!()),
            exceptions: vec(
                "gridmeter_aggregator_exceptions_total",
                "Validation failures recorded in the exceptions table",
                &["rule"],
            ),
            rows_written: vec(
                "gridmeter_aggregator_rows_written_total",
                "Usage rows written (new or revised)",
                &["window"],
            ),
            estimated_rows: vec(
                "gridmeter_aggregator_estimated_rows_total",
                "Usage rows written flagged estimated, by estimation method (none: a device-estimated reading or a decrease)",
                &["window", "method"],
            ),
            edited_rows: vec(
                "gridmeter_aggregator_edited_rows_total",
                "Usage rows written flagged edited",
                &["window"],
            ),
            estimated_share: GaugeVec::new(
                Opts::new(
                    "gridmeter_aggregator_estimated_share",
                    "Share of the usage written by the last commit that is estimated (0..1)",
                ),
                &["window"],
            )
            .unwrap_or_else(|_| unreachable!()),
        }
    }

    /// Records what one commit of `window` wrote ([`Written::of`]), once it committed.
    pub fn observe_written(&self, window: &str, w: &Written) {
        for (method, n) in &w.estimated_by_method {
            self.estimated_rows
                .with_label_values(&[window, method])
                .inc_by(*n);
        }
        self.rows_written
            .with_label_values(&[window])
            .inc_by(w.rows);
        self.edited_rows
            .with_label_values(&[window])
            .inc_by(w.edited);
        if w.usage > 0.0 {
            self.estimated_share
                .with_label_values(&[window])
                .set(w.estimated_usage / w.usage);
        }
    }

    /// The metrics, registered in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Metrics> {
        let m = Metrics::unregistered();
        registry.register(Box::new(m.readings_processed.clone()))?;
        registry.register(Box::new(m.late_readings.clone()))?;
        registry.register(Box::new(m.revisions.clone()))?;
        registry.register(Box::new(m.watermark_lag.clone()))?;
        registry.register(Box::new(m.commit_duration.clone()))?;
        registry.register(Box::new(m.commits.clone()))?;
        registry.register(Box::new(m.commit_errors.clone()))?;
        registry.register(Box::new(m.last_success.clone()))?;
        registry.register(Box::new(m.devices_held.clone()))?;
        registry.register(Box::new(m.exceptions.clone()))?;
        registry.register(Box::new(m.rows_written.clone()))?;
        registry.register(Box::new(m.estimated_rows.clone()))?;
        registry.register(Box::new(m.edited_rows.clone()))?;
        registry.register(Box::new(m.estimated_share.clone()))?;
        Ok(m)
    }
}

/// What one commit writes, for the metrics (floating point: monitoring only).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Written {
    pub rows: u64,
    pub edited: u64,
    pub estimated_by_method: std::collections::BTreeMap<&'static str, u64>,
    /// Sum of |usage|, in units.
    pub usage: f64,
    /// Sum of |usage| of the estimated rows.
    pub estimated_usage: f64,
}

impl Written {
    /// The figures of `rows`.
    pub fn of(rows: &[UsageRow]) -> Written {
        let mut w = Written {
            rows: rows.len() as u64,
            ..Default::default()
        };
        for r in rows {
            let u = r.usage.map_or(0.0, |u| (u as f64 / 1e9).abs());
            w.usage += u;
            if r.flags.contains(Flags::ESTIMATED) {
                w.estimated_usage += u;
                *w.estimated_by_method
                    .entry(r.flags.method().unwrap_or("none"))
                    .or_default() += 1;
            }
            if r.flags.contains(Flags::EDITED) {
                w.edited += 1;
            }
        }
        w
    }
}
