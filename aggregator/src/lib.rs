//! gridmeter-aggregator: raw readings → usage that billing can trust.
//!
//! - [`run_once`] / [`run_shard`]: incremental. Finds the `raw` files not processed yet,
//!   advances the per-device watermark (max event time − allowed lateness), recomputes the
//!   affected windows from raw with DataFusion and commits the rows whose values changed
//!   (revision 1 for a new key, n+1 flagged `late` for a restatement) to
//!   `usage_history_<w>` and `usage_<w>`, exactly once per run (`gridmeter_tables::usage`).
//!   A shard (`--shard I/N`) aggregates only the devices that hash to it, concurrently with
//!   the other shards.
//! - [`rebuild`]: the same computation for a time range of every device; it writes nothing
//!   when the tables already hold what raw says.
//! - [`current`]: the current row of every key.
//! - [`migrate`]: converts a data root in the pre-Delta layout.
//! - With `[vee]`: validation rules ([`validation`], failures to the `exceptions` table),
//!   estimation of long gaps by profile and of the open end ([`estimation`], [`close`]), and
//!   billing-team edits ([`edit`], the `edits` table), all applied at every computation
//!   ([`vee`]).
//!
//! The semantics of a window (counter interpolation, rollover, reset, coverage, gauges)
//! are in [`series`]; the tables and their commit protocol in `gridmeter_tables`.

pub mod config;
pub mod estimation;
pub mod metrics;
mod parallel;
pub mod raw;
pub mod series;
pub mod state;
pub mod validation;
pub mod vee;

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, NaiveDate, Utc};
use gridmeter_core::store::DataRoot;
use gridmeter_tables::usage::{Key, UsageTables};
use gridmeter_tables::{Flags, Root, Shard, Table};

pub use config::AggregatorConfig;
pub use gridmeter_tables::usage::UsageRow;
pub use metrics::Metrics;

use config::{WindowSpec, DAY_US};
use raw::{RawFile, RawFilter, SeriesData};
use series::{Prepared, SeriesParams, LATE};

