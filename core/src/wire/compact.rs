//! The compact encoding of wire format v1, used by the gridmeter agent.
//!
//! Layout: the 4-byte magic `00 47 4D 01` (`\0GM` and format version 1), then one zstd frame
//! holding a postcard-serialised [`CompactBatch`]. Channel, kind and unit are written once per
//! batch in a series table and referenced by index; values are (mantissa, scale) integers,
//! timestamps microseconds since the Unix epoch. A JSON text never starts with `0x00`, so the
//! first byte tells the encodings apart.

use std::cell::RefCell;
use std::io::Read;
use std::sync::Arc;

use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::bounded::{BoundedVec, Budget};
use super::validate::{self, Reject};
use super::{BatchError, Decoded, Encoding, Limits};
use crate::model::{Batch, Channel, DeviceId, Kind, Quality, Reading};
use crate::text::excerpt;

/// First byte of every compact payload (never the first byte of JSON).
pub const MAGIC_FIRST: u8 = 0x00;
/// The full magic: `\0GM` plus the format version.
pub const MAGIC: [u8; 4] = [0x00, b'G', b'M', 0x01];

/// The body of a compact payload, as the encoder writes it (postcard, in this field order).
///
/// Public so that tools and tests can build payloads the [`Batch`] model cannot express (an
/// invalid series entry, an index out of range); [`encode_body`] frames one.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct CompactBatch {
    pub device_id: String,
    /// The series table: (channel, kind code, unit), referenced by [`CompactReading::series`].
    pub series: Vec<(String, u8, String)>,
    pub readings: Vec<CompactReading>,
    /// Gap records: (from_seq, to_seq, reason).
    pub gaps: Vec<(u64, u64, String)>,
}

/// One reading of a [`CompactBatch`].
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactReading {
    pub seq: u64,
    /// Microseconds since the Unix epoch.
    pub ts_us: i64,
    /// Index into [`CompactBatch::series`].
    pub series: u32,
    /// The value is `mantissa × 10^-scale`.
    pub mantissa: i128,
    pub scale: u8,
    /// [`Quality`] bits.
    pub quality: u16,
}

