//! Stage 3, price: one device channel's current usage priced with every usage component of
//! the customer's tariff that prices the channel's quantity (see [`crate::tariff`]), as
//! statement lines with customer, site and device attached.

use chrono::{DateTime, SecondsFormat};
use rust_decimal::Decimal;

use super::plan::{Cust, Dev};
use crate::error::excerpt;
use crate::money::Rounding;
use crate::registry::ChannelSpec;
use crate::statement::{Line, LineType};
use crate::tables::{Series, Usage};
use crate::tariff::{self, Component, Interval, PriceCtx, TouCache};
use crate::units;

/// A statement line of customer `cu` with every amount zero: the base the stages fill in.
pub(crate) fn base_line(cu: &Cust, label: &str, site: &str, device: &str, channel: &str) -> Line {
    let c = cu.c;
    Line {
        line_type: LineType::Charge,
        customer_id: c.id.clone(),
        site_id: site.to_string(),
        device_id: device.to_string(),
        channel: channel.to_string(),
        component: String::new(),
        band: String::new(),
        period: label.to_string(),
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
        edited_share: Decimal::ZERO,
        revision: 0,
        previous_revision: None,
        peak_at: None,
        peak_at_local: String::new(),
    }
}

/// The tax rate of a component's lines: its own, or the customer's.
pub(crate) fn tax_rate_of(cu: &Cust, comp: &Component) -> Decimal {
    comp.tax_rate().unwrap_or(cu.c.tax_rate)
}

/// One channel to price.
pub(crate) struct Channel<'a> {
    pub cust: &'a Cust<'a>,
    pub dev: &'a Dev<'a>,
    pub site: &'a str,
    pub name: &'a str,
    pub spec: &'a ChannelSpec,
    pub series: &'a Series,
}

/// A priced channel.
pub(crate) struct Priced {
    /// Its statement lines, component by component in tariff order.
    pub lines: Vec<Line>,
    /// Its intervals, multiplier applied (gauges: quantity × hours).
    pub intervals: Vec<Interval>,
    /// The sum of its current usage rows (before the multiplier).
    pub usage: Decimal,
    /// The part of `usage` from the windows the raw reconciliation leaves out
    /// ([`Usage::left_out`]), and how many they are.
    pub left_out: (Decimal, usize),
    /// What the first volumetric component billed (non-gauges).
    pub billed: Option<Decimal>,
    /// Volumetric components that did not bill usage × multiplier exactly.
    pub problems: Vec<String>,
    /// Components that could not price it (the customer is held with these reasons).
    pub failures: Vec<String>,
    /// A gauge (averages; not reconciled).
    pub gauge: bool,
}

/// Whether the tariff has a usage component for `spec`'s quantity.
pub(crate) fn is_priced(cu: &Cust, spec: &ChannelSpec) -> bool {
    cu.tariff
        .components
        .iter()
        .any(|k| k.quantity() == Some(spec.quantity.as_str()))
}