/// What can go wrong while aggregating.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config: {0}")]
    Config(String),
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("object store: {0}")]
    OpenStore(#[from] gridmeter_core::store::StoreError),
    #[error("query: {0}")]
    Query(#[from] datafusion::error::DataFusionError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("unexpected data: {0}")]
    Schema(String),
    #[error("state file: {0}")]
    State(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Table(#[from] gridmeter_tables::TableError),
    #[error("{0}")]
    Internal(String),
}

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub files_processed: usize,
    pub readings_processed: u64,
    pub late_readings: u64,
    /// Rows written per window table.
    pub rows_written: BTreeMap<String, usize>,
    /// Rows written with revision > 1, per window table.
    pub revisions: BTreeMap<String, usize>,
    /// Committed run version per window (the Delta transaction version of this run).
    pub commits: BTreeMap<String, i64>,
    /// Runs completed from history after a crash between the two commits, per window.
    pub recovered: BTreeMap<String, i64>,
    /// Devices held back in this run, with the reason (their series failed or would create
    /// too many windows): nothing of theirs was written, their watermark did not advance,
    /// and the next run retries them. Everyone else was processed.
    pub held: BTreeMap<String, String>,
    /// Validation failures recorded in the `exceptions` table, per rule.
    pub exceptions: BTreeMap<String, usize>,
    /// Rows written flagged `estimated`, per window table.
    pub estimated: BTreeMap<String, usize>,
}

/// Which windows of a device to recompute.
#[derive(Debug, Clone, Copy)]
struct DeviceRange {
    /// Windows starting at or after this are recomputed.
    from: i64,
    /// Earliest new reading (incremental runs): windows overlapping the time since the
    /// series' reading before it are recomputed too, since interpolation across that
    /// step changes.
    earliest_new: Option<i64>,
    /// Windows ending after this are not recomputed (besides the watermark).
    to: i64,
}

/// The opened data root and its tables.
struct Opened {
    root: Root,
    raw: Table,
    /// Per window name.
    usage: BTreeMap<String, UsageTables>,
}

impl Opened {
    /// A DataFusion session that reads the data root's files by URL.
    fn session(&self) -> datafusion::prelude::SessionContext {
        let ctx = raw::session();
        ctx.register_object_store(self.root.storage_url(), self.root.storage().clone());
        ctx
    }

    fn usage(&self, window: &str) -> Result<&UsageTables, Error> {
        self.usage
            .get(window)
            .ok_or_else(|| Error::Config(format!("window {window:?} is not configured")))
    }
}

/// Opens the data root and its tables (created if missing).
async fn open(config: &AggregatorConfig) -> Result<Opened, Error> {
    let root = Root::open(&DataRoot::choose(
        config.data_root.as_deref(),
        config.object_store.as_ref(),
    )?)?;
    let raw = gridmeter_tables::raw::open(&root).await?;
    let mut usage = BTreeMap::new();
    for spec in config.window_specs() {
        usage.insert(
            spec.name.clone(),
            UsageTables::open(&root, &spec.name).await?,
        );
    }
    Ok(Opened { root, raw, usage })
}

/// The transaction application id (and state file name) of a shard's runs.
pub fn app_id(shard: Shard) -> String {
    if shard.is_all() {
        "aggregator".into()
    } else {
        format!("aggregator-shard-{}-of-{}", shard.index, shard.count)
    }
}

/// A current-table partition where a shard has this many small files is merged into one.
const COMPACT_AFTER_FILES: usize = 8;

/// Compaction commits of `raw` older than the state's version are followed through at most
/// this many log entries; beyond, their files are simply reprocessed (harmless).
const MAX_LOG_WALK: i64 = 2_000;

/// The raw files of the latest snapshot, and those of them not processed yet. Files a
/// compaction wrote from files all processed count as processed (followed through the log
/// since the state's version).
async fn raw_files_to_process(
    raw_table: &Table,
    state: &mut state::State,
) -> Result<(Vec<RawFile>, Vec<RawFile>), Error> {
    let snapshot = raw_table.snapshot().await?;
    let version = snapshot.version();
    if let Some(from) = state.raw_version.filter(|v| version - v <= MAX_LOG_WALK) {
        for v in from + 1..=version {
            let Some(c) = raw_table.commit_summary(v).await? else {
                continue;
            };
            if c.operation.as_deref() == Some("OPTIMIZE")
                && c.removed.iter().all(|p| state.processed.contains(p))
            {
                state.processed.extend(c.added);
            }
        }
    }
    let all = raw::raw_files(raw_table, &snapshot);
    let active: HashSet<&str> = all.iter().map(|f| f.path.as_str()).collect();
    state.processed.retain(|p| active.contains(p.as_str()));
    state.raw_version = Some(version);
    let new = all
        .iter()
        .filter(|f| !state.processed.contains(&f.path))
        .cloned()
        .collect();
    Ok((all, new))
}

fn check(config: &AggregatorConfig) -> Result<(), Error> {
    let mut p = gridmeter_core::config::Problems::new();
    gridmeter_core::config::Validate::validate(config, &mut p);
    if p.is_empty() {
        Ok(())
    } else {
        Err(Error::Config(p.iter().collect::<Vec<_>>().join("; ")))
    }
}

fn day_of(us: i64) -> NaiveDate {
    DateTime::<Utc>::from_timestamp_micros(us.div_euclid(DAY_US) * DAY_US)
        .map(|d| d.date_naive())
        .unwrap_or_default()
}

fn align_day(us: i64) -> i64 {
    us.div_euclid(DAY_US) * DAY_US
}

/// Processes the raw files not processed yet and commits what changed (every device).
pub async fn run_once(config: &AggregatorConfig, metrics: &Metrics) -> Result<RunSummary, Error> {
    run_shard(config, Shard::ALL, metrics).await
}

/// [`run_once`] for the devices of one shard only. Shards run concurrently (one process
/// each, e.g. a Kubernetes Indexed Job) commit to the same tables without overwriting each
/// other's rows; each keeps its own state (`_state/<app>.json`).
pub async fn run_shard(
    config: &AggregatorConfig,
    shard: Shard,
    metrics: &Metrics,
) -> Result<RunSummary, Error> {
    let started = std::time::Instant::now();
    let result = run_once_inner(config, shard, metrics).await;
    match &result {
        Ok(s) => {
            metrics.last_success.set(Utc::now().timestamp() as f64);
            tracing::info!(
                files = s.files_processed,
                readings = s.readings_processed,
                late = s.late_readings,
                rows = ?s.rows_written,
                held = s.held.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "aggregation run done"
            );
        }
        Err(e) => tracing::error!("aggregation run failed: {e}"),
    }
    result
}

async fn run_once_inner(
    config: &AggregatorConfig,
    shard: Shard,
    metrics: &Metrics,
) -> Result<RunSummary, Error> {
    check(config)?;
    let opened = open(config).await?;
    let app = app_id(shard);
    let mut summary = RunSummary::default();
    // A run that crashed between its history and current commits is completed first.
    for (window, tables) in &opened.usage {
        if let Some(v) = tables.recover(&app).await? {
            summary.recovered.insert(window.clone(), v);
        }
    }
    let ctx = opened.session();
    let store = opened.root.store();
    let mut state = state::State::load(store.as_ref(), &app).await?;
    let (all_files, new_files) = raw_files_to_process(&opened.raw, &mut state).await?;
    summary.files_processed = new_files.len();
    if new_files.is_empty() && state.held.is_empty() {
        state.save(store.as_ref(), &app).await?;
        return Ok(summary);
    }
    let lateness = config.lateness_us();
    let mut times = raw::device_times(&ctx, &new_files).await?;
    times.retain(|device, _| shard.owns(device));
    // Per device: the new readings' earliest time and newest trusted time; a device held
    // back by an earlier run is retried over its span too.
    let mut spans: HashMap<String, (i64, Option<i64>)> = HashMap::new();
    for (device, t) in &times {
        let Some(&min_new) = t.ts.iter().min() else {
            continue;
        };
        summary.readings_processed += t.ts.len() as u64;
        if let Some(wm) = state.watermarks.get(device).map(|m| m - lateness) {
            summary.late_readings += t.ts.iter().filter(|&&x| x < wm).count() as u64;
        }
        spans.insert(device.clone(), (min_new, t.max_trusted));
    }
    for (device, h) in &state.held {
        let span = spans
            .entry(device.clone())
            .or_insert((h.earliest_new_us, h.max_trusted_us));
        span.0 = span.0.min(h.earliest_new_us);
        span.1 = span.1.max(h.max_trusted_us);
    }
    // Per device: windows from `lo` (day-aligned) up to the new watermark are recomputed.
    let mut ranges: HashMap<String, DeviceRange> = HashMap::new();
    let old_watermarks = state.watermarks.clone();
    for (device, &(min_new, max_trusted)) in &spans {
        let old_max = state.watermarks.get(device).copied();
        let old_wm = old_max.map(|m| m - lateness);
        // Only readings not flagged clock_suspect advance the watermark; a device with no
        // trusted reading yet has no final window.
        let Some(new_max) = old_max.max(max_trusted) else {
            continue;
        };
        state.watermarks.insert(device.clone(), new_max);
        // Windows that become final now start after the old watermark's day.
        let from = align_day(old_wm.map_or(min_new, |w| w.min(min_new)));
        ranges.insert(
            device.clone(),
            DeviceRange {
                from,
                earliest_new: Some(min_new),
                to: new_max - lateness,
            },
        );
    }
    metrics
        .readings_processed
        .inc_by(summary.readings_processed);
    metrics.late_readings.inc_by(summary.late_readings);
    let watermarks: HashMap<String, i64> = ranges.iter().map(|(d, r)| (d.clone(), r.to)).collect();
    let inputs = run_inputs(config, &opened).await?;
    for batch in device_batches(&ranges, config.devices_per_batch) {
        recompute(
            config,
            &opened,
            &app,
            &ctx,
            &all_files,
            &batch,
            &watermarks,
            true,
            &inputs,
            metrics,
            &mut summary,
        )
        .await?;
    }
    for device in ranges.keys() {
        match summary.held.get(device) {
            None => {
                state.held.remove(device);
            }
            Some(reason) => {
                // Held back: the watermark stays, the span is retried next run.
                match old_watermarks.get(device) {
                    Some(&w) => state.watermarks.insert(device.clone(), w),
                    None => state.watermarks.remove(device),
                };
                let (earliest_new_us, max_trusted_us) = spans[device];
                state.held.insert(
                    device.clone(),
                    state::HeldDevice {
                        reason: reason.clone(),
                        earliest_new_us,
                        max_trusted_us,
                    },
                );
            }
        }
    }
    metrics.devices_held.set(state.held.len() as i64);
    state
        .processed
        .extend(new_files.iter().map(|f| f.path.clone()));
    state.save(store.as_ref(), &app).await?;
    if let Some(max_wm) = state.watermarks.values().map(|m| m - lateness).max() {
        let lag = (Utc::now().timestamp_micros() - max_wm) as f64 / 1e6;
        metrics.watermark_lag.set(lag);
    }
    Ok(summary)
}

/// `ranges` split into batches of at most `per_batch` devices, in device id order (one
/// batch of all when `None`), so that a rerun after a crash forms the same batches from the
/// same input.
fn device_batches(
    ranges: &HashMap<String, DeviceRange>,
    per_batch: Option<usize>,
) -> Vec<HashMap<String, DeviceRange>> {
    let mut devices: Vec<&String> = ranges.keys().collect();
    devices.sort();
    let size = per_batch.unwrap_or(usize::MAX).max(1);
    devices
        .chunks(size)
        .map(|chunk| chunk.iter().map(|&d| (d.clone(), ranges[d])).collect())
        .collect()
}

/// Recomputes every device's windows that start in `[from, to)` from raw and commits the
/// rows that differ from the tables (revision n+1, without the `late` flag). Windows that
/// are not final yet (the device's watermark has not passed their end) are left out, as in
/// [`run_once`], so a rebuild of unchanged raw writes nothing.
pub async fn rebuild(
    config: &AggregatorConfig,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    metrics: &Metrics,
) -> Result<RunSummary, Error> {
    rebuild_devices(config, None, from, to, None, metrics).await
}

/// Estimates every counter that has not reported up to `until` (the period end) from its
/// last reading to `until` (flagged `estimated,method_open_end`), and computes every other
/// device's windows up to `until`, so the period can be billed. When the actual readings
/// arrive, the next run replaces the estimates by a new revision. Needs `[vee]`.
pub async fn close(
    config: &AggregatorConfig,
    until: DateTime<Utc>,
    metrics: &Metrics,
) -> Result<RunSummary, Error> {
    if config.vee.is_none() {
        return Err(Error::Config(
            "close estimates the open end: configure [vee] first".into(),
        ));
    }
    let to = until.timestamp_micros();
    rebuild_devices(config, None, until, until, Some(to), metrics).await
}

/// [`rebuild`] of some devices (all when `None`); with `open_end_until`, windows go up to
/// that time with the open end estimated ([`close`]).
async fn rebuild_devices(
    config: &AggregatorConfig,
    only: Option<&HashSet<String>>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    open_end_until: Option<i64>,
    metrics: &Metrics,
) -> Result<RunSummary, Error> {
    check(config)?;
    let opened = open(config).await?;
    let app = app_id(Shard::ALL);
    for tables in opened.usage.values() {
        tables.recover(&app).await?;
    }
    let ctx = opened.session();
    let snapshot = opened.raw.snapshot().await?;
    let all_files = raw::raw_files(&opened.raw, &snapshot);
    let lateness = config.lateness_us();
    let mut times = raw::device_times(&ctx, &all_files).await?;
    if let Some(only) = only {
        times.retain(|d, _| only.contains(d));
    }
    let mut ranges = HashMap::new();
    let mut watermarks = HashMap::new();
    let (from, to) = (from.timestamp_micros(), to.timestamp_micros());
    for (device, t) in times {
        if let Some(max) = t.max_trusted {
            // Closing a period: from the device's watermark (its first window not final) to
            // the period end.
            let (wm, from) = match open_end_until {
                Some(until) => (until, align_day((max - lateness).min(until))),
                None => (max - lateness, from),
            };
            watermarks.insert(device.clone(), wm);
            ranges.insert(
                device,
                DeviceRange {
                    from,
                    earliest_new: None,
                    to,
                },
            );
        }
    }
    let mut summary = RunSummary {
        files_processed: all_files.len(),
        ..Default::default()
    };
    let mut inputs = run_inputs(config, &opened).await?;
    inputs.open_end_until = open_end_until;
    for batch in device_batches(&ranges, config.devices_per_batch) {
        recompute(
            config,
            &opened,
            &app,
            &ctx,
            &all_files,
            &batch,
            &watermarks,
            false,
            &inputs,
            metrics,
            &mut summary,
        )
        .await?;
    }
    metrics.last_success.set(Utc::now().timestamp() as f64);
    Ok(summary)
}

/// The current rows (one per key) of one window's `usage_<window>` table, sorted by key.
pub async fn current(config: &AggregatorConfig, window: &str) -> Result<Vec<UsageRow>, Error> {
    let opened = open(config).await?;
    let mut rows: Vec<UsageRow> = opened
        .usage(window)?
        .current_rows(None, None)
        .await?
        .into_values()
        .collect();
    rows.sort_by_key(UsageRow::key);
    Ok(rows)
}

/// Calls `f` with the current rows of one window's table a file at a time (every row once,
/// in no particular order): a fold over a large fleet's table holds one file's rows.
pub async fn for_each_current(
    config: &AggregatorConfig,
    window: &str,
    f: impl FnMut(Vec<UsageRow>),
) -> Result<(), Error> {
    Ok(open(config)
        .await?
        .usage(window)?
        .for_each_current(f)
        .await?)
}

fn params_for(config: &AggregatorConfig, s: &SeriesData) -> SeriesParams {
    SeriesParams {
        kind: s.kind,
        rules: config.counter_rules(&s.device_id, &s.channel),
        max_gap_us: config.max_gap_us(),
    }
}

/// Loads the raw series of the devices in `ranges` with enough history before each range
/// that every window computed is fully determined by what was loaded; returns each series
/// with the start of its windows to recompute.
async fn load_with_context(
    ctx: &datafusion::prelude::SessionContext,
    files: &[RawFile],
    ranges: &HashMap<String, DeviceRange>,
    context_us: i64,
    needs_from: &(dyn Fn(&SeriesData, i64) -> i64 + Sync),
) -> Result<Vec<(SeriesData, i64)>, Error> {
    let lowest = |r: &DeviceRange| r.earliest_new.map_or(r.from, |t| r.from.min(align_day(t)));
    let Some(min_lo) = ranges.values().map(lowest).min() else {
        return Ok(Vec::new());
    };
    let cut = day_of(min_lo - context_us) - chrono::Days::new(1);
    let (early, late): (Vec<RawFile>, Vec<RawFile>) =
        files.iter().cloned().partition(|f| f.date < cut);
    let devices: HashSet<String> = ranges.keys().cloned().collect();
    let filter = RawFilter {
        devices: Some(devices),
        ..Default::default()
    };
    let mut series = raw::load_series(ctx, &late, &filter).await?;
    // Where each series' recomputation starts, and whether the loaded readings reach back
    // far enough to determine that window's start boundary.
    let start_of = |s: &SeriesData| -> Option<(i64, bool)> {
        let r = ranges.get(&s.device_id)?;
        let from = match r.earliest_new {
            None => r.from,
            Some(t) => {
                let before = s.points.partition_point(|p| p.ts < t);
                let prev = if before > 0 {
                    s.points[before - 1].ts
                } else {
                    t
                };
                r.from.min(align_day(prev))
            }
        };
        let enough = s
            .points
            .first()
            .is_some_and(|p| p.ts <= needs_from(s, from));
        Some((from, enough))
    };
    let need_more: HashSet<String> = series
        .iter()
        .filter(|s| start_of(s).is_some_and(|(_, enough)| !enough))
        .map(|s| s.device_id.clone())
        .collect();
    if !need_more.is_empty() && !early.is_empty() {
        let filter = RawFilter {
            devices: Some(need_more),
            ..Default::default()
        };
        let older = raw::load_series(ctx, &early, &filter).await?;
        let mut index: HashMap<(String, String), usize> = series
            .iter()
            .enumerate()
            .map(|(i, s)| ((s.device_id.clone(), s.channel.clone()), i))
            .collect();
        for o in older {
            match index.get(&(o.device_id.clone(), o.channel.clone())) {
                Some(&i) => {
                    series[i].points.extend(o.points);
                    series[i].problem = series[i].problem.take().or(o.problem);
                    series::dedup_and_sort(&mut series[i].points);
                }
                None => {
                    index.insert((o.device_id.clone(), o.channel.clone()), series.len());
                    series.push(o);
                }
            }
        }
    }
    Ok(series
        .into_iter()
        .filter_map(|s| {
            let (from, _) = start_of(&s)?;
            Some((s, from))
        })
        .collect())
}

#[allow(clippy::too_many_arguments)]
async fn recompute(
    config: &AggregatorConfig,
    opened: &Opened,
    app: &str,
    ctx: &datafusion::prelude::SessionContext,
    files: &[RawFile],
    ranges: &HashMap<String, DeviceRange>,
    watermarks: &HashMap<String, i64>,
    mark_late: bool,
    inputs: &vee::RunInputs,
    metrics: &Metrics,
    summary: &mut RunSummary,
) -> Result<(), Error> {
    let specs = config.window_specs();
    let base_us = specs.iter().map(|s| s.size_us).min().unwrap_or(DAY_US);
    type NeedsFrom<'a> = Box<dyn Fn(&SeriesData, i64) -> i64 + Sync + 'a>;
    let (context_us, needs_from): (i64, NeedsFrom) = match &config.vee {
        None => (0, Box::new(|_: &SeriesData, from: i64| from)),
        Some(v) => {
            let ctx = vee::rules_context_us(v, base_us);
            (
                ctx,
                Box::new(move |s: &SeriesData, from: i64| {
                    vee::needs_from(config, v, inputs, s, from, ctx)
                }),
            )
        }
    };
    let series = load_with_context(ctx, files, ranges, context_us, needs_from.as_ref()).await?;
    let computed_at = Utc::now().timestamp_micros();
    let per_series: Vec<Vec<Outcome>> = parallel::map(&series, |(s, from)| {
        let Some(range) = ranges.get(&s.device_id) else {
            return Vec::new();
        };
        let wm = watermarks.get(&s.device_id).copied().unwrap_or(i64::MIN);
        let to = range.to.min(wm);
        // One series' failure (a panic, e.g. an arithmetic overflow on absurd values, or
        // too many windows) holds back its device only.
        let rows = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            series_rows(config, &specs, inputs, s, *from, to, computed_at)
        }));
        let failed = |why: String| {
            vec![Outcome::Held(
                s.device_id.clone(),
                format!(
                    "series {}: {why}",
                    gridmeter_core::text::excerpt(&s.channel)
                ),
            )]
        };
        match rows {
            Ok(Ok((rows, failures))) => rows
                .into_iter()
                .map(|(wi, r)| Outcome::Row(wi, r))
                .chain(
                    failures
                        .into_iter()
                        .map(|f| Outcome::Failure(s.device_id.clone(), s.channel.clone(), f)),
                )
                .collect(),
            Ok(Err(why)) => failed(why),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|m| m.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                failed(format!(
                    "computing its windows failed: {}",
                    gridmeter_core::text::clip(&msg, 200)
                ))
            }
        }
    });
    let min_from = series.iter().map(|(_, f)| *f).min();
    drop(series);
    let (by_window, failures) = sort_outcomes(per_series, specs.len(), summary);
    let devices: HashSet<String> = ranges.keys().cloned().collect();
    for (spec, mut changed) in specs.iter().zip(by_window) {
        let tables = opened.usage(&spec.name)?;
        if !changed.is_empty() {
            // In place: the batch's rows are never held twice.
            let current = tables.current_rows(Some(&devices), min_from).await?;
            changed.retain_mut(|row| match current.get(&row.key()) {
                Some(cur) if cur.same_values(row) => false,
                Some(cur) => {
                    row.revision = cur.revision + 1;
                    if mark_late {
                        row.flags |= LATE;
                    }
                    true
                }
                None => true,
            });
        }
        if changed.is_empty() {
            continue;
        }
        let revisions = changed.iter().filter(|r| r.revision > 1).count();
        let n = changed.len();
        let estimated = changed
            .iter()
            .filter(|r| r.flags.contains(Flags::ESTIMATED))
            .count();
        let written = metrics::Written::of(&changed);
        let timer = metrics.commit_duration.start_timer();
        let version = tables.next_version(app).await?;
        if spec.size_us == base_us && !failures.is_empty() {
            // Before the usage commit, with its version: a retry after a crash in between
            // finds them committed and adds nothing twice.
            let rows = exception_rows(&changed, &failures, computed_at);
            if !rows.is_empty() {
                for r in &rows {
                    *summary.exceptions.entry(r.rule.clone()).or_default() += 1;
                    metrics.exceptions.with_label_values(&[&r.rule]).inc();
                }
                let table = gridmeter_tables::exceptions::open(&opened.root).await?;
                gridmeter_tables::exceptions::append(&table, app, version, rows).await?;
            }
        }
        if estimated > 0 {
            *summary.estimated.entry(spec.name.clone()).or_default() += estimated;
        }
        let committed = match tables.commit(app, version, changed).await {
            Ok(c) => c,
            Err(e) => {
                metrics.commit_errors.inc();
                return Err(e.into());
            }
        };
        timer.observe_duration();
        metrics.observe_written(&spec.name, &written);
        metrics.commits.with_label_values(&[&spec.name]).inc();
        metrics
            .revisions
            .with_label_values(&[&spec.name])
            .inc_by(revisions as u64);
        tracing::info!(
            window = %spec.name,
            app,
            version,
            rows = n,
            revisions,
            rewritten = committed.rewritten,
            retries = committed.retries,
            "committed"
        );
        *summary.rows_written.entry(spec.name.clone()).or_default() += n;
        *summary.revisions.entry(spec.name.clone()).or_default() += revisions;
        summary.commits.insert(spec.name.clone(), version);
        let merged = tables.compact(app, COMPACT_AFTER_FILES).await?;
        if merged > 0 {
            tracing::info!(window = %spec.name, files = merged, "small files merged");
        }
    }
    Ok(())
}

