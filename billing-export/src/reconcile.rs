//! Reconciliation: per customer, device and channel, the billed usage equals the sum of the
//! current 15-minute usage (× multiplier), and that sum equals the register difference
//! computed independently from the raw readings.
//!
//! What exactly is compared (all in the channel's unit, exact decimals):
//!
//! 1. `billed`: for every volumetric component (flat, time-of-use, tiered) pricing the
//!    channel, the sum of its lines' `usage_quantity` must equal `usage × multiplier`.
//! 2. `usage`: the sum of the current-revision 15-minute `usage` with `window_start` in the
//!    billed range `[max(period start, installed), min(period end, removed))`.
//! 3. `raw` (counter channels): readings deduplicated by `(device_id, seq)`, sorted by
//!    `(ts, seq)`. Each consecutive pair `(a, b)` contributes an increment, with the
//!    aggregator's rules (`gridmeter_tables::counter`, the one implementation both use): a
//!    meter swap between them (registry `[[meter_swaps]]`) gives
//!    `(old_final - a) + (b - new_start)`; `b >= a` gives `b - a`; a decrease is a rollover
//!    `(register_max + 1 - a) + b` when that is at most a tenth of the register range
//!    (registry `[register_max]` / `default_register_max`, set as in the aggregator's config),
//!    a reset `b` when `b <= a / 10`, and otherwise `b - a` (negative). The increment is spread
//!    linearly over `[a.ts, b.ts]`; the cumulative register at an instant `t` strictly between
//!    two readings is `C(a) + round_half_even_9dp(inc × (t − a.ts) / (b.ts − a.ts))`, at or after
//!    a reading it includes that reading. `raw = C(range end) − C(range start)`; before the first
//!    reading C is 0, after the last it is the last reading's C. This is the same boundary
//!    interpolation the aggregator applies at window boundaries, so the 15-minute usages
//!    telescope to exactly this difference.
//!    Delta channels: `raw` = sum of the values with `ts` in the range.
//! 4. Windows whose usage is not a register difference by construction are left out of the
//!    comparison of `usage` with `raw`, on both sides: those carrying a billing-team edit
//!    (flag `edited`: the edit moves the consumption curve away from the readings), those
//!    estimated past the last reading (`method_open_end`: no reading backs them yet), and
//!    the estimated windows adjoining either (the aggregator's curve and the straight lines
//!    between the raw readings agree only where readings are kept and not estimated across,
//!    so a left-out span reaches out to such a boundary; [`crate::tables::Usage::left_out`]).
//!    So `usage − Σ usage(left out) = raw − Σ (C(b) − C(a))` over the left-out spans
//!    `[a, b)`, with the raw curve `C` above (flat after the last reading). The CSV still
//!    shows the full `usage` and `raw`, and names what was left out.
//!
//! Gauge channels are not reconciled (their quantity is derived from averages).

use rust_decimal::Decimal;

use crate::tables::RawReading;

/// Counter semantics shared with the aggregator (its `[register_max]`/`default_register_max`
/// and `[[meter_swaps]]`, mirrored in the registry).
#[derive(Debug, Clone, Default)]
pub struct CounterRules {
    pub register_max: Option<Decimal>,
    /// (at µs, old_final, new_start)
    pub swaps: Vec<(i64, Decimal, Decimal)>,
}

/// The register difference over `[from_us, to_us)` per the rule above.
pub fn raw_difference(
    kind: &str,
    readings: &[RawReading],
    from_us: i64,
    to_us: i64,
    rules: &CounterRules,
) -> Decimal {
    summarize(kind, readings, from_us, to_us, rules).difference
}

/// How a register value shown on an invoice was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadingMethod {
    /// A reading taken exactly at the instant.
    Actual,
    /// Linearly interpolated between the readings around the instant (the consumption curve).
    Interpolated,
    /// No reading before the instant: the first reading after it (the curve starts there).
    FirstReading,
    /// No reading after the instant: the last reading before it (the curve ends there).
    LastReading,
}

