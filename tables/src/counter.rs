//! Counter rules: how the step between two readings of a cumulative register becomes
//! consumption. The aggregator computes window usage with them and the billing export
//! reconciles against raw registers with them: one implementation, one configuration type.
//!
//! For consecutive readings `before` (at `t0`) and `after` (at `t1`), all values as
//! `Decimal128(38, 9)` integers:
//! - a recorded meter swap with `t0 < at <= t1`: `(old_final - before) + (after - new_start)`;
//! - `after >= before`: `after - before`;
//! - a decrease where `(register_max + 1 - before) + after` is at most a tenth of the register
//!   range: that amount (a rollover);
//! - a decrease to at most a tenth of `before`: `after` (the register restarted from zero);
//! - any other decrease: `after - before` (negative, flagged estimated).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use gridmeter_core::config::Problems;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::flags::Flags;

/// `1` as a `Decimal128(38, 9)` integer.
pub const ONE: i128 = 1_000_000_000;

/// A register replaced at `at`: the old meter's register ended at `old_final`, the new one
/// started at `new_start` (`[[meter_swaps]]` in the aggregator's config and the registry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeterSwap {
    pub device_id: String,
    pub channel: String,
    pub at: DateTime<Utc>,
    pub old_final: Decimal,
    pub new_start: Decimal,
}

/// A meter swap in scaled integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Swap {
    /// µs since the epoch.
    pub at: i64,
    pub old_final: i128,
    pub new_start: i128,
}

/// The rules of one (device, channel) counter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CounterRules {
    /// The register maximum (scaled); the register wraps at `register_max + 1`. Without one
    /// a decrease is never a rollover.
    pub register_max: Option<i128>,
    pub swaps: Vec<Swap>,
}

/// Which rule a step followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Increase,
    MeterSwap,
    Rollover,
    Reset,
    Decrease,
}

impl Step {
    /// The usage flags of a window the step overlaps.
    pub fn flags(self) -> Flags {
        match self {
            Step::Increase => Flags::NONE,
            Step::MeterSwap | Step::Reset => Flags::RESET,
            Step::Rollover => Flags::ROLLOVER,
            Step::Decrease => Flags::ESTIMATED,
        }
    }

    /// Its name for reports (`meter_swap`, `rollover`, `reset`, `decrease`); `None` for a
    /// plain increase.
    pub fn event(self) -> Option<&'static str> {
        match self {
            Step::Increase => None,
            Step::MeterSwap => Some("meter_swap"),
            Step::Rollover => Some("rollover"),
            Step::Reset => Some("reset"),
            Step::Decrease => Some("decrease"),
        }
    }
}

fn scaled(d: Decimal) -> Option<i128> {
    gridmeter_core::decimal::to_scaled_i128(d)
}

impl CounterRules {
    /// The rules of `device`'s `channel` from a configuration: `override_max` (a per-device
    /// setting, the billing registry has one) or `register_max[channel]` or
    /// `default_register_max`, and the swaps recorded for that device and channel. Values
    /// with more than 9 decimal places are skipped ([`check`] reports them).
    pub fn resolve(
        default_register_max: Option<Decimal>,
        register_max: &BTreeMap<String, Decimal>,
        meter_swaps: &[MeterSwap],
        device: &str,
        channel: &str,
        override_max: Option<Decimal>,
    ) -> CounterRules {
        CounterRules {
            register_max: override_max
                .or_else(|| register_max.get(channel).copied())
                .or(default_register_max)
                .and_then(scaled),
            swaps: meter_swaps
                .iter()
                .filter(|m| m.device_id == device && m.channel == channel)
                .filter_map(|m| {
                    Some(Swap {
                        at: m.at.timestamp_micros(),
                        old_final: scaled(m.old_final)?,
                        new_start: scaled(m.new_start)?,
                    })
                })
                .collect(),
        }
    }

