//! Stage 2, load: the current usage and the raw readings of one chunk of customers' devices,
//! with the device filter pushed into the scans (files by their Delta statistics, row groups
//! by their Parquet statistics, rows by lookup; see [`crate::tables`]), and, with the
//! open-exception hold rule on, their validation failures from the `exceptions` table.

use std::collections::HashMap;

use super::plan::{Dev, Plan};
use crate::config::ExportConfig;
use crate::error::BillingError;
use crate::reconcile::{self, RawSummary};
use crate::tables::{self, Failure, Raw, Selection, Tables, Usage};

/// The rows of one chunk.
pub(crate) struct Chunk {
    pub usage: Usage,
    /// The raw side of every selected counter/delta channel (with the raw reconciliation on).
    pub raw: Option<Raw<RawSummary>>,
    /// The validation failures of the selected channels' windows (with
    /// `hold.exception_severity` set; else none).
    pub failures: Vec<Failure>,
}

/// Loads the rows `sel` selects.
pub(crate) fn load(
    cfg: &ExportConfig,
    source: &Tables,
    plan: &Plan,
    sel: &Selection,
) -> Result<Chunk, BillingError> {
    let usage = tables::load_usage(source, sel)?;
    let raw = load_raw(cfg, source, plan, sel, &usage)?;
    let failures = if cfg.hold.exception_severity.is_some() && !sel.devices.is_empty() {
        tables::load_exceptions(source, sel)?
    } else {
        Vec::new()
    };
    Ok(Chunk {
        usage,
        raw,
        failures,
    })
}

/// The raw side of every selected channel: register difference and register values at the
/// bounds of each device's billed range, and the difference over the counter windows that
/// the reconciliation leaves out ([`Usage::left_out`]: edited, open-end and the estimated
/// windows adjoining them).
/// The `date` partitions read span the whole run's range (± 2 days), whatever the chunk, so a
/// channel's boundary readings never depend on the chunking.
fn load_raw(
    cfg: &ExportConfig,
    source: &Tables,
    plan: &Plan,
    sel: &Selection,
    usage: &Usage,
) -> Result<Option<Raw<RawSummary>>, BillingError> {
    let Some((lo, hi)) = plan.span() else {
        return Ok(None);
    };
    if !cfg.reconcile_raw || sel.devices.is_empty() {
        return Ok(None);
    }
    let reg = &cfg.registry;
    let devs: &[Dev] = &plan.devs;
    let mut left_out: HashMap<(u32, u16), Vec<(i64, i64)>> = HashMap::new();
    for s in usage.series.iter().filter(|s| s.kind == "counter") {
        let spans = usage.left_out(s).spans;
        if !spans.is_empty() {
            left_out.insert((s.device, s.channel), spans);
        }
    }
    let raw = tables::load_raw(
        source,
        sel,
        lo.timestamp_micros(),
        hi.timestamp_micros(),
        |dev, chan, kind, readings| {
            let d = &devs[dev as usize];
            let (channel, spec) = &d.channels[chan as usize];
            reconcile::summarize_excluding(
                kind,
                readings,
                d.from.timestamp_micros(),
                d.to.timestamp_micros(),
                &reg.counter_rules(d.id, channel, spec),
                left_out
                    .get(&(dev, chan))
                    .map(Vec::as_slice)
                    .unwrap_or_default(),
            )
        },
    )?;
    Ok(Some(raw))
}
