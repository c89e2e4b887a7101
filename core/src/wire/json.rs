//! The JSON encoding of wire format v1 (see docs/wire-format.md).
//!
//! ```json
//! {"device_id":"inv-042","readings":[{"seq":1,"ts":"2026-11-22T10:15:00Z",
//!   "channel":"energy_import","kind":"counter","unit":"Wh","value":"1234.5"}]}
//! ```
//!
//! `value` may be a JSON number or a decimal string; either way it is parsed from its text,
//! never through a float. Unknown fields are ignored.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::bounded::{BoundedVec, Budget, Nullable};
use super::validate::{self, Reject};
use super::{BatchError, Decoded, Encoding, Limits};
use crate::decimal;
use crate::model::{Batch, DeviceId, Kind, Reading};
use crate::text::{clip, excerpt, MESSAGE_CHARS};

/// The top level of a batch: raw elements, read under a [`Budget`] (see [`BatchSeed`]).
struct RawBatch<'a> {
    device_id: Option<&'a RawValue>,
    readings: Option<Vec<&'a RawValue>>,
    gaps: Option<Vec<&'a RawValue>>,
}

/// The keys of a batch object that matter; others are ignored without being stored.
enum Key {
    DeviceId,
    Readings,
    Gaps,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(match v {
                    "device_id" => Key::DeviceId,
                    "readings" => Key::Readings,
                    "gaps" => Key::Gaps,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_identifier(KeyVisitor)
    }
}

/// Reads the batch object with `readings` and `gaps` under one budget.
struct BatchSeed<'b>(&'b Budget);

impl<'de> DeserializeSeed<'de> for BatchSeed<'_> {
    type Value = RawBatch<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<RawBatch<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for BatchSeed<'_> {
    type Value = RawBatch<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a batch object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawBatch<'de>, A::Error> {
        let mut b = RawBatch {
            device_id: None,
            readings: None,
            gaps: None,
        };
        let (mut has_device, mut has_readings, mut has_gaps) = (false, false, false);
        let dup = |k: &str| serde::de::Error::custom(format!("duplicate field `{k}`"));
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::DeviceId if has_device => return Err(dup("device_id")),
                Key::DeviceId => {
                    has_device = true;
                    b.device_id = map.next_value()?;
                }
                Key::Readings if has_readings => return Err(dup("readings")),
                Key::Readings => {
                    has_readings = true;
                    b.readings = map.next_value_seed(Nullable(BoundedVec::new(self.0)))?;
                }
                Key::Gaps if has_gaps => return Err(dup("gaps")),
                Key::Gaps => {
                    has_gaps = true;
                    b.gaps = map.next_value_seed(Nullable(BoundedVec::new(self.0)))?;
                }
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(b)
    }
}

#[derive(Deserialize)]
struct RawReading<'a> {
    #[serde(borrow, default)]
    seq: Option<&'a RawValue>,
    #[serde(borrow, default)]
    ts: Option<&'a RawValue>,
    #[serde(borrow, default)]
    channel: Option<&'a RawValue>,
    #[serde(borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    unit: Option<&'a RawValue>,
    #[serde(borrow, default)]
    value: Option<&'a RawValue>,
    #[serde(borrow, default)]
    quality: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawGap<'a> {
    #[serde(borrow, default)]
    from_seq: Option<&'a RawValue>,
    #[serde(borrow, default)]
    to_seq: Option<&'a RawValue>,
    #[serde(borrow, default)]
    reason: Option<&'a RawValue>,
}

