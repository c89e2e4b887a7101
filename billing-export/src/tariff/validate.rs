//! Validation of `tariffs.toml`: every problem at once, each named by its key.

use std::collections::BTreeSet;

use chrono::NaiveDate;
use gridmeter_core::config::{Problems, Validate};
use rust_decimal::Decimal;

use super::model::*;
use super::pricing::tier_band;
use crate::registry::check_rate_scale;

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
