//! The raw landing: Parquet files on an object store (local directory or S3).
//!
//! Every file a segment produces has a name derived only from `(collector_id, segment,
//! part)` and content derived only from the segment's WAL records and the dedup state the
//! segment started from. Writing a segment twice (replay after a crash between "Parquet
//! written" and "checkpoint written") therefore overwrites files with identical bytes: it
//! never adds a second copy of a reading.
//!
//! | table | path |
//! |---|---|
//! | raw | `raw/date=YYYY-MM-DD/<collector>-<segment:016>-<part>.parquet` (event date of `ts`) |
//! | dead letters | `deadletter/date=YYYY-MM-DD/<collector>-<segment:016>.parquet` (date of `received_at`) |
//! | gaps | `gaps/<collector>-<segment:016>.parquet` |
//!
//! `put` is atomic on both stores (LocalFileSystem writes a staging file and renames it;
//! S3 objects appear whole), so no reader sees half a file. On a local directory the files
//! and their directories are also fsync'd before the checkpoint that lets the WAL go.

use std::collections::BTreeMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryArray, Decimal128Array, RecordBatch, StringArray, StringBuilder,
    TimestampMicrosecondArray, UInt64Array,
};
use chrono::{DateTime, NaiveDate, Utc};
use gridmeter_core::store::DataRoot;
use gridmeter_core::{decimal, schema, Quality};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::config::CollectorConfig;
use crate::process::{DeadRow, GapRow, RawRow, SegmentOutput};

/// Largest number of rows in one raw file.
pub const MAX_ROWS_PER_FILE: usize = 1_000_000;

#[derive(Debug, thiserror::Error)]
pub enum LandingError {
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    OpenStore(#[from] gridmeter_core::store::StoreError),
}

/// Where the collector writes its tables.
#[derive(Clone, Debug)]
pub struct Landing {
    store: Arc<dyn ObjectStore>,
    /// Set for a local directory: files are fsync'd after `put`.
    local_root: Option<PathBuf>,
    collector_id: String,
}

/// Opens the object store a config names (local directory or S3).
pub fn open_store(
    cfg: &CollectorConfig,
) -> Result<(Arc<dyn ObjectStore>, Option<PathBuf>), LandingError> {
    match DataRoot::choose(cfg.data_root.as_deref(), cfg.object_store.as_ref())? {
        DataRoot::Local(root) => {
            std::fs::create_dir_all(&root).map_err(|source| LandingError::Io {
                path: root.clone(),
                source,
            })?;
            let root = root.canonicalize().map_err(|source| LandingError::Io {
                path: root.clone(),
                source,
            })?;
            let store = LocalFileSystem::new_with_prefix(&root)?;
            Ok((Arc::new(store), Some(root)))
        }
        DataRoot::ObjectStore(os) => Ok((os.open()?, None)),
    }
}

/// Seconds-since-epoch µs to a UTC date.
fn date_of(us: i64) -> NaiveDate {
    DateTime::<Utc>::from_timestamp_micros(us)
        .map(|t| t.date_naive())
        .unwrap_or_default()
}

/// The files a segment produces: (path, rows), in a deterministic order with deterministic
/// names. Raw rows are sorted by (device_id, seq).
pub fn plan(
    collector_id: &str,
    segment: u64,
    out: &SegmentOutput,
) -> Result<Vec<(Path, RecordBatch)>, LandingError> {
    let mut files = Vec::new();
    // (date, device) → rows. Grouping first keeps string comparisons out of the sort: the
    // devices of a segment are few next to its rows, and a device's seqs mostly arrive in
    // order, so sorting each device's rows by seq is close to linear.
    let mut by_date: BTreeMap<NaiveDate, BTreeMap<&str, Vec<&RawRow>>> = BTreeMap::new();
    let mut last: Option<(NaiveDate, &Arc<str>)> = None;
    let mut current: Option<&mut Vec<&RawRow>> = None;
    for r in &out.raw {
        let key = (r.reading.ts.date_naive(), &r.device_id);
        // Rows of one message share the device's `Arc`: a pointer comparison suffices.
        let same = last.is_some_and(|(d, id)| d == key.0 && Arc::ptr_eq(id, key.1));
        let rows = match (same, current.take()) {
            (true, Some(rows)) => rows,
            _ => by_date
                .entry(key.0)
                .or_default()
                .entry(&**key.1)
                .or_default(),
        };
        rows.push(r);
        current = Some(rows);
        last = Some(key);
    }
    for (date, devices) in by_date {
        let mut rows = Vec::with_capacity(devices.values().map(Vec::len).sum());
        for (_, mut dev_rows) in devices {
            // Seqs are unique per device after dedup, so an unstable sort is deterministic.
            if !dev_rows.is_sorted_by_key(|r| r.reading.seq) {
                dev_rows.sort_unstable_by_key(|r| r.reading.seq);
            }
            rows.extend(dev_rows);
        }
        for (part, chunk) in rows.chunks(MAX_ROWS_PER_FILE).enumerate() {
            let path = Path::from(format!(
                "raw/date={date}/{collector_id}-{segment:016}-{part}.parquet"
            ));
            files.push((path, raw_batch(chunk)?));
        }
    }
    let mut dead_by_date: BTreeMap<NaiveDate, Vec<&DeadRow>> = BTreeMap::new();
    for d in &out.dead {
        dead_by_date
            .entry(date_of(d.received_at_us))
            .or_default()
            .push(d);
    }
    for (date, rows) in dead_by_date {
        let path = Path::from(format!(
            "deadletter/date={date}/{collector_id}-{segment:016}.parquet"
        ));
        files.push((path, dead_batch(&rows)?));
    }
    if !out.gaps.is_empty() {
        let path = Path::from(format!("gaps/{collector_id}-{segment:016}.parquet"));
        files.push((path, gap_batch(&out.gaps)?));
    }
    Ok(files)
}

fn ts_array(values: impl IntoIterator<Item = i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from_iter_values(values).with_timezone("UTC"))
}

