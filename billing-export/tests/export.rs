//! End-to-end exports with hand-computed expected bills. Every expected number is worked out
//! in the comments next to it.

mod common;

use std::path::Path;
use std::process::Command;

use chrono::{Duration, NaiveDate};
use common::*;
use gridmeter_billing::{run, ExportConfig, Period, Rounding};
use gridmeter_core::store::DataRoot;
use rust_decimal::Decimal;

fn range(a: &str, b: &str) -> Period {
    let p = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
    Period::range(p(a), p(b)).unwrap()
}

// ---------------------------------------------------------------------------------------
// 1. Household on time-of-use across the 2026-10-25 DST change in Europe/Berlin.
// ---------------------------------------------------------------------------------------

const HOUSEHOLD_REGISTRY: &str = r#"
[[customers]]
id = "C-HH"
name = "Household, Berlin"
tariff = "tou"
currency = "EUR"
tax_rate = "0.19"
time_zone = "Europe/Berlin"

[[sites]]
id = "S-HH"
customer = "C-HH"

[[devices]]
id = "hh-meter"
site = "S-HH"
"#;

const HOUSEHOLD_TARIFFS: &str = r#"
[tariffs.tou]
[[tariffs.tou.components]]
type = "time_of_use"
name = "energy"
quantity = "import_energy"
unit = "kWh"
default_period = "offpeak"
periods = [ { name = "peak", rate = "0.40" }, { name = "offpeak", rate = "0.20" }, { name = "night", rate = "0.10" } ]
rules = [
  { period = "night", days = ["sun"], from_hour = 2, to_hour = 3 },
  { period = "peak", days = ["mon", "tue", "wed", "thu", "fri"], from_hour = 7, to_hour = 21 },
]
[[tariffs.tou.components]]
type = "fixed"
name = "standing_charge"
monthly = "12.40"
"#;

/// Local 2026-10-24 (Sat, 24 h), 25 (Sun, 25 h: 02:00-03:00 happens twice) and 26 (Mon,
/// 24 h) = 73 h = 292 intervals of 100 Wh, from 2026-10-23T22:00Z to 2026-10-26T23:00Z.
fn household(root: &Path) {
    let start = t("2026-10-23T22:00:00Z");
    let per = vec![d("100"); 292];
    let (raw, usage) = counter("hh-meter", "energy_import", "Wh", start, &per, 1);
    write_usage(root, "commit-0001", &usage);
    write_raw(root, "2026-10-24", "c1-0", &raw);
}