/// A register value at (or, for first/last readings, near) a billing boundary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RegisterValue {
    pub value: Decimal,
    /// The instant of the value: the boundary, or the reading's time.
    pub at_us: i64,
    pub method: ReadingMethod,
}

/// What the raw readings say about one channel over the billed range.
#[derive(Debug, Clone, PartialEq)]
pub struct RawSummary {
    /// `raw`: the register difference (counters) or the sum of deltas.
    pub difference: Decimal,
    /// Readings considered (deduplicated).
    pub readings: usize,
    /// Counters: the register at the start and end of the range.
    pub start: Option<RegisterValue>,
    pub end: Option<RegisterValue>,
    /// Counter steps overlapping the range that were not plain increases: `rollover`,
    /// `reset`, `meter_swap`, `decrease` (each once, in this order). With any of them the
    /// end reading minus the start reading is not the consumption.
    pub events: Vec<&'static str>,
    /// The raw curve's difference over the windows left out of the comparison (point 4 of
    /// the module docs); zero when none are.
    pub excluded: Decimal,
}

/// The raw side of one channel over `[from_us, to_us)`: see the module docs.
pub fn summarize(
    kind: &str,
    readings: &[RawReading],
    from_us: i64,
    to_us: i64,
    rules: &CounterRules,
) -> RawSummary {
    summarize_excluding(kind, readings, from_us, to_us, rules, &[])
}

/// [`summarize`] that also works out the raw curve's difference over the counter windows
/// `excluded` (`[a, b)` in µs) that the comparison leaves out ([`RawSummary::excluded`]).
pub fn summarize_excluding(
    kind: &str,
    readings: &[RawReading],
    from_us: i64,
    to_us: i64,
    rules: &CounterRules,
    excluded: &[(i64, i64)],
) -> RawSummary {
    if kind == "delta" {
        return RawSummary {
            difference: readings
                .iter()
                .filter(|r| r.ts >= from_us && r.ts < to_us)
                .map(|r| r.value)
                .sum(),
            readings: readings.len(),
            start: None,
            end: None,
            events: Vec::new(),
            excluded: Decimal::ZERO,
        };
    }
    let empty = RawSummary {
        difference: Decimal::ZERO,
        readings: 0,
        start: None,
        end: None,
        events: Vec::new(),
        excluded: Decimal::ZERO,
    };
    if readings.is_empty() {
        return empty;
    }
    // Exact integer arithmetic on value × 10^9, like the aggregator.
    let max = rules.register_max.map(scaled);
    let shared = gridmeter_tables::counter::CounterRules {
        register_max: max,
        swaps: rules
            .swaps
            .iter()
            .map(|(t, o, n)| gridmeter_tables::counter::Swap {
                at: *t,
                old_final: scaled(*o),
                new_start: scaled(*n),
            })
            .collect(),
    };
    let mut steps = Vec::with_capacity(readings.len());
    let mut cum = Vec::with_capacity(readings.len());
    let mut c: i128 = 0;
    cum.push(c);
    for w in readings.windows(2) {
        let s = step(&w[0], &w[1], &shared);
        c += s.0;
        cum.push(c);
        steps.push(s);
    }
    let curve = Curve {
        readings,
        cum: &cum,
        steps: &steps,
        max,
    };
    let mut events = Vec::new();
    for name in ["rollover", "reset", "meter_swap", "decrease"] {
        let hit = readings
            .windows(2)
            .zip(&steps)
            .any(|(w, s)| w[0].ts < to_us && w[1].ts > from_us && s.1.name() == Some(name));
        if hit {
            events.push(name);
        }
    }
    let first_ts = readings[0].ts;
    RawSummary {
        difference: from_scaled(curve.cum_at(to_us) - curve.cum_at(from_us)),
        readings: readings.len(),
        start: (first_ts < to_us)
            .then(|| curve.register_at(from_us))
            .flatten(),
        end: curve.register_at(to_us).filter(|_| first_ts < to_us),
        events,
        excluded: from_scaled(
            excluded
                .iter()
                .map(|&(a, b)| curve.cum_at(b) - curve.cum_at(a))
                .sum(),
        ),
    }
}

