//! Green Button feeds against the official ESPI 3.3 schemas (xmllint, `tests/espi_schema.py`)
//! and the conventions a Green Button consumer relies on: stable ids across periods, one
//! meaning per ReadingType href, the DST day, the bill summary.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use chrono::NaiveDate;
use common::*;
use gridmeter_billing::{run, Period};

const REGISTRY: &str = r#"
[[customers]]
id = "C-BER"
tariff = "pv"
currency = "EUR"
tax_rate = "0.19"
time_zone = "Europe/Berlin"

[[customers]]
id = "C-NYC"
tariff = "pv"
currency = "USD"
tax_rate = "0.08875"
time_zone = "America/New_York"

[[sites]]
id = "S-BER"
customer = "C-BER"

[[sites]]
id = "S-NYC"
customer = "C-NYC"

[[devices]]
id = "ber-meter"
site = "S-BER"

[[devices]]
id = "nyc-meter"
site = "S-NYC"
multiplier = "2"
"#;

const TARIFFS: &str = r#"
[tariffs.pv]
components = [
  { type = "flat", name = "import", quantity = "import_energy", unit = "kWh", rate = "0.30" },
  { type = "flat", name = "export_credit", quantity = "export_energy", unit = "kWh", rate = "0.08", credit = true },
  { type = "fixed", name = "standing_charge", monthly = "9.30" },
]
"#;

fn range(a: &str, b: &str) -> Period {
    let p = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
    Period::range(p(a), p(b)).unwrap()
}

/// Import and export counters for both meters from 2026-10-23 to 2026-11-04 UTC: across the
/// Berlin (2026-10-25) and New York (2026-11-01) DST ends. Export values have a decimal.
fn data(root: &Path) {
    let start = t("2026-10-23T00:00:00Z");
    let n = 12 * 96;
    for (dev, seq) in [("ber-meter", 1u64), ("nyc-meter", 100_000)] {
        let imp: Vec<_> = (0..n).map(|i| d(&format!("{}", 20 + i % 7))).collect();
        let exp: Vec<_> = (0..n)
            .map(|i| {
                if i % 96 > 40 && i % 96 < 60 {
                    d("12.5")
                } else {
                    d("0")
                }
            })
            .collect();
        let (ri, ui) = counter(dev, "energy_import", "Wh", start, &imp, seq);
        let (re, ue) = counter(dev, "energy_export", "Wh", start, &exp, seq + 50_000);
        let mut raw = ri;
        raw.extend(re);
        let mut usage = ui;
        usage.extend(ue);
        // Raw readings in their daily partitions (the reconciliation reads the period's).
        let mut by_day: BTreeMap<String, Vec<RawRow>> = BTreeMap::new();
        for r in raw {
            by_day
                .entry(r.ts.format("%Y-%m-%d").to_string())
                .or_default()
                .push(r);
        }
        for (day, rows) in by_day {
            write_raw(root, &day, &format!("{dev}-0"), &rows);
        }
        write_usage(root, &format!("{dev}-0001"), &usage);
    }
}

fn validate(feeds: &[std::path::PathBuf]) -> String {
    validate_espi(feeds)
}

