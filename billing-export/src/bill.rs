//! The billing stage of one customer: its device channels priced with its tariff, fixed
//! charges per site, taxes, reconciliation rows, Green Button points and the meter table of
//! its invoice. Whatever makes the customer unbillable is returned as exceptions (the export
//! holds the customer), never as an error of the whole run.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;

use crate::config::ExportConfig;
use crate::error::excerpt;
use crate::espi;
use crate::exceptions::Exception;
use crate::invoice::{Meter, Reading};
use crate::money::{fixed, QUALITY_SCALE, QUANTITY_SCALE};
use crate::period::{days_in_month, Period};
use crate::reconcile::{self, RawSummary};
use crate::registry::{parse_instant, ChannelSpec, Customer, Device, Issuer, Site};
use crate::statement::{tax_band, Line, LineType};
use crate::tables::{self, Raw, Series, Usage};
use crate::tariff::{self, Component, Interval, PriceCtx, Tariff, TouCache};
use crate::units;

/// A registry device with its billed range, in (customer, site, device) order.
pub(crate) struct Dev<'a> {
    pub customer: usize,
    pub site: &'a str,
    pub id: &'a str,
    pub multiplier: Decimal,
    pub channels: Vec<(String, ChannelSpec)>,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// A customer with its local period bounds, tariff and issuer.
pub(crate) struct Cust<'a> {
    pub c: &'a Customer,
    pub tz: Tz,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub tariff: &'a Tariff,
    pub issuer: Issuer,
    pub payment_terms_days: u32,
    /// Its devices: a range of [`Inputs::devs`].
    pub devs: Range<usize>,
}

/// Everything the billing of one customer reads.
pub(crate) struct Inputs<'a> {
    pub cfg: &'a ExportConfig,
    pub period: Period,
    pub label: &'a str,
    pub custs: &'a [Cust<'a>],
    pub devs: &'a [Dev<'a>],
    pub usage: &'a Usage,
    pub series_by: HashMap<(u32, u16), &'a Series>,
    pub raw: Option<&'a Raw<RawSummary>>,
    pub dev_cfgs: HashMap<&'a str, &'a Device>,
    pub site_cfgs: HashMap<&'a str, &'a Site>,
    pub sites_of: HashMap<&'a str, Vec<&'a str>>,
    pub tou_cache: TouCache,
}

/// What billing one customer produced. With `exceptions` non-empty the customer is held:
/// nothing of it is published except its reconciliation rows.
pub(crate) struct Outcome {
    pub lines: Vec<Line>,
    pub recon: Vec<reconcile::Row>,
    pub espi: Vec<espi::UsagePoint>,
    pub meters: Vec<Meter>,
    pub exceptions: Vec<Exception>,
}

/// Bills customer `ci`; a panic while pricing (an arithmetic overflow on absurd values) holds
/// the customer instead of ending the run.
pub(crate) fn bill_isolated(inp: &Inputs, ci: usize) -> Outcome {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| bill(inp, ci))) {
        Ok(outcome) => outcome,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            let customer_id = inp.custs[ci].c.id.clone();
            tracing::error!(customer = %customer_id, "pricing failed: {}", excerpt(&msg));
            Outcome {
                lines: Vec::new(),
                recon: Vec::new(),
                espi: Vec::new(),
                meters: Vec::new(),
                exceptions: vec![Exception {
                    customer_id,
                    site_id: String::new(),
                    device_id: String::new(),
                    channel: String::new(),
                    reason: format!(
                        "pricing failed ({}): a value is out of the range exact decimals can hold",
                        excerpt(&msg)
                    ),
                }],
            }
        }
    }
}

