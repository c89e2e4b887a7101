//! Stage 4, charges and tax: each site's fixed charges, pro-rated by its active local days,
//! and the customer's tax lines (one per rate, on the sum of the rounded line amounts at that
//! rate).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;

use super::plan::Cust;
use super::price::{base_line, tax_rate_of};
use crate::money::{Rounding, QUANTITY_SCALE};
use crate::period::{days_in_month, Period};
use crate::registry::{parse_instant, Device, Site};
use crate::statement::{tax_band, Line};
use crate::tariff::Component;

/// A site's active span: from its installation (or `MIN_UTC`: before any period) to its
/// removal (`None`: still active).
pub(crate) type Span = (DateTime<Utc>, Option<DateTime<Utc>>);

/// The span of `site`: its own installation and removal if it has either, else the span of
/// its devices (`devices`, folded with [`widen_span`]), else always active.
pub(crate) fn site_span(site: Option<&Site>, devices: Option<Span>, tz: Tz) -> Span {
    let parse = |v: &Option<String>| v.as_deref().and_then(|t| parse_instant(t, tz).ok());
    match site {
        Some(s) if s.installed.is_some() || s.removed.is_some() => (
            parse(&s.installed).unwrap_or(DateTime::<Utc>::MIN_UTC),
            parse(&s.removed),
        ),
        _ => devices.unwrap_or((DateTime::<Utc>::MIN_UTC, None)),
    }
}

/// The fixed-charge lines of one site: per fixed component and calendar month of the period,
/// `monthly / days in the month` (9 places) × active local days.
pub(crate) fn fixed_charges(
    cu: &Cust,
    label: &str,
    period: &Period,
    rounding: Rounding,
    site: &str,
    (inst, rem): Span,
) -> Vec<Line> {
    let mut out = Vec::new();
    for comp in &cu.tariff.components {
        let Component::Fixed(f) = comp else { continue };
        for (m_from, m_to) in period.months() {
            let days = active_days(m_from, m_to, inst, rem, cu.tz);
            if days == 0 {
                continue;
            }
            let rate = (f.monthly / Decimal::from(days_in_month(m_from))).round_dp(QUANTITY_SCALE);
            let qty = Decimal::from(days);
            let mut l = base_line(cu, label, site, "", "");
            l.component = f.name.clone();
            l.band = m_from.format("%Y-%m").to_string();
            l.quantity = qty;
            l.unit = "day".into();
            l.rate = rate;
            l.amount = rounding.round(qty * rate, cu.c.minor_units);
            l.tax_rate = tax_rate_of(cu, comp);
            out.push(l);
        }
    }
    out
}

/// Tax lines: one per non-zero rate, on the sum of the rounded amounts of `lines` at that
/// rate, in rate order.
pub(crate) fn taxes(cu: &Cust, label: &str, rounding: Rounding, lines: &[Line]) -> Vec<Line> {
    let mut by_rate: BTreeMap<Decimal, Decimal> = BTreeMap::new();
    for l in lines {
        *by_rate.entry(l.tax_rate.normalize()).or_default() += l.amount;
    }
    let mut out = Vec::new();
    for (rate, base) in by_rate {
        if rate.is_zero() {
            continue;
        }
        let mut l = base_line(cu, label, "", "", "");
        l.component = "tax".into();
        l.band = tax_band(rate);
        l.quantity = base;
        l.unit = cu.c.currency.clone();
        l.rate = rate;
        l.tax_rate = rate;
        l.amount = rounding.round(base * rate, cu.c.minor_units);
        out.push(l);
    }
    out
}

/// A site's active span from its devices: the earliest installation and the latest removal,
/// where a device without an installation date counts as installed before any period (so the
/// site is active from the period start) and one without a removal date as still active.
pub(crate) fn widen_span(span: Option<Span>, dc: &Device, tz: Tz) -> Span {
    let inst = dc
        .installed
        .as_deref()
        .and_then(|t| parse_instant(t, tz).ok())
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let rem = dc
        .removed
        .as_deref()
        .and_then(|t| parse_instant(t, tz).ok());
    match span {
        None => (inst, rem),
        Some((a, b)) => (
            a.min(inst),
            match (b, rem) {
                (Some(x), Some(y)) => Some(x.max(y)),
                _ => None,
            },
        ),
    }
}

