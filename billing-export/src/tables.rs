//! Reading the aggregator's `usage_15m` table, the collector's `raw` table and (for the hold
//! rules) the aggregator's `exceptions` table, Delta tables
//! opened through the shared table layer (`gridmeter_tables`): the data files are those of the
//! table's latest snapshot, as its Delta log names them. `usage_15m` holds one row per key
//! `(device_id, channel, window_start)`, its current revision (the highest `revision` is kept
//! should a table hold several); raw rows are deduplicated by `(device_id, seq)` keeping the
//! earliest `received_at` (`gridmeter_tables::raw::dedup`).
//!
//! Rows are filtered while reading (registry devices and channels, each device's billed time
//! range) and kept in a compact form. The export reads one chunk of customers' devices at a
//! time ([`Selection`]): files whose Delta statistics (device_id, window_start; the `date`
//! partition for raw) rule the chunk out are not opened, and of the others only the row
//! groups whose Parquet device_id statistics may hold one of its devices are decoded (a local
//! file is read in place; a remote one is fetched whole).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Decimal128Type, Int64Type, TimestampMicrosecondType};
use gridmeter_core::store::DataRoot;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;
use parquet::file::reader::ChunkReader;
use rayon::prelude::*;
use rust_decimal::Decimal;

use crate::error::BillingError;
use crate::quality::Quality;

/// Which rows of which devices are wanted: the devices of one chunk of customers, a
/// contiguous range `base..base + channels.len()` of the run's device indices.
pub struct Selection {
    /// device id -> device index (of the run).
    pub devices: HashMap<String, u32>,
    /// The first device index of the selection.
    pub base: u32,
    /// Per device (index − `base`): channel names of interest (index = channel index) and the
    /// `[from, to)` range of window starts / reading times in µs since the epoch.
    pub channels: Vec<Vec<String>>,
    pub range_us: Vec<(i64, i64)>,
}

/// Finds the rows of a [`Selection`]: a row's device index and the index of its channel among
/// the device's channels of interest, or `None` when the selection does not hold it. A file's
/// rows come grouped by device, so the device id is hashed once per change of device, not for
/// every row.
struct Lookup<'a> {
    sel: &'a Selection,
    device: String,
    index: Option<u32>,
}

impl Lookup<'_> {
    fn get(&mut self, device: &str, channel: &str) -> Option<(u32, u16)> {
        if self.device != device || self.device.is_empty() {
            self.device.clear();
            self.device.push_str(device);
            self.index = self.sel.devices.get(device).copied();
        }
        self.sel.channel(self.index?, channel)
    }
}

impl Selection {
    /// Device `d` with the index of `channel` among its channels of interest.
    fn channel(&self, d: u32, channel: &str) -> Option<(u32, u16)> {
        let c = self.channels[(d - self.base) as usize]
            .iter()
            .position(|c| c == channel)?;
        Some((d, c as u16))
    }

    /// A [`Lookup`] over this selection.
    fn lookups(&self) -> Lookup<'_> {
        Lookup {
            sel: self,
            device: String::new(),
            index: None,
        }
    }

    fn range(&self, d: u32) -> (i64, i64) {
        self.range_us[(d - self.base) as usize]
    }

    /// The selected device ids, sorted (for pruning files and row groups by their device_id
    /// bounds).
    fn sorted_ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self.devices.keys().map(String::as_str).collect();
        ids.sort_unstable();
        ids
    }

    /// The earliest `from` and latest `to` of the selected devices.
    fn span_us(&self) -> Option<(i64, i64)> {
        let lo = self.range_us.iter().map(|r| r.0).min()?;
        let hi = self.range_us.iter().map(|r| r.1).max()?;
        Some((lo, hi))
    }
}

/// Whether a file or row group whose device ids lie in `[lo, hi]` may hold one of `ids`
/// (sorted). `hi` is `None` when no true upper bound is known.
fn may_hold(ids: &[&str], lo: &str, hi: Option<&str>) -> bool {
    let i = ids.partition_point(|d| *d < lo);
    i < ids.len() && hi.is_none_or(|hi| ids[i] <= hi)
}

/// The device-id bounds of a data file from its Delta statistics. A maximum of 32 characters
/// or more may be a truncated prefix (some writers cut string statistics), so it is no upper
/// bound.
fn file_device_bounds(f: &gridmeter_tables::DataFile) -> Option<(&str, Option<&str>)> {
    let (lo, hi) = f.stats.str_range("device_id")?;
    Some((lo, (hi.chars().count() < 32).then_some(hi)))
}

/// The current 15-minute usage of one device channel: a range of [`Usage::rows`].
#[derive(Debug, Clone)]
pub struct Series {
    pub device: u32,
    pub channel: u16,
    pub kind: String,
    pub unit: String,
    pub rows: std::ops::Range<usize>,
}

