//! Window values of one (device, channel) series: the exact, sequential part of the
//! aggregation, written in Rust over the readings sorted by time.
//!
//! All values are `Decimal128(38, 9)` integers (the value times 10^9 as `i128`): exact
//! decimal arithmetic with no binary floating point anywhere.
//!
//! # Counter semantics
//!
//! The readings define a *consumption curve* `C(t)`: `C` at the first reading is 0 and each
//! step from one reading to the next adds
//! - `after - before` when the register did not decrease;
//! - for a recorded meter swap between the two readings: `(old_final - before) + (after -
//!   new_start)`, flagged `reset`;
//! - when it decreased and `(register_max + 1 - before) + after` is at most a tenth of the
//!   register range: that amount, flagged `rollover`;
//! - when it decreased to at most a tenth of the previous value: `after` (the register
//!   restarted from zero), flagged `reset`;
//! - any other decrease: `after - before` (negative), flagged `estimated`, so the sum
//!   check still holds against the registers and the negative value is never unflagged.
//!
//! These are the counter rules of `gridmeter_tables::counter` ([`CounterRules::step`]), the
//! one implementation the billing export's reconciliation uses too.
//!
//! Between two readings `C` is linear. The value at a window boundary `t` strictly between
//! readings `i` and `i+1` is `C_i + round(step * (t - t_i) / (t_{i+1} - t_i))`, rounded to 9
//! decimal places half-to-even, computed once per boundary, and flagged `interpolated`.
//! A window's usage is `C(end) - C(start)` with both boundaries clamped to the span of the
//! readings, so the usages of consecutive windows telescope: **their sum over any span is
//! exactly `C(last) - C(first)`**, the register difference (with the rollover and reset
//! rules above), to the last decimal place. Adding the offset between `C` and the register
//! to an interpolated value commutes with the rounding (the offset has at most 9 decimal
//! places), so for windows without rollover or reset the usage is also exactly the
//! interpolated register difference.
//!
//! A counter series has a row for every window that overlaps `[first, last]` (windows in
//! a gap get the interpolated share, flagged `gap` and `estimated`). Delta and gauge
//! series have a row for every window that holds at least one reading.
//!
//! # Estimation (VEE)
//!
//! With a [`Vee`] plan ([`Prepared::with_vee`]) the curve between two readings can have
//! another shape than a straight line, and can go on past the last reading:
//! - a step longer than `max_gap` and at most `max_interpolation` stays linear, flagged
//!   `estimated,method_linear`;
//! - a longer step with a [`Shape`] (a cumulative weight `W`, nondecreasing): the value at
//!   `t` is `C_i + round(step * W(t_i, t) / W(t_i, t_{i+1}))` (half-to-even). At
//!   `t = t_{i+1}` the ratio is exactly 1, so `C(t_{i+1}) = C_{i+1}`: the register total
//!   between the two readings is kept to the last digit and windows still telescope. Flagged
//!   `estimated` and the shape's method (`method_history`, `method_standard_profile`);
//! - open end: past the last reading up to `until`, `C(t) = C_last + round(E(t_last, t))`
//!   with `E` the expected usage of the shape, flagged `estimated,method_open_end`;
//! - edits: each edited window `[a, b)` adds `adj = new - old` to the curve, linearly inside
//!   the window and fully after it (`C'(t) = C(t) + sum of adj * clamp((t - a) / (b - a))`),
//!   so every window size sees the edit and windows after it are unchanged; flagged
//!   `edited`, also when the edit confirms the value (`adj = 0`).
//!
//! # Coverage
//!
//! The time between two consecutive readings at most `max_gap` apart is covered; coverage is
//! the covered fraction of the window, rounded half-to-even to 9 places. A window with
//! coverage below 1 is flagged `gap`.
//!
//! # Gauges
//!
//! `avg` is time-weighted with sample-and-hold: each reading holds until the next one
//! (if that is at most `max_gap` later), including a reading just before the window; if no
//! time is held inside the window, the plain mean of its readings. Rounded half-to-even.

use gridmeter_core::Kind;
pub use gridmeter_tables::counter::{CounterRules, Swap, ONE};
pub use gridmeter_tables::Flags;

