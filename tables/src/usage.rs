//! The usage tables of one window size (`15m`, `1h`, `1d`), partitioned by the UTC date of
//! `window_start`:
//!
//! - `usage_history_<window>`: append-only (`delta.appendOnly`), one row per (device_id,
//!   channel, window_start, revision): every revision ever computed, the audit record;
//! - `usage_<window>`: the current revision of every key, one row per key. Readers need no
//!   window function.
//!
//! A run of the aggregator commits its changed rows as one history commit and then one
//! current commit, both with the transaction id `(app, version)` (`app` names the aggregator
//! or its shard, `version` counts its runs). The current commit replaces the rows it revises:
//! it removes the files holding their previous revisions and adds those files' other rows
//! with the new rows, in one commit (copy-on-write, what a MERGE does). A crash between the
//! two commits leaves history one version ahead; [`UsageTables::recover`] (run at the start
//! of the next run) applies that history commit to the current table. Concurrent shards
//! touch disjoint devices; when their commits overlap in time, Delta's conflict checks make
//! the later one re-plan from a fresh snapshot, so no commit is lost and no shard overwrites
//! another's rows.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Decimal128Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Decimal128Type, Int64Type, TimestampMicrosecondType};
use chrono::NaiveDate;
use deltalake::kernel::Action;
use deltalake::protocol::DeltaOperation;
use futures::{StreamExt, TryStreamExt};
use gridmeter_core::schema;

use crate::delta::{append_op, DataFile, NewFile, Table, TableSpec};
use crate::flags::Flags;
use crate::parquet_io::Profile;
use crate::raw::date_of;
use crate::root::Root;
use crate::TableError;

/// Tag on every usage data file: the application that wrote it.
pub const TAG_APP: &str = "gridmeter.app";
/// Tag on history data files: the run version of the application.
pub const TAG_VERSION: &str = "gridmeter.version";

/// `usage_history_<window>`.
pub fn history_name(window: &str) -> String {
    format!("usage_history_{window}")
}

/// `usage_<window>`.
pub fn current_name(window: &str) -> String {
    format!("usage_{window}")
}

const STATS: &[&str] = &["device_id", "channel", "window_start", "revision"];

/// The layout of `usage_history_<window>`.
pub fn history_spec(window: &str) -> TableSpec {
    TableSpec {
        name: history_name(window),
        schema: schema::usage(),
        partitioned: true,
        append_only: true,
        stats_columns: STATS,
        log_retention: "interval 30 days",
    }
}

/// The layout of `usage_<window>`.
pub fn current_spec(window: &str) -> TableSpec {
    TableSpec {
        name: current_name(window),
        schema: schema::usage(),
        partitioned: true,
        append_only: false,
        stats_columns: STATS,
        log_retention: "interval 30 days",
    }
}

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
    pub flags: Flags,
    pub revision: i64,
    pub computed_at: i64,
}

/// (device_id, channel, window_start): the key of a usage row.
pub type Key = (String, String, i64);

impl UsageRow {
    /// Its key.
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
            flags: r.flags & !Flags::LATE,
            revision: 0,
            computed_at: 0,
            ..r.clone()
        };
        strip(self) == strip(other)
    }

    fn date(&self) -> NaiveDate {
        date_of(self.window_start)
    }
}

fn ts_array(v: impl IntoIterator<Item = Option<i64>>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from_iter(v).with_timezone("UTC"))
}

fn dec_array(v: impl IntoIterator<Item = Option<i128>>) -> Result<ArrayRef, TableError> {
    Ok(Arc::new(
        Decimal128Array::from_iter(v).with_precision_and_scale(38, 9)?,
    ))
}

/// Rows as a batch of `schema::usage()`.
pub fn to_batch(rows: &[UsageRow]) -> Result<RecordBatch, TableError> {
    let s = |f: fn(&UsageRow) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
    };
    let flags: Vec<String> = rows.iter().map(|r| r.flags.to_string()).collect();
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
    Ok(RecordBatch::try_new(schema::usage(), columns)?)
}