/// The current rows of all selected channels, sorted by (device, channel, window start), in
/// one compact vector (40 bytes a row: a month of 1,000 meters is ~120 MB). Each series is
/// judged on its current rows: one whose kind or unit changes, or with a current row that
/// cannot be used, is reported in [`Usage::bad`] instead.
pub struct Usage {
    pub series: Vec<Series>,
    rows: Vec<URow>,
    /// Series that cannot be billed, with the reason (bounded text): their rows are dropped,
    /// and the export holds their customers instead of failing the run.
    pub bad: HashMap<(u32, u16), String>,
}

impl Usage {
    /// (window_start µs, usage — or avg for gauges —, quality, revision).
    pub fn rows(&self, s: &Series) -> impl Iterator<Item = (i64, Decimal, Quality, i64)> + '_ {
        self.rows[s.rows.clone()]
            .iter()
            .map(|r| (r.ws, value(r), r.quality, r.rev))
    }
}

/// The value of a row.
fn value(r: &URow) -> Decimal {
    let v = (r.hi as i128) << 64 | r.lo as i128;
    // In range: checked when loading.
    Decimal::try_from_i128_with_scale(v, gridmeter_core::model::VALUE_SCALE).unwrap_or_default()
}

/// The windows of a counter series that its raw reconciliation leaves out
/// ([`Usage::left_out`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LeftOut {
    /// Contiguous spans `[a, b)` (µs), in order.
    pub spans: Vec<(i64, i64)>,
    /// The windows in them.
    pub windows: usize,
    /// Their usage (before the multiplier).
    pub usage: Decimal,
}

impl Usage {
    /// The windows of `s` left out of the comparison with the raw register difference
    /// ([`crate::reconcile`], point 4): every run of consecutive windows that are edited,
    /// estimated past the last reading, or estimated and adjoining such a window. Around an
    /// edit the aggregator's curve and the raw readings' straight lines agree only where
    /// the readings are kept and not estimated across, so the run reaches out to those.
    pub fn left_out(&self, s: &Series) -> LeftOut {
        const Q: i64 = 900_000_000;
        let rows = &self.rows[s.rows.clone()];
        let mut out = LeftOut::default();
        let mut i = 0;
        while i < rows.len() {
            // A run of consecutive estimated or left-out windows.
            let counts =
                |r: &URow| r.quality.is_estimated() || r.quality.left_out_of_reconciliation();
            if !counts(&rows[i]) {
                i += 1;
                continue;
            }
            let mut j = i + 1;
            while j < rows.len() && counts(&rows[j]) && rows[j].ws == rows[j - 1].ws + Q {
                j += 1;
            }
            let run = &rows[i..j];
            if run.iter().any(|r| r.quality.left_out_of_reconciliation()) {
                out.spans.push((run[0].ws, run[run.len() - 1].ws + Q));
                out.windows += run.len();
                out.usage += run.iter().map(value).sum::<Decimal>();
            }
            i = j;
        }
        out
    }

    /// The revision and quality of `s`'s current row of the window starting at `ws` (µs),
    /// if it has one.
    pub fn current(&self, s: &Series, ws: i64) -> Option<(i64, Quality)> {
        let rows = &self.rows[s.rows.clone()];
        let i = rows.binary_search_by_key(&ws, |r| r.ws).ok()?;
        Some((rows[i].rev, rows[i].quality))
    }
}

#[cfg(test)]
impl Usage {
    /// One series of `device`/`channel` with `rows` of (window start µs, value, quality,
    /// revision), sorted.
    pub(crate) fn of_series(
        device: u32,
        channel: u16,
        kind: &str,
        unit: &str,
        rows: &[(i64, Decimal, Quality, i64)],
    ) -> Usage {
        let rows: Vec<URow> = rows
            .iter()
            .map(|&(ws, v, quality, rev)| {
                let m = v.round_dp(gridmeter_core::model::VALUE_SCALE);
                let mut m = m;
                m.rescale(gridmeter_core::model::VALUE_SCALE);
                let x = m.mantissa();
                URow {
                    ws,
                    lo: x as u64,
                    hi: (x >> 64) as i64,
                    rev,
                    dev: device,
                    chan: channel,
                    quality,
                    variant: 0,
                }
            })
            .collect();
        Usage {
            series: vec![Series {
                device,
                channel,
                kind: kind.into(),
                unit: unit.into(),
                rows: 0..rows.len(),
            }],
            rows,
            bad: HashMap::new(),
        }
    }
}

/// A usage row, kept small: the value is the Decimal128 integer split into two words.
#[derive(Clone, Copy)]
struct URow {
    ws: i64,
    lo: u64,
    hi: i64,
    rev: i64,
    dev: u32,
    chan: u16,
    /// Estimated, edited, method (from the row's flags).
    quality: Quality,
    /// Index of the row's (kind, unit) among its series' variants, or [`POISON`].
    variant: u8,
}

