//! The reading model shared by every component.
//!
//! A [`Reading`] is one measured value of one channel of one device at one instant.
//! `(device_id, seq)` is a reading's identity everywhere: the agent assigns `seq` from a
//! per-device counter that survives restarts, the collector deduplicates on it, the
//! aggregator and the billing export reconcile on it.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Largest number of decimal places a reading value may carry (Parquet `Decimal128(38, 9)`).
pub const VALUE_SCALE: u32 = 9;

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("is empty")]
    Empty,
    #[error("is {0} characters long; at most {1} are allowed")]
    TooLong(usize, usize),
    #[error("contains {0:?} at position {1}; allowed are {2}")]
    BadChar(char, usize, &'static str),
}

fn check_id(s: &str, allowed: fn(char) -> bool, allowed_desc: &'static str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    let n = s.chars().count();
    if n > 64 {
        return Err(IdError::TooLong(n, 64));
    }
    if let Some((i, c)) = s.chars().enumerate().find(|(_, c)| !allowed(*c)) {
        return Err(IdError::BadChar(c, i, allowed_desc));
    }
    Ok(())
}

/// A device identifier: `[A-Za-z0-9._-]{1,64}`. It is also the CN of the device's client
/// certificate and the second level of its MQTT topic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceId(String);

impl DeviceId {
    pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        check_id(
            &s,
            |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'),
            "[A-Za-z0-9._-]",
        )?;
        Ok(DeviceId(s))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A channel name: `[a-z0-9_.]{1,64}`, e.g. `energy_import` or `net.eth0.rx_bytes`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Channel(Arc<str>);

impl Channel {
    pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        check_id(
            &s,
            |c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.'),
            "[a-z0-9_.]",
        )?;
        Ok(Channel(Arc::from(s)))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! string_newtype_impls {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl TryFrom<String> for $t {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                <$t>::new(s)
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                String::from(&*v.0)
            }
        }
        impl FromStr for $t {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                <$t>::new(s)
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}
string_newtype_impls!(DeviceId);
string_newtype_impls!(Channel);

/// What a value means over time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A cumulative register (e.g. Wh imported since installation); may roll over or reset.
    Counter,
    /// Usage since the previous reading of the same channel.
    Delta,
    /// An instantaneous value (W, V, CPU %).
    Gauge,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Counter, Kind::Delta, Kind::Gauge];
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Delta => "delta",
            Kind::Gauge => "gauge",
        }
    }
    pub fn code(self) -> u8 {
        match self {
            Kind::Counter => 0,
            Kind::Delta => 1,
            Kind::Gauge => 2,
        }
    }
    pub fn from_code(c: u8) -> Option<Kind> {
        Kind::ALL.get(c as usize).copied()
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown kind {}; expected counter, delta or gauge",
                    crate::text::excerpt(s)
                )
            })
    }
}

/// Quality flags the device or agent attached to a reading. Empty means "measured, good".
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Quality(u16);

impl Quality {
    /// The value was estimated by the device, not measured.
    pub const ESTIMATED: Quality = Quality(1);
    /// The agent's clock was not trustworthy when the reading was stamped (jumped backwards,
    /// or far from the broker's idea of now).
    pub const CLOCK_SUSPECT: Quality = Quality(2);
    /// The device reported an error state or an out-of-range value for this register.
    pub const DEVICE_ERROR: Quality = Quality(4);