#[test]
fn household_tou_across_dst() {
    let dir = tempfile::tempdir().unwrap();
    household(dir.path());
    let cfg = config(dir.path(), HOUSEHOLD_REGISTRY, HOUSEHOLD_TARIFFS);
    let s = run(&cfg, range("2026-10-24", "2026-10-27")).unwrap();
    let out = s.run_dir.unwrap();
    assert!(out.ends_with("exports/2026-10-24_2026-10-27/run-0001"));
    let inv = invoice(&out, "C-HH");
    assert_eq!(
        items(&inv),
        vec![
            // peak: Monday 07:00-21:00 local = 14 h = 56 intervals = 5.6 kWh × 0.40 = 2.24.
            (
                "energy".into(),
                "peak".into(),
                "5.600000000".into(),
                "2.24".into()
            ),
            // offpeak: 292 - 8 - 56 = 228 intervals = 22.8 kWh × 0.20 = 4.56.
            (
                "energy".into(),
                "offpeak".into(),
                "22.800000000".into(),
                "4.56".into()
            ),
            // night: Sunday local 02:00-03:00, which happens twice on the 25-hour day
            // (00:00Z-01:00Z at +02:00 and 01:00Z-02:00Z at +01:00): 8 intervals × 100 Wh
            // = 0.8 kWh × 0.10 = 0.08.
            (
                "energy".into(),
                "night".into(),
                "0.800000000".into(),
                "0.08".into()
            ),
            // standing charge: 12.40 / 31 days = 0.4 per day × 3 days = 1.20.
            (
                "standing_charge".into(),
                "2026-10".into(),
                "3.000000000".into(),
                "1.20".into()
            ),
        ]
    );
    // net 2.24 + 4.56 + 0.08 + 1.20 = 8.08; VAT 19 %: 1.5352 -> 1.54; total 9.62.
    assert_eq!(inv["net_total"], "8.08");
    assert_eq!(inv["taxes"][0]["amount"], "1.54");
    assert_eq!(inv["total"], "9.62");
    assert_eq!(inv["period_start"], "2026-10-23T22:00:00Z");
    assert_eq!(inv["period_end"], "2026-10-26T23:00:00Z");
    let recon = read(&out.join("reconciliation.csv"));
    assert!(recon.contains("C-HH,S-HH,hh-meter,energy_import,counter,Wh,1.000000000,29200.000000000,29200.000000000,29200.000000000,ok,"), "{recon}");
    // Green Button: three local days -> three IntervalBlocks of 96, 100 and 96 readings.
    let xml = read(&out.join("espi/C-HH.xml"));
    assert_eq!(xml.matches("<espi:IntervalBlock>").count(), 3);
    assert_eq!(xml.matches("<espi:IntervalReading>").count(), 292);
    assert!(
        xml.contains("<espi:duration>90000</espi:duration>"),
        "the 25-hour day"
    );
    // 100 Wh per interval: exact integers with multiplier 10^0.
    assert!(xml.contains("<espi:powerOfTenMultiplier>0</espi:powerOfTenMultiplier>"));
    assert_eq!(xml.matches("<espi:value>100</espi:value>").count(), 292);
}

#[test]
fn same_inputs_give_identical_bytes() {
    let data = tempfile::tempdir().unwrap();
    household(data.path());
    let mut outs = Vec::new();
    for _ in 0..2 {
        let out = tempfile::tempdir().unwrap();
        let mut cfg = config(data.path(), HOUSEHOLD_REGISTRY, HOUSEHOLD_TARIFFS);
        cfg.out_dir = out.path().to_path_buf();
        run(&cfg, range("2026-10-24", "2026-10-27")).unwrap();
        outs.push(out);
    }
    let files = |root: &Path| run_files(&root.join("exports/2026-10-24_2026-10-27/run-0001"));
    let (a, b) = (files(outs[0].path()), files(outs[1].path()));
    assert!(
        a.len() >= 8,
        "{:?}",
        a.iter().map(|x| &x.0).collect::<Vec<_>>()
    );
    assert_eq!(a, b);
}

// ---------------------------------------------------------------------------------------
// 2. PV site: import and export priced separately, demand charge, CT multiplier 2.
// ---------------------------------------------------------------------------------------

const PV_REGISTRY: &str = r#"
[[customers]]
id = "C-PV"
tariff = "pv"
currency = "EUR"
tax_rate = "0.20"
time_zone = "UTC"

[[sites]]
id = "S-PV"
customer = "C-PV"

[[devices]]
id = "pv-meter"
site = "S-PV"
multiplier = "2"
[devices.channels]
energy_import = { quantity = "import_energy" }
energy_export = { quantity = "export_energy" }
"#;

const PV_TARIFFS: &str = r#"
[tariffs.pv]
components = [
  { type = "flat", name = "import", quantity = "import_energy", unit = "kWh", rate = "0.30" },
  { type = "flat", name = "export_credit", quantity = "export_energy", unit = "kWh", rate = "0.08", credit = true },
  { type = "demand", name = "demand", quantity = "import_energy", unit = "kW", rate = "9.50" },
]
"#;

