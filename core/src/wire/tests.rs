use super::*;
use crate::model::{Channel, GapReason, Kind, Quality};
use proptest::prelude::*;
use rust_decimal::Decimal;
use std::str::FromStr;

fn sample() -> Batch {
    let ts = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .with_timezone(&chrono::Utc)
    };
    Batch {
        device_id: DeviceId::new("inv-042").unwrap(),
        readings: vec![
            Reading {
                seq: 1,
                ts: ts("2026-11-22T10:15:00Z"),
                channel: Channel::new("energy_import").unwrap(),
                kind: Kind::Counter,
                unit: "Wh".into(),
                value: Decimal::from_str("1234.5").unwrap(),
                quality: Quality::GOOD,
            },
            Reading {
                seq: 2,
                ts: ts("2026-11-22T10:15:00.000123Z"),
                channel: Channel::new("power").unwrap(),
                kind: Kind::Gauge,
                unit: "W".into(),
                value: Decimal::from_str("-0.000000001").unwrap(),
                quality: Quality::ESTIMATED,
            },
        ],
        gaps: vec![Gap {
            from_seq: 10,
            to_seq: 20,
            reason: GapReason::BufferFull,
        }],
    }
}

#[test]
fn both_encodings_round_trip() {
    let b = sample();
    let lim = Limits::default();
    let j = decode(&json::encode(&b), &lim).unwrap();
    assert_eq!(j.encoding, Encoding::Json);
    assert!(j.rejects.is_empty());
    assert_eq!(j.into_batch(), b);
    let c = decode(&compact::encode(&b).unwrap(), &lim).unwrap();
    assert_eq!(c.encoding, Encoding::Compact);
    assert_eq!(c.into_batch(), b);
}

#[test]
fn documented_example_decodes() {
    let p = br#"{"device_id":"inv-042","readings":[{"seq":1,"ts":"2026-11-22T11:15:00+01:00","channel":"energy_import","kind":"counter","unit":"Wh","value":1234.5,"extra":true}],"firmware":"1.2"}"#;
    let d = decode(p, &Limits::default()).unwrap();
    assert_eq!(d.readings.len(), 1);
    assert_eq!(d.readings[0].value, Decimal::from_str("1234.5").unwrap());
    assert_eq!(d.readings[0].ts.to_rfc3339(), "2026-11-22T10:15:00+00:00");
}

fn reject_of(reading: &str) -> String {
    let p = format!(
        r#"{{"device_id":"d1","readings":[{{"seq":1,"ts":"2026-11-22T10:15:00Z","channel":"c","kind":"gauge","unit":"W","value":"1"}},{reading}]}}"#
    );
    let d = decode(p.as_bytes(), &Limits::default()).unwrap();
    assert_eq!(d.readings.len(), 1, "the good neighbour is kept");
    assert_eq!(d.rejects.len(), 1);
    d.rejects[0].to_string()
}