fn bill(inp: &Inputs, ci: usize) -> Outcome {
    let cfg = inp.cfg;
    let cu = &inp.custs[ci];
    let c = cu.c;
    let tariff = cu.tariff;
    let mut out = Outcome {
        lines: Vec::new(),
        recon: Vec::new(),
        espi: Vec::new(),
        meters: Vec::new(),
        exceptions: Vec::new(),
    };
    let tax_of = |comp: &Component| comp.tax_rate().unwrap_or(c.tax_rate);
    let base_line = |site: &str, device: &str, channel: &str| Line {
        line_type: LineType::Charge,
        customer_id: c.id.clone(),
        site_id: site.to_string(),
        device_id: device.to_string(),
        channel: channel.to_string(),
        component: String::new(),
        band: String::new(),
        period: inp.label.to_string(),
        period_start: cu.from,
        period_end: cu.to,
        quantity: Decimal::ZERO,
        unit: String::new(),
        rate: Decimal::ZERO,
        amount: Decimal::ZERO,
        currency: c.currency.clone(),
        minor_units: c.minor_units,
        tax_rate: c.tax_rate,
        usage_quantity: Decimal::ZERO,
        usage_unit: String::new(),
        quality: Decimal::ZERO,
        revision: 0,
        previous_revision: None,
        peak_at: None,
        peak_at_local: String::new(),
    };
    let exception = |site: &str, device: &str, channel: &str, reason: String| Exception {
        customer_id: c.id.clone(),
        site_id: site.to_string(),
        device_id: device.to_string(),
        channel: channel.to_string(),
        reason,
    };
    // Sites of this customer in id order, each with its devices.
    let mut sites: Vec<&str> = inp.sites_of.get(c.id.as_str()).cloned().unwrap_or_default();
    sites.sort();
    for site in sites {
        let mut site_span: Option<(DateTime<Utc>, Option<DateTime<Utc>>)> = None;
        for di in cu.devs.clone().filter(|&i| inp.devs[i].site == site) {
            let d = &inp.devs[di];
            if let Some(dc) = inp.dev_cfgs.get(d.id).copied() {
                site_span = Some(widen_span(site_span, dc, cu.tz));
            }
            for (chi, (channel, spec)) in d.channels.iter().enumerate() {
                let key = (di as u32, chi as u16);
                let priced = tariff
                    .components
                    .iter()
                    .any(|k| k.quantity() == Some(spec.quantity.as_str()));
                let bad = inp
                    .usage
                    .bad
                    .get(&key)
                    .or_else(|| inp.raw.and_then(|r| r.bad.get(&key)));
                if let Some(reason) = bad {
                    if priced {
                        out.exceptions
                            .push(exception(site, d.id, channel, reason.clone()));
                    } else {
                        tracing::warn!(customer = %c.id, device = d.id, channel = %channel, "unbilled channel has bad data: {reason}");
                    }
                    continue;
                }
                let Some(s) = inp.series_by.get(&key).copied() else {
                    continue;
                };
                let gauge = s.kind == "gauge";
                let unit = if gauge {
                    format!("{}h", units::canonical(&s.unit))
                } else {
                    s.unit.clone()
                };
                // Gauge averages become quantity × hours (15 minutes = 0.25 h).
                let factor = if gauge {
                    d.multiplier * Decimal::new(25, 2)
                } else {
                    d.multiplier
                };
                let intervals: Vec<Interval> = inp
                    .usage
                    .rows(s)
                    .map(|(ws, v, est, rev)| Interval {
                        start: DateTime::from_timestamp_micros(ws).unwrap_or_default(),
                        quantity: v * factor,
                        estimated: est,
                        revision: rev,
                    })
                    .collect();
                let usage: Decimal = inp.usage.rows(s).map(|r| r.1).sum();
                let ctx = PriceCtx {
                    tz: cu.tz,
                    unit: &unit,
                    minor_units: c.minor_units,
                    rounding: cfg.rounding,
                    tou_cache: Some(&inp.tou_cache),
                };
                let mut problems = Vec::new();
                let mut billed: Option<Decimal> = None;
                let mut failed = false;
                for comp in tariff
                    .components
                    .iter()
                    .filter(|k| k.quantity() == Some(spec.quantity.as_str()))
                {
                    let priced = tariff::check_unit(comp, &unit)
                        .and_then(|()| tariff::price(&ctx, comp, &intervals));
                    let priced = match priced {
                        Ok(p) => p,
                        Err(e) => {
                            out.exceptions.push(exception(site, d.id, channel, e.0));
                            failed = true;
                            continue;
                        }
                    };
                    if comp.is_volumetric() && !gauge {
                        let b: Decimal = priced.iter().map(|p| p.usage_quantity).sum();
                        if b != usage * d.multiplier {
                            problems.push(format!(
                                "component {} bills {} {} but usage × multiplier is {}",
                                excerpt(comp.name()),
                                b,
                                excerpt(&unit),
                                usage * d.multiplier
                            ));
                        }
                        billed.get_or_insert(b);
                    }
                    for p in priced {
                        let mut l = base_line(site, d.id, channel);
                        l.component = p.component;
                        l.band = p.band;
                        l.quantity = p.quantity;
                        l.unit = p.unit;
                        l.rate = p.rate;
                        l.amount = p.amount;
                        l.tax_rate = tax_of(comp);
                        l.usage_quantity = p.usage_quantity;
                        l.usage_unit = unit.clone();
                        l.quality = p.quality;
                        l.revision = p.revision;
                        l.peak_at = p.peak_at;
                        l.peak_at_local = p
                            .peak_at
                            .map(|t| {
                                t.with_timezone(&cu.tz)
                                    .to_rfc3339_opts(SecondsFormat::Secs, true)
                            })
                            .unwrap_or_default();
                        out.lines.push(l);
                    }
                }
                if failed || gauge {
                    continue;
                }
                let summary = inp.raw.map(|raw| {
                    raw.channels.get(&key).cloned().unwrap_or(RawSummary {
                        difference: Decimal::ZERO,
                        readings: 0,
                        start: None,
                        end: None,
                        events: Vec::new(),
                    })
                });
                if let Some(r) = &summary {
                    if r.difference != usage {
                        problems.push(format!(
                            "usage sum {usage} {} differs from the raw register difference {} ({} readings)",
                            excerpt(&s.unit),
                            r.difference,
                            r.readings
                        ));
                    }
                }
                if !problems.is_empty() {
                    out.exceptions.push(exception(
                        site,
                        d.id,
                        channel,
                        format!("reconciliation: {}", problems.join("; ")),
                    ));
                }
                out.recon.push(reconcile::Row {
                    customer_id: c.id.clone(),
                    site_id: site.to_string(),
                    device_id: d.id.to_string(),
                    channel: channel.clone(),
                    kind: s.kind.clone(),
                    unit: s.unit.clone(),
                    multiplier: d.multiplier,
                    usage,
                    raw: summary.as_ref().map(|r| r.difference),
                    billed,
                    problems,
                });
                if priced {
                    out.meters.push(Meter {
                        site_id: site.to_string(),
                        device_id: d.id.to_string(),
                        channel: channel.clone(),
                        kind: s.kind.clone(),
                        unit: s.unit.clone(),
                        start: summary
                            .as_ref()
                            .and_then(|r| r.start.as_ref())
                            .map(|v| Reading::new(v, cu.tz)),
                        end: summary
                            .as_ref()
                            .and_then(|r| r.end.as_ref())
                            .map(|v| Reading::new(v, cu.tz)),
                        register_difference: summary
                            .as_ref()
                            .map(|r| fixed(r.difference, QUANTITY_SCALE)),
                        events: summary
                            .as_ref()
                            .map(|r| r.events.iter().map(|e| e.to_string()).collect())
                            .unwrap_or_default(),
                        multiplier: d.multiplier.normalize().to_string(),
                        billed_usage: fixed(usage * d.multiplier, QUANTITY_SCALE),
                        estimated_share: fixed(estimated_share(&intervals), QUALITY_SCALE),
                    });
                }
                if cfg.green_button {
                    if let Some(to_wh) = units::factor(&s.unit, "Wh")
                        .filter(|_| matches!(s.unit.as_str(), "Wh" | "kWh"))
                    {
                        out.espi.push(espi::UsagePoint {
                            device_id: d.id.to_string(),
                            channel: channel.clone(),
                            reverse: spec.quantity == "export_energy",
                            intervals: intervals
                                .iter()
                                .map(|iv| (iv.start, iv.quantity * to_wh, iv.estimated))
                                .collect(),
                        });
                    }
                }
            }
        }
        // Fixed charges of the site, pro-rated by active local days.
        let parse = |v: &Option<String>| v.as_deref().and_then(|t| parse_instant(t, cu.tz).ok());
        let (inst, rem) = match inp.site_cfgs.get(site).copied() {
            Some(s) if s.installed.is_some() || s.removed.is_some() => (
                parse(&s.installed).unwrap_or(DateTime::<Utc>::MIN_UTC),
                parse(&s.removed),
            ),
            _ => site_span.unwrap_or((DateTime::<Utc>::MIN_UTC, None)),
        };
        for comp in &tariff.components {
            let Component::Fixed(f) = comp else { continue };
            for (m_from, m_to) in inp.period.months() {
                let days = active_days(m_from, m_to, inst, rem, cu.tz);
                if days == 0 {
                    continue;
                }
                let rate =
                    (f.monthly / Decimal::from(days_in_month(m_from))).round_dp(QUANTITY_SCALE);
                let qty = Decimal::from(days);
                let mut l = base_line(site, "", "");
                l.component = f.name.clone();
                l.band = m_from.format("%Y-%m").to_string();
                l.quantity = qty;
                l.unit = "day".into();
                l.rate = rate;
                l.amount = cfg.rounding.round(qty * rate, c.minor_units);
                l.tax_rate = tax_of(comp);
                out.lines.push(l);
            }
        }
    }
    // Taxes: one line per rate, on the sum of the rounded line amounts at that rate.
    let mut by_rate: BTreeMap<Decimal, Decimal> = BTreeMap::new();
    for l in &out.lines {
        *by_rate.entry(l.tax_rate.normalize()).or_default() += l.amount;
    }
    for (rate, base) in by_rate {
        if rate.is_zero() {
            continue;
        }
        let mut l = base_line("", "", "");
        l.component = "tax".into();
        l.band = tax_band(rate);
        l.quantity = base;
        l.unit = c.currency.clone();
        l.rate = rate;
        l.tax_rate = rate;
        l.amount = cfg.rounding.round(base * rate, c.minor_units);
        out.lines.push(l);
    }
    out
}

