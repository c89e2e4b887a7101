//! Test fixtures: usage and raw rows committed to the `usage_15m` and `raw` Delta tables
//! (schemas `gridmeter_core::schema::{usage, raw}`, through the shared table layer).

#![allow(dead_code)]

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Decimal128Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use chrono::{DateTime, Duration, Utc};
use gridmeter_core::decimal::to_scaled_i128;
use rust_decimal::Decimal;

pub fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

pub fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

#[derive(Clone)]
pub struct UsageRow {
    pub device: String,
    pub channel: String,
    pub kind: String,
    pub unit: String,
    pub start: DateTime<Utc>,
    pub usage: Option<Decimal>,
    pub avg: Option<Decimal>,
    pub flags: String,
    pub revision: i64,
}

#[derive(Clone)]
pub struct RawRow {
    pub device: String,
    pub seq: u64,
    pub ts: DateTime<Utc>,
    pub channel: String,
    pub kind: String,
    pub unit: String,
    pub value: Decimal,
    pub received_at: DateTime<Utc>,
}

/// A counter channel with a reading at every 15-minute boundary from `start`: `per` holds
/// each window's increment. Returns the raw readings (len + 1) and the usage rows (revision 1).
pub fn counter(
    device: &str,
    channel: &str,
    unit: &str,
    start: DateTime<Utc>,
    per: &[Decimal],
    seq0: u64,
) -> (Vec<RawRow>, Vec<UsageRow>) {
    let mut raw = Vec::new();
    let mut usage = Vec::new();
    let mut v = d("1000");
    for i in 0..=per.len() {
        let ts = start + Duration::minutes(15 * i as i64);
        raw.push(RawRow {
            device: device.into(),
            seq: seq0 + i as u64,
            ts,
            channel: channel.into(),
            kind: "counter".into(),
            unit: unit.into(),
            value: v,
            received_at: ts + Duration::seconds(5),
        });
        if i < per.len() {
            usage.push(UsageRow {
                device: device.into(),
                channel: channel.into(),
                kind: "counter".into(),
                unit: unit.into(),
                start: ts,
                usage: Some(per[i]),
                avg: None,
                flags: String::new(),
                revision: 1,
            });
            v += per[i];
        }
    }
    (raw, usage)
}

/// A gauge channel's usage rows with the given time-weighted averages.
pub fn gauge(
    device: &str,
    channel: &str,
    unit: &str,
    start: DateTime<Utc>,
    avgs: &[Decimal],
) -> Vec<UsageRow> {
    avgs.iter()
        .enumerate()
        .map(|(i, a)| UsageRow {
            device: device.into(),
            channel: channel.into(),
            kind: "gauge".into(),
            unit: unit.into(),
            start: start + Duration::minutes(15 * i as i64),
            usage: None,
            avg: Some(*a),
            flags: String::new(),
            revision: 1,
        })
        .collect()
}

fn dec(v: &[Option<Decimal>]) -> ArrayRef {
    Arc::new(
        Decimal128Array::from(
            v.iter()
                .map(|x| x.map(|x| to_scaled_i128(x).unwrap()))
                .collect::<Vec<_>>(),
        )
        .with_precision_and_scale(38, 9)
        .unwrap(),
    )
}

fn ts(v: &[i64]) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(v.to_vec()).with_timezone("UTC"))
}

/// Runs `f` with the table `spec` under the local data root `root`, on a runtime of its own.
fn with_table<T: Send>(
    root: &Path,
    spec: gridmeter_tables::TableSpec,
    f: impl FnOnce(gridmeter_tables::Table) -> futures::future::BoxFuture<'static, T> + Send,
) -> T {
    let root = root.to_path_buf();
    std::thread::scope(|s| {
        s.spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let root =
                    gridmeter_tables::Root::open(&gridmeter_core::store::DataRoot::Local(root))
                        .unwrap();
                let table = gridmeter_tables::Table::open(&root, spec).await.unwrap();
                f(table).await
            })
        })
        .join()
        .unwrap()
    })
}

/// Commits `batch` as one data file `path` of `spec`'s table. Writing a path again replaces
/// the file (its new `add` supersedes the old one, as in a rewrite).
fn commit(
    root: &Path,
    spec: gridmeter_tables::TableSpec,
    path: String,
    date: chrono::NaiveDate,
    batch: RecordBatch,
) {
    with_table(root, spec, move |table| {
        Box::pin(async move {
            let file = gridmeter_tables::delta::NewFile {
                path: path.clone(),
                date: Some(date),
                batch,
                tags: vec![],
            };
            table
                .append_once(
                    &format!("test/{path}"),
                    chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default(),
                    vec![file],
                    gridmeter_tables::parquet_io::Profile::Standard,
                    "",
                )
                .await
                .unwrap();
        })
    })
}

