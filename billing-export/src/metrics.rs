//! The Prometheus textfile of a billing run (for node_exporter's textfile collector).

use std::path::Path;
use std::time::Duration;

use prometheus::{Encoder, Gauge, IntCounter, IntCounterVec, Opts, Registry, TextEncoder};

use crate::error::BillingError;

/// The figures of one run.
#[derive(Debug, Default)]
pub struct Figures {
    pub lines: usize,
    pub customers: usize,
    pub mismatches: usize,
    pub held: usize,
    /// Held customers per reason kind (`estimated_share`, `open_exception`, `data`).
    pub held_by_reason: std::collections::BTreeMap<&'static str, usize>,
}

/// Writes `metrics.prom` atomically (temp file + rename).
pub fn write(path: &Path, duration: Duration, f: &Figures) -> Result<(), BillingError> {
    let Figures {
        lines,
        customers,
        mismatches,
        held,
        ..
    } = *f;
    let fail = |e: prometheus::Error| BillingError::output("metrics", e);
    let reg = Registry::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let last = Gauge::new(
        "gridmeter_billing_last_run_timestamp_seconds",
        "When the last billing export finished (Unix time).",
    )
    .map_err(fail)?;
    last.set(now);
    let dur = Gauge::new(
        "gridmeter_billing_run_duration_seconds",
        "Wall-clock duration of the last billing export.",
    )
    .map_err(fail)?;
    dur.set(duration.as_secs_f64());
    let l = IntCounter::new(
        "gridmeter_billing_statement_lines_total",
        "Statement lines written by the last run.",
    )
    .map_err(fail)?;
    l.inc_by(lines as u64);
    let c = IntCounter::new(
        "gridmeter_billing_customers_total",
        "Customers in the last run.",
    )
    .map_err(fail)?;
    c.inc_by(customers as u64);
    let m = IntCounter::new(
        "gridmeter_billing_reconciliation_mismatches_total",
        "Reconciliation mismatches found by the last run.",
    )
    .map_err(fail)?;
    m.inc_by(mismatches as u64);
    let h = IntCounter::new(
        "gridmeter_billing_held_customers_total",
        "Customers held by the last run (see exceptions.csv).",
    )
    .map_err(fail)?;
    h.inc_by(held as u64);
    let by = IntCounterVec::new(
        Opts::new(
            "gridmeter_billing_held_bills_total",
            "Customers held by the last run per reason kind: estimated_share and open_exception ([hold] rules), data (cannot be billed).",
        ),
        &["reason"],
    )
    .map_err(fail)?;
    for (kind, n) in &f.held_by_reason {
        by.with_label_values(&[*kind]).inc_by(*n as u64);
    }
    for b in [
        Box::new(last) as Box<dyn prometheus::core::Collector>,
        Box::new(dur),
        Box::new(l),
        Box::new(c),
        Box::new(m),
        Box::new(h),
        Box::new(by),
    ] {
        reg.register(b).map_err(fail)?;
    }
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&reg.gather(), &mut buf)
        .map_err(fail)?;
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)
            .map_err(|e| BillingError::io(format!("creating {}", p.display()), e))?;
    }
    let tmp = path.with_extension("prom.tmp");
    std::fs::write(&tmp, &buf)
        .map_err(|e| BillingError::io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| BillingError::io(format!("renaming {}", path.display()), e))
}