/// 2026-06-01 (UTC), 96 intervals. Import: 25 Wh each, except 18:00 = 625 Wh and
/// 18:15 = 500 Wh. Export: 100 Wh for the 16 intervals 10:00-14:00, else 0.
/// With `late_1815`, the 18:15 import reading is missing from the first raw file and the
/// first usage revision interpolates 562.5 Wh into both 18:00 and 18:15.
/// The PV site's day; with `late_1815` the 18:15 reading is held back: its data file is
/// written but not committed, and it is returned to be committed later.
fn pv(root: &Path, late_1815: bool) -> Vec<RawRow> {
    let mut late_raw = Vec::new();
    let start = t("2026-06-01T00:00:00Z");
    let mut imp = vec![d("25"); 96];
    imp[72] = d("625");
    imp[73] = d("500");
    let exp: Vec<Decimal> = (0..96)
        .map(|i| {
            if (40..56).contains(&i) {
                d("100")
            } else {
                d("0")
            }
        })
        .collect();
    let (mut raw_i, mut use_i) = counter("pv-meter", "energy_import", "Wh", start, &imp, 1);
    let (raw_e, use_e) = counter("pv-meter", "energy_export", "Wh", start, &exp, 1000);
    // A duplicate delivery of one reading (same device and seq) with a later received_at and
    // a corrupted value: the reader must keep the earliest one.
    let mut dup = raw_i[10].clone();
    dup.value += d("999");
    dup.received_at += Duration::seconds(60);
    let mut all_raw = raw_i.clone();
    all_raw.push(dup);
    if late_1815 {
        let late = all_raw.remove(73);
        raw_i.remove(73);
        use_i[72].usage = Some(d("562.5"));
        use_i[73].usage = Some(d("562.5"));
        use_i[72].flags = "interpolated".into();
        use_i[73].flags = "estimated,gap,interpolated".into();
        late_raw.push(late);
    }
    all_raw.extend(raw_e);
    use_i.extend(use_e);
    write_raw(root, "2026-06-01", "c1-0", &all_raw);
    write_usage(root, "commit-0001", &use_i);
    // The late reading's data file is written but not committed yet: not data.
    if !late_raw.is_empty() {
        write_raw_uncommitted(root, "2026-06-01", "late-0", &late_raw);
    }
    late_raw
}

#[test]
fn pv_site_with_export_credit_and_demand() {
    let dir = tempfile::tempdir().unwrap();
    let _ = pv(dir.path(), false);
    let cfg = config(dir.path(), PV_REGISTRY, PV_TARIFFS);
    let out = run(&cfg, range("2026-06-01", "2026-06-02"))
        .unwrap()
        .run_dir
        .unwrap();
    let inv = invoice(&out, "C-PV");
    assert_eq!(
        items(&inv),
        vec![
            // export credit: 16 × 100 Wh × 2 = 3.2 kWh × 0.08 = 0.256 -> -0.26.
            (
                "export_credit".into(),
                "".into(),
                "3.200000000".into(),
                "-0.26".into()
            ),
            // import: (94 × 25 + 625 + 500) Wh × 2 = 6,950 Wh = 6.95 kWh × 0.30 = 2.085
            // -> half-even 2.08.
            (
                "import".into(),
                "".into(),
                "6.950000000".into(),
                "2.08".into()
            ),
            // demand: peak 625 Wh × 2 in 15 min × 4 = 5,000 W = 5 kW × 9.50 = 47.50.
            (
                "demand".into(),
                "".into(),
                "5.000000000".into(),
                "47.50".into()
            ),
        ]
    );
    let demand = &inv["lines"][2];
    assert_eq!(demand["peak_at"], "2026-06-01T18:00:00Z");
    assert_eq!(demand["peak_at_local"], "2026-06-01T18:00:00Z");
    // net 2.08 + 47.50 - 0.26 = 49.32; tax 20 % = 9.864 -> 9.86; total 59.18.
    assert_eq!(inv["net_total"], "49.32");
    assert_eq!(inv["tax_total"], "9.86");
    assert_eq!(inv["total"], "59.18");

    // Half-up rounding makes the import line 2.09 (2.085 rounds away from zero).
    let dir2 = tempfile::tempdir().unwrap();
    let _ = pv(dir2.path(), false);
    let mut cfg = config(dir2.path(), PV_REGISTRY, PV_TARIFFS);
    cfg.rounding = Rounding::HalfUp;
    let out = run(&cfg, range("2026-06-01", "2026-06-02"))
        .unwrap()
        .run_dir
        .unwrap();
    assert_eq!(invoice(&out, "C-PV")["lines"][1]["amount"], "2.09");
}

