//! Property tests of the VEE stage (pure functions, no tables): for every counter series
//! and any gap pattern, with long gaps shaped by the meter's history, readings left out by
//! validation and rollovers, the windows between two readings kept sum to their register
//! difference exactly; and the windows do not depend on how much older history was loaded
//! beyond what `vee::needs_from` asks for, nor on the order the readings came in.

use gridmeter_aggregator::raw::SeriesData;
use gridmeter_aggregator::series::{
    dedup_and_sort, CounterRules, Flags, Point, Prepared, SeriesParams,
};
use gridmeter_aggregator::{vee, AggregatorConfig};
use gridmeter_core::Kind;
use proptest::prelude::*;

const MIN: i64 = 60_000_000;
const Q: i64 = 15 * MIN;
const DAY: i64 = 86_400_000_000;
const BASE: i64 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z
const ONE: i128 = 1_000_000_000;
const REGISTER_MAX: i128 = 99_999 * ONE;

fn config(rules: bool) -> AggregatorConfig {
    let rules = if rules {
        "[[vee.rules]]\nrule = \"spike\"\nfactor = \"8\"\ntrailing = 16\naction = \"estimate\"\n\
         [[vee.rules]]\nrule = \"negative\"\naction = \"estimate\"\n\
         [[vee.rules]]\nrule = \"stuck\"\nhours = 3\naction = \"estimate\"\n"
    } else {
        ""
    };
    let text = format!(
        "data_root = \"/unused\"\ndefault_register_max = \"99999\"\n[vee]\nmax_interpolation = \"2h\"\nprofile_weeks = 2\n\
         [[vee.classes]]\nname = \"h\"\ndevices = [\"m-*\"]\nstandard_profile = \"H0\"\n{rules}"
    );
    gridmeter_core::config::parse(&text, "t").unwrap()
}

/// A counter on the quarter-hour grid: per quarter an increment (0..30 Wh, now and then a
/// glitch), some quarters without reading (gaps of any length), the register wrapping at
/// 99999.
fn series() -> impl Strategy<Value = Vec<Point>> {
    (
        prop::collection::vec((0i128..30, any::<bool>(), 0u8..100), 200..1400),
        prop::collection::vec((0usize..1400, 1usize..500), 0..4),
        90_000i128..99_999,
    )
        .prop_map(|(steps, gaps, start)| {
            let mut v = start * ONE;
            let mut out = Vec::new();
            for (k, (inc, _, glitch)) in steps.iter().enumerate() {
                v = (v + inc * ONE) % (REGISTER_MAX + ONE);
                let missing = gaps.iter().any(|(g, len)| k > *g && k < g + len);
                if missing && k + 1 != steps.len() {
                    continue;
                }
                let value = if *glitch == 0 {
                    (v + 500 * ONE) % (REGISTER_MAX + ONE)
                } else {
                    v
                };
                out.push(Point {
                    ts: BASE + k as i64 * Q,
                    seq: k as u64,
                    received_at: 0,
                    value,
                    quality: Flags::NONE,
                });
            }
            out
        })
}

fn data(points: Vec<Point>) -> SeriesData {
    SeriesData {
        device_id: "m-1".into(),
        channel: "energy_import".into(),
        kind: Kind::Counter,
        unit: "Wh".into(),
        points,
        problem: None,
    }
}

fn params(cfg: &AggregatorConfig) -> SeriesParams {
    SeriesParams {
        kind: Kind::Counter,
        rules: cfg.counter_rules("m-1", "energy_import"),
        max_gap_us: cfg.max_gap_us(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn windows_between_kept_readings_sum_to_the_register_difference(
        points in series(),
        rules in any::<bool>(),
        picks in prop::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 8),
    ) {
        let cfg = config(rules);
        let v = cfg.vee.as_ref().unwrap();
        let p = params(&cfg);
        let s = data(points);
        let to = s.points.last().unwrap().ts + Q;
        let planned = vee::plan(&cfg, v, &vee::RunInputs::default(), &s, &p, Q, BASE, to);
        let kept = &planned.points;
        prop_assert_eq!(kept.first(), s.points.first());
        prop_assert_eq!(kept.last(), s.points.last());
        let prepared = Prepared::with_vee(kept, &p, planned.vee.clone());
        let windows = prepared.windows(Q, BASE, to);
        let rules = CounterRules { register_max: Some(REGISTER_MAX), swaps: vec![] };
        // Register difference (counter rules) between kept readings i and k.
        let mut diff = vec![0i128; kept.len()];
        for j in 1..kept.len() {
            let (step, _) = rules.step(kept[j - 1].ts, kept[j - 1].value, kept[j].ts, kept[j].value);
            diff[j] = diff[j - 1] + step;
        }
        let mut pairs: Vec<(usize, usize)> = picks
            .iter()
            .map(|(a, b)| {
                let (a, b) = (a.index(kept.len()), b.index(kept.len()));
                (a.min(b), a.max(b))
            })
            .collect();
        pairs.push((0, kept.len() - 1));
        for (i, k) in pairs {
            let (ti, tk) = (kept[i].ts, kept[k].ts);
            let sum: i128 = windows
                .iter()
                .filter(|w| w.start >= ti && w.end <= tk)
                .map(|w| w.usage.unwrap())
                .sum();
            prop_assert_eq!(sum, diff[k] - diff[i], "readings {} to {}", i, k);
        }
        // Estimated windows name their method, and only one.
        for w in &windows {
            let methods = (w.flags & Flags::METHODS).bits().count_ones();
            prop_assert!(methods <= 1);
        }
    }

    #[test]
    fn windows_do_not_depend_on_extra_history_or_reading_order(
        points in series(),
        rules in any::<bool>(),
        from_day in 3i64..12,
        seed in any::<u64>(),
    ) {
        let cfg = config(rules);
        let v = cfg.vee.as_ref().unwrap();
        let p = params(&cfg);
        let full = data(points);
        let to = full.points.last().unwrap().ts + Q;
        let from = BASE + from_day * DAY;
        prop_assume!(from < to);
        let inputs = vee::RunInputs::default();
        let compute = |s: &SeriesData| {
            let planned = vee::plan(&cfg, v, &inputs, s, &p, Q, from, to);
            let prepared = Prepared::with_vee(&planned.points, &p, planned.vee.clone());
            let mut out = Vec::new();
            for size in [Q, 4 * Q, DAY] {
                out.extend(prepared.windows(size, from, to));
            }
            (out, planned.failures)
        };
        let all = compute(&full);
        // Only what needs_from asks for (the readings from the last one at or before it).
        let need = vee::needs_from(&cfg, v, &inputs, &full, from, vee::rules_context_us(v, Q));
        let first = full.points.partition_point(|x| x.ts <= need).saturating_sub(1);
        let trimmed = data(full.points[first..].to_vec());
        prop_assert_eq!(&compute(&trimmed), &all);
        // Any arrival order, with duplicates.
        let mut shuffled = full.points.clone();
        shuffled.extend(full.points.iter().step_by(7).copied());
        let n = shuffled.len();
        for i in 0..n {
            let j = (seed.wrapping_mul(i as u64 + 1) % n as u64) as usize;
            shuffled.swap(i, j);
        }
        dedup_and_sort(&mut shuffled);
        prop_assert_eq!(&compute(&data(shuffled)), &all);
    }
}
