//! Estimation shapes for long gaps and the open end (aggregator/README.md, "Estimation"):
//!
//! - [`HistoryShape`]: the same meter's own usage at the same weekday and time of day over
//!   the last N weeks before the gap, per 15-minute slot of the week;
//! - [`StandardShape`]: a BDEW standard load profile (H0 households, G0 businesses), by
//!   season (winter 1 Nov–20 Mar, transition 21 Mar–14 May and 15 Sep–31 Oct, summer 15
//!   May–14 Sep) and day type (weekday, Saturday, Sunday), the static quarter-hour values as
//!   published with demandlib (`bdew_h0_g0.csv`, MIT licence); public holidays are not
//!   applied;
//! - [`FlatShape`]: a constant rate (the open end when no profile exists).
//!
//! All weights are integers (no floating point): a shape only says how a known register
//! difference is spread over a gap (ratios), and for the open end how much usage to expect.

use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Datelike, Utc};
use gridmeter_tables::Flags;

use crate::config::DAY_US;
use crate::series::{div_round, mul_div_round, Point, Shape};

/// The profiles' time resolution: 15 minutes.
pub const SLOT_US: i64 = 900_000_000;
const WEEK_US: i64 = 7 * DAY_US;
const SLOTS_PER_WEEK: usize = (WEEK_US / SLOT_US) as usize;
const SLOTS_PER_DAY: usize = (DAY_US / SLOT_US) as usize;

/// Expected usage per 15-minute slot of the week, from the meter's own history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryShape {
    /// Expected usage per slot (scaled).
    weight: Vec<i128>,
    /// `prefix[s]` = sum of `weight[k] * SLOT_US` for `k < s`.
    prefix: Vec<i128>,
}

impl HistoryShape {
    /// The shape of the steps of `points` (with `step(j)` the consumption from reading `j-1`
    /// to `j`) that lie inside `[before - weeks, before]`, are at most `max_gap_us` long and
    /// do not decrease. Each step's usage is spread over the slots it overlaps by time; a
    /// slot's weight is its usage per covered time times the slot length (averaged over the
    /// weeks), and a slot never covered gets the average of all. `None` when less than half
    /// of the week's slots are covered.
    pub fn from_history(
        points: &[Point],
        step: impl Fn(usize) -> i128,
        before: i64,
        weeks: u32,
        max_gap_us: i64,
    ) -> Option<HistoryShape> {
        let start = before - i64::from(weeks) * WEEK_US;
        let mut sum = vec![0i128; SLOTS_PER_WEEK];
        let mut covered = vec![0i64; SLOTS_PER_WEEK];
        let lo = points.partition_point(|p| p.ts < start);
        for j in (lo + 1)..points.len() {
            let (t0, t1) = (points[j - 1].ts, points[j].ts);
            if t1 > before {
                break;
            }
            let dt = t1 - t0;
            let u = step(j);
            if dt <= 0 || dt > max_gap_us || u < 0 {
                continue;
            }
            let mut a = t0;
            while a < t1 {
                let slot_end = (a.div_euclid(SLOT_US) + 1) * SLOT_US;
                let b = slot_end.min(t1);
                let s = slot_of_week(a);
                sum[s] += mul_div_round(u, b - a, dt);
                covered[s] += b - a;
                a = b;
            }
        }
        if covered.iter().filter(|c| **c > 0).count() * 2 < SLOTS_PER_WEEK {
            return None;
        }
        let all_sum: i128 = sum.iter().sum();
        let all_cov: i128 = covered.iter().map(|c| *c as i128).sum();
        let fill = div_round(all_sum * SLOT_US as i128, all_cov.max(1));
        let weight: Vec<i128> = (0..SLOTS_PER_WEEK)
            .map(|s| {
                if covered[s] > 0 {
                    div_round(sum[s] * SLOT_US as i128, covered[s] as i128)
                } else {
                    fill
                }
            })
            .collect();
        let mut prefix = Vec::with_capacity(SLOTS_PER_WEEK + 1);
        let mut acc = 0i128;
        for w in &weight {
            prefix.push(acc);
            acc += w * SLOT_US as i128;
        }
        prefix.push(acc);
        Some(HistoryShape { weight, prefix })
    }

    /// Expected usage of slot `s` of the week (0 = Thursday 00:00 UTC, the epoch's weekday).
    pub fn slot_weight(&self, s: usize) -> i128 {
        self.weight[s]
    }