#[test]
fn late_data_produces_adjustments_not_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let late = pv(root, true);
    let cfg = config(root, PV_REGISTRY, PV_TARIFFS);
    let period = range("2026-06-01", "2026-06-02");
    let first = run(&cfg, period).unwrap();
    let run1 = first.run_dir.unwrap();
    let inv1 = invoice(&run1, "C-PV");
    // Interpolated peak: 562.5 Wh × 2 × 4 = 4,500 W = 4.5 kW × 9.50 = 42.75.
    assert_eq!(inv1["lines"][2]["amount"], "42.75");
    // net 2.08 + 42.75 - 0.26 = 44.57; tax 8.914 -> 8.91.
    assert_eq!(inv1["tax_total"], "8.91");
    // 562.5 Wh × multiplier 2 = 1,125 of 6,950 Wh estimated (18:15-18:30) = 0.16187 ->
    // 0.1619; the 18:00 window is only interpolated (its end lies between two readings),
    // which is no estimate.
    assert_eq!(inv1["lines"][1]["quality"], "0.1619");
    assert_eq!(inv1["lines"][1]["edited_share"], "0.0000");
    let manifest1 = read(&run1.join("manifest.json"));
    let csv1 = read(&run1.join("statement_lines.csv"));

    // The late reading lands, and the aggregator commits revision 2 of the two windows.
    write_raw(root, "2026-06-01", "late-0", &late);
    let rev2 = |i: i64, v: &str| UsageRow {
        device: "pv-meter".into(),
        channel: "energy_import".into(),
        kind: "counter".into(),
        unit: "Wh".into(),
        start: t("2026-06-01T18:00:00Z") + Duration::minutes(15 * i),
        usage: Some(d(v)),
        avg: None,
        flags: "late".into(),
        revision: 2,
    };
    write_usage(root, "commit-0002", &[rev2(0, "625"), rev2(1, "500")]);
    let second = run(&cfg, period).unwrap();
    assert_eq!(second.run.as_deref(), Some("run-0002"));
    let run2 = second.run_dir.unwrap();
    // run-0001 is untouched.
    assert_eq!(read(&run1.join("manifest.json")), manifest1);
    assert_eq!(read(&run1.join("statement_lines.csv")), csv1);
    let inv2 = invoice(&run2, "C-PV");
    assert_eq!(inv2["document"], "adjustment");
    // Import energy is unchanged (6.95 kWh either way), so only demand and tax adjust:
    // demand 5 kW - 4.5 kW = +0.5 kW, 47.50 - 42.75 = +4.75;
    // tax 9.86 - 8.91 = +0.95; adjustment total 5.70.
    assert_eq!(
        items(&inv2),
        vec![(
            "demand".into(),
            "".into(),
            "0.500000000".into(),
            "4.75".into()
        )]
    );
    assert_eq!(inv2["tax_total"], "0.95");
    assert_eq!(inv2["total"], "5.70");
    let csv2 = read(&run2.join("statement_lines.csv"));
    assert!(
        csv2.contains("run-0002,adjustment,C-PV,S-PV,pv-meter,energy_import,demand,"),
        "{csv2}"
    );
    assert!(
        csv2.contains(",2,1,2026-06-01T18:00:00Z,"),
        "revision 2, previously 1: {csv2}"
    );

    // Nothing new: nothing written.
    let third = run(&cfg, period).unwrap();
    assert_eq!(third.run, None);
    assert!(!root.join("exports/2026-06-01_2026-06-02/run-0003").exists());
}

