//! Stage 5, reconcile: a priced channel's billed usage against its usage and the raw register
//! difference ([`crate::reconcile`] works the raw side out); the reconciliation row, the
//! reason to hold the customer on a mismatch, and the channel's meter table on the invoice.

use rust_decimal::Decimal;

use super::price::{Channel, Priced};
use crate::error::excerpt;
use crate::invoice::{Meter, Reading};
use crate::money::{fixed, QUALITY_SCALE, QUANTITY_SCALE};
use crate::quality::Quality;
use crate::reconcile::{RawSummary, Row};
use crate::tariff::Interval;

/// What reconciling one channel gives.
pub(crate) struct Reconciled {
    pub row: Row,
    /// Why the customer is held (`reconciliation: ...`), if anything disagrees.
    pub mismatch: Option<String>,
}

/// Reconciles a priced (non-gauge) channel; `raw` is its raw side when the raw
/// reconciliation is on.
pub(crate) fn reconcile_channel(
    ch: &Channel,
    priced: &Priced,
    raw: Option<&RawSummary>,
) -> Reconciled {
    let (s, usage) = (ch.series, priced.usage);
    let mut problems = priced.problems.clone();
    if let Some(r) = raw {
        let (left_usage, left_windows) = priced.left_out;
        if left_windows == 0 && r.difference != usage {
            problems.push(format!(
                "usage sum {usage} {} differs from the raw register difference {} ({} readings)",
                excerpt(&s.unit),
                r.difference,
                r.readings
            ));
        } else if usage - left_usage != r.difference - r.excluded {
            problems.push(format!(
                "usage sum {} {} without the {left_windows} edited/open-end windows and their estimated neighbours differs from the raw register difference {} without them ({} readings)",
                usage - left_usage,
                excerpt(&s.unit),
                r.difference - r.excluded,
                r.readings
            ));
        }
    }
    let mismatch =
        (!problems.is_empty()).then(|| format!("reconciliation: {}", problems.join("; ")));
    let note = match (raw, priced.left_out) {
        (Some(r), (left_usage, n)) if n > 0 => format!(
            "compared without {n} edited/open-end windows and their estimated neighbours (usage {}; raw {})",
            left_usage.normalize(),
            r.excluded.normalize()
        ),
        _ => String::new(),
    };
    Reconciled {
        row: Row {
            customer_id: ch.cust.c.id.clone(),
            site_id: ch.site.to_string(),
            device_id: ch.dev.id.to_string(),
            channel: ch.name.to_string(),
            kind: s.kind.clone(),
            unit: s.unit.clone(),
            multiplier: ch.dev.multiplier,
            usage,
            raw: raw.map(|r| r.difference),
            billed: priced.billed,
            problems,
            note,
        },
        mismatch,
    }
}

/// The raw side of a channel without readings.
pub(crate) fn no_readings() -> RawSummary {
    RawSummary {
        difference: Decimal::ZERO,
        readings: 0,
        start: None,
        end: None,
        events: Vec::new(),
        excluded: Decimal::ZERO,
    }
}

/// The invoice's meter table row of a reconciled channel.
pub(crate) fn meter(ch: &Channel, priced: &Priced, raw: Option<&RawSummary>) -> Meter {
    let (cu, d, s) = (ch.cust, ch.dev, ch.series);
    Meter {
        site_id: ch.site.to_string(),
        device_id: d.id.to_string(),
        channel: ch.name.to_string(),
        kind: s.kind.clone(),
        unit: s.unit.clone(),
        start: raw
            .and_then(|r| r.start.as_ref())
            .map(|v| Reading::new(v, cu.tz)),
        end: raw
            .and_then(|r| r.end.as_ref())
            .map(|v| Reading::new(v, cu.tz)),
        register_difference: raw.map(|r| fixed(r.difference, QUANTITY_SCALE)),
        events: raw
            .map(|r| r.events.iter().map(|e| e.to_string()).collect())
            .unwrap_or_default(),
        multiplier: d.multiplier.normalize().to_string(),
        billed_usage: fixed(priced.usage * d.multiplier, QUANTITY_SCALE),
        estimated_share: fixed(
            share(&priced.intervals, |q| q.is_estimated()),
            QUALITY_SCALE,
        ),
        edited_share: fixed(share(&priced.intervals, |q| q.is_edited()), QUALITY_SCALE),
    }
}

/// Share of the usage (absolute values) from the intervals whose quality `counts`
/// (estimated: [`Quality::is_estimated`], edited: [`Quality::is_edited`]), 4 places.
pub(crate) fn share(intervals: &[Interval], counts: impl Fn(Quality) -> bool) -> Decimal {
    let (part, total) = usage_split(intervals, counts);
    if total.is_zero() {
        return Decimal::ZERO;
    }
    (part / total).round_dp(QUALITY_SCALE)
}

/// (absolute usage of the intervals whose quality `counts`, absolute usage of all).
pub(crate) fn usage_split(
    intervals: &[Interval],
    counts: impl Fn(Quality) -> bool,
) -> (Decimal, Decimal) {
    intervals
        .iter()
        .fold((Decimal::ZERO, Decimal::ZERO), |(p, t), iv| {
            let a = iv.quantity.abs();
            (if counts(iv.quality) { p + a } else { p }, t + a)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quality::Method;
    use chrono::DateTime;

    #[test]
    fn estimated_share_of_absolute_usage() {
        let iv = |q: i64, quality: Quality| Interval {
            start: DateTime::from_timestamp(0, 0).unwrap(),
            quantity: Decimal::from(q),
            quality,
            revision: 1,
        };
        let est = |q: Quality| q.is_estimated();
        let edited = |q: Quality| q.is_edited();
        assert_eq!(share(&[], est), Decimal::ZERO);
        let m = Quality::MEASURED;
        let ivs = [
            iv(1, m),
            iv(2, m.with_edited()),
            iv(-1, Quality::estimated(Some(Method::History))),
        ];
        // |−1| estimated of 1 + 2 + |−1| = 4: 0.25; 2 edited of 4: 0.5.
        assert_eq!(share(&ivs, est), Decimal::new(25, 2));
        assert_eq!(share(&ivs, edited), Decimal::new(5, 1));
        assert_eq!(usage_split(&ivs, est), (Decimal::ONE, Decimal::from(4)));
    }
}
