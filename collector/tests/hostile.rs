//! The payload that took the collector down, against the real binary and a real Mosquitto:
//! a compact batch whose series table holds one invalid 1 MB channel name, referenced by
//! 10 000 readings (~25 KB on the wire, ~1 MB decompressed). The collector stays up with a
//! peak RSS under 512 MB, the pill is in the dead letters, another device's readings land,
//! and the same holds after a restart that replays the pill from the WAL.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use gridmeter_collector::{checkpoint, wal};
use gridmeter_core::testkit::Pki;
use gridmeter_core::wire::compact::{self, CompactBatch, CompactReading};

/// The pill: `n` readings referring to a series whose channel name is 1 MiB of `X`.
fn pill(n: u64) -> Vec<u8> {
    let body = CompactBatch {
        device_id: "pill".into(),
        series: vec![("X".repeat(1 << 20), 0, "Wh".into())],
        readings: (1..=n)
            .map(|seq| CompactReading {
                seq,
                ts_us: ts_for(1).timestamp_micros() + seq as i64,
                series: 0,
                mantissa: seq as i128,
                scale: 0,
                quality: 0,
            })
            .collect(),
        gaps: vec![],
    };
    compact::encode_body(&body).unwrap()
}

/// Peak resident set size of a process, from `/proc/<pid>/status` (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .map(|v| v.trim().parse().unwrap())
        .expect("VmHWM in /proc/<pid>/status");
    kb * 1024
}

/// `(reason, topic, payload bytes, detail)` per dead letter, read by the Python deltalake package.
fn dead_letters(root: &Path) -> Vec<(String, String, usize, String)> {
    let out = python(&format!(
        r#"
import os
from deltalake import DeltaTable
p = "{}/deadletter"
rows = DeltaTable(p).to_pyarrow_table().sort_by("received_at").to_pylist() if os.path.isdir(p + "/_delta_log") else []
if True:
    for r in rows:
        print(r["reason"], r["topic"], len(r["payload"]), r["detail"].replace("\t", " ").replace("\n", " "), sep="\t")
"#,
        root.display()
    ));
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let c: Vec<&str> = l.splitn(4, '\t').collect();
            (
                c[0].to_string(),
                c[1].to_string(),
                c[2].parse().unwrap(),
                c[3].to_string(),
            )
        })
        .collect()
}

const MB: u64 = 1024 * 1024;

fn check_pills(dead: &[(String, String, usize, String)]) {
    let pill_topic = "gridmeter/v1/pill/readings";
    // As described (10 000 readings + 1 series entry > max_readings): the message, whole.
    let whole: Vec<_> = dead
        .iter()
        .filter(|d| d.0 == "too_many_readings" && d.1 == pill_topic)
        .collect();
    assert!(!whole.is_empty(), "{dead:?}");
    assert!(
        whole[0].3.starts_with("batch holds 10001 entries"),
        "{:?}",
        whole[0]
    );
    // One reading fewer: each reading alone, with a short detail.
    let per_reading: Vec<_> = dead
        .iter()
        .filter(|d| d.0 == "bad_channel" && d.1 == pill_topic)
        .collect();
    assert_eq!(per_reading.len() % 9_999, 0);
    assert!(!per_reading.is_empty());
    for d in &per_reading {
        assert!(d.3.len() < 400, "detail of {} bytes", d.3.len());
        assert!(d.3.contains("(1048576 bytes)"), "{}", d.3);
        assert!(d.2 <= 1024);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_pill_neither_crashes_nor_blocks_the_collector() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), &["pill", "good"]).unwrap();
    let broker = Broker::start(&pki);
    let (data, wal_dir) = (dir.path().join("data"), dir.path().join("wal"));
    let conf = dir.path().join("collector.toml");
    std::fs::write(
        &conf,
        collector_toml("h1", &data, &wal_dir, broker.port, &pki.collector(), None),
    )
    .unwrap();
    let log = dir.path().join("collector.log");
    let mut c = CollectorProcess::spawn(&conf, &log);
    CollectorProcess::wait_subscribed(&log, 1);

    let pills = [pill(10_000), pill(9_999)];
    assert!(
        pills[0].len() < 64 * 1024,
        "{} bytes on the wire",
        pills[0].len()
    );
    eprintln!("pill: {} bytes on the wire", pills[0].len());
    let mut p = Publisher::connect(broker.port, "pill", &pki.device("pill"));
    for pl in &pills {
        p.publish("gridmeter/v1/pill/readings".into(), pl.clone())
            .await;
    }
    p.wait_acked(Duration::from_secs(60)).await;
    p.close().await;
    let mut g = Publisher::connect(broker.port, "good", &pki.device("good"));
    g.publish_batch(&batch("good", 1..=20)).await;
    g.wait_acked(Duration::from_secs(60)).await;
    g.close().await;

    wait_for(
        Duration::from_secs(120),
        "the good readings to land",
        || {
            c.assert_running(&log);
            raw_counts(&data).0 >= 20
        },
    );
    wait_for(
        Duration::from_secs(60),
        "the pills in the dead letters",
        || {
            let d = dead_letters(&data);
            d.iter().any(|d| d.0 == "too_many_readings") && d.iter().any(|d| d.0 == "bad_channel")
        },
    );
    c.assert_running(&log);
    let rss = peak_rss(c.child.id());
    eprintln!("collector peak RSS with the pill: {} MB", rss / MB);
    assert!(rss < 512 * MB, "peak RSS {} MB", rss / MB);
    assert_exactly_once(&data, &[("good".into(), 20)]);
    check_pills(&dead_letters(&data));
    c.terminate();

    // The pill again, this time already in the WAL (fsync'd and acked before a crash):
    // start-up replays it, and must neither abort nor loop.
    let last = checkpoint::load(&wal_dir).unwrap().last_segment.unwrap();
    let mut w = wal::WalWriter::open(&wal_dir, last + 1).unwrap();
    let at = chrono::Utc::now().timestamp_micros();
    let good = encode(&batch("good", 21..=40));
    let rec = |topic: &str, payload: &[u8], i: i64| wal::WalRecord {
        received_at_us: at + i,
        topic: topic.into(),
        payload: bytes::Bytes::copy_from_slice(payload),
    };
    w.append_group(&[
        rec("gridmeter/v1/pill/readings", &pills[0], 0),
        rec("gridmeter/v1/pill/readings", &pills[1], 1),
        rec("gridmeter/v1/good/readings", &good, 2),
    ])
    .unwrap();
    drop(w);
    let mut c = CollectorProcess::spawn(&conf, &log);
    CollectorProcess::wait_subscribed(&log, 2);
    wait_for(
        Duration::from_secs(60),
        "the replayed good readings",
        || {
            c.assert_running(&log);
            raw_counts(&data).0 >= 40
        },
    );
    c.assert_running(&log);
    let rss = peak_rss(c.child.id());
    eprintln!("collector peak RSS replaying the pill: {} MB", rss / MB);
    assert!(rss < 512 * MB, "peak RSS {} MB", rss / MB);
    assert_exactly_once(&data, &[("good".into(), 40)]);
    let dead = dead_letters(&data);
    check_pills(&dead);
    assert_eq!(
        dead.iter().filter(|d| d.0 == "too_many_readings").count(),
        2,
        "once live, once replayed"
    );
    c.terminate();
}
