//! Devices that are not our agent: a paho-mqtt (Python) client and `mosquitto_pub`, both
//! MQTT 3.1.1, publish JSON batches and ignore confirmations. Their readings land exactly
//! once (pyarrow reader) and the collector's confirmations to topics nobody reads are
//! harmless.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use gridmeter_collector::CollectorConfig;
use gridmeter_core::testkit::Pki;

fn json_batch(device: &str, seqs: std::ops::RangeInclusive<u64>) -> String {
    let readings: Vec<String> = seqs
        .map(|seq| {
            format!(
                r#"{{"seq":{seq},"ts":"2026-11-22T10:{:02}:00Z","channel":"energy_import","kind":"counter","unit":"Wh","value":"{seq}.001"}}"#,
                seq % 60
            )
        })
        .collect();
    format!(
        r#"{{"device_id":"{device}","readings":[{}]}}"#,
        readings.join(",")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_and_mosquitto_pub_devices_that_ignore_confirmations_land() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), &["paho-1", "mpub-1"]).unwrap();
    let broker = Broker::start(&pki);
    let data = dir.path().join("data");
    let mut cfg = CollectorConfig::new("t1", data.clone(), dir.path().join("wal"));
    cfg.mqtt.host = Some("127.0.0.1".into());
    cfg.mqtt.port = broker.port;
    cfg.mqtt.tls = Some(pki.collector());
    cfg.flush_interval_ms = 200;
    let registry = prometheus::Registry::new();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let collector = tokio::spawn(gridmeter_collector::run(cfg, registry.clone(), async {
        let _ = stop_rx.await;
    }));
    wait_gauge(&registry, "gridmeter_collector_connected", 1.0).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // SUBACK

    // paho-mqtt, QoS 1, three batches; it waits for every PUBACK and never subscribes.
    let paho = pki.device("paho-1");
    let script = format!(
        r#"
import ssl, sys, paho.mqtt.client as mqtt
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-1", clean_session=False)
c.tls_set(ca_certs={ca:?}, certfile={cert:?}, keyfile={key:?}, tls_version=ssl.PROTOCOL_TLS_CLIENT)
c.connect("127.0.0.1", {port})
c.loop_start()
for p in sys.argv[1:]:
    c.publish("gridmeter/v1/paho-1/readings", open(p).read(), qos=1).wait_for_publish(10)
c.loop_stop()
c.disconnect()
"#,
        ca = paho.ca.display().to_string(),
        cert = paho.cert.display().to_string(),
        key = paho.key.display().to_string(),
        port = broker.port
    );
    let files: Vec<String> = (0..3u64)
        .map(|i| {
            let p = dir.path().join(format!("paho-{i}.json"));
            std::fs::write(&p, json_batch("paho-1", i * 10 + 1..=i * 10 + 10)).unwrap();
            p.display().to_string()
        })
        .collect();
    let out = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .args(&files)
        .output()
        .expect("python3 with paho-mqtt (pip install -r .ci/requirements.txt)");
    assert!(
        out.status.success(),
        "paho client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // mosquitto_pub, QoS 1, one batch.
    let m = pki.device("mpub-1");
    let batch = dir.path().join("mpub.json");
    std::fs::write(&batch, json_batch("mpub-1", 1..=5)).unwrap();
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-q", "1"])
        .args(["-i", "mpub-1", "-t", "gridmeter/v1/mpub-1/readings"])
        .arg("--cafile")
        .arg(&m.ca)
        .arg("--cert")
        .arg(&m.cert)
        .arg("--key")
        .arg(&m.key)
        .arg("-f")
        .arg(&batch)
        .status()
        .expect("mosquitto_pub (apt-get install mosquitto-clients)");
    assert!(status.success());

    wait_gauge(
        &registry,
        "gridmeter_collector_readings_accepted_total",
        35.0,
    )
    .await;
    // One confirmation per device at least, to topics nobody subscribes to.
    wait_for(Duration::from_secs(30), "confirmations published", || {
        metric(&registry, "gridmeter_collector_confirmations_sent_total").unwrap_or(0.0) >= 2.0
    });
    stop_tx.send(()).unwrap();
    collector.await.unwrap().unwrap();
    assert_exactly_once(
        &data,
        &[("paho-1".to_string(), 30), ("mpub-1".to_string(), 5)],
    );
}
