//! Property tests: random reading streams (out of order, duplicates, gaps, rollovers,
//! resets, meter swaps, late arrivals) against a reference implementation written
//! independently here: per-window loops over a sorted Vec, `rust_decimal` arithmetic,
//! no DataFusion, no prefix sums.

mod common;

use std::collections::{BTreeMap, HashMap};

use common::{write_raw, Raw, DAY};
use gridmeter_aggregator::series::{
    dedup_and_sort, CounterRules, Flags, Point, Prepared, SeriesParams, Swap, WindowValues,
    CLOCK_SUSPECT, ESTIMATED, GAP, INTERPOLATED, LATE, RESET, ROLLOVER,
};
use gridmeter_aggregator::{AggregatorConfig, Metrics};
use gridmeter_core::Kind;
use proptest::prelude::*;
use rust_decimal::{Decimal, RoundingStrategy};

const MIN: i64 = 60_000_000;
const HOUR: i64 = 60 * MIN;
const SIZES: [i64; 3] = [15 * MIN, HOUR, DAY];
const BASE: i64 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z
const REGISTER_MAX: i128 = 99_999_000_000_000; // 99999

fn dec(v: i128) -> Decimal {
    Decimal::from_i128_with_scale(v, 9)
}
fn scaled(d: Decimal) -> i128 {
    let d = d.round_dp_with_strategy(9, RoundingStrategy::MidpointNearestEven);
    gridmeter_core::decimal::to_scaled_i128(d).unwrap()
}
fn round9(d: Decimal) -> Decimal {
    d.round_dp_with_strategy(9, RoundingStrategy::MidpointNearestEven)
}

