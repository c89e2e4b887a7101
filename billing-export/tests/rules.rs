//! The billing rules README.md decides, each with an end-to-end export: holiday vs rule,
//! zero-usage periods and blocks, tier band names, demand lines' usage, `from_hour ==
//! to_hour`, sites mixing dated and undated devices, amounts from the rounded quantity, tax
//! bands of rates that round alike, and statement CSV = Parquet in every cell.

mod common;

use std::path::Path;
use std::process::Command;

use chrono::NaiveDate;
use common::*;
use gridmeter_billing::{run, Period, Tariffs};
use rust_decimal::Decimal;
use serde_json::Value;

fn day(date: &str) -> Period {
    let p = NaiveDate::parse_from_str(date, "%Y-%m-%d").unwrap();
    Period::range(p, p.succ_opt().unwrap()).unwrap()
}

/// One UTC customer `C-1` with site `S-1`, the given devices (TOML) and tariff `t`.
fn registry(devices: &str, tax: &str) -> String {
    format!(
        "[[customers]]\nid = \"C-1\"\ntariff = \"t\"\ncurrency = \"EUR\"\ntax_rate = \"{tax}\"\ntime_zone = \"UTC\"\n\n[[sites]]\nid = \"S-1\"\ncustomer = \"C-1\"\n{devices}"
    )
}

/// Writes counter channels `(device, channel, unit, per-interval usage)` from `start`.
fn write(root: &Path, start: &str, series: &[(&str, &str, &str, Vec<Decimal>)]) {
    let (mut raw, mut usage) = (Vec::new(), Vec::new());
    for (i, (dev, ch, unit, per)) in series.iter().enumerate() {
        let (r, u) = counter(dev, ch, unit, t(start), per, 1 + 100_000 * i as u64);
        raw.extend(r);
        usage.extend(u);
    }
    write_raw(root, &start[..10], "c-0", &raw);
    write_usage(root, "commit-0001", &usage);
}

fn lines_of(inv: &Value) -> Vec<(String, String, String, String, String)> {
    inv["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let s = |k: &str| l[k].as_str().unwrap().to_string();
            (
                s("device_id"),
                s("component"),
                s("band"),
                s("quantity"),
                s("amount"),
            )
        })
        .collect()
}

fn row(
    dev: &str,
    comp: &str,
    band: &str,
    q: &str,
    a: &str,
) -> (String, String, String, String, String) {
    (dev.into(), comp.into(), band.into(), q.into(), a.into())
}

const TOU_TARIFF: &str = r#"
[tariffs.t]
[[tariffs.t.components]]
type = "time_of_use"
name = "energy"
quantity = "import_energy"
unit = "kWh"
default_period = "offpeak"
holidays = ["2026-10-05"]
holiday_period = "offpeak"
periods = [ { name = "peak", rate = "0.40" }, { name = "offpeak", rate = "0.20" }, { name = "night", rate = "0.10" } ]
rules = [
  { period = "night", from_hour = 0, to_hour = 6 },
  { period = "peak", days = ["mon", "tue", "wed", "thu", "fri"], from_hour = 7, to_hour = 21 },
]
[[tariffs.t.components]]
type = "tiered"
name = "water"
quantity = "water"
unit = "m3"
mode = "graduated"
tiers = [ { up_to = "10", rate = "1.50" }, { up_to = "20", rate = "2.00" }, { rate = "3.00" } ]
"#;

const TOU_DEVICES: &str = r#"
[[devices]]
id = "a-meter"
site = "S-1"
channels = { energy_import = { quantity = "import_energy" } }
[[devices]]
id = "b-meter"
site = "S-1"
channels = { energy_import = { quantity = "import_energy" } }
[[devices]]
id = "c-water"
site = "S-1"
channels = { water_volume = { quantity = "water" } }
[[devices]]
id = "d-water"
site = "S-1"
channels = { water_volume = { quantity = "water" } }
"#;

