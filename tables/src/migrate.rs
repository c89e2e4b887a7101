//! Conversion of a data root in the pre-Delta layout into the Delta tables.
//!
//! The old layout: `raw/date=YYYY-MM-DD/*.parquet`, `gaps/*.parquet`,
//! `deadletter/date=YYYY-MM-DD/*.parquet` (seqs as unsigned integers), and per window
//! `usage/<window>/part-*.parquet` (every revision; the latest per key is current) with
//! `usage/<window>/_commits/` and `_views/`, and the aggregator's state in
//! `usage/_state/aggregator.json`. Its files are found by listing (that layout has no log).
//!
//! [`run`] writes every old row into the new tables (`raw`, `gaps`, `deadletter`: as they
//! were; `usage_history_<w>`: every revision; `usage_<w>`: the latest revision per key), one
//! commit per table with the transaction id `(gridmeter/migrate, 1)`, then reads the new
//! tables back and compares them with the old files row for row (every column, as text).
//! Only if they are equal are the old files deleted (unless `keep_old`). A second run (after
//! a crash) skips the tables already committed, checks again and deletes what is left.
//! Refused when the tables already hold data other writers committed (a running collector
//! or aggregator): migrate before starting the new versions.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use chrono::NaiveDate;
use futures::TryStreamExt;
use gridmeter_core::schema;
use object_store::path::Path;
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::delta::{NewFile, Table, TableSpec};
use crate::parquet_io::Profile;
use crate::raw::date_of;
use crate::root::Root;
use crate::usage::{self, from_batch, to_batch, UsageRow};
use crate::TableError;

/// The transaction id of the migration's commits.
pub const APP: &str = "gridmeter/migrate";

/// What one table's migration found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableReport {
    pub table: String,
    pub old_files: usize,
    /// Rows in the old files (for a current table: keys).
    pub old_rows: usize,
    /// Rows in the new table, equal to the old ones.
    pub new_rows: usize,
    /// Committed by this run (false: an earlier run had).
    pub committed: bool,
}

/// What [`run`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub tables: Vec<TableReport>,
    /// Old files deleted.
    pub deleted: usize,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for t in &self.tables {
            writeln!(
                f,
                "{}: {} old files, {} rows; {} rows in the Delta table, checked row for row{}",
                t.table,
                t.old_files,
                t.old_rows,
                t.new_rows,
                if t.committed {
                    ""
                } else {
                    " (committed by an earlier run)"
                }
            )?;
        }
        writeln!(f, "old files deleted: {}", self.deleted)
    }
}

