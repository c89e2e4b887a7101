//! The usage tables: `<data_root>/usage/<window>/`, one per window size, on the data root's
//! object store (local directory or S3).
//!
//! # Layout (manifest-based, see `aggregator/README.md` for why not Delta Lake)
//!
//! ```text
//! usage/15m/part-0000000007.parquet     committed data, immutable, schema usage()
//! usage/15m/_commits/0000000007.json    commit record: version, file, rows, revisions
//! usage/15m/_views/current.sql          DuckDB view: latest revision per key
//! usage/_state/aggregator.json          watermarks and processed raw files
//! ```
//!
//! A commit writes exactly one data file per table, so a reader that globs `*.parquet`
//! (DuckDB, Spark, DataFusion, the billing export) sees a commit entirely or not at all:
//! the file appears atomically (object_store `put`: written to a staging name, renamed).
//! The version is claimed first by creating `_commits/<version>.json` with
//! `PutMode::Create`, so two writers can never take the same file name; a claim whose
//! data file never appeared (crash in between) is an aborted commit and holds no data.
//! Only rows whose values changed are written, so a retried commit (after a crash, or the
//! same raw files processed again) finds its rows already current and writes nothing:
//! no row is ever duplicated.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Decimal128Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::DataType;
use bytes::Bytes;
use datafusion::prelude::{col, lit, ParquetReadOptions, SessionContext};
use datafusion::scalar::ScalarValue;
use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use crate::raw::{file_url, is_data_path};
use crate::series::{flags_from_str, flags_to_string, LATE};
use crate::Error;

/// One row of a usage table (values as `Decimal128(38, 9)` integers, times as µs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub device_id: String,
    pub channel: String,
    pub kind: String,
    pub unit: String,
    pub window: String,
    pub window_start: i64,
    pub window_end: i64,
    pub usage: Option<i128>,
    pub min: Option<i128>,
    pub max: Option<i128>,
    pub avg: Option<i128>,
    pub last: Option<i128>,
    pub readings: i64,
    pub first_ts: Option<i64>,
    pub last_ts: Option<i64>,
    pub coverage: i128,
    /// Flag bits ([`crate::series`]).
    pub flags: u8,
    pub revision: i64,
    pub computed_at: i64,
}

/// (device_id, channel, window_start): the key of a usage row.
pub type Key = (String, String, i64);

impl UsageRow {
    pub fn key(&self) -> Key {
        (
            self.device_id.clone(),
            self.channel.clone(),
            self.window_start,
        )
    }

    /// Same measured values: everything but `revision`, `computed_at` and the `late` flag
    /// (which records why a revision was written, not what was measured).
    pub fn same_values(&self, other: &UsageRow) -> bool {
        let strip = |r: &UsageRow| UsageRow {
            flags: r.flags & !LATE,
            revision: 0,
            computed_at: 0,
            ..r.clone()
        };
        strip(self) == strip(other)
    }
}

fn ts_array(v: impl IntoIterator<Item = Option<i64>>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from_iter(v).with_timezone("UTC"))
}

fn dec_array(v: impl IntoIterator<Item = Option<i128>>) -> Result<ArrayRef, Error> {
    Ok(Arc::new(
        Decimal128Array::from_iter(v).with_precision_and_scale(38, 9)?,
    ))
}

/// Rows as a batch of schema `gridmeter_core::schema::usage()`.
pub fn to_batch(rows: &[UsageRow]) -> Result<RecordBatch, Error> {
    let s = |f: fn(&UsageRow) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
    };
    let flags: Vec<String> = rows.iter().map(|r| flags_to_string(r.flags)).collect();
    let columns: Vec<ArrayRef> = vec![
        s(|r| &r.device_id),
        s(|r| &r.channel),
        s(|r| &r.kind),
        s(|r| &r.unit),
        s(|r| &r.window),
        ts_array(rows.iter().map(|r| Some(r.window_start))),
        ts_array(rows.iter().map(|r| Some(r.window_end))),
        dec_array(rows.iter().map(|r| r.usage))?,
        dec_array(rows.iter().map(|r| r.min))?,
        dec_array(rows.iter().map(|r| r.max))?,
        dec_array(rows.iter().map(|r| r.avg))?,
        dec_array(rows.iter().map(|r| r.last))?,
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.readings),
        )),
        ts_array(rows.iter().map(|r| r.first_ts)),
        ts_array(rows.iter().map(|r| r.last_ts)),
        dec_array(rows.iter().map(|r| Some(r.coverage)))?,
        Arc::new(StringArray::from_iter_values(flags.iter())),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.revision),
        )),
        ts_array(rows.iter().map(|r| Some(r.computed_at))),
    ];
    Ok(RecordBatch::try_new(
        gridmeter_core::schema::usage(),
        columns,
    )?)
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef, Error> {
    batch
        .column_by_name(name)
        .ok_or_else(|| Error::Schema(format!("usage column {name} missing")))
}

