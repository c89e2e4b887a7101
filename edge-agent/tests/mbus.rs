//! Wired M-Bus against a real slave: a pymeterbus-based slave on one end of a socat pty
//! pair, the agent on the other, answering with the M-Bus documentation's RSP_UD example
//! (and, for a multi-telegram answer, that telegram ending in DIF 0x1F followed by a second
//! one with flow and return temperatures): primary and secondary addressing, REQ_UD2, a
//! silent meter, a bad checksum.

mod peer;

use chrono::Utc;
use gridmeter_agent::sources::bus::Parity;
use gridmeter_agent::sources::mbus::{MbusMeter, MbusPoller, MbusSource};
use gridmeter_agent::sources::{Reason, Source};
use gridmeter_core::{Kind, Quality};
use peer::{Peer, PtyPair};

/// The M-Bus documentation's example (water meter 12345678, manufacturer PAD).
const WATER: &str = "72785634122440010755000000031315310 0DA023B13018B6004371802";
/// The same, ending with DIF 0x1F: more records follow...
const MULTI_FIRST: &str = "72785634122440010755000000031315310 0DA023B13018B6004371802 1F";
/// ...in this second telegram: flow temperature 42 °C (VIF 0x5B), return temperature
/// 30 °C (VIF 0x5F).
const MULTI_SECOND: &str = "7278563412244001075600 0000 025B2A00 025F1E00";

fn clean(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

fn source(port: &str, meters: Vec<MbusMeter>) -> MbusSource {
    MbusSource {
        name: None,
        interval_ms: 1000,
        port: port.into(),
        baud_rate: 2400,
        // A pty refuses parity (tcsetattr: EINVAL).
        parity: Parity::None,
        stop_bits: 1,
        timeout_ms: 500,
        max_telegrams: 8,
        meters,
    }
}

fn meter(primary: Option<u8>, secondary: Option<&str>, prefix: &str) -> MbusMeter {
    MbusMeter {
        primary,
        secondary: secondary.map(String::from),
        prefix: prefix.into(),
    }
}

#[tokio::test]
async fn primary_secondary_multi_telegram_silent_and_corrupt_meters() {
    let dir = tempfile::tempdir().unwrap();
    let pty = PtyPair::new(dir.path());
    let cfg = serde_json::json!({"meters": [
        {"primary": 5, "telegrams": [clean(WATER)]},
        {"primary": 6, "telegrams": [clean(MULTI_FIRST), clean(MULTI_SECOND)]},
        {"secondary": "12345678", "telegrams": [clean(WATER)]},
        {"primary": 9, "corrupt": true, "telegrams": [clean(WATER)]},
    ]});
    let path = dir.path().join("meters.json");
    std::fs::write(&path, cfg.to_string()).unwrap();
    let _slave = Peer::python("mbus_slave.py", &[&pty.a(), &path.display().to_string()]);
    let mut p = MbusPoller::new(source(
        &pty.b(),
        vec![
            meter(Some(5), None, "flat5"),
            meter(Some(6), None, "room6"),
            meter(None, Some("12345678"), "sec"),
            meter(Some(7), None, "absent"),
            meter(Some(9), None, "noisy"),
        ],
    ));
    let (samples, problems) = p.poll(Utc::now(), Quality::GOOD).await.unwrap();
    let get = |c: &str| {
        samples
            .iter()
            .find(|s| s.channel.as_str() == c)
            .unwrap_or_else(|| panic!("no {c} in {samples:?}"))
    };
    // Primary address 5: the documented volume, exact, a counter in m3.
    let v = get("flat5.volume");
    assert_eq!(
        (v.value.to_string(), v.unit.as_str(), v.kind),
        ("12.565".into(), "m3", Kind::Counter)
    );
    // Primary 6: both telegrams of a multi-telegram answer.
    assert_eq!(get("room6.volume").value.to_string(), "12.565");
    assert_eq!(get("room6.flow_temperature").value.to_string(), "42");
    assert_eq!(get("room6.flow_temperature").unit, "Cel");
    assert_eq!(get("room6.flow_temperature").kind, Kind::Gauge);
    assert_eq!(get("room6.return_temperature").value.to_string(), "30");
    // Secondary address 12345678.
    assert_eq!(get("sec.volume").value.to_string(), "12.565");
    assert!(samples
        .iter()
        .all(|s| !s.channel.as_str().starts_with("absent")));
    let reasons: Vec<Reason> = problems.iter().map(|p| p.reason).collect();
    assert_eq!(reasons, vec![Reason::Timeout, Reason::Crc], "{problems:?}");
    assert!(problems[0].message.contains("primary 7"), "{problems:?}");
    // The header's identification becomes metadata.
    let meters = Source::meters(&p);
    let sec = meters
        .iter()
        .find(|m| m.address.as_deref() == Some("secondary 12345678"))
        .unwrap();
    assert_eq!(sec.serial.as_deref(), Some("12345678"));
    assert_eq!(sec.manufacturer.as_deref(), Some("PAD"));
    assert!(sec.channels.contains(&"sec.volume".to_string()));
    // The bus goes on after the garbled frame: a second poll reads the same.
    let (again, _) = p.poll(Utc::now(), Quality::GOOD).await.unwrap();
    assert_eq!(again.len(), samples.len());
}
