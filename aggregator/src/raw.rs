//! Reading the `raw` Delta table with DataFusion.
//!
//! The files of the table's snapshot (from its Delta log, never a directory listing) are read
//! by URL (`file:///…` or `s3://bucket/prefix/raw/…`) through the data root's storage,
//! registered on the session for that URL; the `date` partition of each file comes from the
//! log.
//!
//! DataFusion scans the Parquet files (only the date partitions needed, predicates on
//! `device_id` and `ts` pushed into the scan, one stream per core); the rows are then
//! grouped into (device, channel) series in Rust, deduplicated by `(device_id, seq)`
//! (earliest `received_at` wins) and sorted by time, ready for the sequential counter logic
//! in [`crate::series`].

use std::collections::{BTreeMap, HashMap, HashSet};

use arrow::array::{
    Array, AsArray, Decimal128Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::DataType;
use chrono::NaiveDate;
use datafusion::prelude::{col, lit, ParquetReadOptions, SessionContext};
use datafusion::scalar::ScalarValue;
use futures::StreamExt;
use gridmeter_core::Kind;
use gridmeter_tables::Flags;

use crate::series::{quality_flags, Point, CLOCK_SUSPECT};
use crate::Error;

/// One data file of the `raw` table's snapshot.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RawFile {
    /// Path relative to the table, e.g. `date=2026-01-01/c1-0000000000000001-0.parquet`.
    pub path: String,
    /// Its partition.
    pub date: NaiveDate,
    /// Its URL for DataFusion (through the data root's storage).
    pub url: String,
}

/// The data files of a snapshot of `raw`, sorted by path (files without a date partition
/// are skipped with a warning: the table is partitioned by date).
pub fn raw_files(
    table: &gridmeter_tables::Table,
    snapshot: &gridmeter_tables::Snapshot,
) -> Vec<RawFile> {
    let mut out = Vec::new();
    for f in snapshot.files() {
        match f.date {
            Some(date) => out.push(RawFile {
                url: table.file_url(&f),
                path: f.path,
                date,
            }),
            None => tracing::warn!(path = %f.path, "raw file without a date partition; skipped"),
        }
    }
    out.sort();
    out
}

/// The readings of one (device, channel), deduplicated and sorted by time.
#[derive(Debug, Clone)]
pub struct SeriesData {
    pub device_id: String,
    pub channel: String,
    pub kind: Kind,
    pub unit: String,
    pub points: Vec<Point>,
    /// Why the series cannot be aggregated (e.g. a `kind` the model does not know): its
    /// device is held back instead of failing the whole run.
    pub problem: Option<String>,
}

/// A DataFusion session for scanning raw files: one partition per core, strings as plain
/// `Utf8` (what the raw schema says).
pub fn session() -> SessionContext {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let config = datafusion::prelude::SessionConfig::new()
        .with_target_partitions(threads)
        .with_batch_size(65_536)
        .set_bool(
            "datafusion.execution.parquet.schema_force_view_types",
            false,
        )
        .set_bool("datafusion.execution.parquet.pushdown_filters", true);
    SessionContext::new_with_config(config)
}

fn ts_lit(us: i64) -> datafusion::prelude::Expr {
    lit(ScalarValue::TimestampMicrosecond(
        Some(us),
        Some("UTC".into()),
    ))
}

/// Which raw rows to read.
#[derive(Debug, Clone, Default)]
pub struct RawFilter {
    /// Only these devices (all when `None`).
    pub devices: Option<HashSet<String>>,
    /// Only readings at or after this time (µs).
    pub min_ts: Option<i64>,
    /// Only readings before this time (µs).
    pub max_ts: Option<i64>,
}