/// The reference: what a window should hold, computed the slow and obvious way.
fn reference(
    input: &[Point],
    params: &SeriesParams,
    size: i64,
    from: i64,
    to: i64,
) -> Vec<WindowValues> {
    // One copy per seq: the earliest received.
    let mut by_seq: BTreeMap<u64, Point> = BTreeMap::new();
    for p in input {
        let keep = by_seq
            .get(&p.seq)
            .is_some_and(|q| (q.received_at, q.ts) <= (p.received_at, p.ts));
        if !keep {
            by_seq.insert(p.seq, *p);
        }
    }
    let mut pts: Vec<Point> = by_seq.into_values().collect();
    pts.sort_by_key(|p| (p.ts, p.seq));
    let n = pts.len();
    if n == 0 {
        return vec![];
    }
    // Unrolled register: consumption since the first reading, and each step's flags.
    let mut u = vec![Decimal::ZERO; n];
    let mut step_flags = vec![Flags::NONE; n];
    for j in 1..n {
        let (b, a) = (dec(pts[j - 1].value), dec(pts[j].value));
        let (t0, t1) = (pts[j - 1].ts, pts[j].ts);
        let mut f = Flags::NONE;
        if t1 - t0 > params.max_gap_us {
            f |= GAP | ESTIMATED;
        }
        let mut step = Decimal::ZERO;
        if params.kind == Kind::Counter {
            let swap = params.rules.swaps.iter().find(|s| t0 < s.at && s.at <= t1);
            if let Some(s) = swap {
                step = (dec(s.old_final) - b) + (a - dec(s.new_start));
                f |= RESET;
            } else if a >= b {
                step = a - b;
            } else {
                let wrapped = params
                    .rules
                    .register_max
                    .map(|m| dec(m) + Decimal::ONE - b + a)
                    .filter(|w| {
                        *w >= Decimal::ZERO
                            && *w * Decimal::TEN
                                <= dec(params.rules.register_max.unwrap()) + Decimal::ONE
                    });
                if let Some(w) = wrapped {
                    step = w;
                    f |= ROLLOVER;
                } else if a * Decimal::TEN <= b {
                    step = a;
                    f |= RESET;
                } else {
                    step = a - b;
                    f |= ESTIMATED;
                }
            }
        }
        u[j] = u[j - 1] + step;
        step_flags[j] = f;
    }
    let (t_first, t_last) = (pts[0].ts, pts[n - 1].ts);
    // Register at time t in [t_first, t_last] and whether it was interpolated.
    let at = |t: i64| -> (Decimal, bool) {
        let mut exact = None;
        for (k, p) in pts.iter().enumerate() {
            if p.ts == t {
                exact = Some(u[k]);
            }
        }
        if let Some(v) = exact {
            return (v, false);
        }
        for k in 0..n - 1 {
            if pts[k].ts < t && t < pts[k + 1].ts {
                let v = u[k]
                    + round9(
                        (u[k + 1] - u[k]) * Decimal::from(t - pts[k].ts)
                            / Decimal::from(pts[k + 1].ts - pts[k].ts),
                    );
                return (v, true);
            }
        }
        unreachable!("t outside the readings")
    };
    let mut out = vec![];
    let mut a = t_first.div_euclid(size) * size;
    while a <= t_last {
        let b = a + size;
        let inside: Vec<&Point> = pts.iter().filter(|p| a <= p.ts && p.ts < b).collect();
        let emit = (params.kind == Kind::Counter || !inside.is_empty()) && a >= from && b <= to;
        if emit {
            let mut flags = inside.iter().fold(Flags::NONE, |f, p| f | p.quality);
            let mut covered = 0i64;
            for j in 1..n {
                let (s, e) = (pts[j - 1].ts, pts[j].ts);
                let overlaps = if s < e {
                    s < b && e > a
                } else {
                    a < e && e <= b
                };
                if overlaps {
                    flags |= step_flags[j];
                    if s < e && e - s <= params.max_gap_us {
                        covered += e.min(b) - s.max(a);
                    }
                }
            }
            let coverage = round9(Decimal::from(covered) / Decimal::from(size));
            if coverage < Decimal::ONE {
                flags |= GAP;
            }
            let mut w = WindowValues {
                start: a,
                end: b,
                usage: None,
                min: None,
                max: None,
                avg: None,
                last: inside.last().map(|p| p.value),
                readings: inside.len() as i64,
                first_ts: inside.first().map(|p| p.ts),
                last_ts: inside.last().map(|p| p.ts),
                coverage: scaled(coverage),
                flags,
            };
            match params.kind {
                Kind::Counter => {
                    let (ua, ia) = at(a.max(t_first));
                    let (ub, ib) = at(b.min(t_last));
                    if ia || ib {
                        w.flags |= INTERPOLATED;
                    }
                    w.usage = Some(scaled(ub - ua));
                }
                Kind::Delta => {
                    w.usage = Some(scaled(inside.iter().map(|p| dec(p.value)).sum()));
                }
                Kind::Gauge => {
                    w.min = inside.iter().map(|p| p.value).min();
                    w.max = inside.iter().map(|p| p.value).max();
                    let (mut weighted, mut held) = (Decimal::ZERO, 0i64);
                    for k in 0..n - 1 {
                        if pts[k + 1].ts - pts[k].ts > params.max_gap_us {
                            continue;
                        }
                        let d = pts[k + 1].ts.min(b) - pts[k].ts.max(a);
                        if d > 0 {
                            weighted += dec(pts[k].value) * Decimal::from(d);
                            held += d;
                        }
                    }
                    w.avg = Some(if held > 0 {
                        scaled(weighted / Decimal::from(held))
                    } else {
                        let sum: Decimal = inside.iter().map(|p| dec(p.value)).sum();
                        scaled(sum / Decimal::from(inside.len() as i64))
                    });
                }
            }
            out.push(w);
        }
        a = b;
    }
    out
}

#[derive(Debug, Clone)]
struct Case {
    kind: Kind,
    /// Arrival order, duplicates included.
    arrivals: Vec<Point>,
    params: SeriesParams,
}