/// Commits `rows` (all of one day) to `<root>/usage_15m` as `date=<day>/<name>.parquet`.
pub fn write_usage(root: &Path, name: &str, rows: &[UsageRow]) {
    let s = |f: &dyn Fn(&UsageRow) -> String| -> ArrayRef {
        Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>()))
    };
    let starts: Vec<i64> = rows.iter().map(|r| r.start.timestamp_micros()).collect();
    let ends: Vec<i64> = starts.iter().map(|s| s + 900_000_000).collect();
    let none: Vec<Option<Decimal>> = rows.iter().map(|_| None).collect();
    let batch = RecordBatch::try_new(
        gridmeter_core::schema::usage(),
        vec![
            s(&|r| r.device.clone()),
            s(&|r| r.channel.clone()),
            s(&|r| r.kind.clone()),
            s(&|r| r.unit.clone()),
            s(&|_| "15m".to_string()),
            ts(&starts),
            ts(&ends),
            dec(&rows.iter().map(|r| r.usage).collect::<Vec<_>>()),
            dec(&none),
            dec(&none),
            dec(&rows.iter().map(|r| r.avg).collect::<Vec<_>>()),
            dec(&none),
            Arc::new(Int64Array::from(
                rows.iter().map(|_| 1i64).collect::<Vec<_>>(),
            )),
            Arc::new(
                TimestampMicrosecondArray::from(
                    starts.iter().map(|s| Some(*s)).collect::<Vec<_>>(),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(
                TimestampMicrosecondArray::from(ends.iter().map(|s| Some(*s)).collect::<Vec<_>>())
                    .with_timezone("UTC"),
            ),
            dec(&rows.iter().map(|_| Some(Decimal::ONE)).collect::<Vec<_>>()),
            s(&|r| r.flags.clone()),
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.revision).collect::<Vec<_>>(),
            )),
            ts(&ends),
        ],
    )
    .unwrap();
    let date = rows
        .first()
        .map(|r| r.start.date_naive())
        .unwrap_or_default();
    commit(
        root,
        gridmeter_tables::usage::current_spec("15m"),
        format!("date={date}/{name}.parquet"),
        date,
        batch,
    );
}

fn raw_batch(rows: &[RawRow]) -> RecordBatch {
    let s = |f: &dyn Fn(&RawRow) -> String| -> ArrayRef {
        Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>()))
    };
    let batch = RecordBatch::try_new(
        gridmeter_core::schema::raw(),
        vec![
            s(&|r| r.device.clone()),
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.seq as i64).collect::<Vec<_>>(),
            )),
            ts(&rows
                .iter()
                .map(|r| r.ts.timestamp_micros())
                .collect::<Vec<_>>()),
            s(&|r| r.channel.clone()),
            s(&|r| r.kind.clone()),
            s(&|r| r.unit.clone()),
            dec(&rows.iter().map(|r| Some(r.value)).collect::<Vec<_>>()),
            s(&|_| String::new()),
            ts(&rows
                .iter()
                .map(|r| r.received_at.timestamp_micros())
                .collect::<Vec<_>>()),
        ],
    )
    .unwrap();
    batch
}

/// Commits `rows` to `<root>/raw` as `date=<date>/<name>.parquet`.
pub fn write_raw(root: &Path, date: &str, name: &str, rows: &[RawRow]) {
    let day = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").unwrap();
    commit(
        root,
        gridmeter_tables::raw::spec(),
        format!("date={date}/{name}.parquet"),
        day,
        raw_batch(rows),
    );
}

/// Writes `rows` as the data file `date=<date>/<name>.parquet` of `<root>/raw` without
/// committing it (a collector that crashed before its commit): no reader may see it.
pub fn write_raw_uncommitted(root: &Path, date: &str, name: &str, rows: &[RawRow]) {
    let day = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").unwrap();
    let batch = raw_batch(rows);
    let path = format!("date={date}/{name}.parquet");
    with_table(root, gridmeter_tables::raw::spec(), move |table| {
        Box::pin(async move {
            table
                .write_file(
                    &path,
                    Some(day),
                    &batch,
                    gridmeter_tables::parquet_io::Profile::Standard,
                    &[],
                )
                .await
                .unwrap();
        })
    });
}