/// The same export with the tables in S3 (a real moto server on 127.0.0.1, under a key
/// prefix, holding the uncommitted `_late-…pending` file too) instead of a local data root:
/// byte-identical outputs, and the TOML form of the config reads the same store.
#[test]
fn tables_on_s3_give_the_same_bytes() {
    let Some(moto) = gridmeter_core::testkit::Moto::start() else {
        return;
    };
    moto.create_bucket("billing");
    let url = "s3://billing/fleet/prod";
    let os = moto.config(url);
    let data = tempfile::tempdir().unwrap();
    let _ = pv(data.path(), true);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = os.open().unwrap();
    rt.block_on(gridmeter_core::testkit::upload_dir(
        data.path(),
        store.as_ref(),
        "",
    ));
    let data_files: Vec<String> = rt
        .block_on(futures::TryStreamExt::try_collect::<Vec<_>>(
            store.list(None),
        ))
        .unwrap()
        .into_iter()
        .map(|m| m.location.to_string())
        .filter(|k| k.ends_with(".parquet") && !k.contains("_delta_log"))
        .collect();
    assert_eq!(
        data_files.len(),
        3,
        "the usage file, the raw file and the uncommitted late file: {data_files:?}"
    );
    let period = range("2026-06-01", "2026-06-02");

    let local_out = tempfile::tempdir().unwrap();
    let mut cfg = config(data.path(), PV_REGISTRY, PV_TARIFFS);
    cfg.out_dir = local_out.path().to_path_buf();
    let local_run = run(&cfg, period).unwrap().run_dir.unwrap();

    let s3_out = tempfile::tempdir().unwrap();
    cfg.tables = DataRoot::ObjectStore(os.clone());
    cfg.out_dir = s3_out.path().to_path_buf();
    let s3_run = run(&cfg, period).unwrap().run_dir.unwrap();
    let (a, b) = (run_files(&local_run), run_files(&s3_run));
    assert!(
        a.len() >= 8,
        "{:?}",
        a.iter().map(|x| &x.0).collect::<Vec<_>>()
    );
    assert_eq!(a, b);
    // The interpolated first revision was read (the uncommitted file is not data).
    assert_eq!(invoice(&s3_run, "C-PV")["lines"][2]["amount"], "42.75");

    // billing.toml with [object_store] instead of data_root.
    let conf = s3_out.path().join("billing.toml");
    std::fs::write(s3_out.path().join("registry.toml"), PV_REGISTRY).unwrap();
    std::fs::write(s3_out.path().join("tariffs.toml"), PV_TARIFFS).unwrap();
    std::fs::write(
        &conf,
        format!(
            "out_dir = \"out\"\nregistry = \"registry.toml\"\ntariffs = \"tariffs.toml\"\n\
             [object_store]\nurl = \"{url}\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\n\
             access_key_id = \"testing\"\nsecret_access_key = \"testing\"\nallow_http = true\n",
            moto.endpoint()
        ),
    )
    .unwrap();
    let loaded = ExportConfig::load(&conf).unwrap();
    assert_eq!(loaded.tables, DataRoot::ObjectStore(os));
    let toml_run = run(&loaded, period).unwrap().run_dir.unwrap();
    assert!(toml_run.starts_with(s3_out.path().join("out")));
    assert_eq!(run_files(&toml_run), a);
}

