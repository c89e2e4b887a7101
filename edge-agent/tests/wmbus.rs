//! Wireless M-Bus from a receiver stick: a Python stick on one end of a socat pty pair
//! prints telegrams as culfw does; the agent's source listens on the other end. One meter
//! in clear text, one encrypted with AES-128 mode 5 (by pycryptodome) with its key in the
//! config, one whose configured key is wrong, one the agent is not configured for, and a
//! telegram whose status byte reports an error.

mod peer;

use std::sync::Arc;

use gridmeter_agent::metrics::AgentMetrics;
use gridmeter_agent::sources::bus::Parity;
use gridmeter_agent::sources::meta::MetaBoard;
use gridmeter_agent::sources::wmbus::{Mode, WmbusMeter, WmbusSource};
use gridmeter_agent::sources::{BuildEnv, Sample, SourceCtx, SourceSpec, WallClock};
use gridmeter_core::{DeviceId, Kind, Quality};
use peer::{Peer, PtyPair};

/// A Kamstrup-style (manufacturer KAM) cold water meter's SND_NR with a short transport
/// header (CI 0x7A): volume 123.456 m3 (DIF 04, VIF 13).
fn water(id_le: &str, acc: &str, status: &str) -> String {
    format!("16442D2C{id_le}1B167A{acc}{status}00002F2F041340E20100")
}

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
    let telegrams = serde_json::json!({"telegrams": [
        {"hex": water("78563412", "20", "00")},
        {"hex": water("21436587", "31", "00"), "key": KEY},
        {"hex": water("11111111", "40", "00"), "key": KEY},
        {"hex": water("99999999", "50", "00")},
        {"hex": water("78563412", "21", "10")},
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
            meter("12345678", None, "cold"),
            meter("87654321", Some(KEY), "secret"),
            meter(
                "11111111",
                Some("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF"),
                "wrongkey",
            ),
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
    let mut got: Vec<Sample> = Vec::new();
    while got.len() < 3 {
        got.extend(rx.recv().await.expect("samples"));
    }
    let v: Vec<(String, String, String, Kind, Quality)> = got
        .iter()
        .map(|s| {
            (
                s.channel.to_string(),
                s.value.to_string(),
                s.unit.clone(),
                s.kind,
                s.quality,
            )
        })
        .collect();
    assert_eq!(
        v,
        vec![
            (
                "cold.volume".into(),
                "123.456".into(),
                "m3".into(),
                Kind::Counter,
                Quality::GOOD
            ),
            (
                "secret.volume".into(),
                "123.456".into(),
                "m3".into(),
                Kind::Counter,
                Quality::GOOD
            ),
            (
                "cold.volume".into(),
                "123.456".into(),
                "m3".into(),
                Kind::Counter,
                Quality::DEVICE_ERROR
            ),
        ]
    );
    let errors = |reason: &str| {
        metrics
            .source_errors
            .with_label_values(&["stick", reason])
            .get()
    };
    assert_eq!(errors("decode"), 1, "the wrong key");
    assert_eq!(errors("device_status"), 1);
    let doc = meta.document(&DeviceId::new("site-1").unwrap()).unwrap();
    let ids: Vec<Option<String>> = doc.meters.iter().map(|m| m.serial.clone()).collect();
    assert_eq!(ids, vec![Some("12345678".into()), Some("87654321".into())]);
    stop_tx.send(true).unwrap();
    task.await.unwrap();
}