/// The flags (one bit scheme for every table: `gridmeter_tables::Flags`).
pub const CLOCK_SUSPECT: Flags = Flags::CLOCK_SUSPECT;
pub const ESTIMATED: Flags = Flags::ESTIMATED;
pub const GAP: Flags = Flags::GAP;
pub const INTERPOLATED: Flags = Flags::INTERPOLATED;
pub const LATE: Flags = Flags::LATE;
pub const RESET: Flags = Flags::RESET;
pub const ROLLOVER: Flags = Flags::ROLLOVER;

/// What a raw reading's `quality` column contributes to its windows' flags: `estimated`
/// (estimated or device_error) and `clock_suspect` ([`Flags::of_reading`]).
pub fn quality_flags(text: &str) -> Flags {
    let f = Flags::parse_lenient(text);
    let mut q = gridmeter_core::Quality::GOOD;
    for (bit, flag) in [
        (gridmeter_core::Quality::ESTIMATED, Flags::ESTIMATED),
        (gridmeter_core::Quality::CLOCK_SUSPECT, Flags::CLOCK_SUSPECT),
        (gridmeter_core::Quality::DEVICE_ERROR, Flags::DEVICE_ERROR),
    ] {
        if f.contains(flag) {
            q = q.with(bit);
        }
    }
    Flags::of_reading(q)
}

/// One raw reading of a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Point {
    /// Event time, µs since the epoch.
    pub ts: i64,
    pub seq: u64,
    /// When the collector received it, µs; among copies of a seq the earliest is kept.
    pub received_at: i64,
    /// The value times 10^9.
    pub value: i128,
    /// [`ESTIMATED`] and/or [`CLOCK_SUSPECT`] ([`quality_flags`]).
    pub quality: Flags,
}

/// Keeps one copy per seq (the earliest received) and sorts by `(ts, seq)`.
pub fn dedup_and_sort(points: &mut Vec<Point>) {
    points.sort_unstable_by_key(|p| (p.seq, p.received_at, p.ts));
    points.dedup_by_key(|p| p.seq);
    points.sort_unstable_by_key(|p| (p.ts, p.seq));
}

/// How to read one series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesParams {
    pub kind: Kind,
    /// Register maximum and meter swaps of this counter (shared with the billing export).
    pub rules: CounterRules,
    pub max_gap_us: i64,
}

/// The values of one window of one series (the key and bookkeeping columns are added by
/// the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowValues {
    pub start: i64,
    pub end: i64,
    pub usage: Option<i128>,
    pub min: Option<i128>,
    pub max: Option<i128>,
    pub avg: Option<i128>,
    pub last: Option<i128>,
    pub readings: i64,
    pub first_ts: Option<i64>,
    pub last_ts: Option<i64>,
    /// Fraction times 10^9.
    pub coverage: i128,
    pub flags: Flags,
}

/// `n / d` rounded half-to-even; `d > 0`.
pub fn div_round(n: i128, d: i128) -> i128 {
    let q = n.div_euclid(d);
    let r = n.rem_euclid(d);
    match (2 * r).cmp(&d) {
        std::cmp::Ordering::Greater => q + 1,
        std::cmp::Ordering::Equal if q % 2 != 0 => q + 1,
        _ => q,
    }
}

/// `a * b / c` rounded half-to-even without overflowing for any realistic `a`; `c > 0`,
/// `0 <= b <= c`.
pub fn mul_div_round(a: i128, b: i64, c: i64) -> i128 {
    let (b, c) = (b as i128, c as i128);
    let q = a.div_euclid(c);
    let r = a.rem_euclid(c);
    // a*b/c = q*b + r*b/c with 0 <= r*b < c*c.
    q * b + div_round(r * b, c)
}

/// `a * b / c` rounded half-to-even for large `b <= c` (cumulative weights): both are
/// shifted right until `c` fits 62 bits, which keeps `b == c` exact and the result
/// nondecreasing in `b`; `c > 0`, `0 <= b <= c`.
pub fn mul_div_round_wide(a: i128, b: i128, c: i128) -> i128 {
    let shift = (128 - c.leading_zeros()).saturating_sub(62);
    mul_div_round(a, (b >> shift) as i64, (c >> shift).max(1) as i64)
}

/// A cumulative weight over time: `cum(t0, t)` is the weight of `[t0, t]`, nondecreasing in
/// `t`, 0 at `t = t0`; `expected(t0, t)` the usage (scaled) it expects over `[t0, t]`.
pub trait Shape: Send + Sync {
    /// The weight of `[t0, t]` (any unit; only ratios are used).
    fn cum(&self, t0: i64, t: i64) -> i128;
    /// The usage expected over `[t0, t]`, scaled by 10^9.
    fn expected(&self, t0: i64, t: i64) -> i128;
    /// The method flag of estimates made with it.
    fn method(&self) -> Flags;
}

