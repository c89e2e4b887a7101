//! One device's bad series never aborts the aggregation of the others: it is held back with
//! a reason (in the run summary and the state file) and retried; a series that would create
//! millions of windows is refused before it computes one; a reading flagged clock_suspect
//! never advances a watermark.

mod common;

use common::{write_raw, Raw, DAY};
use gridmeter_aggregator::{AggregatorConfig, Metrics};

const T0: i64 = 1_795_046_400_000_000; // 2026-11-19T00:00:00Z
const MIN15: i64 = 900_000_000;
const ONE: i128 = 1_000_000_000;

fn counter(device: &str, seq: u64, ts: i64, value: i128, quality: &'static str) -> Raw {
    Raw {
        device: device.into(),
        channel: "energy_import".into(),
        kind: "counter",
        seq,
        ts,
        value: value * ONE,
        quality,
        received_at: ts + 5_000_000,
    }
}

/// A good counter: one reading every 15 minutes for a day and a half.
fn good(device: &str) -> Vec<Raw> {
    (0..=144u64)
        .map(|i| counter(device, i + 1, T0 + i as i64 * MIN15, 1000 + i as i128, ""))
        .collect()
}

fn config(dir: &std::path::Path) -> AggregatorConfig {
    AggregatorConfig::new(dir)
}

fn rows_of(rows: &[gridmeter_aggregator::UsageRow], device: &str) -> usize {
    rows.iter().filter(|r| r.device_id == device).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_series_hold_their_device_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut raw = good("good");
    // A gauge with values near the top of Decimal128(38, 9): its time-weighted average
    // overflows i128 (a panic with overflow checks).
    let huge = 79_228_162_514_264_337_593_543_950_335i128;
    raw.extend((0..10u64).map(|i| Raw {
        device: "huge".into(),
        channel: "power".into(),
        kind: "gauge",
        seq: i + 1,
        ts: T0 + i as i64 * MIN15,
        value: huge * ONE / 10,
        quality: "",
        received_at: T0,
    }));
    raw.extend(good("huge").into_iter().map(|mut r| {
        r.seq += 100;
        r
    }));
    // A counter with one reading dated 1970: 2 million 15-minute windows.
    raw.push(counter("ancient", 1, 0, 1, ""));
    raw.extend(good("ancient").into_iter().map(|mut r| {
        r.seq += 1;
        r
    }));
    // One dated three years before the others: 105,000 windows, over the default cap too.
    raw.push(counter("old", 1, T0 - 3 * 365 * 24 * 4 * MIN15, 1, ""));
    raw.extend(good("old").into_iter().map(|mut r| {
        r.seq += 1;
        r
    }));
    // A series whose raw rows name a kind the model does not know (written by another tool).
    raw.extend(good("oddkind").into_iter().map(|mut r| {
        r.kind = "cumulative";
        r
    }));
    write_raw(dir.path(), "c1-0", &raw);
    let cfg = config(dir.path());
    let metrics = Metrics::unregistered();
    let s = gridmeter_aggregator::run_once(&cfg, &metrics)
        .await
        .unwrap();
    assert_eq!(
        s.held.keys().collect::<Vec<_>>(),
        vec!["ancient", "huge", "oddkind", "old"],
        "{:?}",
        s.held
    );
    assert!(
        s.held["oddkind"].contains("unknown kind \"cumulative\""),
        "{}",
        s.held["oddkind"]
    );
    assert!(
        s.held["ancient"].starts_with("series \"energy_import\": would create "),
        "{}",
        s.held["ancient"]
    );
    assert!(s.held["ancient"].contains("max_windows_per_series = 100000"));
    assert!(
        s.held["huge"].starts_with("series \"power\": computing its windows failed"),
        "{}",
        s.held["huge"]
    );
    assert_eq!(metrics.devices_held.get(), 4);
    // The good device is aggregated; nothing of the held ones is written.
    let rows = gridmeter_aggregator::current(&cfg, "15m").await.unwrap();
    assert!(rows_of(&rows, "good") > 100);
    assert_eq!(rows_of(&rows, "huge") + rows_of(&rows, "ancient"), 0);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("_state/aggregator.json")).unwrap())
            .unwrap();
    assert!(state["held"]["huge"]["reason"].is_string(), "{state}");
    assert!(
        state["watermarks"].get("huge").is_none(),
        "no watermark advance"
    );
    assert!(state["watermarks"].get("good").is_some());

    // Nothing changed: the next run retries both (without new files) and holds them again.
    let again = gridmeter_aggregator::run_once(&cfg, &metrics)
        .await
        .unwrap();
    assert_eq!(again.held.len(), 4);
    // With a larger cap (daily windows only) the three-year series is aggregated on the
    // retry; the 1970 one (20,000 days) is still held.
    let wide = AggregatorConfig {
        max_windows_per_series: 5_000,
        windows: vec!["1d".into()],
        ..config(dir.path())
    };
    let third = gridmeter_aggregator::run_once(&wide, &metrics)
        .await
        .unwrap();
    assert_eq!(
        third.held.keys().collect::<Vec<_>>(),
        vec!["ancient", "huge", "oddkind"]
    );
    let daily = gridmeter_aggregator::current(&wide, "1d").await.unwrap();
    assert!(rows_of(&daily, "old") > 3 * 365, "three years in days");
    assert_eq!(rows_of(&daily, "ancient"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clock_suspect_reading_never_advances_the_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let mut raw = good("d");
    // Thirty days ahead, flagged by the agent: without the rule it would finalise every
    // window up to then, including ones still waiting for readings.
    raw.push(counter("d", 1000, T0 + 30 * DAY, 5000, "clock_suspect"));
    write_raw(dir.path(), "c1-0", &raw);
    let cfg = config(dir.path());
    gridmeter_aggregator::run_once(&cfg, &Metrics::unregistered())
        .await
        .unwrap();
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("_state/aggregator.json")).unwrap())
            .unwrap();
    let last_good = T0 + 144 * MIN15;
    assert_eq!(state["watermarks"]["d"], last_good, "{state}");
    let rows = gridmeter_aggregator::current(&cfg, "15m").await.unwrap();
    let lateness = 2 * 3_600_000_000;
    assert!(rows.iter().all(|r| r.window_end <= last_good - lateness));
}