/// Prices one channel.
pub(crate) fn price_channel(
    ch: &Channel,
    usage_table: &Usage,
    label: &str,
    rounding: Rounding,
    tou_cache: &TouCache,
) -> Priced {
    let (cu, d, s) = (ch.cust, ch.dev, ch.series);
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
    let intervals: Vec<Interval> = usage_table
        .rows(s)
        .map(|(ws, v, quality, rev)| Interval {
            start: DateTime::from_timestamp_micros(ws).unwrap_or_default(),
            quantity: v * factor,
            quality,
            revision: rev,
        })
        .collect();
    let usage: Decimal = usage_table.rows(s).map(|r| r.1).sum();
    let left_out = if s.kind == "counter" {
        let l = usage_table.left_out(s);
        (l.usage, l.windows)
    } else {
        (Decimal::ZERO, 0)
    };
    let ctx = PriceCtx {
        tz: cu.tz,
        unit: &unit,
        minor_units: cu.c.minor_units,
        rounding,
        tou_cache: Some(tou_cache),
    };
    let mut out = Priced {
        lines: Vec::new(),
        intervals: Vec::new(),
        usage,
        left_out,
        billed: None,
        problems: Vec::new(),
        failures: Vec::new(),
        gauge,
    };
    for comp in cu
        .tariff
        .components
        .iter()
        .filter(|k| k.quantity() == Some(ch.spec.quantity.as_str()))
    {
        let priced =
            tariff::check_unit(comp, &unit).and_then(|()| tariff::price(&ctx, comp, &intervals));
        let priced = match priced {
            Ok(p) => p,
            Err(e) => {
                out.failures.push(e.0);
                continue;
            }
        };
        if comp.is_volumetric() && !gauge {
            let b: Decimal = priced.iter().map(|p| p.usage_quantity).sum();
            if b != usage * d.multiplier {
                out.problems.push(format!(
                    "component {} bills {} {} but usage × multiplier is {}",
                    excerpt(comp.name()),
                    b,
                    excerpt(&unit),
                    usage * d.multiplier
                ));
            }
            out.billed.get_or_insert(b);
        }
        for p in priced {
            let mut l = base_line(cu, label, ch.site, d.id, ch.name);
            l.component = p.component;
            l.band = p.band;
            l.quantity = p.quantity;
            l.unit = p.unit;
            l.rate = p.rate;
            l.amount = p.amount;
            l.tax_rate = tax_rate_of(cu, comp);
            l.usage_quantity = p.usage_quantity;
            l.usage_unit = unit.clone();
            l.quality = p.quality;
            l.edited_share = p.edited_share;
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
    out.intervals = intervals;
    out
}

/// The Green Button usage point of a priced energy channel (Wh or kWh), in Wh.
pub(crate) fn usage_point(ch: &Channel, priced: &Priced) -> Option<crate::espi::UsagePoint> {
    let s = ch.series;
    let to_wh = units::factor(&s.unit, "Wh").filter(|_| matches!(s.unit.as_str(), "Wh" | "kWh"))?;
    Some(crate::espi::UsagePoint {
        device_id: ch.dev.id.to_string(),
        channel: ch.name.to_string(),
        reverse: ch.spec.quantity == "export_energy",
        intervals: priced
            .intervals
            .iter()
            .map(|iv| (iv.start, iv.quantity * to_wh, iv.quality))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::period::Period;
    use crate::quality::{Method, Quality};
    use crate::registry::{Customer, Registry};
    use crate::tariff::Tariff;
    use chrono_tz::Tz;

    #[test]
    fn a_channel_priced_by_time_of_use_with_its_usage_point() {
        let tariff: Tariff = toml::from_str(
            r#"components = [ { type = "time_of_use", name = "energy", quantity = "import_energy", unit = "kWh",
                default_period = "off", periods = [ { name = "peak", rate = "0.40" }, { name = "off", rate = "0.20" } ],
                rules = [ { period = "peak", from_hour = 8, to_hour = 9 } ] },
              { type = "fixed", name = "standing", monthly = "1" } ]"#,
        )
        .unwrap();
        let customer: Customer = toml::from_str(
            "id = \"C1\"\ntariff = \"t\"\ncurrency = \"EUR\"\ntax_rate = \"0.19\"\ntime_zone = \"UTC\"\n",
        )
        .unwrap();
        let tz: Tz = Tz::UTC;
        let (from, to) = "2026-10".parse::<Period>().unwrap().bounds(tz).unwrap();
        let cu = Cust {
            c: &customer,
            tz,
            from,
            to,
            tariff: &tariff,
            issuer: Registry::default().issuer_of(&customer),
            payment_terms_days: 14,
            devs: 0..1,
        };
        let dev = Dev {
            customer: 0,
            site: "S1",
            id: "m1",
            multiplier: Decimal::from(2),
            channels: Vec::new(),
            from,
            to,
        };
        // 07:45, 08:00, 08:15 and 09:00 UTC of the first day, 250 Wh each (estimated: 08:15).
        let at = |h: i64, m: i64| from.timestamp_micros() + (h * 3600 + m * 60) * 1_000_000;
        let wh = Decimal::from(250);
        let usage = Usage::of_series(
            0,
            0,
            "counter",
            "Wh",
            &[
                (at(7, 45), wh, Quality::MEASURED, 1),
                (at(8, 0), wh, Quality::MEASURED.with_edited(), 1),
                (at(8, 15), wh, Quality::estimated(Some(Method::Linear)), 2),
                (at(9, 0), wh, Quality::MEASURED, 1),
            ],
        );
        let spec = ChannelSpec {
            quantity: "import_energy".into(),
            register_max: None,
        };
        let ch = Channel {
            cust: &cu,
            dev: &dev,
            site: "S1",
            name: "energy_import",
            spec: &spec,
            series: &usage.series[0],
        };
        assert!(is_priced(&cu, &spec));
        let p = price_channel(
            &ch,
            &usage,
            "2026-10",
            Rounding::HalfEven,
            &TouCache::default(),
        );
        assert!(p.failures.is_empty() && p.problems.is_empty() && !p.gauge);
        assert_eq!(p.usage, Decimal::from(1000));
        // × multiplier 2: 2,000 Wh billed, 1 kWh peak (08:00, 08:15) and 1 kWh off-peak.
        assert_eq!(p.billed, Some(Decimal::from(2000)));
        let got: Vec<(&str, String, String, i64)> = p
            .lines
            .iter()
            .map(|l| {
                (
                    l.band.as_str(),
                    l.quantity.to_string(),
                    l.amount.to_string(),
                    l.revision,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("peak", "1.000000000".into(), "0.40".into(), 2),
                ("off", "1.000000000".into(), "0.20".into(), 1)
            ]
        );
        // Peak: 08:15 estimated, 08:00 edited, each half of the band's usage.
        assert_eq!(p.lines[0].quality, Decimal::new(5, 1));
        assert_eq!(p.lines[0].edited_share, Decimal::new(5, 1));
        assert_eq!(p.lines[1].quality, Decimal::ZERO);
        assert_eq!(p.lines[1].edited_share, Decimal::ZERO);
        assert!(p
            .lines
            .iter()
            .all(|l| l.customer_id == "C1" && l.device_id == "m1"));
        let point = usage_point(&ch, &p).unwrap();
        assert_eq!(point.intervals.len(), 4);
        assert_eq!(point.intervals[2].1, Decimal::from(500));
        assert!(point.intervals[2].2.is_estimated() && !point.reverse);
        assert!(point.intervals[1].2.is_edited());
    }
}