/// An edited window: `adj` is added to the curve, linearly over `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CurveEdit {
    /// Window start, µs.
    pub start: i64,
    /// Window end, µs.
    pub end: i64,
    /// New usage minus old usage (scaled).
    pub adj: i128,
}

/// A requested edit of one series, before its adjustments are known (they depend on the
/// curve): windows of `size_us` in `[from, to)` get `Set(value)` or `Scale(factor)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EditSpec {
    /// First window start, µs.
    pub from: i64,
    /// End of the last window, µs.
    pub to: i64,
    /// The size of the windows edited, µs.
    pub size_us: i64,
    /// Each window's new usage (scaled).
    pub set: Option<i128>,
    /// The factor each window's usage is multiplied by (scaled).
    pub scale: Option<i128>,
}

/// The estimation plan of one series (module docs, "Estimation").
#[derive(Clone, Default)]
pub struct Vee {
    /// Steps longer than this are shaped (when a shape is given for them); else linear.
    pub max_interpolation_us: i64,
    /// Per step index `j` (reading `j-1` to `j`): its shape, for steps longer than
    /// `max_interpolation_us`.
    pub shapes: std::collections::HashMap<usize, std::sync::Arc<dyn Shape>>,
    /// Estimate past the last reading up to this time, with this shape.
    pub open_end: Option<(i64, std::sync::Arc<dyn Shape>)>,
    /// Edits, applied in order.
    pub edits: Vec<EditSpec>,
    /// Flags to add per window of the base size, by window start (validation results).
    pub window_flags: std::collections::HashMap<i64, Flags>,
    /// The base window size `window_flags` refers to.
    pub base_size_us: i64,
    /// Steps (by index `j`) that replace readings left out by validation: estimated.
    pub replaced_steps: std::collections::HashSet<usize>,
}

/// A series prepared for windowing: readings sorted and deduplicated, the consumption
/// curve at each reading, and the flags of each step.
pub struct Prepared<'a> {
    points: &'a [Point],
    params: &'a SeriesParams,
    /// `curve[i]` = C at reading i.
    curve: Vec<i128>,
    /// `step_flags[j]` = flags of the step from reading j-1 to j (`[0]` unused).
    step_flags: Vec<Flags>,
    /// `Some` with VEE: shapes, open end, edits.
    vee: Option<Vee>,
    /// The edit adjustments (computed from `vee.edits`).
    edits: Vec<CurveEdit>,
}

impl<'a> Prepared<'a> {
    /// `points` must be sorted by `(ts, seq)` and deduplicated ([`dedup_and_sort`]).
    pub fn new(points: &'a [Point], params: &'a SeriesParams) -> Self {
        let n = points.len();
        let mut curve = Vec::with_capacity(n);
        let mut step_flags = Vec::with_capacity(n);
        let mut c: i128 = 0;
        for j in 0..n {
            let mut f = Flags::NONE;
            if j > 0 {
                let (p0, p1) = (&points[j - 1], &points[j]);
                if p1.ts - p0.ts > params.max_gap_us {
                    f |= GAP | ESTIMATED;
                }
                if params.kind == Kind::Counter {
                    let (step, rule) = params.rules.step(p0.ts, p0.value, p1.ts, p1.value);
                    c += step;
                    f |= rule.flags();
                }
            }
            curve.push(c);
            step_flags.push(f);
        }
        Prepared {
            points,
            params,
            curve,
            step_flags,
            vee: None,
            edits: Vec::new(),
        }
    }

    /// [`Prepared::new`] with an estimation plan (module docs, "Estimation").
    pub fn with_vee(points: &'a [Point], params: &'a SeriesParams, vee: Vee) -> Self {
        let mut p = Prepared::new(points, params);
        if params.kind == Kind::Counter {
            for j in 1..points.len() {
                let dt = points[j].ts - points[j - 1].ts;
                if vee.replaced_steps.contains(&j) {
                    p.step_flags[j] |= ESTIMATED;
                    if dt <= vee.max_interpolation_us || !vee.shapes.contains_key(&j) {
                        p.step_flags[j] |= Flags::METHOD_LINEAR;
                    }
                }
                if dt <= params.max_gap_us {
                    continue;
                }
                let method = match vee.shapes.get(&j) {
                    Some(s) if dt > vee.max_interpolation_us => s.method(),
                    _ => Flags::METHOD_LINEAR,
                };
                p.step_flags[j] |= method;
            }
        }
        let specs = vee.edits.clone();
        p.vee = Some(vee);
        if params.kind == Kind::Counter {
            for e in specs {
                p.apply_edit(&e);
            }
        }
        p
    }

