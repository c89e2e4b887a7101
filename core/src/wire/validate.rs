//! Field checks shared by both encodings, so JSON and compact accept exactly the same batches.

use std::fmt;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use crate::model::{Channel, Gap, GapReason, Quality, VALUE_SCALE};

/// One element of a batch (a reading or a gap record) that failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// `"readings"` or `"gaps"`.
    pub section: &'static str,
    /// Index of the element in its array.
    pub index: usize,
    /// The offending field, if the problem is one field.
    pub field: Option<&'static str>,
    pub message: String,
    /// The element as it arrived (JSON text, or a description for compact), at most 1 KiB.
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
        let mut raw = raw.to_string();
        if raw.len() > 1024 {
            let mut cut = 1024;
            while !raw.is_char_boundary(cut) {
                cut -= 1;
            }
            raw.truncate(cut);
        }
        Reject {
            section,
            index,
            field,
            message: message.into(),
            raw,
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

pub(crate) fn channel(s: &str) -> Result<Channel, String> {
    Channel::new(s).map_err(|e| format!("{s:?} {e}"))
}

pub(crate) fn unit(s: &str) -> Result<String, String> {
    let n = s.chars().count();
    if n == 0 || n > 32 {
        return Err(format!("must be 1 to 32 characters, got {n}"));
    }
    if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!("{s:?} contains white space or a control character"));
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
    let t = DateTime::parse_from_rfc3339(s)
        .map_err(|e| format!("{s:?} is not an RFC 3339 timestamp with an offset: {e}"))?;
    let t = t.with_timezone(&Utc);
    if t.timestamp_subsec_nanos() % 1000 != 0 {
        return Err(format!("{s:?} is finer than a microsecond"));
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
            format!("unknown quality flag {n:?}; known are {}", known.join(", "))
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
            format!("unknown gap reason {reason:?}; known are buffer_full, buffer_corrupt"),
        )
    })?;
    Ok(Gap {
        from_seq,
        to_seq,
        reason,
    })
}