#[test]
fn feeds_validate_against_the_espi_schemas_with_stable_ids() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    data(root);
    let mut cfg = config(root, REGISTRY, TARIFFS);
    cfg.green_button_base_url = "https://meters.example.com/espi/1_1/resource".into();
    // Two periods: the DST weeks of Berlin and of New York.
    let a = run(&cfg, range("2026-10-24", "2026-10-28")).unwrap();
    let b = run(&cfg, range("2026-10-28", "2026-11-03")).unwrap();
    let mut feeds = Vec::new();
    for s in [&a, &b] {
        for c in ["C-BER", "C-NYC"] {
            feeds.push(s.run_dir.as_ref().unwrap().join(format!("espi/{c}.xml")));
        }
    }
    let out = validate(&feeds);
    assert!(out.contains("4 feed(s) valid"), "{out}");

    // Across periods, the same resource has the same id and href, and a ReadingType href
    // always means the same content.
    let mut by_href: BTreeMap<String, (String, String)> = BTreeMap::new();
    for f in &feeds {
        let xml = read(f);
        for entry in xml.split("<entry>").skip(1) {
            let self_href = entry
                .split("rel=\"self\"")
                .next()
                .and_then(|s| s.rsplit("href=\"").next())
                .and_then(|s| s.split('"').next())
                .unwrap()
                .to_string();
            let id = entry
                .split("<id>")
                .nth(1)
                .unwrap()
                .split("</id>")
                .next()
                .unwrap();
            let content = entry
                .split("<content>")
                .nth(1)
                .unwrap()
                .split("</content>")
                .next()
                .unwrap();
            let kind_is_rt = self_href.contains("/ReadingType/");
            let prev = by_href.insert(
                self_href.clone(),
                (
                    id.to_string(),
                    if kind_is_rt {
                        content.to_string()
                    } else {
                        String::new()
                    },
                ),
            );
            if let Some(p) = prev {
                assert_eq!(p.0, id, "{self_href}: id changed between feeds");
                assert_eq!(
                    p.1,
                    if kind_is_rt {
                        content.to_string()
                    } else {
                        String::new()
                    },
                    "{self_href}: one ReadingType href, two meanings"
                );
            }
        }
    }
    let up =
        "https://meters.example.com/espi/1_1/resource/RetailCustomer/C-BER/UsagePoint/ber-meter";
    assert!(
        by_href.contains_key(up),
        "{:?}",
        by_href.keys().collect::<Vec<_>>()
    );
    // Forward and reverse flow have different ReadingTypes (export has a decimal: e-1).
    assert!(by_href
        .keys()
        .any(|h| h.ends_with("/ReadingType/energy-delivered-15min-Wh-e0")));
    assert!(by_href
        .keys()
        .any(|h| h.ends_with("/ReadingType/energy-received-15min-Wh-e-1")));

    // Berlin: DST ends on Sunday 2026-10-25 (a 25-hour IntervalBlock), rules last Sundays.
    let ber = read(&a.run_dir.as_ref().unwrap().join("espi/C-BER.xml"));
    assert!(
        ber.contains("<espi:dstStartRule>3E0E2000</espi:dstStartRule>"),
        "{}",
        &ber[..3000]
    );
    assert!(ber.contains("<espi:dstEndRule>AE0E3000</espi:dstEndRule>"));
    assert!(ber.contains("<espi:interval><espi:duration>90000</espi:duration><espi:start>1792879200</espi:start></espi:interval>"));
    // The bill summary: total in hundred-thousandths of EUR (978), equal to the invoice.
    let inv = invoice(a.run_dir.as_ref().unwrap(), "C-BER");
    let total: rust_decimal::Decimal = inv["total"].as_str().unwrap().parse().unwrap();
    let want = format!(
        "<espi:billLastPeriod>{}</espi:billLastPeriod>",
        (total * rust_decimal::Decimal::from(100_000)).normalize()
    );
    assert!(ber.contains(&want), "{want} not in the feed");
    assert!(ber.contains("<espi:currency>978</espi:currency>"));
    let nyc = read(&b.run_dir.as_ref().unwrap().join("espi/C-NYC.xml"));
    assert!(nyc.contains("<espi:dstEndRule>B40E2000</espi:dstEndRule>"));
    assert!(nyc.contains("<espi:currency>840</espi:currency>"));
}

/// The checker is not a rubber stamp: a feed with a link without type, a wrong id, a wrong DST
/// rule or an invalid ESPI value fails, each for its own reason.
#[test]
fn the_schema_check_rejects_broken_feeds() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    data(root);
    let cfg = config(root, REGISTRY, TARIFFS);
    let s = run(&cfg, range("2026-10-24", "2026-10-28")).unwrap();
    let good = read(&s.run_dir.unwrap().join("espi/C-BER.xml"));
    let cases = [
        (
            good.replacen(" type=\"espi-entry/UsagePoint\"", "", 1),
            "atom.xsd",
        ),
        (
            good.replacen("<espi:kind>0</espi:kind>", "<espi:kind>zero</espi:kind>", 1),
            "usage.xsd",
        ),
        (good.replacen("3E0E2000", "3A0E2000", 1), "DST changes"),
        (
            good.replacen("<id>urn:uuid:", "<id>urn:uuid:0", 2),
            "is not urn:uuid",
        ),
    ];
    for (i, (xml, why)) in cases.iter().enumerate() {
        let p = dir.path().join(format!("broken-{i}.xml"));
        std::fs::write(&p, xml).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/espi_schema.py");
        let o = Command::new("python3")
            .arg(&script)
            .arg(&p)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(!o.status.success(), "case {i} passed:\n{out}");
        assert!(out.contains(why), "case {i}: {why} not in\n{out}");
    }
}