/// The exceptions of the base-window rows written in this run: one per failure of a row
/// that is new or revised (with the row's revision).
fn exception_rows(
    changed: &[UsageRow],
    failures: &HashMap<Key, Vec<validation::Failure>>,
    detected_at: i64,
) -> Vec<gridmeter_tables::exceptions::ExceptionRow> {
    let mut out = Vec::new();
    for r in changed {
        let Some(fs) = failures.get(&r.key()) else {
            continue;
        };
        for f in fs {
            out.push(gridmeter_tables::exceptions::ExceptionRow {
                device_id: r.device_id.clone(),
                channel: r.channel.clone(),
                window: r.window.clone(),
                window_start: f.start,
                window_end: f.end,
                rule: f.rule.name().to_string(),
                severity: f.severity.clone(),
                observed: f.observed,
                threshold: f.threshold,
                action: if f.estimate { "estimate" } else { "flag" }.to_string(),
                revision: r.revision,
                detected_at,
            });
        }
    }
    out
}

/// The edits (when `[vee]` is configured and the `edits` table exists) for this run.
async fn run_inputs(config: &AggregatorConfig, opened: &Opened) -> Result<vee::RunInputs, Error> {
    if config.vee.is_none() {
        return Ok(vee::RunInputs::default());
    }
    match Table::open_existing(&opened.root, gridmeter_tables::edits::spec()).await? {
        Some(t) => Ok(vee::RunInputs::with_edits(
            &gridmeter_tables::edits::read_all(&t).await?,
        )),
        None => Ok(vee::RunInputs::default()),
    }
}