/// Encodes a batch compactly. Fails only if zstd fails to allocate.
pub fn encode(batch: &Batch) -> std::io::Result<Vec<u8>> {
    let mut series: Vec<(String, u8, String)> = Vec::new();
    let mut index = std::collections::HashMap::new();
    let readings = batch
        .readings
        .iter()
        .map(|r| {
            let key = (r.channel.as_str(), r.kind.code(), &*r.unit);
            let idx = *index.entry(key).or_insert_with(|| {
                series.push((r.channel.to_string(), r.kind.code(), r.unit.to_string()));
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
    encode_body(&CompactBatch {
        device_id: batch.device_id.to_string(),
        series,
        readings,
        gaps: batch
            .gaps
            .iter()
            .map(|g| (g.from_seq, g.to_seq, g.reason.as_str().to_string()))
            .collect(),
    })
}

/// Frames a body: the magic, then the postcard bytes in one zstd frame.
pub fn encode_body(body: &CompactBatch) -> std::io::Result<Vec<u8>> {
    let plain = postcard::to_allocvec(body).map_err(std::io::Error::other)?;
    let mut out = MAGIC.to_vec();
    out.extend(compress(&plain)?);
    Ok(out)
}

/// The decoder's view of a body: strings borrowed from the decompressed bytes, every array
/// bounded while it is read (see [`bounded`]).
struct BodyRef<'a> {
    device_id: &'a str,
    series: Vec<(&'a str, u8, &'a str)>,
    readings: Vec<CompactReading>,
    gaps: Vec<(u64, u64, &'a str)>,
    /// Entries of the three arrays, counted even past the limit.
    entries: usize,
}

thread_local! {
    // zstd contexts are expensive to create (hundreds of KiB of tables); one per thread is
    // reused for every batch.
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// zstd level 3, one frame with the content size in its header.
fn compress(plain: &[u8]) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        let c = match &mut *c {
            Some(c) => c,
            None => c.insert(zstd::bulk::Compressor::new(3)?),
        };
        c.compress(plain)
    })
}

/// Decompresses one zstd frame into at most `limit` bytes; a zstd bomb stops at the limit.
fn decompress(frame: &[u8], limit: usize) -> Result<Vec<u8>, BatchError> {
    let too_big = || err(format!("decompresses to more than {limit} bytes"));
    match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(n)) if n > limit as u64 => Err(too_big()),
        // The frame declares its size (every encoder here writes it): one call into a buffer
        // of exactly that size, with the thread's reused context. A frame whose content
        // exceeds what it declares fails with "destination buffer is too small".
        Ok(Some(n)) => DECOMPRESSOR.with(|d| {
            let mut d = d.borrow_mut();
            let d = match &mut *d {
                Some(d) => d,
                None => d.insert(
                    zstd::bulk::Decompressor::new().map_err(|e| err(format!("zstd: {e}")))?,
                ),
            };
            let mut plain = Vec::with_capacity(n as usize);
            d.decompress_to_buffer(frame, &mut plain)
                .map_err(|e| err(format!("zstd: {e}")))?;
            Ok(plain)
        }),
        // Size not declared (or not a frame header, which the decoder reports): stream with a
        // hard cap.
        _ => {
            let decoder =
                zstd::stream::read::Decoder::new(frame).map_err(|e| err(format!("zstd: {e}")))?;
            let mut plain = Vec::new();
            decoder
                .take(limit as u64 + 1)
                .read_to_end(&mut plain)
                .map_err(|e| err(format!("zstd: {e}")))?;
            if plain.len() > limit {
                return Err(too_big());
            }
            Ok(plain)
        }
    }
}

fn err(msg: impl Into<String>) -> BatchError {
    BatchError::Compact(msg.into())
}

/// Reads a [`BodyRef`] (a postcard tuple of four fields) with every array under one budget.
struct BodySeed<'b>(&'b Budget);

impl<'de> DeserializeSeed<'de> for BodySeed<'_> {
    type Value = BodyRef<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<BodyRef<'de>, D::Error> {
        d.deserialize_tuple(4, self)
    }
}

impl<'de> Visitor<'de> for BodySeed<'_> {
    type Value = BodyRef<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a compact batch")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<BodyRef<'de>, A::Error> {
        let missing = |i| serde::de::Error::invalid_length(i, &"four fields");
        let device_id: &str = seq.next_element()?.ok_or_else(|| missing(0))?;
        let series = seq
            .next_element_seed(BoundedVec::new(self.0))?
            .ok_or_else(|| missing(1))?;
        let readings = seq
            .next_element_seed(BoundedVec::new(self.0))?
            .ok_or_else(|| missing(2))?;
        let gaps = seq
            .next_element_seed(BoundedVec::new(self.0))?
            .ok_or_else(|| missing(3))?;
        Ok(BodyRef {
            device_id,
            series,
            readings,
            gaps,
            entries: self.0.seen(),
        })
    }
}

