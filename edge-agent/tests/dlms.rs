//! DLMS/COSEM against the Gurux DLMS server (gurux-dlms on PyPI) over the TCP wrapper:
//! association, the energy registers with their scaler and unit, the load profile read by
//! range (the server filters the rows; with a 256-byte PDU the answer comes in blocks), the next poll
//! reading only newer rows, and a refused connection.

mod peer;

use chrono::{DateTime, Duration, Utc};
use gridmeter_agent::sources::dlms::{DlmsPoller, DlmsSource};
use gridmeter_agent::sources::{Reason, Source};
use gridmeter_core::{Kind, Quality};
use peer::Peer;

fn source(port: u16) -> DlmsSource {
    let text = format!(
        "address = \"127.0.0.1:{port}\"\nmax_pdu_size = 256\nload_profile = {{ obis = \"1.0.99.1.0.255\", backfill_hours = 6 }}\n"
    );
    toml::from_str(&text).unwrap()
}

#[tokio::test]
async fn registers_and_load_profile_by_range() {
    let now = Utc::now();
    // 96 quarter-hour rows ending 15 minutes ago: a day of load profile.
    let start = now - Duration::minutes(15 * 96);
    let start = DateTime::from_timestamp(start.timestamp() / 900 * 900, 0).unwrap();
    let port = peer::free_port();
    let _meter = Peer::python(
        "dlms_server.py",
        &[&port.to_string(), &start.timestamp().to_string(), "96"],
    );
    let mut p = DlmsPoller::new(source(port));
    let (samples, problems) = p.poll(now, Quality::GOOD).await.unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    let live: Vec<(String, String, String, Kind)> = samples
        .iter()
        .filter(|s| s.ts == now)
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
        live,
        vec![
            (
                "energy_import_wh".into(),
                "1234567.8".into(),
                "Wh".into(),
                Kind::Counter
            ),
            (
                "energy_export_wh".into(),
                "4321".into(),
                "Wh".into(),
                Kind::Counter
            ),
        ]
    );
    // The profile rows of the last 6 hours only, stamped with their own clock column.
    let rows: Vec<&gridmeter_agent::sources::Sample> =
        samples.iter().filter(|s| s.ts != now).collect();
    let from = now - Duration::hours(6);
    let expected: Vec<(DateTime<Utc>, String)> = (0..96)
        .map(|i| (start + Duration::minutes(15 * i), 10_000_000 + 250 * i))
        .filter(|(t, _)| *t >= from && *t <= now)
        .map(|(t, v)| {
            (
                t,
                (rust_decimal::Decimal::from(v) / rust_decimal::Decimal::from(10))
                    .normalize()
                    .to_string(),
            )
        })
        .collect();
    assert!(expected.len() >= 23, "{}", expected.len());
    let got: Vec<(DateTime<Utc>, String)> =
        rows.iter().map(|s| (s.ts, s.value.to_string())).collect();
    assert_eq!(got, expected);
    assert!(rows
        .iter()
        .all(|s| s.channel.as_str() == "energy_import_wh" && s.kind == Kind::Counter));
    // The next poll asks from the last row on: nothing new.
    let (again, problems) = p
        .poll(now + Duration::seconds(60), Quality::GOOD)
        .await
        .unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(again.len(), 2, "{again:?}");
    let m = &Source::meters(&p)[0];
    assert_eq!(m.protocol, "dlms");
    assert_eq!(m.manufacturer.as_deref(), Some("GRX"));
    assert_eq!(m.serial.as_deref(), Some("0000012345678"));
}

#[tokio::test]
async fn a_meter_that_is_not_there() {
    let mut p = DlmsPoller::new(source(peer::free_port()));
    let e = p.poll(Utc::now(), Quality::GOOD).await.unwrap_err();
    assert_eq!(e.reason, Reason::Connect, "{e}");
}