/// Scans `files` with DataFusion and returns the batches of each output partition as a
/// stream handled by `per_partition` concurrently (one task per partition).
async fn scan<T, F>(
    ctx: &SessionContext,
    files: &[RawFile],
    filter: &RawFilter,
    columns: &[&str],
    per_partition: F,
) -> Result<Vec<T>, Error>
where
    T: Send + 'static,
    F: Fn(Vec<RecordBatch>) -> Result<T, Error> + Send + Sync + Clone + 'static,
{
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let urls: Vec<String> = files.iter().map(|f| f.url.clone()).collect();
    let schema = gridmeter_core::schema::raw();
    let mut df = ctx
        .read_parquet(urls, ParquetReadOptions::default().schema(&schema))
        .await?;
    if let Some(devices) = &filter.devices {
        // A long IN list costs more than it saves; the caller drops other devices' series
        // after grouping instead (cheaper than a per-row filter).
        if devices.len() <= 256 {
            let list = devices.iter().map(|d| lit(d.as_str())).collect();
            df = df.filter(col("device_id").in_list(list, false))?;
        }
    }
    if let Some(t) = filter.min_ts {
        df = df.filter(col("ts").gt_eq(ts_lit(t)))?;
    }
    if let Some(t) = filter.max_ts {
        df = df.filter(col("ts").lt(ts_lit(t)))?;
    }
    let df = df.select_columns(columns)?;
    let streams = df.execute_stream_partitioned().await?;
    let mut tasks = Vec::new();
    for mut stream in streams {
        let f = per_partition.clone();
        tasks.push(tokio::spawn(async move {
            let mut batches = Vec::new();
            while let Some(batch) = stream.next().await {
                batches.push(batch?);
            }
            tokio::task::spawn_blocking(move || f(batches))
                .await
                .map_err(|e| Error::Internal(format!("scan task: {e}")))?
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(
            t.await
                .map_err(|e| Error::Internal(format!("scan task: {e}")))??,
        );
    }
    Ok(out)
}

fn string_col(batch: &RecordBatch, name: &str) -> Result<StringArray, Error> {
    let c = batch
        .column_by_name(name)
        .ok_or_else(|| Error::Schema(format!("column {name} missing")))?;
    let c = if c.data_type() == &DataType::Utf8 {
        c.clone()
    } else {
        arrow::compute::cast(c, &DataType::Utf8)?
    };
    Ok(c.as_string::<i32>().clone())
}

fn typed_col<T: Array + Clone + 'static>(batch: &RecordBatch, name: &str) -> Result<T, Error> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .cloned()
        .ok_or_else(|| Error::Schema(format!("column {name} missing or of the wrong type")))
}

type Grouped = HashMap<String, HashMap<String, SeriesData>>;

fn group(batches: Vec<RecordBatch>) -> Result<Grouped, Error> {
    let mut out: Grouped = HashMap::new();
    for batch in &batches {
        let device = string_col(batch, "device_id")?;
        let channel = string_col(batch, "channel")?;
        let kind = string_col(batch, "kind")?;
        let unit = string_col(batch, "unit")?;
        let quality = string_col(batch, "quality")?;
        let seq: Int64Array = typed_col(batch, "seq")?;
        let ts: TimestampMicrosecondArray = typed_col(batch, "ts")?;
        let received: TimestampMicrosecondArray = typed_col(batch, "received_at")?;
        let value: Decimal128Array = typed_col(batch, "value")?;
        for i in 0..batch.num_rows() {
            let (d, c) = (device.value(i), channel.value(i));
            let by_channel = match out.get_mut(d) {
                Some(m) => m,
                None => out.entry(d.to_string()).or_default(),
            };
            let series = match by_channel.get_mut(c) {
                Some(s) => s,
                None => {
                    let (k, problem) = match kind.value(i).parse::<Kind>() {
                        Ok(k) => (k, None),
                        Err(e) => (Kind::Gauge, Some(format!("raw rows: {e}"))),
                    };
                    by_channel.entry(c.to_string()).or_insert(SeriesData {
                        device_id: d.to_string(),
                        channel: c.to_string(),
                        kind: k,
                        unit: unit.value(i).to_string(),
                        points: Vec::new(),
                        problem,
                    })
                }
            };
            let q = quality.value(i);
            series.points.push(Point {
                ts: ts.value(i),
                seq: seq.value(i).max(0) as u64,
                received_at: received.value(i),
                value: value.value(i),
                quality: if q.is_empty() {
                    Flags::NONE
                } else {
                    quality_flags(q)
                },
            });
        }
    }
    Ok(out)
}

/// Reads the series in `files` that pass `filter`, deduplicated and sorted, ordered by
/// (device, channel).
pub async fn load_series(
    ctx: &SessionContext,
    files: &[RawFile],
    filter: &RawFilter,
) -> Result<Vec<SeriesData>, Error> {
    let columns = [
        "device_id",
        "seq",
        "ts",
        "channel",
        "kind",
        "unit",
        "value",
        "quality",
        "received_at",
    ];
    let parts = scan(ctx, files, filter, &columns, group).await?;
    let mut merged: BTreeMap<(String, String), SeriesData> = BTreeMap::new();
    for part in parts {
        for (_, by_channel) in part {
            for (_, s) in by_channel {
                match merged.get_mut(&(s.device_id.clone(), s.channel.clone())) {
                    Some(m) => {
                        m.points.extend(s.points);
                        m.problem = m.problem.take().or(s.problem);
                    }
                    None => {
                        merged.insert((s.device_id.clone(), s.channel.clone()), s);
                    }
                }
            }
        }
    }
    let mut out: Vec<SeriesData> = merged
        .into_values()
        .filter(|s| {
            filter
                .devices
                .as_ref()
                .is_none_or(|d| d.contains(&s.device_id))
        })
        .collect();
    crate::parallel::for_each_mut(&mut out, |s| crate::series::dedup_and_sort(&mut s.points));
    Ok(out)
}

/// The event times of one device's readings in a set of raw files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceTimes {
    /// Every reading's `ts` (µs), clock_suspect ones included.
    pub ts: Vec<i64>,
    /// The newest `ts` of a reading not flagged `clock_suspect`: only those may advance the
    /// device's watermark (a clock running ahead must not finalise windows early).
    pub max_trusted: Option<i64>,
}

/// Per device: the event times of the readings in `files`.
pub async fn device_times(
    ctx: &SessionContext,
    files: &[RawFile],
) -> Result<HashMap<String, DeviceTimes>, Error> {
    let parts = scan(
        ctx,
        files,
        &RawFilter::default(),
        &["device_id", "ts", "quality"],
        |batches| {
            let mut out: HashMap<String, DeviceTimes> = HashMap::new();
            for batch in &batches {
                let device = string_col(batch, "device_id")?;
                let quality = string_col(batch, "quality")?;
                let ts: TimestampMicrosecondArray = typed_col(batch, "ts")?;
                for i in 0..batch.num_rows() {
                    let d = device.value(i);
                    let t = ts.value(i);
                    let q = quality.value(i);
                    let trusted = q.is_empty() || !quality_flags(q).contains(CLOCK_SUSPECT);
                    let entry = match out.get_mut(d) {
                        Some(v) => v,
                        None => out.entry(d.to_string()).or_default(),
                    };
                    entry.ts.push(t);
                    if trusted {
                        entry.max_trusted = Some(entry.max_trusted.map_or(t, |m| m.max(t)));
                    }
                }
            }
            Ok(out)
        },
    )
    .await?;
    let mut out: HashMap<String, DeviceTimes> = HashMap::new();
    for part in parts {
        for (d, v) in part {
            let e = out.entry(d).or_default();
            e.ts.extend(v.ts);
            e.max_trusted = match (e.max_trusted, v.max_trusted) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
    }
    Ok(out)
}