/// A holiday is priced at `holiday_period` all day, whatever the rules say: Monday
/// 2026-10-05 is a holiday, so its 07:00-21:00 is offpeak and its 00:00-06:00 is not night.
#[test]
fn a_holiday_beats_every_rule() {
    let dir = tempfile::tempdir().unwrap();
    let per = vec![d("100"); 192];
    write(
        dir.path(),
        "2026-10-05T00:00:00Z",
        &[("a-meter", "energy_import", "Wh", per)],
    );
    let cfg = config(dir.path(), &registry(TOU_DEVICES, "0"), TOU_TARIFF);
    let p = Period::range(
        NaiveDate::from_ymd_opt(2026, 10, 5).unwrap(),
        NaiveDate::from_ymd_opt(2026, 10, 7).unwrap(),
    )
    .unwrap();
    let out = run(&cfg, p).unwrap().run_dir.unwrap();
    assert_eq!(
        lines_of(&invoice(&out, "C-1")),
        vec![
            // Tuesday 07:00-21:00: 56 intervals = 5.6 kWh × 0.40.
            row("a-meter", "energy", "peak", "5.600000000", "2.24"),
            // Monday's 96 (holiday) + Tuesday's 16 = 112 = 11.2 kWh × 0.20.
            row("a-meter", "energy", "offpeak", "11.200000000", "2.24"),
            // Tuesday 00:00-06:00 only: 24 intervals.
            row("a-meter", "energy", "night", "2.400000000", "0.24"),
        ]
    );
}

/// A time-of-use period or a graduated block with zero usage gets no line; a channel with no
/// usage at all gets one zero line (default period / first block), so the meter is on the
/// bill. Unnamed blocks are `tier1`, `tier2`, ...
#[test]
fn zero_usage_periods_and_blocks_get_no_line() {
    let dir = tempfile::tempdir().unwrap();
    // a-meter: nothing at night (00:00-06:00, 24 intervals), 100 Wh otherwise.
    let a: Vec<Decimal> = (0..96)
        .map(|i| if i < 24 { d("0") } else { d("100") })
        .collect();
    write(
        dir.path(),
        "2026-10-06T00:00:00Z",
        &[
            ("a-meter", "energy_import", "Wh", a),
            ("b-meter", "energy_import", "Wh", vec![d("0"); 96]),
            // 96 × 125 L = 12 m3: the first two blocks.
            ("c-water", "water_volume", "L", vec![d("125"); 96]),
            ("d-water", "water_volume", "L", vec![d("0"); 96]),
        ],
    );
    let cfg = config(dir.path(), &registry(TOU_DEVICES, "0"), TOU_TARIFF);
    let out = run(&cfg, day("2026-10-06")).unwrap().run_dir.unwrap();
    assert_eq!(
        lines_of(&invoice(&out, "C-1")),
        vec![
            // Tuesday: peak 56 intervals, offpeak 16 (06:00-07:00, 21:00-24:00), no night line.
            row("a-meter", "energy", "peak", "5.600000000", "2.24"),
            row("a-meter", "energy", "offpeak", "1.600000000", "0.32"),
            // No usage at all: one zero line in the default period.
            row("b-meter", "energy", "offpeak", "0.000000000", "0.00"),
            // 12 m3: 10 × 1.50 + 2 × 2.00; no tier3 line.
            row("c-water", "water", "tier1", "10.000000000", "15.00"),
            row("c-water", "water", "tier2", "2.000000000", "4.00"),
            // No usage: one zero line in the first block.
            row("d-water", "water", "tier1", "0.000000000", "0.00"),
        ]
    );
    // The usage columns still add up to every channel's usage (the reconciliation passed).
    let recon = read(&out.join("reconciliation.csv"));
    assert_eq!(recon.matches(",ok,").count(), 4, "{recon}");
}

#[test]
fn block_names_must_be_unique_including_the_defaults() {
    let tariffs = r#"
[tariffs.t]
components = [
  { type = "tiered", name = "water", quantity = "water", unit = "m3", mode = "graduated",
    tiers = [ { name = "tier2", up_to = "10", rate = "1" }, { up_to = "20", rate = "2" }, { rate = "3" } ] },
]
"#;
    let err = gridmeter_core::config::parse::<Tariffs>(tariffs, "tariffs.toml").unwrap_err();
    let all = err.problems.join("\n");
    assert!(
        all.contains("tariffs.t.components[0].tiers[1].name")
            && all.contains("\"tier2\" is used twice"),
        "{all}"
    );
}