    pub const NAMES: [(Quality, &'static str); 3] = [
        (Quality::ESTIMATED, "estimated"),
        (Quality::CLOCK_SUSPECT, "clock_suspect"),
        (Quality::DEVICE_ERROR, "device_error"),
    ];

    pub const GOOD: Quality = Quality(0);

    pub const fn bits(self) -> u16 {
        self.0
    }
    /// Flags from their bit pattern; unknown bits are an error.
    pub fn from_bits(bits: u16) -> Option<Quality> {
        let known = Self::NAMES.iter().fold(0, |acc, (q, _)| acc | q.0);
        (bits & !known == 0).then_some(Quality(bits))
    }
    pub fn contains(self, other: Quality) -> bool {
        self.0 & other.0 == other.0
    }
    pub fn is_good(self) -> bool {
        self.0 == 0
    }
    pub fn with(self, other: Quality) -> Quality {
        Quality(self.0 | other.0)
    }
    pub fn from_name(name: &str) -> Option<Quality> {
        Self::NAMES
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(q, _)| *q)
    }
    /// Flag names in a fixed order.
    pub fn names(self) -> Vec<&'static str> {
        Self::NAMES
            .iter()
            .filter(|(q, _)| self.contains(*q))
            .map(|(_, n)| *n)
            .collect()
    }
}

impl fmt::Display for Quality {
    /// Comma-separated flag names, empty for good readings (the form used in Parquet).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(","))
    }
}

/// One measured value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    pub seq: u64,
    /// Event time, UTC, microsecond precision.
    pub ts: DateTime<Utc>,
    pub channel: Channel,
    pub kind: Kind,
    /// Shared: the readings of a batch refer to a few (channel, unit) pairs, so cloning a
    /// reading or decoding a batch does not allocate per reading.
    pub unit: Arc<str>,
    /// Exact decimal with at most [`VALUE_SCALE`] decimal places.
    pub value: Decimal,
    pub quality: Quality,
}

/// Why a range of sequence numbers will never arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GapReason {
    /// The agent's disk budget was exhausted and the oldest readings were dropped.
    BufferFull,
    /// The agent's buffer was corrupt and was set aside; these seqs may be lost.
    BufferCorrupt,
}

impl GapReason {
    pub fn as_str(self) -> &'static str {
        match self {
            GapReason::BufferFull => "buffer_full",
            GapReason::BufferCorrupt => "buffer_corrupt",
        }
    }
    pub fn from_name(s: &str) -> Option<GapReason> {
        [GapReason::BufferFull, GapReason::BufferCorrupt]
            .into_iter()
            .find(|g| g.as_str() == s)
    }
}

impl fmt::Display for GapReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A record sent by an agent: the seqs `from_seq..=to_seq` were assigned and then lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Gap {
    pub from_seq: u64,
    pub to_seq: u64,
    pub reason: GapReason,
}

impl Gap {
    /// Number of seqs in the range; saturates at `u64::MAX` (`0..=u64::MAX` holds 2^64).
    pub fn len(&self) -> u64 {
        self.to_seq.saturating_sub(self.from_seq).saturating_add(1)
    }
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// What one MQTT message carries: readings (and gap records) of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub device_id: DeviceId,
    pub readings: Vec<Reading>,
    pub gaps: Vec<Gap>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(DeviceId::new("inv-042").is_ok());
        assert!(DeviceId::new("a.b_c-D9").is_ok());
        assert_eq!(DeviceId::new(""), Err(IdError::Empty));
        assert!(matches!(
            DeviceId::new("a/b"),
            Err(IdError::BadChar('/', 1, _))
        ));
        assert!(matches!(
            DeviceId::new("x".repeat(65)),
            Err(IdError::TooLong(65, 64))
        ));
        assert!(Channel::new("energy_import").is_ok());
        assert!(matches!(
            Channel::new("Energy"),
            Err(IdError::BadChar('E', 0, _))
        ));
        assert!(matches!(
            Channel::new("a-b"),
            Err(IdError::BadChar('-', 1, _))
        ));
    }

    #[test]
    fn quality_names_round_trip() {
        let q = Quality::ESTIMATED.with(Quality::DEVICE_ERROR);
        assert_eq!(q.to_string(), "estimated,device_error");
        assert_eq!(Quality::from_bits(q.bits()), Some(q));
        assert_eq!(Quality::from_bits(0x100), None);
        assert_eq!(Quality::GOOD.to_string(), "");
    }
}
