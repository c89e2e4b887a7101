//! The Delta machinery against a real local directory, read back by the Python `deltalake`
//! package (an independent reader).

use std::collections::HashSet;
use std::sync::Arc;

use chrono::DateTime;
use gridmeter_core::store::DataRoot;
use gridmeter_core::{Channel, Kind, Quality, Reading};
use gridmeter_tables::delta::Staged;
use gridmeter_tables::raw::{self, RawRow};
use gridmeter_tables::usage::{UsageRow, UsageTables};
use gridmeter_tables::{Flags, Root, Table};

fn reading_rows(device: &str, seqs: std::ops::RangeInclusive<u64>, received: i64) -> Vec<RawRow> {
    let id: Arc<str> = Arc::from(device);
    seqs.map(|seq| RawRow {
        device_id: id.clone(),
        reading: Reading {
            seq,
            ts: DateTime::from_timestamp(1_795_000_000 + seq as i64 * 60, 0).unwrap(),
            channel: Channel::new("energy_import").unwrap(),
            kind: Kind::Counter,
            unit: "Wh".into(),
            value: rust_decimal::Decimal::new(seq as i64, 3),
            quality: Quality::GOOD,
        },
        received_at_us: received,
    })
    .collect()
}

fn python(script: &str) -> String {
    let out = std::process::Command::new("python3")
        .arg("-c")
        // Leave without interpreter teardown: the deltalake package's runtime threads can
        // abort a normal exit ("terminate called without an active exception").
        .arg(format!(
            "{script}\nimport os, sys\nsys.stdout.flush()\nos._exit(0)\n"
        ))
        .output()
        .expect("python3 with the deltalake package is required (CI installs it)");
    assert!(
        out.status.success(),
        "python failed: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// (rows, distinct (device, seq)) of `raw` as the Python deltalake package reads it.
fn py_counts(dir: &std::path::Path) -> String {
    python(&format!(
        "from deltalake import DeltaTable\nt = DeltaTable({:?}).to_pyarrow_table()\nk = set(zip(t.column('device_id').to_pylist(), t.column('seq').to_pylist()))\nprint(t.num_rows, len(k), sorted(set(str(d) for d in t.column('date').to_pylist())))",
        dir.join("raw").display().to_string()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_are_exactly_once_and_concurrent_writers_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::open(&DataRoot::Local(dir.path().to_path_buf())).unwrap();
    let table = raw::open(&root).await.unwrap();
    let rows = reading_rows("a", 1..=100, 5);
    let files = || raw::plan("c1-0000000000000001", &rows).unwrap();
    let first = table
        .append_once(
            "collector/c1",
            1,
            files(),
            gridmeter_tables::parquet_io::Profile::Raw,
            "",
        )
        .await
        .unwrap();
    assert!(first.version.is_some());
    // A replay of the same segment: the transaction id is found, nothing is written.
    let again = table
        .append_once(
            "collector/c1",
            1,
            files(),
            gridmeter_tables::parquet_io::Profile::Raw,
            "",
        )
        .await
        .unwrap();
    assert_eq!(again.version, None);
    // Two writers at once, 20 segments each, in separate runtimes (real concurrency).
    let threads: Vec<_> = ["c2", "c3"]
        .into_iter()
        .map(|c| {
            let root = root.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let table = raw::open(&root).await.unwrap();
                    let mut retries = 0;
                    for seg in 1..=20u64 {
                        let rows = reading_rows(c, seg * 10 - 9..=seg * 10, 7);
                        let f = raw::plan(&format!("{c}-{seg:016}"), &rows).unwrap();
                        let r = table
                            .append_once(
                                &format!("collector/{c}"),
                                seg as i64,
                                f,
                                gridmeter_tables::parquet_io::Profile::Raw,
                                "",
                            )
                            .await
                            .unwrap();
                        assert!(r.version.is_some());
                        retries += r.retries;
                    }
                    retries
                })
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let out = py_counts(dir.path());
    assert!(out.starts_with("500 500 "), "{out}");
    let snap = table.snapshot().await.unwrap();
    assert_eq!(snap.txn_version("collector/c2").await.unwrap(), Some(20));
    assert_eq!(snap.txn_version("collector/c3").await.unwrap(), Some(20));
}

/// Stages segment `seg` of writer `collector/c1` (10 readings of device `s`).
async fn stage(table: &Table, seg: u64) -> Option<Staged> {
    let rows = reading_rows("s", seg * 10 - 9..=seg * 10, 5);
    table
        .stage_once(
            "collector/c1",
            seg as i64,
            raw::plan(&format!("c1-{seg:016}"), &rows).unwrap(),
            gridmeter_tables::parquet_io::Profile::Raw,
            "",
        )
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_appends_commit_in_order_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::open(&DataRoot::Local(dir.path().to_path_buf())).unwrap();
    let table = raw::open(&root).await.unwrap();
    // The pipeline: segment 2 is staged before segment 1 commits.
    let s1 = stage(&table, 1).await.expect("nothing committed yet");
    let s2 = stage(&table, 2).await.expect("nothing committed yet");
    assert!(s1.bytes() > 0 && s2.bytes() > 0);
    assert!(
        py_counts(dir.path()).starts_with("0 0 "),
        "staged files are invisible until committed"
    );
    let c1 = table.commit_staged(&s1).await.unwrap();
    assert!(py_counts(dir.path()).starts_with("10 10 "));
    let c2 = table.commit_staged(&s2).await.unwrap();
    assert!(c1.version.unwrap() < c2.version.unwrap());
    assert_eq!(c2.bytes, s2.bytes());
    assert!(py_counts(dir.path()).starts_with("20 20 "));
    // Committed versions are not staged again, by this writer or by a restarted one.
    assert!(stage(&table, 2).await.is_none());
    let restarted = raw::open(&root).await.unwrap();
    assert!(stage(&restarted, 1).await.is_none());
    assert!(stage(&restarted, 2).await.is_none());
    // Committing the same staged files again (a retry) adds nothing.
    assert_eq!(table.commit_staged(&s2).await.unwrap().version, None);
    let s3 = stage(&restarted, 3).await.expect("segment 3 is new");
    assert!(restarted
        .commit_staged(&s3)
        .await
        .unwrap()
        .version
        .is_some());
    assert!(py_counts(dir.path()).starts_with("30 30 "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_removes_cross_collector_duplicates_in_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::open(&DataRoot::Local(dir.path().to_path_buf())).unwrap();
    let table = raw::open(&root).await.unwrap();
    let p = gridmeter_tables::parquet_io::Profile::Raw;
    // The same readings landed by two collectors (a republish on a shared subscription).
    let a = reading_rows("m", 1..=50, 100);
    let b = reading_rows("m", 26..=80, 50);
    table
        .append_once("collector/c1", 1, raw::plan("c1-1", &a).unwrap(), p, "")
        .await
        .unwrap();
    table
        .append_once("collector/c2", 1, raw::plan("c2-1", &b).unwrap(), p, "")
        .await
        .unwrap();
    assert!(py_counts(dir.path()).starts_with("105 80 "));
    let date = table.snapshot().await.unwrap().files()[0].date.unwrap();
    let stats = raw::compact_date(&table, date).await.unwrap();
    assert_eq!((stats.rows_in, stats.rows_out), (105, 80));
    assert!(py_counts(dir.path()).starts_with("80 80 "));
    // The earliest received copy won: seqs 26..=50 came from c2 (received at 50).
    let snap = table.snapshot().await.unwrap();
    let mut received = Vec::new();
    for f in snap.files() {
        for b in table.read_file(&f, None).await.unwrap() {
            received.extend(raw::identities(&b).unwrap());
        }
    }
    assert!(received
        .iter()
        .filter(|(_, s, _)| (26..=50).contains(s))
        .all(|(_, _, r)| *r == 50));
    // Compacting again changes nothing.
    let again = raw::compact_date(&table, date).await.unwrap();
    assert_eq!(
        (again.files_in, again.rows_out, again.files_out),
        (1, 80, 0)
    );
}

fn usage_row(device: &str, start: i64, usage: i128, revision: i64) -> UsageRow {
    UsageRow {
        device_id: device.into(),
        channel: "energy_import".into(),
        kind: "counter".into(),
        unit: "Wh".into(),
        window: "15m".into(),
        window_start: start,
        window_end: start + 900_000_000,
        usage: Some(usage),
        min: None,
        max: None,
        avg: None,
        last: None,
        readings: 3,
        first_ts: Some(start),
        last_ts: Some(start + 1),
        coverage: 1_000_000_000,
        flags: if revision > 1 {
            Flags::LATE
        } else {
            Flags::NONE
        },
        revision,
        computed_at: 7,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_revisions_replace_the_current_row_and_stay_in_history() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::open(&DataRoot::Local(dir.path().to_path_buf())).unwrap();
    let t = UsageTables::open(&root, "15m").await.unwrap();
    let day = 1_795_046_400_000_000i64; // a UTC midnight
    let run1: Vec<UsageRow> = (0..4)
        .flat_map(|i| ["a", "b"].map(|d| usage_row(d, day + i * 900_000_000, 10, 1)))
        .collect();
    assert_eq!(t.next_version("aggregator").await.unwrap(), 1);
    t.commit("aggregator", 1, run1.clone()).await.unwrap();
    // Run 2 revises one window of "a" and adds a new one.
    let run2 = vec![
        usage_row("a", day, 11, 2),
        usage_row("a", day + 4 * 900_000_000, 5, 1),
    ];
    assert_eq!(t.next_version("aggregator").await.unwrap(), 2);
    let c = t.commit("aggregator", 2, run2).await.unwrap();
    assert_eq!(c.rewritten, 1);
    // Committing run 2 again (a retry) is a no-op.
    let again = t
        .commit("aggregator", 2, vec![usage_row("a", day, 99, 2)])
        .await
        .unwrap();
    assert_eq!((again.history, again.current), (None, None));
    let cur = t.current_rows(None, None).await.unwrap();
    assert_eq!(cur.len(), 9);
    assert_eq!(
        cur[&("a".into(), "energy_import".into(), day)].usage,
        Some(11)
    );
    let devices: HashSet<String> = ["b".to_string()].into_iter().collect();
    assert_eq!(
        t.current_rows(Some(&devices), Some(day + 900_000_000))
            .await
            .unwrap()
            .len(),
        3
    );
    let out = python(&format!(
        "from deltalake import DeltaTable\nh = DeltaTable({h:?}).to_pyarrow_table()\nc = DeltaTable({c:?}).to_pyarrow_table()\nprint(h.num_rows, c.num_rows, sorted(c.column('revision').to_pylist())[-1])",
        h = dir.path().join("usage_history_15m").display().to_string(),
        c = dir.path().join("usage_15m").display().to_string(),
    ));
    assert_eq!(out, "10 9 2");
}

/// A revision spanning several date partitions rewrites each touched partition on its own:
/// the other device's rows and the untouched partition survive, every key stays once, and a
/// fold over the files sees exactly the current rows.
#[tokio::test]
async fn revisions_across_partitions_keep_every_other_row() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::open(&DataRoot::Local(dir.path().to_path_buf())).unwrap();
    let t = UsageTables::open(&root, "15m").await.unwrap();
    let day0 = 1_795_046_400_000_000i64; // a UTC midnight
    let day_us = 86_400_000_000i64;
    let run1: Vec<UsageRow> = (0..3)
        .flat_map(|d| (0..4).map(move |i| day0 + d * day_us + i * 900_000_000))
        .flat_map(|ts| ["a", "b"].map(|dev| usage_row(dev, ts, 10, 1)))
        .collect();
    t.commit("aggregator", 1, run1).await.unwrap();
    // Revise "a" on the first and the last day only.
    let run2 = vec![
        usage_row("a", day0, 11, 2),
        usage_row("a", day0 + 2 * day_us + 900_000_000, 12, 2),
    ];
    let c = t.commit("aggregator", 2, run2).await.unwrap();
    assert_eq!(c.rewritten, 2, "one file per touched partition");
    let cur = t.current_rows(None, None).await.unwrap();
    assert_eq!(cur.len(), 24);
    let usage = |dev: &str, ts: i64| cur[&(dev.into(), "energy_import".into(), ts)].usage;
    assert_eq!(usage("a", day0), Some(11));
    assert_eq!(usage("a", day0 + 2 * day_us + 900_000_000), Some(12));
    assert_eq!(usage("a", day0 + day_us), Some(10));
    assert!((0..3).all(|d| usage("b", day0 + d * day_us) == Some(10)));
    let mut folded = Vec::new();
    t.for_each_current(|rows| folded.extend(rows))
        .await
        .unwrap();
    folded.sort_by_key(UsageRow::key);
    let mut expected: Vec<UsageRow> = cur.into_values().collect();
    expected.sort_by_key(UsageRow::key);
    assert_eq!(folded, expected);
    let out = python(&format!(
        "from deltalake import DeltaTable\nc = DeltaTable({c:?}).to_pyarrow_table()\nprint(c.num_rows, sum(c.column('revision').to_pylist()))",
        c = dir.path().join("usage_15m").display().to_string(),
    ));
    assert_eq!(out, "24 26");
}
