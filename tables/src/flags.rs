//! The flags of readings and usage rows: one bit scheme for every table.
//!
//! A raw reading's quality ([`Quality`], set by the device or agent and carried by the wire
//! format) occupies the low bits; the flags the aggregator derives for a usage window follow.
//! The same bit means the same thing everywhere (`Flags::from(Quality::ESTIMATED) ==
//! Flags::ESTIMATED`). In the tables flags are written as their names, comma-separated and
//! sorted ([`Flags::names`]), so SQL readers can test them by name; code parses them with
//! [`Flags::parse`] and tests bits, never substrings.
//!
//! Validation, estimation and editing (VEE) add three groups: `edited` (a billing-team edit,
//! audited in the `edits` table), the estimation method of an `estimated` row
//! (`method_linear`, `method_history`, `method_standard_profile`, `method_open_end`; at most
//! one, [`Flags::method`]) and one flag per validation rule (`rule_*`, the `exceptions` table
//! has a row per failure). Rows written without VEE configured carry none of them.

use std::fmt;
use std::ops::{BitAnd, BitOr, BitOrAssign, Not};

pub use gridmeter_core::{Kind, Quality};

/// A set of flags (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Flags(u32);

impl Flags {
    /// No flag: a measured, complete value.
    pub const NONE: Flags = Flags(0);
    /// Estimated, not measured (by the device, or by the aggregator across a gap or a
    /// decreasing register).
    pub const ESTIMATED: Flags = Flags(Quality::ESTIMATED.bits() as u32);
    /// The agent's clock was not trustworthy for a reading in the window.
    pub const CLOCK_SUSPECT: Flags = Flags(Quality::CLOCK_SUSPECT.bits() as u32);
    /// The device reported an error for the register (raw readings only: a usage window
    /// over such a reading is flagged [`Flags::ESTIMATED`]).
    pub const DEVICE_ERROR: Flags = Flags(Quality::DEVICE_ERROR.bits() as u32);
    /// The window is not fully covered by readings at most `max_gap` apart.
    pub const GAP: Flags = Flags(1 << 3);
    /// A window boundary fell between two readings: its register value is interpolated.
    pub const INTERPOLATED: Flags = Flags(1 << 4);
    /// This revision was written because late data changed the window.
    pub const LATE: Flags = Flags(1 << 5);
    /// The register restarted (meter swap or reset to near zero).
    pub const RESET: Flags = Flags(1 << 6);
    /// The register wrapped past its maximum.
    pub const ROLLOVER: Flags = Flags(1 << 7);
    /// This revision carries a billing-team edit (`edits` table).
    pub const EDITED: Flags = Flags(1 << 8);
    /// Estimated by straight-line interpolation between the readings on both sides.
    pub const METHOD_LINEAR: Flags = Flags(1 << 9);
    /// Estimated by the shape of the same meter's own history (same weekday and time of
    /// the last weeks), scaled to the register difference.
    pub const METHOD_HISTORY: Flags = Flags(1 << 10);
    /// Estimated by the standard load profile of the device class (BDEW H0/G0), scaled to
    /// the register difference.
    pub const METHOD_STANDARD_PROFILE: Flags = Flags(1 << 11);
    /// Estimated past the last reading up to the period end (no reading after it yet).
    pub const METHOD_OPEN_END: Flags = Flags(1 << 12);
    /// Validation: the interval usage was above the high limit.
    pub const RULE_HIGH_LIMIT: Flags = Flags(1 << 13);
    /// Validation: the interval usage was below the low limit.
    pub const RULE_LOW_LIMIT: Flags = Flags(1 << 14);
    /// Validation: the interval usage was above k times the trailing median.
    pub const RULE_SPIKE: Flags = Flags(1 << 15);
    /// Validation: the register did not move for N hours while usage was expected.
    pub const RULE_STUCK: Flags = Flags(1 << 16);
    /// Validation: negative consumption (a decreasing register or reverse flow).
    pub const RULE_NEGATIVE: Flags = Flags(1 << 17);
    /// Validation: a rollover implying more usage than is plausible.
    pub const RULE_ROLLOVER: Flags = Flags(1 << 18);
    /// Validation: readings further apart than the rule allows.
    pub const RULE_TIMESTAMP_GAP: Flags = Flags(1 << 19);
    /// Validation: a gauge reading outside its physical range.
    pub const RULE_GAUGE_RANGE: Flags = Flags(1 << 20);

    /// The estimation methods (at most one is set on a row).
    pub const METHODS: Flags = Flags((1 << 9) | (1 << 10) | (1 << 11) | (1 << 12));
    /// The validation rule flags.
    pub const RULES: Flags = Flags(0xff << 13);