fn strings(batch: &RecordBatch, name: &str) -> Result<StringArray, Error> {
    let c = column(batch, name)?;
    let c = if c.data_type() == &DataType::Utf8 {
        c.clone()
    } else {
        arrow::compute::cast(c, &DataType::Utf8)?
    };
    Ok(c.as_string::<i32>().clone())
}

fn downcast<T: Array + Clone + 'static>(batch: &RecordBatch, name: &str) -> Result<T, Error> {
    column(batch, name)?
        .as_any()
        .downcast_ref::<T>()
        .cloned()
        .ok_or_else(|| Error::Schema(format!("usage column {name} has the wrong type")))
}

/// The inverse of [`to_batch`].
pub fn from_batch(batch: &RecordBatch) -> Result<Vec<UsageRow>, Error> {
    let [device, channel, kind, unit, window, flags] =
        ["device_id", "channel", "kind", "unit", "window", "flags"].map(|n| strings(batch, n));
    let (device, channel, kind, unit, window, flags) =
        (device?, channel?, kind?, unit?, window?, flags?);
    let ts = |n| downcast::<TimestampMicrosecondArray>(batch, n);
    let (start, end, first, last_ts, computed) = (
        ts("window_start")?,
        ts("window_end")?,
        ts("first_ts")?,
        ts("last_ts")?,
        ts("computed_at")?,
    );
    let dec = |n| downcast::<Decimal128Array>(batch, n);
    let (usage, min, max, avg, last, coverage) = (
        dec("usage")?,
        dec("min")?,
        dec("max")?,
        dec("avg")?,
        dec("last")?,
        dec("coverage")?,
    );
    let readings = downcast::<Int64Array>(batch, "readings")?;
    let revision = downcast::<Int64Array>(batch, "revision")?;
    let opt_d = |a: &Decimal128Array, i: usize| a.is_valid(i).then(|| a.value(i));
    let opt_t = |a: &TimestampMicrosecondArray, i: usize| a.is_valid(i).then(|| a.value(i));
    Ok((0..batch.num_rows())
        .map(|i| UsageRow {
            device_id: device.value(i).to_string(),
            channel: channel.value(i).to_string(),
            kind: kind.value(i).to_string(),
            unit: unit.value(i).to_string(),
            window: window.value(i).to_string(),
            window_start: start.value(i),
            window_end: end.value(i),
            usage: opt_d(&usage, i),
            min: opt_d(&min, i),
            max: opt_d(&max, i),
            avg: opt_d(&avg, i),
            last: opt_d(&last, i),
            readings: readings.value(i),
            first_ts: opt_t(&first, i),
            last_ts: opt_t(&last_ts, i),
            coverage: coverage.value(i),
            flags: flags_from_str(flags.value(i)),
            revision: revision.value(i),
            computed_at: computed.value(i),
        })
        .collect())
}

/// A commit record (`_commits/<version>.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CommitRecord {
    pub version: u64,
    pub file: String,
    pub rows: usize,
    /// Rows with revision > 1.
    pub revisions: usize,
    /// `run` or `rebuild`.
    pub operation: String,
    pub committed_at: chrono::DateTime<chrono::Utc>,
}

/// One usage table.
pub struct UsageTable {
    /// The data root's store (paths relative to the data root).
    store: Arc<dyn ObjectStore>,
    /// The data root's URL for DataFusion (ending in `/`, see [`file_url`]).
    base_url: String,
    /// The data root's local directory, if it is one (for the DuckDB view).
    local_root: Option<PathBuf>,
    pub window: String,
}