    /// The consumption of step `j` (reading `j-1` to `j`, counter rules applied).
    pub fn step_usage(&self, j: usize) -> i128 {
        if j == 0 || j >= self.curve.len() {
            return 0;
        }
        self.curve[j] - self.curve[j - 1]
    }

    /// The end of the curve: the last reading, or the open end's `until`.
    fn curve_end(&self) -> i64 {
        let last = self.points.last().map_or(i64::MIN, |p| p.ts);
        match self.vee.as_ref().and_then(|v| v.open_end.as_ref()) {
            Some((until, _)) => last.max(*until),
            None => last,
        }
    }

    fn apply_edit(&mut self, e: &EditSpec) {
        let (Some(first), size) = (self.points.first(), e.size_us.max(1)) else {
            return;
        };
        let (t0, end) = (first.ts, self.curve_end());
        let mut a = e.from.div_euclid(size) * size;
        if a < e.from {
            a += size;
        }
        while a + size <= e.to {
            let b = a + size;
            if a >= t0 && b <= end {
                let old = self.curve_at(b).0 - self.curve_at(a).0;
                let new = match (e.set, e.scale) {
                    (Some(v), _) => v,
                    (None, Some(f)) => div_round(old * f, ONE),
                    (None, None) => old,
                };
                // Recorded even when it changes nothing (the billing team confirmed the
                // value): the window is flagged edited all the same, which resolves its
                // exceptions for billing.
                self.edits.push(CurveEdit {
                    start: a,
                    end: b,
                    adj: new - old,
                });
            }
            a = b;
        }
    }

    /// The edit adjustment at `t` (module docs).
    fn edit_at(&self, t: i64) -> i128 {
        self.edits
            .iter()
            .map(|e| {
                if t >= e.end {
                    e.adj
                } else if t <= e.start {
                    0
                } else {
                    mul_div_round(e.adj, t - e.start, e.end - e.start)
                }
            })
            .sum()
    }

    /// C at `t`, which must lie within the curve's span (the readings', or up to the open
    /// end); and whether it was interpolated or estimated.
    fn curve_at(&self, t: i64) -> (i128, bool) {
        let (v, i) = self.curve_raw(t);
        (v + self.edit_at(t), i)
    }

    fn curve_raw(&self, t: i64) -> (i128, bool) {
        let p = self.points;
        // Last reading at or before t.
        let i = p.partition_point(|x| x.ts <= t) - 1;
        if p[i].ts == t {
            return (self.curve[i], false);
        }
        if i + 1 >= p.len() {
            return match self.vee.as_ref().and_then(|v| v.open_end.as_ref()) {
                Some((_, shape)) => (self.curve[i] + shape.expected(p[i].ts, t), true),
                None => (self.curve[i], false),
            };
        }
        let step = self.curve[i + 1] - self.curve[i];
        let dt = p[i + 1].ts - p[i].ts;
        if let Some(vee) = &self.vee {
            if dt > vee.max_interpolation_us && dt > self.params.max_gap_us {
                if let Some(shape) = vee.shapes.get(&(i + 1)) {
                    let total = shape.cum(p[i].ts, p[i + 1].ts);
                    if total > 0 {
                        let part = shape.cum(p[i].ts, t).clamp(0, total);
                        return (self.curve[i] + mul_div_round_wide(step, part, total), true);
                    }
                }
            }
        }
        let v = self.curve[i] + mul_div_round(step, t - p[i].ts, dt);
        (v, true)
    }

    /// An upper bound of the number of windows [`Prepared::windows`] returns for these
    /// arguments, computed without making them (i128: no overflow for any timestamps).
    pub fn window_count(&self, size_us: i64, from: i64, to: i64) -> u128 {
        let p = self.points;
        let (Some(first), Some(last)) = (p.first(), p.last()) else {
            return 0;
        };
        let size = size_us.max(1) as i128;
        let align = |t: i64| (t as i128).div_euclid(size) * size;
        let up = |t: i64| {
            let a = align(t);
            if a < t as i128 {
                a + size
            } else {
                a
            }
        };
        let start = align(first.ts).max(up(from));
        let end = if self.params.kind == Kind::Counter {
            self.curve_end().max(last.ts)
        } else {
            last.ts
        };
        let last_start = (to as i128 - size).min(end as i128);
        if last_start < start {
            return 0;
        }
        let span = ((last_start - start) / size + 1) as u128;
        if self.params.kind == Kind::Counter {
            span
        } else {
            span.min(p.len() as u128)
        }
    }