/// A series' (kind, unit, file where first seen).
type Variant = (String, String, String);

/// A row that cannot be used (unknown kind, value out of range); if it is the current
/// revision of its window, its series is bad.
const POISON: u8 = u8::MAX;

/// One committed data file of a table.
#[derive(Clone)]
pub struct DataFile {
    /// Path relative to the table directory, `/`-separated (`date=2026-01-01/x.parquet`).
    pub rel: String,
    /// Where it is, for messages: a local path or an `s3://` URL.
    pub location: PathBuf,
    /// Its `date` partition (raw).
    pub date: Option<chrono::NaiveDate>,
    file: gridmeter_tables::DataFile,
}

/// An opened [`DataRoot`] (a local data root or an S3 location holding `usage_15m` and
/// `raw`): lists a table's committed files and reads them. Each table's snapshot is taken
/// once, on first use, so every chunk of a run reads the same table versions.
pub struct Tables {
    root: gridmeter_tables::Root,
    rt: Option<tokio::runtime::Runtime>,
    opened: std::sync::Mutex<HashMap<&'static str, Arc<Opened>>>,
}

/// A table as a run reads it: the table (none if it does not exist yet) and the files of its
/// snapshot, sorted by path.
struct Opened {
    table: Option<gridmeter_tables::Table>,
    files: Vec<DataFile>,
}

impl Drop for Tables {
    /// Without waiting for the runtime's threads: dropping a runtime blocks, which is not
    /// allowed inside an async caller.
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// The tables read: the current 15-minute usage and raw.
fn spec(table: &str) -> gridmeter_tables::TableSpec {
    match table {
        USAGE => gridmeter_tables::usage::current_spec("15m"),
        EXCEPTIONS => gridmeter_tables::exceptions::spec(),
        _ => gridmeter_tables::raw::spec(),
    }
}

const USAGE: &str = "usage_15m";
const EXCEPTIONS: &str = gridmeter_tables::exceptions::TABLE;
const RAW: &str = gridmeter_tables::raw::TABLE;

impl Tables {
    pub fn open(source: &DataRoot) -> Result<Tables, BillingError> {
        let name = match source {
            DataRoot::Local(root) => root.clone(),
            DataRoot::ObjectStore(os) => PathBuf::from(&os.url),
        };
        let root = gridmeter_tables::Root::open(source)
            .map_err(|e| BillingError::data(&name, format!("opening the data root: {e}")))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| BillingError::io("starting the table reader runtime", e))?;
        Ok(Tables {
            root,
            rt: Some(rt),
            opened: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Runs `fut` on the reader's runtime; from inside another runtime (a caller that is
    /// async itself) on a thread of its own, since a runtime cannot block inside another.
    fn block<T: Send>(&self, fut: impl std::future::Future<Output = T> + Send) -> T {
        let Some(rt) = &self.rt else {
            unreachable!("the runtime lives as long as the reader")
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|s| {
                s.spawn(|| rt.block_on(fut))
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p))
            })
        } else {
            rt.block_on(fut)
        }
    }

    /// `table` (`usage_15m`, `raw`) as of its snapshot when first asked for.
    fn opened(&self, table: &'static str) -> Result<Arc<Opened>, BillingError> {
        let mut cache = self.opened.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(o) = cache.get(table) {
            return Ok(o.clone());
        }
        let at = || PathBuf::from(self.root.display(table));
        let t = self
            .block(gridmeter_tables::Table::open_existing(
                &self.root,
                spec(table),
            ))
            .map_err(|e| BillingError::data(&at(), e))?;
        let mut files = Vec::new();
        if let Some(t) = &t {
            let snapshot = self
                .block(t.snapshot())
                .map_err(|e| BillingError::data(&at(), e))?;
            files = snapshot
                .files()
                .into_iter()
                .map(|f| DataFile {
                    rel: f.path.clone(),
                    location: PathBuf::from(match self.root.local_dir() {
                        Some(dir) => dir.join(table).join(&f.path).display().to_string(),
                        None => t.file_url(&f),
                    }),
                    date: f.date,
                    file: f,
                })
                .collect();
            files.sort_by(|a, b| a.rel.cmp(&b.rel));
        }
        let o = Arc::new(Opened { table: t, files });
        cache.insert(table, o.clone());
        Ok(o)
    }

    /// The committed files of `table` (`usage_15m`, `raw`) in its snapshot, sorted by path;
    /// none if the table does not exist yet.
    pub fn data_files(&self, table: &'static str) -> Result<Vec<DataFile>, BillingError> {
        Ok(self.opened(table)?.files.clone())
    }

