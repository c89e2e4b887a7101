//! IEC 62056-21 mode C readout against a meter on one end of a socat pty pair: request,
//! identification, acknowledgement with baud switch, readout list with its block check; a
//! wrong block check character and a silent port are counted, not fatal.

mod peer;

use chrono::Utc;
use gridmeter_agent::sources::bus::Parity;
use gridmeter_agent::sources::iec62056::{Iec62056Source, Readout};
use gridmeter_agent::sources::{Reason, Source};
use gridmeter_core::{Kind, Quality};
use peer::{Peer, PtyPair};

fn source(port: &str) -> Iec62056Source {
    Iec62056Source {
        name: None,
        interval_ms: 1000,
        port: port.into(),
        device_address: None,
        baud_rate: 300,
        // A pty refuses 7E1; bytes are masked to 7 bits either way.
        data_bits: 8,
        parity: Parity::None,
        baud_switch: true,
        timeout_ms: 2000,
        channel_prefix: Some("mains".into()),
    }
}

#[tokio::test]
async fn mode_c_readout() {
    let dir = tempfile::tempdir().unwrap();
    let pty = PtyPair::new(dir.path());
    let _meter = Peer::python("iec62056_meter.py", &[&pty.a()]);
    let mut r = Readout::new(source(&pty.b()));
    let (samples, problems) = r.poll(Utc::now(), Quality::GOOD).await.unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    let got: Vec<(String, String, String, Kind)> = samples
        .iter()
        .map(|s| {
            (
                s.channel.to_string(),
                s.value.to_string(),
                s.unit.clone(),
                s.kind,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "mains.energy_import_wh".into(),
                "1234567".into(),
                "Wh".into(),
                Kind::Counter
            ),
            (
                "mains.energy_export_wh".into(),
                "12345".into(),
                "Wh".into(),
                Kind::Counter
            ),
            (
                "mains.energy_import_t1_wh".into(),
                "800100".into(),
                "Wh".into(),
                Kind::Counter
            ),
            (
                "mains.power_w".into(),
                "540".into(),
                "W".into(),
                Kind::Gauge
            ),
            (
                "mains.voltage_l1_v".into(),
                "230.1".into(),
                "V".into(),
                Kind::Gauge
            ),
        ]
    );
    let m = &Source::meters(&r)[0];
    assert_eq!(m.manufacturer.as_deref(), Some("GMT"));
    assert_eq!(m.model.as_deref(), Some("GRIDMETER-TEST"));
    assert_eq!(m.serial.as_deref(), Some("12345678"));
    // A second readout on the same line.
    let (again, _) = r.poll(Utc::now(), Quality::GOOD).await.unwrap();
    assert_eq!(again.len(), 5);
}

#[tokio::test]
async fn a_bad_block_check_and_a_silent_meter() {
    let dir = tempfile::tempdir().unwrap();
    let pty = PtyPair::new(dir.path());
    let _meter = Peer::python("iec62056_meter.py", &[&pty.a(), "--bad-bcc"]);
    let mut r = Readout::new(source(&pty.b()));
    let e = r.poll(Utc::now(), Quality::GOOD).await.unwrap_err();
    assert_eq!(e.reason, Reason::Crc, "{e}");
    let q = dir.path().join("quiet");
    std::fs::create_dir(&q).unwrap();
    let quiet = PtyPair::new(&q);
    let mut r = Readout::new(Iec62056Source {
        timeout_ms: 300,
        ..source(&quiet.b())
    });
    let e = r.poll(Utc::now(), Quality::GOOD).await.unwrap_err();
    assert_eq!(e.reason, Reason::Timeout, "{e}");
}
