//! The tariff model as `tariffs.toml` spells it: tariffs, their components and the
//! component kinds (flat, tiered, time-of-use, demand, fixed).

use std::collections::BTreeMap;

use chrono::Weekday;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

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
    pub(crate) fn rates(&self) -> Vec<(String, Decimal)> {
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
    pub(crate) fn unit(&self) -> Option<&str> {
        match self {
            Component::Flat(c) => Some(&c.unit),
            Component::Tiered(c) => Some(&c.unit),
            Component::TimeOfUse(c) => Some(&c.unit),
            Component::Demand(c) => Some(&c.unit),
            Component::Fixed(_) => None,
        }
    }
}

pub(crate) fn weekday(s: &str) -> Option<Weekday> {
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