    /// A reader of `columns` of `file`, limited to the row groups whose device_id statistics
    /// may hold one of `ids` (sorted); `None` when no row group can. A local file is read in
    /// place (only the row groups needed), a remote one fetched whole.
    fn open_file(
        &self,
        opened: &Opened,
        file: &DataFile,
        columns: &[&str],
        ids: &[&str],
    ) -> Result<Option<ParquetRecordBatchReader>, BillingError> {
        let path = &file.location;
        if self.root.local_dir().is_some() {
            let f = std::fs::File::open(path).map_err(|e| BillingError::data(path, e))?;
            return project(path, f, columns, ids);
        }
        let t = opened
            .table
            .as_ref()
            .ok_or_else(|| BillingError::data(path, "the table disappeared"))?;
        let bytes = self
            .block(t.read_bytes(&file.file))
            .map_err(|e| BillingError::data(path, e))?;
        project(path, bytes, columns, ids)
    }
}

/// A reader of `columns` (each must exist) in batches of 64k rows, of the row groups whose
/// device_id statistics may hold one of `ids` (sorted); `None` when none can.
fn project<T: ChunkReader + 'static>(
    path: &Path,
    input: T,
    columns: &[&str],
    ids: &[&str],
) -> Result<Option<ParquetRecordBatchReader>, BillingError> {
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(input).map_err(|e| BillingError::data(path, e))?;
    let schema = builder.parquet_schema();
    for c in columns {
        if !schema.columns().iter().any(|col| col.name() == *c) {
            return Err(BillingError::data(path, format!("missing column {c:?}")));
        }
    }
    let device_col = schema
        .columns()
        .iter()
        .position(|col| col.name() == "device_id");
    let groups: Vec<usize> = builder
        .metadata()
        .row_groups()
        .iter()
        .enumerate()
        .filter(|(_, rg)| {
            let Some(stats) = device_col.and_then(|i| rg.column(i).statistics()) else {
                return true;
            };
            let lo = stats
                .min_bytes_opt()
                .and_then(|b| std::str::from_utf8(b).ok());
            let hi = stats
                .max_bytes_opt()
                .and_then(|b| std::str::from_utf8(b).ok());
            match lo {
                // A truncated maximum is still an upper bound in Parquet statistics.
                Some(lo) => may_hold(ids, lo, hi),
                None => true,
            }
        })
        .map(|(i, _)| i)
        .collect();
    if groups.is_empty() {
        return Ok(None);
    }
    let mask = ProjectionMask::columns(schema, columns.iter().copied());
    builder
        .with_projection(mask)
        .with_row_groups(groups)
        .with_batch_size(64 * 1024)
        .build()
        .map(Some)
        .map_err(|e| BillingError::data(path, e))
}

/// The files of `opened` that may hold rows of `ids` (sorted) by their Delta statistics and
/// that `keep` accepts.
fn candidates<'a>(
    opened: &'a Opened,
    ids: &'a [&str],
    keep: impl Fn(&DataFile) -> bool + 'a,
) -> impl Iterator<Item = &'a DataFile> + 'a {
    opened.files.iter().filter(move |f| {
        keep(f)
            && match file_device_bounds(&f.file) {
                Some((lo, hi)) => may_hold(ids, lo, hi),
                None => true,
            }
    })
}

fn column<'a>(
    path: &Path,
    b: &'a RecordBatch,
    name: &str,
    want: &DataType,
) -> Result<&'a dyn Array, BillingError> {
    let col = b
        .column_by_name(name)
        .ok_or_else(|| BillingError::data(path, format!("missing column {name:?}")))?;
    let ok = match (col.data_type(), want) {
        (DataType::Timestamp(u1, _), DataType::Timestamp(u2, _)) => u1 == u2,
        (a, b) => a == b,
    };
    if !ok {
        return Err(BillingError::data(
            path,
            format!(
                "column {name:?} is {} but the contract says {want}",
                col.data_type()
            ),
        ));
    }
    Ok(col.as_ref())
}

fn strings(
    path: &Path,
    b: &RecordBatch,
    name: &str,
) -> Result<arrow::array::StringArray, BillingError> {
    let col = b
        .column_by_name(name)
        .ok_or_else(|| BillingError::data(path, format!("missing column {name:?}")))?;
    let cast = arrow::compute::cast(col, &DataType::Utf8)
        .map_err(|e| BillingError::data(path, format!("column {name:?}: {e}")))?;
    Ok(cast.as_string::<i32>().clone())
}

fn dec(path: &Path, v: i128) -> Result<Decimal, BillingError> {
    Decimal::try_from_i128_with_scale(v, gridmeter_core::model::VALUE_SCALE)
        .map_err(|_| BillingError::data(path, format!("decimal {v}e-9 out of range")))
}