fn scaled(d: Decimal) -> i128 {
    gridmeter_core::decimal::to_scaled_i128(d).unwrap_or(0)
}

fn from_scaled(v: i128) -> Decimal {
    gridmeter_core::decimal::from_scaled_i128(v).unwrap_or(Decimal::MAX)
}

const ONE: i128 = 1_000_000_000;

/// Which of the aggregator's counter rules a step between two readings followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepKind {
    Increase,
    /// (old_final, new_start), scaled.
    Swap(i128, i128),
    Rollover,
    Reset,
    Decrease,
}

impl StepKind {
    fn name(self) -> Option<&'static str> {
        match self {
            StepKind::Increase => None,
            StepKind::Swap(..) => Some("meter_swap"),
            StepKind::Rollover => Some("rollover"),
            StepKind::Reset => Some("reset"),
            StepKind::Decrease => Some("decrease"),
        }
    }
}

/// One step of the consumption curve (scaled integers): the counter rules shared with the
/// aggregator (`gridmeter_tables::counter`, one implementation).
fn step(
    p0: &RawReading,
    p1: &RawReading,
    rules: &gridmeter_tables::counter::CounterRules,
) -> (i128, StepKind) {
    use gridmeter_tables::counter::Step;
    let (v, rule) = rules.step(p0.ts, scaled(p0.value), p1.ts, scaled(p1.value));
    let kind = match rule {
        Step::Increase => StepKind::Increase,
        Step::Rollover => StepKind::Rollover,
        Step::Reset => StepKind::Reset,
        Step::Decrease => StepKind::Decrease,
        Step::MeterSwap => rules
            .swaps
            .iter()
            .find(|s| p0.ts < s.at && s.at <= p1.ts)
            .map_or(StepKind::Decrease, |s| {
                StepKind::Swap(s.old_final, s.new_start)
            }),
    };
    (v, kind)
}

/// The consumption curve of one channel's readings.
struct Curve<'a> {
    readings: &'a [RawReading],
    /// Cumulative consumption at each reading (scaled).
    cum: &'a [i128],
    /// Step from reading i to i + 1.
    steps: &'a [(i128, StepKind)],
    max: Option<i128>,
}

impl Curve<'_> {
    /// Index of the last reading with `ts <= t`.
    fn last_at_or_before(&self, t: i64) -> Option<usize> {
        self.readings.partition_point(|r| r.ts <= t).checked_sub(1)
    }

    /// The cumulative consumption C(t): 0 before the first reading, the last reading's C after
    /// the last one, interpolated (half-even, 9 places) in between.
    fn cum_at(&self, t: i64) -> i128 {
        let Some(i) = self.last_at_or_before(t) else {
            return 0;
        };
        if self.readings[i].ts == t || i + 1 == self.readings.len() {
            return self.cum[i];
        }
        self.cum[i] + self.share(i, t)
    }

    /// The part of step `i` consumed by `t` (scaled).
    fn share(&self, i: usize, t: i64) -> i128 {
        let (a, b) = (&self.readings[i], &self.readings[i + 1]);
        mul_div_round(self.steps[i].0, t - a.ts, b.ts - a.ts)
    }

    /// The register value at `t`, as the curve has it.
    fn register_at(&self, t: i64) -> Option<RegisterValue> {
        let rv = |v: i128, at_us: i64, method| RegisterValue {
            value: from_scaled(v),
            at_us,
            method,
        };
        let Some(i) = self.last_at_or_before(t) else {
            let first = self.readings.first()?;
            return Some(rv(
                scaled(first.value),
                first.ts,
                ReadingMethod::FirstReading,
            ));
        };
        let a = &self.readings[i];
        if a.ts == t {
            return Some(rv(scaled(a.value), t, ReadingMethod::Actual));
        }
        if i + 1 == self.readings.len() {
            return Some(rv(scaled(a.value), a.ts, ReadingMethod::LastReading));
        }
        let base = scaled(a.value);
        let share = self.share(i, t);
        let v = match self.steps[i].1 {
            StepKind::Increase | StepKind::Decrease => base + share,
            StepKind::Rollover => {
                let v = base + share;
                match self.max {
                    Some(m) if v > m => v - (m + ONE),
                    _ => v,
                }
            }
            // The curve counts a reset as a restart from zero at the earlier reading.
            StepKind::Reset => share,
            StepKind::Swap(old_final, new_start) => {
                if base + share <= old_final {
                    base + share
                } else {
                    new_start + (base + share - old_final)
                }
            }
        };
        Some(rv(v, t, ReadingMethod::Interpolated))
    }
}

