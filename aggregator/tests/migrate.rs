//! `gridmeter-aggregator migrate`: a data root in the pre-Delta layout (raw, gaps and dead
//! letters as Parquet files with unsigned seqs; usage as part files with every revision,
//! `_commits/`, `_views/`, and the old state file) becomes the Delta tables, checked row for
//! row; the old files go; a second run changes nothing; the aggregator carries on from the
//! migrated state without recomputing. Read back by the Python deltalake package.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryArray, Decimal128Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use gridmeter_tables::usage::{to_batch, UsageRow};
use gridmeter_tables::Flags;

const T0: i64 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z
const MIN15: i64 = 900_000_000;

fn write(path: &Path, batch: &RecordBatch) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(f, batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

fn ts(v: impl IntoIterator<Item = i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from_iter_values(v).with_timezone("UTC"))
}

/// The old raw schema: seq as UInt64.
fn old_raw(device: &str, seqs: std::ops::Range<u64>, value0: i128) -> RecordBatch {
    let n = seqs.end - seqs.start;
    let tsv: Vec<i64> = seqs.clone().map(|s| T0 + s as i64 * MIN15).collect();
    let s = |v: &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
            v, n as usize,
        )))
    };
    let t = gridmeter_core::schema::ts_type();
    let schema = Arc::new(Schema::new(vec![
        Field::new("device_id", DataType::Utf8, false),
        Field::new("seq", DataType::UInt64, false),
        Field::new("ts", t.clone(), false),
        Field::new("channel", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("unit", DataType::Utf8, false),
        Field::new("value", gridmeter_core::schema::VALUE_TYPE, false),
        Field::new("quality", DataType::Utf8, false),
        Field::new("received_at", t, false),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            s(device),
            Arc::new(UInt64Array::from_iter_values(seqs.clone())),
            ts(tsv.clone()),
            s("energy_import"),
            s("counter"),
            s("Wh"),
            Arc::new(
                Decimal128Array::from_iter_values(
                    seqs.map(|s| value0 + s as i128 * 10_000_000_000),
                )
                .with_precision_and_scale(38, 9)
                .unwrap(),
            ),
            s(""),
            ts(tsv.iter().map(|t| t + 1_000_000)),
        ],
    )
    .unwrap()
}

fn usage(device: &str, i: i64, usage: i128, revision: i64) -> UsageRow {
    UsageRow {
        device_id: device.into(),
        channel: "energy_import".into(),
        kind: "counter".into(),
        unit: "Wh".into(),
        window: "15m".into(),
        window_start: T0 + i * MIN15,
        window_end: T0 + (i + 1) * MIN15,
        usage: Some(usage),
        min: None,
        max: None,
        avg: None,
        last: None,
        readings: 1,
        first_ts: Some(T0 + i * MIN15),
        last_ts: Some(T0 + i * MIN15),
        coverage: 1_000_000_000,
        flags: if revision > 1 {
            Flags::LATE
        } else {
            Flags::NONE
        },
        revision,
        computed_at: 1,
    }
}

fn python(script: &str) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "{script}\nimport os, sys\nsys.stdout.flush()\nos._exit(0)\n"
        ))
        .output()
        .expect("python3 with deltalake");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn cli(conf: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_gridmeter-aggregator"))
        .arg("--config")
        .arg(conf)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn migrate_converts_the_old_layout_row_for_row() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // raw: two collectors' files, one reading landed by both (readers dedup; kept as is).
    write(
        &data.join("raw/date=2026-01-01/c1-0000000000000001-0.parquet"),
        &old_raw("m1", 0..40, 0),
    );
    write(
        &data.join("raw/date=2026-01-01/c2-0000000000000001-0.parquet"),
        &old_raw("m1", 39..41, 0),
    );
    write(
        &data.join("raw/date=2026-01-01/c1-0000000000000002-0.parquet"),
        &old_raw("m2", 0..10, 5),
    );
    // gaps.
    let g = Arc::new(Schema::new(vec![
        Field::new("device_id", DataType::Utf8, false),
        Field::new("from_seq", DataType::UInt64, false),
        Field::new("to_seq", DataType::UInt64, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("recorded_at", gridmeter_core::schema::ts_type(), false),
    ]));
    let gaps = RecordBatch::try_new(
        g,
        vec![
            Arc::new(StringArray::from(vec!["m1"])),
            Arc::new(UInt64Array::from(vec![100u64])),
            Arc::new(UInt64Array::from(vec![200u64])),
            Arc::new(StringArray::from(vec!["buffer_full"])),
            ts([T0]),
        ],
    )
    .unwrap();
    write(&data.join("gaps/c1-0000000000000001.parquet"), &gaps);
    let dead = RecordBatch::try_new(
        gridmeter_core::schema::dead_letter(),
        vec![
            ts([T0]),
            Arc::new(StringArray::from(vec!["gridmeter/v1/m1/readings"])),
            Arc::new(StringArray::from(vec!["bad_json"])),
            Arc::new(StringArray::from(vec!["expected value"])),
            Arc::new(BinaryArray::from(vec![&b"{"[..]])),
        ],
    )
    .unwrap();
    write(
        &data.join("deadletter/date=2026-01-01/c1-0000000000000001.parquet"),
        &dead,
    );
    // usage/15m: revision 1 of 30 windows, then revision 2 of 3 of them.
    let rev1: Vec<UsageRow> = (0..30).map(|i| usage("m1", i, 10_000_000_000, 1)).collect();
    let rev2: Vec<UsageRow> = (5..8).map(|i| usage("m1", i, 11_000_000_000, 2)).collect();
    write(
        &data.join("usage/15m/part-0000000001.parquet"),
        &to_batch(&rev1).unwrap(),
    );
    write(
        &data.join("usage/15m/part-0000000002.parquet"),
        &to_batch(&rev2).unwrap(),
    );
    std::fs::create_dir_all(data.join("usage/15m/_commits")).unwrap();
    std::fs::write(data.join("usage/15m/_commits/0000000001.json"), "{}").unwrap();
    std::fs::create_dir_all(data.join("usage/15m/_views")).unwrap();
    std::fs::write(data.join("usage/15m/_views/current.sql"), "-- view").unwrap();
    std::fs::create_dir_all(data.join("usage/_state")).unwrap();
    std::fs::write(
        data.join("usage/_state/aggregator.json"),
        format!(
            r#"{{"watermarks":{{"m1":{},"m2":{}}},"processed":["raw/date=2026-01-01/c1-0000000000000001-0.parquet","raw/date=2026-01-01/c2-0000000000000001-0.parquet","raw/date=2026-01-01/c1-0000000000000002-0.parquet"]}}"#,
            T0 + 40 * MIN15,
            T0 + 9 * MIN15
        ),
    )
    .unwrap();

    let conf = dir.path().join("aggregator.toml");
    std::fs::write(
        &conf,
        format!("data_root = \"{}\"\nwindows = [\"15m\"]\n", data.display()),
    )
    .unwrap();
    let report = cli(&conf, &["migrate"]);
    eprintln!("{report}");
    assert!(
        report
            .contains("raw: 3 old files, 52 rows; 52 rows in the Delta table, checked row for row"),
        "{report}"
    );
    assert!(
        report.contains("usage_history_15m: 2 old files, 33 rows; 33 rows"),
        "{report}"
    );
    assert!(
        report.contains("usage_15m: 2 old files, 30 rows; 30 rows"),
        "{report}"
    );
    // The old files are gone; what is left is the Delta tables and the new state.
    let files_under = |d: &Path| -> usize {
        let mut n = 0;
        let mut stack = vec![d.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    stack.push(e.path())
                } else {
                    n += 1
                }
            }
        }
        n
    };
    assert_eq!(files_under(&data.join("usage")), 0, "old usage files left");
    assert!(!data
        .join("raw/date=2026-01-01/c1-0000000000000001-0.parquet")
        .exists());
    assert!(data.join("_state/aggregator.json").exists());
    let got = python(&format!(
        "from deltalake import DeltaTable\nr = DeltaTable({raw:?}).to_pyarrow_table()\ng = DeltaTable({gaps:?}).to_pyarrow_table()\n\
         c = DeltaTable({cur:?}).to_pandas()\nh = DeltaTable({hist:?}).to_pyarrow_table()\n\
         print(r.num_rows, str(r.schema.field('seq').type), g.column('to_seq').to_pylist(), h.num_rows, len(c), sorted(set(c['revision'])), c[c['revision'] == 2]['usage'].astype(str).tolist())",
        raw = data.join("raw").display().to_string(),
        gaps = data.join("gaps").display().to_string(),
        cur = data.join("usage_15m").display().to_string(),
        hist = data.join("usage_history_15m").display().to_string(),
    ));
    assert_eq!(
        got,
        "52 int64 [200] 33 30 [1, 2] ['11.000000000', '11.000000000', '11.000000000']"
    );
    // Again: nothing to do, nothing committed twice.
    let again = cli(&conf, &["migrate"]);
    assert!(again.contains("(committed by an earlier run)"), "{again}");
    assert!(
        again.contains("raw: 0 old files, 0 rows; 52 rows") || again.contains("raw: 0 old files"),
        "{again}"
    );
    // The aggregator carries on: every raw file counts as processed, nothing is recomputed.
    let run = cli(&conf, &["run"]);
    assert!(run.starts_with("files 0 "), "{run}");
}
