//! Billing validated, estimated and edited usage, hand-computed: the estimated share counts
//! `estimated` only (never `interpolated`), the edited share, the `[hold]` rules (estimated
//! share, open exceptions with the revision and edit rules of "open") and the Green Button
//! quality code of every interval. Usage, raw and exceptions are committed to real Delta
//! tables (`tests/common`); `gridmeter/tests/vee_billing.rs` runs the same with the real
//! aggregator.

mod common;

use std::path::Path;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use common::*;
use gridmeter_billing::config::HoldRules;
use gridmeter_billing::{run, ExportConfig, Period};

fn day() -> Period {
    let p = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
    Period::range(p("2026-10-01"), p("2026-10-02")).unwrap()
}

fn customer(id: &str, device: &str) -> String {
    format!(
        "[[customers]]\nid = \"{id}\"\ntariff = \"flat\"\ncurrency = \"EUR\"\ntax_rate = \"0\"\ntime_zone = \"UTC\"\n\
         [[sites]]\nid = \"S-{id}\"\ncustomer = \"{id}\"\n[[devices]]\nid = \"{device}\"\nsite = \"S-{id}\"\n"
    )
}

const TARIFFS: &str = r#"
[tariffs.flat]
components = [ { type = "flat", name = "energy", quantity = "import_energy", unit = "kWh", rate = "0.30" } ]
"#;

const START: &str = "2026-10-01T00:00:00Z";

fn at(i: i64) -> DateTime<Utc> {
    t(START) + Duration::minutes(15 * i)
}

/// One UTC day of 96 windows of 100 Wh (readings at every boundary), window `i` flagged
/// `flags(i)`.
fn meter(root: &Path, device: &str, seq0: u64, flags: impl Fn(usize) -> &'static str) {
    let (raw, mut usage) = counter(
        device,
        "energy_import",
        "Wh",
        t(START),
        &[d("100"); 96],
        seq0,
    );
    for (i, u) in usage.iter_mut().enumerate() {
        u.flags = flags(i).into();
    }
    write_usage(root, &format!("{device}-1"), &usage);
    write_raw(root, "2026-10-01", &format!("{device}-raw"), &raw);
}

/// Window `i`'s flags on the ESPI meter and the quality code its interval must carry.
const ESPI_CASES: [(&str, Option<&str>); 9] = [
    ("estimated,gap,method_linear", Some("9")),
    ("estimated,gap,method_history", Some("8")),
    ("estimated,gap,method_standard_profile", Some("8")),
    ("estimated,gap,method_open_end", Some("12")),
    ("edited", Some("7")),
    ("edited,estimated,method_linear", Some("7")),
    ("estimated", Some("8")),
    ("interpolated", None),
    ("", None),
];

/// C-EST: 24 of 96 equal windows estimated by history (25 %). C-INT: every window
/// interpolated (a boundary between readings), none estimated. C-ESPI: the cases of
/// [`ESPI_CASES`] in windows 0..9, then measured.
fn fleet(root: &Path) -> ExportConfig {
    meter(root, "m-est", 1, |i| {
        if i < 24 {
            "estimated,gap,method_history"
        } else {
            ""
        }
    });
    meter(root, "m-int", 1_000, |_| "interpolated");
    meter(root, "m-espi", 2_000, |i| {
        ESPI_CASES.get(i).map_or("", |c| c.0)
    });
    let registry = [
        customer("C-EST", "m-est"),
        customer("C-INT", "m-int"),
        customer("C-ESPI", "m-espi"),
    ]
    .concat();
    config(root, &registry, TARIFFS)
}

/// The statement line of `customer` as (quality, edited_share).
fn shares(csv: &str, customer: &str) -> (String, String) {
    let ids = csv_column(csv, "customer_id");
    let i = ids.iter().position(|c| c == customer).unwrap();
    (
        csv_column(csv, "quality")[i].clone(),
        csv_column(csv, "edited_share")[i].clone(),
    )
}

