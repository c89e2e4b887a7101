//! Validation, estimation and editing, hand-computed, through real Delta tables (read back
//! by the aggregator and, for the exceptions, by DuckDB over the files `deltalake` lists).

mod common;

use std::collections::BTreeMap;

use common::{write_raw, Raw, DAY};
use gridmeter_aggregator::{AggregatorConfig, EditRequest, Metrics, UsageRow};
use gridmeter_tables::Flags;

const MIN: i64 = 60_000_000;
const Q: i64 = 15 * MIN;
const BASE: i64 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z
const ONE: i128 = 1_000_000_000;

fn reading(device: &str, seq: u64, ts: i64, value: i128) -> Raw {
    Raw {
        device: device.into(),
        channel: "energy_import".into(),
        kind: "counter",
        seq,
        ts,
        value,
        quality: "",
        received_at: ts + 1_000_000,
    }
}

/// Wh per quarter hour of the test households: 1 at night (00:00–06:00), 3 by day.
fn pattern(ts: i64) -> i128 {
    let hour = ts.rem_euclid(DAY) / (60 * MIN);
    if hour < 6 {
        1
    } else {
        3
    }
}

/// Quarter-hourly readings from `from` for `n` quarters, starting at `start` Wh, each
/// quarter adding `per(quarter start)`; returns the rows and the last value.
fn quarters(
    device: &str,
    seq0: u64,
    from: i64,
    n: i64,
    start: i128,
    per: impl Fn(i64) -> i128,
) -> (Vec<Raw>, i128) {
    let mut v = start;
    let mut rows = vec![reading(device, seq0, from, v * ONE)];
    for k in 1..=n {
        v += per(from + (k - 1) * Q);
        rows.push(reading(device, seq0 + k as u64, from + k * Q, v * ONE));
    }
    (rows, v)
}

fn config(dir: &std::path::Path, vee: &str) -> AggregatorConfig {
    let text = format!(
        "data_root = {:?}\n[vee]\nmax_interpolation = \"2h\"\nprofile_weeks = 4\n{vee}",
        dir.display().to_string()
    );
    gridmeter_core::config::parse(&text, "test").unwrap()
}

async fn rows(cfg: &AggregatorConfig, window: &str) -> BTreeMap<i64, UsageRow> {
    gridmeter_aggregator::current(cfg, window)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.window_start, r))
        .collect()
}

