//! Validation rules over the intervals of one series (aggregator/README.md, "Validation").
//!
//! Rules look at the windows of the smallest configured size (the base interval, `15m`)
//! computed from the readings as they are, before any replacement; one pass. A failure
//! becomes a row of the `exceptions` table and its rule's flag on the rows of every window
//! size overlapping the interval. A rule with `action = "estimate"` also replaces the value:
//! for a counter, the readings inside the failed interval (`(start, end]`, never the
//! series' first or last reading) are left out and the span between the readings kept is
//! estimated like any gap, so the register total between kept readings stays exact. A
//! failure whose interval starts at a reading already left out for an earlier failure (the
//! fall back after a spike) leaves no further reading out.

use std::collections::HashMap;

use gridmeter_core::Kind;
use gridmeter_tables::exceptions::Rule;
use gridmeter_tables::Flags;

use crate::config::{parse_duration_us, VeeConfig};
use crate::series::{div_round, Point, WindowValues, ONE};

/// A rule as it applies to one series (parameters scaled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedRule {
    /// Which rule.
    pub rule: Rule,
    /// Whether a failure is replaced by an estimate (`action = "estimate"`).
    pub estimate: bool,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    /// Lower limit (scaled).
    pub min: Option<i128>,
    /// Upper limit (scaled).
    pub max: Option<i128>,
    /// Spike factor (scaled).
    pub factor: Option<i128>,
    /// Spike: trailing intervals of the median.
    pub trailing: usize,
    /// Stuck: hours without change.
    pub hours: i64,
    /// Timestamp gap: the longest step allowed, µs.
    pub max_gap_us: i64,
}

/// One failed interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Interval start, µs.
    pub start: i64,
    /// Interval end, µs.
    pub end: i64,
    /// The rule that failed.
    pub rule: Rule,
    /// The value it looked at (scaled).
    pub observed: Option<i128>,
    /// The limit it broke (scaled).
    pub threshold: Option<i128>,
    /// Whether the value is replaced by an estimate.
    pub estimate: bool,
    /// As configured.
    pub severity: String,
}

const HOUR_US: i64 = 3_600_000_000;

fn scaled(d: Option<rust_decimal::Decimal>) -> Option<i128> {
    d.and_then(gridmeter_core::decimal::to_scaled_i128)
}

/// The rules of `[vee]` that apply to `device`'s `channel` (by class and channel).
pub fn rules_for(
    vee: &VeeConfig,
    default_max_gap_us: i64,
    device: &str,
    channel: &str,
) -> Vec<ResolvedRule> {
    let class = vee.class_of(device).map(|c| c.name.as_str());
    vee.rules
        .iter()
        .filter(|r| r.channel.as_deref().is_none_or(|c| c == channel))
        .filter(|r| r.class.is_none() || r.class.as_deref() == class)
        .filter_map(|r| {
            Some(ResolvedRule {
                rule: Rule::from_name(&r.rule)?,
                estimate: r.estimates(),
                severity: r.severity.clone().unwrap_or_else(|| "warning".into()),
                min: scaled(r.min),
                max: scaled(r.max),
                factor: scaled(r.factor),
                trailing: r.trailing.unwrap_or(96) as usize,
                hours: i64::from(r.hours.unwrap_or(0)),
                max_gap_us: r
                    .max_gap
                    .as_deref()
                    .and_then(|g| parse_duration_us(g).ok())
                    .unwrap_or(default_max_gap_us),
            })
        })
        .collect()
}

/// How far before the first interval to report the rules need intervals (the spike
/// median's trailing intervals, the stuck rule's hours).
pub fn context_us(rules: &[ResolvedRule], base_us: i64) -> i64 {
    rules
        .iter()
        .map(|r| match r.rule {
            Rule::Spike => r.trailing as i64 * base_us,
            Rule::Stuck => r.hours * HOUR_US,
            _ => 0,
        })
        .max()
        .unwrap_or(0)
}

