//! The invoice a utility invoice carries: numbers unique and sequential per issuer across
//! periods and runs, issue and due dates per customer in its time zone, the billing period in
//! local dates, register readings per meter from the reconciliation, the estimated share, and
//! a printable HTML whose rendered text (headless Chromium -> PDF -> pdftotext) shows the
//! numbers of the JSON.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};
use common::*;
use gridmeter_billing::{run, Period};
use rust_decimal::Decimal;
use serde_json::Value;

const REGISTRY: &str = r#"
default_register_max = "999999999"

[[issuers]]
id = "GME"
name = "Gridmeter Energie GmbH"
address = ["Hauptstr. 1", "10115 Berlin"]
tax_id = "DE123456789"
invoice_prefix = "GME-2026-"
number_width = 5
first_invoice_number = 1000
payment_terms_days = 14

[[issuers]]
id = "GMC"
name = "Gridmeter Compute Inc."
address = ["1 Liberty Plaza", "New York, NY 10006"]
invoice_prefix = "GMC-"
payment_terms_days = 10

[[customers]]
id = "C-0001"
name = "Anna Schmidt"
address = ["Lindenstr. 5", "10969 Berlin"]
issuer = "GME"
tariff = "household"
currency = "EUR"
tax_rate = "0.19"
time_zone = "Europe/Berlin"

[[customers]]
id = "C-0171"
name = "Edge server 0171"
address = ["Rack 12, 111 8th Ave", "New York, NY 10011"]
issuer = "GMC"
payment_terms_days = 30
tariff = "edge"
currency = "USD"
tax_rate = "0.08875"
time_zone = "America/New_York"

[[sites]]
id = "S-0001"
customer = "C-0001"
name = "Lindenstr. 5"

[[sites]]
id = "S-0171"
customer = "C-0171"

[[devices]]
id = "meter-0001"
site = "S-0001"
channels = { energy_import = { quantity = "import_energy" } }

[[devices]]
id = "edge-0171"
site = "S-0171"
"#;

const TARIFFS: &str = r#"
[tariffs.household]
[[tariffs.household.components]]
type = "time_of_use"
name = "energy"
quantity = "import_energy"
unit = "kWh"
default_period = "offpeak"
periods = [ { name = "peak", rate = "0.40" }, { name = "offpeak", rate = "0.20" } ]
rules = [ { period = "peak", days = ["mon", "tue", "wed", "thu", "fri"], from_hour = 7, to_hour = 21 } ]
[[tariffs.household.components]]
type = "fixed"
name = "standing_charge"
monthly = "12.40"

[tariffs.edge]
components = [
  { type = "flat", name = "cpu", quantity = "cpu", unit = "h", rate = "0.05" },
  { type = "flat", name = "network", quantity = "network", unit = "GB", rate = "0.09" },
  { type = "flat", name = "requests", quantity = "requests", unit = "Mrequests", rate = "0.40" },
  { type = "flat", name = "memory", quantity = "memory", unit = "GBh", rate = "0.01" },
]
"#;

/// `total` spread over `n` intervals as integers: the remainder goes to the first one.
fn spread(total: i64, n: usize) -> Vec<Decimal> {
    let each = total / n as i64;
    let mut v = vec![Decimal::from(each); n];
    v[0] += Decimal::from(total - each * n as i64);
    v
}

fn intervals(from: DateTime<Utc>, to: DateTime<Utc>) -> usize {
    ((to - from).num_minutes() / 15) as usize
}

