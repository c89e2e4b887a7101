//! kill -9 the collector 10 times during a steady stream from several publishers; afterwards
//! the raw table holds every (device_id, seq) exactly once (checked with the Python deltalake
//! package). And kill -9 exactly between writing a segment's data files and committing them.

mod common;

use std::time::{Duration, Instant};

use common::*;
use gridmeter_core::testkit::Pki;

const DEVICES: usize = 4;
const BATCH: u64 = 20;
const BATCHES: u64 = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_ten_times_loses_nothing_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..DEVICES).map(|i| format!("meter-{i}")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let pki = Pki::new(&dir.path().join("pki"), &name_refs).unwrap();
    let broker = Broker::start(&pki);
    let data = dir.path().join("data");
    let wal = dir.path().join("wal");
    let conf = dir.path().join("collector.toml");
    std::fs::write(
        &conf,
        collector_toml("c1", &data, &wal, broker.port, &pki.collector(), None),
    )
    .unwrap();
    let log = dir.path().join("collector.log");
    let mut collector = CollectorProcess::spawn(&conf, &log);
    // The persistent session (and with it the queue for the collector) exists from the
    // first SUBACK on; messages published before that would have no subscriber.
    CollectorProcess::wait_subscribed(&log, 1);

    // Publishers: each device publishes seqs 1..=BATCH*BATCHES in batches, steadily.
    let mut tasks = Vec::new();
    for name in names.clone() {
        let tls = pki.device(&name);
        let port = broker.port;
        tasks.push(tokio::spawn(async move {
            let mut p = Publisher::connect(port, &name, &tls);
            for b in 0..BATCHES {
                let seqs = b * BATCH + 1..=(b + 1) * BATCH;
                p.publish_batch(&batch(&name, seqs)).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            p.wait_acked(Duration::from_secs(120)).await;
            p.close().await;
        }));
    }

    // Ten kill -9 during the stream, at varying points of the cycle.
    for i in 0..10u64 {
        tokio::time::sleep(Duration::from_millis(350 + (i * 137) % 400)).await;
        collector.kill9();
        collector = CollectorProcess::spawn(&conf, &log);
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = BATCH * BATCHES;
    let expect: Vec<(String, u64)> = names.iter().map(|n| (n.clone(), total)).collect();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        collector.assert_running(&log);
        let (rows, distinct) = raw_counts(&data);
        assert_eq!(rows, distinct, "duplicates in the raw landing");
        if distinct == total * DEVICES as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {distinct} of {} readings landed; log:\n{}\nbroker:\n{}",
            total * DEVICES as u64,
            std::fs::read_to_string(&log).unwrap_or_default(),
            broker.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    collector.terminate();
    assert_exactly_once(&data, &expect);
    // The WAL is empty after a clean stop.
    let left: Vec<_> = std::fs::read_dir(&wal)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".wal"))
        .collect();
    assert!(
        left.is_empty(),
        "WAL segments left after a clean stop: {left:?}"
    );
}

/// The collector killed (SIGKILL) after writing a segment's data files and before its Delta
/// commit: no reader sees any of those rows; the restarted collector replays the segment,
/// rewrites the same files and commits them once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_data_files_and_commit_shows_nothing_then_commits_once() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), &["meter-0"]).unwrap();
    let broker = Broker::start(&pki);
    let (data, wal) = (dir.path().join("data"), dir.path().join("wal"));
    let conf = dir.path().join("collector.toml");
    std::fs::write(
        &conf,
        collector_toml("c1", &data, &wal, broker.port, &pki.collector(), None),
    )
    .unwrap();
    let log = dir.path().join("collector.log");
    let mut collector = CollectorProcess::spawn_with(
        &conf,
        &log,
        &[("GRIDMETER_CRASH_AT", "collector_after_data_files")],
    );
    CollectorProcess::wait_subscribed(&log, 1);
    let mut p = Publisher::connect(broker.port, "meter-0", &pki.device("meter-0"));
    p.publish_batch(&batch("meter-0", 1..=20)).await;
    p.wait_acked(Duration::from_secs(60)).await;
    p.close().await;
    // It lands the segment after flush_interval_ms and dies at the crash point.
    let status = {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = collector.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "the collector did not reach the crash point"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(9),
        "killed by SIGKILL at the crash point"
    );
    let on_disk = |dir: &std::path::Path| -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() && !p.ends_with("_delta_log") {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "parquet") {
                    out.push(p);
                }
            }
        }
        out.sort();
        out
    };
    let written = on_disk(&data.join("raw"));
    assert_eq!(
        written.len(),
        1,
        "the segment's data file was written: {written:?}"
    );
    assert_eq!(
        raw_counts(&data),
        (0, 0),
        "uncommitted rows are invisible to readers"
    );
    // Restart: the segment is replayed, its file rewritten under the same name, committed.
    let mut collector = CollectorProcess::spawn(&conf, &log);
    let deadline = Instant::now() + Duration::from_secs(60);
    while raw_counts(&data) != (20, 20) {
        collector.assert_running(&log);
        assert!(
            Instant::now() < deadline,
            "the replayed segment was not committed"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    collector.terminate();
    assert_exactly_once(&data, &[("meter-0".to_string(), 20)]);
    assert_eq!(
        on_disk(&data.join("raw")),
        written,
        "no second copy of the data file"
    );
}