fn gap_strategy() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => 1i64..(2 * MIN),
        4 => MIN..(40 * MIN),
        1 => (2 * HOUR)..(30 * HOUR),
        1 => Just(15 * MIN),
    ]
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (
        0u8..3,
        prop::collection::vec(
            (gap_strategy(), 0i128..50_000_000_000, 0u8..24, 0u8..12),
            1..45,
        ),
        0i128..REGISTER_MAX,
        0i64..DAY,
        prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        any::<u64>(),
        prop::option::of((any::<prop::sample::Index>(), 0i128..1_000_000_000_000)),
    )
        .prop_map(|(kind, steps, start, offset, dup_idx, seed, swap)| {
            let kind = Kind::ALL[kind as usize];
            let mut pts = Vec::new();
            let (mut ts, mut v) = (BASE + offset, start);
            for (j, (gap, inc, event, q)) in steps.iter().enumerate() {
                if j > 0 {
                    ts += gap;
                    v = match (kind, event) {
                        (Kind::Counter, 0) => {
                            (v + inc + REGISTER_MAX / 20) % (REGISTER_MAX + 1_000_000_000)
                        }
                        (Kind::Counter, 1) => inc / 100,
                        (Kind::Counter, 2) => (v - inc / 50).max(0),
                        (Kind::Counter, _) => v + inc,
                        (_, _) => inc - 10_000_000_000,
                    };
                }
                let quality = match q {
                    0 => ESTIMATED,
                    1 => CLOCK_SUSPECT,
                    _ => Flags::NONE,
                };
                pts.push(Point {
                    ts,
                    seq: 1000 + j as u64,
                    received_at: ts + 1_000_000,
                    value: v,
                    quality,
                });
            }
            for i in dup_idx {
                let mut p = *i.get(&pts);
                p.received_at += 5_000_000;
                pts.push(p);
            }
            // Deterministic shuffle: out-of-order arrival.
            let mut state = seed | 1;
            for i in (1..pts.len()).rev() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                pts.swap(i, (state % (i as u64 + 1)) as usize);
            }
            let swaps = match swap {
                Some((i, extra)) if kind == Kind::Counter && steps.len() > 1 => {
                    let mut sorted: Vec<i64> = pts.iter().map(|p| p.ts).collect();
                    sorted.sort();
                    sorted.dedup();
                    let k = i.index(sorted.len());
                    vec![Swap {
                        at: sorted[k] - 1,
                        old_final: start + extra,
                        new_start: extra / 3,
                    }]
                }
                _ => vec![],
            };
            Case {
                kind,
                arrivals: pts,
                params: SeriesParams {
                    kind,
                    rules: CounterRules {
                        register_max: Some(REGISTER_MAX),
                        swaps,
                    },
                    max_gap_us: HOUR,
                },
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// The series computation equals the reference for every window size, any range.
    #[test]
    fn series_matches_reference(case in case_strategy(), from_off in 0i64..(2 * DAY), to_off in 0i64..(3 * DAY)) {
        let mut pts = case.arrivals.clone();
        dedup_and_sort(&mut pts);
        let prepared = Prepared::new(&pts, &case.params);
        let from = BASE - DAY + from_off;
        let to = pts.last().unwrap().ts - DAY + to_off;
        for size in SIZES {
            let got = prepared.windows(size, from, to);
            let want = reference(&case.arrivals, &case.params, size, from, to);
            prop_assert_eq!(got, want, "size {}", size);
        }
    }

    /// Sum check: counter usages over all windows telescope to the register difference.
    #[test]
    fn counter_windows_telescope(case in case_strategy()) {
        prop_assume!(case.kind == Kind::Counter);
        let mut pts = case.arrivals.clone();
        dedup_and_sort(&mut pts);
        let prepared = Prepared::new(&pts, &case.params);
        let full: Vec<i128> = SIZES
            .iter()
            .map(|&s| prepared.windows(s, i64::MIN / 4, i64::MAX / 4).iter().map(|w| w.usage.unwrap()).sum())
            .collect();
        prop_assert_eq!(full[0], full[1]);
        prop_assert_eq!(full[0], full[2]);
        // Without discontinuities, the total is exactly last - first.
        let plain = pts.windows(2).all(|w| w[1].value >= w[0].value) && case.params.rules.swaps.is_empty();
        if plain {
            prop_assert_eq!(full[0], pts.last().unwrap().value - pts[0].value);
        }
    }
}

fn to_raw(device: &str, channel: &str, kind: Kind, p: &Point) -> Raw {
    Raw {
        device: device.into(),
        channel: channel.into(),
        kind: kind.as_str(),
        seq: p.seq,
        ts: p.ts,
        value: p.value,
        quality: match p.quality {
            ESTIMATED => "estimated",
            CLOCK_SUSPECT => "clock_suspect",
            _ => "",
        },
        received_at: p.received_at,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, ..ProptestConfig::default() })]

    /// End to end: readings arrive in random batches (late ones included) as raw Parquet
    /// files; after each batch `run_once`. The current tables equal the reference over the
    /// whole stream for every final window; restated rows carry `late`; rebuild writes
    /// nothing.
    #[test]
    fn incremental_runs_match_reference(cases in prop::collection::vec(case_strategy(), 1..4), cuts in prop::collection::vec(0.0f64..1.0, 0..4)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut config = AggregatorConfig::new(dir.path());
        config.allowed_lateness = "30m".into();
        config.default_register_max = Some(dec(REGISTER_MAX));
        // Each case is a device with one channel of its kind; swaps go in the registry.
        let mut all: Vec<(String, Raw)> = Vec::new();
        for (i, c) in cases.iter().enumerate() {
            let device = format!("dev-{i}");
            for s in &c.params.rules.swaps {
                config.meter_swaps.push(gridmeter_aggregator::config::MeterSwap {
                    device_id: device.clone(),
                    channel: "ch".into(),
                    at: chrono::DateTime::from_timestamp_micros(s.at).unwrap(),
                    old_final: dec(s.old_final),
                    new_start: dec(s.new_start),
                });
            }
            for p in &c.arrivals {
                all.push((device.clone(), to_raw(&device, "ch", c.kind, p)));
            }
        }
        // Arrival batches: cut the arrival sequence at random points.
        let mut bounds: Vec<usize> = cuts.iter().map(|c| (c * all.len() as f64) as usize).collect();
        bounds.push(all.len());
        bounds.sort();
        let metrics = Metrics::unregistered();
        let mut start = 0;
        for (k, end) in bounds.into_iter().enumerate() {
            if end <= start { continue; }
            let batch: Vec<Raw> = all[start..end].iter().map(|(_, r)| r.clone()).collect();
            write_raw(dir.path(), &format!("c-{k}"), &batch);
            rt.block_on(gridmeter_aggregator::run_once(&config, &metrics)).unwrap();
            start = end;
        }
        let specs = config.window_specs();
        for spec in &specs {
            let rows = rt.block_on(gridmeter_aggregator::current(&config, &spec.name)).unwrap();
            let mut got: HashMap<String, Vec<WindowValues>> = HashMap::new();
            for r in &rows {
                prop_assert!(r.revision == 1 || r.flags.contains(LATE), "revision without late: {:?}", r);
                got.entry(r.device_id.clone()).or_default().push(WindowValues {
                    start: r.window_start, end: r.window_end, usage: r.usage, min: r.min, max: r.max,
                    avg: r.avg, last: r.last, readings: r.readings, first_ts: r.first_ts,
                    last_ts: r.last_ts, coverage: r.coverage, flags: r.flags & !LATE,
                });
            }
            for (i, c) in cases.iter().enumerate() {
                let device = format!("dev-{i}");
                // Only readings not flagged clock_suspect advance the watermark.
                let max_ts = c.arrivals.iter().filter(|p| !p.quality.contains(CLOCK_SUSPECT)).map(|p| p.ts).max();
                let want = match max_ts {
                    Some(m) => reference(&c.arrivals, &c.params, spec.size_us, i64::MIN / 4, m - 30 * MIN),
                    None => Vec::new(),
                };
                let got = got.remove(&device).unwrap_or_default();
                prop_assert_eq!(got, want, "device {} window {}", device, spec.name);
            }
        }
        let far = chrono::DateTime::from_timestamp_micros(BASE - 10 * DAY).unwrap();
        let until = chrono::DateTime::from_timestamp_micros(BASE + 60 * DAY).unwrap();
        let s = rt.block_on(gridmeter_aggregator::rebuild(&config, far, until, &metrics)).unwrap();
        prop_assert!(s.rows_written.is_empty(), "rebuild changed rows: {:?}", s.rows_written);
    }
}