#[test]
fn mismatch_holds_the_customer_naming_channel_and_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let _ = pv(root, false);
    // A usage row that the raw readings do not support (+7 Wh at 03:00).
    let bad = UsageRow {
        device: "pv-meter".into(),
        channel: "energy_import".into(),
        kind: "counter".into(),
        unit: "Wh".into(),
        start: t("2026-06-01T03:00:00Z"),
        usage: Some(d("32")),
        avg: None,
        flags: String::new(),
        revision: 2,
    };
    write_usage(root, "commit-0002", &[bad]);
    let cfg = config(root, PV_REGISTRY, PV_TARIFFS);
    let s = run(&cfg, range("2026-06-01", "2026-06-02")).unwrap();
    assert_eq!(s.reconciliation_mismatches, 1);
    assert_eq!(s.held_customers().into_iter().collect::<Vec<_>>(), ["C-PV"]);
    let msg = &s.held[0].reason;
    // Usage: 3475 + 7 = 3482 Wh; raw: 3475 Wh.
    assert_eq!(
        (s.held[0].device_id.as_str(), s.held[0].channel.as_str()),
        ("pv-meter", "energy_import")
    );
    assert!(msg.contains("3482") && msg.contains("3475"), "{msg}");
    let out = s.run_dir.unwrap();
    // Held: no invoice, no statement lines, no Green Button feed; the reconciliation shows why.
    assert!(!out.join("invoices/C-PV.json").exists());
    assert!(!out.join("espi/C-PV.xml").exists());
    assert_eq!(read(&out.join("statement_lines.csv")).lines().count(), 1);
    assert!(read(&out.join("reconciliation.csv")).contains("MISMATCH"));
    let exceptions = read(&out.join("exceptions.csv"));
    assert!(
        exceptions.starts_with(
            "customer_id,site_id,device_id,channel,reason\r\nC-PV,S-PV,pv-meter,energy_import,"
        ),
        "{exceptions}"
    );
    let prom = read(&root.join("exports/metrics.prom"));
    assert!(
        prom.contains("gridmeter_billing_reconciliation_mismatches_total 1"),
        "{prom}"
    );
    assert!(
        prom.contains("gridmeter_billing_held_customers_total 1"),
        "{prom}"
    );
    // Unchanged inputs: the customer is still held for the same reason; nothing new to write.
    let again = run(&cfg, range("2026-06-01", "2026-06-02")).unwrap();
    assert_eq!(again.run, None);
    assert_eq!(again.held, s.held);
}

// ---------------------------------------------------------------------------------------
// 3. Edge server priced by CPU, network, requests and memory.
// ---------------------------------------------------------------------------------------

const EDGE_REGISTRY: &str = r#"
[[customers]]
id = "C-EDGE"
tariff = "edge"
currency = "USD"
time_zone = "UTC"

[[sites]]
id = "S-EDGE"
customer = "C-EDGE"

[[devices]]
id = "edge-01"
site = "S-EDGE"
"#;

const EDGE_TARIFFS: &str = r#"
[tariffs.edge]
components = [
  { type = "flat", name = "cpu", quantity = "cpu", unit = "h", rate = "0.05" },
  { type = "flat", name = "network", quantity = "network", unit = "GB", rate = "0.09" },
  { type = "flat", name = "requests", quantity = "requests", unit = "Mrequests", rate = "0.40" },
  { type = "flat", name = "memory", quantity = "memory", unit = "GBh", rate = "0.01" },
]
"#;

