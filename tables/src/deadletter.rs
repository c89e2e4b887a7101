//! Table `deadletter`: what could not be accepted, with why, partitioned by the UTC date it
//! was received. Written like `raw`, one commit per WAL segment with the transaction id
//! `(collector/<collector_id>, segment)`; [`prune`] removes whole old partitions.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryArray, RecordBatch, StringArray, TimestampMicrosecondArray};
use chrono::NaiveDate;
use deltalake::protocol::DeltaOperation;
use gridmeter_core::schema;

use crate::delta::{NewFile, Table, TableSpec};
use crate::raw::date_of;
use crate::root::Root;
use crate::TableError;

/// The table's directory under the data root.
pub const TABLE: &str = "deadletter";

/// The layout of `deadletter`.
pub fn spec() -> TableSpec {
    TableSpec {
        name: TABLE.into(),
        schema: schema::dead_letter(),
        partitioned: true,
        append_only: false,
        stats_columns: &["received_at", "topic", "reason"],
        log_retention: "interval 2 days",
    }
}

/// Opens (creates) `deadletter` under `root`.
pub async fn open(root: &Root) -> Result<Table, TableError> {
    Table::open(root, spec()).await
}

/// Something that could not be accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadRow {
    pub received_at_us: i64,
    pub topic: String,
    pub reason: String,
    pub detail: String,
    /// The whole payload for batch-level errors, the element for reading-level ones.
    pub payload: bytes::Bytes,
}

/// Rows as a batch of `schema::dead_letter()`.
pub fn batch(rows: &[&DeadRow]) -> Result<RecordBatch, TableError> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.received_at_us))
                .with_timezone("UTC"),
        ),
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

/// The data files of `rows`: one per date received, `date=YYYY-MM-DD/<name>.parquet`.
pub fn plan(name: &str, rows: &[DeadRow]) -> Result<Vec<NewFile>, TableError> {
    let mut by_date: BTreeMap<NaiveDate, Vec<&DeadRow>> = BTreeMap::new();
    for d in rows {
        by_date
            .entry(date_of(d.received_at_us))
            .or_default()
            .push(d);
    }
    by_date
        .into_iter()
        .map(|(date, rows)| {
            Ok(NewFile {
                path: format!("date={date}/{name}.parquet"),
                date: Some(date),
                batch: batch(&rows)?,
                tags: Vec::new(),
            })
        })
        .collect()
}

/// What a prune did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneStats {
    /// Dates of the partitions removed, ascending.
    pub pruned: Vec<NaiveDate>,
    /// Files removed from the table.
    pub files: usize,
    /// Partitions kept.
    pub kept: usize,
}

/// Removes every partition dated before `cutoff` in one commit (a DELETE: the files stay for
/// readers of older versions until vacuum deletes them).
pub async fn prune(
    table: &Table,
    cutoff: NaiveDate,
    dry_run: bool,
) -> Result<PruneStats, TableError> {
    for _ in 0..crate::MAX_REPLANS {
        let snapshot = table.snapshot().await?;
        let mut stats = PruneStats::default();
        let mut by_date: BTreeMap<NaiveDate, usize> = BTreeMap::new();
        let mut actions = Vec::new();
        for f in snapshot.files() {
            let Some(date) = f.date else { continue };
            *by_date.entry(date).or_default() += 1;
            if date < cutoff {
                actions.push(f.remove(true));
            }
        }
        for (date, n) in by_date {
            if date < cutoff {
                stats.pruned.push(date);
                stats.files += n;
            } else {
                stats.kept += 1;
            }
        }
        if dry_run || actions.is_empty() {
            return Ok(stats);
        }
        let op = DeltaOperation::Delete {
            predicate: Some(format!("date < '{cutoff}'")),
        };
        match table.commit(&snapshot, actions, op, None).await {
            Ok(_) => return Ok(stats),
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e),
        }
    }
    Err(TableError::Conflict {
        table: table.name().into(),
        message: format!(
            "prune still conflicting after {} attempts",
            crate::MAX_REPLANS
        ),
    })
}