/// What computing one series gave: a row for a window table, a validation failure, or its
/// device held back. Nearly every value is a row, so rows are not boxed (that would
/// allocate per row).
#[allow(clippy::large_enum_variant)]
enum Outcome {
    Row(usize, UsageRow),
    Failure(String, String, validation::Failure),
    Held(String, String),
}

/// The validation failures of a batch, by key.
type Failures = HashMap<Key, Vec<validation::Failure>>;

/// Sorts a batch's outcomes into rows per window (index into the window specs, each vector
/// allocated once at its final size) and failures by key; records held devices in `summary`
/// and leaves their rows out. Each series' outcomes are freed as they are moved, so the
/// batch's rows are in memory about once.
fn sort_outcomes(
    per_series: Vec<Vec<Outcome>>,
    windows: usize,
    summary: &mut RunSummary,
) -> (Vec<Vec<UsageRow>>, Failures) {
    for o in per_series.iter().flatten() {
        if let Outcome::Held(device, reason) = o {
            tracing::error!(device = %device, "device held back: {reason}");
            summary
                .held
                .entry(device.clone())
                .or_insert_with(|| reason.clone());
        }
    }
    let mut counts = vec![0usize; windows];
    for o in per_series.iter().flatten() {
        if let Outcome::Row(wi, row) = o {
            if !summary.held.contains_key(&row.device_id) {
                counts[*wi] += 1;
            }
        }
    }
    let mut by_window: Vec<Vec<UsageRow>> = counts.into_iter().map(Vec::with_capacity).collect();
    let mut failures = Failures::new();
    for outcomes in per_series {
        for o in outcomes {
            match o {
                Outcome::Row(wi, row) if !summary.held.contains_key(&row.device_id) => {
                    by_window[wi].push(row);
                }
                Outcome::Failure(device, channel, f) => failures
                    .entry((device, channel, f.start))
                    .or_default()
                    .push(f),
                Outcome::Row(..) | Outcome::Held(..) => {}
            }
        }
    }
    (by_window, failures)
}