/// `n / d` rounded half-to-even; `d > 0`.
fn div_round(n: i128, d: i128) -> i128 {
    let q = n.div_euclid(d);
    let r = n.rem_euclid(d);
    match (2 * r).cmp(&d) {
        std::cmp::Ordering::Less => q,
        std::cmp::Ordering::Greater => q + 1,
        std::cmp::Ordering::Equal => q + (q & 1),
    }
}

/// `a × b / c` rounded half-to-even without overflow for realistic values; `c > 0`.
fn mul_div_round(a: i128, b: i64, c: i64) -> i128 {
    let (b, c) = (b as i128, c as i128);
    let q = a.div_euclid(c);
    let r = a.rem_euclid(c);
    q * b + div_round(r * b, c)
}

/// One row of `reconciliation.csv`.
#[derive(Debug, Clone)]
pub struct Row {
    pub customer_id: String,
    pub site_id: String,
    pub device_id: String,
    pub channel: String,
    pub kind: String,
    pub unit: String,
    pub multiplier: Decimal,
    pub usage: Decimal,
    pub raw: Option<Decimal>,
    pub billed: Option<Decimal>,
    pub problems: Vec<String>,
    /// For a row without problems: what the comparison left out (edited or open-end
    /// windows), shown as its message; empty when nothing was.
    pub note: String,
}

pub const HEADER: &str = "customer_id,site_id,device_id,channel,kind,unit,multiplier,usage_quantity,raw_register_difference,billed_usage_quantity,status,message";

/// `reconciliation.csv` (text columns neutralised as in [`crate::csv_out`]).
pub fn to_csv(rows: &[Row]) -> String {
    let mut out = String::from(HEADER);
    out.push_str("\r\n");
    csv_rows(rows, &mut out);
    out
}