fn column<'a>(
    batch: &'a RecordBatch,
    name: &str,
    want: &DataType,
) -> Result<&'a ArrayRef, TableError> {
    let c = batch.column_by_name(name).ok_or_else(|| TableError::Data {
        table: "usage".into(),
        message: format!("column {name} missing"),
    })?;
    let ok = match (c.data_type(), want) {
        (DataType::Timestamp(a, _), DataType::Timestamp(b, _)) => a == b,
        (DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View, DataType::Utf8) => true,
        (a, b) => a == b,
    };
    if !ok {
        return Err(TableError::Data {
            table: "usage".into(),
            message: format!(
                "column {name} is {} but the schema says {want}",
                c.data_type()
            ),
        });
    }
    Ok(c)
}

fn strings(batch: &RecordBatch, name: &str) -> Result<StringArray, TableError> {
    let c = column(batch, name, &DataType::Utf8)?;
    let c = if c.data_type() == &DataType::Utf8 {
        c.clone()
    } else {
        arrow::compute::cast(c, &DataType::Utf8)?
    };
    Ok(c.as_string::<i32>().clone())
}

/// The inverse of [`to_batch`]. Unknown flag names are ignored.
pub fn from_batch(batch: &RecordBatch) -> Result<Vec<UsageRow>, TableError> {
    let [device, channel, kind, unit, window, flags] =
        ["device_id", "channel", "kind", "unit", "window", "flags"].map(|n| strings(batch, n));
    let (device, channel, kind, unit, window, flags) =
        (device?, channel?, kind?, unit?, window?, flags?);
    let ts_t = schema::ts_type();
    let ts = |n| -> Result<_, TableError> {
        Ok(column(batch, n, &ts_t)?
            .as_primitive::<TimestampMicrosecondType>()
            .clone())
    };
    let (start, end, first, last_ts, computed) = (
        ts("window_start")?,
        ts("window_end")?,
        ts("first_ts")?,
        ts("last_ts")?,
        ts("computed_at")?,
    );
    let dec = |n| -> Result<_, TableError> {
        Ok(column(batch, n, &schema::VALUE_TYPE)?
            .as_primitive::<Decimal128Type>()
            .clone())
    };
    let (usage, min, max, avg, last, coverage) = (
        dec("usage")?,
        dec("min")?,
        dec("max")?,
        dec("avg")?,
        dec("last")?,
        dec("coverage")?,
    );
    let readings = column(batch, "readings", &DataType::Int64)?
        .as_primitive::<Int64Type>()
        .clone();
    let revision = column(batch, "revision", &DataType::Int64)?
        .as_primitive::<Int64Type>()
        .clone();
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
            flags: Flags::parse_lenient(flags.value(i)),
            revision: revision.value(i),
            computed_at: computed.value(i),
        })
        .collect())
}

fn sort_rows(rows: &mut [UsageRow]) {
    rows.sort_by(|a, b| {
        (&a.device_id, &a.channel, a.window_start, a.revision).cmp(&(
            &b.device_id,
            &b.channel,
            b.window_start,
            b.revision,
        ))
    });
}

/// What one run committed to one window's tables.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Committed {
    /// History version committed (`None`: it was committed before).
    pub history: Option<i64>,
    /// Current-table version committed (`None`: it was committed before).
    pub current: Option<i64>,
    /// Files of the current table rewritten (rows revised in them).
    pub rewritten: usize,
    /// Commits re-planned after concurrent commits conflicted.
    pub retries: usize,
}

/// The two tables of one window size.
pub struct UsageTables {
    pub window: String,
    pub history: Table,
    pub current: Table,
}

/// The rows of `batch` whose `device_id` is one of `devices`.
fn of_devices(batch: &RecordBatch, devices: &HashSet<String>) -> Result<RecordBatch, TableError> {
    let ids = strings(batch, "device_id")?;
    let mask: arrow::array::BooleanArray = ids
        .iter()
        .map(|d| Some(d.is_some_and(|d| devices.contains(d))))
        .collect();
    Ok(arrow::compute::filter_record_batch(batch, &mask)?)
}