fn raw_batch(rows: &[&RawRow]) -> Result<RecordBatch, LandingError> {
    let mut values = Vec::with_capacity(rows.len());
    for r in rows {
        let v = decimal::to_scaled_i128(r.reading.value).ok_or_else(|| {
            // Unreachable for validated readings (scale ≤ 9); refuse rather than round.
            LandingError::Config(format!(
                "value {} does not fit Decimal128(38, 9)",
                r.reading.value
            ))
        })?;
        values.push(v);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| &*r.device_id),
        )),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| r.reading.seq),
        )),
        ts_array(rows.iter().map(|r| r.reading.ts.timestamp_micros())),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.reading.channel.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.reading.kind.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| &*r.reading.unit),
        )),
        Arc::new(Decimal128Array::from_iter_values(values).with_precision_and_scale(38, 9)?),
        Arc::new(quality_strings(rows)),
        ts_array(rows.iter().map(|r| r.received_at_us)),
    ];
    Ok(RecordBatch::try_new(schema::raw(), columns)?)
}

/// The quality column: flag names are formatted once per distinct quality, not per row.
fn quality_strings(rows: &[&RawRow]) -> StringArray {
    let mut names: BTreeMap<Quality, String> = BTreeMap::new();
    let mut b = StringBuilder::with_capacity(rows.len(), 0);
    for r in rows {
        let q = r.reading.quality;
        if q == Quality::GOOD {
            b.append_value("");
        } else {
            b.append_value(names.entry(q).or_insert_with(|| q.to_string()));
        }
    }
    b.finish()
}

fn dead_batch(rows: &[&DeadRow]) -> Result<RecordBatch, LandingError> {
    let columns: Vec<ArrayRef> = vec![
        ts_array(rows.iter().map(|r| r.received_at_us)),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.topic.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.reason.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.detail.as_str()),
        )),
        Arc::new(BinaryArray::from_iter_values(
            rows.iter().map(|r| r.payload.as_ref()),
        )),
    ];
    Ok(RecordBatch::try_new(schema::dead_letter(), columns)?)
}

fn gap_batch(rows: &[GapRow]) -> Result<RecordBatch, LandingError> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.device_id.as_str()),
        )),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| r.from_seq),
        )),
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.to_seq))),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.reason.as_str()),
        )),
        ts_array(rows.iter().map(|r| r.recorded_at_us)),
    ];
    Ok(RecordBatch::try_new(schema::gaps(), columns)?)
}

/// Encodes a batch as one Parquet file (zstd, fixed `created_by` so bytes are reproducible).
pub fn to_parquet(batch: &RecordBatch) -> Result<Vec<u8>, LandingError> {
    let mut props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
        .set_created_by("gridmeter-collector".into())
        .set_max_row_group_row_count(Some(256 * 1024));
    // Min/max statistics cost a string comparison per value; kept where readers prune on
    // them (device_id, seq, ts, value, received_at), off for the low-cardinality descriptive
    // columns.
    for column in ["channel", "kind", "unit", "quality"] {
        props =
            props.set_column_statistics_enabled(ColumnPath::from(column), EnabledStatistics::None);
    }
    // Columns of (nearly) unique values gain nothing from a dictionary but pay a hash per
    // value for it: seq, ts and received_at are delta-encoded (sorted runs shrink to a few
    // bits a value), value is plain.
    for column in ["seq", "ts", "received_at", "value"] {
        props = props.set_column_dictionary_enabled(ColumnPath::from(column), false);
    }
    for column in ["seq", "ts", "received_at"] {
        props = props.set_column_encoding(ColumnPath::from(column), Encoding::DELTA_BINARY_PACKED);
    }
    let props = props.build();
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props))?;
    w.write(batch)?;
    w.close()?;
    Ok(buf)
}