/// A series table entry, validated once; readings refer to it by index. Channel and unit
/// are shared by the readings that refer to them (an `Arc` clone each).
/// A bad entry keeps its field and a bounded message.
type Series = Result<(Channel, Kind, Arc<str>), (&'static str, String)>;

fn check_series(i: usize, (c, k, u): &(&str, u8, &str)) -> Series {
    let bad = |field: &'static str, m: String| (field, format!("series[{i}].{field}: {m}"));
    let channel = validate::channel(c).map_err(|m| bad("channel", m))?;
    let kind = Kind::from_code(*k).ok_or_else(|| bad("kind", format!("unknown kind code {k}")))?;
    let unit = validate::unit(u).map_err(|m| bad("unit", m))?;
    Ok((channel, kind, Arc::from(unit)))
}

/// Decodes a compact payload. Called by [`super::decode`] after the size check.
///
/// Memory is bounded by the limits: the decompressed body by `max_decompressed_bytes`, its
/// strings are borrowed from it, its arrays stop growing at `max_readings` entries, and an
/// invalid series entry is reported once per reading with a short message.
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
    let plain = decompress(&payload[MAGIC.len()..], limits.max_decompressed_bytes)?;
    let budget = Budget::new(limits.max_readings);
    let mut de = postcard::Deserializer::from_bytes(&plain);
    let body = BodySeed(&budget)
        .deserialize(&mut de)
        .map_err(|e| err(format!("body: {e}")))?;
    if budget.exceeded() {
        return Err(BatchError::TooManyReadings {
            count: body.entries,
            limit: limits.max_readings,
        });
    }
    let device_id = DeviceId::new(body.device_id).map_err(|e| BatchError::Field {
        field: "device_id".into(),
        message: format!("{} {e}", excerpt(body.device_id)),
    })?;
    let series: Vec<Series> = body
        .series
        .iter()
        .enumerate()
        .map(|(i, s)| check_series(i, s))
        .collect();
    let mut readings = Vec::with_capacity(body.readings.len());
    let mut rejects = Vec::new();
    for (i, r) in body.readings.iter().enumerate() {
        let parsed = (|| {
            let (channel, kind, unit) = match series.get(r.series as usize) {
                None => {
                    return Err((
                        "series",
                        format!("series index {} is out of range", r.series),
                    ))
                }
                // The field of a bad series entry is the one it got wrong.
                Some(Err((f, m))) => return Err((*f, m.clone())),
                Some(Ok(s)) => s.clone(),
            };
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
                .ok_or_else(|| ("quality", format!("unknown quality bits {:#x}", r.quality)))?;
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
                &format!("({from}, {to}, {})", excerpt(reason)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_size_round_trips_and_is_bounded() {
        let plain: Vec<u8> = (0..5000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let frame = compress(&plain).unwrap();
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&frame).unwrap(),
            Some(plain.len() as u64)
        );
        assert_eq!(decompress(&frame, plain.len()).unwrap(), plain);
        let e = decompress(&frame, plain.len() - 1).unwrap_err();
        assert!(e.to_string().contains("decompresses to more than"), "{e}");
    }

    #[test]
    fn undeclared_size_streams_with_the_cap() {
        let plain = vec![0u8; 1 << 20];
        let frame = zstd::stream::encode_all(&plain[..], 3).unwrap();
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&frame).unwrap(),
            None
        );
        assert_eq!(decompress(&frame, 1 << 20).unwrap(), plain);
        let e = decompress(&frame, 1000).unwrap_err();
        assert!(e.to_string().contains("decompresses to more than"), "{e}");
    }

    #[test]
    fn a_frame_that_understates_its_size_is_refused() {
        let plain = vec![7u8; 1000];
        let mut frame = compress(&plain).unwrap();
        // Frame header: magic (4), descriptor (1), [window (1)], [dict id], content size.
        let fhd = frame[4];
        assert_eq!(fhd >> 6, 1, "1000 bytes use a 2-byte content size field");
        let single_segment = fhd & 0x20 != 0;
        let dict_len = [0, 1, 2, 4][usize::from(fhd & 3)];
        let at = 5 + usize::from(!single_segment) + dict_len;
        frame[at..at + 2].copy_from_slice(&(600u16 - 256).to_le_bytes());
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&frame).unwrap(),
            Some(600)
        );
        let e = decompress(&frame, 1 << 20).unwrap_err();
        assert!(e.to_string().contains("zstd"), "{e}");
    }

    #[test]
    fn garbage_after_the_magic_is_an_error_not_a_panic() {
        for junk in [&b""[..], b"\x28\xb5\x2f", b"not zstd at all"] {
            assert!(decompress(junk, 1 << 20).is_err());
        }
    }
}