/// Whether a file's `window_start` statistics meet the selected span: files outside every
/// selected range hold no wanted row (a file without statistics may).
fn window_start_in(span: Option<(i64, i64)>) -> impl Fn(&DataFile) -> bool {
    move |f: &DataFile| match (span, f.file.stats.ts_range("window_start")) {
        (Some((from, to)), Some((lo, hi))) => hi >= from && lo < to,
        (None, _) => false,
        _ => true,
    }
}

/// Per (device, channel): why its rows cannot be used (the first reason found).
type Reasons = HashMap<(u32, u16), String>;

/// What one usage file holds of the selection, in file order: its rows (with `variant`
/// [`POISON`] or not yet assigned), the index of each row's (kind, unit) into `kinds`, and
/// the first reason per series that a row cannot be used.
struct UsageFile {
    /// The file, for messages.
    path: String,
    rows: Vec<URow>,
    kind_of: Vec<u32>,
    kinds: Vec<(String, String)>,
    poison: Reasons,
}

/// Reads the selected rows of one `usage_15m` file.
fn usage_file(
    path: &Path,
    reader: ParquetRecordBatchReader,
    sel: &Selection,
) -> Result<UsageFile, BillingError> {
    let ts = gridmeter_core::schema::ts_type();
    let value = gridmeter_core::schema::VALUE_TYPE;
    let mut out = UsageFile {
        path: path.display().to_string(),
        rows: Vec::new(),
        kind_of: Vec::new(),
        kinds: Vec::new(),
        poison: HashMap::new(),
    };
    let mut lookup = sel.lookups();
    for batch in reader {
        let b = batch.map_err(|e| BillingError::data(path, e))?;
        let dev = strings(path, &b, "device_id")?;
        let chan = strings(path, &b, "channel")?;
        let kind = strings(path, &b, "kind")?;
        let unit = strings(path, &b, "unit")?;
        let window = strings(path, &b, "window")?;
        let flags = strings(path, &b, "flags")?;
        let ws = column(path, &b, "window_start", &ts)?.as_primitive::<TimestampMicrosecondType>();
        let usage = column(path, &b, "usage", &value)?.as_primitive::<Decimal128Type>();
        let avg = column(path, &b, "avg", &value)?.as_primitive::<Decimal128Type>();
        let rev = column(path, &b, "revision", &DataType::Int64)?.as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            let Some((d, c)) = lookup.get(dev.value(i), chan.value(i)) else {
                continue;
            };
            let t = ws.value(i);
            let (from, to) = sel.range(d);
            if t < from || t >= to || window.value(i) != "15m" {
                continue;
            }
            let k = kind.value(i);
            let (v, problem) = if k == "gauge" {
                if avg.is_null(i) {
                    continue;
                }
                (avg.value(i), None)
            } else if matches!(k, "counter" | "delta") {
                if usage.is_null(i) {
                    continue;
                }
                (usage.value(i), None)
            } else {
                let why = format!(
                    "{}: unknown kind {} (counter, delta or gauge)",
                    path.display(),
                    crate::error::excerpt(k)
                );
                (0, Some(why))
            };
            let problem = problem.or_else(|| dec(path, v).err().map(|e| e.to_string()));
            let (variant, kind_of) = match problem {
                Some(why) => {
                    out.poison.entry((d, c)).or_insert(why);
                    (POISON, 0)
                }
                None => {
                    let u = unit.value(i);
                    let j = match out.kinds.iter().position(|(vk, vu)| vk == k && vu == u) {
                        Some(j) => j,
                        None => {
                            out.kinds.push((k.to_string(), u.to_string()));
                            out.kinds.len() - 1
                        }
                    };
                    (0, j as u32)
                }
            };
            out.rows.push(URow {
                ws: t,
                lo: v as u64,
                hi: (v >> 64) as i64,
                rev: rev.value(i),
                dev: d,
                chan: c,
                quality: Quality::of_flags(gridmeter_tables::Flags::parse_lenient(flags.value(i))),
                variant,
            });
            out.kind_of.push(kind_of);
        }
    }
    Ok(out)
}

/// Reads `files` of `opened` (`columns` of the row groups that may hold one of `ids`) with
/// `read`, in parallel, the results in file order.
fn read_files<T: Send>(
    tables: &Tables,
    opened: &Opened,
    files: Vec<&DataFile>,
    columns: &[&str],
    ids: &[&str],
    read: impl Fn(&Path, ParquetRecordBatchReader) -> Result<T, BillingError> + Sync,
) -> Result<Vec<T>, BillingError> {
    files
        .into_par_iter()
        .filter_map(|file| match tables.open_file(opened, file, columns, ids) {
            Ok(Some(reader)) => Some(read(&file.location, reader)),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        })
        .collect()
}