async fn list_parquet(
    root: &Root,
    dir: &str,
    skip: &HashSet<String>,
) -> Result<Vec<String>, TableError> {
    let store = root.store();
    let mut out: Vec<String> = store
        .list(Some(&Path::from(dir)))
        .map_ok(|m| m.location.to_string())
        .try_collect::<Vec<_>>()
        .await?
        .into_iter()
        .filter(|p| p.ends_with(".parquet"))
        .filter(|p| {
            let rel = p.strip_prefix(dir).unwrap_or(p).trim_start_matches('/');
            !rel.split('/').any(|c| c.starts_with(['_', '.'])) && !skip.contains(rel)
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Reads an old file, every column cast to the new schema's type (seqs: unsigned to signed,
/// checked).
async fn read_old(
    root: &Root,
    path: &str,
    target: &SchemaRef,
) -> Result<Vec<RecordBatch>, TableError> {
    let bytes = root.store().get(&Path::from(path)).await?.bytes().await?;
    let bad = |m: String| TableError::Data {
        table: path.to_string(),
        message: m,
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| bad(e.to_string()))?
        .build()
        .map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::new();
    for b in reader {
        let b = b.map_err(|e| bad(e.to_string()))?;
        let mut cols: Vec<ArrayRef> = Vec::new();
        for field in target.fields() {
            let c = b
                .column_by_name(field.name())
                .ok_or_else(|| bad(format!("column {} missing", field.name())))?;
            let c = if c.data_type() == field.data_type() {
                c.clone()
            } else {
                let opts = arrow::compute::CastOptions {
                    safe: false,
                    ..Default::default()
                };
                arrow::compute::cast_with_options(c, field.data_type(), &opts)
                    .map_err(|e| bad(format!("column {}: {e}", field.name())))?
            };
            cols.push(c);
        }
        out.push(RecordBatch::try_new(target.clone(), cols)?);
    }
    Ok(out)
}

/// Every row as one line of text (all columns), sorted: the row-for-row comparison.
fn rows_as_text(batches: &[RecordBatch]) -> Result<Vec<String>, TableError> {
    let opts = FormatOptions::default().with_null("∅");
    let mut out = Vec::new();
    for b in batches {
        let cols: Vec<ArrayRef> = b
            .columns()
            .iter()
            .map(|c| match c.data_type() {
                DataType::Binary => cast(c, &DataType::Utf8)
                    .or_else(|_| Ok::<_, arrow::error::ArrowError>(c.clone())),
                _ => Ok(c.clone()),
            })
            .collect::<Result<_, _>>()?;
        let fmts: Vec<ArrayFormatter> = cols
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts))
            .collect::<Result<_, _>>()?;
        for i in 0..b.num_rows() {
            let line: Vec<String> = fmts.iter().map(|f| f.value(i).to_string()).collect();
            out.push(line.join("\u{1f}"));
        }
    }
    out.sort();
    Ok(out)
}

async fn table_batches(table: &Table) -> Result<Vec<RecordBatch>, TableError> {
    let schema = table.spec().schema.clone();
    let mut out = Vec::new();
    for f in table.snapshot().await?.files() {
        for b in table.read_file(&f, None).await? {
            let cols: Vec<ArrayRef> = schema
                .fields()
                .iter()
                .map(|fl| {
                    b.column_by_name(fl.name())
                        .cloned()
                        .ok_or_else(|| TableError::Data {
                            table: table.name().into(),
                            message: format!("column {} missing", fl.name()),
                        })
                })
                .collect::<Result<_, _>>()?;
            out.push(RecordBatch::try_new(schema.clone(), cols)?);
        }
    }
    Ok(out)
}

/// Refuses a table that holds commits of writers other than the migration.
async fn ensure_only_migrated(table: &Table) -> Result<bool, TableError> {
    let snapshot = table.snapshot().await?;
    let migrated = snapshot.txn_version(APP).await?.is_some();
    let files = snapshot.files();
    if !migrated && !files.is_empty() {
        return Err(TableError::Invalid(format!(
            "{} already holds {} data files written by the new version: migrate before starting it",
            table.name(),
            files.len()
        )));
    }
    Ok(migrated)
}

/// Writes `batches` into `table` (partitioned by `date_col`'s UTC date, if the table is
/// partitioned) in one commit, unless the migration committed it before.
async fn write_table(
    table: &Table,
    batches: &[RecordBatch],
    date_col: Option<&str>,
    profile: Profile,
) -> Result<bool, TableError> {
    if ensure_only_migrated(table).await? {
        return Ok(false);
    }
    let schema = table.spec().schema.clone();
    let mut by_date: BTreeMap<Option<NaiveDate>, Vec<RecordBatch>> = BTreeMap::new();
    for b in batches {
        match date_col {
            None => by_date.entry(None).or_default().push(b.clone()),
            Some(col) => {
                let ts = b
                    .column_by_name(col)
                    .and_then(|c| {
                        c.as_any()
                            .downcast_ref::<arrow::array::TimestampMicrosecondArray>()
                    })
                    .ok_or_else(|| TableError::Data {
                        table: table.name().into(),
                        message: format!("column {col} is not a timestamp"),
                    })?;
                let mut idx: BTreeMap<NaiveDate, Vec<u32>> = BTreeMap::new();
                for i in 0..ts.len() {
                    idx.entry(date_of(ts.value(i))).or_default().push(i as u32);
                }
                for (d, rows) in idx {
                    let take = arrow::array::UInt32Array::from(rows);
                    by_date
                        .entry(Some(d))
                        .or_default()
                        .push(arrow::compute::take_record_batch(b, &take)?);
                }
            }
        }
    }
    let mut files = Vec::new();
    for (date, parts) in by_date {
        let all = arrow::compute::concat_batches(&schema, &parts)?;
        let mut offset = 0;
        let mut part = 0;
        while offset < all.num_rows() {
            let len = crate::raw::MAX_ROWS_PER_FILE.min(all.num_rows() - offset);
            let path = match date {
                Some(d) => format!("date={d}/migrated-{part}.parquet"),
                None => format!("migrated-{part}.parquet"),
            };
            files.push(NewFile {
                path,
                date,
                batch: all.slice(offset, len),
                tags: vec![],
            });
            offset += len;
            part += 1;
        }
    }
    let done = table.append_once(APP, 1, files, profile, "").await?;
    Ok(done.version.is_some())
}

struct OldTable {
    spec: TableSpec,
    /// Where its old files are, relative to the data root.
    dir: String,
    date_col: Option<&'static str>,
    profile: Profile,
}

/// Migrates the data root (see the module docs). `windows`: the usage window names.
pub async fn run(root: &Root, windows: &[String], keep_old: bool) -> Result<Report, TableError> {
    let mut report = Report::default();
    let mut delete: Vec<String> = Vec::new();
    let plain = [
        OldTable {
            spec: crate::raw::spec(),
            dir: "raw".into(),
            date_col: Some("ts"),
            profile: Profile::Raw,
        },
        OldTable {
            spec: crate::gaps::spec(),
            dir: "gaps".into(),
            date_col: None,
            profile: Profile::Standard,
        },
        OldTable {
            spec: crate::deadletter::spec(),
            dir: "deadletter".into(),
            date_col: Some("received_at"),
            profile: Profile::Standard,
        },
    ];
    let mut raw_files = 0;
    for old in plain {
        let table = Table::open(root, old.spec.clone()).await?;
        let active: HashSet<String> = table
            .snapshot()
            .await?
            .files()
            .into_iter()
            .map(|f| f.path)
            .collect();
        let paths = list_parquet(root, &old.dir, &active).await?;
        let mut batches = Vec::new();
        for p in &paths {
            batches.extend(read_old(root, p, &old.spec.schema).await?);
        }
        let committed = write_table(&table, &batches, old.date_col, old.profile).await?;
        let old_rows = rows_as_text(&batches)?;
        let new_rows = rows_as_text(&table_batches(&table).await?)?;
        // An earlier run committed and deleted the old files: nothing left to compare.
        let done_before = !committed && paths.is_empty();
        if old_rows != new_rows && !done_before {
            return Err(TableError::Invalid(format!(
                "{}: the Delta table does not hold the old rows ({} old, {} new): old files kept",
                old.spec.name,
                old_rows.len(),
                new_rows.len()
            )));
        }
        if old.spec.name == crate::raw::TABLE {
            raw_files = paths.len();
        }
        report.tables.push(TableReport {
            table: old.spec.name.clone(),
            old_files: paths.len(),
            old_rows: old_rows.len(),
            new_rows: new_rows.len(),
            committed,
        });
        delete.extend(paths);
    }
    for w in windows {
        let dir = format!("usage/{w}");
        let paths = list_parquet(root, &dir, &HashSet::new()).await?;
        let mut rows: Vec<UsageRow> = Vec::new();
        let mut batches = Vec::new();
        for p in &paths {
            for b in read_old(root, p, &schema::usage()).await? {
                rows.extend(from_batch(&b)?);
                batches.push(b);
            }
        }
        let tables = usage::UsageTables::open(root, w).await?;
        let h = write_table(
            &tables.history,
            &batches,
            Some("window_start"),
            Profile::Standard,
        )
        .await?;
        // Current: the latest revision of every key.
        let mut latest: BTreeMap<usage::Key, UsageRow> = BTreeMap::new();
        for r in rows {
            match latest.get(&r.key()) {
                Some(cur) if cur.revision >= r.revision => {}
                _ => {
                    latest.insert(r.key(), r);
                }
            }
        }
        let current: Vec<UsageRow> = latest.into_values().collect();
        let current_batches = if current.is_empty() {
            vec![]
        } else {
            vec![to_batch(&current)?]
        };
        let c = write_table(
            &tables.current,
            &current_batches,
            Some("window_start"),
            Profile::Standard,
        )
        .await?;
        for (table, old) in [
            (&tables.history, &batches),
            (&tables.current, &current_batches),
        ] {
            let old_rows = rows_as_text(old)?;
            let new_rows = rows_as_text(&table_batches(table).await?)?;
            // An earlier run committed and deleted the old files: nothing left to compare.
            let done_before = !(h || c) && paths.is_empty();
            if old_rows != new_rows && !done_before {
                return Err(TableError::Invalid(format!(
                    "{}: the Delta table does not hold the old rows ({} old, {} new): old files kept",
                    table.name(),
                    old_rows.len(),
                    new_rows.len()
                )));
            }
            report.tables.push(TableReport {
                table: table.name().into(),
                old_files: paths.len(),
                old_rows: old_rows.len(),
                new_rows: new_rows.len(),
                committed: if std::ptr::eq(table, &tables.history) {
                    h
                } else {
                    c
                },
            });
        }
        // Everything under usage/<w>/ (data, _commits, _views) goes with the data files.
        let all: Vec<String> = root
            .store()
            .list(Some(&Path::from(dir.as_str())))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await?;
        delete.extend(all);
    }
    migrate_state(root, raw_files).await?;
    if !keep_old {
        let store = root.store();
        for p in &delete {
            match store.delete(&Path::from(p.as_str())).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => report.deleted += 1,
                Err(e) => return Err(e.into()),
            }
        }
        if let Err(e) = store.delete(&Path::from(OLD_STATE)).await {
            if !matches!(e, object_store::Error::NotFound { .. }) {
                return Err(e.into());
            }
        }
    }
    Ok(report)
}

