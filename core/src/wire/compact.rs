//! The compact encoding of wire format v1, used by the gridmeter agent.
//!
//! Layout: the 4-byte magic `00 47 4D 01` (`\0GM` and format version 1), then one zstd frame
//! holding a postcard-serialised [`CompactBatch`]. Channel, kind and unit are written once per
//! batch in a series table and referenced by index; values are (mantissa, scale) integers,
//! timestamps microseconds since the Unix epoch. A JSON text never starts with `0x00`, so the
//! first byte tells the encodings apart.

use std::io::Read;

use serde::{Deserialize, Serialize};

use super::validate::{self, Reject};
use super::{BatchError, Decoded, Encoding, Limits};
use crate::model::{Batch, DeviceId, Kind, Quality, Reading};

/// First byte of every compact payload (never the first byte of JSON).
pub const MAGIC_FIRST: u8 = 0x00;
/// The full magic: `\0GM` plus the format version.
pub const MAGIC: [u8; 4] = [0x00, b'G', b'M', 0x01];

#[derive(Serialize, Deserialize, Debug)]
struct CompactBatch {
    device_id: String,
    /// (channel, kind code, unit)
    series: Vec<(String, u8, String)>,
    readings: Vec<CompactReading>,
    /// (from_seq, to_seq, reason)
    gaps: Vec<(u64, u64, String)>,
}

#[derive(Serialize, Deserialize, Debug)]
struct CompactReading {
    seq: u64,
    ts_us: i64,
    series: u32,
    mantissa: i128,
    scale: u8,
    quality: u16,
}

/// Encodes a batch compactly. Fails only if zstd fails to allocate.
pub fn encode(batch: &Batch) -> std::io::Result<Vec<u8>> {
    let mut series: Vec<(String, u8, String)> = Vec::new();
    let mut index = std::collections::HashMap::new();
    let readings = batch
        .readings
        .iter()
        .map(|r| {
            let key = (r.channel.as_str(), r.kind.code(), r.unit.as_str());
            let idx = *index.entry(key).or_insert_with(|| {
                series.push((r.channel.to_string(), r.kind.code(), r.unit.clone()));
                series.len() as u32 - 1
            });
            CompactReading {
                seq: r.seq,
                ts_us: r.ts.timestamp_micros(),
                series: idx,
                mantissa: r.value.mantissa(),
                scale: r.value.scale() as u8,
                quality: r.quality.bits(),
            }
        })
        .collect();
    let body = CompactBatch {
        device_id: batch.device_id.to_string(),
        series,
        readings,
        gaps: batch
            .gaps
            .iter()
            .map(|g| (g.from_seq, g.to_seq, g.reason.as_str().to_string()))
            .collect(),
    };
    let plain = postcard::to_allocvec(&body).map_err(std::io::Error::other)?;
    let mut out = MAGIC.to_vec();
    out.extend(zstd::bulk::compress(&plain, 3)?);
    Ok(out)
}

fn err(msg: impl Into<String>) -> BatchError {
    BatchError::Compact(msg.into())
}

/// Decodes a compact payload. Called by [`super::decode`] after the size check.
pub fn decode(payload: &[u8], limits: &Limits) -> Result<Decoded, BatchError> {
    if payload.len() < MAGIC.len() || payload[..3] != MAGIC[..3] {
        return Err(err("does not start with the magic bytes 00 47 4D"));
    }
    if payload[3] != MAGIC[3] {
        return Err(err(format!(
            "format version {} is not supported (this decoder reads version 1)",
            payload[3]
        )));
    }
    // Streaming decompression with a hard cap: a zstd bomb stops at the limit.
    let decoder = zstd::stream::read::Decoder::new(&payload[MAGIC.len()..])
        .map_err(|e| err(format!("zstd: {e}")))?;
    let mut plain = Vec::new();
    decoder
        .take(limits.max_decompressed_bytes as u64 + 1)
        .read_to_end(&mut plain)
        .map_err(|e| err(format!("zstd: {e}")))?;
    if plain.len() > limits.max_decompressed_bytes {
        return Err(err(format!(
            "decompresses to more than {} bytes",
            limits.max_decompressed_bytes
        )));
    }
    let body: CompactBatch = postcard::from_bytes(&plain).map_err(|e| err(format!("body: {e}")))?;
    let device_id = DeviceId::new(body.device_id.as_str()).map_err(|e| BatchError::Field {
        field: "device_id".into(),
        message: format!("{:?} {e}", body.device_id),
    })?;
    let count = body.readings.len() + body.gaps.len();
    if count > limits.max_readings {
        return Err(BatchError::TooManyReadings {
            count,
            limit: limits.max_readings,
        });
    }
    // Validate the series table once; readings referring to a bad series are rejected.
    type Series = Result<(crate::model::Channel, Kind, String), (&'static str, String)>;
    let series: Vec<Series> = body
        .series
        .iter()
        .map(|(c, k, u)| {
            let channel = validate::channel(c).map_err(|m| ("channel", m))?;
            let kind = Kind::from_code(*k).ok_or(("kind", format!("unknown kind code {k}")))?;
            let unit = validate::unit(u).map_err(|m| ("unit", m))?;
            Ok((channel, kind, unit))
        })
        .collect();
    let mut readings = Vec::with_capacity(body.readings.len());
    let mut rejects = Vec::new();
    for (i, r) in body.readings.iter().enumerate() {
        let parsed = (|| {
            let (channel, kind, unit) = series
                .get(r.series as usize)
                .ok_or((
                    "series",
                    format!("series index {} is out of range", r.series),
                ))?
                .clone()?;
            let ts = validate::ts_from_micros(r.ts_us).map_err(|m| ("ts", m))?;
            let value = rust_decimal::Decimal::try_from_i128_with_scale(r.mantissa, r.scale as u32)
                .map_err(|e| {
                    (
                        "value",
                        format!("mantissa {} scale {}: {e}", r.mantissa, r.scale),
                    )
                })?;
            let value = validate::value(value).map_err(|m| ("value", m))?;
            let quality = Quality::from_bits(r.quality)
                .ok_or(("quality", format!("unknown quality bits {:#x}", r.quality)))?;
            Ok::<_, (&'static str, String)>(Reading {
                seq: r.seq,
                ts,
                channel,
                kind,
                unit,
                value,
                quality,
            })
        })();
        match parsed {
            Ok(reading) => readings.push(reading),
            Err((f, m)) => rejects.push(Reject::new("readings", i, Some(f), m, &format!("{r:?}"))),
        }
    }
    let mut gaps = Vec::with_capacity(body.gaps.len());
    for (i, (from, to, reason)) in body.gaps.iter().enumerate() {
        match validate::gap(*from, *to, reason) {
            Ok(g) => gaps.push(g),
            Err((f, m)) => rejects.push(Reject::new(
                "gaps",
                i,
                Some(f),
                m,
                &format!("({from}, {to}, {reason:?})"),
            )),
        }
    }
    Ok(Decoded {
        encoding: Encoding::Compact,
        device_id,
        readings,
        gaps,
        rejects,
    })
}
