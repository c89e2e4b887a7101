//! Pricing one device channel's intervals with one usage component: flat, tiered (graduated
//! or volume blocks), time-of-use (periods from [`super::tou`]) and demand.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;

use super::model::*;
use super::tou::Classifier;
use crate::money::{Rounding, QUANTITY_SCALE};
use crate::units;

/// The statement `band` of block `j` (0-based) of a tiered component: its name, or `tier<j+1>`.
pub fn tier_band(j: usize, tier: &Tier) -> String {
    tier.name
        .clone()
        .unwrap_or_else(|| format!("tier{}", j + 1))
}

/// One 15-minute interval of one device channel, multiplier applied, in the channel's unit.
#[derive(Debug, Clone, Copy)]
pub struct Interval {
    pub start: DateTime<Utc>,
    pub quantity: Decimal,
    /// Estimated and/or edited (counts toward the `quality` and `edited_share` shares).
    pub quality: crate::quality::Quality,
    pub revision: i64,
}

/// A priced statement line before customer/site/device context is attached.
#[derive(Debug, Clone)]
pub struct Priced {
    pub component: String,
    pub band: String,
    pub quantity: Decimal,
    pub unit: String,
    pub rate: Decimal,
    pub amount: Decimal,
    /// Sum of the usage (channel unit, multiplier applied) this line bills; zero for demand.
    pub usage_quantity: Decimal,
    /// Share of the usage from estimated intervals.
    pub quality: Decimal,
    /// Share of the usage from edited intervals.
    pub edited_share: Decimal,
    pub revision: i64,
    pub peak_at: Option<DateTime<Utc>>,
}

/// Why a channel could not be priced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceError(pub String);

#[derive(Clone)]
struct Acc {
    n: usize,
    usage: Decimal,
    estimated: Decimal,
    edited: Decimal,
    total_abs: Decimal,
    revision: i64,
}

impl Acc {
    fn new() -> Self {
        Acc {
            n: 0,
            usage: Decimal::ZERO,
            estimated: Decimal::ZERO,
            edited: Decimal::ZERO,
            total_abs: Decimal::ZERO,
            revision: 0,
        }
    }
    fn add(&mut self, iv: &Interval) {
        self.n += 1;
        self.usage += iv.quantity;
        self.total_abs += iv.quantity.abs();
        if iv.quality.is_estimated() {
            self.estimated += iv.quantity.abs();
        }
        if iv.quality.is_edited() {
            self.edited += iv.quantity.abs();
        }
        self.revision = self.revision.max(iv.revision);
    }
    fn quality(&self) -> Decimal {
        self.share(self.estimated)
    }
    fn edited_share(&self) -> Decimal {
        self.share(self.edited)
    }
    fn share(&self, part: Decimal) -> Decimal {
        if self.total_abs.is_zero() {
            Decimal::ZERO
        } else {
            (part / self.total_abs).round_dp(crate::money::QUALITY_SCALE)
        }
    }
}

/// See [`PriceCtx::tou_cache`].
#[derive(Default)]
pub struct TouCache(
    std::cell::RefCell<
        std::collections::HashMap<(usize, Tz), std::collections::HashMap<i64, usize>>,
    >,
);

/// Context of one pricing call.
pub struct PriceCtx<'a> {
    /// Memo of time-of-use periods by (component, time zone, interval start): most customers
    /// share a tariff and a zone, so each interval's local time is worked out once.
    pub tou_cache: Option<&'a TouCache>,
    pub tz: Tz,
    pub unit: &'a str,
    pub minor_units: u32,
    pub rounding: Rounding,
}

fn billing_qty(ctx: &PriceCtx, q: Decimal, to: &str) -> Result<Decimal, PriceError> {
    let v = units::convert(q, ctx.unit, to).ok_or_else(|| {
        PriceError(format!(
            "cannot convert {} to {to}",
            crate::error::excerpt(ctx.unit)
        ))
    })?;
    Ok(v.round_dp_with_strategy(
        QUANTITY_SCALE,
        rust_decimal::RoundingStrategy::MidpointNearestEven,
    ))
}

