//! The hold rules of `[hold]` ([`HoldRules`]), judged per customer after its channels are
//! priced: a customer whose bill needs a review is held like one whose data cannot be billed
//! (its reasons go to `exceptions.csv`, no invoice is issued, earlier exported lines stay in
//! the ledger), and everyone else is billed.
//!
//! - **Estimated share** (`max_estimated_share`): the share of the customer's billed energy
//!   (the Wh and kWh channels its tariff prices, absolute usage in Wh, multiplier applied)
//!   from intervals flagged `estimated` is above the limit.
//! - **Open exception** (`exception_severity`): a row of the aggregator's `exceptions` table
//!   for a 15-minute window of a billed channel in its billed range, of that severity or above
//!   (a severity this version does not know counts as critical), is open: the current usage
//!   row of its window has the exception's revision (the failure describes the usage billed
//!   now; a later revision was validated again and has its own rows) and that row is not
//!   flagged `edited` (an edit is the billing team's resolution of the window).

use chrono::DateTime;
use rust_decimal::Decimal;

use crate::config::HoldRules;
use crate::error::excerpt;
use crate::exceptions::{HOLD_ESTIMATED_SHARE, HOLD_OPEN_EXCEPTION};
use crate::statement::iso;
use crate::tables::{Failure, Series, Usage};
use crate::tariff::Interval;
use gridmeter_tables::exceptions::Severity;

/// Where a hold reason points: (site, device, channel), empty for the whole customer.
pub(crate) type Place = (String, String, String);

/// The estimated and total billed energy of a customer, channel by channel.
#[derive(Default)]
pub(crate) struct EnergyTally {
    estimated_wh: Decimal,
    total_wh: Decimal,
    /// The channel with the most estimated energy: its place, estimated Wh, estimated
    /// windows and the first and last of them (µs).
    top: Option<(Place, Decimal, usize, i64, i64)>,
}

impl EnergyTally {
    /// Adds a priced channel's intervals (multiplier applied) in its unit `unit`; channels
    /// that are not energy in Wh or kWh are not counted.
    pub fn add(&mut self, place: Place, unit: &str, intervals: &[Interval]) {
        let Some(to_wh) = crate::units::factor(unit, "Wh").filter(|_| matches!(unit, "Wh" | "kWh"))
        else {
            return;
        };
        let (mut est, mut windows, mut first, mut last) = (Decimal::ZERO, 0, i64::MAX, i64::MIN);
        for iv in intervals {
            let wh = (iv.quantity * to_wh).abs();
            self.total_wh += wh;
            if iv.quality.is_estimated() {
                est += wh;
                windows += 1;
                let t = iv.start.timestamp_micros();
                first = first.min(t);
                last = last.max(t);
            }
        }
        self.estimated_wh += est;
        if windows > 0 && self.top.as_ref().is_none_or(|t| est > t.1) {
            self.top = Some((place, est, windows, first, last));
        }
    }

    /// The estimated share of the billed energy, exact (not rounded); zero without energy.
    pub fn share(&self) -> Decimal {
        if self.total_wh.is_zero() {
            Decimal::ZERO
        } else {
            self.estimated_wh / self.total_wh
        }
    }
}

/// Percent with 2 places (`0.25` -> `25.00 %`).
fn pct(share: Decimal) -> String {
    let mut p = (share * Decimal::ONE_HUNDRED).round_dp(2);
    p.rescale(2);
    format!("{p} %")
}

/// The reason to hold a customer whose estimated share is above the limit, if it is.
pub(crate) fn estimated_share(rules: &HoldRules, tally: &EnergyTally) -> Option<(Place, String)> {
    let limit = rules.max_estimated_share?;
    let share = tally.share();
    if share <= limit {
        return None;
    }
    let (place, est, windows, first, last) = tally.top.clone()?;
    let at = |us: i64| iso(DateTime::from_timestamp_micros(us).unwrap_or_default());
    Some((
        place,
        format!(
            "{HOLD_ESTIMATED_SHARE}: {} of the billed energy is estimated ({} of {} Wh), above the limit of {}; this channel has {} estimated Wh in {windows} windows from {} to {}",
            pct(share),
            tally.estimated_wh.normalize(),
            tally.total_wh.normalize(),
            pct(limit),
            est.normalize(),
            at(first),
            at(last + 900_000_000),
        ),
    ))
}

