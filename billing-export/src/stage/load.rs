//! Stage 2, load: the current usage and the raw readings of one chunk of customers' devices,
//! with the device filter pushed into the scans (files by their Delta statistics, row groups
//! by their Parquet statistics, rows by lookup; see [`crate::tables`]).

use super::plan::{Dev, Plan};
use crate::config::ExportConfig;
use crate::error::BillingError;
use crate::reconcile::{self, RawSummary};
use crate::tables::{self, Raw, Selection, Tables, Usage};

/// The rows of one chunk.
pub(crate) struct Chunk {
    pub usage: Usage,
    /// The raw side of every selected counter/delta channel (with the raw reconciliation on).
    pub raw: Option<Raw<RawSummary>>,
}

/// Loads the rows `sel` selects.
pub(crate) fn load(
    cfg: &ExportConfig,
    source: &Tables,
    plan: &Plan,
    sel: &Selection,
) -> Result<Chunk, BillingError> {
    let usage = tables::load_usage(source, sel)?;
    let raw = load_raw(cfg, source, plan, sel)?;
    Ok(Chunk { usage, raw })
}

/// The raw side of every selected channel: register difference and register values at the
/// bounds of each device's billed range. The `date` partitions read span the whole run's
/// range (± 2 days), whatever the chunk, so a channel's boundary readings never depend on the
/// chunking.
fn load_raw(
    cfg: &ExportConfig,
    source: &Tables,
    plan: &Plan,
    sel: &Selection,
) -> Result<Option<Raw<RawSummary>>, BillingError> {
    let Some((lo, hi)) = plan.span() else {
        return Ok(None);
    };
    if !cfg.reconcile_raw || sel.devices.is_empty() {
        return Ok(None);
    }
    let reg = &cfg.registry;
    let devs: &[Dev] = &plan.devs;
    let raw = tables::load_raw(
        source,
        sel,
        lo.timestamp_micros(),
        hi.timestamp_micros(),
        |dev, chan, kind, readings| {
            let d = &devs[dev as usize];
            let (channel, spec) = &d.channels[chan as usize];
            reconcile::summarize(
                kind,
                readings,
                d.from.timestamp_micros(),
                d.to.timestamp_micros(),
                &reg.counter_rules(d.id, channel, spec),
            )
        },
    )?;
    Ok(Some(raw))
}