/// Loads the current 15-minute usage of the selected device channels. Files are read in
/// parallel and merged in file order, so the result does not depend on the threads.
pub fn load_usage(tables: &Tables, sel: &Selection) -> Result<Usage, BillingError> {
    let opened = tables.opened(USAGE)?;
    let ids = sel.sorted_ids();
    let span = sel.span_us();
    let cols = [
        "device_id",
        "channel",
        "kind",
        "unit",
        "window",
        "window_start",
        "usage",
        "avg",
        "flags",
        "revision",
    ];
    let files: Vec<&DataFile> = candidates(&opened, &ids, window_start_in(span)).collect();
    let per_file = read_files(tables, &opened, files, &cols, &ids, |path, reader| {
        usage_file(path, reader, sel)
    })?;
    let mut rows: Vec<URow> = Vec::with_capacity(per_file.iter().map(|f| f.rows.len()).sum());
    // (device, channel) -> the (kind, unit, file) variants its rows carry; a series is
    // judged on its current rows only (a later revision may correct an earlier one).
    let mut variants: HashMap<(u32, u16), Vec<Variant>> = HashMap::new();
    let mut poison: HashMap<(u32, u16), String> = HashMap::new();
    let mut bad: HashMap<(u32, u16), String> = HashMap::new();
    for f in per_file {
        for (key, why) in f.poison {
            poison.entry(key).or_insert(why);
        }
        // The file's (kind, unit) index → the series' variant, for the series last seen.
        let mut last: Option<((u32, u16), u32, u8)> = None;
        for (mut r, k) in f.rows.into_iter().zip(f.kind_of) {
            let key = (r.dev, r.chan);
            if r.variant != POISON {
                let known = last.filter(|(lk, lj, _)| *lk == key && *lj == k);
                r.variant = match known {
                    Some((_, _, v)) => v,
                    None => {
                        if bad.contains_key(&key) {
                            continue;
                        }
                        let (vk, vu) = &f.kinds[k as usize];
                        let vs = variants.entry(key).or_default();
                        let v = match vs.iter().position(|(a, b, _)| a == vk && b == vu) {
                            Some(j) => j as u8,
                            None if vs.len() < usize::from(POISON) => {
                                vs.push((vk.clone(), vu.clone(), f.path.clone()));
                                (vs.len() - 1) as u8
                            }
                            None => {
                                bad.insert(key, "too many kind/unit changes".into());
                                continue;
                            }
                        };
                        last = Some((key, k, v));
                        v
                    }
                };
            }
            rows.push(r);
        }
    }
    // Current revision per key: sort by key with the highest revision first, keep the first.
    rows.retain(|r| !bad.contains_key(&(r.dev, r.chan)));
    rows.sort_unstable_by_key(|r| (r.dev, r.chan, r.ws, std::cmp::Reverse(r.rev)));
    rows.dedup_by_key(|r| (r.dev, r.chan, r.ws));
    // A series is bad when a current row is poisoned or its kind/unit changes.
    let mut i = 0;
    while i < rows.len() {
        let key = (rows[i].dev, rows[i].chan);
        let first = rows[i].variant;
        let mut j = i;
        while j < rows.len() && (rows[j].dev, rows[j].chan) == key {
            if bad.contains_key(&key) {
                j += 1;
                continue;
            }
            let r = rows[j];
            if r.variant == POISON || first == POISON {
                bad.insert(key, poison.get(&key).cloned().unwrap_or_default());
            } else if r.variant != first {
                let vs = variants.get(&key).map(Vec::as_slice).unwrap_or_default();
                let (Some(a), Some(b)) =
                    (vs.get(usize::from(first)), vs.get(usize::from(r.variant)))
                else {
                    bad.insert(key, "inconsistent kind/unit".into());
                    continue;
                };
                bad.insert(
                    key,
                    format!(
                        "the series changes kind/unit from {}/{} to {}/{} at {} ({})",
                        a.0,
                        crate::error::excerpt(&a.1),
                        b.0,
                        crate::error::excerpt(&b.1),
                        crate::statement::iso(
                            chrono::DateTime::from_timestamp_micros(r.ws).unwrap_or_default()
                        ),
                        b.2
                    ),
                );
            }
            j += 1;
        }
        i = j;
    }
    rows.retain(|r| !bad.contains_key(&(r.dev, r.chan)));
    rows.shrink_to_fit();
    let mut series: Vec<Series> = Vec::new();
    let mut i = 0;
    while i < rows.len() {
        let (dev, chan) = (rows[i].dev, rows[i].chan);
        let mut j = i;
        while j < rows.len() && rows[j].dev == dev && rows[j].chan == chan {
            j += 1;
        }
        let (kind, unit) = variants
            .get(&(dev, chan))
            .and_then(|vs| vs.get(usize::from(rows[i].variant)))
            .map(|(k, u, _)| (k.clone(), u.clone()))
            .unwrap_or_default();
        series.push(Series {
            device: dev,
            channel: chan,
            kind,
            unit,
            rows: i..j,
        });
        i = j;
    }
    Ok(Usage { series, rows, bad })
}