impl UsageTable {
    /// The table `usage/<window>/` of the data root that `store` holds and DataFusion reads
    /// at `base_url` (`file:///…/` or `s3://bucket/prefix/`); `local_root` is that
    /// directory for a local data root.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        base_url: &str,
        local_root: Option<&Path>,
        window: &str,
    ) -> Self {
        UsageTable {
            store,
            base_url: base_url.to_string(),
            local_root: local_root.map(Path::to_path_buf),
            window: window.to_string(),
        }
    }

    fn prefix(&self) -> String {
        format!("usage/{}", self.window)
    }

    /// Committed data files (paths relative to the data root), sorted.
    pub async fn data_files(&self) -> Result<Vec<String>, Error> {
        let prefix = object_store::path::Path::from(self.prefix());
        let mut out = Vec::new();
        let mut listing = self.store.list(Some(&prefix));
        while let Some(meta) = listing.next().await {
            let path = meta?.location.to_string();
            if is_data_path(&path) {
                out.push(path);
            }
        }
        out.sort();
        Ok(out)
    }

    /// The current row (highest revision) of every key, optionally only for `devices` and
    /// windows starting at or after `min_start`.
    pub async fn current(
        &self,
        ctx: &SessionContext,
        devices: Option<&std::collections::HashSet<String>>,
        min_start: Option<i64>,
    ) -> Result<HashMap<Key, UsageRow>, Error> {
        let files = self.data_files().await?;
        let mut out: HashMap<Key, UsageRow> = HashMap::new();
        if files.is_empty() {
            return Ok(out);
        }
        let urls: Vec<String> = files.iter().map(|f| file_url(&self.base_url, f)).collect();
        let schema = gridmeter_core::schema::usage();
        let mut df = ctx
            .read_parquet(urls, ParquetReadOptions::default().schema(&schema))
            .await?;
        if let Some(t) = min_start {
            df = df.filter(
                col("window_start").gt_eq(lit(ScalarValue::TimestampMicrosecond(
                    Some(t),
                    Some("UTC".into()),
                ))),
            )?;
        }
        if let Some(d) = devices.filter(|d| d.len() <= 256) {
            df = df.filter(
                col("device_id").in_list(d.iter().map(|x| lit(x.as_str())).collect(), false),
            )?;
        }
        for batch in df.collect().await? {
            for row in from_batch(&batch)? {
                if devices.is_some_and(|d| !d.contains(&row.device_id)) {
                    continue;
                }
                match out.get(&row.key()) {
                    Some(cur) if cur.revision >= row.revision => {}
                    _ => {
                        out.insert(row.key(), row);
                    }
                }
            }
        }
        Ok(out)
    }

    async fn last_version(&self) -> Result<u64, Error> {
        let prefix = object_store::path::Path::from(format!("{}/_commits", self.prefix()));
        let mut last = 0;
        let mut listing = self.store.list(Some(&prefix));
        while let Some(meta) = listing.next().await {
            let meta = meta?;
            if let Some(v) = meta
                .location
                .filename()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                last = last.max(v);
            }
        }
        Ok(last)
    }

    /// Commits `rows` as one new immutable data file; returns the version.
    pub async fn commit(&self, mut rows: Vec<UsageRow>, operation: &str) -> Result<u64, Error> {
        rows.sort_by(|a, b| {
            (&a.device_id, &a.channel, a.window_start, a.revision).cmp(&(
                &b.device_id,
                &b.channel,
                b.window_start,
                b.revision,
            ))
        });
        let data = encode_parquet(&to_batch(&rows)?)?;
        let revisions = rows.iter().filter(|r| r.revision > 1).count();
        // Claim a version: creating the record fails if another writer has it.
        let mut version = self.last_version().await? + 1;
        let record = loop {
            let record = CommitRecord {
                version,
                file: format!("part-{version:010}.parquet"),
                rows: rows.len(),
                revisions,
                operation: operation.to_string(),
                committed_at: chrono::Utc::now(),
            };
            let path = object_store::path::Path::from(format!(
                "{}/_commits/{version:010}.json",
                self.prefix()
            ));
            let body = serde_json::to_vec_pretty(&record)
                .map_err(|e| Error::Internal(format!("commit record: {e}")))?;
            let opts = PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            };
            match self
                .store
                .put_opts(&path, PutPayload::from(body), opts)
                .await
            {
                Ok(_) => break record,
                Err(object_store::Error::AlreadyExists { .. }) if version < u64::MAX => {
                    version += 1;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let path = object_store::path::Path::from(format!("{}/{}", self.prefix(), record.file));
        self.store
            .put(&path, PutPayload::from(Bytes::from(data)))
            .await?;
        self.write_view().await?;
        Ok(version)
    }

    /// `_views/current.sql`: a DuckDB view of the latest revision per key. It reads the
    /// table's local directory, or its `s3://` URL on S3 (DuckDB's httpfs extension and an
    /// S3 secret needed).
    async fn write_view(&self) -> Result<(), Error> {
        let name = format!("usage_current_{}", self.window);
        let (how, glob) = match &self.local_root {
            Some(root) => {
                let dir = root.join(self.prefix());
                (
                    format!("-- DuckDB: .read {}/_views/current.sql", dir.display()),
                    dir.join("*.parquet").display().to_string(),
                )
            }
            None => {
                let dir = file_url(&self.base_url, &self.prefix());
                (
                    format!(
                        "-- DuckDB (httpfs, with an S3 secret): copy {dir}/_views/current.sql here, .read it"
                    ),
                    format!("{dir}/*.parquet"),
                )
            }
        };
        let sql = format!(
            "-- Latest revision of every (device_id, channel, window_start) in usage/{w}.\n\
             {how}   then   SELECT * FROM {name};\n\
             CREATE OR REPLACE VIEW {name} AS\n\
             SELECT * FROM read_parquet('{glob}')\n\
             QUALIFY row_number() OVER (PARTITION BY device_id, channel, window_start ORDER BY revision DESC) = 1;\n",
            w = self.window,
        );
        let path = object_store::path::Path::from(format!("{}/_views/current.sql", self.prefix()));
        self.store
            .put(&path, PutPayload::from(sql.into_bytes()))
            .await?;
        Ok(())
    }
}

fn encode_parquet(batch: &RecordBatch) -> Result<Vec<u8>, Error> {
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
        .set_max_row_group_row_count(Some(256 * 1024))
        .build();
    let mut buf = Vec::new();
    let mut writer = parquet::arrow::ArrowWriter::try_new(&mut buf, batch.schema(), Some(props))?;
    writer.write(batch)?;
    writer.close()?;
    Ok(buf)
}
