//! Table `gaps`: seq ranges known lost (reported by agents: `buffer_full`, `buffer_corrupt`)
//! or not seen in time (declared by the collector: `missing`). Not partitioned: a handful of
//! rows per device and incident. Written like `raw`, one commit per WAL segment with the
//! transaction id `(collector/<collector_id>, segment)`.
//!
//! Seqs are stored as Delta `long`: a range reaching above `2^63 - 1` is stored up to
//! `2^63 - 1` (no reading can have a larger seq: the collector refuses them).

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use gridmeter_core::schema;

use crate::delta::{NewFile, Table, TableSpec};
use crate::root::Root;
use crate::TableError;

/// The table's directory under the data root.
pub const TABLE: &str = "gaps";

/// The layout of `gaps`.
pub fn spec() -> TableSpec {
    TableSpec {
        name: TABLE.into(),
        schema: schema::gaps(),
        partitioned: false,
        append_only: false,
        stats_columns: &["device_id", "from_seq", "to_seq", "recorded_at"],
        log_retention: "interval 2 days",
    }
}

/// Opens (creates) `gaps` under `root`.
pub async fn open(root: &Root) -> Result<Table, TableError> {
    Table::open(root, spec()).await
}

/// One gap record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GapRow {
    pub device_id: String,
    pub from_seq: u64,
    pub to_seq: u64,
    /// `buffer_full`, `buffer_corrupt` (as sent by the agent) or `missing`.
    pub reason: String,
    pub recorded_at_us: i64,
}

/// Rows as a batch of `schema::gaps()` (ranges clamped to `2^63 - 1`, see the module docs).
pub fn batch(rows: &[GapRow]) -> Result<RecordBatch, TableError> {
    let rows: Vec<&GapRow> = rows
        .iter()
        .filter(|r| r.from_seq <= i64::MAX as u64)
        .collect();
    let clamp = |s: u64| s.min(i64::MAX as u64) as i64;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.device_id.as_str()),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| clamp(r.from_seq)),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| clamp(r.to_seq)),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.reason.as_str()),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.recorded_at_us))
                .with_timezone("UTC"),
        ),
    ];
    Ok(RecordBatch::try_new(schema::gaps(), columns)?)
}

/// The data file of `rows`: `<name>.parquet` (none for no rows).
pub fn plan(name: &str, rows: &[GapRow]) -> Result<Vec<NewFile>, TableError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    Ok(vec![NewFile {
        path: format!("{name}.parquet"),
        date: None,
        batch: batch(rows)?,
        tags: Vec::new(),
    }])
}
