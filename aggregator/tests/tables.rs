//! The usage tables end to end: the sum check on a month of 15-minute data for 1,000
//! devices, DuckDB reading the tables and agreeing, rebuild reproducing them, and a late
//! reading restated as a new revision.

mod common;

use std::collections::BTreeMap;
use std::str::FromStr;

use common::{delta_files, duckdb, write_raw, Raw, DAY};
use gridmeter_aggregator::series::LATE;
use gridmeter_aggregator::{AggregatorConfig, Metrics, UsageRow};
use rust_decimal::Decimal;

const MIN: i64 = 60_000_000;
const BASE: i64 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z
const REGISTER_MAX: i128 = 999_999_000_000_000; // 999999

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// 15-minute counter readings (jittered by up to 5 minutes, except exactly at midnight),
/// `days` days from BASE; returns the readings and, per device, the true consumption
/// (the sum of the generated increments) from BASE to BASE + `check_days` days.
fn month(devices: usize, days: i64, check_days: i64) -> (Vec<Raw>, BTreeMap<String, i128>) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut rows = Vec::with_capacity(devices * (days as usize * 96 + 1));
    let mut truth = BTreeMap::new();
    for d in 0..devices {
        let device = format!("meter-{d:04}");
        // A tenth of the devices start near the register maximum and roll over.
        let mut v: i128 = if d % 10 == 0 {
            REGISTER_MAX - 50_000_000_000
        } else {
            (rng.next() % 500_000) as i128 * 1_000_000_000
        };
        let mut consumed: i128 = 0;
        for k in 0..=(days * 96) {
            let tick = BASE + k * 15 * MIN;
            let ts = if tick % DAY == 0 {
                tick
            } else {
                tick + (rng.next() % (5 * MIN as u64)) as i64
            };
            if k > 0 {
                // 0 to 2.5 kWh with 3 decimals.
                let inc = (rng.next() % 2_500_000) as i128 * 1_000_000;
                if tick <= BASE + check_days * DAY {
                    consumed += inc;
                }
                v += inc;
                if v > REGISTER_MAX {
                    v -= REGISTER_MAX + 1_000_000_000;
                }
            }
            rows.push(Raw {
                device: device.clone(),
                channel: "energy_import".into(),
                kind: "counter",
                seq: k as u64 + 1,
                ts,
                value: v,
                quality: "",
                received_at: ts + 2_000_000,
            });
        }
        truth.insert(device, consumed);
    }
    (rows, truth)
}

fn config(dir: &std::path::Path) -> AggregatorConfig {
    let mut c = AggregatorConfig::new(dir);
    c.default_register_max = Some(Decimal::from(999_999));
    c
}

fn sums(rows: &[UsageRow], until: i64) -> BTreeMap<String, i128> {
    let mut out = BTreeMap::new();
    for r in rows.iter().filter(|r| r.window_end <= until) {
        *out.entry(r.device_id.clone()).or_default() += r.usage.unwrap();
    }
    out
}

fn values(rows: &[UsageRow]) -> Vec<UsageRow> {
    rows.iter()
        .map(|r| UsageRow {
            revision: 0,
            computed_at: 0,
            flags: r.flags & !LATE,
            ..r.clone()
        })
        .collect()
}

