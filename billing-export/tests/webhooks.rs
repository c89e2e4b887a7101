//! Signed webhooks against a local receiver (`tests/receiver.py`) that verifies the
//! HMAC-SHA256 signatures independently and fails the first attempts: every event arrives,
//! after retries with backoff, once per event id; a wrong secret is refused; the export is
//! published whatever the receivers do.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use chrono::NaiveDate;
use common::*;
use gridmeter_billing::{run, webhooks, Period};

const REGISTRY: &str = r#"
[[customers]]
id = "C-GOOD"
tariff = "flat"
currency = "EUR"
time_zone = "UTC"

[[customers]]
id = "C-BAD"
tariff = "flat"
currency = "EUR"
time_zone = "UTC"

[[sites]]
id = "S-GOOD"
customer = "C-GOOD"

[[sites]]
id = "S-BAD"
customer = "C-BAD"

[[devices]]
id = "good-meter"
site = "S-GOOD"

[[devices]]
id = "bad-meter"
site = "S-BAD"
"#;

const TARIFFS: &str = r#"
[tariffs.flat]
components = [ { type = "flat", name = "energy", quantity = "import_energy", unit = "kWh", rate = "0.25" } ]
"#;

/// A day of readings; the bad meter's usage disagrees with its raw register (mismatch).
fn data(root: &Path) {
    let start = t("2026-03-01T00:00:00Z");
    let per = vec![d("100"); 96];
    let (raw_g, use_g) = counter("good-meter", "energy_import", "Wh", start, &per, 1);
    let (raw_b, mut use_b) = counter("bad-meter", "energy_import", "Wh", start, &per, 1);
    use_b[10].usage = Some(d("250"));
    let mut raw = raw_g;
    raw.extend(raw_b);
    let mut usage = use_g;
    usage.extend(use_b);
    write_raw(root, "2026-03-01", "c1-0", &raw);
    write_usage(root, "commit-0001", &usage);
}

fn hook(url: &str, secret_file: &Path) -> webhooks::WebhookConfig {
    let mut w: webhooks::WebhookConfig = toml::from_str(&format!(
        "url = \"{url}\"\nsecret_file = \"{}\"\n[retry]\ninitial_backoff = \"10ms\"\nmax_backoff = \"50ms\"\n",
        secret_file.display()
    ))
    .unwrap();
    w.retry.max_attempts = 5;
    w
}

#[test]
fn events_are_signed_retried_and_delivered_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    data(&root);
    let good = Receiver::start(&dir.path().join("good"), "whsec_good", 2);
    let other = Receiver::start(&dir.path().join("other"), "whsec_other", 0);
    std::fs::write(dir.path().join("secret"), "whsec_good\n").unwrap();
    let mut cfg = config(&root, REGISTRY, TARIFFS);
    cfg.webhooks = vec![
        hook(&format!("{}/hooks", good.base), &dir.path().join("secret")),
        // Signed with a secret this receiver does not have: refused, never retried.
        hook(&format!("{}/hooks", other.base), &dir.path().join("secret")),
    ];
    let p = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
    let s = run(
        &cfg,
        Period::range(p("2026-03-01"), p("2026-03-02")).unwrap(),
    )
    .unwrap();
    let run_dir = s.run_dir.clone().unwrap();
    assert_eq!(
        s.held_customers().into_iter().collect::<Vec<_>>(),
        ["C-BAD"]
    );

    let reqs = good.requests();
    let mut by_type: BTreeMap<String, Vec<&serde_json::Value>> = BTreeMap::new();
    for r in &reqs {
        assert_eq!(r["verified"], true, "{r}");
        assert_eq!(r["id_matches"], true, "{r}");
        by_type
            .entry(r["type"].as_str().unwrap().to_string())
            .or_default()
            .push(r);
    }
    assert_eq!(
        by_type.keys().map(String::as_str).collect::<Vec<_>>(),
        ["bill.held", "reconciliation.failed", "run.published"]
    );
    for (kind, rs) in &by_type {
        // Two failures, then delivered: three attempts of one event id, processed once.
        let statuses: Vec<i64> = rs.iter().map(|r| r["status"].as_i64().unwrap()).collect();
        assert_eq!(statuses, [500, 500, 200], "{kind}");
        assert!(rs.iter().all(|r| r["event_id"] == rs[0]["event_id"]));
        assert_eq!(rs[2]["duplicate"], false);
    }
    let held = &by_type["bill.held"][2]["event"]["data"];
    assert_eq!(held["customer_id"], "C-BAD");
    assert!(held["reasons"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("reconciliation"));
    assert_eq!(
        by_type["run.published"][2]["event"]["data"]["run"],
        "run-0001"
    );

    // The endpoint with the other secret refused every event (400, no retry).
    let refused = other.requests();
    assert_eq!(refused.len(), 3, "{refused:?}");
    assert!(refused
        .iter()
        .all(|r| r["verified"] == false && r["status"] == 400));

    // Sending again delivers nothing new to the good endpoint; the refused ones are tried
    // again (and refused again), and the receiver saw each event id processed once.
    let again = webhooks::resend(&cfg.webhooks, &run_dir);
    assert!(
        again.iter().all(|d| !d.url.starts_with(&good.base)),
        "{again:?}"
    );
    assert_eq!(again.len(), 3);
    assert_eq!(good.requests().len(), reqs.len());
    // A resend after the receiver lost its answer (a duplicate): harmless by the event id.
    let log = run_dir.join("events/deliveries.jsonl");
    let kept: Vec<String> = read(&log)
        .lines()
        .filter(|l| !l.contains(&good.base))
        .map(str::to_string)
        .collect();
    std::fs::write(&log, kept.join("\n") + "\n").unwrap();
    webhooks::resend(&cfg.webhooks[..1], &run_dir);
    let dups: Vec<serde_json::Value> = good.requests().into_iter().skip(reqs.len()).collect();
    assert_eq!(dups.len(), 3);
    assert!(dups
        .iter()
        .all(|r| r["status"] == 200 && r["duplicate"] == true && r["verified"] == true));
}