#[test]
fn edge_server_priced_by_cpu_network_requests() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let start = t("2026-10-01T00:00:00Z");
    let mut raw = Vec::new();
    let mut usage = Vec::new();
    for (i, (ch, unit, per)) in [
        ("cpu_seconds", "s", "450"),
        ("http_requests", "1", "12500"),
        ("net_rx_bytes", "B", "10000000"),
        ("net_tx_bytes", "B", "25000000"),
    ]
    .into_iter()
    .enumerate()
    {
        let (r, u) = counter(
            "edge-01",
            ch,
            unit,
            start,
            &vec![d(per); 96],
            1 + 1000 * i as u64,
        );
        raw.extend(r);
        usage.extend(u);
    }
    usage.extend(gauge(
        "edge-01",
        "memory_bytes",
        "bytes",
        start,
        &vec![d("4000000000"); 96],
    ));
    write_raw(root, "2026-10-01", "c1-0", &raw);
    write_usage(root, "commit-0001", &usage);
    let cfg = config(root, EDGE_REGISTRY, EDGE_TARIFFS);
    let out = run(&cfg, range("2026-10-01", "2026-10-02"))
        .unwrap()
        .run_dir
        .unwrap();
    let inv = invoice(&out, "C-EDGE");
    assert_eq!(
        items(&inv),
        vec![
            // cpu: 96 × 450 s = 43,200 s = 12 h × 0.05 = 0.60.
            (
                "cpu".into(),
                "".into(),
                "12.000000000".into(),
                "0.60".into()
            ),
            // requests: 96 × 12,500 = 1,200,000 = 1.2 M × 0.40 = 0.48.
            (
                "requests".into(),
                "".into(),
                "1.200000000".into(),
                "0.48".into()
            ),
            // memory: avg 4e9 B × 0.25 h × 96 = 96e9 B·h = 96 GBh × 0.01 = 0.96.
            (
                "memory".into(),
                "".into(),
                "96.000000000".into(),
                "0.96".into()
            ),
            // rx: 96 × 10 MB = 0.96 GB × 0.09 = 0.0864 -> 0.09.
            (
                "network".into(),
                "".into(),
                "0.960000000".into(),
                "0.09".into()
            ),
            // tx: 96 × 25 MB = 2.4 GB × 0.09 = 0.216 -> 0.22.
            (
                "network".into(),
                "".into(),
                "2.400000000".into(),
                "0.22".into()
            ),
        ]
    );
    // 0.60 + 0.48 + 0.96 + 0.09 + 0.22 = 2.35, no tax.
    assert_eq!(inv["total"], "2.35");
    assert!(inv["taxes"].as_array().unwrap().is_empty());
    // No energy channel, so no Green Button feed.
    assert!(!out.join("espi/C-EDGE.xml").exists());
}

// ---------------------------------------------------------------------------------------
// 4. Tiered water (graduated) and gas (volume) meters; the gas meter was installed mid-day.
// ---------------------------------------------------------------------------------------

const UTILITY_REGISTRY: &str = r#"
[[customers]]
id = "C-UT"
tariff = "utility"
currency = "EUR"
tax_rate = "0.07"
time_zone = "UTC"

[[sites]]
id = "S-UT"
customer = "C-UT"

[[devices]]
id = "water-01"
site = "S-UT"
channels = { water_volume = { quantity = "water" } }

[[devices]]
id = "gas-01"
site = "S-UT"
installed = "2026-10-01T12:00:00Z"
channels = { gas_volume = { quantity = "gas" } }
"#;

const UTILITY_TARIFFS: &str = r#"
[tariffs.utility]
[[tariffs.utility.components]]
type = "tiered"
name = "water"
quantity = "water"
unit = "m3"
mode = "graduated"
tiers = [ { up_to = "10", rate = "1.50" }, { up_to = "20", rate = "2.00" }, { rate = "3.00" } ]
[[tariffs.utility.components]]
type = "tiered"
name = "gas"
quantity = "gas"
unit = "m3"
mode = "volume"
tiers = [ { name = "small", up_to = "5", rate = "0.90" }, { name = "medium", up_to = "50", rate = "0.80" }, { name = "large", rate = "0.70" } ]
[[tariffs.utility.components]]
type = "fixed"
name = "meter_rent"
monthly = "5.00"
"#;

