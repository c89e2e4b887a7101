//! Hostile inputs: one customer's bad series never aborts the run (it is held with the reason
//! in `exceptions.csv`, everyone else is billed), ids that would escape the output directory
//! are refused at config load, and CSV text cells never reach a spreadsheet as formulas.

mod common;

use std::path::Path;

use chrono::NaiveDate;
use common::*;
use gridmeter_billing::{run, ExportConfig, Period, Registry};

fn day() -> Period {
    let p = NaiveDate::from_ymd_opt(2026, 10, 6).unwrap();
    Period::range(p, p.succ_opt().unwrap()).unwrap()
}

/// Customers `C-A`..`C-D`, one site and meter each, all on the same flat tariff.
const REGISTRY: &str = r#"
[[customers]]
id = "C-A"
tariff = "flat"
currency = "EUR"
tax_rate = "0.19"
time_zone = "UTC"
[[customers]]
id = "C-B"
tariff = "flat"
currency = "EUR"
time_zone = "UTC"
[[customers]]
id = "C-C"
tariff = "flat"
currency = "EUR"
time_zone = "UTC"
[[customers]]
id = "C-D"
tariff = "flat"
currency = "EUR"
time_zone = "UTC"
[[sites]]
id = "S-A"
customer = "C-A"
[[sites]]
id = "S-B"
customer = "C-B"
[[sites]]
id = "S-C"
customer = "C-C"
[[sites]]
id = "S-D"
customer = "C-D"
[[devices]]
id = "m-a"
site = "S-A"
channels = { energy_import = { quantity = "import_energy" } }
[[devices]]
id = "m-b"
site = "S-B"
channels = { energy_import = { quantity = "import_energy" } }
[[devices]]
id = "m-c"
site = "S-C"
multiplier = "10000000000"
channels = { energy_import = { quantity = "import_energy" } }
[[devices]]
id = "m-d"
site = "S-D"
channels = { energy_import = { quantity = "import_energy" } }
"#;

const TARIFFS: &str = r#"
[tariffs.flat]
components = [ { type = "flat", name = "energy", quantity = "import_energy", unit = "kWh", rate = "0.30" } ]
"#;

/// - `m-a`: 96 × 100 Wh, good.
/// - `m-b`: its series switches from Wh to kWh half-way (two commits disagree).
/// - `m-c`: an absurd 7.9e19 Wh in one interval; × its multiplier 10^10 it overflows the
///   exact decimals.
/// - `m-d`: a 1 MB unit that begins like a spreadsheet formula.
fn hostile(root: &Path) {
    let start = t("2026-10-06T00:00:00Z");
    let (mut raw, mut usage) = counter("m-a", "energy_import", "Wh", start, &vec![d("100"); 96], 1);
    let (r, mut u) = counter("m-b", "energy_import", "Wh", start, &vec![d("100"); 96], 1);
    raw.extend(r);
    let late: Vec<UsageRow> = u
        .drain(48..)
        .map(|mut row| {
            row.unit = "kWh".into();
            row.usage = Some(d("0.1"));
            row
        })
        .collect();
    usage.extend(u);
    let mut per = vec![d("1"); 96];
    per[10] = d("79000000000000000000");
    let (r, u) = counter("m-c", "energy_import", "Wh", start, &per, 1);
    raw.extend(r);
    usage.extend(u);
    let pill = format!("=HYPERLINK(\"http://x\",\"{}\")", "x".repeat(1 << 20));
    let (r, u) = counter("m-d", "energy_import", "Wh", start, &[d("5"); 4], 1);
    raw.extend(r);
    usage.extend(u.into_iter().map(|mut row| {
        row.unit = pill.clone();
        row
    }));
    write_raw(root, "2026-10-06", "c-0", &raw);
    write_usage(root, "commit-0001", &usage);
    write_usage(root, "commit-0002", &late);
}