/// The failures of `rules` in `windows` (the base intervals of a series, in time order) of a
/// series of `kind` with readings `points`.
pub fn evaluate(
    rules: &[ResolvedRule],
    kind: Kind,
    points: &[Point],
    windows: &[WindowValues],
) -> Vec<Failure> {
    let mut out = Vec::new();
    for r in rules {
        let fail = |w: &WindowValues, observed: Option<i128>, threshold: Option<i128>| Failure {
            start: w.start,
            end: w.end,
            rule: r.rule,
            observed,
            threshold,
            estimate: r.estimate && kind == Kind::Counter,
            severity: r.severity.clone(),
        };
        match (r.rule, kind) {
            (Rule::GaugeRange, Kind::Gauge) => {
                for w in windows {
                    match (w.min, w.max) {
                        (Some(lo), _) if r.min.is_some_and(|m| lo < m) => {
                            out.push(fail(w, Some(lo), r.min))
                        }
                        (_, Some(hi)) if r.max.is_some_and(|m| hi > m) => {
                            out.push(fail(w, Some(hi), r.max))
                        }
                        _ => {}
                    }
                }
            }
            (Rule::GaugeRange, _) | (_, Kind::Gauge) => {}
            (Rule::HighLimit, _) => {
                for w in windows {
                    if let (Some(u), Some(m)) = (w.usage, r.max) {
                        if u > m {
                            out.push(fail(w, Some(u), Some(m)));
                        }
                    }
                }
            }
            (Rule::LowLimit, _) => {
                for w in windows {
                    if let (Some(u), Some(m)) = (w.usage, r.min) {
                        if u < m {
                            out.push(fail(w, Some(u), Some(m)));
                        }
                    }
                }
            }
            (Rule::Negative, _) => {
                for w in windows {
                    if let Some(u) = w.usage.filter(|u| *u < 0) {
                        out.push(fail(w, Some(u), Some(0)));
                    }
                }
            }
            (Rule::ImplausibleRollover, Kind::Counter) => {
                for w in windows {
                    if let (Some(u), Some(m)) = (w.usage, r.max) {
                        if w.flags.contains(Flags::ROLLOVER) && u > m {
                            out.push(fail(w, Some(u), Some(m)));
                        }
                    }
                }
            }
            (Rule::ImplausibleRollover, _) => {}
            (Rule::Spike, _) => {
                let factor = r.factor.unwrap_or(10 * ONE);
                // The usages of the trailing intervals, kept sorted as the window slides.
                let mut sorted: Vec<i128> = Vec::with_capacity(r.trailing + 1);
                for (i, w) in windows.iter().enumerate() {
                    if i > r.trailing {
                        if let Some(old) = windows[i - r.trailing - 1].usage {
                            if let Ok(k) = sorted.binary_search(&old) {
                                sorted.remove(k);
                            }
                        }
                    }
                    if i > 0 {
                        if let Some(prev) = windows[i - 1].usage {
                            let k = sorted.partition_point(|x| *x < prev);
                            sorted.insert(k, prev);
                        }
                    }
                    let Some(u) = w.usage else { continue };
                    if sorted.len() < 4.min(r.trailing) {
                        continue;
                    }
                    let Some(m) = sorted
                        .get((sorted.len().max(1) - 1) / 2)
                        .copied()
                        .filter(|m| *m > 0)
                    else {
                        continue;
                    };
                    let threshold = div_round(m * factor, ONE);
                    if u > threshold {
                        out.push(fail(w, Some(u), Some(threshold)));
                    }
                }
            }
            (Rule::Stuck, Kind::Counter) => {
                let need = r.hours * HOUR_US;
                let mut i = 0;
                while i < windows.len() {
                    if windows[i].usage != Some(0) {
                        i += 1;
                        continue;
                    }
                    let mut k = i;
                    while k + 1 < windows.len()
                        && windows[k + 1].usage == Some(0)
                        && windows[k + 1].start == windows[k].end
                    {
                        k += 1;
                    }
                    let span = windows[k].end - windows[i].start;
                    if span >= need {
                        let observed = Some(div_round(span as i128 * ONE, HOUR_US as i128));
                        for w in &windows[i..=k] {
                            out.push(fail(w, observed, Some(r.hours as i128 * ONE)));
                        }
                    }
                    i = k + 1;
                }
            }
            (Rule::Stuck, _) => {}
            (Rule::TimestampGap, _) => {
                for w in windows {
                    let lo = points.partition_point(|p| p.ts <= w.start).max(1);
                    let mut longest = 0;
                    for j in lo..points.len() {
                        if points[j - 1].ts >= w.end {
                            break;
                        }
                        longest = longest.max(points[j].ts - points[j - 1].ts);
                    }
                    if longest > r.max_gap_us {
                        out.push(fail(
                            w,
                            Some(longest as i128 * 1_000),
                            Some(r.max_gap_us as i128 * 1_000),
                        ));
                    }
                }
            }
        }
    }
    out.sort_by_key(|f| (f.start, f.rule));
    out
}

/// Which readings to keep after replacing the failures with `estimate` (module docs).
pub fn keep_mask(points: &[Point], failures: &[Failure]) -> Vec<bool> {
    let n = points.len();
    let mut keep = vec![true; n];
    let mut seen: HashMap<i64, ()> = HashMap::new();
    for f in failures.iter().filter(|f| f.estimate) {
        if seen.insert(f.start, ()).is_some() {
            continue;
        }
        // The reading bounding the interval on the left: left out already?
        let left = points.partition_point(|p| p.ts <= f.start);
        if left > 0 && !keep[left - 1] {
            continue;
        }
        let hi = points.partition_point(|p| p.ts <= f.end);
        for (k, kept) in keep.iter_mut().enumerate().take(hi).skip(left) {
            if k > 0 && k + 1 < n {
                *kept = false;
            }
        }
    }
    keep
}

/// The flags of every failed base interval, by its start.
pub fn window_flags(failures: &[Failure]) -> HashMap<i64, Flags> {
    let mut out: HashMap<i64, Flags> = HashMap::new();
    for f in failures {
        *out.entry(f.start).or_default() |= f.rule.flag();
    }
    out
}