    /// The window values for windows of `size_us` that start at or after `from` and end at
    /// or before `to` (both µs).
    pub fn windows(&self, size_us: i64, from: i64, to: i64) -> Vec<WindowValues> {
        let p = self.points;
        let mut out = Vec::new();
        let (Some(first), Some(last)) = (p.first(), p.last()) else {
            return out;
        };
        let (t0, tl) = (first.ts, last.ts);
        let until = if self.params.kind == Kind::Counter {
            self.curve_end()
        } else {
            tl
        };
        let align = |t: i64| t.div_euclid(size_us) * size_us;
        let mut a = align(t0).max(align(from) + if align(from) < from { size_us } else { 0 });
        while a + size_us <= to && (a <= tl || a < until) {
            let b = a + size_us;
            let ia = p.partition_point(|x| x.ts < a);
            let ib = p.partition_point(|x| x.ts < b);
            let in_window = &p[ia..ib];
            if self.params.kind != Kind::Counter && in_window.is_empty() {
                // Jump to the window of the next reading.
                match p.get(ib) {
                    Some(next) => {
                        a = align(next.ts);
                        continue;
                    }
                    None => break,
                }
            }
            if self.params.kind == Kind::Counter && b <= t0 {
                a = b;
                continue;
            }
            out.push(self.window(a, b, in_window));
            a = b;
        }
        out
    }

    fn window(&self, a: i64, b: i64, in_window: &[Point]) -> WindowValues {
        let p = self.points;
        let n = p.len();
        let mut flags = in_window.iter().fold(Flags::NONE, |f, x| f | x.quality);
        // Steps overlapping the window (see the module docs for zero-length steps).
        let j_lo = p.partition_point(|x| x.ts <= a).max(1);
        let j_hi = p.partition_point(|x| x.ts <= b).min(n - 1);
        let mut covered: i64 = 0;
        for j in j_lo..=j_hi {
            if j == 0 || j >= n {
                continue;
            }
            let (s, e) = (p[j - 1].ts, p[j].ts);
            let overlaps = if s < e {
                s < b && e > a
            } else {
                a < e && e <= b
            };
            if !overlaps {
                continue;
            }
            flags |= self.step_flags[j];
            if s < e && e - s <= self.params.max_gap_us {
                covered += e.min(b) - s.max(a);
            }
        }
        let size = (b - a) as i128;
        let coverage = div_round(covered as i128 * ONE, size);
        if coverage < ONE {
            flags |= GAP;
        }
        let mut w = WindowValues {
            start: a,
            end: b,
            usage: None,
            min: None,
            max: None,
            avg: None,
            last: in_window.last().map(|x| x.value),
            readings: in_window.len() as i64,
            first_ts: in_window.first().map(|x| x.ts),
            last_ts: in_window.last().map(|x| x.ts),
            coverage,
            flags,
        };
        match self.params.kind {
            Kind::Counter => {
                let (t0, tl) = (p[0].ts, p[n - 1].ts);
                let end = self.curve_end();
                let (ca, ia) = self.curve_at(a.max(t0).min(end));
                let (cb, ib) = self.curve_at(b.min(end));
                if ia || ib {
                    w.flags |= INTERPOLATED;
                }
                if b > tl && end > tl {
                    w.flags |= ESTIMATED | GAP | Flags::METHOD_OPEN_END;
                }
                if self.edits.iter().any(|e| e.start < b && e.end > a) {
                    w.flags |= Flags::EDITED;
                }
                w.usage = Some(cb - ca);
            }
            Kind::Delta => {
                w.usage = Some(in_window.iter().map(|x| x.value).sum());
            }
            Kind::Gauge => {
                w.min = in_window.iter().map(|x| x.value).min();
                w.max = in_window.iter().map(|x| x.value).max();
                w.avg = self.gauge_avg(a, b, in_window);
            }
        }
        if let Some(vee) = &self.vee {
            w.flags = one_method(w.flags);
            let base = vee.base_size_us.max(1);
            if !vee.window_flags.is_empty() {
                let mut s = a.div_euclid(base) * base;
                while s < b {
                    if let Some(f) = vee.window_flags.get(&s) {
                        w.flags |= *f;
                    }
                    s += base;
                }
            }
        }
        w
    }

