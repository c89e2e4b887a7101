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
//!    aggregator's rules: a meter swap between them (registry `[[meter_swaps]]`) gives
//!    `(old_final - a) + (b - new_start)`; `b >= a` gives `b - a`; a decrease is a rollover
//!    `(register_max + 1 - a) + b` when that is at most a tenth of the register range
//!    (registry `[register_max]` / `default_register_max`, which must equal the aggregator's),
//!    a reset `b` when `b <= a / 10`, and otherwise `b - a` (negative). The increment is spread
//!    linearly over `[a.ts, b.ts]`; the cumulative register at an instant `t` strictly between
//!    two readings is `C(a) + round_half_even_9dp(inc × (t − a.ts) / (b.ts − a.ts))`, at or after
//!    a reading it includes that reading. `raw = C(range end) − C(range start)`; before the first
//!    reading C is 0, after the last it is the last reading's C. This is the same boundary
//!    interpolation the aggregator applies at window boundaries, so the 15-minute usages
//!    telescope to exactly this difference.
//!    Delta channels: `raw` = sum of the values with `ts` in the range.
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
    if kind == "delta" {
        return readings
            .iter()
            .filter(|r| r.ts >= from_us && r.ts < to_us)
            .map(|r| r.value)
            .sum();
    }
    if readings.is_empty() {
        return Decimal::ZERO;
    }
    // Exact integer arithmetic on value × 10^9, like the aggregator.
    let scaled = |d: Decimal| gridmeter_core::decimal::to_scaled_i128(d).unwrap_or(0);
    let max = rules.register_max.map(scaled);
    let swaps: Vec<(i64, i128, i128)> = rules
        .swaps
        .iter()
        .map(|(t, o, n)| (*t, scaled(*o), scaled(*n)))
        .collect();
    let mut cum = Vec::with_capacity(readings.len());
    let mut c: i128 = 0;
    cum.push(c);
    for w in readings.windows(2) {
        c += increment(&w[0], &w[1], max, &swaps);
        cum.push(c);
    }
    let at = |t: i64| -> i128 {
        // Last reading with ts <= t.
        let i = readings.partition_point(|r| r.ts <= t);
        if i == 0 {
            return 0;
        }
        let i = i - 1;
        if readings[i].ts == t || i + 1 == readings.len() {
            return cum[i];
        }
        let (a, b) = (&readings[i], &readings[i + 1]);
        cum[i] + mul_div_round(cum[i + 1] - cum[i], t - a.ts, b.ts - a.ts)
    };
    gridmeter_core::decimal::from_scaled_i128(at(to_us) - at(from_us)).unwrap_or(Decimal::MAX)
}

const ONE: i128 = 1_000_000_000;

/// One step of the consumption curve (scaled integers): the aggregator's counter rules.
fn increment(
    p0: &RawReading,
    p1: &RawReading,
    max: Option<i128>,
    swaps: &[(i64, i128, i128)],
) -> i128 {
    let scaled = |d: Decimal| gridmeter_core::decimal::to_scaled_i128(d).unwrap_or(0);
    let (before, after) = (scaled(p0.value), scaled(p1.value));
    if let Some((_, old_final, new_start)) =
        swaps.iter().find(|(at, _, _)| p0.ts < *at && *at <= p1.ts)
    {
        return (old_final - before) + (after - new_start);
    }
    if after >= before {
        return after - before;
    }
    if let Some(max) = max {
        let wrapped = (max + ONE - before) + after;
        if wrapped >= 0 && wrapped * 10 <= max + ONE {
            return wrapped;
        }
    }
    if after * 10 <= before {
        return after;
    }
    after - before
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
}

pub const HEADER: &str = "customer_id,site_id,device_id,channel,kind,unit,multiplier,usage_quantity,raw_register_difference,billed_usage_quantity,status,message";

pub fn to_csv(rows: &[Row]) -> String {
    use crate::money::fixed;
    use crate::statement::csv_field;
    let mut out = String::from(HEADER);
    out.push_str("\r\n");
    for r in rows {
        let f = [
            r.customer_id.clone(),
            r.site_id.clone(),
            r.device_id.clone(),
            r.channel.clone(),
            r.kind.clone(),
            r.unit.clone(),
            fixed(r.multiplier, 9),
            fixed(r.usage, 9),
            r.raw.map(|v| fixed(v, 9)).unwrap_or_default(),
            r.billed.map(|v| fixed(v, 9)).unwrap_or_default(),
            if r.problems.is_empty() {
                "ok"
            } else {
                "MISMATCH"
            }
            .to_string(),
            r.problems.join("; "),
        ];
        out.push_str(&f.iter().map(|x| csv_field(x)).collect::<Vec<_>>().join(","));
        out.push_str("\r\n");
    }
    out
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