/// A validation failure (a row of the aggregator's `exceptions` table) of a selected
/// channel's 15-minute window in its device's billed range.
#[derive(Debug, Clone)]
pub struct Failure {
    pub device: u32,
    pub channel: u16,
    pub row: gridmeter_tables::exceptions::ExceptionRow,
}

/// The `exceptions` rows of the selected device channels whose 15-minute window starts in
/// the device's billed range, sorted by (device, channel, window start, rule, revision);
/// none when the table does not exist. Files are pruned by their device_id and window_start
/// statistics like the usage table's; the table is small (one row per failure).
pub fn load_exceptions(tables: &Tables, sel: &Selection) -> Result<Vec<Failure>, BillingError> {
    let opened = tables.opened(EXCEPTIONS)?;
    let ids = sel.sorted_ids();
    let span = sel.span_us();
    let in_time = window_start_in(span);
    let schema = gridmeter_core::schema::exceptions();
    let cols: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let mut out = Vec::new();
    let mut lookup = sel.lookups();
    for file in candidates(&opened, &ids, in_time) {
        let path = &file.location;
        let Some(reader) = tables.open_file(&opened, file, &cols, &ids)? else {
            continue;
        };
        for batch in reader {
            let b = batch.map_err(|e| BillingError::data(path, e))?;
            let rows = gridmeter_tables::exceptions::from_batch(&b)
                .map_err(|e| BillingError::data(path, e))?;
            for row in rows {
                let Some((d, c)) = lookup.get(&row.device_id, &row.channel) else {
                    continue;
                };
                let (from, to) = sel.range(d);
                if row.window != "15m" || row.window_start < from || row.window_start >= to {
                    continue;
                }
                out.push(Failure {
                    device: d,
                    channel: c,
                    row,
                });
            }
        }
    }
    out.sort_by(|a, b| {
        (
            a.device,
            a.channel,
            a.row.window_start,
            &a.row.rule,
            a.row.revision,
        )
            .cmp(&(
                b.device,
                b.channel,
                b.row.window_start,
                &b.row.rule,
                b.row.revision,
            ))
    });
    Ok(out)
}

/// What [`load_raw`] found: per (device index, channel index) the reduction of its readings,
/// and the channels whose readings cannot be used, with the reason.
pub struct Raw<T> {
    pub channels: HashMap<(u32, u16), T>,
    pub bad: HashMap<(u32, u16), String>,
}

/// One deduplicated raw reading.
#[derive(Debug, Clone, Copy)]
pub struct RawReading {
    pub ts: i64,
    pub seq: u64,
    pub value: Decimal,
}

/// A raw reading of a selected channel, as read.
struct RRow {
    dev: u32,
    chan: u16,
    counter: bool,
    seq: u64,
    ts: i64,
    received: i64,
    value: Decimal,
}

/// Reads the selected counter/delta readings of one `raw` file, in file order, and the
/// first reason per channel that a reading cannot be used.
fn raw_file(
    path: &Path,
    reader: ParquetRecordBatchReader,
    sel: &Selection,
) -> Result<(Vec<RRow>, Reasons), BillingError> {
    let ts_t = gridmeter_core::schema::ts_type();
    let value_t = gridmeter_core::schema::VALUE_TYPE;
    let mut rows = Vec::new();
    let mut bad = HashMap::new();
    let mut lookup = sel.lookups();
    for batch in reader {
        let b = batch.map_err(|e| BillingError::data(path, e))?;
        let dev = strings(path, &b, "device_id")?;
        let chan = strings(path, &b, "channel")?;
        let kind = strings(path, &b, "kind")?;
        let seq = column(path, &b, "seq", &DataType::Int64)?.as_primitive::<Int64Type>();
        let ts = column(path, &b, "ts", &ts_t)?.as_primitive::<TimestampMicrosecondType>();
        let rec =
            column(path, &b, "received_at", &ts_t)?.as_primitive::<TimestampMicrosecondType>();
        let val = column(path, &b, "value", &value_t)?.as_primitive::<Decimal128Type>();
        for i in 0..b.num_rows() {
            let k = kind.value(i);
            if k == "gauge" {
                continue;
            }
            let Some((d, c)) = lookup.get(dev.value(i), chan.value(i)) else {
                continue;
            };
            let value = match dec(path, val.value(i)) {
                Ok(v) => v,
                Err(e) => {
                    bad.entry((d, c)).or_insert_with(|| e.to_string());
                    continue;
                }
            };
            rows.push(RRow {
                dev: d,
                chan: c,
                counter: k == "counter",
                seq: seq.value(i).max(0) as u64,
                ts: ts.value(i),
                received: rec.value(i),
                value,
            });
        }
    }
    Ok((rows, bad))
}