/// `from_hour == to_hour` is refused (is it no hour or all day?); the whole day is 0..24.
#[test]
fn equal_hours_are_refused_and_0_to_24_is_all_day() {
    let tou = |from: u32, to: u32| {
        format!(
            "[tariffs.t]\ncomponents = [ {{ type = \"time_of_use\", name = \"e\", quantity = \"import_energy\", unit = \"kWh\", default_period = \"a\", periods = [ {{ name = \"a\", rate = \"1\" }}, {{ name = \"b\", rate = \"2\" }} ], rules = [ {{ period = \"b\", from_hour = {from}, to_hour = {to} }} ] }} ]\n"
        )
    };
    let err = gridmeter_core::config::parse::<Tariffs>(&tou(7, 7), "tariffs.toml").unwrap_err();
    let all = err.problems.join("\n");
    assert!(
        all.contains("tariffs.t.components[0].rules[0]")
            && all.contains("from_hour = 0, to_hour = 24"),
        "{all}"
    );
    // 0..24: every interval of the day is in "b".
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "2026-10-06T00:00:00Z",
        &[("a-meter", "energy_import", "Wh", vec![d("10"); 96])],
    );
    let devices = "[[devices]]\nid = \"a-meter\"\nsite = \"S-1\"\nchannels = { energy_import = { quantity = \"import_energy\" } }\n";
    let cfg = config(dir.path(), &registry(devices, "0"), &tou(0, 24));
    let out = run(&cfg, day("2026-10-06")).unwrap().run_dir.unwrap();
    assert_eq!(
        lines_of(&invoice(&out, "C-1")),
        vec![row("a-meter", "e", "b", "0.960000000", "1.92")]
    );
}

/// A demand line's `usage_quantity` is the energy of the peak interval (channel unit ×
/// multiplier), so `kW = usage × 4 / 1000` reproduces it, and its `quality` is that interval's.
#[test]
fn a_demand_line_carries_its_peak_intervals_energy() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut per = vec![d("25"); 96];
    per[72] = d("625");
    per[80] = d("625"); // a tie: the earlier one is the peak
    let (raw, mut usage) = counter(
        "pv",
        "energy_import",
        "Wh",
        t("2026-06-01T00:00:00Z"),
        &per,
        1,
    );
    usage[72].flags = "estimated".into();
    write_raw(root, "2026-06-01", "c-0", &raw);
    write_usage(root, "commit-0001", &usage);
    let devices = "[[devices]]\nid = \"pv\"\nsite = \"S-1\"\nmultiplier = \"2\"\nchannels = { energy_import = { quantity = \"import_energy\" } }\n";
    let tariffs = "[tariffs.t]\ncomponents = [ { type = \"demand\", name = \"demand\", quantity = \"import_energy\", unit = \"kW\", rate = \"9.50\" } ]\n";
    let cfg = config(root, &registry(devices, "0"), tariffs);
    let out = run(&cfg, day("2026-06-01")).unwrap().run_dir.unwrap();
    let csv = read(&out.join("statement_lines.csv"));
    // 625 Wh × 2 = 1250 Wh in the peak interval: × 4 / 1000 = 5 kW × 9.50 = 47.50.
    assert!(
        csv.contains(",demand,,2026-06-01_2026-06-02,2026-06-01T00:00:00Z,2026-06-02T00:00:00Z,5.000000000,kW,9.500000000,47.50,EUR,0.000000000,1250.000000000,Wh,1.0000,0.0000,1,,2026-06-01T18:00:00Z,"),
        "{csv}"
    );
}