/// Reads the rows of `files` of `table` that pass `keep`, four files at a time.
///
/// With `devices`, a batch's other devices are filtered out before its rows are built, so
/// reading a few devices out of a fleet's files builds only their rows.
async fn read_rows(
    table: &Table,
    files: &[DataFile],
    devices: Option<&HashSet<String>>,
    keep: &(dyn Fn(&UsageRow) -> bool + Sync),
) -> Result<Vec<(usize, Vec<UsageRow>)>, TableError> {
    futures::stream::iter(files.iter().enumerate())
        .map(|(i, f)| async move {
            let mut rows = Vec::new();
            for b in table.read_file(f, None).await? {
                let b = match devices {
                    Some(d) => of_devices(&b, d)?,
                    None => b,
                };
                rows.extend(from_batch(&b)?.into_iter().filter(|r| keep(r)));
            }
            Ok::<_, TableError>((i, rows))
        })
        .buffer_unordered(4)
        .try_collect()
        .await
}

/// A rewrite of the current table being planned: the actions so far, how many files they
/// remove, the dates written, and the rows of removed files still to be written again, by
/// date.
#[derive(Default)]
struct Rewrite {
    actions: Vec<Action>,
    rewritten: usize,
    written: Vec<NaiveDate>,
    kept: BTreeMap<NaiveDate, Vec<UsageRow>>,
}

impl Rewrite {
    /// Reads `files` of `table`: a file holding one of `keys` is removed and its other rows
    /// are kept to be written again.
    async fn absorb(
        &mut self,
        table: &Table,
        files: &[DataFile],
        keys: &HashSet<Key>,
    ) -> Result<(), TableError> {
        for (i, file_rows) in read_rows(table, files, None, &|_| true).await? {
            if !file_rows.iter().any(|r| keys.contains(&r.key())) {
                continue;
            }
            self.actions.push(files[i].remove(true));
            self.rewritten += 1;
            for r in file_rows.into_iter().filter(|r| !keys.contains(&r.key())) {
                self.kept.entry(r.date()).or_default().push(r);
            }
        }
        Ok(())
    }

    /// Records a file written for `date`.
    fn added(&mut self, add: deltalake::kernel::Add, date: NaiveDate) {
        self.actions.push(Action::Add(add));
        self.written.push(date);
    }
}

impl UsageTables {
    /// Opens (creates) both tables of `window` under `root`.
    pub async fn open(root: &Root, window: &str) -> Result<UsageTables, TableError> {
        Ok(UsageTables {
            window: window.to_string(),
            history: Table::open(root, history_spec(window)).await?,
            current: Table::open(root, current_spec(window)).await?,
        })
    }

