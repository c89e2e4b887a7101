//! Billing periods: a local calendar month (`2026-10`) or a local date range
//! (`--from 2026-10-01 --to 2026-10-16`, end exclusive), turned into UTC bounds per customer
//! time zone.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Months, NaiveDate, Utc};
use chrono_tz::Tz;

use crate::registry::local_midnight;

/// A billing period in local dates: `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// Whether this is exactly one calendar month (labelled `YYYY-MM`).
    month: bool,
}

impl Period {
    pub fn month(year: i32, month: u32) -> Option<Period> {
        let from = NaiveDate::from_ymd_opt(year, month, 1)?;
        let to = from.checked_add_months(Months::new(1))?;
        Some(Period {
            from,
            to,
            month: true,
        })
    }

    /// Local dates `[from, to)`; `None` unless `from < to`.
    pub fn range(from: NaiveDate, to: NaiveDate) -> Option<Period> {
        if from >= to {
            return None;
        }
        let month = from.day() == 1 && from.checked_add_months(Months::new(1)) == Some(to);
        Some(Period { from, to, month })
    }

    /// `2026-10` for a month, `2026-10-01_2026-10-16` for a range: the export directory name.
    pub fn label(&self) -> String {
        if self.month {
            self.from.format("%Y-%m").to_string()
        } else {
            format!("{}_{}", self.from, self.to)
        }
    }

    /// The period's instants in `tz`: `[local midnight of from, local midnight of to)`.
    pub fn bounds(&self, tz: Tz) -> Result<(DateTime<Utc>, DateTime<Utc>), String> {
        Ok((local_midnight(self.from, tz)?, local_midnight(self.to, tz)?))
    }

    /// Each calendar month the period touches, with the number of the period's days in it and
    /// the month's length: the pro-rating basis of fixed charges.
    pub fn months(&self) -> Vec<(NaiveDate, NaiveDate)> {
        let mut out = Vec::new();
        let mut start = self.from;
        while start < self.to {
            let first = start.with_day(1).unwrap_or(start);
            let next = first.checked_add_months(Months::new(1)).unwrap_or(self.to);
            let end = next.min(self.to);
            out.push((start, end));
            start = end;
        }
        out
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

impl FromStr for Period {
    type Err = String;
    /// `YYYY-MM`.
    fn from_str(s: &str) -> Result<Period, String> {
        let bad = || format!("{s:?} is not a month like 2026-10");
        let (y, m) = s.split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 {
            return Err(bad());
        }
        Period::month(y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?).ok_or_else(bad)
    }
}

/// Days in the calendar month containing `d`.
pub fn days_in_month(d: NaiveDate) -> i64 {
    let first = d.with_day(1).unwrap_or(d);
    first
        .checked_add_months(Months::new(1))
        .map_or(30, |n| (n - first).num_days())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn month_bounds_follow_local_time() {
        let p: Period = "2026-10".parse().unwrap();
        let (a, b) = p.bounds(chrono_tz::Europe::Berlin).unwrap();
        assert_eq!(a.to_rfc3339(), "2026-09-30T22:00:00+00:00");
        assert_eq!(b.to_rfc3339(), "2026-10-31T23:00:00+00:00");
        assert_eq!(p.label(), "2026-10");
        let r = Period::range(
            NaiveDate::from_ymd_opt(2026, 10, 20).unwrap(),
            NaiveDate::from_ymd_opt(2026, 11, 3).unwrap(),
        )
        .unwrap();
        assert_eq!(r.label(), "2026-10-20_2026-11-03");
        assert_eq!(r.months().len(), 2);
        assert!("2026-13".parse::<Period>().is_err());
    }
}