#[test]
fn tiered_water_and_gas() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let start = t("2026-10-01T00:00:00Z");
    let (mut raw, mut usage) = counter(
        "water-01",
        "water_volume",
        "L",
        start,
        &vec![d("250"); 96],
        1,
    );
    let (r, u) = counter(
        "gas-01",
        "gas_volume",
        "m3",
        start,
        &vec![d("0.125"); 96],
        1,
    );
    raw.extend(r);
    usage.extend(u);
    write_raw(root, "2026-10-01", "c1-0", &raw);
    write_usage(root, "commit-0001", &usage);
    let cfg = config(root, UTILITY_REGISTRY, UTILITY_TARIFFS);
    let out = run(&cfg, range("2026-10-01", "2026-10-02"))
        .unwrap()
        .run_dir
        .unwrap();
    let inv = invoice(&out, "C-UT");
    assert_eq!(
        items(&inv),
        vec![
            // gas, installed 12:00: 48 intervals × 0.125 = 6 m3 > 5 -> "medium" for all of it:
            // 6 × 0.80 = 4.80.
            (
                "gas".into(),
                "medium".into(),
                "6.000000000".into(),
                "4.80".into()
            ),
            // water: 96 × 250 L = 24,000 L = 24 m3, graduated:
            // 10 × 1.50 = 15.00, 10 × 2.00 = 20.00, 4 × 3.00 = 12.00.
            (
                "water".into(),
                "tier1".into(),
                "10.000000000".into(),
                "15.00".into()
            ),
            (
                "water".into(),
                "tier2".into(),
                "10.000000000".into(),
                "20.00".into()
            ),
            (
                "water".into(),
                "tier3".into(),
                "4.000000000".into(),
                "12.00".into()
            ),
            // meter rent: 5.00 / 31 = 0.161290323 (9 dp) × 1 day = 0.16.
            (
                "meter_rent".into(),
                "2026-10".into(),
                "1.000000000".into(),
                "0.16".into()
            ),
        ]
    );
    // net 4.80 + 47.00 + 0.16 = 51.96; tax 7 % = 3.6372 -> 3.64; total 55.60.
    assert_eq!(inv["net_total"], "51.96");
    assert_eq!(inv["tax_total"], "3.64");
    assert_eq!(inv["total"], "55.60");
    // The gas reconciliation covers [12:00, 24:00) only: 6 m3 on every side.
    let recon = read(&out.join("reconciliation.csv"));
    assert!(
        recon.contains(
            "gas-01,gas_volume,counter,m3,1.000000000,6.000000000,6.000000000,6.000000000,ok"
        ),
        "{recon}"
    );
}

// ---------------------------------------------------------------------------------------
// 5. What a billing system's loader sees: pandas/DuckDB read the CSV with the documented
//    dtypes and the totals match; the ESPI XML has the schema's element names and nesting.
// ---------------------------------------------------------------------------------------

#[test]
fn loaders_accept_the_outputs() {
    let dir = tempfile::tempdir().unwrap();
    household(dir.path());
    let cfg = config(dir.path(), HOUSEHOLD_REGISTRY, HOUSEHOLD_TARIFFS);
    let out = run(&cfg, range("2026-10-24", "2026-10-27"))
        .unwrap()
        .run_dir
        .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/check_outputs.py");
    let o = Command::new("python3")
        .arg(&script)
        .arg(&out)
        .output()
        .expect("python3 must be installed");
    assert!(
        o.status.success(),
        "loader check failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    // 8.08 net + 1.54 tax, as the invoice says.
    assert!(stdout.contains("total 9.62"), "{stdout}");
}

#[test]
fn bad_registry_lists_every_problem() {
    let reg = r#"
[[customers]]
id = "C1"
tariff = "nope"
currency = "euro"
time_zone = "Mars/Olympus"
[[devices]]
id = "d 1"
site = "S-missing"
typo = 1
"#;
    let err = gridmeter_core::config::parse::<gridmeter_billing::Registry>(reg, "registry.toml")
        .unwrap_err();
    let all = err.problems.join("\n");
    for needle in [
        "typo",
        "currency",
        "time_zone",
        "devices[0].id",
        "unknown site",
    ] {
        assert!(all.contains(needle), "{needle} missing from:\n{all}");
    }
}
