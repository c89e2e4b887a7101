//! Wireless M-Bus from a receiver stick: a Python stick on one end of a socat pty pair
//! prints telegrams as culfw does; the agent's source listens on the other end. The
//! telegrams are wmbusmeters' public test vectors (as collected in the m-bus-parser
//! crate's tests): one meter in clear text, one encrypted by the stick with AES-128 mode 5
//! (pycryptodome) with its key in the config, one whose configured key is wrong, one the
//! agent is not configured for, and (a vector with its status byte set) an error status.

mod peer;

use std::collections::BTreeSet;
use std::sync::Arc;

use gridmeter_agent::metrics::AgentMetrics;
use gridmeter_agent::sources::bus::Parity;
use gridmeter_agent::sources::meta::MetaBoard;
use gridmeter_agent::sources::wmbus::{Mode, WmbusMeter, WmbusSource};
use gridmeter_agent::sources::{BuildEnv, Sample, SourceCtx, SourceSpec, WallClock};
use gridmeter_core::{DeviceId, Kind, Quality};
use peer::{Peer, PtyPair};

/// Sensus water meter 12345699: volume 7.704 m3, flow 0 m3/h (wmbusmeters test vector).
const SEN_12345699: &str = "1E44AE4C9956341268077A360010002F2F0413181E0000023B00002F2F2F2F";
/// Sensus water meter 33225544: volume 123.529 m3, flow 0 m3/h.
const SEN_33225544: &str = "1844AE4C4455223368077A55000000041389E20100023B0000";
/// Diehl heat meter 61243590 (a mode 5 meter, given decrypted).
const DME_61243590: &str = "3E44A5119035246141047A1A0030052F2F0C06026301000C13688609040B3B0802000C2B220000F00A5A71020A5E72020AA61800004C0636370100426CBF25";
/// Apator electricity meter 10101010.
const APA_10101010: &str = "4E4401061010101002027A000040052F2F0E035040691500000B2B300300066D00790C7423400C78371204860BABC8FC100000000E833C8074000000000BAB3C0000000AFDC9FC0136022F2F2F2F2F";

const KEY: &str = "0102030405060708090A0B0C0D0E0F10";

fn meter(id: &str, key: Option<&str>, prefix: &str) -> WmbusMeter {
    WmbusMeter {
        id: id.into(),
        key: key.map(String::from),
        prefix: prefix.into(),
    }
}

#[tokio::test]
async fn clear_encrypted_wrong_key_unknown_and_error_status() {
    let dir = tempfile::tempdir().unwrap();
    let pty = PtyPair::new(dir.path());
    // The first vector again, its status byte (after CI 7A and access number 36) set to
    // 0x10: temporary error.
    let with_error = SEN_12345699.replacen("7A3600", "7A3610", 1);
    let telegrams = serde_json::json!({"telegrams": [
        {"hex": SEN_12345699},
        {"hex": SEN_33225544, "key": KEY},
        {"hex": DME_61243590, "key": KEY},
        {"hex": APA_10101010},
        {"hex": with_error},
    ]});
    let path = dir.path().join("telegrams.json");
    std::fs::write(&path, telegrams.to_string()).unwrap();
    let spec = WmbusSource {
        name: Some("stick".into()),
        interval_ms: 60_000,
        port: pty.b(),
        baud_rate: 9600,
        parity: Parity::None,
        stop_bits: 1,
        mode: Mode::T1,
        silent_after_secs: 900,
        meters: vec![
            meter("12345699", None, "cold"),
            meter("33225544", Some(KEY), "secret"),
            meter("61243590", Some("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF"), "heat"),
        ],
    };
    let registry = prometheus::Registry::new();
    let metrics = AgentMetrics::register(&registry).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Sample>>(16);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let meta = MetaBoard::default();
    let ctx = SourceCtx {
        label: "stick".into(),
        device: DeviceId::new("site-1").unwrap(),
        tx,
        metrics: metrics.clone(),
        clock: Arc::new(WallClock::default()),
        shutdown: stop_rx,
        meta: meta.clone(),
    };
    let task = tokio::spawn(spec.run(&BuildEnv::default(), ctx));
    // The source listens before the stick writes.
    let _stick = {
        let pty_a = pty.a();
        let p = path.display().to_string();
        tokio::task::spawn_blocking(move || Peer::python("wmbus_stick.py", &[&pty_a, &p]))
            .await
            .unwrap()
    };
    let good = Quality::GOOD;
    let err = Quality::DEVICE_ERROR;
    let s = |c: &str, v: &str, u: &str, k: Kind, q: Quality| {
        (c.to_string(), v.to_string(), u.to_string(), k, q)
    };
    let expected: BTreeSet<(String, String, String, Kind, Quality)> = [
        s("cold.volume", "7.704", "m3", Kind::Counter, good),
        s("cold.volume_flow", "0", "m3/h", Kind::Gauge, good),
        s("secret.volume", "123.529", "m3", Kind::Counter, good),
        s("secret.volume_flow", "0", "m3/h", Kind::Gauge, good),
        s("cold.volume", "7.704", "m3", Kind::Counter, err),
        s("cold.volume_flow", "0", "m3/h", Kind::Gauge, err),
    ]
    .into();
    // The stick repeats its telegrams (as meters do): read until each was seen.
    let mut got = BTreeSet::new();
    let collect = async {
        while got != expected {
            for x in rx.recv().await.expect("samples") {
                let t = (
                    x.channel.to_string(),
                    x.value.to_string(),
                    x.unit.clone(),
                    x.kind,
                    x.quality,
                );
                assert!(expected.contains(&t), "unexpected reading {t:?}");
                got.insert(t);
            }
        }
    };
    if tokio::time::timeout(std::time::Duration::from_secs(30), collect)
        .await
        .is_err()
    {
        let errs: Vec<(&str, u64)> = gridmeter_agent::sources::Reason::ALL
            .iter()
            .map(|r| {
                (
                    r.as_str(),
                    metrics
                        .source_errors
                        .with_label_values(&["stick", r.as_str()])
                        .get(),
                )
            })
            .collect();
        panic!("not every telegram was read: {got:?}; errors {errs:?}");
    }
    let errors = |reason: &str| {
        metrics
            .source_errors
            .with_label_values(&["stick", reason])
            .get()
    };
    assert!(errors("decode") >= 1, "the wrong key");
    assert!(errors("device_status") >= 1);
    let doc = meta.document(&DeviceId::new("site-1").unwrap()).unwrap();
    let ids: Vec<Option<String>> = doc.meters.iter().map(|m| m.serial.clone()).collect();
    assert_eq!(ids, vec![Some("12345699".into()), Some("33225544".into())]);
    assert_eq!(doc.meters[0].manufacturer.as_deref(), Some("SEN"));
    stop_tx.send(true).unwrap();
    task.await.unwrap();
}