/// Appends the CSV rows of `rows` to `out`.
pub fn csv_rows(rows: &[Row], out: &mut String) {
    use crate::money::fixed;
    for r in rows {
        let f = [
            (r.customer_id.clone(), true),
            (r.site_id.clone(), true),
            (r.device_id.clone(), true),
            (r.channel.clone(), true),
            (r.kind.clone(), true),
            (r.unit.clone(), true),
            (fixed(r.multiplier, 9), false),
            (fixed(r.usage, 9), false),
            (r.raw.map(|v| fixed(v, 9)).unwrap_or_default(), false),
            (r.billed.map(|v| fixed(v, 9)).unwrap_or_default(), false),
            (
                if r.problems.is_empty() {
                    "ok"
                } else {
                    "MISMATCH"
                }
                .to_string(),
                true,
            ),
            (
                if r.problems.is_empty() {
                    r.note.clone()
                } else {
                    r.problems.join("; ")
                },
                true,
            ),
        ];
        let cells: Vec<(&str, bool)> = f.iter().map(|(v, t)| (v.as_str(), *t)).collect();
        crate::csv_out::row(out, &cells);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(ts: i64, v: i64) -> RawReading {
        RawReading {
            ts,
            seq: ts as u64,
            value: Decimal::from(v),
        }
    }

    #[test]
    fn interpolates_at_boundaries() {
        // 0 @ t=0, 100 @ t=300: the range [100, 200) gets a third.
        let rs = [r(0, 0), r(300, 100)];
        let no = CounterRules::default();
        let third = raw_difference("counter", &rs, 100, 200, &no);
        assert_eq!(third.to_string(), "33.333333334");
        // Telescoping: the three thirds add back to exactly 100.
        let sum = raw_difference("counter", &rs, 0, 100, &no)
            + third
            + raw_difference("counter", &rs, 200, 300, &no);
        assert_eq!(sum, Decimal::from(100));
    }

    #[test]
    fn register_values_at_the_bounds() {
        let no = CounterRules::default();
        // Readings 1000 @ 0, 1100 @ 300, 1130 @ 600: [0, 450) starts on a reading and ends
        // half-way through the second step.
        let rs = [r(0, 1000), r(300, 1100), r(600, 1130)];
        let s = summarize("counter", &rs, 0, 450, &no);
        assert_eq!(s.difference, Decimal::from(115));
        let (a, b) = (s.start.unwrap(), s.end.unwrap());
        assert_eq!(
            (a.value, a.method),
            (Decimal::from(1000), ReadingMethod::Actual)
        );
        assert_eq!((b.value, b.at_us), (Decimal::from(1115), 450));
        assert_eq!(b.method, ReadingMethod::Interpolated);
        assert_eq!(b.value - a.value, s.difference);
        assert!(s.events.is_empty());
        // A range starting before the first reading and ending after the last.
        let s = summarize("counter", &rs, -100, 900, &no);
        assert_eq!(s.start.unwrap().method, ReadingMethod::FirstReading);
        assert_eq!(s.start.unwrap().at_us, 0);
        assert_eq!(s.end.unwrap().method, ReadingMethod::LastReading);
        assert_eq!(s.end.unwrap().value, Decimal::from(1130));
        // No reading before the end of the range: nothing to show.
        assert!(summarize("counter", &rs, -900, -100, &no).end.is_none());
        // A rollover at 999_999 half-way: the register wraps, and the event is reported.
        let ro = [r(0, 999_990), r(10, 10)];
        let max = CounterRules {
            register_max: Some(Decimal::from(999_999)),
            swaps: vec![],
        };
        let s = summarize("counter", &ro, 0, 8, &max);
        assert_eq!(s.difference, Decimal::from(16));
        assert_eq!(s.end.unwrap().value, Decimal::from(6));
        assert_eq!(s.events, vec!["rollover"]);
    }

    #[test]
    fn rollover_and_reset() {
        let rs = [r(0, 999_990), r(10, 5), r(20, 15)];
        let max = CounterRules {
            register_max: Some(Decimal::from(999_999)),
            swaps: vec![],
        };
        assert_eq!(
            raw_difference("counter", &rs, 0, 20, &max),
            Decimal::from(25)
        );
        // Without a register maximum the drop to <= a tenth is a reset: 5 + 10.
        assert_eq!(
            raw_difference("counter", &rs, 0, 20, &CounterRules::default()),
            Decimal::from(15)
        );
        // A meter swap at t=10: the old register ended at 999_995, the new one started at 0.
        let swap = CounterRules {
            register_max: None,
            swaps: vec![(10, Decimal::from(999_995), Decimal::ZERO)],
        };
        assert_eq!(
            raw_difference("counter", &rs, 0, 20, &swap),
            Decimal::from(5 + 5 + 10)
        );
        // Any other decrease is kept as a negative step, like the aggregator.
        let dip = [r(0, 100), r(10, 95)];
        assert_eq!(
            raw_difference("counter", &dip, 0, 10, &CounterRules::default()),
            Decimal::from(-5)
        );
    }
}