    /// The current row of every key, optionally only of `devices` and of windows starting
    /// at or after `min_start`. Files are skipped by partition and statistics.
    pub async fn current_rows(
        &self,
        devices: Option<&HashSet<String>>,
        min_start: Option<i64>,
    ) -> Result<HashMap<Key, UsageRow>, TableError> {
        let snapshot = self.current.snapshot().await?;
        let min_date = min_start.map(date_of);
        let files: Vec<DataFile> = snapshot
            .files()
            .into_iter()
            .filter(|f| match (min_date, f.date) {
                (Some(m), Some(d)) => d >= m,
                _ => true,
            })
            .filter(|f| match (min_start, f.stats.ts_range("window_start")) {
                (Some(m), Some((_, hi))) => hi >= m,
                _ => true,
            })
            .filter(|f| {
                devices.is_none_or(|d| f.stats.may_hold_device(d.iter().map(String::as_str)))
            })
            .collect();
        let keep = |r: &UsageRow| {
            devices.is_none_or(|d| d.contains(&r.device_id))
                && min_start.is_none_or(|m| r.window_start >= m)
        };
        let mut out = HashMap::new();
        for (_, rows) in read_rows(&self.current, &files, devices, &keep).await? {
            for r in rows {
                match out.get(&r.key()) {
                    // One row per key by construction; the highest revision wins regardless.
                    Some(cur) if UsageRow::revision_of(cur) >= r.revision => {}
                    _ => {
                        out.insert(r.key(), r);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Calls `f` with the current rows of each file in turn: every current row once (the
    /// table holds one row per key), in no particular order, one file's rows in memory at a
    /// time. For readers that fold the whole table, such as totals over a fleet.
    pub async fn for_each_current(
        &self,
        mut f: impl FnMut(Vec<UsageRow>),
    ) -> Result<(), TableError> {
        let snapshot = self.current.snapshot().await?;
        for file in snapshot.files() {
            for (_, rows) in read_rows(&self.current, &[file], None, &|_| true).await? {
                f(rows);
            }
        }
        Ok(())
    }

    /// The version the next run of `app` commits as: one above the highest either table
    /// holds. Call [`UsageTables::recover`] first.
    pub async fn next_version(&self, app: &str) -> Result<i64, TableError> {
        let h = self.history.snapshot().await?.txn_version(app).await?;
        let c = self.current.snapshot().await?.txn_version(app).await?;
        Ok(h.max(c).unwrap_or(0) + 1)
    }

    /// Completes a run of `app` that committed to history but not to the current table (a
    /// crash between the two commits): applies that history commit's rows to the current
    /// table. Returns the version completed, if any.
    pub async fn recover(&self, app: &str) -> Result<Option<i64>, TableError> {
        let history = self.history.snapshot().await?;
        let Some(h) = history.txn_version(app).await? else {
            return Ok(None);
        };
        let c = self.current.snapshot().await?.txn_version(app).await?;
        if c.is_some_and(|c| c >= h) {
            return Ok(None);
        }
        let version = h.to_string();
        let files: Vec<DataFile> = history
            .files()
            .into_iter()
            .filter(|f| f.tag(TAG_APP) == Some(app) && f.tag(TAG_VERSION) == Some(version.as_str()))
            .collect();
        let mut rows = Vec::new();
        for (_, r) in read_rows(&self.history, &files, None, &|_| true).await? {
            rows.extend(r);
        }
        tracing::warn!(
            window = %self.window,
            app,
            version = h,
            rows = rows.len(),
            "completing a run that committed to history but not to the current table"
        );
        self.commit_current(app, h, rows).await?;
        Ok(Some(h))
    }

    /// Commits the rows of one run (new keys with revision 1, revised keys with their new
    /// revision) to history, then to the current table, both exactly once for `(app,
    /// version)`.
    pub async fn commit(
        &self,
        app: &str,
        version: i64,
        mut rows: Vec<UsageRow>,
    ) -> Result<Committed, TableError> {
        if rows.is_empty() {
            return Ok(Committed::default());
        }
        sort_rows(&mut rows);
        let mut by_date: BTreeMap<NaiveDate, Vec<UsageRow>> = BTreeMap::new();
        for r in &rows {
            by_date.entry(r.date()).or_default().push(r.clone());
        }
        let files = by_date
            .into_iter()
            .map(|(date, rows)| {
                Ok(NewFile {
                    path: format!("date={date}/{app}-{version:012}.parquet"),
                    date: Some(date),
                    batch: to_batch(&rows)?,
                    tags: vec![
                        (TAG_APP, app.to_string()),
                        (TAG_VERSION, version.to_string()),
                    ],
                })
            })
            .collect::<Result<Vec<_>, TableError>>()?;
        let h = self
            .history
            .append_once(app, version, files, Profile::Standard, "")
            .await?;
        crate::failpoint::crash_point("aggregator_after_history_commit");
        let mut out = self.commit_current(app, version, rows).await?;
        out.history = h.version;
        out.retries += h.retries;
        Ok(out)
    }

    /// The current-table half of [`UsageTables::commit`].
    async fn commit_current(
        &self,
        app: &str,
        version: i64,
        mut rows: Vec<UsageRow>,
    ) -> Result<Committed, TableError> {
        let mut out = Committed::default();
        sort_rows(&mut rows);
        let keys: HashSet<Key> = rows.iter().map(UsageRow::key).collect();
        let mut by_date: BTreeMap<NaiveDate, Vec<&UsageRow>> = BTreeMap::new();
        for r in &rows {
            by_date.entry(r.date()).or_default().push(r);
        }
        for attempt in 0..crate::MAX_REPLANS {
            let snapshot = self.current.snapshot().await?;
            if snapshot
                .txn_version(app)
                .await?
                .is_some_and(|v| v >= version)
            {
                return Ok(out);
            }
            // Files that may hold a previous revision of a key of this run.
            let candidates: Vec<DataFile> = snapshot
                .files()
                .into_iter()
                .filter(|f| {
                    let Some(rows) = f.date.and_then(|d| by_date.get(&d)) else {
                        return f.date.is_none();
                    };
                    f.stats
                        .may_hold_device(rows.iter().map(|r| r.device_id.as_str()))
                        && match f.stats.ts_range("window_start") {
                            Some((lo, hi)) => rows
                                .iter()
                                .any(|r| lo <= r.window_start && r.window_start <= hi),
                            None => true,
                        }
                })
                .collect();
            let (actions, rewritten, dates) = self
                .rewrite_current(&candidates, &by_date, &keys, app, version, attempt)
                .await?;
            let op = if rewritten == 0 {
                append_op(true)
            } else {
                merge_op(&dates)
            };
            match self
                .current
                .commit(&snapshot, actions, op, Some((app, version)))
                .await
            {
                Ok(v) => {
                    out.current = Some(v);
                    out.rewritten = rewritten;
                    return Ok(out);
                }
                Err(e) if e.is_conflict() => {
                    out.retries += 1;
                    tracing::debug!(table = %self.current.name(), app, version, "commit conflict, re-planning: {e}");
                }
                Err(e) => return Err(e),
            }
        }
        Err(TableError::Conflict {
            table: self.current.name().into(),
            message: format!(
                "{app} version {version}: still conflicting after {} attempts",
                crate::MAX_REPLANS
            ),
        })
    }

    /// Writes the current table's new files for a commit of `rows` (by date, their `keys`):
    /// each date's file holds its new rows and the rows of that date's `candidates` not
    /// replaced by them; a candidate holding a replaced key is removed. One date's files
    /// are read and written at a time, so a commit that touches many dates holds one date's
    /// rows, not every touched file's. Returns the actions, the number of files removed and
    /// the dates written.
    async fn rewrite_current(
        &self,
        candidates: &[DataFile],
        rows: &BTreeMap<NaiveDate, Vec<&UsageRow>>,
        keys: &HashSet<Key>,
        app: &str,
        version: i64,
        attempt: usize,
    ) -> Result<(Vec<Action>, usize, Vec<NaiveDate>), TableError> {
        let mut plan = Rewrite::default();
        // Undated files (rows of any date) are read before the first date, a dated file
        // before its own date is written.
        let mut files_of: BTreeMap<Option<NaiveDate>, Vec<DataFile>> = BTreeMap::new();
        for f in candidates {
            files_of.entry(f.date).or_default().push(f.clone());
        }
        let mut dates: Vec<NaiveDate> = rows.keys().copied().collect();
        dates.extend(files_of.keys().flatten().copied());
        dates.sort();
        dates.dedup();
        if let Some(files) = files_of.get(&None) {
            plan.absorb(&self.current, files, keys).await?;
        }
        for date in dates {
            if let Some(files) = files_of.get(&Some(date)) {
                plan.absorb(&self.current, files, keys).await?;
            }
            let mut file_rows = plan.kept.remove(&date).unwrap_or_default();
            file_rows.extend(rows.get(&date).into_iter().flatten().map(|r| (*r).clone()));
            if !file_rows.is_empty() {
                let path = format!("date={date}/{app}-{version:012}-{attempt}.parquet");
                let add = self.write_current(&path, date, file_rows, app, version);
                plan.added(add.await?, date);
            }
        }
        // Rows a file held outside its partition's date (this crate never writes such a
        // file), of a date already written or not touched: written again, never dropped.
        for (date, file_rows) in std::mem::take(&mut plan.kept) {
            let path = format!("date={date}/{app}-{version:012}-{attempt}-kept.parquet");
            let add = self.write_current(&path, date, file_rows, app, version);
            plan.added(add.await?, date);
        }
        plan.written.sort();
        plan.written.dedup();
        Ok((plan.actions, plan.rewritten, plan.written))
    }

    /// Writes `rows` (all of `date`), sorted, as one current-table file of run `app`
    /// `version` at `path`.
    async fn write_current(
        &self,
        path: &str,
        date: NaiveDate,
        mut rows: Vec<UsageRow>,
        app: &str,
        version: i64,
    ) -> Result<deltalake::kernel::Add, TableError> {
        sort_rows(&mut rows);
        self.current
            .write_file(
                path,
                Some(date),
                &to_batch(&rows)?,
                Profile::Standard,
                &[
                    (TAG_APP, app.to_string()),
                    (TAG_VERSION, version.to_string()),
                ],
            )
            .await
    }

    /// Merges the partitions where `app` has written at least `min_files` files into one
    /// file each (history: `dataChange = false`, the table is append-only; current: a
    /// rewrite like a revision). Best effort: a concurrent commit makes it give up until the
    /// next call. Returns the number of files merged away.
    pub async fn compact(&self, app: &str, min_files: usize) -> Result<usize, TableError> {
        let mut merged = 0;
        for (table, data_change) in [(&self.history, false), (&self.current, true)] {
            let snapshot = table.snapshot().await?;
            let mut by_date: BTreeMap<NaiveDate, Vec<DataFile>> = BTreeMap::new();
            for f in snapshot.files() {
                if let (Some(d), Some(a)) = (f.date, f.tag(TAG_APP)) {
                    if a == app {
                        by_date.entry(d).or_default().push(f);
                    }
                }
            }
            let mut actions = Vec::new();
            for (date, files) in by_date.into_iter().filter(|(_, f)| f.len() >= min_files) {
                let mut rows = Vec::new();
                for (_, r) in read_rows(table, &files, None, &|_| true).await? {
                    rows.extend(r);
                }
                sort_rows(&mut rows);
                let path = format!(
                    "date={date}/{app}-compacted-{:012}.parquet",
                    snapshot.version()
                );
                let mut add = table
                    .write_file(
                        &path,
                        Some(date),
                        &to_batch(&rows)?,
                        Profile::Standard,
                        &[(TAG_APP, app.to_string())],
                    )
                    .await?;
                add.data_change = data_change;
                actions.extend(files.iter().map(|f| f.remove(data_change)));
                actions.push(Action::Add(add));
                merged += files.len();
            }
            if actions.is_empty() {
                continue;
            }
            let op = DeltaOperation::Optimize {
                predicate: None,
                target_size: 0,
            };
            let guard = format!("{app}/compact");
            match table
                .commit(
                    &snapshot,
                    actions,
                    op,
                    Some((&guard, snapshot.version() + 1)),
                )
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_conflict() => {
                    tracing::debug!(table = %table.name(), "compaction skipped, a concurrent commit won: {e}");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(merged)
    }
}

impl UsageRow {
    fn revision_of(r: &UsageRow) -> i64 {
        r.revision
    }
}

fn merge_op(dates: &[NaiveDate]) -> DeltaOperation {
    let list = dates
        .iter()
        .map(|d| format!("'{d}'"))
        .collect::<Vec<_>>()
        .join(", ");
    DeltaOperation::Merge {
        predicate: Some(format!("date IN ({list})")),
        merge_predicate: Some(
            "target.device_id = source.device_id AND target.channel = source.channel AND target.window_start = source.window_start".into(),
        ),
        matched_predicates: vec![],
        not_matched_predicates: vec![],
        not_matched_by_source_predicates: vec![],
    }
}
