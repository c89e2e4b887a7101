//! Table `raw`: accepted readings, partitioned by the UTC date of `ts`.
//!
//! Written by the collector, one commit per WAL segment with the transaction id
//! `(collector/<collector_id>, segment)`: a segment replayed after a crash finds its commit
//! and writes nothing. Data file names are derived from `(collector_id, segment, part)`.
//!
//! Several collectors on a shared subscription can land the same `(device_id, seq)` twice
//! (an agent's republish reached both). Readers therefore deduplicate on read ([`dedup`]:
//! the earliest `received_at` wins), and [`compact_date`] rewrites a date partition with one
//! row per `(device_id, seq)` in one commit.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, AsArray, BooleanArray, Decimal128Array, Int64Array, RecordBatch, StringBuilder,
    TimestampMicrosecondArray,
};
use arrow::compute::{
    concat_batches, filter_record_batch, lexsort_to_indices, take_record_batch, SortColumn,
};
use arrow::datatypes::Int64Type;
use chrono::{DateTime, NaiveDate, Utc};
use deltalake::kernel::Action;
use deltalake::protocol::DeltaOperation;
use gridmeter_core::{decimal, schema, Quality, Reading};

use crate::delta::{DataFile, NewFile, Table, TableSpec};
use crate::parquet_io::Profile;
use crate::root::Root;
use crate::TableError;

/// The table's directory under the data root.
pub const TABLE: &str = "raw";

/// Most rows in one data file.
pub const MAX_ROWS_PER_FILE: usize = 1_000_000;

/// The layout of `raw`.
pub fn spec() -> TableSpec {
    TableSpec {
        name: TABLE.into(),
        schema: schema::raw(),
        partitioned: true,
        append_only: false,
        stats_columns: &["device_id", "seq", "ts", "received_at"],
        // Up to one commit per collector every couple of seconds: the log is kept two days
        // (checkpoints make older entries unnecessary for readers).
        log_retention: "interval 2 days",
    }
}

/// Opens (creates) `raw` under `root`.
pub async fn open(root: &Root) -> Result<Table, TableError> {
    Table::open(root, spec()).await
}

/// One accepted reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRow {
    pub device_id: Arc<str>,
    pub reading: Reading,
    pub received_at_us: i64,
}

fn ts_array(values: Vec<i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(values).with_timezone("UTC"))
}

/// Rows as a batch of `schema::raw()`. A seq above `i64::MAX` or a value that does not fit
/// `Decimal128(38, 9)` is an error (the collector refuses both before they get here).
///
/// One pass over the rows fills every column: a segment's rows are far larger than the CPU
/// caches, and a pass per column would read them from memory nine times.
pub fn batch(rows: &[&RawRow]) -> Result<RecordBatch, TableError> {
    let n = rows.len();
    let strings = |bytes_per_row: usize| StringBuilder::with_capacity(n, n * bytes_per_row);
    let (mut devices, mut channels, mut kinds, mut units, mut qualities) =
        (strings(16), strings(12), strings(8), strings(4), strings(0));
    let (mut seqs, mut ts, mut values, mut received) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    // Flag names are formatted once per distinct quality, not per row.
    let mut quality_names: BTreeMap<Quality, String> = BTreeMap::new();
    for r in rows {
        let reading = &r.reading;
        devices.append_value(&r.device_id);
        seqs.push(
            i64::try_from(reading.seq).map_err(|_| {
                TableError::Invalid(format!("seq {} is above 2^63 - 1", reading.seq))
            })?,
        );
        ts.push(reading.ts.timestamp_micros());
        channels.append_value(reading.channel.as_str());
        kinds.append_value(reading.kind.as_str());
        units.append_value(&reading.unit);
        values.push(decimal::to_scaled_i128(reading.value).ok_or_else(|| {
            TableError::Invalid(format!(
                "value {} does not fit Decimal128(38, 9)",
                reading.value
            ))
        })?);
        let q = reading.quality;
        if q == Quality::GOOD {
            qualities.append_value("");
        } else {
            qualities.append_value(quality_names.entry(q).or_insert_with(|| q.to_string()));
        }
        received.push(r.received_at_us);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(devices.finish()),
        Arc::new(Int64Array::from(seqs)),
        ts_array(ts),
        Arc::new(channels.finish()),
        Arc::new(kinds.finish()),
        Arc::new(units.finish()),
        Arc::new(Decimal128Array::from(values).with_precision_and_scale(38, 9)?),
        Arc::new(qualities.finish()),
        ts_array(received),
    ];
    Ok(RecordBatch::try_new(schema::raw(), columns)?)
}