/// The rows of one series for every window size and its validation failures (of windows
/// of the smallest size), or why it cannot be aggregated.
#[allow(clippy::type_complexity)]
fn series_rows(
    config: &AggregatorConfig,
    specs: &[WindowSpec],
    inputs: &vee::RunInputs,
    s: &SeriesData,
    from: i64,
    to: i64,
    computed_at: i64,
) -> Result<(Vec<(usize, UsageRow)>, Vec<validation::Failure>), String> {
    if let Some(problem) = &s.problem {
        return Err(problem.clone());
    }
    let params = params_for(config, s);
    let base_us = specs.iter().map(|s| s.size_us).min().unwrap_or(DAY_US);
    let planned = config
        .vee
        .as_ref()
        .map(|v| vee::plan(config, v, inputs, s, &params, base_us, from, to));
    let (prepared, failures) = match &planned {
        Some(p) => (
            Prepared::with_vee(&p.points, &params, p.vee.clone()),
            p.failures.clone(),
        ),
        None => (Prepared::new(&s.points, &params), Vec::new()),
    };
    for spec in specs {
        let n = prepared.window_count(spec.size_us, from, to);
        if n > u128::from(config.max_windows_per_series) {
            let at = |p: Option<&series::Point>| {
                p.and_then(|p| DateTime::<Utc>::from_timestamp_micros(p.ts))
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_default()
            };
            return Err(format!(
                "would create {n} windows of {} (max_windows_per_series = {}); its readings span {} to {}",
                spec.name,
                config.max_windows_per_series,
                at(s.points.first()),
                at(s.points.last())
            ));
        }
    }
    let mut out = Vec::new();
    for (wi, spec) in specs.iter().enumerate() {
        for w in prepared.windows(spec.size_us, from, to) {
            out.push((wi, to_row(s, spec, w, computed_at)));
        }
    }
    Ok((out, failures))
}

