//! Two collectors on one shared subscription, with an agent republishing batches (whose
//! copies can go to different collectors): after compaction, every (device_id, seq) is in
//! the raw landing exactly once.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use gridmeter_collector::CollectorConfig;
use gridmeter_core::testkit::Pki;

const DEVICES: usize = 3;
const BATCH: u64 = 10;
const BATCHES: u64 = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_collectors_on_a_shared_subscription_land_exactly_once_after_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..DEVICES).map(|i| format!("sh-{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let pki = Pki::new(&dir.path().join("pki"), &refs).unwrap();
    let broker = Broker::start(&pki);
    let data = dir.path().join("data");

    let mut collectors = Vec::new();
    // Each collector has its own certificate: the broker makes the CN the client id.
    for (id, cert) in [("s1", "0"), ("s2", "1")] {
        let mut cfg = CollectorConfig::new(id, data.clone(), dir.path().join(format!("wal-{id}")));
        cfg.mqtt.host = Some("127.0.0.1".into());
        cfg.mqtt.port = broker.port;
        cfg.mqtt.tls = Some(pki.collector_named(cert));
        cfg.mqtt.share_group = Some("collectors".into());
        cfg.flush_interval_ms = 200;
        let registry = prometheus::Registry::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(gridmeter_collector::run(cfg, registry.clone(), async {
            let _ = rx.await;
        }));
        wait_gauge(&registry, "gridmeter_collector_connected", 1.0).await;
        collectors.push((registry, tx, task));
    }
    tokio::time::sleep(Duration::from_millis(700)).await; // both SUBACKs

    let mut published = 0u64;
    let mut tasks = Vec::new();
    for (i, name) in names.iter().cloned().enumerate() {
        let tls = pki.device(&name);
        let port = broker.port;
        tasks.push(tokio::spawn(async move {
            let mut p = Publisher::connect(port, &name, &tls);
            for b in 0..BATCHES {
                p.publish_batch(&batch(&name, b * BATCH + 1..=(b + 1) * BATCH))
                    .await;
                // Device 0 behaves like an agent restarted before it saw its PUBACKs: it
                // republishes every batch, and the copy goes to whichever collector is next.
                if i == 0 {
                    p.publish_batch(&batch(&name, b * BATCH + 1..=(b + 1) * BATCH))
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            p.wait_acked(Duration::from_secs(60)).await;
            let sent = p.sent;
            p.close().await;
            sent
        }));
    }
    for t in tasks {
        published += t.await.unwrap();
    }
    // Every message reached one of the collectors...
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let received: f64 = collectors
            .iter()
            .map(|(r, _, _)| counter(r, "gridmeter_collector_messages_received_total"))
            .sum();
        if received >= published as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "received {received} of {published} messages"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // ...and a clean stop lands everything received.
    let mut per_collector = Vec::new();
    for (registry, tx, task) in collectors {
        per_collector.push(counter(
            &registry,
            "gridmeter_collector_readings_accepted_total",
        ));
        tx.send(()).unwrap();
        task.await.unwrap().unwrap();
    }
    let total = BATCH * BATCHES * DEVICES as u64;
    let (rows, distinct) = raw_counts(&data);
    assert_eq!(distinct, total);
    assert!(
        per_collector.iter().all(|n| *n > 0.0),
        "both collectors took a share: {per_collector:?}"
    );
    eprintln!("before compaction: {rows} rows, {distinct} distinct (accepted per collector {per_collector:?})");

    // Compaction through the CLI.
    let conf = dir.path().join("compact.toml");
    std::fs::write(
        &conf,
        format!(
            "collector_id = \"compactor\"\ndata_root = \"{}\"\nwal_dir = \"{}\"\n[mqtt]\nhost = \"127.0.0.1\"\ntls = {{ ca = \"{}\", cert = \"{}\", key = \"{}\" }}\n",
            data.display(),
            dir.path().join("wal-compactor").display(),
            pki.collector().ca.display(),
            pki.collector().cert.display(),
            pki.collector().key.display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gridmeter-collector"))
        .args([
            "--config",
            &conf.display().to_string(),
            "compact",
            "--date",
            "2026-11-22",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "compact failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    let expect: Vec<(String, u64)> = names.iter().map(|n| (n.clone(), BATCH * BATCHES)).collect();
    assert_exactly_once(&data, &expect);
    // Compacting again is a no-op.
    let again = Command::new(env!("CARGO_BIN_EXE_gridmeter-collector"))
        .args([
            "--config",
            &conf.display().to_string(),
            "compact",
            "--date",
            "2026-11-22",
        ])
        .output()
        .unwrap();
    assert!(again.status.success());
    assert_exactly_once(&data, &expect);
}
