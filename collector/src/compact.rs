//! Compaction of a raw date partition: one copy per `(device_id, seq)`.
//!
//! Why it exists: with several collectors on a shared subscription, an agent that
//! republishes after its own crash can have the two copies of a message delivered to two
//! different collectors. Each collector dedups only what it saw, so the raw table can hold
//! the reading twice. Compaction rewrites a partition keeping, per `(device_id, seq)`, the
//! row with the earliest `received_at`.
//!
//! Commit protocol: the deduplicated rows are written as new files (atomic `put`, fsync'd
//! on a local directory), and only then are the input files deleted. At every instant a
//! reader sees every reading at least once: never a missing reading, never half a file;
//! during the short window between the two steps it may see a reading twice, which is why
//! readers (aggregator, billing) also dedup on read. Files that collectors add to the
//! partition while compaction runs are not inputs and are left alone. Re-running
//! compaction (e.g. after a crash between the steps) is harmless.
//!
//! Production mitigation: EMQX's `hash_topic` shared-subscription strategy sends a topic
//! (= a device) always to the same collector, so cross-collector duplicates only occur when
//! group membership changes.

use arrow::array::{Array, RecordBatch, StringArray, UInt64Array};
use arrow::compute::{
    concat_batches, filter_record_batch, lexsort_to_indices, take_record_batch, SortColumn,
};
use chrono::NaiveDate;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::landing::{to_parquet, Landing, LandingError, MAX_ROWS_PER_FILE};

/// What a compaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CompactStats {
    pub files_in: usize,
    pub rows_in: usize,
    pub rows_out: usize,
    pub files_out: usize,
}

/// Rewrites `raw/date=<date>/` deduplicated by `(device_id, seq)`, keeping the earliest
/// `received_at`. Holds the partition in memory.
pub async fn compact_date(
    landing: &Landing,
    date: NaiveDate,
) -> Result<CompactStats, LandingError> {
    let store = landing.store().clone();
    let prefix = Path::from(format!("raw/date={date}"));
    let mut inputs: Vec<Path> = store
        .list(Some(&prefix))
        .map_ok(|m| m.location)
        .try_collect::<Vec<_>>()
        .await?
        .into_iter()
        .filter(|p| p.as_ref().ends_with(".parquet"))
        .collect();
    inputs.sort();
    let mut stats = CompactStats {
        files_in: inputs.len(),
        ..Default::default()
    };
    if inputs.is_empty() {
        return Ok(stats);
    }
    let schema = gridmeter_core::schema::raw();
    let mut batches = Vec::new();
    for p in &inputs {
        let bytes = store.get(p).await?.bytes().await?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
        for b in reader {
            let b = b?;
            // Normalise the schema (metadata) so batches concatenate.
            batches.push(RecordBatch::try_new(schema.clone(), b.columns().to_vec())?);
        }
    }
    let all = concat_batches(&schema, &batches)?;
    stats.rows_in = all.num_rows();
    let idx = |name: &str| schema.index_of(name);
    let sort: Vec<SortColumn> = ["device_id", "seq", "received_at"]
        .iter()
        .map(|n| {
            Ok(SortColumn {
                values: all.column(idx(n)?).clone(),
                options: None,
            })
        })
        .collect::<Result<_, arrow::error::ArrowError>>()?;
    let order = lexsort_to_indices(&sort, None)?;
    let sorted = take_record_batch(&all, &order)?;
    let ids = sorted
        .column(idx("device_id")?)
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| LandingError::Config("device_id is not Utf8".into()))?;
    let seqs = sorted
        .column(idx("seq")?)
        .as_any()
        .downcast_ref::<UInt64Array>()
        .ok_or_else(|| LandingError::Config("seq is not UInt64".into()))?;
    let keep: arrow::array::BooleanArray = (0..sorted.num_rows())
        .map(|i| {
            Some(i == 0 || ids.value(i) != ids.value(i - 1) || seqs.value(i) != seqs.value(i - 1))
        })
        .collect();
    let deduped = filter_record_batch(&sorted, &keep)?;
    stats.rows_out = deduped.num_rows();
    if stats.files_in == 1 && stats.rows_out == stats.rows_in {
        return Ok(stats); // already compact
    }
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%6f");
    let mut written = Vec::new();
    let mut offset = 0;
    let mut part = 0;
    while offset < deduped.num_rows() || (offset == 0 && part == 0) {
        let len = MAX_ROWS_PER_FILE.min(deduped.num_rows() - offset);
        let chunk = deduped.slice(offset, len);
        let path = Path::from(format!("raw/date={date}/compacted-{stamp}-{part}.parquet"));
        landing.put_durable(&path, to_parquet(&chunk)?).await?;
        written.push(path);
        offset += len;
        part += 1;
        if len == 0 {
            break;
        }
    }
    stats.files_out = written.len();
    for p in inputs.iter().filter(|p| !written.contains(p)) {
        store.delete(p).await?;
    }
    Ok(stats)
}