/// October 2026 for both customers, with readings at every 15-minute boundary.
///
/// Household (Berlin, 2026-09-30T22:00Z .. 2026-10-31T23:00Z, 745 h with the DST change =
/// 2,980 intervals): 100 Wh each; the 96 intervals of local 2026-10-12 are estimated.
/// Edge (New York, 2026-10-01T04:00Z .. 2026-11-01T04:00Z, 744 h = 2,976 intervals):
/// 900 CPU-seconds each (744 h × 0.05 = 37.20), 500 GB received (45.00), 23.6 M requests
/// (9.44) and a 4 GB memory average (2,976 GBh × 0.01 = 29.76): net 121.40.
fn october(root: &Path) {
    let (hs, he) = (t("2026-09-30T22:00:00Z"), t("2026-10-31T23:00:00Z"));
    let n = intervals(hs, he);
    assert_eq!(n, 2980);
    let (raw, mut usage) = counter(
        "meter-0001",
        "energy_import",
        "Wh",
        hs,
        &vec![d("100"); n],
        1,
    );
    let est_from = t("2026-10-11T22:00:00Z");
    for u in usage.iter_mut() {
        if u.start >= est_from && u.start < est_from + Duration::days(1) {
            u.flags = "estimated".into();
        }
    }
    write_raw(root, "2026-10-01", "household", &raw);
    let (es, ee) = (t("2026-10-01T04:00:00Z"), t("2026-11-01T04:00:00Z"));
    let m = intervals(es, ee);
    assert_eq!(m, 2976);
    let mut edge_raw = Vec::new();
    for (i, (channel, unit, per)) in [
        ("cpu_seconds", "s", vec![d("900"); m]),
        ("net_rx_bytes", "B", spread(500_000_000_000, m)),
        ("http_requests", "1", spread(23_600_000, m)),
    ]
    .into_iter()
    .enumerate()
    {
        let (r, u) = counter("edge-0171", channel, unit, es, &per, 1 + 10_000 * i as u64);
        edge_raw.extend(r);
        usage.extend(u);
    }
    usage.extend(gauge(
        "edge-0171",
        "memory_bytes",
        "bytes",
        es,
        &vec![d("4000000000"); m],
    ));
    write_raw(root, "2026-10-02", "edge", &edge_raw);
    write_usage(root, "commit-0001", &usage);
}

fn october_run(root: &Path) -> PathBuf {
    october(root);
    let cfg = config(root, REGISTRY, TARIFFS);
    run(&cfg, "2026-10".parse::<Period>().unwrap())
        .unwrap()
        .run_dir
        .unwrap()
}

#[test]
fn invoices_carry_numbers_dates_and_meter_readings() {
    let dir = tempfile::tempdir().unwrap();
    let out = october_run(dir.path());
    let hh = invoice(&out, "C-0001");
    // Number: the issuer's prefix, its first number, 5 digits.
    assert_eq!(hh["invoice_number"], "GME-2026-01000");
    assert_eq!(hh["issuer"]["name"], "Gridmeter Energie GmbH");
    assert_eq!(hh["customer_address"][1], "10969 Berlin");
    // Berlin's October ends 2026-10-31T23:00Z = local 2026-11-01 00:00; 14 days' terms.
    assert_eq!(hh["issued"], "2026-10-31T23:00:00Z");
    assert_eq!(hh["issue_date"], "2026-11-01");
    assert_eq!(hh["due_date"], "2026-11-15");
    assert_eq!(hh["billing_period"]["first_day"], "2026-10-01");
    assert_eq!(hh["billing_period"]["last_day"], "2026-10-31");
    // 22 weekdays × 56 peak intervals = 1,232 × 100 Wh = 123.2 kWh × 0.40 = 49.28; offpeak
    // 1,748 intervals = 174.8 kWh × 0.20 = 34.96; standing charge 12.40: net 96.64, VAT 19 %
    // 18.3616 -> 18.36, total 115.00.
    assert_eq!(hh["net_total"], "96.64");
    assert_eq!(hh["taxes"][0]["rate"], "0.19");
    assert_eq!(hh["total"], "115.00");
    // The register from the raw readings: 1000 at the start, + 2,980 × 100 Wh at the end.
    let meter = &hh["meters"][0];
    assert_eq!(meter["device_id"], "meter-0001");
    assert_eq!(meter["start"]["value"], "1000.000000000");
    assert_eq!(meter["start"]["method"], "actual");
    assert_eq!(meter["start"]["at_local"], "2026-10-01T00:00:00+02:00");
    assert_eq!(meter["end"]["value"], "299000.000000000");
    assert_eq!(meter["end"]["at_local"], "2026-11-01T00:00:00+01:00");
    assert_eq!(meter["register_difference"], "298000.000000000");
    assert_eq!(meter["billed_usage"], "298000.000000000");
    // 96 of 2,980 equal intervals estimated: 0.032214... -> 0.0322.
    assert_eq!(meter["estimated_share"], "0.0322");

    let edge = invoice(&out, "C-0171");
    assert_eq!(edge["invoice_number"], "GMC-000001");
    // New York's October ends 2026-11-01T04:00Z = local midnight; the customer's own 30 days.
    assert_eq!(edge["issued"], "2026-11-01T04:00:00Z");
    assert_eq!(edge["issue_date"], "2026-11-01");
    assert_eq!(edge["due_date"], "2026-12-01");
    assert_eq!(edge["payment_terms_days"], 30);
    assert_eq!(edge["net_total"], "121.40");
    // Three counters on the meter table (the memory gauge has no register).
    let channels: Vec<&str> = edge["meters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["channel"].as_str().unwrap())
        .collect();
    assert_eq!(channels, ["cpu_seconds", "http_requests", "net_rx_bytes"]);
    assert_eq!(
        edge["meters"][0]["register_difference"],
        "2678400.000000000"
    );

    // The run's record of the numbers it issued.
    let rec: Value = serde_json::from_str(&read(&out.join("invoice_numbers.json"))).unwrap();
    assert_eq!(rec["issuers"][0]["issuer"], "GME");
    assert_eq!(rec["issuers"][0]["first"], 1000);
    assert_eq!(rec["invoices"][1]["invoice_number"], "GMC-000001");
    assert_eq!(rec["invoices"][1]["total"], edge["total"]);
}

/// The 0.08875 rate is shown exactly everywhere it appears, and reproduces the tax to the
/// cent: 121.40 × 0.08875 = 10.77425 -> 10.77 (with the 4-place 0.0888 it would be 10.78).
#[test]
fn the_shown_tax_rate_reproduces_the_tax() {
    let dir = tempfile::tempdir().unwrap();
    let out = october_run(dir.path());
    let edge = invoice(&out, "C-0171");
    let tax = &edge["taxes"][0];
    assert_eq!(tax["rate"], "0.08875");
    assert_eq!(tax["base"], "121.40");
    assert_eq!(tax["amount"], "10.77");
    assert_eq!(edge["total"], "132.17");
    for l in edge["lines"].as_array().unwrap() {
        assert_eq!(l["tax_rate"], "0.08875");
    }
    let shown = Decimal::from_str(tax["rate"].as_str().unwrap()).unwrap();
    let base = Decimal::from_str(tax["base"].as_str().unwrap()).unwrap();
    assert_eq!(
        (base * shown)
            .round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointNearestEven),
        Decimal::from_str("10.77").unwrap()
    );
    // The statement CSV: band = the exact rate, rate and tax_rate with 9 places.
    let csv = read(&out.join("statement_lines.csv"));
    let tax_row = csv
        .lines()
        .find(|l| l.contains(",C-0171,") && l.contains(",tax,"))
        .unwrap();
    assert!(
        tax_row.contains(",tax,0.08875,2026-10,")
            && tax_row.contains(",121.400000000,USD,0.088750000,10.77,USD,0.088750000,"),
        "{tax_row}"
    );
    // The HTML shows 8.875 %.
    assert!(read(&out.join("invoices/C-0171.html")).contains("Tax 8.875 % on 121.40 USD"));
}