/// The size: 1,000 devices, ~3 M readings. Minutes in a debug build, so it runs in
/// release (`cargo test --release -p gridmeter-aggregator --test tables`; scripts/test.sh,
/// and so CI, runs it); the debug run covers the same test on 60 devices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(debug_assertions, ignore = "3 M readings: run with --release")]
async fn month_of_1000_devices_sum_check_duckdb_and_rebuild() {
    month_sum_check_duckdb_and_rebuild(1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn month_of_60_devices_sum_check_duckdb_and_rebuild() {
    month_sum_check_duckdb_and_rebuild(60).await;
}

async fn month_sum_check_duckdb_and_rebuild(devices: usize) {
    let dir = tempfile::tempdir().unwrap();
    // 30 days checked, plus one more day so the watermark passes the end of the month.
    let (raw, truth) = month(devices, 31, 30);
    assert_eq!(raw.len(), devices * (31 * 96 + 1));
    let started = std::time::Instant::now();
    write_raw(dir.path(), "c1-0", &raw);
    drop(raw);
    eprintln!("raw written in {:?}", started.elapsed());
    let cfg = config(dir.path());
    let metrics = Metrics::unregistered();
    let started = std::time::Instant::now();
    let summary = gridmeter_aggregator::run_once(&cfg, &metrics)
        .await
        .unwrap();
    eprintln!("run_once in {:?}: {summary:?}", started.elapsed());
    assert_eq!(summary.readings_processed, devices as u64 * (31 * 96 + 1));
    let end = BASE + 30 * DAY;

    // Sum check, exact, for every window size.
    let mut current = BTreeMap::new();
    for w in ["15m", "1h", "1d"] {
        let rows = gridmeter_aggregator::current(&cfg, w).await.unwrap();
        assert!(rows.iter().all(|r| r.revision == 1));
        assert_eq!(sums(&rows, end), truth, "sum check, window {w}");
        current.insert(w, rows);
    }
    // Rollovers were seen and flagged.
    assert!(current["15m"]
        .iter()
        .any(|r| r.flags.contains(gridmeter_aggregator::series::ROLLOVER)));

    // DuckDB reads the current table (the files its Delta log names) and agrees to the last
    // decimal, without any window function.
    let current_15m = delta_files(&dir.path().join("usage_15m"));
    let lines = duckdb(&format!(
        "SELECT device_id, sum(usage)::VARCHAR FROM {current_15m} \
         WHERE window_end <= TIMESTAMPTZ '2026-01-31 00:00:00+00' GROUP BY 1 ORDER BY 1"
    ));
    assert_eq!(lines.len(), devices);
    for line in lines {
        let (device, total) = line.split_once('\t').unwrap();
        let total = Decimal::from_str(total).unwrap();
        let ours = gridmeter_core::decimal::from_scaled_i128(truth[device]).unwrap();
        assert_eq!(total, ours, "{device}");
    }
    let n = duckdb(&format!(
        "SELECT count(*) FROM {}",
        delta_files(&dir.path().join("usage_1d"))
    ));
    assert_eq!(n, vec![current["1d"].len().to_string()]);

    // Processing again writes nothing; so does a rebuild of unchanged raw.
    let again = gridmeter_aggregator::run_once(&cfg, &metrics)
        .await
        .unwrap();
    assert!(again.rows_written.is_empty());
    let from = chrono::DateTime::from_timestamp_micros(BASE).unwrap();
    let to = chrono::DateTime::from_timestamp_micros(BASE + 40 * DAY).unwrap();
    let started = std::time::Instant::now();
    let s = gridmeter_aggregator::rebuild(&cfg, from, to, &metrics)
        .await
        .unwrap();
    eprintln!("rebuild (no change) in {:?}", started.elapsed());
    assert!(s.rows_written.is_empty(), "{s:?}");

    // Rebuild from raw alone reproduces the tables: same rows, same values.
    for w in ["15m", "1h", "1d"] {
        std::fs::remove_dir_all(dir.path().join(format!("usage_{w}"))).unwrap();
        std::fs::remove_dir_all(dir.path().join(format!("usage_history_{w}"))).unwrap();
    }
    gridmeter_aggregator::rebuild(&cfg, from, to, &metrics)
        .await
        .unwrap();
    for w in ["15m", "1h", "1d"] {
        let rows = gridmeter_aggregator::current(&cfg, w).await.unwrap();
        assert_eq!(values(&rows), values(&current[w]), "rebuild of {w}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_reading_is_a_new_revision() {
    let dir = tempfile::tempdir().unwrap();
    let (mut raw, _) = month(3, 2, 2);
    // Hold back one reading of meter-0001 on day 1 at 10:00-ish; it arrives late.
    let idx = raw
        .iter()
        .position(|r| r.device == "meter-0001" && r.seq == 41)
        .unwrap();
    let late = raw.remove(idx);
    write_raw(dir.path(), "c1-0", &raw);
    let cfg = config(dir.path());
    let metrics = Metrics::unregistered();
    gridmeter_aggregator::run_once(&cfg, &metrics)
        .await
        .unwrap();
    let before = gridmeter_aggregator::current(&cfg, "15m").await.unwrap();

    write_raw(dir.path(), "c1-1", std::slice::from_ref(&late));
    let s = gridmeter_aggregator::run_once(&cfg, &metrics)
        .await
        .unwrap();
    assert_eq!(s.late_readings, 1);
    assert_eq!(metrics.late_readings.get(), 1);
    assert!(s.revisions["15m"] >= 1, "{s:?}");
    let after = gridmeter_aggregator::current(&cfg, "15m").await.unwrap();
    assert_eq!(before.len(), after.len());
    let revised: Vec<&UsageRow> = after.iter().filter(|r| r.revision == 2).collect();
    assert!(!revised.is_empty());
    for r in &revised {
        assert_eq!(r.device_id, "meter-0001");
        assert!(r.flags.contains(LATE));
        // The late reading lies in or next to every revised window.
        assert!((r.window_start - late.ts).abs() <= 30 * MIN, "{r:?}");
    }
    // The total over the revised span is unchanged: only its split between windows moved.
    let total = |rows: &[UsageRow]| -> i128 {
        rows.iter()
            .filter(|r| r.device_id == "meter-0001")
            .map(|r| r.usage.unwrap())
            .sum()
    };
    assert_eq!(total(&before), total(&after));
    // Both revisions are kept for audit: history holds revision 1 and 2 of those keys; the
    // current table one row per key, the latest.
    let history = delta_files(&dir.path().join("usage_history_15m"));
    let n = duckdb(&format!(
        "SELECT count(*) FROM {history} WHERE device_id = 'meter-0001' AND revision = 1"
    ));
    let rev1 = before
        .iter()
        .filter(|r| r.device_id == "meter-0001")
        .count();
    assert_eq!(n, vec![rev1.to_string()]);
    let current = delta_files(&dir.path().join("usage_15m"));
    let n = duckdb(&format!(
        "SELECT count(*), count(DISTINCT (device_id, channel, window_start)), max(revision) FROM {current}"
    ));
    assert_eq!(n, vec![format!("{0}\t{0}\t2", after.len())]);
    // A rebuild agrees with the incremental result and writes nothing.
    let from = chrono::DateTime::from_timestamp_micros(BASE - DAY).unwrap();
    let to = chrono::DateTime::from_timestamp_micros(BASE + 5 * DAY).unwrap();
    let s = gridmeter_aggregator::rebuild(&cfg, from, to, &metrics)
        .await
        .unwrap();
    assert!(s.rows_written.is_empty(), "{s:?}");
}

/// `devices_per_batch`: a run that works through the devices in batches (each with its own
/// commits) writes the same current rows as one run over all devices at once, and a second
/// batched run writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_batches_equal_one_batch() {
    let (raw, _) = month(7, 3, 2);
    let (one, batched) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_raw(one.path(), "c1-0", &raw);
    write_raw(batched.path(), "c1-0", &raw);
    let metrics = Metrics::unregistered();
    let one_cfg = config(one.path());
    let batched_cfg = AggregatorConfig {
        devices_per_batch: Some(3),
        ..config(batched.path())
    };
    let a = gridmeter_aggregator::run_once(&one_cfg, &metrics)
        .await
        .unwrap();
    let b = gridmeter_aggregator::run_once(&batched_cfg, &metrics)
        .await
        .unwrap();
    assert_eq!(a.rows_written, b.rows_written);
    assert_eq!(a.readings_processed, b.readings_processed);
    for w in ["15m", "1h", "1d"] {
        let x = gridmeter_aggregator::current(&one_cfg, w).await.unwrap();
        let y = gridmeter_aggregator::current(&batched_cfg, w)
            .await
            .unwrap();
        assert!(!x.is_empty());
        assert_eq!(values(&x), values(&y), "window {w}");
    }
    // Three batches of at most 3 devices: three commits to each history table.
    let commits = std::fs::read_dir(batched.path().join("usage_history_15m/_delta_log"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".json"))
        })
        .count();
    assert!(commits >= 3, "{commits} log entries");
    let again = gridmeter_aggregator::run_once(&batched_cfg, &metrics)
        .await
        .unwrap();
    assert!(again.rows_written.is_empty(), "{again:?}");
}
