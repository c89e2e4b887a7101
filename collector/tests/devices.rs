//! Device metadata, end to end with the shipped Mosquitto: devices publish their nameplate
//! document retained (here with `mosquitto_pub -r`, as any device could), the collector lands
//! it in the `devices` table (read back by the `deltalake` Python package), a newer document
//! replaces the device's rows, a restart (the broker sends the retained documents again)
//! changes nothing, and a hostile document goes to the dead letters with its reason.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use gridmeter_collector::CollectorConfig;
use gridmeter_core::testkit::Pki;

fn meta_doc(device: &str, ts: &str, serial: &str) -> String {
    format!(
        r#"{{"v":1,"device_id":"{device}","ts":"{ts}","agent_version":"0.1.0","meters":[
  {{"source":"bus1","protocol":"modbus_rtu","address":"unit 3","manufacturer":"Eastron",
    "model":"SDM630","serial":"{serial}","firmware":null,
    "channels":["flat3.energy_import_wh","flat3.power_w"]}},
  {{"source":"pv","protocol":"sunspec","manufacturer":"Fronius","model":"Symo 10.0-3-M",
    "serial":"PV-9","channels":["pv.energy_export_wh"]}}]}}"#
    )
}

/// `mosquitto_pub -r -q 1` of `payload` to `device`'s metadata topic, as the device.
fn publish_retained(pki: &Pki, port: u16, device: &str, payload: &str, dir: &Path) {
    let f = pki.device(device);
    let file = dir.join(format!("{device}-meta.json"));
    std::fs::write(&file, payload).unwrap();
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-r"])
        .args(["-i", device, "-t", &format!("gridmeter/v1/{device}/meta")])
        .arg("--cafile")
        .arg(&f.ca)
        .arg("--cert")
        .arg(&f.cert)
        .arg("--key")
        .arg(&f.key)
        .arg("-f")
        .arg(&file)
        .status()
        .expect("mosquitto_pub (apt-get install mosquitto-clients)");
    assert!(status.success());
}

/// The `devices` table as `device meter serial channels` lines, sorted, and its number of
/// data files, read by the deltalake package.
fn devices_table(root: &Path) -> (Vec<String>, u64) {
    let script = format!(
        "{READ_TABLE}
from deltalake import DeltaTable
t = table({root:?}, 'devices')
rows = sorted(f'{{d}} {{m}} {{s}} {{c}}' for d, m, s, c in zip(
    t.column('device_id').to_pylist(), t.column('meter').to_pylist(),
    t.column('serial').to_pylist(), t.column('channels').to_pylist()))
for r in rows:
    print(r)
print('files', len(DeltaTable({root:?} + '/devices').file_uris()))
",
        root = root.display().to_string()
    );
    let out = python(&script);
    let mut lines: Vec<String> = out.lines().map(str::to_string).collect();
    let files = lines
        .pop()
        .and_then(|l| l.strip_prefix("files ").and_then(|n| n.parse().ok()))
        .expect("file count");
    (lines, files)
}

struct Running {
    registry: prometheus::Registry,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), gridmeter_collector::CollectorError>>,
}

async fn start(pki: &Pki, port: u16, dir: &Path) -> Running {
    let mut cfg = CollectorConfig::new("d1", dir.join("data"), dir.join("wal"));
    cfg.mqtt.host = Some("127.0.0.1".into());
    cfg.mqtt.port = port;
    cfg.mqtt.tls = Some(pki.collector());
    cfg.flush_interval_ms = 200;
    let registry = prometheus::Registry::new();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(gridmeter_collector::run(cfg, registry.clone(), async {
        let _ = rx.await;
    }));
    wait_gauge(&registry, "gridmeter_collector_connected", 1.0).await;
    Running {
        registry,
        stop,
        task,
    }
}

impl Running {
    async fn stop(self) {
        self.stop.send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_metadata_lands_in_the_devices_table() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), &["site-1", "site-2", "site-3"]).unwrap();
    let broker = Broker::start(&pki);
    let data = dir.path().join("data");

    // Published before any collector runs: the broker keeps the last document per device.
    publish_retained(
        &pki,
        broker.port,
        "site-1",
        &meta_doc("site-1", "2026-11-30T12:00:00Z", "OLD-1"),
        dir.path(),
    );
    publish_retained(
        &pki,
        broker.port,
        "site-2",
        &meta_doc("site-2", "2026-11-30T12:00:00Z", "S2"),
        dir.path(),
    );
    // Hostile: a channel name no reading could carry, and a 10 kB serial number.
    let hostile = meta_doc("site-3", "2026-11-30T12:00:00Z", &"9".repeat(10_000));
    publish_retained(&pki, broker.port, "site-3", &hostile, dir.path());

    let c = start(&pki, broker.port, dir.path()).await;
    wait_for(Duration::from_secs(30), "two devices landed", || {
        counter(&c.registry, "gridmeter_collector_devices_updated_total") == 2.0
    });
    wait_for(
        Duration::from_secs(30),
        "hostile document dead-lettered",
        || counter(&c.registry, "gridmeter_collector_deadletter_total") == 1.0,
    );
    // A newer document while running replaces site-1's rows.
    publish_retained(
        &pki,
        broker.port,
        "site-1",
        &meta_doc("site-1", "2026-12-01T08:00:00Z", "NEW-1"),
        dir.path(),
    );
    wait_for(Duration::from_secs(30), "site-1 updated", || {
        counter(&c.registry, "gridmeter_collector_devices_updated_total") == 3.0
    });
    c.stop().await;

    let expect = vec![
        "site-1 0 NEW-1 flat3.energy_import_wh,flat3.power_w".to_string(),
        "site-1 1 PV-9 pv.energy_export_wh".to_string(),
        "site-2 0 S2 flat3.energy_import_wh,flat3.power_w".to_string(),
        "site-2 1 PV-9 pv.energy_export_wh".to_string(),
    ];
    let (rows, files) = devices_table(&data);
    assert_eq!(rows, expect);
    assert_eq!(files, 1, "the table is kept as one current file");

    // A restart: the broker sends every retained document again; none is newer.
    let c = start(&pki, broker.port, dir.path()).await;
    wait_for(
        Duration::from_secs(30),
        "retained documents received again",
        || counter(&c.registry, "gridmeter_collector_messages_received_total") >= 3.0,
    );
    tokio::time::sleep(Duration::from_millis(800)).await; // a flush interval and more
    assert_eq!(
        counter(&c.registry, "gridmeter_collector_devices_updated_total"),
        0.0
    );
    c.stop().await;
    assert_eq!(devices_table(&data), (expect, 1));

    // The hostile document is in the dead letters, with a short reason naming the limit.
    let script = format!(
        "{READ_TABLE}
t = table({root:?}, 'deadletter')
for topic, reason, detail in zip(t.column('topic').to_pylist(), t.column('reason').to_pylist(), t.column('detail').to_pylist()):
    print(topic, reason, len(detail), detail)
",
        root = data.display().to_string()
    );
    let out = python(&script);
    let lines: Vec<&str> = out.lines().collect();
    assert!(!lines.is_empty(), "{out}");
    for l in &lines {
        assert!(
            l.starts_with("gridmeter/v1/site-3/meta bad_metadata "),
            "{l}"
        );
        assert!(l.contains("longer than 64 characters"), "{l}");
        assert!(l.len() < 300, "{l}");
    }
}