#[test]
fn estimated_and_edited_shares_count_their_flags_only() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fleet(dir.path());
    let s = run(&cfg, day()).unwrap();
    assert!(s.held.is_empty(), "no hold rule: {:?}", s.held);
    let out = s.run_dir.unwrap();
    let csv = read(&out.join("statement_lines.csv"));
    // 24 × 100 of 96 × 100 Wh: exactly 0.25; nothing edited.
    assert_eq!(shares(&csv, "C-EST"), ("0.2500".into(), "0.0000".into()));
    // Interpolated boundaries are no estimate.
    assert_eq!(shares(&csv, "C-INT"), ("0.0000".into(), "0.0000".into()));
    // Windows 0, 1, 2, 3, 5, 6 estimated (600 of 9,600 Wh = 0.0625); 4 and 5 edited (200 of
    // 9,600 = 0.02083… -> 0.0208).
    assert_eq!(shares(&csv, "C-ESPI"), ("0.0625".into(), "0.0208".into()));
    let inv = invoice(&out, "C-EST");
    assert_eq!(inv["meters"][0]["estimated_share"], "0.2500");
    assert_eq!(inv["meters"][0]["edited_share"], "0.0000");
    assert_eq!(inv["lines"][0]["quality"], "0.2500");
    assert_eq!(inv["lines"][0]["edited_share"], "0.0000");
    let inv = invoice(&out, "C-ESPI");
    assert_eq!(inv["meters"][0]["edited_share"], "0.0208");
    assert_eq!(inv["lines"][0]["edited_share"], "0.0208");
    let html = read(&out.join("invoices/C-ESPI.html"));
    assert!(html.contains("energy *"), "estimated mark");
    assert!(html.contains("&dagger;"), "edited mark");
    assert!(html.contains("2.08 %"), "edited share in the meter table");
    // The open-end and edited windows, with the estimated ones adjoining them (windows 0 to
    // 6), are left out of the raw comparison on both sides (the readings here agree with
    // them, so it stays ok), and the message says so.
    let recon = read(&out.join("reconciliation.csv"));
    assert!(
        recon.contains("m-espi,energy_import,counter,Wh,1.000000000,9600.000000000,9600.000000000,9600.000000000,ok,compared without 7 edited/open-end windows and their estimated neighbours (usage 700; raw 700)"),
        "{recon}"
    );
    // Parquet carries the same column.
    let o = std::process::Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/csv_equals_parquet.py"))
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn a_quarter_estimated_is_held_at_a_20_percent_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fleet(dir.path());
    cfg.hold = HoldRules {
        max_estimated_share: Some(d("0.20")),
        exception_severity: None,
    };
    let s = run(&cfg, day()).unwrap();
    let out = s.run_dir.clone().unwrap();
    assert_eq!(
        s.held_customers().into_iter().collect::<Vec<_>>(),
        ["C-EST"]
    );
    let reasons = read(&out.join("exceptions.csv"));
    assert_eq!(csv_column(&reasons, "device_id"), ["m-est"]);
    assert!(csv_column(&reasons, "reason")[0].starts_with("hold rule max_estimated_share: 25.00 % of the billed energy is estimated (2400 of 9600 Wh), above the limit of 20.00 %; this channel has 2400 estimated Wh in 24 windows from 2026-10-01T00:00:00Z to 2026-10-01T06:00:00Z"), "{reasons}");
    assert!(!out.join("invoices/C-EST.json").exists());
    assert!(out.join("invoices/C-INT.json").exists());
    assert!(out.join("invoices/C-ESPI.json").exists());
    let csv = read(&out.join("statement_lines.csv"));
    assert!(!csv_column(&csv, "customer_id").contains(&"C-EST".to_string()));
    let metrics = read(&dir.path().join("exports/metrics.prom"));
    for want in [
        "gridmeter_billing_held_bills_total{reason=\"estimated_share\"} 1",
        "gridmeter_billing_held_bills_total{reason=\"open_exception\"} 0",
        "gridmeter_billing_held_bills_total{reason=\"data\"} 0",
    ] {
        assert!(metrics.contains(want), "{want} in {metrics}");
    }
    // Without the rule (a fresh output directory) the same data is billed.
    let out2 = tempfile::tempdir().unwrap();
    cfg.hold = HoldRules::default();
    cfg.out_dir = out2.path().to_path_buf();
    let s = run(&cfg, day()).unwrap();
    assert!(s.held.is_empty());
    assert!(s.run_dir.unwrap().join("invoices/C-EST.json").exists());
}

#[test]
fn green_button_quality_code_per_interval() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fleet(dir.path());
    let out = run(&cfg, day()).unwrap().run_dir.unwrap();
    let feed = out.join("espi/C-ESPI.xml");
    let xml = read(&feed);
    let codes: Vec<Option<String>> = xml
        .split("<espi:IntervalReading>")
        .skip(1)
        .map(|r| {
            let r = &r[..r.find("</espi:IntervalReading>").unwrap()];
            r.split_once("<espi:quality>")
                .map(|(_, q)| q[..q.find('<').unwrap()].to_string())
        })
        .collect();
    assert_eq!(codes.len(), 96);
    for (i, (flags, want)) in ESPI_CASES.iter().enumerate() {
        assert_eq!(codes[i].as_deref(), *want, "window {i} flagged {flags:?}");
    }
    assert!(codes[ESPI_CASES.len()..].iter().all(Option::is_none));
    // The whole-bill summary says "mixed" (some usage estimated).
    assert!(xml.contains("<espi:qualityOfReading>13</espi:qualityOfReading>"));
    let interpolated = read(&out.join("espi/C-INT.xml"));
    assert!(!interpolated.contains("<espi:ReadingQuality>"));
    assert!(interpolated.contains("<espi:qualityOfReading>17</espi:qualityOfReading>"));
    validate_espi(&[feed, out.join("espi/C-INT.xml")]);
}