impl Landing {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        local_root: Option<PathBuf>,
        collector_id: impl Into<String>,
    ) -> Self {
        Landing {
            store,
            local_root,
            collector_id: collector_id.into(),
        }
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Writes every file of a segment; returns the bytes written. Idempotent.
    pub async fn write_segment(
        &self,
        segment: u64,
        out: &SegmentOutput,
    ) -> Result<u64, LandingError> {
        let mut total = 0u64;
        for (path, batch) in plan(&self.collector_id, segment, out)? {
            let bytes = to_parquet(&batch)?;
            total += bytes.len() as u64;
            self.put_durable(&path, bytes).await?;
        }
        Ok(total)
    }

    /// `put`, then (local directory) fsync of the file and its directories.
    pub async fn put_durable(&self, path: &Path, bytes: Vec<u8>) -> Result<(), LandingError> {
        self.store.put(path, PutPayload::from(bytes)).await?;
        if let Some(root) = &self.local_root {
            let file = root.join(path.as_ref());
            sync_path(&file)?;
            let mut dir = file.parent();
            while let Some(d) = dir {
                sync_path(d)?;
                if d == root.as_path() {
                    break;
                }
                dir = d.parent();
            }
        }
        Ok(())
    }
}

fn sync_path(p: &FsPath) -> Result<(), LandingError> {
    std::fs::File::open(p)
        .and_then(|f| f.sync_all())
        .map_err(|source| LandingError::Io {
            path: p.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridmeter_core::{Channel, Kind, Quality, Reading};

    fn row(dev: &str, seq: u64, ts_us: i64) -> RawRow {
        RawRow {
            device_id: Arc::from(dev),
            reading: Reading {
                seq,
                ts: DateTime::from_timestamp_micros(ts_us).unwrap(),
                channel: Channel::new("energy_import").unwrap(),
                kind: Kind::Counter,
                unit: "Wh".into(),
                value: "1234.000000001".parse().unwrap(),
                quality: Quality::GOOD,
            },
            received_at_us: ts_us + 5,
        }
    }

    #[test]
    fn names_and_bytes_are_deterministic() {
        let day = 86_400_000_000i64;
        let t0 = 1_763_800_000_000_000i64; // 2025-11-22
        let out = SegmentOutput {
            raw: vec![
                row("b", 2, t0),
                row("a", 9, t0 + day),
                row("a", 1, t0),
                row("b", 1, t0),
            ],
            dead: vec![DeadRow {
                received_at_us: t0,
                topic: "gridmeter/v1/x/readings".into(),
                reason: "bad_json".into(),
                detail: "x".into(),
                payload: bytes::Bytes::from_static(b"{"),
            }],
            gaps: vec![GapRow {
                device_id: "a".into(),
                from_seq: 3,
                to_seq: 8,
                reason: "buffer_full".into(),
                recorded_at_us: t0,
            }],
            durable: Default::default(),
        };
        let names: Vec<String> = plan("c1", 42, &out)
            .unwrap()
            .into_iter()
            .map(|(p, _)| p.to_string())
            .collect();
        assert_eq!(
            names,
            vec![
                "raw/date=2025-11-22/c1-0000000000000042-0.parquet",
                "raw/date=2025-11-23/c1-0000000000000042-0.parquet",
                "deadletter/date=2025-11-22/c1-0000000000000042.parquet",
                "gaps/c1-0000000000000042.parquet",
            ]
        );
        let first = plan("c1", 42, &out).unwrap();
        let second = plan("c1", 42, &out).unwrap();
        for ((_, a), (_, b)) in first.iter().zip(&second) {
            assert_eq!(to_parquet(a).unwrap(), to_parquet(b).unwrap());
        }
        // Sorted by (device_id, seq) within a file.
        let day1 = &first[0].1;
        let ids = day1
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        let seqs = day1
            .column(1)
            .as_any()
            .downcast_ref::<UInt64Array>()
            .unwrap();
        let got: Vec<(String, u64)> = (0..day1.num_rows())
            .map(|i| (ids.value(i).to_string(), seqs.value(i)))
            .collect();
        assert_eq!(got, vec![("a".into(), 1), ("b".into(), 1), ("b".into(), 2)]);
    }
}