/// Raw readings of the selected counter/delta channels, deduplicated by `(device_id, seq)`,
/// sorted by `(ts, seq)` per channel, reduced channel by channel with `difference(device,
/// channel, kind, readings)`, channels in parallel, each thread materialising one channel's
/// readings at a time. Only `raw/date=YYYY-MM-DD/` partitions within
/// `[from - 2 days, to + 2 days]` (UTC dates) are read: the boundary readings are found there.
pub fn load_raw<T: Send>(
    tables: &Tables,
    sel: &Selection,
    from_us: i64,
    to_us: i64,
    difference: impl Fn(u32, u16, &str, &[RawReading]) -> T + Sync,
) -> Result<Raw<T>, BillingError> {
    let day_us = 86_400_000_000i64;
    let lo = chrono::DateTime::from_timestamp_micros(from_us - 2 * day_us).map(|t| t.date_naive());
    let hi = chrono::DateTime::from_timestamp_micros(to_us + 2 * day_us).map(|t| t.date_naive());
    let mut rows: Vec<RRow> = Vec::new();
    let mut bad: HashMap<(u32, u16), String> = HashMap::new();
    let opened = tables.opened(RAW)?;
    let ids = sel.sorted_ids();
    // Partition pruning on the `date` partition (from the Delta log).
    let in_dates = |f: &DataFile| match (f.date, lo, hi) {
        (Some(d), Some(lo), Some(hi)) => lo <= d && d <= hi,
        _ => true,
    };
    let cols = [
        "device_id",
        "seq",
        "ts",
        "channel",
        "kind",
        "value",
        "received_at",
    ];
    let files: Vec<&DataFile> = candidates(&opened, &ids, in_dates).collect();
    let per_file = read_files(tables, &opened, files, &cols, &ids, |path, reader| {
        raw_file(path, reader, sel)
    })?;
    rows.reserve(per_file.iter().map(|(r, _)| r.len()).sum());
    for (file_rows, file_bad) in per_file {
        rows.extend(file_rows);
        for (key, why) in file_bad {
            bad.entry(key).or_insert(why);
        }
    }
    // Dedup by (device, seq): keep the earliest received_at (then the first file order).
    gridmeter_tables::raw::dedup(&mut rows, |r| ((r.dev, r.seq), r.received));
    rows.par_sort_unstable_by_key(|r| (r.dev, r.chan, r.ts, r.seq));
    rows.retain(|r| !bad.contains_key(&(r.dev, r.chan)));
    // Each channel's readings, reduced in parallel.
    let mut spans: Vec<std::ops::Range<usize>> = Vec::new();
    let mut i = 0;
    while i < rows.len() {
        let j = i + rows[i..].partition_point(|r| (r.dev, r.chan) == (rows[i].dev, rows[i].chan));
        spans.push(i..j);
        i = j;
    }
    let out: HashMap<(u32, u16), T> = spans
        .into_par_iter()
        .map_init(Vec::new, |readings, span| {
            let first = &rows[span.start];
            readings.clear();
            readings.extend(rows[span].iter().map(|r| RawReading {
                ts: r.ts,
                seq: r.seq,
                value: r.value,
            }));
            let kind = if first.counter { "counter" } else { "delta" };
            let key = (first.dev, first.chan);
            (key, difference(key.0, key.1, kind, readings))
        })
        .collect();
    Ok(Raw { channels: out, bad })
}

#[cfg(test)]
mod tests {
    #[test]
    fn usage_rows_stay_compact() {
        // A month of 15-minute data is ~3,000 rows a channel: every byte here is 3 kB a meter.
        assert_eq!(std::mem::size_of::<super::URow>(), 40);
    }

    #[test]
    fn pruning_by_device_bounds() {
        let ids = ["m-10", "m-3", "m-7"];
        let mut sorted = ids.to_vec();
        sorted.sort();
        assert!(super::may_hold(&sorted, "m-1", Some("m-2")));
        assert!(super::may_hold(&sorted, "m-5", Some("m-8")));
        assert!(!super::may_hold(&sorted, "m-4", Some("m-6")));
        assert!(!super::may_hold(&sorted, "m-8", Some("z")));
        assert!(!super::may_hold(&sorted, "a", Some("m-0")));
        // No upper bound: anything from the minimum on.
        assert!(super::may_hold(&sorted, "m-6", None));
        assert!(!super::may_hold(&sorted, "m-8", None));
        assert!(!super::may_hold(&[], "a", None));
    }
}