fn to_row(
    s: &SeriesData,
    spec: &WindowSpec,
    w: series::WindowValues,
    computed_at: i64,
) -> UsageRow {
    UsageRow {
        device_id: s.device_id.clone(),
        channel: s.channel.clone(),
        kind: s.kind.as_str().to_string(),
        unit: s.unit.clone(),
        window: spec.name.clone(),
        window_start: w.start,
        window_end: w.end,
        usage: w.usage,
        min: w.min,
        max: w.max,
        avg: w.avg,
        last: w.last,
        readings: w.readings,
        first_ts: w.first_ts,
        last_ts: w.last_ts,
        coverage: w.coverage,
        flags: w.flags,
        revision: 1,
        computed_at,
    }
}

/// Converts a data root in the pre-Delta layout into the Delta tables, checked row for row
/// (`gridmeter_tables::migrate`); the old files are deleted once the check passed, unless
/// `keep_old`.
pub async fn migrate(
    config: &AggregatorConfig,
    keep_old: bool,
) -> Result<gridmeter_tables::migrate::Report, Error> {
    check(config)?;
    let root = Root::open(&DataRoot::choose(
        config.data_root.as_deref(),
        config.object_store.as_ref(),
    )?)?;
    let windows: Vec<String> = config.window_specs().into_iter().map(|w| w.name).collect();
    Ok(gridmeter_tables::migrate::run(&root, &windows, keep_old).await?)
}

