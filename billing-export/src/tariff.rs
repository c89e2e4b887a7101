//! Tariffs (TOML, see README.md) and how one device channel's intervals are priced.
//!
//! Every component prices one *quantity* (a name the registry maps channels to, e.g.
//! `import_energy`) in one billing *unit* (see [`crate::units`]). A tariff is a list of
//! components; a customer has one tariff.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc, Weekday};
use chrono_tz::Tz;
use gridmeter_core::config::{Problems, Validate};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::money::{Rounding, QUANTITY_SCALE};
use crate::registry::check_rate_scale;
use crate::units;

/// The tariff file: `[tariffs.<name>]` tables.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tariffs {
    #[serde(default)]
    pub tariffs: BTreeMap<String, Tariff>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tariff {
    #[serde(default)]
    pub description: String,
    pub components: Vec<Component>,
}

/// One priced component of a tariff.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Component {
    /// `quantity × rate`. With `credit = true` the amount is negative (export credit).
    Flat(Flat),
    /// Graduated or volume blocks over the period's total per device channel.
    Tiered(Tiered),
    /// Named periods by local weekday/hour/month and holidays; each 15-minute interval is
    /// priced at the period of its local start time.
    TimeOfUse(TimeOfUse),
    /// Highest 15-minute average power of the period per device × rate.
    Demand(Demand),
    /// A fixed amount per month and site, pro-rated by the site's active local days.
    Fixed(Fixed),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flat {
    pub name: String,
    pub quantity: String,
    pub unit: String,
    pub rate: Decimal,
    #[serde(default)]
    pub credit: bool,
    /// Overrides the customer's tax rate for this component.
    #[serde(default)]
    pub tax_rate: Option<Decimal>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TierMode {
    /// Each block's share of the quantity at the block's rate.
    Graduated,
    /// The whole quantity at the rate of the block the total reaches.
    Volume,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// Block name in the statement (`band`); default `tier<n>` (1-based).
    #[serde(default)]
    pub name: Option<String>,
    /// Upper bound of the block in the billing unit (cumulative); unset for the last block.
    #[serde(default)]
    pub up_to: Option<Decimal>,
    pub rate: Decimal,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tiered {
    pub name: String,
    pub quantity: String,
    pub unit: String,
    pub mode: TierMode,
    pub tiers: Vec<Tier>,
    #[serde(default)]
    pub tax_rate: Option<Decimal>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TouPeriod {
    pub name: String,
    pub rate: Decimal,
}

/// A rule assigning local times to a period. Empty lists mean "any".
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TouRule {
    pub period: String,
    /// `mon`..`sun`.
    #[serde(default)]
    pub days: Vec<String>,
    /// Local hours `[from_hour, to_hour)`; wraps midnight when `from_hour > to_hour`.
    #[serde(default)]
    pub from_hour: u32,
    #[serde(default = "h24")]
    pub to_hour: u32,
    /// Season: months 1..=12.
    #[serde(default)]
    pub months: Vec<u32>,
}

fn h24() -> u32 {
    24
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeOfUse {
    pub name: String,
    pub quantity: String,
    pub unit: String,
    pub periods: Vec<TouPeriod>,
    /// First matching rule wins.
    #[serde(default)]
    pub rules: Vec<TouRule>,
    /// Period of local times no rule matches.
    pub default_period: String,
    /// Local dates (`YYYY-MM-DD`) priced at `holiday_period` all day.
    #[serde(default)]
    pub holidays: Vec<String>,
    #[serde(default)]
    pub holiday_period: Option<String>,
    #[serde(default)]
    pub credit: bool,
    #[serde(default)]
    pub tax_rate: Option<Decimal>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Demand {
    pub name: String,
    /// An energy quantity measured in Wh or kWh per 15-minute interval.
    pub quantity: String,
    /// `kW` or `W`.
    pub unit: String,
    pub rate: Decimal,
    #[serde(default)]
    pub tax_rate: Option<Decimal>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixed {
    pub name: String,
    /// Amount per calendar month and site.
    pub monthly: Decimal,
    #[serde(default)]
    pub tax_rate: Option<Decimal>,
}

impl Component {
    pub fn name(&self) -> &str {
        match self {
            Component::Flat(c) => &c.name,
            Component::Tiered(c) => &c.name,
            Component::TimeOfUse(c) => &c.name,
            Component::Demand(c) => &c.name,
            Component::Fixed(c) => &c.name,
        }
    }
    /// The quantity this component prices (None for fixed charges).
    pub fn quantity(&self) -> Option<&str> {
        match self {
            Component::Flat(c) => Some(&c.quantity),
            Component::Tiered(c) => Some(&c.quantity),
            Component::TimeOfUse(c) => Some(&c.quantity),
            Component::Demand(c) => Some(&c.quantity),
            Component::Fixed(_) => None,
        }
    }
    pub fn tax_rate(&self) -> Option<Decimal> {
        match self {
            Component::Flat(c) => c.tax_rate,
            Component::Tiered(c) => c.tax_rate,
            Component::TimeOfUse(c) => c.tax_rate,
            Component::Demand(c) => c.tax_rate,
            Component::Fixed(c) => c.tax_rate,
        }
    }
    /// Every rate of the component with its key (for validation).
    fn rates(&self) -> Vec<(String, Decimal)> {
        match self {
            Component::Flat(c) => vec![("rate".into(), c.rate)],
            Component::Demand(c) => vec![("rate".into(), c.rate)],
            Component::Tiered(c) => c
                .tiers
                .iter()
                .enumerate()
                .map(|(j, t)| (format!("tiers[{j}].rate"), t.rate))
                .collect(),
            Component::TimeOfUse(c) => c
                .periods
                .iter()
                .enumerate()
                .map(|(j, t)| (format!("periods[{j}].rate"), t.rate))
                .collect(),
            Component::Fixed(_) => Vec::new(),
        }
    }
    /// Volumetric components bill every interval exactly once (reconciled against usage).
    pub fn is_volumetric(&self) -> bool {
        matches!(
            self,
            Component::Flat(_) | Component::Tiered(_) | Component::TimeOfUse(_)
        )
    }
    fn unit(&self) -> Option<&str> {
        match self {
            Component::Flat(c) => Some(&c.unit),
            Component::Tiered(c) => Some(&c.unit),
            Component::TimeOfUse(c) => Some(&c.unit),
            Component::Demand(c) => Some(&c.unit),
            Component::Fixed(_) => None,
        }
    }
}

fn weekday(s: &str) -> Option<Weekday> {
    match s {
        "mon" => Some(Weekday::Mon),
        "tue" => Some(Weekday::Tue),
        "wed" => Some(Weekday::Wed),
        "thu" => Some(Weekday::Thu),
        "fri" => Some(Weekday::Fri),
        "sat" => Some(Weekday::Sat),
        "sun" => Some(Weekday::Sun),
        _ => None,
    }
}

const KNOWN_UNITS: [&str; 22] = [
    "Wh",
    "kWh",
    "MWh",
    "s",
    "min",
    "h",
    "B",
    "kB",
    "MB",
    "GB",
    "TB",
    "GiB",
    "GBh",
    "GiBh",
    "count",
    "requests",
    "krequests",
    "Mrequests",
    "L",
    "m3",
    "kW",
    "W",
];

impl Validate for Tariffs {
    fn validate(&self, p: &mut Problems) {
        for (tname, t) in &self.tariffs {
            let mut names = BTreeSet::new();
            for (i, c) in t.components.iter().enumerate() {
                let at = format!("tariffs.{tname}.components[{i}]");
                if c.name().is_empty() || c.name() == "tax" {
                    p.push(format!("{at}.name"), "must be set and must not be \"tax\"");
                }
                if !names.insert(c.name()) {
                    p.push(
                        format!("{at}.name"),
                        format!("duplicate component {}", crate::error::excerpt(c.name())),
                    );
                }
                if let Some(u) = c.unit() {
                    if !KNOWN_UNITS.contains(&u) {
                        p.push(
                            format!("{at}.unit"),
                            format!(
                                "unknown unit {}; known: {KNOWN_UNITS:?}",
                                crate::error::excerpt(u)
                            ),
                        );
                    }
                }
                if let Some(r) = c.tax_rate() {
                    if r.is_sign_negative() || r >= Decimal::ONE {
                        p.push(format!("{at}.tax_rate"), "must be in [0, 1)");
                    }
                    check_rate_scale(p, format!("{at}.tax_rate"), r);
                }
                for (key, rate) in c.rates() {
                    check_rate_scale(p, format!("{at}.{key}"), rate);
                }
                match c {
                    Component::Tiered(tc) => {
                        if tc.tiers.is_empty() {
                            p.push(format!("{at}.tiers"), "must not be empty");
                        }
                        let mut bands = BTreeSet::new();
                        for (j, tier) in tc.tiers.iter().enumerate() {
                            let band = tier_band(j, tier);
                            if !bands.insert(band.clone()) {
                                p.push(
                                    format!("{at}.tiers[{j}].name"),
                                    format!(
                                        "block name {} is used twice (unnamed blocks are tier1, tier2, ...)",
                                        crate::error::excerpt(&band)
                                    ),
                                );
                            }
                        }
                        let mut prev = Decimal::ZERO;
                        for (j, tier) in tc.tiers.iter().enumerate() {
                            let last = j + 1 == tc.tiers.len();
                            match tier.up_to {
                                Some(u) if u <= prev => p.push(
                                    format!("{at}.tiers[{j}].up_to"),
                                    "must be greater than the previous block's",
                                ),
                                Some(u) => prev = u,
                                None if !last => p.push(
                                    format!("{at}.tiers[{j}].up_to"),
                                    "only the last block may be unbounded",
                                ),
                                None => {}
                            }
                            if last && tier.up_to.is_some() {
                                p.push(
                                    format!("{at}.tiers[{j}].up_to"),
                                    "the last block must be unbounded",
                                );
                            }
                        }
                    }
                    Component::TimeOfUse(tc) => {
                        let periods: BTreeSet<&str> =
                            tc.periods.iter().map(|x| x.name.as_str()).collect();
                        if periods.len() != tc.periods.len() {
                            p.push(format!("{at}.periods"), "period names must be unique");
                        }
                        let mut check = |key: String, name: &str| {
                            if !periods.contains(name) {
                                p.push(
                                    key,
                                    format!("unknown period {}", crate::error::excerpt(name)),
                                );
                            }
                        };
                        check(format!("{at}.default_period"), &tc.default_period);
                        if let Some(h) = &tc.holiday_period {
                            check(format!("{at}.holiday_period"), h);
                        }
                        for (j, r) in tc.rules.iter().enumerate() {
                            check(format!("{at}.rules[{j}].period"), &r.period);
                        }
                        for (j, r) in tc.rules.iter().enumerate() {
                            let rat = format!("{at}.rules[{j}]");
                            for d in &r.days {
                                if weekday(d).is_none() {
                                    p.push(
                                        format!("{rat}.days"),
                                        format!(
                                            "{} is not one of mon..sun",
                                            crate::error::excerpt(d)
                                        ),
                                    );
                                }
                            }
                            if r.from_hour > 23 || r.to_hour > 24 {
                                p.push(
                                    rat.clone(),
                                    "hours must satisfy 0 <= from_hour <= 23 and to_hour <= 24",
                                );
                            } else if r.from_hour == r.to_hour {
                                p.push(
                                    rat.clone(),
                                    "from_hour == to_hour is ambiguous (no hour, or all day?): for the whole day write from_hour = 0, to_hour = 24",
                                );
                            }
                            if r.months.iter().any(|m| !(1..=12).contains(m)) {
                                p.push(format!("{rat}.months"), "months are 1..=12");
                            }
                        }
                        for (j, h) in tc.holidays.iter().enumerate() {
                            if NaiveDate::parse_from_str(h, "%Y-%m-%d").is_err() {
                                p.push(format!("{at}.holidays[{j}]"), "must be YYYY-MM-DD");
                            }
                        }
                        if !tc.holidays.is_empty() && tc.holiday_period.is_none() {
                            p.push(
                                format!("{at}.holiday_period"),
                                "must be set when holidays are listed",
                            );
                        }
                    }
                    Component::Demand(dc) if !matches!(dc.unit.as_str(), "kW" | "W") => {
                        p.push(format!("{at}.unit"), "demand is priced in kW or W");
                    }
                    _ => {}
                }
            }
        }
    }
}

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
    /// Estimated or interpolated (counts toward the `quality` share).
    pub estimated: bool,
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
    pub quality: Decimal,
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
    total_abs: Decimal,
    revision: i64,
}

impl Acc {
    fn new() -> Self {
        Acc {
            n: 0,
            usage: Decimal::ZERO,
            estimated: Decimal::ZERO,
            total_abs: Decimal::ZERO,
            revision: 0,
        }
    }
    fn add(&mut self, iv: &Interval) {
        self.n += 1;
        self.usage += iv.quantity;
        self.total_abs += iv.quantity.abs();
        if iv.estimated {
            self.estimated += iv.quantity.abs();
        }
        self.revision = self.revision.max(iv.revision);
    }
    fn quality(&self) -> Decimal {
        if self.total_abs.is_zero() {
            Decimal::ZERO
        } else {
            (self.estimated / self.total_abs).round_dp(crate::money::QUALITY_SCALE)
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

/// Assigns local times to time-of-use periods.
pub struct Classifier<'a> {
    tou: &'a TimeOfUse,
    holidays: BTreeSet<NaiveDate>,
    holiday: Option<usize>,
    default: usize,
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
                estimated: false,
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
