//! Test helpers: writing raw rows into the `raw` Delta table (schema
//! `gridmeter_core::schema::raw()`, through the shared table layer), reading tables back with
//! independent readers (DuckDB over the files the Python `deltalake` package lists).
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Decimal128Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raw {
    pub device: String,
    pub channel: String,
    pub kind: &'static str,
    pub seq: u64,
    pub ts: i64,
    /// Value times 10^9.
    pub value: i128,
    pub quality: &'static str,
    pub received_at: i64,
}

pub const DAY: i64 = 86_400_000_000;

fn raw_batch(rows: &[&Raw]) -> RecordBatch {
    let ts = |f: &dyn Fn(&Raw) -> i64| -> ArrayRef {
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| f(r)))
                .with_timezone("UTC"),
        )
    };
    let s = |f: &dyn Fn(&Raw) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| f(r))))
    };
    RecordBatch::try_new(
        gridmeter_core::schema::raw(),
        vec![
            s(&|r| &r.device),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.seq as i64),
            )),
            ts(&|r| r.ts),
            s(&|r| &r.channel),
            s(&|r| r.kind),
            s(&|_| "Wh"),
            Arc::new(
                Decimal128Array::from_iter_values(rows.iter().map(|r| r.value))
                    .with_precision_and_scale(38, 9)
                    .unwrap(),
            ),
            s(&|r| r.quality),
            ts(&|r| r.received_at),
        ],
    )
    .unwrap()
}

/// Commits `rows` to the `raw` table under the local data root `root` as the collector
/// does: one data file per UTC day, one commit with the transaction id `(test/<name>, 1)`.
/// Runs on a runtime of its own, so it can be called from sync and async tests alike.
pub fn write_raw(root: &Path, name: &str, rows: &[Raw]) {
    let mut days: std::collections::BTreeMap<i64, Vec<&Raw>> = Default::default();
    for r in rows {
        days.entry(r.ts.div_euclid(DAY)).or_default().push(r);
    }
    let files: Vec<gridmeter_tables::delta::NewFile> = days
        .into_iter()
        .map(|(day, rows)| {
            let date = chrono::DateTime::from_timestamp_micros(day * DAY)
                .unwrap()
                .date_naive();
            gridmeter_tables::delta::NewFile {
                path: format!("date={date}/{name}.parquet"),
                date: Some(date),
                batch: raw_batch(&rows),
                tags: vec![],
            }
        })
        .collect();
    let root = root.to_path_buf();
    let app = format!("test/{name}");
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
                let table = gridmeter_tables::raw::open(&root).await.unwrap();
                table
                    .append_once(
                        &app,
                        1,
                        files,
                        gridmeter_tables::parquet_io::Profile::Raw,
                        "",
                    )
                    .await
                    .unwrap();
            })
        })
        .join()
        .unwrap()
    });
}

/// A DuckDB `read_parquet([...])` over the data files of the Delta table at `table_dir`, as
/// the Python `deltalake` package lists them (an independent reader of the log).
pub fn delta_files(table_dir: &Path) -> String {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!(
            "from deltalake import DeltaTable\nimport os, sys\nprint(repr(DeltaTable({:?}).file_uris()))\nsys.stdout.flush()\nos._exit(0)\n",
            table_dir.display().to_string()
        ))
        .output()
        .expect("python3 with deltalake");
    assert!(
        out.status.success(),
        "deltalake failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!(
        "read_parquet({})",
        String::from_utf8(out.stdout).unwrap().trim()
    )
}

/// Runs a DuckDB query through python3 and returns its rows as text lines (tab-separated).
pub fn duckdb(sql: &str) -> Vec<String> {
    let script = format!(
        "import duckdb\nfor row in duckdb.sql({sql:?}).fetchall():\n    print('\\t'.join(str(x) for x in row))\n"
    );
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .expect("python3 with duckdb");
    assert!(
        out.status.success(),
        "duckdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}