/// A site's active days come from its devices: a device without an installation date counts
/// as installed before the period, one without a removal date as still active; so the site
/// runs from the earliest installation to the latest removal, an undated device making that
/// side open.
#[test]
fn sites_mixing_dated_and_undated_devices() {
    let dir = tempfile::tempdir().unwrap();
    let reg = r#"
[[customers]]
id = "C-1"
tariff = "t"
currency = "EUR"
time_zone = "UTC"
[[sites]]
id = "S-a"
customer = "C-1"
[[sites]]
id = "S-b"
customer = "C-1"
[[sites]]
id = "S-c"
customer = "C-1"
[[sites]]
id = "S-d"
customer = "C-1"
# S-a: one device installed 2026-10-15, one undated: open from the period start.
[[devices]]
id = "a1"
site = "S-a"
installed = "2026-10-15"
[[devices]]
id = "a2"
site = "S-a"
# S-b: one device removed 2026-10-20, one never removed: still active.
[[devices]]
id = "b1"
site = "S-b"
removed = "2026-10-20"
[[devices]]
id = "b2"
site = "S-b"
# S-c: installed 2026-10-15 and 2026-10-20: from the 15th (17 days).
[[devices]]
id = "c1"
site = "S-c"
installed = "2026-10-15"
[[devices]]
id = "c2"
site = "S-c"
installed = "2026-10-20"
# S-d: removed 2026-10-10 (midnight) and 2026-10-20T12:00Z: through the 20th (20 days).
[[devices]]
id = "d1"
site = "S-d"
removed = "2026-10-10"
[[devices]]
id = "d2"
site = "S-d"
removed = "2026-10-20T12:00:00Z"
"#;
    let tariffs = "[tariffs.t]\ncomponents = [ { type = \"fixed\", name = \"rent\", monthly = \"31.00\" } ]\n";
    let cfg = config(dir.path(), reg, tariffs);
    let out = run(&cfg, "2026-10".parse().unwrap())
        .unwrap()
        .run_dir
        .unwrap();
    let days: Vec<(String, String)> = invoice(&out, "C-1")["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["site_id"].as_str().unwrap().to_string(),
                l["amount"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    // 31.00 / 31 = 1.00 per day.
    let want = [
        ("S-a", "31.00"),
        ("S-b", "31.00"),
        ("S-c", "17.00"),
        ("S-d", "20.00"),
    ];
    assert_eq!(
        days,
        want.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
    );
}

/// The amount is computed from the quantity as shown (rounded half-even to 9 places), so it
/// can be reproduced from the statement: 10 CPU-seconds = 0.0027777... h -> 0.002777778 h;
/// × 1.80 = 0.0050000004 -> 0.01 (the unrounded 0.005 would give 0.00 half-even).
#[test]
fn the_amount_is_computed_from_the_shown_quantity() {
    let dir = tempfile::tempdir().unwrap();
    let mut per = vec![d("0"); 96];
    per[0] = d("10");
    write(
        dir.path(),
        "2026-10-06T00:00:00Z",
        &[("srv", "cpu_seconds", "s", per)],
    );
    let devices = "[[devices]]\nid = \"srv\"\nsite = \"S-1\"\n";
    let tariffs = "[tariffs.t]\ncomponents = [ { type = \"flat\", name = \"cpu\", quantity = \"cpu\", unit = \"h\", rate = \"1.80\" } ]\n";
    let cfg = config(dir.path(), &registry(devices, "0"), tariffs);
    let out = run(&cfg, day("2026-10-06")).unwrap().run_dir.unwrap();
    let inv = invoice(&out, "C-1");
    assert_eq!(
        lines_of(&inv),
        vec![row("srv", "cpu", "", "0.002777778", "0.01")]
    );
    let l = &inv["lines"][0];
    let q: Decimal = l["quantity"].as_str().unwrap().parse().unwrap();
    let r: Decimal = l["rate"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        gridmeter_billing::Rounding::HalfEven
            .round(q * r, 2)
            .to_string(),
        l["amount"].as_str().unwrap()
    );
}

/// 0.0888 and 0.08875 both show as 0.0888 at 4 places; their tax lines must not share a band
/// (part of the ledger key), and each shows its exact rate.
#[test]
fn tax_rates_that_round_alike_get_their_own_bands() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "2026-10-06T00:00:00Z",
        &[
            ("srv", "cpu_seconds", "s", vec![d("3600"); 96]),
            ("srv", "http_requests", "1", vec![d("100000"); 96]),
        ],
    );
    let devices = "[[devices]]\nid = \"srv\"\nsite = \"S-1\"\n";
    let tariffs = r#"
[tariffs.t]
components = [
  { type = "flat", name = "cpu", quantity = "cpu", unit = "h", rate = "1.25" },
  { type = "flat", name = "requests", quantity = "requests", unit = "Mrequests", rate = "1.00", tax_rate = "0.08875" },
]
"#;
    let cfg = config(root, &registry(devices, "0.0888"), tariffs);
    let period = day("2026-10-06");
    let out = run(&cfg, period).unwrap().run_dir.unwrap();
    let inv = invoice(&out, "C-1");
    // cpu 96 h × 1.25 = 120.00 at 0.0888 = 10.656 -> 10.66;
    // requests 9.6 M × 1.00 = 9.60 at 0.08875 = 0.852 -> 0.85.
    assert_eq!(
        inv["taxes"],
        serde_json::json!([
            { "rate": "0.08875", "base": "9.60", "amount": "0.85" },
            { "rate": "0.0888", "base": "120.00", "amount": "10.66" },
        ])
    );
    let csv = read(&out.join("statement_lines.csv"));
    assert!(
        csv.contains(",tax,0.0888,") && csv.contains(",tax,0.08875,"),
        "{csv}"
    );
    // Both lines survive the ledger: a re-run finds nothing to adjust.
    assert_eq!(run(&cfg, period).unwrap().run, None);
}

