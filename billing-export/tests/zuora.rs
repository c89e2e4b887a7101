//! `push --to zuora-file`: the usage import file in the layout of Zuora's usage file template
//! (checked by an independent reader, Python's csv, in `tests/receiver.py`), its checksums
//! (`sha256sum -c`), the upload to a local usage-import endpoint that fails once, no second
//! upload, and every missing mapping reported at once.

mod common;

use std::path::Path;
use std::process::Command;

use chrono::NaiveDate;
use common::*;
use gridmeter_billing::push::zuora::{ZuoraConfig, COLUMNS};
use gridmeter_billing::{push, run, Period, Target};
use rust_decimal::Decimal;

const REGISTRY: &str = r#"
[[customers]]
id = "C-1"
tariff = "tou"
currency = "USD"
tax_rate = "0.08875"
time_zone = "America/New_York"
zuora_account = "A00000001"
zuora_subscription = "A-S00000001"
zuora_charges = { "energy.peak" = "C-00000011", "energy" = "C-00000010" }

[[customers]]
id = "C-2"
tariff = "tou"
currency = "USD"
time_zone = "America/New_York"
zuora_account = "A00000002"
zuora_charges = { "energy" = "C-00000020" }

[[sites]]
id = "S-1"
customer = "C-1"

[[sites]]
id = "S-2"
customer = "C-2"

[[devices]]
id = "meter-1"
site = "S-1"

[[devices]]
id = "meter-2"
site = "S-2"
"#;

const TARIFFS: &str = r#"
[tariffs.tou]
[[tariffs.tou.components]]
type = "time_of_use"
name = "energy"
quantity = "import_energy"
unit = "kWh"
default_period = "offpeak"
periods = [ { name = "peak", rate = "0.40" }, { name = "offpeak", rate = "0.20" } ]
rules = [ { period = "peak", days = ["mon", "tue", "wed", "thu", "fri"], from_hour = 7, to_hour = 21 } ]
[[tariffs.tou.components]]
type = "fixed"
name = "standing_charge"
monthly = "12.40"
"#;

/// Monday 2026-03-02 in New York (UTC-5): 96 intervals per meter.
fn data(root: &Path) {
    let start = t("2026-03-02T05:00:00Z");
    let mut raw = Vec::new();
    let mut usage = Vec::new();
    for (i, dev) in ["meter-1", "meter-2"].into_iter().enumerate() {
        let per: Vec<Decimal> = (0..96)
            .map(|k| Decimal::from(50 + k % 5 + 10 * i as i64))
            .collect();
        let (r, u) = counter(dev, "energy_import", "Wh", start, &per, 1);
        raw.extend(r);
        usage.extend(u);
    }
    write_raw(
        root,
        "2026-03-02",
        "c1-0",
        &raw.iter()
            .filter(|r| r.ts < t("2026-03-03T00:00:00Z"))
            .cloned()
            .collect::<Vec<_>>(),
    );
    write_raw(
        root,
        "2026-03-03",
        "c1-0",
        &raw.iter()
            .filter(|r| r.ts >= t("2026-03-03T00:00:00Z"))
            .cloned()
            .collect::<Vec<_>>(),
    );
    write_usage(root, "commit-0001", &usage);
}