#[allow(clippy::too_many_arguments)]
fn line(
    ctx: &PriceCtx,
    component: &str,
    band: &str,
    quantity: Decimal,
    unit: &str,
    rate: Decimal,
    credit: bool,
    acc: &Acc,
    peak_at: Option<DateTime<Utc>>,
) -> Priced {
    let raw = quantity * rate;
    let amount = ctx
        .rounding
        .round(if credit { -raw } else { raw }, ctx.minor_units);
    Priced {
        component: component.to_string(),
        band: band.to_string(),
        quantity,
        unit: unit.to_string(),
        rate,
        amount,
        usage_quantity: acc.usage,
        quality: acc.quality(),
        edited_share: acc.edited_share(),
        revision: acc.revision,
        peak_at,
    }
}

/// Prices the intervals of one device channel (sorted by start) with one usage component.
pub fn price(
    ctx: &PriceCtx,
    c: &Component,
    intervals: &[Interval],
) -> Result<Vec<Priced>, PriceError> {
    let mut out = Vec::new();
    match c {
        Component::Flat(f) => {
            let mut acc = Acc::new();
            intervals.iter().for_each(|iv| acc.add(iv));
            let q = billing_qty(ctx, acc.usage, &f.unit)?;
            out.push(line(
                ctx, &f.name, "", q, &f.unit, f.rate, f.credit, &acc, None,
            ));
        }
        Component::TimeOfUse(t) => {
            let mut accs: Vec<Acc> = t.periods.iter().map(|_| Acc::new()).collect();
            let classify = Classifier::new(t);
            let key = (t as *const TimeOfUse as usize, ctx.tz);
            let mut cache = ctx.tou_cache.map(|c| c.0.borrow_mut());
            let mut memo = cache.as_mut().map(|c| c.entry(key).or_default());
            for iv in intervals {
                let ts = iv.start.timestamp();
                let p = match memo.as_mut() {
                    Some(m) => *m
                        .entry(ts)
                        .or_insert_with(|| classify.period(iv.start, ctx.tz)),
                    None => classify.period(iv.start, ctx.tz),
                };
                accs[p].add(iv);
            }
            // A period gets a line when its usage is not zero; a channel with no usage in any
            // period gets one zero line in the default period, so the meter is on the bill.
            let default = classify.default;
            let all_zero = accs.iter().all(|a| a.usage.is_zero());
            for (j, (p, acc)) in t.periods.iter().zip(&accs).enumerate() {
                if acc.usage.is_zero() && !(all_zero && j == default) {
                    continue;
                }
                let q = billing_qty(ctx, acc.usage, &t.unit)?;
                out.push(line(
                    ctx, &t.name, &p.name, q, &t.unit, p.rate, t.credit, acc, None,
                ));
            }
        }
        Component::Tiered(t) => {
            let mut acc = Acc::new();
            intervals.iter().for_each(|iv| acc.add(iv));
            let total = billing_qty(ctx, acc.usage, &t.unit)?;
            match t.mode {
                TierMode::Graduated => {
                    // A line per block the total reaches into; a total of zero (or less) gives one
                    // zero line in the first block.
                    let mut lower = Decimal::ZERO;
                    for (j, tier) in t.tiers.iter().enumerate() {
                        let upper = tier.up_to.map_or(total, |u| u.min(total));
                        let in_block = (upper - lower).max(Decimal::ZERO);
                        if in_block > Decimal::ZERO || j == 0 {
                            let mut a = acc.clone();
                            // The usage column of a block line is its share in the channel's unit.
                            a.usage = if total.is_zero() {
                                Decimal::ZERO
                            } else {
                                units::convert(in_block, &t.unit, ctx.unit).unwrap_or(Decimal::ZERO)
                            };
                            out.push(line(
                                ctx,
                                &t.name,
                                &tier_band(j, tier),
                                in_block,
                                &t.unit,
                                tier.rate,
                                false,
                                &a,
                                None,
                            ));
                        }
                        match tier.up_to {
                            Some(u) if u < total => lower = u,
                            _ => break,
                        }
                    }
                    // Block shares are converted back for display; the last one absorbs any
                    // conversion remainder so the usage column sums to the channel's usage.
                    let sum: Decimal = out.iter().map(|l| l.usage_quantity).sum();
                    if let Some(last) = out.last_mut() {
                        last.usage_quantity += acc.usage - sum;
                    }
                }
                TierMode::Volume => {
                    let (j, tier) = t
                        .tiers
                        .iter()
                        .enumerate()
                        .find(|(_, tier)| tier.up_to.is_none_or(|u| total <= u))
                        .ok_or_else(|| {
                            PriceError(format!(
                                "no block of {} covers {total}",
                                crate::error::excerpt(&t.name)
                            ))
                        })?;
                    out.push(line(
                        ctx,
                        &t.name,
                        &tier_band(j, tier),
                        total,
                        &t.unit,
                        tier.rate,
                        false,
                        &acc,
                        None,
                    ));
                }
            }
        }
        Component::Demand(d) => {
            let mut acc = Acc::new();
            let mut peak: Option<(Decimal, &Interval)> = None;
            for iv in intervals {
                acc.add(iv);
                let kw = units::demand(iv.quantity, ctx.unit, &d.unit).ok_or_else(|| {
                    PriceError(format!(
                        "demand needs energy in Wh or kWh, not {}",
                        crate::error::excerpt(ctx.unit)
                    ))
                })?;
                // Ties keep the earliest interval.
                if peak.is_none_or(|(p, _)| kw > p) {
                    peak = Some((kw, iv));
                }
            }
            if let Some((kw, iv)) = peak {
                let kw = kw.round_dp(QUANTITY_SCALE);
                // The line's usage is the peak interval's energy (kW = Wh × 4 / 1000), and its
                // quality that interval's; the revision is the highest of all intervals (any of
                // them could have been the peak).
                let mut a = Acc::new();
                a.add(iv);
                a.revision = acc.revision;
                let at = iv.start;
                out.push(line(
                    ctx,
                    &d.name,
                    "",
                    kw,
                    &d.unit,
                    d.rate,
                    false,
                    &a,
                    Some(at),
                ));
            }
        }
        Component::Fixed(_) => {}
    }
    Ok(out)
}

