//! The demo path: no broker configured, so the collector starts the embedded rumqttd with
//! client-certificate verification; a device publishes through it into the raw landing.

mod common;

use std::time::{Duration, Instant};

use common::*;
use gridmeter_collector::CollectorConfig;
use gridmeter_core::testkit::{free_port, Pki};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_with_client_certificates_lands_readings() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), &["emb-1"]).unwrap();
    let data = dir.path().join("data");
    let mut cfg = CollectorConfig::new("e1", data.clone(), dir.path().join("wal"));
    cfg.embedded.pki_dir = pki.dir().to_path_buf();
    cfg.embedded.port = free_port();
    cfg.flush_interval_ms = 200;
    let port = cfg.embedded.port;
    let registry = prometheus::Registry::new();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(gridmeter_collector::run(cfg, registry.clone(), async {
        let _ = rx.await;
    }));
    wait_gauge(&registry, "gridmeter_collector_connected", 1.0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut p = Publisher::connect(port, "emb-1", &pki.device("emb-1"));
    for b in 0..5u64 {
        p.publish_batch(&batch("emb-1", b * 10 + 1..=(b + 1) * 10))
            .await;
    }
    p.wait_acked(Duration::from_secs(30)).await;
    p.close().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while raw_counts(&data).1 < 50 {
        assert!(
            Instant::now() < deadline,
            "readings did not land through the embedded broker"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // A client without a certificate cannot connect to the embedded broker either.
    let no_cert = std::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            "gridmeter/v1/emb-1/readings",
            "-m",
            "x",
        ])
        .arg("--cafile")
        .arg(pki.ca_cert())
        .output()
        .unwrap();
    assert!(
        !no_cert.status.success(),
        "embedded broker accepted a client without certificate"
    );
    tx.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert_exactly_once(&data, &[("emb-1".into(), 50)]);
}
