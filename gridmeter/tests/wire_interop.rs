//! Wire format v1 through a real broker: a JSON batch published with `mosquitto_pub` and the
//! compact encoding of the same batch, both received with `mosquitto_sub` over mTLS, decode
//! to the same readings.

use std::process::Command;

use gridmeter_core::testkit::{Mosquitto, MosquittoOptions, Pki};
use gridmeter_core::tls::TlsFiles;
use gridmeter_core::wire::{self, compact, Encoding, Limits};

fn tls_args(f: &TlsFiles) -> Vec<String> {
    vec![
        "--cafile".into(),
        f.ca.display().to_string(),
        "--cert".into(),
        f.cert.display().to_string(),
        "--key".into(),
        f.key.display().to_string(),
    ]
}

/// Publishes `payload` as `device` and returns what a persistent collector session receives.
fn round_trip(
    broker: &Mosquitto,
    pki: &Pki,
    device: &str,
    payload: &[u8],
    dir: &std::path::Path,
) -> Vec<u8> {
    let port = broker.port().to_string();
    let topic = format!("gridmeter/v1/{device}/readings");
    let sub = |extra: &[&str]| {
        Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-q",
                "1",
                "-c",
                "-i",
                "interop-sub",
                "-t",
                &topic,
            ])
            .args(tls_args(&pki.collector()))
            .args(extra)
            .output()
            .expect("run mosquitto_sub")
    };
    // Register the persistent session, so the message is queued for it.
    let reg = sub(&["-E"]);
    assert!(reg.status.success(), "subscribe: {reg:?}\n{}", broker.log());
    let file = dir.join("payload.bin");
    std::fs::write(&file, payload).unwrap();
    let publ = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-q",
            "1",
            "-t",
            &topic,
            "-f",
        ])
        .arg(&file)
        .args(tls_args(&pki.device(device)))
        .output()
        .expect("run mosquitto_pub");
    assert!(publ.status.success(), "publish: {publ:?}\n{}", broker.log());
    let got = sub(&["-C", "1", "-N", "-W", "20"]);
    assert!(got.status.success(), "receive: {got:?}\n{}", broker.log());
    got.stdout
}

#[test]
fn json_and_compact_agree_through_mosquitto() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), &["inv-042"]).unwrap();
    let broker = Mosquitto::start(&pki, MosquittoOptions::default()).unwrap();
    let json = br#"{"device_id":"inv-042","readings":[
        {"seq":1,"ts":"2026-11-22T10:15:00Z","channel":"energy_import","kind":"counter","unit":"Wh","value":"1234.5"},
        {"seq":2,"ts":"2026-11-22T11:15:00.25+01:00","channel":"power","kind":"gauge","unit":"W","value":-0.125,"quality":["estimated"]},
        {"seq":3,"ts":"2026-11-22T10:30:00Z","channel":"energy_import","kind":"counter","unit":"Wh","value":1.2e3,"vendor":"x"}],
        "gaps":[{"from_seq":10,"to_seq":12,"reason":"buffer_full"}]}"#;
    let lim = Limits::default();
    let received_json = round_trip(&broker, &pki, "inv-042", json, dir.path());
    assert_eq!(
        received_json,
        json.to_vec(),
        "the broker delivers the payload unchanged"
    );
    let from_json =
        wire::decode_for_topic("gridmeter/v1/inv-042/readings", &received_json, &lim).unwrap();
    assert_eq!(from_json.encoding, Encoding::Json);
    assert!(from_json.rejects.is_empty(), "{:?}", from_json.rejects);
    assert_eq!(from_json.readings.len(), 3);

    let compact_payload = compact::encode(&from_json.clone().into_batch()).unwrap();
    let received_compact = round_trip(&broker, &pki, "inv-042", &compact_payload, dir.path());
    let from_compact =
        wire::decode_for_topic("gridmeter/v1/inv-042/readings", &received_compact, &lim).unwrap();
    assert_eq!(from_compact.encoding, Encoding::Compact);
    assert_eq!(from_compact.readings, from_json.readings);
    assert_eq!(from_compact.gaps, from_json.gaps);
    assert!(
        received_compact.len() < received_json.len(),
        "compact {} bytes vs JSON {} bytes",
        received_compact.len(),
        received_json.len()
    );
}
