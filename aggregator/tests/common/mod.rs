//! Test helpers: writing raw Parquet per the contract (schema `gridmeter_core::schema::raw()`),
//! shared with nothing but the schema.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Decimal128Array, RecordBatch, StringArray, TimestampMicrosecondArray, UInt64Array,
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

/// Writes `rows` as one raw file per UTC day under `root/raw/date=…/<name>.parquet`
/// (written to a staging name, then renamed, as the collector does).
pub fn write_raw(root: &Path, name: &str, rows: &[Raw]) {
    let mut days: std::collections::BTreeMap<i64, Vec<&Raw>> = Default::default();
    for r in rows {
        days.entry(r.ts.div_euclid(DAY)).or_default().push(r);
    }
    for (day, rows) in days {
        let date = chrono::DateTime::from_timestamp_micros(day * DAY)
            .unwrap()
            .format("%Y-%m-%d")
            .to_string();
        let dir = root.join(format!("raw/date={date}"));
        std::fs::create_dir_all(&dir).unwrap();
        let ts = |f: &dyn Fn(&Raw) -> i64| -> ArrayRef {
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| f(r)))
                    .with_timezone("UTC"),
            )
        };
        let s = |f: &dyn Fn(&Raw) -> &str| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| f(r))))
        };
        let batch = RecordBatch::try_new(
            gridmeter_core::schema::raw(),
            vec![
                s(&|r| &r.device),
                Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.seq))),
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
        .unwrap();
        let tmp = dir.join(format!(".{name}.tmp"));
        let file = std::fs::File::create(&tmp).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        std::fs::rename(&tmp, dir.join(format!("{name}.parquet"))).unwrap();
    }
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