#[test]
fn bad_series_hold_their_customers_and_everyone_else_is_billed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    hostile(root);
    let cfg = config(root, REGISTRY, TARIFFS);
    let s = run(&cfg, day()).unwrap();
    assert_eq!(
        s.held_customers().into_iter().collect::<Vec<_>>(),
        ["C-B", "C-C", "C-D"]
    );
    let out = s.run_dir.clone().unwrap();
    // The good neighbour: 9.6 kWh × 0.30 = 2.88, VAT 0.5472 -> 0.55, total 3.43.
    let a = invoice(&out, "C-A");
    assert_eq!(a["total"], "3.43");
    assert_eq!(s.totals["EUR"].to_string(), "3.43");
    for held in ["C-B", "C-C", "C-D"] {
        assert!(
            !out.join(format!("invoices/{held}.json")).exists(),
            "{held}"
        );
    }
    let csv = read(&out.join("statement_lines.csv"));
    assert!(csv.lines().skip(1).all(|l| l.contains(",C-A,")), "{csv}");
    // Each held customer with its reason, bounded.
    let exceptions = read(&out.join("exceptions.csv"));
    assert!(exceptions.len() < 2_000, "{} bytes", exceptions.len());
    let reason = |c: &str| {
        s.held
            .iter()
            .find(|e| e.customer_id == c)
            .map(|e| e.reason.clone())
            .unwrap()
    };
    let b = reason("C-B");
    assert!(
        b.contains(
            "changes kind/unit from counter/\"Wh\" to counter/\"kWh\" at 2026-10-06T12:00:00Z"
        ),
        "{b}"
    );
    let c = reason("C-C");
    assert!(
        c.starts_with("pricing failed") && c.contains("overflow"),
        "{c}"
    );
    let d_reason = reason("C-D");
    assert!(
        d_reason.contains("cannot price a channel measured in \"=HYPERLINK(")
            && d_reason.contains(&format!("({} bytes)", (1 << 20) + 25)),
        "{d_reason}"
    );
    assert!(
        exceptions.contains("C-B,S-B,m-b,energy_import,"),
        "{exceptions}"
    );
    let prom = read(&root.join("exports/metrics.prom"));
    assert!(
        prom.contains("gridmeter_billing_held_customers_total 3"),
        "{prom}"
    );

    // The data is fixed (the aggregator commits revision 2 of the second half in Wh): the
    // next run bills C-B with an ordinary invoice (charges: it was never invoiced), and C-A
    // is unchanged.
    let (_, fixed) = counter(
        "m-b",
        "energy_import",
        "Wh",
        t("2026-10-06T00:00:00Z"),
        &vec![d("100"); 96],
        1,
    );
    let fixed: Vec<UsageRow> = fixed
        .into_iter()
        .skip(48)
        .map(|mut r| {
            r.revision = 2;
            r
        })
        .collect();
    write_usage(root, "commit-0003", &fixed);
    let s2 = run(&cfg, day()).unwrap();
    assert_eq!(s2.run.as_deref(), Some("run-0002"));
    assert_eq!(
        s2.held_customers().into_iter().collect::<Vec<_>>(),
        ["C-C", "C-D"]
    );
    let out2 = s2.run_dir.unwrap();
    let b = invoice(&out2, "C-B");
    assert_eq!(b["document"], "invoice");
    // 96 × 100 Wh = 9.6 kWh × 0.30 = 2.88 (no tax rate).
    assert_eq!(b["total"], "2.88");
    assert!(!out2.join("invoices/C-A.json").exists());
    let csv2 = read(&out2.join("statement_lines.csv"));
    assert!(csv2.contains("run-0002,charge,C-B,"), "{csv2}");
}

#[test]
fn ids_that_would_escape_the_output_directory_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let long = "a".repeat(100_000);
    let registry = format!(
        r#"
[[customers]]
id = "../x"
tariff = "flat"
currency = "EUR"
time_zone = "UTC"
[[customers]]
id = ".hidden"
tariff = "flat"
currency = "EUR"
time_zone = "UTC"
[[customers]]
id = "C-1"
tariff = "flat"
currency = "EUR"
time_zone = "UTC"
[[customers]]
id = "c-1"
tariff = "flat"
currency = "EUR"
time_zone = "UTC"
[[customers]]
id = "{long}"
tariff = "flat"
currency = "EUR"
time_zone = "UTC"
[[sites]]
id = "S/1"
customer = "C-1"
"#
    );
    std::fs::write(dir.path().join("registry.toml"), registry).unwrap();
    std::fs::write(dir.path().join("tariffs.toml"), TARIFFS).unwrap();
    std::fs::write(
        dir.path().join("billing.toml"),
        "data_root = \"data\"\nregistry = \"registry.toml\"\ntariffs = \"tariffs.toml\"\n",
    )
    .unwrap();
    let err = ExportConfig::load(&dir.path().join("billing.toml"))
        .map(|_| ())
        .unwrap_err()
        .to_string();
    for want in [
        "customers[0].id: customer id \"../x\" cannot name a file",
        "customers[1].id: customer id \".hidden\" cannot name a file",
        "customers[3].id: customer ids \"C-1\" and \"c-1\" differ only in case",
        "customers[4].id: customer id \"aaaa",
        "(100000 bytes) cannot name a file",
        "sites[0].id: site id \"S/1\" cannot name a file",
    ] {
        assert!(err.contains(want), "{want:?} missing from:\n{err}");
    }
    assert!(
        err.len() < 2_000,
        "the error stays short: {} bytes",
        err.len()
    );
    // Nothing was written anywhere.
    assert!(!dir.path().join("x").exists() && !dir.path().join("data").exists());
    // The same check when the registry is built in code.
    let reg: Registry = gridmeter_core::config::parse(
        "[[customers]]\nid = \"ok\"\ntariff = \"flat\"\ncurrency = \"EUR\"\ntime_zone = \"UTC\"\n",
        "registry",
    )
    .unwrap();
    let mut bad = reg.clone();
    bad.customers[0].id = "../../etc/x".into();
    let cfg = ExportConfig::new(
        dir.path(),
        dir.path(),
        bad,
        gridmeter_core::config::parse(TARIFFS, "t").unwrap(),
    );
    let err = run(&cfg, day()).unwrap_err().to_string();
    assert!(err.contains("cannot name a file"), "{err}");
    // Nothing but the metrics file (written on failure too).
    assert!(!dir.path().join("etc").exists());
    assert!(!dir.path().join("exports/2026-10-06_2026-10-07").exists());
}

