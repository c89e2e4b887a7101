//! Malformed payloads end in the dead letters with a reason, never crash the collector and
//! never cost their good neighbours (collector in-process, real Mosquitto, pyarrow reader).

mod common;

use std::time::{Duration, Instant};

use common::*;
use gridmeter_collector::CollectorConfig;
use gridmeter_core::testkit::Pki;
use rand::RngCore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_payloads_are_dead_lettered_and_neighbours_survive() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), &["dev-a"]).unwrap();
    let broker = Broker::start(&pki);
    let data = dir.path().join("data");
    let mut cfg = CollectorConfig::new("m1", data.clone(), dir.path().join("wal"));
    cfg.mqtt.host = Some("127.0.0.1".into());
    cfg.mqtt.port = broker.port;
    cfg.mqtt.tls = Some(pki.collector());
    cfg.flush_interval_ms = 200;
    // Below the broker's packet limit (2 MiB, deploy/mosquitto), so an oversized payload
    // reaches the collector and its dead letters.
    cfg.limits.max_payload_bytes = 1024 * 1024;
    let registry = prometheus::Registry::new();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let collector = tokio::spawn(gridmeter_collector::run(cfg, registry.clone(), async {
        let _ = stop_rx.await;
    }));
    wait_gauge(&registry, "gridmeter_collector_connected", 1.0).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // SUBACK

    let topic = "gridmeter/v1/dev-a/readings".to_string();
    let mut p = Publisher::connect(broker.port, "dev-a", &pki.device("dev-a"));
    let good_reading = |seq: u64| {
        format!(
            r#"{{"seq":{seq},"ts":"2026-11-22T10:00:{:02}Z","channel":"energy_import","kind":"counter","unit":"Wh","value":"{seq}.001"}}"#,
            seq % 60
        )
    };
    let mut random = vec![0u8; 1000];
    rand::rng().fill_bytes(&mut random);
    random[0] = 0xFF; // never valid UTF-8 JSON
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("bad_json", br#"{"device_id":"dev-a","readings":[{"seq":1,"#.to_vec()),
        (
            "bad_seq",
            format!(
                r#"{{"device_id":"dev-a","readings":[{{"seq":"x","ts":"2026-11-22T10:00:00Z","channel":"energy_import","kind":"counter","unit":"Wh","value":"1"}},{}]}}"#,
                good_reading(1)
            )
            .into_bytes(),
        ),
        (
            "device_mismatch",
            format!(r#"{{"device_id":"dev-b","readings":[{}]}}"#, good_reading(999)).into_bytes(),
        ),
        ("not_utf8", random),
        ("too_large", vec![b' '; 1536 * 1024]),
    ];
    // Each bad message is followed by a good batch: seqs 2..=11, 12..=21, …
    let mut next = 2u64;
    for (_, payload) in &bad {
        p.publish(topic.clone(), payload.clone()).await;
        p.publish_batch(&batch("dev-a", next..next + 10)).await;
        next += 10;
    }
    // One reading from a device clock a day ahead, with a good neighbour: the first goes to
    // the dead letters as ts_out_of_range, the second lands.
    let mut ahead = batch("dev-a", next..next + 2);
    ahead.readings[1].ts = chrono::Utc::now() + chrono::Duration::days(1);
    p.publish_batch(&ahead).await;
    next += 1;
    p.wait_acked(Duration::from_secs(60)).await;
    p.close().await;
    let expect_raw = next - 1;

    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(!collector.is_finished(), "the collector stopped");
        let (rows, _) = raw_counts(&data);
        let dead = dead_letters(&data);
        if rows >= expect_raw && dead.lines().count() > bad.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "raw {rows}/{expect_raw}, dead letters:\n{dead}\n{}",
            broker.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop_tx.send(()).unwrap();
    collector.await.unwrap().unwrap();

    assert_exactly_once(&data, &[("dev-a".into(), expect_raw)]);
    let dead = dead_letters(&data);
    for (reason, payload) in &bad {
        let expect_len = if *reason == "bad_seq" {
            None
        } else {
            Some(payload.len().min(64 * 1024))
        };
        let line = dead
            .lines()
            .find(|l| l.starts_with(&format!("{reason}\t")))
            .unwrap_or_else(|| panic!("no dead letter with reason {reason}:\n{dead}"));
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols[1], topic, "{line}");
        assert!(!cols[3].is_empty(), "a detail is required: {line}");
        if let Some(n) = expect_len {
            assert_eq!(
                cols[2],
                n.to_string(),
                "the payload is kept, up to deadletter_max_payload_bytes: {line}"
            );
        }
        if payload.len() > 64 * 1024 {
            assert!(cols[3].contains("(payload truncated to 65536 of"), "{line}");
        }
    }
    let ahead_line = dead
        .lines()
        .find(|l| l.starts_with("ts_out_of_range\t"))
        .unwrap_or_else(|| panic!("no ts_out_of_range dead letter:\n{dead}"));
    assert!(
        ahead_line.contains(&format!("seq {}: ts ", next)),
        "{ahead_line}"
    );
    assert_eq!(
        counter(&registry, "gridmeter_collector_readings_accepted_total"),
        expect_raw as f64
    );
    assert_eq!(
        counter(&registry, "gridmeter_collector_readings_rejected_total"),
        2.0,
        "bad_seq and ts_out_of_range"
    );
}

/// `reason\ttopic\tpayload_len\tdetail` per dead letter.
fn dead_letters(root: &std::path::Path) -> String {
    python(&format!(
        r#"
import os
from deltalake import DeltaTable
p = "{}/deadletter"
rows = DeltaTable(p).to_pyarrow_table().sort_by("received_at").to_pylist() if os.path.isdir(p + "/_delta_log") else []
if True:
    for r in rows:
        print(r["reason"], r["topic"], len(r["payload"]), r["detail"].replace("\t", " ").replace("\n", " ")[:200], sep="\t")
"#,
        root.display()
    ))
}