/// Every column of every row of `statement_lines.csv` equals the Parquet file (read by
/// pyarrow): charges of every component type, and the adjustment lines of a second run.
#[test]
fn statement_csv_equals_parquet_in_every_cell() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut a: Vec<Decimal> = (0..96).map(|i| d(&format!("{}.125", 10 + i % 7))).collect();
    a[50] = d("800.5");
    write(
        root,
        "2026-10-06T00:00:00Z",
        &[
            ("-a-meter", "energy_import", "Wh", a),
            ("c-water", "water_volume", "L", vec![d("333.333"); 96]),
        ],
    );
    let devices = r#"
[[devices]]
id = "-a-meter"
site = "S-1"
multiplier = "3"
channels = { energy_import = { quantity = "import_energy" } }
[[devices]]
id = "c-water"
site = "S-1"
channels = { water_volume = { quantity = "water" } }
"#;
    let tariffs = r#"
[tariffs.t]
[[tariffs.t.components]]
type = "time_of_use"
name = "energy"
quantity = "import_energy"
unit = "kWh"
default_period = "=offpeak"
periods = [ { name = "@peak", rate = "0.4012" }, { name = "=offpeak", rate = "0.2" } ]
rules = [ { period = "@peak", from_hour = 7, to_hour = 21 } ]
[[tariffs.t.components]]
type = "demand"
name = "demand"
quantity = "import_energy"
unit = "kW"
rate = "9.5"
tax_rate = "0.08875"
[[tariffs.t.components]]
type = "tiered"
name = "water"
quantity = "water"
unit = "m3"
mode = "graduated"
tiers = [ { name = "+base", up_to = "10", rate = "1.5" }, { rate = "3" } ]
[[tariffs.t.components]]
type = "fixed"
name = "standing_charge"
monthly = "12.40"
"#;
    let cfg = config(root, &registry(devices, "0.19"), tariffs);
    let period = day("2026-10-06");
    let first = run(&cfg, period).unwrap().run_dir.unwrap();
    compare_csv_parquet(&first, 8);
    // A late revision: adjustment lines with previous_revision set.
    write_usage(
        root,
        "commit-0002",
        &[UsageRow {
            device: "-a-meter".into(),
            channel: "energy_import".into(),
            kind: "counter".into(),
            unit: "Wh".into(),
            start: t("2026-10-06T13:00:00Z"),
            usage: Some(d("900")),
            avg: None,
            flags: "late".into(),
            revision: 2,
        }],
    );
    let mut raw_fix = vec![d("0"); 96];
    for (i, v) in raw_fix.iter_mut().enumerate() {
        *v = d(&format!("{}.125", 10 + i % 7));
    }
    raw_fix[50] = d("800.5");
    raw_fix[52] = d("900");
    let (r, _) = counter(
        "-a-meter",
        "energy_import",
        "Wh",
        t("2026-10-06T00:00:00Z"),
        &raw_fix,
        1,
    );
    let (w, _) = counter(
        "c-water",
        "water_volume",
        "L",
        t("2026-10-06T00:00:00Z"),
        &vec![d("333.333"); 96],
        100_001,
    );
    let mut all = r;
    all.extend(w);
    write_raw(root, "2026-10-06", "c-0", &all);
    let second = run(&cfg, period).unwrap();
    assert_eq!(second.run.as_deref(), Some("run-0002"), "{:?}", second.held);
    let adj = second.run_dir.unwrap();
    let csv = read(&adj.join("statement_lines.csv"));
    assert!(
        csv.contains(",adjustment,") && csv.contains(",2,1,"),
        "{csv}"
    );
    compare_csv_parquet(&adj, 4);
}

fn compare_csv_parquet(run_dir: &Path, min_rows: usize) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/csv_equals_parquet.py");
    let o = Command::new("python3")
        .arg(&script)
        .arg(run_dir)
        .output()
        .expect("python3 must be installed");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "CSV and Parquet differ:\n{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let rows: usize = stdout
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(rows >= min_rows, "{stdout}");
}