    /// Weight·µs from the epoch to `t`.
    fn absolute(&self, t: i64) -> i128 {
        let w = t.div_euclid(WEEK_US) as i128;
        let r = t.rem_euclid(WEEK_US);
        let s = (r / SLOT_US) as usize;
        let o = (r % SLOT_US) as i128;
        w * self.prefix[SLOTS_PER_WEEK] + self.prefix[s] + self.weight[s] * o
    }
}

fn slot_of_week(t: i64) -> usize {
    (t.rem_euclid(WEEK_US) / SLOT_US) as usize
}

impl Shape for HistoryShape {
    fn cum(&self, t0: i64, t: i64) -> i128 {
        self.absolute(t) - self.absolute(t0)
    }

    fn expected(&self, t0: i64, t: i64) -> i128 {
        div_round(self.cum(t0, t), SLOT_US as i128)
    }

    fn method(&self) -> Flags {
        Flags::METHOD_HISTORY
    }
}

/// A BDEW standard load profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StandardProfile {
    /// Households.
    H0,
    /// Businesses (general).
    G0,
}

impl StandardProfile {
    /// `H0` or `G0`.
    pub fn from_name(name: &str) -> Option<StandardProfile> {
        match name {
            "H0" | "h0" => Some(StandardProfile::H0),
            "G0" | "g0" => Some(StandardProfile::G0),
            _ => None,
        }
    }

    /// The quarter-hour value (scaled by 10^9) of the day containing `day_start` (UTC
    /// midnight) at slot `slot` (0..96).
    pub fn value(self, day_start: i64, slot: usize) -> i128 {
        let (period, weekday) = day_type(day_start);
        table()[self as usize][period * 7 + weekday][slot]
    }
}

/// (period: 0 winter, 1 transition, 2 summer; weekday 0 = Monday .. 6 = Sunday).
fn day_type(day_start: i64) -> (usize, usize) {
    let d = DateTime::<Utc>::from_timestamp_micros(day_start)
        .map(|t| t.date_naive())
        .unwrap_or_default();
    let md = (d.month(), d.day());
    let period = if md >= (11, 1) || md <= (3, 20) {
        0
    } else if ((5, 15)..=(9, 14)).contains(&md) {
        2
    } else {
        1
    };
    (period, d.weekday().num_days_from_monday() as usize)
}

type Table = [Vec<Vec<i128>>; 2];

/// The embedded profiles: [profile][period * 7 + weekday][slot].
fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        let empty = || vec![vec![0i128; SLOTS_PER_DAY]; 21];
        let mut t: Table = [empty(), empty()];
        for line in include_str!("bdew_h0_g0.csv").lines().skip(1) {
            let f: Vec<&str> = line.split(',').collect();
            let [period, weekday, slot, h0, g0] = f[..] else {
                continue;
            };
            let p = match period {
                "winter" => 0,
                "transition" => 1,
                _ => 2,
            };
            let (Ok(wd), Ok(s)) = (weekday.parse::<usize>(), slot.parse::<usize>()) else {
                continue;
            };
            if !(1..=7).contains(&wd) || s >= SLOTS_PER_DAY {
                continue;
            }
            for (k, v) in [h0, g0].into_iter().enumerate() {
                let scaled = v
                    .parse::<rust_decimal::Decimal>()
                    .ok()
                    .and_then(gridmeter_core::decimal::to_scaled_i128)
                    .unwrap_or(0);
                t[k][p * 7 + wd - 1][s] = scaled;
            }
        }
        t
    })
}

/// A standard load profile, optionally scaled to a meter's usage: `expected` is the profile
/// weight times `usage / weight` of a reference span of the meter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandardShape {
    /// Which profile.
    pub profile: StandardProfile,
    /// (usage, profile weight) of a reference span: the scale of `expected`.
    pub scale: Option<(i128, i128)>,
}

