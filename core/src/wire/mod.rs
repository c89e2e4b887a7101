//! Wire format v1: how readings travel from a device to the collector.
//!
//! - Topic `gridmeter/v1/{device_id}/readings`, QoS 1 ([`topic_for`], [`device_from_topic`]).
//! - Back to the device: `gridmeter/v1/{device_id}/confirm`, the seqs that are durable
//!   ([`confirm`]).
//! - Payload: JSON ([`json`]) for third-party devices, or the compact encoding ([`compact`])
//!   the agent uses. A compact payload starts with the byte `0x00`, which never starts a
//!   JSON text, so [`decode`] tells the two apart from the first byte.
//!
//! [`decode`] never panics, allocates at most what [`Limits`] allow, and keeps every good
//! reading of a batch: a bad reading becomes a [`Reject`] naming its index and field, a
//! batch that cannot be read at all is a [`BatchError`].

mod bounded;
pub mod compact;
pub mod confirm;
pub mod json;
pub mod meta;
mod validate;

use crate::model::{Batch, DeviceId, Gap, Reading};

pub use validate::{check_reading, check_unit, Invalid, Reject, REJECT_RAW_BYTES};

/// Topic prefix of wire format v1.
pub const TOPIC_PREFIX: &str = "gridmeter/v1/";
/// Most gap records one message should carry: a collector with its default limits records
/// this many per message and dead-letters the rest (`too_many_gaps`). Our agent never sends
/// more.
pub const MAX_GAP_RECORDS: usize = 64;

/// Subscription filter covering every device.
pub const TOPIC_FILTER: &str = "gridmeter/v1/+/readings";

/// The topic a device publishes its readings on.
pub fn topic_for(device: &DeviceId) -> String {
    format!("{TOPIC_PREFIX}{device}/readings")
}

/// The device a topic belongs to.
pub fn device_from_topic(topic: &str) -> Result<DeviceId, BatchError> {
    let bad = |why: String| BatchError::Topic {
        topic: topic.chars().take(200).collect(),
        why,
    };
    let rest = topic
        .strip_prefix(TOPIC_PREFIX)
        .ok_or_else(|| bad(format!("does not start with {TOPIC_PREFIX:?}")))?;
    let id = rest
        .strip_suffix("/readings")
        .ok_or_else(|| bad("does not end with \"/readings\"".into()))?;
    DeviceId::new(id).map_err(|e| bad(format!("device_id {e}")))
}

/// Which encoding a payload used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Json,
    Compact,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Compact => "compact",
        }
    }
}

/// Bounds on what one message may make the decoder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload accepted, in bytes, before any parsing.
    pub max_payload_bytes: usize,
    /// Largest number of entries in one batch: readings plus gap records plus (compact
    /// encoding) series table entries.
    pub max_readings: usize,
    /// Largest decompressed size of a compact payload.
    pub max_decompressed_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload_bytes: 2 * 1024 * 1024,
            max_readings: 10_000,
            max_decompressed_bytes: 8 * 1024 * 1024,
        }
    }
}

/// What a message that could be read holds: good readings, gap records, and the readings
/// that failed validation (each with its index, field and reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub encoding: Encoding,
    pub device_id: DeviceId,
    pub readings: Vec<Reading>,
    pub gaps: Vec<Gap>,
    pub rejects: Vec<Reject>,
}

impl Decoded {
    /// The good part as a batch.
    pub fn into_batch(self) -> Batch {
        Batch {
            device_id: self.device_id,
            readings: self.readings,
            gaps: self.gaps,
        }
    }
}

/// A message that cannot be read at all. Its [`reason`](BatchError::reason) is a short,
/// stable label for metrics; `Display` is the full message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("payload is {size} bytes; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("payload is empty")]
    Empty,
    #[error("payload is not UTF-8: invalid byte at offset {offset}")]
    NotUtf8 { offset: usize },
    #[error("payload is not valid JSON: {message} at line {line} column {column}")]
    Json {
        message: String,
        line: usize,
        column: usize,
    },
    #[error("field {field}: {message}")]
    Field { field: String, message: String },
    #[error("batch holds {count} entries (readings, gap records, series); the limit is {limit}")]
    TooManyReadings { count: usize, limit: usize },
    #[error("compact payload: {0}")]
    Compact(String),
    #[error("topic {topic:?} {why}")]
    Topic { topic: String, why: String },
    #[error("topic names device {topic_device:?} but the payload says {payload_device:?}")]
    DeviceMismatch {
        topic_device: String,
        payload_device: String,
    },
}

impl BatchError {
    /// A stable, low-cardinality label (for metrics and dead-letter records).
    pub fn reason(&self) -> &'static str {
        match self {
            BatchError::TooLarge { .. } => "too_large",
            BatchError::Empty => "empty",
            BatchError::NotUtf8 { .. } => "not_utf8",
            BatchError::Json { .. } => "bad_json",
            BatchError::Field { .. } => "bad_field",
            BatchError::TooManyReadings { .. } => "too_many_readings",
            BatchError::Compact(_) => "bad_compact",
            BatchError::Topic { .. } => "bad_topic",
            BatchError::DeviceMismatch { .. } => "device_mismatch",
        }
    }
}

/// Decodes a payload of either encoding. Never panics; see [`Limits`].
pub fn decode(payload: &[u8], limits: &Limits) -> Result<Decoded, BatchError> {
    if payload.len() > limits.max_payload_bytes {
        return Err(BatchError::TooLarge {
            size: payload.len(),
            limit: limits.max_payload_bytes,
        });
    }
    match payload.first() {
        None => Err(BatchError::Empty),
        Some(&compact::MAGIC_FIRST) => compact::decode(payload, limits),
        Some(_) => json::decode(payload, limits),
    }
}

/// Decodes a payload received on `topic` and checks that the topic and the payload name the
/// same device, so that no device can speak for another.
pub fn decode_for_topic(
    topic: &str,
    payload: &[u8],
    limits: &Limits,
) -> Result<Decoded, BatchError> {
    let topic_device = device_from_topic(topic)?;
    let decoded = decode(payload, limits)?;
    if decoded.device_id != topic_device {
        return Err(BatchError::DeviceMismatch {
            topic_device: topic_device.to_string(),
            payload_device: decoded.device_id.to_string(),
        });
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests;
