//! Time-of-use classification: which period of a time-of-use component a 15-minute interval
//! belongs to, by the local time of its start (weekday, hour, month, holidays).

use std::collections::BTreeSet;

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc, Weekday};
use chrono_tz::Tz;

use super::model::{weekday, TimeOfUse};

/// Assigns local times to time-of-use periods.
pub struct Classifier<'a> {
    tou: &'a TimeOfUse,
    holidays: BTreeSet<NaiveDate>,
    holiday: Option<usize>,
    pub(crate) default: usize,
    rules: Vec<(usize, Vec<Weekday>)>,
}

impl<'a> Classifier<'a> {
    pub fn new(tou: &'a TimeOfUse) -> Self {
        let idx = |name: &str| tou.periods.iter().position(|p| p.name == name).unwrap_or(0);
        Classifier {
            tou,
            holidays: tou
                .holidays
                .iter()
                .filter_map(|h| NaiveDate::parse_from_str(h, "%Y-%m-%d").ok())
                .collect(),
            holiday: tou.holiday_period.as_deref().map(idx),
            default: idx(&tou.default_period),
            rules: tou
                .rules
                .iter()
                .map(|r| {
                    (
                        idx(&r.period),
                        r.days.iter().filter_map(|d| weekday(d)).collect(),
                    )
                })
                .collect(),
        }
    }

    /// Index into `periods` of the period of the interval starting at `start` (local time).
    pub fn period(&self, start: DateTime<Utc>, tz: Tz) -> usize {
        let local = start.with_timezone(&tz);
        if let Some(h) = self.holiday {
            if self.holidays.contains(&local.date_naive()) {
                return h;
            }
        }
        let (hour, wd, month) = (local.hour(), local.weekday(), local.month());
        for ((p, days), r) in self.rules.iter().zip(&self.tou.rules) {
            let day_ok = days.is_empty() || days.contains(&wd);
            let month_ok = r.months.is_empty() || r.months.contains(&month);
            let hour_ok = if r.from_hour < r.to_hour {
                r.from_hour <= hour && hour < r.to_hour
            } else {
                hour >= r.from_hour || hour < r.to_hour
            };
            if day_ok && month_ok && hour_ok {
                return *p;
            }
        }
        self.default
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tou() -> TimeOfUse {
        toml::from_str(
            r#"
            name = "energy"
            quantity = "import_energy"
            unit = "kWh"
            default_period = "day"
            periods = [ { name = "day", rate = "0.20" }, { name = "early", rate = "0.10" }, { name = "eve", rate = "0.30" } ]
            rules = [ { period = "early", from_hour = 1, to_hour = 2 }, { period = "eve", from_hour = 22, to_hour = 6, months = [7] } ]
            holidays = ["2026-11-26"]
            holiday_period = "early"
            "#,
        )
        .unwrap()
    }

    #[test]
    fn new_york_25_hour_day() {
        // 2026-11-01 in America/New_York runs from 04:00Z (EDT) to 05:00Z next day (EST):
        // 100 intervals; local 01:00-02:00 happens twice -> 8 "early" intervals.
        let t = tou();
        let c = Classifier::new(&t);
        let start = DateTime::parse_from_rfc3339("2026-11-01T04:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let tz = chrono_tz::America::New_York;
        let periods: Vec<usize> = (0..100)
            .map(|i| c.period(start + chrono::Duration::minutes(15 * i), tz))
            .collect();
        assert_eq!(periods.iter().filter(|p| **p == 1).count(), 8);
        assert_eq!(periods.iter().filter(|p| **p == 0).count(), 92);
        // The wrapping 22-06 rule is limited to July; the holiday is all "early".
        let thanksgiving = DateTime::parse_from_rfc3339("2026-11-26T17:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(c.period(thanksgiving, tz), 1);
        let july_night = DateTime::parse_from_rfc3339("2026-07-10T03:00:00Z")
            .unwrap()
            .with_timezone(&Utc); // 23:00 EDT
        assert_eq!(c.period(july_night, tz), 2);
    }
}
