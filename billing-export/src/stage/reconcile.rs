//! Stage 5, reconcile: a priced channel's billed usage against its usage and the raw register
//! difference ([`crate::reconcile`] works the raw side out); the reconciliation row, the
//! reason to hold the customer on a mismatch, and the channel's meter table on the invoice.

use rust_decimal::Decimal;

use super::price::{Channel, Priced};
use crate::error::excerpt;
use crate::invoice::{Meter, Reading};
use crate::money::{fixed, QUALITY_SCALE, QUANTITY_SCALE};
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
        if r.difference != usage {
            problems.push(format!(
                "usage sum {usage} {} differs from the raw register difference {} ({} readings)",
                excerpt(&s.unit),
                r.difference,
                r.readings
            ));
        }
    }
    let mismatch =
        (!problems.is_empty()).then(|| format!("reconciliation: {}", problems.join("; ")));
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
        estimated_share: fixed(estimated_share(&priced.intervals), QUALITY_SCALE),
    }
}

/// Share of the usage (absolute values) from estimated or interpolated intervals.
pub(crate) fn estimated_share(intervals: &[Interval]) -> Decimal {
    let total: Decimal = intervals.iter().map(|iv| iv.quantity.abs()).sum();
    if total.is_zero() {
        return Decimal::ZERO;
    }
    let est: Decimal = intervals
        .iter()
        .filter(|iv| iv.estimated)
        .map(|iv| iv.quantity.abs())
        .sum();
    (est / total).round_dp(QUALITY_SCALE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    #[test]
    fn estimated_share_of_absolute_usage() {
        let iv = |q: i64, estimated: bool| Interval {
            start: DateTime::from_timestamp(0, 0).unwrap(),
            quantity: Decimal::from(q),
            estimated,
            revision: 1,
        };
        assert_eq!(estimated_share(&[]), Decimal::ZERO);
        // |−1| estimated of 1 + 2 + |−1| = 4: 0.25.
        assert_eq!(
            estimated_share(&[iv(1, false), iv(2, false), iv(-1, true)]),
            Decimal::new(25, 2)
        );
    }
}