    /// Every flag with its name, in name order (the order of [`Flags::names`]).
    pub const NAMES: [(Flags, &'static str); 21] = [
        (Flags::CLOCK_SUSPECT, "clock_suspect"),
        (Flags::DEVICE_ERROR, "device_error"),
        (Flags::EDITED, "edited"),
        (Flags::ESTIMATED, "estimated"),
        (Flags::GAP, "gap"),
        (Flags::INTERPOLATED, "interpolated"),
        (Flags::LATE, "late"),
        (Flags::METHOD_HISTORY, "method_history"),
        (Flags::METHOD_LINEAR, "method_linear"),
        (Flags::METHOD_OPEN_END, "method_open_end"),
        (Flags::METHOD_STANDARD_PROFILE, "method_standard_profile"),
        (Flags::RESET, "reset"),
        (Flags::ROLLOVER, "rollover"),
        (Flags::RULE_GAUGE_RANGE, "rule_gauge_range"),
        (Flags::RULE_HIGH_LIMIT, "rule_high_limit"),
        (Flags::RULE_LOW_LIMIT, "rule_low_limit"),
        (Flags::RULE_NEGATIVE, "rule_negative"),
        (Flags::RULE_ROLLOVER, "rule_rollover"),
        (Flags::RULE_SPIKE, "rule_spike"),
        (Flags::RULE_STUCK, "rule_stuck"),
        (Flags::RULE_TIMESTAMP_GAP, "rule_timestamp_gap"),
    ];

    /// The estimation method of a row, by name (`linear`, `history`, `standard_profile`,
    /// `open_end`), if one is set: the flag name without its `method_` prefix.
    pub fn method(self) -> Option<&'static str> {
        self.names().find_map(|n| n.strip_prefix("method_"))
    }

    /// The bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether any flag of `other` is set.
    pub const fn intersects(self, other: Flags) -> bool {
        self.0 & other.0 != 0
    }

    /// Whether no flag is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// What a reading's quality contributes to the flags of a usage window: `estimated`
    /// for an estimated reading or a device error, `clock_suspect` for a suspect clock.
    pub fn of_reading(q: Quality) -> Flags {
        let mut f = Flags::NONE;
        if q.contains(Quality::ESTIMATED) || q.contains(Quality::DEVICE_ERROR) {
            f |= Flags::ESTIMATED;
        }
        if q.contains(Quality::CLOCK_SUSPECT) {
            f |= Flags::CLOCK_SUSPECT;
        }
        f
    }

    /// The names of the set flags, sorted.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Flags::NAMES
            .into_iter()
            .filter(move |(f, _)| self.contains(*f))
            .map(|(_, n)| n)
    }

    /// Parses the comma-separated form of a table's `flags` or `quality` column. Unknown
    /// names are an error naming them (at most 64 characters of the text are quoted).
    pub fn parse(text: &str) -> Result<Flags, String> {
        let mut out = Flags::NONE;
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match Flags::NAMES.iter().find(|(_, n)| *n == name) {
                Some((f, _)) => out |= *f,
                None => {
                    return Err(format!(
                        "unknown flag {} (known: {})",
                        gridmeter_core::text::excerpt(name),
                        Flags::NAMES.map(|(_, n)| n).join(", ")
                    ))
                }
            }
        }
        Ok(out)
    }

    /// [`Flags::parse`] that ignores unknown names (for reading tables written by a newer
    /// version that knows more flags).
    pub fn parse_lenient(text: &str) -> Flags {
        text.split(',')
            .filter_map(|n| Flags::NAMES.iter().find(|(_, name)| *name == n.trim()))
            .fold(Flags::NONE, |acc, (f, _)| acc | *f)
    }
}

impl From<Quality> for Flags {
    /// The same bits ([`Quality`] is the low part of [`Flags`]).
    fn from(q: Quality) -> Flags {
        Flags(q.bits() as u32)
    }
}

impl fmt::Display for Flags {
    /// Comma-separated names, sorted; empty for no flag.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, n) in self.names().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(n)?;
        }
        Ok(())
    }
}

impl BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

impl BitOrAssign for Flags {
    fn bitor_assign(&mut self, rhs: Flags) {
        self.0 |= rhs.0;
    }
}

impl BitAnd for Flags {
    type Output = Flags;
    fn bitand(self, rhs: Flags) -> Flags {
        Flags(self.0 & rhs.0)
    }
}

impl Not for Flags {
    type Output = Flags;
    fn not(self) -> Flags {
        Flags(!self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quality_bits_are_the_low_flag_bits() {
        for (q, name) in Quality::NAMES {
            let f = Flags::from(q);
            assert_eq!(f.names().collect::<Vec<_>>(), vec![name]);
            assert_eq!(Flags::parse(name).unwrap(), f);
        }
        let known = Flags::NAMES.iter().fold(0u32, |acc, (f, _)| {
            assert_eq!(acc & f.bits(), 0, "bits overlap");
            acc | f.bits()
        });
        assert_eq!(known.count_ones() as usize, Flags::NAMES.len());
    }

    #[test]
    fn text_round_trips_sorted() {
        let f = Flags::ROLLOVER | Flags::GAP | Flags::ESTIMATED;
        assert_eq!(f.to_string(), "estimated,gap,rollover");
        assert_eq!(Flags::parse(&f.to_string()).unwrap(), f);
        assert_eq!(Flags::parse("").unwrap(), Flags::NONE);
        assert!(Flags::parse("gap,bogus").unwrap_err().contains("bogus"));
        assert_eq!(Flags::parse_lenient("gap,bogus"), Flags::GAP);
        // "interpolated" must not be found inside another name by accident.
        assert!(!Flags::parse("gap").unwrap().intersects(Flags::INTERPOLATED));
    }

    #[test]
    fn a_reading_contributes_estimated_and_clock_suspect() {
        let q = Quality::DEVICE_ERROR.with(Quality::CLOCK_SUSPECT);
        assert_eq!(
            Flags::of_reading(q),
            Flags::ESTIMATED | Flags::CLOCK_SUSPECT
        );
        assert_eq!(Flags::of_reading(Quality::GOOD), Flags::NONE);
    }
}