pub fn config(root: &Path, registry: &str, tariffs: &str) -> gridmeter_billing::ExportConfig {
    let registry = gridmeter_core::config::parse(registry, "registry").unwrap();
    let tariffs = gridmeter_core::config::parse(tariffs, "tariffs").unwrap();
    gridmeter_billing::ExportConfig::new(root, root, registry, tariffs)
}

/// Every file of a run directory as (relative path, bytes), sorted.
pub fn run_files(base: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = Vec::new();
    let mut stack = vec![base.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                v.push((
                    e.path().strip_prefix(base).unwrap().display().to_string(),
                    std::fs::read(e.path()).unwrap(),
                ));
            }
        }
    }
    v.sort();
    v
}

/// Runs `tests/espi_schema.py` (the official ESPI 3.3 schemas and the feed conventions) on
/// `feeds`; panics with its output unless they pass, else returns the output.
pub fn validate_espi(feeds: &[std::path::PathBuf]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/espi_schema.py");
    let o = std::process::Command::new("python3")
        .arg(&script)
        .args(feeds)
        .output()
        .expect("python3 must be installed");
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "ESPI schema check failed:\n{out}");
    out
}

/// Appends `rows` to `<root>/exceptions` as the aggregator does (one commit, transaction id
/// `(test/<name>, 1)`).
pub fn write_exceptions(
    root: &Path,
    name: &str,
    rows: Vec<gridmeter_tables::exceptions::ExceptionRow>,
) {
    let name = name.to_string();
    with_table(root, gridmeter_tables::exceptions::spec(), move |table| {
        Box::pin(async move {
            gridmeter_tables::exceptions::append(&table, &format!("test/{name}"), 1, rows)
                .await
                .unwrap();
        })
    });
}

/// One `exceptions` row of a 15-minute window of channel `energy_import`.
pub fn exception_row(
    device: &str,
    start: DateTime<Utc>,
    rule: &str,
    severity: &str,
    revision: i64,
) -> gridmeter_tables::exceptions::ExceptionRow {
    gridmeter_tables::exceptions::ExceptionRow {
        device_id: device.into(),
        channel: "energy_import".into(),
        window: "15m".into(),
        window_start: start.timestamp_micros(),
        window_end: (start + Duration::minutes(15)).timestamp_micros(),
        rule: rule.into(),
        severity: severity.into(),
        observed: Some(to_scaled_i128(d("2500")).unwrap()),
        threshold: Some(to_scaled_i128(d("1000")).unwrap()),
        action: "flag".into(),
        revision,
        detected_at: start.timestamp_micros(),
    }
}

/// The cells of `column` of a statement/exceptions CSV (header row first), by row.
pub fn csv_column(text: &str, column: &str) -> Vec<String> {
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let i = r
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == column)
        .unwrap_or_else(|| panic!("no column {column}"));
    r.records().map(|rec| rec.unwrap()[i].to_string()).collect()
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn invoice(dir: &Path, customer: &str) -> serde_json::Value {
    serde_json::from_str(&read(
        &dir.join("invoices").join(format!("{customer}.json")),
    ))
    .unwrap()
}

/// The invoice lines as (component, band, quantity, amount).
pub fn items(inv: &serde_json::Value) -> Vec<(String, String, String, String)> {
    inv["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["component"].as_str().unwrap().to_string(),
                l["band"].as_str().unwrap().to_string(),
                l["quantity"].as_str().unwrap().to_string(),
                l["amount"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The local HTTP receiver of `tests/receiver.py` (webhooks and Zuora uploads), killed on drop.
pub struct Receiver {
    pub child: std::process::Child,
    pub base: String,
    pub state: std::path::PathBuf,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Receiver {
    /// Starts it on 127.0.0.1; it fails the first `fail_first` attempts of each event or file.
    pub fn start(state: &Path, secret: &str, fail_first: usize) -> Receiver {
        use std::io::BufRead;
        std::fs::create_dir_all(state).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/receiver.py");
        let mut child = std::process::Command::new("python3")
            .arg(script)
            .arg(state)
            .arg(secret)
            .arg(fail_first.to_string())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .strip_prefix("PORT ")
            .expect("receiver port")
            .trim()
            .to_string();
        Receiver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            state: state.to_path_buf(),
        }
    }

    /// Every request it received, in order.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.state.join("requests.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}