#[test]
fn open_exceptions_hold_until_the_window_is_revised_or_edited() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // m-x: revision 2 of windows 10 and 20 (late data), everything else revision 1.
    let (raw, mut usage) = counter("m-x", "energy_import", "Wh", t(START), &[d("100"); 96], 1);
    for i in [10, 20] {
        usage[i].revision = 2;
        usage[i].flags = "late".into();
    }
    write_usage(root, "m-x-1", &usage);
    write_raw(root, "2026-10-01", "m-x-raw", &raw);
    write_exceptions(
        root,
        "run-1",
        vec![
            // Found in the current revision: open.
            exception_row("m-x", at(10), "spike", "critical", 2),
            // Found in revision 1, the window is at revision 2 now: not open.
            exception_row("m-x", at(20), "high_limit", "critical", 1),
            // Open, but only a warning.
            exception_row("m-x", at(30), "negative", "warning", 1),
            // Another device's window: not this customer's.
            exception_row("m-other", at(10), "spike", "critical", 1),
            // The next day, outside the billed range.
            exception_row("m-x", at(96), "spike", "critical", 1),
        ],
    );
    let mut cfg = config(root, &customer("C-X", "m-x"), TARIFFS);
    cfg.hold.exception_severity = Some("critical".into());
    let s = run(&cfg, day()).unwrap();
    let reasons: Vec<&str> = s.held.iter().map(|e| e.reason.as_str()).collect();
    assert_eq!(
        reasons,
        ["hold rule exception_severity: open \"critical\" exception \"spike\" on window 2026-10-01T02:30:00Z to 2026-10-01T02:45:00Z (observed 2500, threshold 1000, action \"flag\", usage revision 2); 1 open window(s) of this rule up to 2026-10-01T02:45:00Z"]
    );
    assert_eq!(s.held[0].device_id, "m-x");
    assert_eq!(s.held[0].channel, "energy_import");
    let out = s.run_dir.unwrap();
    assert!(read(&out.join("exceptions.csv")).contains("spike"));
    assert!(!out.join("invoices/C-X.json").exists());
    let metrics = read(&root.join("exports/metrics.prom"));
    assert!(metrics.contains("gridmeter_billing_held_bills_total{reason=\"open_exception\"} 1"));
    // At warning and above the negative window is open too: one reason per rule.
    cfg.hold.exception_severity = Some("warning".into());
    let s = run(&cfg, day()).unwrap();
    assert_eq!(s.held.len(), 2, "{:?}", s.held);
    assert!(s.held[0].reason.contains("\"negative\""));
    assert!(s.held[1].reason.contains("\"spike\""));
    // The billing team edits window 10: revision 3, flagged edited; the aggregator validates
    // it again and records the same failure with revision 3. An edit resolves it.
    cfg.hold.exception_severity = Some("critical".into());
    let mut edited = usage[10].clone();
    edited.revision = 3;
    edited.flags = "edited,late".into();
    edited.usage = Some(d("150"));
    write_usage(root, "m-x-2", &[edited]);
    write_exceptions(
        root,
        "run-2",
        vec![exception_row("m-x", at(10), "spike", "critical", 3)],
    );
    let s = run(&cfg, day()).unwrap();
    assert!(s.held.is_empty(), "{:?}", s.held);
    let out = s.run_dir.unwrap();
    let inv = invoice(&out, "C-X");
    // 95 × 100 + 150 Wh = 9.65 kWh × 0.30 = 2.895 -> 2.90 (half-even); edited 150 of 9,650.
    assert_eq!(inv["lines"][0]["quantity"], "9.650000000");
    assert_eq!(inv["total"], "2.90");
    assert_eq!(inv["meters"][0]["edited_share"], "0.0155");
    // The edited window is left out of the raw comparison: 9,500 = 9,500.
    let recon = read(&out.join("reconciliation.csv"));
    assert!(recon.contains(",ok,compared without 1 edited/open-end windows and their estimated neighbours (usage 150; raw 100)"), "{recon}");
}