/// A field's problem: (field name, message).
type FieldErr = (&'static str, String);

fn required<'a>(v: Option<&'a RawValue>, field: &'static str) -> Result<&'a RawValue, FieldErr> {
    match v {
        Some(v) if v.get() != "null" => Ok(v),
        _ => Err((field, "is missing".into())),
    }
}

fn string_field(v: &RawValue, field: &'static str) -> Result<String, FieldErr> {
    serde_json::from_str::<String>(v.get())
        .map_err(|_| (field, format!("expected a string, got {}", short(v.get()))))
}

fn u64_field(v: &RawValue, field: &'static str) -> Result<u64, FieldErr> {
    serde_json::from_str::<u64>(v.get()).map_err(|_| {
        (
            field,
            format!(
                "expected an integer from 0 to 2^64-1, got {}",
                short(v.get())
            ),
        )
    })
}

fn short(s: &str) -> String {
    crate::text::clip(s, 40)
}

fn parse_reading(raw: &RawValue) -> Result<Reading, FieldErr> {
    let r: RawReading = serde_json::from_str(raw.get()).map_err(|e| {
        if raw.get().trim_start().starts_with('{') {
            (
                "",
                format!("cannot be read: {}", clip(&e.to_string(), MESSAGE_CHARS)),
            )
        } else {
            ("", format!("expected an object, got {}", short(raw.get())))
        }
    })?;
    let seq = u64_field(required(r.seq, "seq")?, "seq")?;
    let ts_text = string_field(required(r.ts, "ts")?, "ts")?;
    let ts = validate::ts_from_rfc3339(&ts_text).map_err(|m| ("ts", m))?;
    let channel_text = string_field(required(r.channel, "channel")?, "channel")?;
    let channel = validate::channel(&channel_text).map_err(|m| ("channel", m))?;
    let kind_text = string_field(required(r.kind, "kind")?, "kind")?;
    let kind: Kind = kind_text.parse().map_err(|m| ("kind", m))?;
    let unit_text = string_field(required(r.unit, "unit")?, "unit")?;
    let unit = validate::unit(&unit_text).map_err(|m| ("unit", m))?;
    let value_raw = required(r.value, "value")?.get();
    let value_text = if value_raw.starts_with('"') {
        string_field(required(r.value, "value")?, "value")?
    } else if value_raw.starts_with(['-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9']) {
        value_raw.to_string()
    } else {
        return Err((
            "value",
            format!(
                "expected a number or a decimal string, got {}",
                short(value_raw)
            ),
        ));
    };
    let value = decimal::parse_exact(&value_text).map_err(|e| ("value", e.to_string()))?;
    let value = validate::value(value).map_err(|m| ("value", m))?;
    let quality = match r.quality {
        None => Default::default(),
        Some(q) if q.get() == "null" => Default::default(),
        Some(q) => {
            let names: Vec<String> = serde_json::from_str(q.get()).map_err(|_| {
                (
                    "quality",
                    format!("expected an array of flag names, got {}", short(q.get())),
                )
            })?;
            validate::quality_from_names(names.iter().map(String::as_str))
                .map_err(|m| ("quality", m))?
        }
    };
    Ok(Reading {
        seq,
        ts,
        channel,
        kind,
        unit: unit.into(),
        value,
        quality,
    })
}

fn parse_gap(raw: &RawValue) -> Result<crate::model::Gap, FieldErr> {
    let g: RawGap = serde_json::from_str(raw.get())
        .map_err(|_| ("", format!("expected an object, got {}", short(raw.get()))))?;
    let from = u64_field(required(g.from_seq, "from_seq")?, "from_seq")?;
    let to = u64_field(required(g.to_seq, "to_seq")?, "to_seq")?;
    let reason = string_field(required(g.reason, "reason")?, "reason")?;
    validate::gap(from, to, &reason)
}

fn field_opt(f: &'static str) -> Option<&'static str> {
    (!f.is_empty()).then_some(f)
}

/// A parser error without the input it may quote, and bounded.
fn json_error(e: &serde_json::Error) -> BatchError {
    let text = e.to_string();
    let message = text.split(" at line ").next().unwrap_or("");
    BatchError::Json {
        message: clip(message, MESSAGE_CHARS),
        line: e.line(),
        column: e.column(),
    }
}

/// Decodes a JSON payload. Called by [`super::decode`] after the size check.
///
/// Elements are kept as borrowed raw text; `readings` and `gaps` stop being stored at
/// `max_readings` entries (the rest is counted, not kept).
pub fn decode(payload: &[u8], limits: &Limits) -> Result<Decoded, BatchError> {
    let text = std::str::from_utf8(payload).map_err(|e| BatchError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let budget = Budget::new(limits.max_readings);
    let mut de = serde_json::Deserializer::from_str(text);
    let raw = BatchSeed(&budget)
        .deserialize(&mut de)
        .and_then(|b| de.end().map(|()| b))
        .map_err(|e| json_error(&e))?;
    let device_raw = required(raw.device_id, "device_id").map_err(|(f, m)| BatchError::Field {
        field: f.into(),
        message: m,
    })?;
    let device_text =
        string_field(device_raw, "device_id").map_err(|(f, m)| BatchError::Field {
            field: f.into(),
            message: m,
        })?;
    let device_id = DeviceId::new(device_text.as_str()).map_err(|e| BatchError::Field {
        field: "device_id".into(),
        message: format!("{} {e}", excerpt(&device_text)),
    })?;
    if budget.exceeded() {
        return Err(BatchError::TooManyReadings {
            count: budget.seen(),
            limit: limits.max_readings,
        });
    }
    let readings_raw = raw.readings.unwrap_or_default();
    let gaps_raw = raw.gaps.unwrap_or_default();
    let mut readings = Vec::with_capacity(readings_raw.len());
    let mut rejects = Vec::new();
    for (i, r) in readings_raw.iter().enumerate() {
        match parse_reading(r) {
            Ok(reading) => readings.push(reading),
            Err((f, m)) => rejects.push(Reject::new("readings", i, field_opt(f), m, r.get())),
        }
    }
    let mut gaps = Vec::with_capacity(gaps_raw.len());
    for (i, g) in gaps_raw.iter().enumerate() {
        match parse_gap(g) {
            Ok(gap) => gaps.push(gap),
            Err((f, m)) => rejects.push(Reject::new("gaps", i, field_opt(f), m, g.get())),
        }
    }
    Ok(Decoded {
        encoding: Encoding::Json,
        device_id,
        readings,
        gaps,
        rejects,
    })
}

/// Encodes a batch as JSON (values as decimal strings, timestamps in UTC with `Z`).
pub fn encode(batch: &Batch) -> Vec<u8> {
    use serde_json::{json, Map, Value};
    let readings: Vec<Value> = batch
        .readings
        .iter()
        .map(|r| {
            let mut m = Map::new();
            m.insert("seq".into(), json!(r.seq));
            m.insert(
                "ts".into(),
                json!(r.ts.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
            );
            m.insert("channel".into(), json!(r.channel.as_str()));
            m.insert("kind".into(), json!(r.kind.as_str()));
            m.insert("unit".into(), json!(&*r.unit));
            m.insert("value".into(), json!(r.value.to_string()));
            if !r.quality.is_good() {
                m.insert("quality".into(), json!(r.quality.names()));
            }
            Value::Object(m)
        })
        .collect();
    let mut top = Map::new();
    top.insert("device_id".into(), json!(batch.device_id.as_str()));
    top.insert("readings".into(), Value::Array(readings));
    if !batch.gaps.is_empty() {
        let gaps: Vec<Value> = batch
            .gaps
            .iter()
            .map(|g| json!({"from_seq": g.from_seq, "to_seq": g.to_seq, "reason": g.reason.as_str()}))
            .collect();
        top.insert("gaps".into(), Value::Array(gaps));
    }
    // Serialising a Value built from strings and integers cannot fail.
    serde_json::to_vec(&Value::Object(top)).unwrap_or_default()
}
