//! Field checks shared by both encodings, so JSON and compact accept exactly the same batches,
//! and by the agent ([`check_reading`]), so it never buffers a reading the collector refuses.
//!
//! Every message quotes offending input only through [`excerpt`]: at most 64 characters and
//! the length, however long the input.

use std::fmt;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use crate::model::{Channel, Gap, GapReason, Quality, VALUE_SCALE};
use crate::text::{clip, excerpt, prefix, MESSAGE_CHARS};

/// Most bytes of an element kept in [`Reject::raw`].
pub const REJECT_RAW_BYTES: usize = 1024;

/// One element of a batch (a reading or a gap record) that failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// `"readings"` or `"gaps"`.
    pub section: &'static str,
    /// Index of the element in its array.
    pub index: usize,
    /// The offending field, if the problem is one field.
    pub field: Option<&'static str>,
    /// What is wrong, at most a few hundred characters.
    pub message: String,
    /// The element as it arrived (JSON text, or a description for compact), at most
    /// [`REJECT_RAW_BYTES`].
    pub raw: String,
}

impl Reject {
    pub(crate) fn new(
        section: &'static str,
        index: usize,
        field: Option<&'static str>,
        message: impl Into<String>,
        raw: &str,
    ) -> Self {
        let message = message.into();
        Reject {
            section,
            index,
            field,
            message: clip(&message, MESSAGE_CHARS),
            raw: prefix(raw, REJECT_RAW_BYTES).to_string(),
        }
    }

    /// A stable, low-cardinality label for metrics: `bad_<field>` or `bad_reading`.
    pub fn reason(&self) -> String {
        match self.field {
            Some(f) => format!("bad_{f}"),
            None => format!("bad_{}", self.section.trim_end_matches('s')),
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.section, self.index)?;
        if let Some(field) = self.field {
            write!(f, ".{field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A reading the collector would refuse: the field and why (see [`check_reading`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    /// `channel`, `unit`, `value` or `ts`.
    pub field: &'static str,
    /// What is wrong (bounded, see [`excerpt`]).
    pub message: String,
}

impl Invalid {
    /// The collector's dead-letter reason for it: `bad_<field>`.
    pub fn reason(&self) -> String {
        format!("bad_{}", self.field)
    }
}

/// Checks a reading's fields exactly as the collector's decoders do (both encodings), so an
/// agent can refuse at the edge what would otherwise end in the dead letters. `ts` is sent
/// with microsecond precision (finer parts are dropped by the encoders).
pub fn check_reading(
    channel: &str,
    unit: &str,
    value: Decimal,
    ts: DateTime<Utc>,
) -> Result<(), Invalid> {
    let bad = |field, message| Invalid { field, message };
    self::channel(channel).map_err(|m| bad("channel", m))?;
    self::unit(unit).map_err(|m| bad("unit", m))?;
    self::value(value).map_err(|m| bad("value", m))?;
    ts_from_micros(ts.timestamp_micros()).map_err(|m| bad("ts", m))?;
    Ok(())
}

/// Checks a unit as the decoders do: 1 to 32 characters, no white space or control
/// characters (e.g. `Wh`, `W`, `s`, `B`, or `1` for a dimensionless count).
pub fn check_unit(s: &str) -> Result<(), String> {
    unit(s).map(|_| ())
}

pub(crate) fn channel(s: &str) -> Result<Channel, String> {
    // Checked before it is copied into a `Channel`: a 1 MB name is refused without a copy.
    if s.len() > 256 {
        return Err(format!(
            "{} is {} bytes long; at most 64 characters are allowed",
            excerpt(s),
            s.len()
        ));
    }
    Channel::new(s).map_err(|e| format!("{} {e}", excerpt(s)))
}

pub(crate) fn unit(s: &str) -> Result<String, String> {
    let n = if s.len() > 256 {
        s.len()
    } else {
        s.chars().count()
    };
    if n == 0 || n > 32 {
        return Err(format!("must be 1 to 32 characters, got {n}"));
    }
    if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "{} contains white space or a control character",
            excerpt(s)
        ));
    }
    Ok(s.to_string())
}

pub(crate) fn value(d: Decimal) -> Result<Decimal, String> {
    let d = d.normalize();
    if d.scale() > VALUE_SCALE {
        return Err(format!("{d} has more than {VALUE_SCALE} decimal places"));
    }
    Ok(d)
}

pub(crate) fn ts_from_rfc3339(s: &str) -> Result<DateTime<Utc>, String> {
    let bad = |why: String| {
        format!(
            "{} is not an RFC 3339 timestamp with an offset: {why}",
            excerpt(s)
        )
    };
    if s.len() > 64 {
        return Err(bad("too long".into()));
    }
    let t = DateTime::parse_from_rfc3339(s).map_err(|e| bad(e.to_string()))?;
    let t = t.with_timezone(&Utc);
    if t.timestamp_subsec_nanos() % 1000 != 0 {
        return Err(format!("{} is finer than a microsecond", excerpt(s)));
    }
    Ok(t)
}

pub(crate) fn ts_from_micros(us: i64) -> Result<DateTime<Utc>, String> {
    DateTime::from_timestamp_micros(us).ok_or_else(|| format!("{us} µs is out of range"))
}

pub(crate) fn quality_from_names<'a>(
    names: impl IntoIterator<Item = &'a str>,
) -> Result<Quality, String> {
    let mut q = Quality::GOOD;
    for n in names {
        let flag = Quality::from_name(n).ok_or_else(|| {
            let known: Vec<_> = Quality::NAMES.iter().map(|(_, n)| *n).collect();
            format!(
                "unknown quality flag {}; known are {}",
                excerpt(n),
                known.join(", ")
            )
        })?;
        q = q.with(flag);
    }
    Ok(q)
}

pub(crate) fn gap(from_seq: u64, to_seq: u64, reason: &str) -> Result<Gap, (&'static str, String)> {
    if from_seq > to_seq {
        return Err((
            "to_seq",
            format!("to_seq {to_seq} is below from_seq {from_seq}"),
        ));
    }
    let reason = GapReason::from_name(reason).ok_or_else(|| {
        (
            "reason",
            format!(
                "unknown gap reason {}; known are buffer_full, buffer_corrupt",
                excerpt(reason)
            ),
        )
    })?;
    Ok(Gap {
        from_seq,
        to_seq,
        reason,
    })
}