/// The data files of `rows`: one per event date (and per [`MAX_ROWS_PER_FILE`] rows), named
/// `date=YYYY-MM-DD/<name>-<part>.parquet`, rows sorted by `(device_id, seq)`. Deterministic:
/// the same rows give the same names and contents.
pub fn plan(name: &str, rows: &[RawRow]) -> Result<Vec<NewFile>, TableError> {
    // (date, device) → rows. Grouping first keeps string comparisons out of the sort: the
    // devices of a segment are few next to its rows, and a device's seqs mostly arrive in
    // order, so sorting each device's rows by seq is close to linear.
    let mut by_date: BTreeMap<NaiveDate, BTreeMap<&str, Vec<&RawRow>>> = BTreeMap::new();
    let mut last: Option<(NaiveDate, &Arc<str>)> = None;
    let mut current: Option<&mut Vec<&RawRow>> = None;
    for r in rows {
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
    let mut files = Vec::new();
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
            files.push(NewFile {
                path: format!("date={date}/{name}-{part}.parquet"),
                date: Some(date),
                batch: batch(chunk)?,
                tags: Vec::new(),
            });
        }
    }
    Ok(files)
}

/// Keeps one row per identity, the earliest received: `key` gives `(identity, received_at)`
/// of a row (the identity of a reading is `(device_id, seq)`). Ties keep the earlier row in
/// `rows`. The order of the rows is not kept.
pub fn dedup<T, K: Ord + Clone>(rows: &mut Vec<T>, key: impl Fn(&T) -> (K, i64)) {
    rows.sort_by(|a, b| {
        let (ka, ra) = key(a);
        let (kb, rb) = key(b);
        (ka, ra).cmp(&(kb, rb))
    });
    rows.dedup_by(|b, a| key(a).0 == key(b).0);
}

/// What a compaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CompactStats {
    pub files_in: usize,
    pub rows_in: usize,
    pub rows_out: usize,
    pub files_out: usize,
    /// Attempts lost to concurrent commits and re-planned.
    pub retries: usize,
}