#[test]
fn issue_dates_follow_each_customers_time_zone() {
    let dir = tempfile::tempdir().unwrap();
    october(dir.path());
    let mut cfg = config(dir.path(), REGISTRY, TARIFFS);
    // 02:00Z is 03:00 on Nov 1 in Berlin but 22:00 on Oct 31 in New York.
    cfg.as_of = Some(t("2026-11-01T02:00:00Z"));
    let out = run(&cfg, "2026-10".parse().unwrap())
        .unwrap()
        .run_dir
        .unwrap();
    let (hh, edge) = (invoice(&out, "C-0001"), invoice(&out, "C-0171"));
    assert_eq!(hh["issued"], "2026-11-01T02:00:00Z");
    assert_eq!(
        (&hh["issue_date"], &hh["due_date"]),
        (&"2026-11-01".into(), &"2026-11-15".into())
    );
    assert_eq!(edge["issue_date"], "2026-10-31");
    assert_eq!(edge["due_date"], "2026-11-30");
}

/// Numbers continue across periods and runs per issuer; an adjustment gets its own number and
/// names the invoice it corrects; a run that writes nothing uses none.
#[test]
fn numbers_are_sequential_per_issuer_across_periods_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    october(root);
    // November for the household only (the edge server has no November data).
    let (ns, ne) = (t("2026-10-31T23:00:00Z"), t("2026-11-30T23:00:00Z"));
    let n = intervals(ns, ne);
    let (mut raw, usage) = counter(
        "meter-0001",
        "energy_import",
        "Wh",
        ns,
        &vec![d("50"); n],
        100_000,
    );
    // The register continues from October's last reading (299000 at the boundary).
    for r in raw.iter_mut() {
        r.value += d("298000");
    }
    write_raw(root, "2026-11-01", "household", &raw);
    write_usage(root, "commit-0002", &usage);
    let cfg = config(root, REGISTRY, TARIFFS);
    let number = |out: &Path, c: &str| {
        invoice(out, c)["invoice_number"]
            .as_str()
            .unwrap()
            .to_string()
    };

    let nov = run(&cfg, "2026-11".parse().unwrap())
        .unwrap()
        .run_dir
        .unwrap();
    assert_eq!(number(&nov, "C-0001"), "GME-2026-01000");
    let oct = run(&cfg, "2026-10".parse().unwrap())
        .unwrap()
        .run_dir
        .unwrap();
    assert_eq!(number(&oct, "C-0001"), "GME-2026-01001");
    assert_eq!(number(&oct, "C-0171"), "GMC-000001");
    // Nothing changed: nothing written, no number used.
    assert_eq!(run(&cfg, "2026-10".parse().unwrap()).unwrap().run, None);
    // A late revision of one October window: an adjustment invoice with the next number.
    let late = UsageRow {
        device: "meter-0001".into(),
        channel: "energy_import".into(),
        kind: "counter".into(),
        unit: "Wh".into(),
        start: t("2026-10-05T10:00:00Z"),
        usage: Some(d("100")),
        avg: None,
        flags: String::new(),
        revision: 2,
    };
    write_usage(root, "commit-0003", &[late]);
    let s = run(&cfg, "2026-10".parse().unwrap()).unwrap();
    // Same usage, same amounts: only the revision changed, so nothing is adjusted.
    assert_eq!(s.run, None);
    // 60 Wh move from the last peak interval of Monday 2026-10-05 (20:45 local) to the first
    // offpeak one (21:00): peak 123.14 kWh -> 49.26 (-0.02), offpeak 174.86 kWh -> 34.97
    // (+0.01).
    write_usage(
        root,
        "commit-0004",
        &[
            late_row("2026-10-05T18:45:00Z", "40", 3),
            late_row("2026-10-05T19:00:00Z", "160", 3),
        ],
    );
    // The raw readings must agree: rewrite the household's raw file with the moved reading.
    let (hs, he) = (t("2026-09-30T22:00:00Z"), t("2026-10-31T23:00:00Z"));
    let mut per = vec![d("100"); intervals(hs, he)];
    let i = intervals(hs, t("2026-10-05T18:45:00Z"));
    per[i] = d("40");
    per[i + 1] = d("160");
    let (raw, _) = counter("meter-0001", "energy_import", "Wh", hs, &per, 1);
    write_raw(root, "2026-10-01", "household", &raw);
    let adj = run(&cfg, "2026-10".parse().unwrap()).unwrap();
    assert_eq!(adj.run.as_deref(), Some("run-0002"), "{:?}", adj.held);
    let adj = adj.run_dir.unwrap();
    let inv = invoice(&adj, "C-0001");
    assert_eq!(inv["document"], "adjustment");
    assert_eq!(inv["invoice_number"], "GME-2026-01002");
    assert_eq!(inv["corrects"], serde_json::json!(["GME-2026-01001"]));
    // -0.02 + 0.01 = -0.01 net; VAT on -0.01 = -0.0019 -> -0.00.
    assert_eq!(inv["net_total"], "-0.01");
    assert_eq!(inv["total"], "-0.01");
    assert!(!adj.join("invoices/C-0171.json").exists());
    // Every number issued so far, once.
    let mut all: Vec<String> = Vec::new();
    for run_dir in [&nov, &oct, &adj] {
        let rec: Value =
            serde_json::from_str(&read(&run_dir.join("invoice_numbers.json"))).unwrap();
        for i in rec["invoices"].as_array().unwrap() {
            all.push(i["invoice_number"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(
        all,
        [
            "GME-2026-01000",
            "GME-2026-01001",
            "GMC-000001",
            "GME-2026-01002"
        ]
    );
}

fn late_row(start: &str, usage: &str, revision: i64) -> UsageRow {
    UsageRow {
        device: "meter-0001".into(),
        channel: "energy_import".into(),
        kind: "counter".into(),
        unit: "Wh".into(),
        start: t(start),
        usage: Some(d(usage)),
        avg: None,
        flags: "late".into(),
        revision,
    }
}

// ---------------------------------------------------------------------------------------
// The printed invoice: headless Chromium renders the HTML to PDF, pdftotext extracts the text
// a reader sees, and every number of the JSON is on the page where it belongs.
// ---------------------------------------------------------------------------------------

/// Chromium (`CHROMIUM`, else `chromium`, `chromium-browser`, `google-chrome` on PATH) and
/// pdftotext, or `None` with a loud message. CI (`CI` or `GRIDMETER_REQUIRE_CHROMIUM` set)
/// installs both (.ci/run), so there a missing one fails the test instead.
fn render_tools() -> Option<(PathBuf, PathBuf)> {
    let on_path = |name: &str| -> Option<PathBuf> {
        let p = PathBuf::from(name);
        if p.is_absolute() {
            return p.exists().then_some(p);
        }
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
    };
    let chromium = std::env::var("CHROMIUM")
        .ok()
        .and_then(|c| on_path(&c))
        .or_else(|| {
            ["chromium", "chromium-browser", "google-chrome"]
                .iter()
                .find_map(|n| on_path(n))
        });
    let pdftotext = on_path("pdftotext");
    match (chromium, pdftotext) {
        (Some(c), Some(p)) => Some((c, p)),
        (c, p) => {
            let missing = [("chromium", c.is_none()), ("pdftotext", p.is_none())]
                .iter()
                .filter(|x| x.1)
                .map(|x| x.0)
                .collect::<Vec<_>>()
                .join(" and ");
            let required = std::env::var_os("CI").is_some()
                || std::env::var_os("GRIDMETER_REQUIRE_CHROMIUM").is_some();
            assert!(
                !required,
                "{missing} not found, but CI must render the invoices (apt-get install chromium poppler-utils fonts-dejavu-core)"
            );
            eprintln!(
                "\n*** SKIPPED: {missing} not found: the rendered invoices are NOT checked. \
                 apt-get install chromium poppler-utils fonts-dejavu-core ***\n"
            );
            None
        }
    }
}

/// Runs headless Chromium on `html` with a fresh profile; `output` is e.g.
/// `--print-to-pdf=<file>` or `--screenshot=<file>`.
fn chromium(bin: &Path, html: &Path, output: &[String]) {
    let profile = tempfile::tempdir().unwrap();
    let o = Command::new("timeout")
        .arg("120")
        .arg(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(output)
        .arg(format!("file://{}", html.display()))
        .output()
        .expect("running chromium");
    assert!(
        o.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The invoice printed to PDF: its text (pdftotext -layout) and page count.
fn printed(tools: &(PathBuf, PathBuf), html: &Path) -> (String, usize) {
    let dir = tempfile::tempdir().unwrap();
    let pdf = dir.path().join("invoice.pdf");
    chromium(
        &tools.0,
        html,
        &[
            "--no-pdf-header-footer".into(),
            format!("--print-to-pdf={}", pdf.display()),
        ],
    );
    let o = Command::new(&tools.1)
        .arg("-layout")
        .arg(&pdf)
        .arg("-")
        .output()
        .expect("running pdftotext");
    assert!(o.status.success(), "pdftotext failed");
    let text = String::from_utf8(o.stdout).unwrap();
    let pages = text.matches('\u{c}').count().max(1);
    (text, pages)
}

/// The decimal numbers among the whitespace-separated words of a line.
fn numbers(line: &str) -> Vec<Decimal> {
    line.split_whitespace()
        .filter_map(|w| Decimal::from_str(w).ok())
        .collect()
}

fn dec(v: &Value) -> Decimal {
    Decimal::from_str(v.as_str().unwrap_or_else(|| panic!("{v} is not a string"))).unwrap()
}

/// Checks the printed text of `inv` against the JSON, line by line.
fn check_printed(text: &str, inv: &Value) {
    let lines: Vec<&str> = text.lines().collect();
    let find = |from: usize, pred: &dyn Fn(&str) -> bool, what: &str| -> usize {
        (from..lines.len())
            .find(|&i| pred(lines[i]))
            .unwrap_or_else(|| panic!("{what} not found in the printed invoice:\n{text}"))
    };
    let s = |k: &str| inv[k].as_str().unwrap().to_string();
    for (label, value) in [
        ("Invoice number", s("invoice_number")),
        ("Issue date", s("issue_date")),
        ("Due date", s("due_date")),
        ("Customer number", s("customer_id")),
    ] {
        let i = find(0, &|l| l.contains(label), label);
        assert!(
            lines[i].contains(&value),
            "{label}: {value} not in {:?}",
            lines[i]
        );
    }
    let period = format!(
        "{} to {}",
        inv["billing_period"]["first_day"].as_str().unwrap(),
        inv["billing_period"]["last_day"].as_str().unwrap()
    );
    find(
        0,
        &|l| l.contains("Billing period") && l.contains(&period),
        "billing period",
    );
    find(
        0,
        &|l| l.contains(inv["customer_name"].as_str().unwrap()),
        "customer name",
    );
    // Meter readings: start, end, consumption, factor, billed usage, estimated %, edited %.
    let mut at = find(
        0,
        &|l| l.trim_start().starts_with("Meter readings"),
        "meter table",
    );
    for m in inv["meters"].as_array().unwrap() {
        let device = m["device_id"].as_str().unwrap();
        at = find(at + 1, &|l| l.trim_start().starts_with(device), device);
        let want = vec![
            dec(&m["start"]["value"]),
            dec(&m["end"]["value"]),
            dec(&m["register_difference"]),
            dec(&m["multiplier"]),
            dec(&m["billed_usage"]),
            dec(&m["estimated_share"]) * Decimal::ONE_HUNDRED,
            dec(&m["edited_share"]) * Decimal::ONE_HUNDRED,
        ];
        assert_eq!(numbers(lines[at]), want, "meter row {:?}", lines[at]);
    }
    // Charges: position, quantity, rate, amount.
    let mut at = find(at, &|l| l.trim_start().starts_with("Charges"), "charges");
    for (i, l) in inv["lines"].as_array().unwrap().iter().enumerate() {
        let pos = (i + 1).to_string();
        at = find(
            at + 1,
            &|t| t.split_whitespace().next() == Some(pos.as_str()),
            &format!("charge {pos}"),
        );
        assert!(
            lines[at].contains(l["component"].as_str().unwrap()),
            "{:?}",
            lines[at]
        );
        let want = vec![
            Decimal::from(i + 1),
            dec(&l["quantity"]),
            dec(&l["rate"]),
            dec(&l["amount"]),
        ];
        assert_eq!(numbers(lines[at]), want, "charge row {:?}", lines[at]);
    }
    for st in inv["subtotals"].as_array().unwrap() {
        let label = format!("Subtotal site {}", st["site_id"].as_str().unwrap());
        let i = find(at, &|l| l.contains(&label), &label);
        assert_eq!(numbers(lines[i]), [dec(&st["amount"])], "{:?}", lines[i]);
    }
    let i = find(at, &|l| l.contains("Net total"), "net total");
    assert_eq!(
        numbers(lines[i]),
        [dec(&inv["net_total"])],
        "{:?}",
        lines[i]
    );
    for tax in inv["taxes"].as_array().unwrap() {
        let pct = dec(&tax["rate"]) * Decimal::ONE_HUNDRED;
        let i = find(
            at,
            &|l| l.trim_start().starts_with("Tax ") && numbers(l).first() == Some(&pct),
            "tax row",
        );
        assert_eq!(
            numbers(lines[i]),
            [pct, dec(&tax["base"]), dec(&tax["amount"])],
            "{:?}",
            lines[i]
        );
    }
    let i = find(at, &|l| l.trim_start().starts_with("Total "), "total");
    assert_eq!(numbers(lines[i]), [dec(&inv["total"])], "{:?}", lines[i]);
    let pay = format!("Please pay {} {}", s("total"), s("currency"));
    let i = find(at, &|l| l.contains(&pay), "payment line");
    assert!(lines[i].contains(&s("due_date")), "{:?}", lines[i]);
}

#[test]
fn printed_invoices_show_the_numbers_of_the_json() {
    let Some(tools) = render_tools() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = october_run(dir.path());
    for customer in ["C-0001", "C-0171"] {
        let inv = invoice(&out, customer);
        let html = out.join(format!("invoices/{customer}.html"));
        let (text, pages) = printed(&tools, &html);
        check_printed(&text, &inv);
        assert_eq!(
            pages, 1,
            "{customer}: the invoice fits one A4 page:\n{text}"
        );
    }
    // GRIDMETER_INVOICE_PICTURE=<file.png> regenerates the README's picture.
    if let Some(png) = std::env::var_os("GRIDMETER_INVOICE_PICTURE") {
        chromium(
            &tools.0,
            &out.join("invoices/C-0001.html"),
            &[
                "--hide-scrollbars".into(),
                "--window-size=794,680".into(),
                format!("--screenshot={}", PathBuf::from(png).display()),
            ],
        );
    }
}