const OLD_STATE: &str = "usage/_state/aggregator.json";

/// The aggregator's old state becomes `_state/aggregator.json`: watermarks and held devices
/// as they were; the migrated raw files count as processed if every old one was.
async fn migrate_state(root: &Root, raw_files: usize) -> Result<(), TableError> {
    let store = root.store();
    let old = match store.get(&Path::from(OLD_STATE)).await {
        Ok(r) => r.bytes().await?,
        Err(object_store::Error::NotFound { .. }) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let mut v: serde_json::Value = serde_json::from_slice(&old).map_err(|e| TableError::Data {
        table: OLD_STATE.into(),
        message: e.to_string(),
    })?;
    let processed_all = v
        .get("processed")
        .and_then(|p| p.as_array())
        .is_some_and(|p| p.len() >= raw_files);
    let raw = crate::raw::open(root).await?;
    let snapshot = raw.snapshot().await?;
    let processed: Vec<String> = if processed_all {
        snapshot.files().into_iter().map(|f| f.path).collect()
    } else {
        Vec::new()
    };
    if let Some(obj) = v.as_object_mut() {
        obj.insert("processed".into(), serde_json::json!(processed));
        obj.insert("raw_version".into(), serde_json::json!(snapshot.version()));
    }
    let body = serde_json::to_vec(&v).map_err(|e| TableError::Invalid(e.to_string()))?;
    store
        .put(
            &Path::from("_state/aggregator.json"),
            object_store::PutPayload::from(body),
        )
        .await?;
    Ok(())
}