/// Rewrites the partition `date` with one row per `(device_id, seq)`, keeping the earliest
/// `received_at`, in one commit that removes the old files and adds the new ones (an
/// OPTIMIZE, `dataChange = false`: readers that deduplicate see the same rows). Files that
/// collectors append meanwhile are not inputs and stay. Two compactions at once conflict
/// (both carry the transaction id `gridmeter/compact`) and the later one re-plans. Holds the
/// partition in memory.
pub async fn compact_date(table: &Table, date: NaiveDate) -> Result<CompactStats, TableError> {
    let mut stats = CompactStats::default();
    for _ in 0..crate::MAX_REPLANS {
        let snapshot = table.snapshot().await?;
        let inputs: Vec<DataFile> = snapshot
            .files()
            .into_iter()
            .filter(|f| f.date == Some(date))
            .collect();
        stats.files_in = inputs.len();
        if inputs.is_empty() {
            return Ok(stats);
        }
        let raw_schema = schema::raw();
        let mut batches = Vec::new();
        for f in &inputs {
            for b in table.read_file(f, None).await? {
                // Normalise the schema (metadata) so batches concatenate.
                batches.push(RecordBatch::try_new(
                    raw_schema.clone(),
                    b.columns().to_vec(),
                )?);
            }
        }
        let all = concat_batches(&raw_schema, &batches)?;
        stats.rows_in = all.num_rows();
        let deduped = dedup_batch(&all)?;
        stats.rows_out = deduped.num_rows();
        if stats.files_in == 1 && stats.rows_out == stats.rows_in {
            return Ok(stats); // already compact
        }
        let version = snapshot.version();
        let mut actions: Vec<Action> = inputs.iter().map(|f| f.remove(false)).collect();
        let mut part = 0;
        let mut offset = 0;
        loop {
            let len = MAX_ROWS_PER_FILE.min(deduped.num_rows() - offset);
            let chunk = deduped.slice(offset, len);
            let path = format!("date={date}/compacted-{version:020}-{part}.parquet");
            let mut add = table
                .write_file(
                    &path,
                    Some(date),
                    &chunk,
                    Profile::Raw,
                    &[("gridmeter.compacted", "true".into())],
                )
                .await?;
            add.data_change = false;
            actions.push(Action::Add(add));
            part += 1;
            offset += len;
            if offset >= deduped.num_rows() {
                break;
            }
        }
        stats.files_out = part;
        let op = DeltaOperation::Optimize {
            predicate: Some(format!("date = '{date}'")),
            target_size: MAX_ROWS_PER_FILE as i64,
        };
        match table
            .commit(&snapshot, actions, op, Some((COMPACT_APP, version + 1)))
            .await
        {
            Ok(_) => return Ok(stats),
            Err(e) if e.is_conflict() => {
                stats.retries += 1;
                continue;
            }
            Err(e) => return Err(e),
        }
    }
    Err(TableError::Conflict {
        table: table.name().into(),
        message: format!(
            "compaction of {date} still conflicting after {} attempts",
            crate::MAX_REPLANS
        ),
    })
}

/// The transaction id every compaction commit carries, so two compactions of one table
/// conflict instead of both replacing the same files.
pub const COMPACT_APP: &str = "gridmeter/compact";

/// One row per `(device_id, seq)` of a batch of `schema::raw()`, the earliest `received_at`,
/// sorted by `(device_id, seq)`.
pub fn dedup_batch(all: &RecordBatch) -> Result<RecordBatch, TableError> {
    let schema = all.schema();
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
    let sorted = take_record_batch(all, &order)?;
    let ids = sorted.column(idx("device_id")?).as_string::<i32>();
    let seqs = sorted.column(idx("seq")?).as_primitive::<Int64Type>();
    let keep: BooleanArray = (0..sorted.num_rows())
        .map(|i| {
            Some(i == 0 || ids.value(i) != ids.value(i - 1) || seqs.value(i) != seqs.value(i - 1))
        })
        .collect();
    Ok(filter_record_batch(&sorted, &keep)?)
}

/// The UTC date of a µs timestamp.
pub fn date_of(us: i64) -> NaiveDate {
    DateTime::<Utc>::from_timestamp_micros(us)
        .map(|t| t.date_naive())
        .unwrap_or_default()
}

/// Rows of a raw batch read back as `(device_id, seq, received_at)` (for checks and tools).
pub fn identities(batch: &RecordBatch) -> Result<Vec<(String, i64, i64)>, TableError> {
    let col = |n: &str| {
        batch.column_by_name(n).ok_or_else(|| TableError::Data {
            table: TABLE.into(),
            message: format!("column {n} missing"),
        })
    };
    let ids = col("device_id")?.as_string::<i32>();
    let seqs = col("seq")?.as_primitive::<Int64Type>();
    let rec = col("received_at")?.as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
    Ok((0..batch.num_rows())
        .map(|i| (ids.value(i).to_string(), seqs.value(i), rec.value(i)))
        .collect())
}