impl StandardShape {
    /// The profile weight (value·µs) of `[t0, t]`, day by day.
    fn weight(&self, t0: i64, t: i64) -> i128 {
        if t <= t0 {
            return 0;
        }
        let mut total = 0i128;
        let mut a = t0;
        while a < t {
            let day = a.div_euclid(DAY_US) * DAY_US;
            let b = (day + DAY_US).min(t);
            let (s0, s1) = ((a - day) / SLOT_US, (b - day - 1) / SLOT_US);
            for s in s0..=s1 {
                let lo = (day + s * SLOT_US).max(a);
                let hi = (day + (s + 1) * SLOT_US).min(b);
                total += self.profile.value(day, s as usize) * (hi - lo) as i128;
            }
            a = b;
        }
        total
    }
}

impl Shape for StandardShape {
    fn cum(&self, t0: i64, t: i64) -> i128 {
        self.weight(t0, t)
    }

    fn expected(&self, t0: i64, t: i64) -> i128 {
        match self.scale {
            Some((usage, weight)) if weight > 0 => {
                let w = self.weight(t0, t);
                w.checked_mul(usage)
                    .map(|x| div_round(x, weight))
                    .unwrap_or_else(|| div_round(w, weight) * usage)
            }
            _ => 0,
        }
    }

    fn method(&self) -> Flags {
        Flags::METHOD_STANDARD_PROFILE
    }
}

/// A constant rate: `usage` over `span_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlatShape {
    /// Usage (scaled) over `span_us`.
    pub usage: i128,
    /// The span, µs.
    pub span_us: i64,
}

impl Shape for FlatShape {
    fn cum(&self, t0: i64, t: i64) -> i128 {
        (t - t0).max(0) as i128
    }

    fn expected(&self, t0: i64, t: i64) -> i128 {
        if self.span_us <= 0 {
            return 0;
        }
        mul_div_round(self.usage, (t - t0).max(0), self.span_us)
    }

    fn method(&self) -> Flags {
        Flags::METHOD_LINEAR
    }
}

/// The shape for a gap starting at `before`: the meter's own history if it has enough, else
/// the class's standard profile, else none (linear).
pub fn gap_shape(
    points: &[Point],
    step: impl Fn(usize) -> i128,
    before: i64,
    weeks: u32,
    max_gap_us: i64,
    standard: Option<StandardProfile>,
) -> Option<Arc<dyn Shape>> {
    if let Some(h) = HistoryShape::from_history(points, step, before, weeks, max_gap_us) {
        return Some(Arc::new(h));
    }
    standard.map(|profile| {
        Arc::new(StandardShape {
            profile,
            scale: None,
        }) as Arc<dyn Shape>
    })
}

/// The shape past the last reading (at `last`): own history; else the standard profile
/// scaled to the usage of the last `weeks` (at least a day of readings); else that usage as a
/// flat rate; else none.
pub fn open_end_shape(
    points: &[Point],
    step: impl Fn(usize) -> i128 + Copy,
    last: i64,
    weeks: u32,
    max_gap_us: i64,
    standard: Option<StandardProfile>,
) -> Option<Arc<dyn Shape>> {
    if let Some(h) = HistoryShape::from_history(points, step, last, weeks, max_gap_us) {
        return Some(Arc::new(h));
    }
    let start = last - i64::from(weeks) * WEEK_US;
    let lo = points.partition_point(|p| p.ts < start);
    let first = points.get(lo)?.ts;
    if last - first < DAY_US {
        return None;
    }
    let usage: i128 = ((lo + 1)..points.len())
        .filter(|&j| points[j].ts <= last)
        .map(step)
        .sum();
    if usage < 0 {
        return None;
    }
    Some(match standard {
        Some(profile) => {
            let s = StandardShape {
                profile,
                scale: None,
            };
            Arc::new(StandardShape {
                profile,
                scale: Some((usage, s.weight(first, last))),
            })
        }
        None => Arc::new(FlatShape {
            usage,
            span_us: last - first,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_types_and_seasons() {
        // 2026-01-05 is a Monday in winter; 2026-07-04 a Saturday in summer.
        let mon = 1_767_571_200_000_000;
        assert_eq!(day_type(mon), (0, 0));
        let sat = 1_783_123_200_000_000;
        assert_eq!(day_type(sat), (2, 5));
        // The first quarter hours of a winter Monday as published: H0 0.0676, G0 0.06552.
        assert_eq!(StandardProfile::H0.value(mon, 0), 67_600_000);
        assert_eq!(StandardProfile::G0.value(mon, 0), 65_520_000);
        let day: i128 = (0..96).map(|s| StandardProfile::H0.value(mon, s)).sum();
        assert!(day > 0);
    }
}