#[test]
fn the_usage_file_follows_the_template_and_is_uploaded_once() {
    // Zuora's documented usage file template columns.
    assert_eq!(
        COLUMNS,
        [
            "ACCOUNT_ID",
            "UOM",
            "QTY",
            "STARTDATE",
            "ENDDATE",
            "SUBSCRIPTION_ID",
            "CHARGE_ID",
            "DESCRIPTION"
        ]
    );
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    data(&root);
    let rx = Receiver::start(&dir.path().join("rx"), "zuora-token", 1);
    std::fs::write(dir.path().join("token"), "zuora-token").unwrap();
    std::fs::write(dir.path().join("hook-secret"), "zuora-token").unwrap();
    let mut cfg = config(&root, REGISTRY, TARIFFS);
    let mut z: ZuoraConfig = toml::from_str(&format!(
        "endpoint = \"{}/v1/usage\"\ntoken_file = \"{}\"\nuom = {{ kWh = \"KWH\" }}\n[retry]\ninitial_backoff = \"10ms\"\n",
        rx.base,
        dir.path().join("token").display()
    ))
    .unwrap();
    z.retry.max_attempts = 3;
    cfg.zuora = Some(z);
    cfg.webhooks = vec![toml::from_str(&format!(
        "url = \"{}/hooks\"\nsecret_file = \"{}\"\nevents = [\"push.completed\"]\n[retry]\ninitial_backoff = \"10ms\"\n",
        rx.base,
        dir.path().join("hook-secret").display()
    ))
    .unwrap()];
    let p = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
    let s = run(
        &cfg,
        Period::range(p("2026-03-02"), p("2026-03-03")).unwrap(),
    )
    .unwrap();
    let run_dir = s.run_dir.unwrap();
    let spec = "2026-03-02_2026-03-03/run-0001";

    let out = push(&cfg, spec, Target::ZuoraFile).unwrap();
    assert_eq!(out.files, ["usage-2026-03-02-2026-03-03-run-0001-01.csv"]);
    assert_eq!(out.created, 1);
    // Rows: C-1 peak + offpeak, C-2 peak + offpeak; no fixed charge, no tax.
    assert_eq!(out.done, 4);
    let uploads: Vec<serde_json::Value> = rx
        .requests()
        .into_iter()
        .filter(|r| r["path"] == "/v1/usage")
        .collect();
    assert_eq!(uploads.len(), 2, "one failure, then accepted: {uploads:?}");
    assert_eq!(uploads[0]["status"], 503);
    let ok = &uploads[1];
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["problems"], serde_json::json!([]), "{ok}");
    assert_eq!(ok["rows"], 4);
    assert_eq!(ok["name_ok"], true);

    let zdir = run_dir.join("push/zuora");
    let csv = read(&zdir.join(&out.files[0]));
    assert!(
        csv.starts_with(
            "ACCOUNT_ID,UOM,QTY,STARTDATE,ENDDATE,SUBSCRIPTION_ID,CHARGE_ID,DESCRIPTION\r\n"
        ),
        "{csv}"
    );
    assert!(csv.contains("A00000001,KWH,"), "{csv}");
    assert!(
        csv.contains(",03/02/2026,03/02/2026,A-S00000001,C-00000011,"),
        "{csv}"
    );
    assert!(csv.contains(",03/02/2026,03/02/2026,,C-00000020,"), "{csv}");
    assert!(!csv.contains("standing_charge"));
    // QTY per account = the statement's kWh of the energy lines, exactly.
    let lines = read(&run_dir.join("statement_lines.csv"));
    let want: Decimal = lines
        .lines()
        .filter(|l| l.contains(",C-1,") && l.contains(",energy,"))
        .map(|l| l.split(',').nth(11).unwrap().parse::<Decimal>().unwrap())
        .sum();
    let got: Decimal = csv
        .lines()
        .filter(|l| l.starts_with("A00000001,"))
        .map(|l| l.split(',').nth(2).unwrap().parse::<Decimal>().unwrap())
        .sum();
    assert_eq!(got, want);
    assert_eq!(
        ok["sha256"].as_str().unwrap(),
        read(&zdir.join("SHA256SUMS")).split(' ').next().unwrap()
    );
    let sums = Command::new("sha256sum")
        .args(["-c", "SHA256SUMS"])
        .current_dir(&zdir)
        .output()
        .unwrap();
    assert!(
        sums.status.success(),
        "{}",
        String::from_utf8_lossy(&sums.stdout)
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&read(&zdir.join("manifest.json"))).unwrap();
    assert_eq!(manifest["rows"], 4);

    // The push event, signed and verified by the receiver.
    let hooks: Vec<serde_json::Value> = rx
        .requests()
        .into_iter()
        .filter(|r| r["path"] == "/hooks" && r["status"] == 200)
        .collect();
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0]["verified"], true);
    assert_eq!(hooks[0]["event"]["data"]["target"], "zuora-file");

    // A second push rewrites the same bytes and uploads nothing.
    let before = rx.requests().len();
    let again = push(&cfg, spec, Target::ZuoraFile).unwrap();
    assert_eq!((again.created, again.already), (0, 1));
    assert_eq!(read(&zdir.join(&out.files[0])), csv);
    assert!(rx
        .requests()
        .iter()
        .skip(before)
        .all(|r| r["path"] != "/v1/usage"));

    // Every missing mapping at once.
    cfg.registry.customers[0].zuora_charges.clear();
    cfg.registry.customers[1].zuora_account = None;
    let e = push(&cfg, spec, Target::ZuoraFile).unwrap_err().to_string();
    assert!(e.contains("3 problem(s)"), "{e}");
    assert!(
        e.contains("customer C-1: no zuora_charges entry for energy.offpeak"),
        "{e}"
    );
    assert!(
        e.contains("customer C-1: no zuora_charges entry for energy.peak"),
        "{e}"
    );
    assert!(e.contains("customer C-2 has no zuora_account"), "{e}");
}
