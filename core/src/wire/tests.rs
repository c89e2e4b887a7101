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
    // Compact: the two series entries count too.
    let e = decode(&compact::encode(&sample()).unwrap(), &few).unwrap_err();
    assert!(
        matches!(e, BatchError::TooManyReadings { count: 5, limit: 1 }),
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

/// Bound on any message or detail the decoder produces (excerpts are 64 characters).
const MAX_MESSAGE: usize = 400;

fn assert_bounded(d: &Decoded) {
    for r in &d.rejects {
        assert!(
            r.message.len() <= MAX_MESSAGE * 4,
            "{} bytes: {}",
            r.message.len(),
            r.message
        );
        assert!(r.to_string().chars().count() <= MAX_MESSAGE, "{r}");
        assert!(r.raw.len() <= REJECT_RAW_BYTES);
    }
}

fn bounded_err(e: &BatchError) {
    let text = e.to_string();
    assert!(
        text.chars().count() <= MAX_MESSAGE,
        "{} chars: {}",
        text.chars().count(),
        crate::text::clip(&text, 500)
    );
}

/// The payload of the issue: one invalid 1 MB channel name in the series table, referenced
/// by `n` readings; ~25 KB on the wire, ~1 MB decompressed.
pub(crate) fn pill(n: u64) -> Vec<u8> {
    let body = compact::CompactBatch {
        device_id: "pill".into(),
        series: vec![("X".repeat(1 << 20), 0, "Wh".into())],
        readings: (1..=n)
            .map(|seq| compact::CompactReading {
                seq,
                ts_us: 1_795_000_000_000_000 + seq as i64,
                series: 0,
                mantissa: seq as i128,
                scale: 0,
                quality: 0,
            })
            .collect(),
        gaps: vec![],
    };
    compact::encode_body(&body).unwrap()
}

#[test]
fn hostile_pill_rejects_every_reading_with_a_short_message() {
    // As described: 10 000 readings plus the series entry exceed max_readings (10 000).
    let p = pill(10_000);
    assert!(p.len() < 64 * 1024, "{} bytes on the wire", p.len());
    let e = decode(&p, &Limits::default()).unwrap_err();
    assert_eq!(
        e,
        BatchError::TooManyReadings {
            count: 10_001,
            limit: 10_000
        }
    );
    // One reading fewer fits: every reading is rejected, each with a short message.
    let d = decode(&pill(9_999), &Limits::default()).unwrap();
    assert!(d.readings.is_empty());
    assert_eq!(d.rejects.len(), 9_999);
    assert_bounded(&d);
    let total: usize = d
        .rejects
        .iter()
        .map(|r| r.message.len() + r.raw.len())
        .sum();
    assert!(total < 4 * 1024 * 1024, "rejects hold {total} bytes");
    let m = d.rejects[0].to_string();
    assert!(
        m.starts_with("readings[0].channel: series[0].channel: \"XXXX"),
        "{m}"
    );
    assert!(m.contains("(1048576 bytes)"), "{m}");
    assert_eq!(d.rejects[0].reason(), "bad_channel");
}

#[test]
fn hostile_series_entries_count_against_max_readings() {
    let body = compact::CompactBatch {
        device_id: "d".into(),
        series: (0..10_001)
            .map(|i| (format!("c{i}"), 2, "W".into()))
            .collect(),
        readings: vec![],
        gaps: vec![],
    };
    let e = decode(&compact::encode_body(&body).unwrap(), &Limits::default()).unwrap_err();
    assert_eq!(
        e,
        BatchError::TooManyReadings {
            count: 10_001,
            limit: 10_000
        }
    );
    // Tiny readings (a few bytes each) cannot make the decoder allocate beyond the limit:
    // a million of them are counted and refused.
    let body = compact::CompactBatch {
        device_id: "d".into(),
        series: vec![],
        readings: vec![
            compact::CompactReading {
                seq: 0,
                ts_us: 0,
                series: 0,
                mantissa: 0,
                scale: 0,
                quality: 0
            };
            1_000_000
        ],
        gaps: vec![],
    };
    let p = compact::encode_body(&body).unwrap();
    let lim = Limits::default();
    assert!(p.len() < lim.max_payload_bytes);
    let e = decode(&p, &lim).unwrap_err();
    assert!(
        matches!(
            e,
            BatchError::TooManyReadings {
                count: 1_000_000,
                ..
            }
        ),
        "{e}"
    );
    // JSON: the same, counted without being stored.
    let json = format!(
        r#"{{"device_id":"d","readings":[{}]}}"#,
        vec!["0"; 500_000].join(",")
    );
    let e = decode(json.as_bytes(), &lim).unwrap_err();
    assert!(
        matches!(e, BatchError::TooManyReadings { count: 500_000, .. }),
        "{e}"
    );
}

#[test]
fn hostile_json_fields_are_quoted_only_in_part() {
    let huge = "z".repeat(512 * 1024);
    let lim = Limits::default();
    for (field, reading) in [
        (
            "ts",
            format!(
                r#"{{"seq":1,"ts":"{huge}","channel":"c","kind":"gauge","unit":"W","value":"1"}}"#
            ),
        ),
        (
            "channel",
            format!(
                r#"{{"seq":1,"ts":"2026-11-22T10:15:00Z","channel":"{huge}","kind":"gauge","unit":"W","value":"1"}}"#
            ),
        ),
        (
            "kind",
            format!(
                r#"{{"seq":1,"ts":"2026-11-22T10:15:00Z","channel":"c","kind":"{huge}","unit":"W","value":"1"}}"#
            ),
        ),
        (
            "unit",
            format!(
                r#"{{"seq":1,"ts":"2026-11-22T10:15:00Z","channel":"c","kind":"gauge","unit":"{huge}","value":"1"}}"#
            ),
        ),
        (
            "value",
            format!(
                r#"{{"seq":1,"ts":"2026-11-22T10:15:00Z","channel":"c","kind":"gauge","unit":"W","value":"{huge}"}}"#
            ),
        ),
        (
            "quality",
            format!(
                r#"{{"seq":1,"ts":"2026-11-22T10:15:00Z","channel":"c","kind":"gauge","unit":"W","value":"1","quality":["{huge}"]}}"#
            ),
        ),
    ] {
        let p = format!(
            r#"{{"device_id":"d","readings":[{reading}],"gaps":[{{"from_seq":1,"to_seq":2,"reason":"{huge}"}}]}}"#
        );
        let d = decode(p.as_bytes(), &lim).unwrap();
        assert_eq!(d.rejects.len(), 2, "{field}");
        assert_eq!(d.rejects[0].field, Some(field));
        assert_bounded(&d);
    }
    for p in [
        format!(r#""{huge}""#),
        format!(r#"{{"device_id":"{huge}","readings":[]}}"#),
        format!(r#"{{"device_id":"d","readings":"{huge}"}}"#),
        format!(r#"{{"device_id":"d","readings":[{{"seq":"{huge}"}}]}}"#),
        format!(r#"{{"device_id":"d","readings":[]}} {huge}"#),
    ] {
        match decode(p.as_bytes(), &lim) {
            Err(e) => bounded_err(&e),
            Ok(d) => assert_bounded(&d),
        }
    }
    let compact_device = compact::CompactBatch {
        device_id: huge.clone(),
        ..Default::default()
    };
    bounded_err(&decode(&compact::encode_body(&compact_device).unwrap(), &lim).unwrap_err());
}

#[test]
fn check_reading_agrees_with_the_decoders() {
    let ts = chrono::DateTime::from_timestamp(1_795_000_000, 0).unwrap();
    assert!(check_reading("energy_import", "Wh", Decimal::new(15, 1), ts).is_ok());
    let e = check_reading("energy_import", "", Decimal::ONE, ts).unwrap_err();
    assert_eq!((e.field, e.reason().as_str()), ("unit", "bad_unit"));
    let e = check_reading("Energy", "W", Decimal::ONE, ts).unwrap_err();
    assert_eq!(e.field, "channel");
    let e = check_reading("c", "W", Decimal::new(1, 12), ts).unwrap_err();
    assert_eq!(e.field, "value");
    assert!(check_unit("1").is_ok());
    assert!(check_unit("k W").is_err());
    // What check_reading accepts, the collector decodes without a reject (both encodings).
    let b = Batch {
        device_id: DeviceId::new("d").unwrap(),
        readings: vec![Reading {
            seq: 1,
            ts,
            channel: Channel::new("http_requests_total.200.get").unwrap(),
            kind: Kind::Counter,
            unit: "1".into(),
            value: Decimal::new(1027, 0),
            quality: Quality::GOOD,
        }],
        gaps: vec![],
    };
    for p in [json::encode(&b), compact::encode(&b).unwrap()] {
        assert!(decode(&p, &Limits::default()).unwrap().rejects.is_empty());
    }
}

/// Large structured compact bodies: long strings, big series tables, indices in and out of
/// range.
fn big_body() -> impl Strategy<Value = compact::CompactBatch> {
    let string = prop_oneof![
        20 => "[a-z_.]{1,10}",
        5 => "[ -~]{0,80}",
        1 => (1usize..300_000, any::<char>()).prop_map(|(n, c)| std::iter::repeat_n(c, n).collect()),
    ];
    let series = proptest::collection::vec((string.clone(), 0u8..5, string.clone()), 0..3000);
    (
        string.clone(),
        series,
        0usize..12_000,
        any::<u64>(),
        proptest::collection::vec((any::<u64>(), any::<u64>(), string), 0..50),
    )
        .prop_map(|(device_id, series, n, seed, gaps)| {
            let readings = (0..n as u64)
                .map(|i| {
                    let x = seed
                        .wrapping_mul(i.wrapping_add(1))
                        .rotate_left((i % 64) as u32);
                    compact::CompactReading {
                        seq: x,
                        ts_us: (x as i64) >> (i % 20),
                        series: (x % (series.len() as u64 + 3)) as u32,
                        mantissa: (x as i128) << (i % 70),
                        scale: (x % 40) as u8,
                        quality: (x % 9) as u16,
                    }
                })
                .collect();
            compact::CompactBatch {
                device_id,
                series,
                readings,
                gaps,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn decoder_is_bounded_on_large_structured_compact(body in big_body()) {
        let p = compact::encode_body(&body).unwrap();
        let lim = Limits::default();
        let entries = body.series.len() + body.readings.len() + body.gaps.len();
        match decode(&p, &lim) {
            Ok(d) => {
                prop_assert!(entries <= lim.max_readings);
                prop_assert_eq!(d.readings.len() + d.rejects.len() + d.gaps.len(), body.readings.len() + body.gaps.len());
                assert_bounded(&d);
            }
            Err(e) => {
                bounded_err(&e);
                if let BatchError::TooManyReadings { count, .. } = e {
                    prop_assert_eq!(count, entries);
                }
            }
        }
    }

    #[test]
    fn decoder_is_bounded_on_large_structured_json(
        strings in proptest::collection::vec(prop_oneof![
            "[a-z_]{1,8}",
            (1usize..100_000).prop_map(|n| "q".repeat(n)),
            "\\PC{0,20}",
        ], 1..8),
        n in 0usize..3000,
    ) {
        // A few fields get one of the generated (possibly long) strings, the rest valid text.
        let pick = |i: usize| serde_json::to_string(&strings[i % strings.len()]).unwrap();
        let rare = |i: usize, k: usize, ok: &str| if (i * 7 + k).is_multiple_of(41) { pick(i + k) } else { ok.to_string() };
        let readings: Vec<String> = (0..n).map(|i| format!(
            r#"{{"seq":{i},"ts":{},"channel":{},"kind":{},"unit":{},"value":{},"quality":[{}]}}"#,
            rare(i, 0, "\"2026-11-22T10:15:00Z\""),
            rare(i, 1, "\"c\""),
            rare(i, 2, "\"gauge\""),
            rare(i, 3, "\"W\""),
            rare(i, 4, "\"1.5\""),
            rare(i, 5, ""),
        )).collect();
        let p = format!(r#"{{"device_id":{},"readings":[{}]}}"#, if n % 2 == 0 { "\"d\"".to_string() } else { pick(n) }, readings.join(","));
        match decode(p.as_bytes(), &Limits { max_payload_bytes: usize::MAX, ..Limits::default() }) {
            Ok(d) => {
                prop_assert_eq!(d.readings.len() + d.rejects.len(), n);
                assert_bounded(&d);
            }
            Err(e) => bounded_err(&e),
        }
    }
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