fn names(f: Flags) -> String {
    f.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_day_gap_is_shaped_by_own_history_and_keeps_the_register_total() {
    let dir = tempfile::tempdir().unwrap();
    // Four weeks of history, then nothing for three days, then a day of readings.
    let (mut raw, v) = quarters("hh-1", 1, BASE, 28 * 96, 1000, pattern);
    let gap_start = BASE + 28 * DAY;
    let gap_end = gap_start + 3 * DAY;
    // The register moved 1440 Wh across the gap: twice what the history says (720).
    let (after, _) = quarters("hh-1", 10_000, gap_end, 96, v + 1440, pattern);
    raw.extend(after);
    write_raw(dir.path(), "c1", &raw);
    let cfg = config(dir.path(), "");
    gridmeter_aggregator::run_once(&cfg, &Metrics::unregistered())
        .await
        .unwrap();
    let q = rows(&cfg, "15m").await;
    let mut total = 0;
    for t in (gap_start..gap_end).step_by(Q as usize) {
        let r = &q[&t];
        // Each quarter gets the register difference in the history's proportion: 2 × pattern.
        assert_eq!(r.usage, Some(2 * pattern(t) * ONE), "window at {t}");
        assert!(r
            .flags
            .contains(Flags::ESTIMATED | Flags::GAP | Flags::METHOD_HISTORY));
        assert_eq!(r.flags.method(), Some("history"));
        total += r.usage.unwrap();
    }
    assert_eq!(total, 1440 * ONE, "the register total across the gap");
    // Outside the gap: measured, no method.
    let before = &q[&(gap_start - Q)];
    assert_eq!(before.usage, Some(3 * ONE));
    assert_eq!(before.flags.method(), None);
    let d = rows(&cfg, "1d").await;
    for day in 0..3 {
        assert_eq!(d[&(gap_start + day * DAY)].usage, Some(480 * ONE));
    }
    // A rebuild over the same raw writes nothing (the estimates are reproduced exactly).
    let s = gridmeter_aggregator::rebuild(
        &cfg,
        chrono::DateTime::from_timestamp_micros(BASE).unwrap(),
        chrono::DateTime::from_timestamp_micros(BASE + 40 * DAY).unwrap(),
        &Metrics::unregistered(),
    )
    .await
    .unwrap();
    assert!(s.rows_written.is_empty(), "{:?}", s.rows_written);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_end_is_estimated_then_revised_when_the_readings_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, v) = quarters("hh-2", 1, BASE, 28 * 96, 0, pattern);
    write_raw(dir.path(), "c1", &raw);
    let cfg = config(dir.path(), "");
    let metrics = Metrics::unregistered();
    gridmeter_aggregator::run_once(&cfg, &metrics)
        .await
        .unwrap();
    let last = BASE + 28 * DAY;
    let until = last + 2 * DAY;
    let s = gridmeter_aggregator::close(
        &cfg,
        chrono::DateTime::from_timestamp_micros(until).unwrap(),
        &metrics,
    )
    .await
    .unwrap();
    assert!(s.estimated["15m"] >= 192, "{s:?}");
    let q = rows(&cfg, "15m").await;
    for t in (last..until).step_by(Q as usize) {
        let r = &q[&t];
        // Expected usage of the same weekday and time over the last four weeks.
        assert_eq!(r.usage, Some(pattern(t) * ONE), "window at {t}");
        assert_eq!(r.flags.method(), Some("open_end"));
        assert!(r.flags.contains(Flags::ESTIMATED));
        assert_eq!(r.revision, 1);
    }
    assert!(!q.contains_key(&until));
    let d = rows(&cfg, "1d").await;
    assert_eq!(d[&last].usage, Some(240 * ONE));
    assert_eq!(d[&(last + DAY)].usage, Some(240 * ONE));
    // The meter was actually reading 2 Wh per quarter: the real readings arrive.
    let (late, _) = quarters("hh-2", 5_000, last, 3 * 96, v, |_| 2);
    write_raw(dir.path(), "c2", &late[1..]);
    let s = gridmeter_aggregator::run_once(&cfg, &metrics)
        .await
        .unwrap();
    assert!(s.revisions["15m"] >= 192, "{s:?}");
    let q = rows(&cfg, "15m").await;
    for t in (last..until).step_by(Q as usize) {
        let r = &q[&t];
        assert_eq!(r.usage, Some(2 * ONE));
        assert_eq!(r.revision, 2);
        assert_eq!(names(r.flags), "late");
    }
    let d = rows(&cfg, "1d").await;
    assert_eq!(d[&last].usage, Some(192 * ONE));
    assert_eq!(d[&last].revision, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spike_is_caught_recorded_and_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let (mut raw, _) = quarters("hh-3", 1, BASE, 2 * 96, 500, |_| 1);
    // Reading 150 is a glitch: 100 Wh too high (the next one is right again).
    raw[150].value += 100 * ONE;
    write_raw(dir.path(), "c1", &raw);
    let cfg = config(
        dir.path(),
        "[[vee.rules]]\nrule = \"spike\"\nfactor = \"10\"\ntrailing = 96\naction = \"estimate\"\nseverity = \"critical\"\n[[vee.rules]]\nrule = \"negative\"\n",
    );
    let metrics = Metrics::unregistered();
    let s = gridmeter_aggregator::run_once(&cfg, &metrics)
        .await
        .unwrap();
    assert_eq!(s.exceptions.get("spike"), Some(&1), "{s:?}");
    assert_eq!(metrics.exceptions.with_label_values(&["spike"]).get(), 1);
    assert_eq!(metrics.exceptions.with_label_values(&["negative"]).get(), 1);
    assert_eq!(
        metrics
            .estimated_rows
            .with_label_values(&["15m", "linear"])
            .get(),
        2
    );
    assert_eq!(metrics.rows_written.with_label_values(&["15m"]).get(), 184);
    let share = metrics.estimated_share.with_label_values(&["15m"]).get();
    assert!((share - 2.0 / 184.0).abs() < 1e-12, "{share}");
    assert_eq!(s.exceptions.get("negative"), Some(&1), "{s:?}");
    let q = rows(&cfg, "15m").await;
    let spike = &q[&(BASE + 149 * Q)];
    assert_eq!(spike.usage, Some(ONE), "replaced by the estimate");
    assert_eq!(
        names(spike.flags),
        "estimated,interpolated,method_linear,rule_spike"
    );
    let fall = &q[&(BASE + 150 * Q)];
    assert_eq!(fall.usage, Some(ONE));
    assert_eq!(
        names(fall.flags),
        "estimated,interpolated,method_linear,rule_negative"
    );
    // The total up to the last final window (the watermark is 2 h before the last reading)
    // is still the register difference over that span: 184 quarters of 1 Wh.
    let total: i128 = q.values().map(|r| r.usage.unwrap()).sum();
    assert_eq!(q.len(), 184);
    assert_eq!(total, 184 * ONE);
    let ex = gridmeter_aggregator::exceptions(&cfg).await.unwrap();
    assert_eq!(ex.len(), 2);
    assert_eq!(
        (
            ex[0].rule.as_str(),
            ex[0].observed,
            ex[0].threshold,
            ex[0].action.as_str(),
            ex[0].severity.as_str()
        ),
        (
            "spike",
            Some(101 * ONE),
            Some(10 * ONE),
            "estimate",
            "critical"
        )
    );
    assert_eq!(
        (
            ex[1].rule.as_str(),
            ex[1].observed,
            ex[1].threshold,
            ex[1].action.as_str()
        ),
        ("negative", Some(-99 * ONE), Some(0), "flag")
    );
    // An independent reader sees the same table.
    let files = common::delta_files(&dir.path().join("exceptions"));
    let got = common::duckdb(&format!(
        "SELECT rule, observed, threshold, action FROM {files} ORDER BY window_start"
    ));
    assert_eq!(
        got,
        vec![
            "spike\t101.000000000\t10.000000000\testimate",
            "negative\t-99.000000000\t0E-9\tflag"
        ]
    );
    // A rebuild finds everything current: no rows and no exceptions twice.
    let s = gridmeter_aggregator::rebuild(
        &cfg,
        chrono::DateTime::from_timestamp_micros(BASE).unwrap(),
        chrono::DateTime::from_timestamp_micros(BASE + 3 * DAY).unwrap(),
        &Metrics::unregistered(),
    )
    .await
    .unwrap();
    assert!(
        s.rows_written.is_empty() && s.exceptions.is_empty(),
        "{s:?}"
    );
    assert_eq!(
        gridmeter_aggregator::exceptions(&cfg).await.unwrap().len(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_register_is_flagged() {
    let dir = tempfile::tempdir().unwrap();
    // A day moving, eight hours stuck, a day moving again.
    let (mut raw, v) = quarters("hh-4", 1, BASE, 96, 0, |_| 1);
    let (stuck, v) = quarters("hh-4", 1_000, BASE + DAY, 32, v, |_| 0);
    raw.extend(stuck.into_iter().skip(1));
    let (moving, _) = quarters("hh-4", 2_000, BASE + DAY + 8 * 60 * MIN, 96, v, |_| 1);
    raw.extend(moving.into_iter().skip(1));
    // Another device not in the class: the same stuck hours are not its problem.
    let (other, _) = quarters("shop-1", 1, BASE, 3 * 96, 0, |t| {
        i128::from(!(BASE + DAY..BASE + DAY + 8 * 60 * MIN).contains(&t))
    });
    raw.extend(other);
    write_raw(dir.path(), "c1", &raw);
    let cfg = config(
        dir.path(),
        "[[vee.classes]]\nname = \"household\"\ndevices = [\"hh-*\"]\nstandard_profile = \"H0\"\n[[vee.rules]]\nrule = \"stuck\"\nclass = \"household\"\nhours = 6\n",
    );
    let s = gridmeter_aggregator::run_once(&cfg, &Metrics::unregistered())
        .await
        .unwrap();
    assert_eq!(s.exceptions.get("stuck"), Some(&32), "{s:?}");
    let q: Vec<UsageRow> = gridmeter_aggregator::current(&cfg, "15m").await.unwrap();
    let flagged: Vec<&UsageRow> = q
        .iter()
        .filter(|r| r.flags.contains(Flags::RULE_STUCK))
        .collect();
    assert_eq!(flagged.len(), 32);
    assert!(flagged.iter().all(|r| r.device_id == "hh-4"
        && r.usage == Some(0)
        && (BASE + DAY..BASE + DAY + 8 * 60 * MIN).contains(&r.window_start)));
    let ex = gridmeter_aggregator::exceptions(&cfg).await.unwrap();
    assert!(ex
        .iter()
        .all(|e| e.observed == Some(8 * ONE) && e.threshold == Some(6 * ONE)));
    // The hour and day windows carry the flag too.
    let h = gridmeter_aggregator::current(&cfg, "1h").await.unwrap();
    let stuck_hours = h
        .iter()
        .filter(|r| r.flags.contains(Flags::RULE_STUCK))
        .map(|r| r.device_id.as_str())
        .collect::<Vec<_>>();
    assert_eq!(stuck_hours, vec!["hh-4"; 8]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_is_audited_applied_as_a_revision_and_survives_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, _) = quarters("hh-5", 1, BASE, 2 * 96, 0, |_| 1);
    write_raw(dir.path(), "c1", &raw);
    let cfg = config(dir.path(), "");
    let metrics = Metrics::unregistered();
    gridmeter_aggregator::run_once(&cfg, &metrics)
        .await
        .unwrap();
    let at = |h: i64| chrono::DateTime::from_timestamp_micros(BASE + h * 60 * MIN).unwrap();
    let request = EditRequest {
        device_id: "hh-5".into(),
        channel: "energy_import".into(),
        window: "15m".into(),
        from: at(10),
        to: at(11),
        set: Some(rust_decimal::Decimal::from(5)),
        scale: None,
        reason: "meter test current left on".into(),
        who: "alice@billing".into(),
    };
    // Bad requests are refused with every problem, nothing recorded.
    let bad = EditRequest {
        from: at(11),
        to: at(10),
        window: "7m".into(),
        who: " ".into(),
        ..request.clone()
    };
    let err = gridmeter_aggregator::edit(&cfg, &[bad], &metrics)
        .await
        .unwrap_err()
        .to_string();
    for what in ["edits[0].to", "edits[0].window", "edits[0].who"] {
        assert!(err.contains(what), "{err}");
    }
    assert!(gridmeter_aggregator::edits(&cfg).await.unwrap().is_empty());
    let (recorded, s) = gridmeter_aggregator::edit(&cfg, &[request], &metrics)
        .await
        .unwrap();
    assert_eq!(recorded[0].edit_id, 1);
    assert_eq!(s.rows_written["15m"], 4, "{s:?}");
    let check =
        |q: &BTreeMap<i64, UsageRow>, h: &BTreeMap<i64, UsageRow>, d: &BTreeMap<i64, UsageRow>| {
            for k in 40..44 {
                let r = &q[&(BASE + k * Q)];
                assert_eq!(r.usage, Some(5 * ONE));
                assert_eq!(names(r.flags), "edited");
            }
            assert_eq!(q[&(BASE + 44 * Q)].usage, Some(ONE));
            assert_eq!(q[&(BASE + 44 * Q)].flags, Flags::NONE);
            assert_eq!(h[&(BASE + 10 * 60 * MIN)].usage, Some(20 * ONE));
            assert_eq!(d[&BASE].usage, Some((96 - 4 + 20) * ONE));
            assert!(names(d[&BASE].flags).contains("edited"));
        };
    let (q, h, d) = (
        rows(&cfg, "15m").await,
        rows(&cfg, "1h").await,
        rows(&cfg, "1d").await,
    );
    check(&q, &h, &d);
    assert_eq!(q[&(BASE + 40 * Q)].revision, 2);
    // The audit row.
    let audit = gridmeter_aggregator::edits(&cfg).await.unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(
        (
            audit[0].who.as_str(),
            audit[0].reason.as_str(),
            audit[0].value
        ),
        ("alice@billing", "meter test current left on", 5 * ONE)
    );
    // A rebuild keeps the edit (writes nothing); so does one from empty usage tables.
    let range = (
        chrono::DateTime::from_timestamp_micros(BASE).unwrap(),
        chrono::DateTime::from_timestamp_micros(BASE + 3 * DAY).unwrap(),
    );
    let s = gridmeter_aggregator::rebuild(&cfg, range.0, range.1, &metrics)
        .await
        .unwrap();
    assert!(s.rows_written.is_empty(), "{s:?}");
    for w in ["15m", "1h", "1d"] {
        for t in ["usage", "usage_history"] {
            std::fs::remove_dir_all(dir.path().join(format!("{t}_{w}"))).unwrap();
        }
    }
    gridmeter_aggregator::rebuild(&cfg, range.0, range.1, &metrics)
        .await
        .unwrap();
    let (q2, h2, d2) = (
        rows(&cfg, "15m").await,
        rows(&cfg, "1h").await,
        rows(&cfg, "1d").await,
    );
    check(&q2, &h2, &d2);
    assert_eq!(q2[&(BASE + 40 * Q)].revision, 1);
}

#[test]
fn vee_config_lists_every_problem() {
    let text = "data_root = \"/x\"\n[vee]\nmax_interpolation = \"soon\"\nprofile_weeks = 0\n\
        [[vee.classes]]\nname = \"household\"\ndevices = []\nstandard_profile = \"H9\"\n\
        [[vee.rules]]\nrule = \"spike\"\nfactor = \"0.5\"\nmax = \"3\"\n\
        [[vee.rules]]\nrule = \"bogus\"\n\
        [[vee.rules]]\nrule = \"timestamp_gap\"\naction = \"estimate\"\n\
        [[vee.rules]]\nrule = \"stuck\"\nclass = \"nobody\"\nseverity = \"loud\"\n\
        [[vee.rules]]\nrule = \"high_limit\"\nmax = \"1\"\ntypo = 1\n";
    let err = gridmeter_core::config::parse::<AggregatorConfig>(text, "t").unwrap_err();
    let all = err.problems.join("\n");
    // Unknown keys are serde's first error; the rest are found by the validation pass.
    assert!(all.contains("typo"), "{all}");
    let text = text.replace("typo = 1\n", "");
    let err = gridmeter_core::config::parse::<AggregatorConfig>(&text, "t").unwrap_err();
    let all = err.problems.join("\n");
    for what in [
        "vee.max_interpolation",
        "vee.profile_weeks",
        "vee.classes[0].devices",
        "vee.classes[0].standard_profile",
        "vee.rules[0].factor",
        "vee.rules[0].max",
        "vee.rules[1].rule",
        "vee.rules[2].action",
        "vee.rules[3].hours",
        "vee.rules[3].class",
        "vee.rules[3].severity",
    ] {
        assert!(all.contains(what), "{what} missing from:\n{all}");
    }
}

/// The H0 quarter-hour values of `[from, from + days)` as demandlib computes them (the
/// reference implementation of the BDEW profiles), one per line.
fn demandlib_h0(from: &str, quarters: usize) -> Vec<f64> {
    let script = format!(
        "import warnings\nwarnings.simplefilter = lambda *a, **k: None\nwarnings.filterwarnings('ignore')\n\
         import demandlib.bdew as bdew\nimport pandas as pd\n\
         p = bdew.ElecSlp(2026).get_profile({{'h0': 1.0}})['h0']\n\
         start = p.index.get_loc(pd.Timestamp('{from}'))\n\
         for v in p.iloc[start:start + {quarters}]:\n    print(repr(float(v)))\n"
    );
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .expect("python3 with demandlib");
    assert!(
        out.status.success(),
        "demandlib failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gap_without_history_follows_the_bdew_h0_profile_of_demandlib() {
    let dir = tempfile::tempdir().unwrap();
    // A week without readings across the winter/transition change (2026-03-21), for a
    // household with no history: the 1000 Wh it used are spread by H0.
    let t0 = 1_773_792_000_000_000; // 2026-03-18T00:00:00Z, a Wednesday
    let t1 = t0 + 7 * DAY;
    let mut raw = vec![reading("hh-9", 1, t0, 0)];
    let (after, _) = quarters("hh-9", 2, t1, 16, 1000, |_| 1);
    raw.extend(after);
    write_raw(dir.path(), "c1", &raw);
    let cfg = config(
        dir.path(),
        "[[vee.classes]]\nname = \"household\"\ndevices = [\"hh-*\"]\nstandard_profile = \"H0\"\n",
    );
    gridmeter_aggregator::run_once(&cfg, &Metrics::unregistered())
        .await
        .unwrap();
    let q = rows(&cfg, "15m").await;
    let reference = demandlib_h0("2026-03-18 00:00", 7 * 96);
    let total_ref: f64 = reference.iter().sum();
    let mut total = 0;
    for (k, want) in reference.iter().enumerate() {
        let r = &q[&(t0 + k as i64 * Q)];
        assert_eq!(r.flags.method(), Some("standard_profile"));
        let got = r.usage.unwrap() as f64 / 1e9;
        let expected = 1000.0 * want / total_ref;
        assert!(
            (got - expected).abs() < 1e-6,
            "quarter {k}: {got} Wh, demandlib says {expected}"
        );
        total += r.usage.unwrap();
    }
    assert_eq!(total, 1000 * ONE);
}