/// Vacuums every table under the data root (`raw`, `gaps`, `deadletter` and the usage
/// tables of the configured windows): deletes the files no version younger than
/// `retention` needs. Returns (table, files deleted or, with `dry_run`, to delete).
pub async fn vacuum(
    config: &AggregatorConfig,
    retention: chrono::Duration,
    dry_run: bool,
) -> Result<Vec<(String, usize)>, Error> {
    check(config)?;
    let root = Root::open(&DataRoot::choose(
        config.data_root.as_deref(),
        config.object_store.as_ref(),
    )?)?;
    let mut specs = vec![
        gridmeter_tables::raw::spec(),
        gridmeter_tables::gaps::spec(),
        gridmeter_tables::deadletter::spec(),
    ];
    specs.push(gridmeter_tables::exceptions::spec());
    specs.push(gridmeter_tables::edits::spec());
    for w in config.window_specs() {
        specs.push(gridmeter_tables::usage::history_spec(&w.name));
        specs.push(gridmeter_tables::usage::current_spec(&w.name));
    }
    let mut out = Vec::new();
    for spec in specs {
        if let Some(table) = Table::open_existing(&root, spec).await? {
            out.push((
                table.name().to_string(),
                table.vacuum(retention, dry_run).await?,
            ));
        }
    }
    Ok(out)
}

/// One edit as the billing team asks for it (`gridmeter-aggregator edit`, or an entry of a
/// reviewed edits file).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditRequest {
    /// The device.
    pub device_id: String,
    /// Its channel (a counter).
    pub channel: String,
    /// The window size the value refers to (default `15m`, the table billing reads).
    #[serde(default = "default_edit_window")]
    pub window: String,
    /// Start of the first window edited (aligned to `window`).
    pub from: DateTime<Utc>,
    /// End of the last window edited (aligned to `window`).
    pub to: DateTime<Utc>,
    /// The usage of every window in `[from, to)`.
    #[serde(default)]
    pub set: Option<rust_decimal::Decimal>,
    /// The factor every window's usage in `[from, to)` is multiplied by.
    #[serde(default)]
    pub scale: Option<rust_decimal::Decimal>,
    /// Why (recorded in the `edits` table).
    pub reason: String,
    /// Who asks for it (recorded).
    pub who: String,
}

fn default_edit_window() -> String {
    "15m".into()
}

/// A reviewed edits file: `[[edits]]` entries ([`EditRequest`]).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditsFile {
    /// The edits, applied in file order.
    pub edits: Vec<EditRequest>,
}

impl gridmeter_core::config::Validate for EditsFile {
    fn validate(&self, p: &mut gridmeter_core::config::Problems) {
        for (i, e) in self.edits.iter().enumerate() {
            e.check(&format!("edits[{i}]"), None, p);
        }
    }
}

const MAX_EDIT_TEXT: usize = 1_000;