    /// The consumption from `before` at `t0` to `after` at `t1` (scaled) and the rule that
    /// gave it (module docs).
    pub fn step(&self, t0: i64, before: i128, t1: i64, after: i128) -> (i128, Step) {
        if let Some(s) = self.swaps.iter().find(|s| t0 < s.at && s.at <= t1) {
            return (
                (s.old_final - before) + (after - s.new_start),
                Step::MeterSwap,
            );
        }
        if after >= before {
            return (after - before, Step::Increase);
        }
        if let Some(max) = self.register_max {
            let wrapped = (max + ONE - before) + after;
            if wrapped >= 0 && wrapped * 10 <= max + ONE {
                return (wrapped, Step::Rollover);
            }
        }
        if after * 10 <= before {
            return (after, Step::Reset);
        }
        (after - before, Step::Decrease)
    }
}

/// Validation of a counter configuration (`default_register_max`, `[register_max]`,
/// `[[meter_swaps]]`): maxima positive, every value at most 9 decimal places.
pub fn check(
    default_register_max: Option<&Decimal>,
    register_max: &BTreeMap<String, Decimal>,
    meter_swaps: &[MeterSwap],
    p: &mut Problems,
) {
    let check_max = |key: String, d: &Decimal, p: &mut Problems| {
        if *d <= Decimal::ZERO {
            p.push(&key, "must be positive");
        } else if scaled(*d).is_none() {
            p.push(&key, "has more than 9 decimal places");
        }
    };
    if let Some(d) = default_register_max {
        check_max("default_register_max".into(), d, p);
    }
    for (ch, d) in register_max {
        check_max(format!("register_max.{ch}"), d, p);
    }
    for (i, s) in meter_swaps.iter().enumerate() {
        for (name, d) in [("old_final", &s.old_final), ("new_start", &s.new_start)] {
            if scaled(*d).is_none() {
                p.push(
                    format!("meter_swaps[{i}].{name}"),
                    "has more than 9 decimal places",
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(max: Option<i128>) -> CounterRules {
        CounterRules {
            register_max: max.map(|m| m * ONE),
            swaps: vec![],
        }
    }

    #[test]
    fn each_rule() {
        let r = rules(Some(999));
        assert_eq!(r.step(0, 10 * ONE, 1, 15 * ONE), (5 * ONE, Step::Increase));
        assert_eq!(r.step(0, 990 * ONE, 1, 5 * ONE), (15 * ONE, Step::Rollover));
        assert_eq!(r.step(0, 500 * ONE, 1, 5 * ONE), (5 * ONE, Step::Reset));
        assert_eq!(
            r.step(0, 500 * ONE, 1, 400 * ONE),
            (-100 * ONE, Step::Decrease)
        );
        assert_eq!(
            rules(None).step(0, 990 * ONE, 1, 5 * ONE),
            (5 * ONE, Step::Reset)
        );
        let swap = CounterRules {
            register_max: None,
            swaps: vec![Swap {
                at: 5,
                old_final: 100 * ONE,
                new_start: 0,
            }],
        };
        assert_eq!(
            swap.step(0, 90 * ONE, 5, 3 * ONE),
            (13 * ONE, Step::MeterSwap)
        );
        assert_eq!(swap.step(5, 3 * ONE, 9, 4 * ONE), (ONE, Step::Increase));
        assert_eq!(Step::MeterSwap.flags(), Flags::RESET);
        assert_eq!(Step::Decrease.event(), Some("decrease"));
    }

    #[test]
    fn resolve_prefers_the_most_specific_maximum() {
        let map: BTreeMap<String, Decimal> = [("energy_import".to_string(), Decimal::from(99))]
            .into_iter()
            .collect();
        let d = Some(Decimal::from(9));
        let r = CounterRules::resolve(d, &map, &[], "m", "energy_import", None);
        assert_eq!(r.register_max, Some(99 * ONE));
        let r = CounterRules::resolve(d, &map, &[], "m", "other", None);
        assert_eq!(r.register_max, Some(9 * ONE));
        let r = CounterRules::resolve(d, &map, &[], "m", "energy_import", Some(Decimal::ONE));
        assert_eq!(r.register_max, Some(ONE));
    }
}
