//! The aggregator's Prometheus metrics (names from the metrics catalogue; the only label is
//! the window table name, a handful of values).

use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
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
        Ok(m)
    }
}