impl EditRequest {
    /// Every problem of the edit (against the configured windows when given).
    pub fn check(
        &self,
        key: &str,
        config: Option<&AggregatorConfig>,
        p: &mut gridmeter_core::config::Problems,
    ) {
        for (name, v) in [
            ("device_id", &self.device_id),
            ("channel", &self.channel),
            ("reason", &self.reason),
            ("who", &self.who),
        ] {
            if v.trim().is_empty() {
                p.push(format!("{key}.{name}"), "must not be empty");
            } else if v.len() > MAX_EDIT_TEXT {
                p.push(
                    format!("{key}.{name}"),
                    format!("is longer than {MAX_EDIT_TEXT} bytes"),
                );
            }
        }
        match config::parse_duration_us(&self.window) {
            Err(e) => p.push(format!("{key}.window"), e),
            Ok(size) => {
                if let Some(c) = config {
                    if !c.windows.contains(&self.window) {
                        p.push(
                            format!("{key}.window"),
                            format!("{:?} is not a configured window", self.window),
                        );
                    }
                }
                for (name, t) in [("from", self.from), ("to", self.to)] {
                    if size > 0 && t.timestamp_micros().rem_euclid(size) != 0 {
                        p.push(
                            format!("{key}.{name}"),
                            format!("is not aligned to {} windows", self.window),
                        );
                    }
                }
            }
        }
        if self.from >= self.to {
            p.push(format!("{key}.to"), "must be after from");
        }
        match (self.set, self.scale) {
            (Some(_), Some(_)) | (None, None) => p.push(key, "needs exactly one of set and scale"),
            (Some(d), None) | (None, Some(d)) => {
                if gridmeter_core::decimal::to_scaled_i128(d).is_none() {
                    p.push(key, "value has more than 9 decimal places");
                }
                if self.scale.is_some_and(|f| f < rust_decimal::Decimal::ZERO) {
                    p.push(format!("{key}.scale"), "must not be negative");
                }
            }
        }
    }
}

/// Records `requests` in the `edits` table (with who, why and when) and recomputes the
/// devices' windows from the first edited day: the edited windows get a new revision
/// flagged `edited`. Every problem of every request is reported before anything is
/// written. Needs `[vee]`.
pub async fn edit(
    config: &AggregatorConfig,
    requests: &[EditRequest],
    metrics: &Metrics,
) -> Result<(Vec<gridmeter_tables::edits::EditRow>, RunSummary), Error> {
    check(config)?;
    if config.vee.is_none() {
        return Err(Error::Config(
            "edits are applied by the VEE stage: configure [vee] first".into(),
        ));
    }
    let mut p = gridmeter_core::config::Problems::new();
    for (i, r) in requests.iter().enumerate() {
        r.check(&format!("edits[{i}]"), Some(config), &mut p);
    }
    if !p.is_empty() {
        return Err(Error::Config(p.iter().collect::<Vec<_>>().join("; ")));
    }
    let Some(from) = requests.iter().map(|r| r.from).min() else {
        return Ok((Vec::new(), RunSummary::default()));
    };
    let to = requests.iter().map(|r| r.to).max().unwrap_or(from);
    let root = Root::open(&DataRoot::choose(
        config.data_root.as_deref(),
        config.object_store.as_ref(),
    )?)?;
    let table = gridmeter_tables::edits::open(&root).await?;
    let at = Utc::now().timestamp_micros();
    let rows: Vec<gridmeter_tables::edits::EditRow> = requests
        .iter()
        .map(|r| {
            let (action, value) = match (r.set, r.scale) {
                (Some(v), _) => (gridmeter_tables::edits::EditAction::Set, v),
                (None, Some(f)) => (gridmeter_tables::edits::EditAction::Scale, f),
                (None, None) => (
                    gridmeter_tables::edits::EditAction::Scale,
                    rust_decimal::Decimal::ONE,
                ),
            };
            gridmeter_tables::edits::EditRow {
                edit_id: 0,
                device_id: r.device_id.clone(),
                channel: r.channel.clone(),
                window: r.window.clone(),
                from: r.from.timestamp_micros(),
                to: r.to.timestamp_micros(),
                action,
                value: gridmeter_core::decimal::to_scaled_i128(value).unwrap_or(0),
                reason: r.reason.clone(),
                who: r.who.clone(),
                at,
            }
        })
        .collect();
    let recorded = gridmeter_tables::edits::append(&table, rows).await?;
    for e in &recorded {
        tracing::info!(edit = e.edit_id, device = %e.device_id, channel = %e.channel, who = %e.who, "edit recorded");
    }
    let devices: HashSet<String> = requests.iter().map(|r| r.device_id.clone()).collect();
    let from =
        DateTime::<Utc>::from_timestamp_micros(align_day(from.timestamp_micros())).unwrap_or(from);
    let to = DateTime::<Utc>::from_timestamp_micros(align_day(to.timestamp_micros()) + DAY_US)
        .unwrap_or(to);
    let summary = rebuild_devices(config, Some(&devices), from, to, None, metrics).await?;
    Ok((recorded, summary))
}

/// Every row of the `exceptions` table (none when it does not exist yet).
pub async fn exceptions(
    config: &AggregatorConfig,
) -> Result<Vec<gridmeter_tables::exceptions::ExceptionRow>, Error> {
    let root = Root::open(&DataRoot::choose(
        config.data_root.as_deref(),
        config.object_store.as_ref(),
    )?)?;
    match Table::open_existing(&root, gridmeter_tables::exceptions::spec()).await? {
        Some(t) => Ok(gridmeter_tables::exceptions::read_all(&t).await?),
        None => Ok(Vec::new()),
    }
}

/// Every row of the `edits` table, in id order (none when it does not exist yet).
pub async fn edits(
    config: &AggregatorConfig,
) -> Result<Vec<gridmeter_tables::edits::EditRow>, Error> {
    let root = Root::open(&DataRoot::choose(
        config.data_root.as_deref(),
        config.object_store.as_ref(),
    )?)?;
    match Table::open_existing(&root, gridmeter_tables::edits::spec()).await? {
        Some(t) => Ok(gridmeter_tables::edits::read_all(&t).await?),
        None => Ok(Vec::new()),
    }
}