/// Text cells that begin with `=`, `+`, `-`, `@` (or a tab, CR or `'`) get a leading `'` in
/// every CSV; numbers, negative amounts included, are written as they are.
#[test]
fn csv_text_cells_never_start_a_formula() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let start = t("2026-10-06T00:00:00Z");
    let (mut raw, mut usage) = counter("-12", "energy_import", "Wh", start, &vec![d("100"); 96], 1);
    let (r, u) = counter(
        "-12",
        "energy_export",
        "Wh",
        start,
        &vec![d("10"); 96],
        1000,
    );
    raw.extend(r);
    usage.extend(u);
    // An unbilled counter channel with a formula for a unit: it shows in the reconciliation.
    let (r, u) = counter("-12", "gas_volume", "=1+1", start, &vec![d("1"); 96], 2000);
    raw.extend(r);
    usage.extend(u);
    write_raw(root, "2026-10-06", "c-0", &raw);
    write_usage(root, "commit-0001", &usage);
    let registry = r#"
[[customers]]
id = "C-1"
tariff = "t"
currency = "EUR"
time_zone = "UTC"
[[sites]]
id = "S-1"
customer = "C-1"
[[devices]]
id = "-12"
site = "S-1"
[devices.channels]
energy_import = { quantity = "import_energy" }
energy_export = { quantity = "export_energy" }
gas_volume = { quantity = "gas" }
"#;
    let tariffs = r#"
[tariffs.t]
[[tariffs.t.components]]
type = "time_of_use"
name = '=HYPERLINK("http://x","y")'
quantity = "import_energy"
unit = "kWh"
default_period = "@all"
periods = [ { name = "@all", rate = "0.30" } ]
[[tariffs.t.components]]
type = "flat"
name = "+credit"
quantity = "export_energy"
unit = "kWh"
rate = "0.08"
credit = true
"#;
    let cfg = config(root, registry, tariffs);
    let out = run(&cfg, day()).unwrap().run_dir.unwrap();
    let csv = read(&out.join("statement_lines.csv"));
    // 9.6 kWh × 0.30 = 2.88; the credit 0.96 kWh × 0.08 = 0.0768 -> -0.08 stays a number.
    assert!(
        csv.contains("run-0001,charge,C-1,S-1,'-12,energy_import,\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\",'@all,"),
        "{csv}"
    );
    assert!(
        csv.contains(",'-12,energy_export,'+credit,,") && csv.contains(",0.080000000,-0.08,EUR,"),
        "{csv}"
    );
    for (i, line) in csv.lines().enumerate() {
        for cell in line.split(',') {
            assert!(!cell.starts_with(['=', '+', '@']), "line {i}: {line}");
        }
    }
    let recon = read(&out.join("reconciliation.csv"));
    assert!(recon.contains(",'-12,gas_volume,counter,'=1+1,"), "{recon}");
    // The invoice JSON (not a spreadsheet format) keeps the names as they are.
    let inv = invoice(&out, "C-1");
    let tou = inv["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["component"] == "=HYPERLINK(\"http://x\",\"y\")")
        .unwrap();
    assert_eq!(tou["band"], "@all");
    assert_eq!(tou["device_id"], "-12");
}