/// Whether `f` is open: the current row of its window has its revision and is not edited.
pub(crate) fn is_open(usage: &Usage, series: &Series, f: &Failure) -> bool {
    usage
        .current(series, f.row.window_start)
        .is_some_and(|(rev, q)| rev == f.row.revision && !q.is_edited())
}

/// The reasons to hold a customer for the open exceptions of one billed channel at or above
/// the configured severity: one per rule, naming its first open window, what was observed
/// against the threshold, and how many windows are open.
pub(crate) fn open_exceptions(
    rules: &HoldRules,
    usage: &Usage,
    series: &Series,
    failures: &[Failure],
) -> Vec<String> {
    let Some(min) = rules.severity() else {
        return Vec::new();
    };
    let mut open: Vec<&Failure> = failures
        .iter()
        .filter(|f| Severity::from_name(&f.row.severity).unwrap_or(Severity::Critical) >= min)
        .filter(|f| is_open(usage, series, f))
        .collect();
    open.sort_by(|a, b| (&a.row.rule, a.row.window_start).cmp(&(&b.row.rule, b.row.window_start)));
    let dec = |v: Option<i128>| {
        v.and_then(|v| {
            Decimal::try_from_i128_with_scale(v, gridmeter_core::model::VALUE_SCALE).ok()
        })
        .map_or_else(|| "none".to_string(), |d| d.normalize().to_string())
    };
    let at = |us: i64| iso(DateTime::from_timestamp_micros(us).unwrap_or_default());
    let mut out = Vec::new();
    for group in open.chunk_by(|a, b| a.row.rule == b.row.rule) {
        let (first, last) = (group[0], group[group.len() - 1]);
        let r = &first.row;
        out.push(format!(
            "{HOLD_OPEN_EXCEPTION}: open {} exception {} on window {} to {} (observed {}, threshold {}, action {}, usage revision {}); {} open window(s) of this rule up to {}",
            excerpt(&r.severity),
            excerpt(&r.rule),
            at(r.window_start),
            at(r.window_end),
            dec(r.observed),
            dec(r.threshold),
            excerpt(&r.action),
            r.revision,
            group.len(),
            at(last.row.window_end),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quality::{Method, Quality};
    use chrono::Utc;

    fn iv(min: i64, wh: i64, quality: Quality) -> Interval {
        Interval {
            start: DateTime::<Utc>::from_timestamp(min * 60, 0).unwrap(),
            quantity: Decimal::from(wh),
            quality,
            revision: 1,
        }
    }

    #[test]
    fn estimated_share_counts_energy_in_wh_and_only_estimated_intervals() {
        let mut t = EnergyTally::default();
        let est = Quality::estimated(Some(Method::OpenEnd));
        let place = |d: &str| (String::new(), d.to_string(), "e".to_string());
        // 1 kWh of 4 estimated on a kWh channel: 1,000 of 4,000 Wh.
        t.add(
            place("a"),
            "kWh",
            &[iv(0, 1, est), iv(15, 3, Quality::MEASURED.with_edited())],
        );
        // Water is not energy: not counted.
        t.add(place("w"), "L", &[iv(0, 100, est)]);
        assert_eq!(t.share(), Decimal::new(25, 2));
        let mut rules = HoldRules {
            max_estimated_share: Some(Decimal::new(20, 2)),
            exception_severity: None,
        };
        let (p, why) = estimated_share(&rules, &t).unwrap();
        assert_eq!(p.1, "a");
        assert!(why.starts_with("hold rule max_estimated_share: 25.00 % of the billed energy is estimated (1000 of 4000 Wh), above the limit of 20.00 %"), "{why}");
        assert!(
            why.contains(
                "1000 estimated Wh in 1 windows from 1970-01-01T00:00:00Z to 1970-01-01T00:15:00Z"
            ),
            "{why}"
        );
        // At the limit exactly: billed.
        rules.max_estimated_share = Some(Decimal::new(25, 2));
        assert!(estimated_share(&rules, &t).is_none());
        rules.max_estimated_share = None;
        assert!(estimated_share(&rules, &t).is_none());
    }
}