    fn gauge_avg(&self, a: i64, b: i64, in_window: &[Point]) -> Option<i128> {
        if in_window.is_empty() {
            return None;
        }
        let p = self.points;
        let start = p.partition_point(|x| x.ts < a).saturating_sub(1);
        let (mut weighted, mut held): (i128, i128) = (0, 0);
        for k in start..p.len() {
            if p[k].ts >= b {
                break;
            }
            let Some(next) = p.get(k + 1) else { break };
            if next.ts - p[k].ts > self.params.max_gap_us {
                continue;
            }
            let d = next.ts.min(b) - p[k].ts.max(a);
            if d > 0 {
                weighted += p[k].value * d as i128;
                held += d as i128;
            }
        }
        if held > 0 {
            Some(div_round(weighted, held))
        } else {
            let sum: i128 = in_window.iter().map(|x| x.value).sum();
            Some(div_round(sum, in_window.len() as i128))
        }
    }
}

/// Keeps the strongest estimation method of a window that several steps overlap: open end,
/// then a profile (history, standard), then linear.
fn one_method(f: Flags) -> Flags {
    let order = [
        Flags::METHOD_OPEN_END,
        Flags::METHOD_HISTORY,
        Flags::METHOD_STANDARD_PROFILE,
        Flags::METHOD_LINEAR,
    ];
    match order.into_iter().find(|m| f.contains(*m)) {
        Some(m) => (f & !Flags::METHODS) | m,
        None => f,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(ts_min: i64, v: i128) -> Point {
        Point {
            ts: ts_min * 60_000_000,
            seq: ts_min as u64,
            received_at: 0,
            value: v * ONE,
            quality: Flags::NONE,
        }
    }

    #[test]
    fn rounding_is_half_even() {
        assert_eq!(div_round(5, 2), 2);
        assert_eq!(div_round(7, 2), 4);
        assert_eq!(div_round(-5, 2), -2);
        assert_eq!(div_round(-7, 2), -4);
        assert_eq!(mul_div_round(10, 1, 4), 2);
        assert_eq!(mul_div_round(10, 3, 4), 8);
    }

    #[test]
    fn counter_interpolates_and_telescopes() {
        let pts = vec![pt(5, 100), pt(20, 130), pt(50, 131)];
        let params = SeriesParams {
            kind: Kind::Counter,
            rules: CounterRules::default(),
            max_gap_us: 3_600_000_000,
        };
        let prep = Prepared::new(&pts, &params);
        let w = prep.windows(900_000_000, 0, 7_200_000_000);
        let starts: Vec<i64> = w.iter().map(|w| w.start / 60_000_000).collect();
        assert_eq!(starts, vec![0, 15, 30, 45]);
        // 5..15: 2/3 of 30 = 20; 15..20 + 20..30: 10 + 1/3; 30..45: 0.5; 45..50: 1/6
        assert_eq!(w[0].usage, Some(20 * ONE));
        let total: i128 = w.iter().map(|w| w.usage.unwrap()).sum();
        assert_eq!(total, 31 * ONE);
        assert!(w[1].flags.contains(INTERPOLATED));
        assert_eq!(w[0].flags.to_string(), "gap,interpolated");
    }

    #[test]
    fn rollover_and_reset() {
        let params = SeriesParams {
            kind: Kind::Counter,
            rules: CounterRules {
                register_max: Some(999 * ONE),
                swaps: vec![],
            },
            max_gap_us: 3_600_000_000,
        };
        let pts = vec![pt(0, 990), pt(15, 5)];
        let prep = Prepared::new(&pts, &params);
        let w = prep.windows(900_000_000, 0, 3_600_000_000);
        assert_eq!(w[0].usage, Some(15 * ONE));
        assert_eq!(w[0].flags.to_string(), "rollover");
        let pts = vec![pt(0, 500), pt(15, 5)];
        let prep = Prepared::new(&pts, &params);
        let w = prep.windows(900_000_000, 0, 3_600_000_000);
        assert_eq!(w[0].usage, Some(5 * ONE));
        assert_eq!(w[0].flags.to_string(), "reset");
    }
}