/// Local dates in `[m_from, m_to)` on which the site was active: from its installation date
/// (that day counts) to its removal (the removal day counts unless removal is at local midnight).
pub(crate) fn active_days(
    m_from: chrono::NaiveDate,
    m_to: chrono::NaiveDate,
    inst: DateTime<Utc>,
    rem: Option<DateTime<Utc>>,
    tz: Tz,
) -> i64 {
    let first = if inst == DateTime::<Utc>::MIN_UTC {
        m_from
    } else {
        inst.with_timezone(&tz).date_naive().max(m_from)
    };
    let last_excl = match rem {
        None => m_to,
        Some(r) => {
            let local = r.with_timezone(&tz);
            let d = local.date_naive();
            let at_midnight = crate::registry::local_midnight(d, tz)
                .map(|m| m == r)
                .unwrap_or(false);
            let end = if at_midnight {
                d
            } else {
                d.succ_opt().unwrap_or(d)
            };
            end.min(m_to)
        }
    };
    (last_excl - first).num_days().max(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Customer;
    use crate::tariff::Tariff;

    #[test]
    fn fixed_charges_prorate_by_local_days() {
        let tz: Tz = chrono_tz::Europe::Berlin;
        let d = |s: &str| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let (oct, nov) = (d("2026-10-01"), d("2026-11-01"));
        // Installed 2026-10-15 12:00 local: the 15th counts, so 15..=31 = 17 days.
        assert_eq!(
            active_days(oct, nov, t("2026-10-15T10:00:00Z"), None, tz),
            17
        );
        // Installed 2026-10-14T22:30Z = 2026-10-15 00:30 local: still the 15th.
        assert_eq!(
            active_days(oct, nov, t("2026-10-14T22:30:00Z"), None, tz),
            17
        );
        // Removed at local midnight of the 21st: days 1..=20.
        let open = DateTime::<Utc>::MIN_UTC;
        assert_eq!(
            active_days(oct, nov, open, Some(t("2026-10-20T22:00:00Z")), tz),
            20
        );
        // Removed during the 21st: that day counts.
        assert_eq!(
            active_days(oct, nov, open, Some(t("2026-10-21T09:00:00Z")), tz),
            21
        );
        assert_eq!(active_days(oct, nov, open, None, tz), 31);
    }

    #[test]
    fn standing_charge_and_one_tax_line_per_rate() {
        let tariff: Tariff = toml::from_str(
            "components = [ { type = \"fixed\", name = \"standing\", monthly = \"12.40\" }, \
             { type = \"fixed\", name = \"meter\", monthly = \"3.10\", tax_rate = \"0.07\" } ]",
        )
        .unwrap();
        let customer: Customer = toml::from_str(
            "id = \"C1\"\ntariff = \"t\"\ncurrency = \"EUR\"\ntax_rate = \"0.19\"\ntime_zone = \"Europe/Berlin\"\n",
        )
        .unwrap();
        let tz: Tz = chrono_tz::Europe::Berlin;
        let period: Period = "2026-10".parse().unwrap();
        let (from, to) = period.bounds(tz).unwrap();
        let cu = Cust {
            c: &customer,
            tz,
            from,
            to,
            tariff: &tariff,
            issuer: crate::registry::Registry::default().issuer_of(&customer),
            payment_terms_days: 14,
            devs: 0..0,
        };
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        // Installed on the 22nd (local): 10 days of 31.
        let span = site_span(None, Some((t("2026-10-22T08:00:00Z"), None)), tz);
        let lines = fixed_charges(&cu, "2026-10", &period, Rounding::HalfEven, "S1", span);
        let got: Vec<(&str, String, String)> = lines
            .iter()
            .map(|l| {
                (
                    l.component.as_str(),
                    l.quantity.to_string(),
                    l.amount.to_string(),
                )
            })
            .collect();
        // 12.40 / 31 = 0.4 × 10 = 4.00; 3.10 / 31 = 0.1 × 10 = 1.00.
        assert_eq!(
            got,
            [
                ("standing", "10".to_string(), "4.00".to_string()),
                ("meter", "10".to_string(), "1.00".to_string())
            ]
        );
        let tax = taxes(&cu, "2026-10", Rounding::HalfEven, &lines);
        // 7 % of 1.00 = 0.07 and 19 % of 4.00 = 0.76, in rate order.
        let got: Vec<(String, String)> = tax
            .iter()
            .map(|l| (l.band.clone(), l.amount.to_string()))
            .collect();
        assert_eq!(
            got,
            [
                ("0.07".to_string(), "0.07".to_string()),
                ("0.19".to_string(), "0.76".to_string())
            ]
        );
    }
}