/// A site's active span from its devices: the earliest installation and the latest removal,
/// where a device without an installation date counts as installed before any period (so the
/// site is active from the period start) and one without a removal date as still active.
fn widen_span(
    span: Option<(DateTime<Utc>, Option<DateTime<Utc>>)>,
    dc: &Device,
    tz: Tz,
) -> (DateTime<Utc>, Option<DateTime<Utc>>) {
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

/// Share of the usage (absolute values) from estimated or interpolated intervals.
fn estimated_share(intervals: &[Interval]) -> Decimal {
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

/// The raw side of every selected channel: register difference and register values at the
/// bounds of each device's billed range.
pub(crate) fn load_raw(
    cfg: &ExportConfig,
    source: &tables::Tables,
    sel: &tables::Selection,
    devs: &[Dev],
) -> Result<Option<Raw<RawSummary>>, crate::error::BillingError> {
    if !cfg.reconcile_raw || devs.is_empty() {
        return Ok(None);
    }
    let lo = devs.iter().map(|d| d.from).min().unwrap_or_default();
    let hi = devs.iter().map(|d| d.to).max().unwrap_or_default();
    let reg = &cfg.registry;
    let raw = tables::load_raw(
        source,
        sel,
        lo.timestamp_micros(),
        hi.timestamp_micros(),
        |dev, chan, kind, readings| {
            let d = &devs[dev as usize];
            let (channel, spec) = &d.channels[chan as usize];
            reconcile::summarize(
                kind,
                readings,
                d.from.timestamp_micros(),
                d.to.timestamp_micros(),
                &reg.counter_rules(d.id, channel, spec),
            )
        },
    )?;
    Ok(Some(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