#[test]
fn bad_readings_name_index_and_field() {
    let base = |f: &str| {
        format!(
            r#"{{"seq":2,"ts":"2026-11-22T10:15:00Z","channel":"c","kind":"gauge","unit":"W","value":"1",{f}}}"#
        )
    };
    assert!(reject_of(&base(r#""seq":"x""#)).starts_with("readings[1]"));
    let m = reject_of(
        r#"{"ts":"2026-11-22T10:15:00Z","channel":"c","kind":"gauge","unit":"W","value":"1"}"#,
    );
    assert_eq!(m, "readings[1].seq: is missing");
    let m = reject_of(
        r#"{"seq":-1,"ts":"2026-11-22T10:15:00Z","channel":"c","kind":"gauge","unit":"W","value":"1"}"#,
    );
    assert!(m.starts_with("readings[1].seq: expected an integer"), "{m}");
    let m = reject_of(
        r#"{"seq":2,"ts":"yesterday","channel":"c","kind":"gauge","unit":"W","value":"1"}"#,
    );
    assert!(
        m.starts_with("readings[1].ts: \"yesterday\" is not an RFC 3339"),
        "{m}"
    );
    let m = reject_of(
        r#"{"seq":2,"ts":"2026-11-22T10:15:00","channel":"c","kind":"gauge","unit":"W","value":"1"}"#,
    );
    assert!(m.starts_with("readings[1].ts:"), "no offset: {m}");
    let m = reject_of(
        r#"{"seq":2,"ts":"2026-11-22T10:15:00Z","channel":"C","kind":"gauge","unit":"W","value":"1"}"#,
    );
    assert!(m.starts_with("readings[1].channel:"), "{m}");
    let m = reject_of(
        r#"{"seq":2,"ts":"2026-11-22T10:15:00Z","channel":"c","kind":"volts","unit":"W","value":"1"}"#,
    );
    assert!(m.starts_with("readings[1].kind: unknown kind"), "{m}");
    let m = reject_of(
        r#"{"seq":2,"ts":"2026-11-22T10:15:00Z","channel":"c","kind":"gauge","unit":"W","value":true}"#,
    );
    assert!(m.starts_with("readings[1].value: expected a number"), "{m}");
    let m = reject_of(
        r#"{"seq":2,"ts":"2026-11-22T10:15:00Z","channel":"c","kind":"gauge","unit":"W","value":"NaN"}"#,
    );
    assert!(m.starts_with("readings[1].value:"), "{m}");
    let m = reject_of(
        r#"{"seq":2,"ts":"2026-11-22T10:15:00Z","channel":"c","kind":"gauge","unit":"W","value":"1","quality":["bogus"]}"#,
    );
    assert!(
        m.starts_with("readings[1].quality: unknown quality flag"),
        "{m}"
    );
    let m = reject_of(r#""just a string""#);
    assert!(m.starts_with("readings[1]: expected an object"), "{m}");
}

#[test]
fn batch_errors_are_clear() {
    let lim = Limits::default();
    let e = decode(b"\xff\xfe{", &lim).unwrap_err();
    assert_eq!(e, BatchError::NotUtf8 { offset: 0 });
    let e = decode(br#"{"device_id":"d1","readings":[{"seq":1"#, &lim).unwrap_err();
    assert!(matches!(e, BatchError::Json { line: 1, .. }), "{e}");
    let e = decode(br#"{"readings":[]}"#, &lim).unwrap_err();
    assert_eq!(e.to_string(), "field device_id: is missing");
    let e = decode(br#"{"device_id":"a/b","readings":[]}"#, &lim).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("field device_id: \"a/b\" contains '/'"),
        "{e}"
    );
    let e = decode(br#"{"device_id":7,"readings":[]}"#, &lim).unwrap_err();
    assert!(e.to_string().contains("expected a string"), "{e}");
    let e = decode(b"", &lim).unwrap_err();
    assert_eq!(e, BatchError::Empty);
    let small = Limits {
        max_payload_bytes: 10,
        ..lim
    };
    let e = decode(br#"{"device_id":"d1","readings":[]}"#, &small).unwrap_err();
    assert_eq!(e.reason(), "too_large");
    let few = Limits {
        max_readings: 1,
        ..lim
    };
    let e = decode(&json::encode(&sample()), &few).unwrap_err();
    assert!(
        matches!(e, BatchError::TooManyReadings { count: 3, limit: 1 }),
        "{e}"
    );
    let e = decode(&compact::encode(&sample()).unwrap(), &few).unwrap_err();
    assert!(
        matches!(e, BatchError::TooManyReadings { count: 3, limit: 1 }),
        "{e}"
    );
    let e = decode(&[0, b'G', b'M', 2, 1, 2], &lim).unwrap_err();
    assert!(e.to_string().contains("version 2 is not supported"), "{e}");
}

#[test]
fn topic_must_match_payload() {
    let lim = Limits::default();
    let p = json::encode(&sample());
    assert!(decode_for_topic("gridmeter/v1/inv-042/readings", &p, &lim).is_ok());
    let e = decode_for_topic("gridmeter/v1/inv-043/readings", &p, &lim).unwrap_err();
    assert_eq!(e.reason(), "device_mismatch");
    let e = decode_for_topic("gridmeter/v2/inv-042/readings", &p, &lim).unwrap_err();
    assert_eq!(e.reason(), "bad_topic");
    assert_eq!(
        topic_for(&DeviceId::new("x").unwrap()),
        "gridmeter/v1/x/readings"
    );
}

#[test]
fn zstd_bomb_is_bounded() {
    // 64 MiB of zeros compresses to a few KiB.
    let plain = vec![0u8; 64 * 1024 * 1024];
    let mut p = compact::MAGIC.to_vec();
    p.extend(zstd::bulk::compress(&plain, 19).unwrap());
    let e = decode(&p, &Limits::default()).unwrap_err();
    assert!(e.to_string().contains("decompresses to more than"), "{e}");
}

#[test]
fn compact_is_smaller_than_json() {
    let mut b = sample();
    let r = b.readings[0].clone();
    b.readings = (1..=100)
        .map(|i| Reading {
            seq: i,
            ts: r.ts + chrono::Duration::seconds(i as i64),
            value: r.value + Decimal::from(i),
            ..r.clone()
        })
        .collect();
    let j = json::encode(&b).len();
    let c = compact::encode(&b).unwrap().len();
    assert!(c * 4 < j, "compact {c} bytes vs json {j} bytes");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn decoder_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes, &Limits::default());
    }

    #[test]
    fn decoder_never_panics_on_compact_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut p = compact::MAGIC.to_vec();
        p.extend(zstd::bulk::compress(&bytes, 1).unwrap());
        let _ = decode(&p, &Limits::default());
    }

    #[test]
    fn decoder_never_panics_on_jsonish(s in r#"\{"device_id":"[a-z]{1,3}","readings":\[\{"seq":[0-9-]{1,3},"ts":"[0-9TZ:.+-]{0,30}","channel":"[a-zA-Z_]{0,4}","kind":"(gauge|counter|x)","unit":"[A-Za-z ]{0,3}","value":[0-9eE.+"-]{0,12}\}\]\}"#) {
        let _ = decode(s.as_bytes(), &Limits::default());
    }

    #[test]
    fn encodings_agree(seqs in proptest::collection::vec((any::<u64>(), -10i64.pow(15)..10i64.pow(15), 0u32..=9, 0i64..4_000_000_000i64), 0..50)) {
        let readings = seqs.iter().map(|(seq, m, s, t)| Reading {
            seq: *seq,
            ts: chrono::DateTime::from_timestamp_micros(t * 1_000_000 + 17).unwrap(),
            channel: Channel::new("energy_import").unwrap(),
            kind: Kind::Counter,
            unit: "kWh".into(),
            value: Decimal::new(*m, *s).normalize(),
            quality: Quality::GOOD,
        }).collect();
        let b = Batch { device_id: DeviceId::new("d").unwrap(), readings, gaps: vec![] };
        let lim = Limits::default();
        let j = decode(&json::encode(&b), &lim).unwrap().into_batch();
        let c = decode(&compact::encode(&b).unwrap(), &lim).unwrap().into_batch();
        prop_assert_eq!(&j, &b);
        prop_assert_eq!(&c, &b);
    }
}