/// Checks a component can price a channel measured in `unit`.
pub fn check_unit(c: &Component, unit: &str) -> Result<(), PriceError> {
    let ok = match c {
        Component::Demand(d) => units::demand(Decimal::ONE, unit, &d.unit).is_some(),
        Component::Fixed(_) => true,
        other => other.unit().is_some_and(|u| units::convertible(unit, u)),
    };
    if ok {
        Ok(())
    } else {
        Err(PriceError(format!(
            "component {} ({}) cannot price a channel measured in {}",
            crate::error::excerpt(c.name()),
            c.unit().unwrap_or(""),
            crate::error::excerpt(unit)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graduated_and_volume_blocks() {
        let ctx = PriceCtx {
            tou_cache: None,
            tz: Tz::UTC,
            unit: "kWh",
            minor_units: 2,
            rounding: Rounding::HalfEven,
        };
        let ivs: Vec<Interval> = (0..3)
            .map(|i| Interval {
                start: DateTime::from_timestamp(i * 900, 0).unwrap(),
                quantity: Decimal::from(50),
                quality: crate::quality::Quality::MEASURED,
                revision: 1,
            })
            .collect();
        let tiers = vec![
            Tier {
                name: None,
                up_to: Some(Decimal::from(100)),
                rate: Decimal::new(10, 2),
            },
            Tier {
                name: None,
                up_to: None,
                rate: Decimal::new(20, 2),
            },
        ];
        let mk = |mode| {
            Component::Tiered(Tiered {
                name: "e".into(),
                quantity: "q".into(),
                unit: "kWh".into(),
                mode,
                tiers: tiers.clone(),
                tax_rate: None,
            })
        };
        // 150 kWh graduated: 100 × 0.10 + 50 × 0.20 = 20.00.
        let g = price(&ctx, &mk(TierMode::Graduated), &ivs).unwrap();
        assert_eq!(
            g.iter().map(|l| l.amount).sum::<Decimal>(),
            Decimal::new(2000, 2)
        );
        assert_eq!(
            g.iter().map(|l| l.usage_quantity).sum::<Decimal>(),
            Decimal::from(150)
        );
        // 150 kWh volume: all at 0.20 = 30.00.
        let v = price(&ctx, &mk(TierMode::Volume), &ivs).unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].amount, Decimal::new(3000, 2));
    }
}
