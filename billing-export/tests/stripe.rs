//! `push --to stripe` against a real localstripe (a stateful fake Stripe from PyPI, started
//! here on 127.0.0.1): a month for 50 customers, a `kill -9` halfway and a resume (each line
//! exactly once, every invoice total equal to ours to the cent), a third push (no new
//! objects), and an adjustment run after a late-data restatement (Stripe's totals equal the
//! corrected bill).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::*;
use gridmeter_billing::push::document::RunRef;
use gridmeter_billing::push::stripe::idempotency_key;
use gridmeter_billing::{run, ExportConfig, Period};
use rust_decimal::Decimal;
use serde_json::Value;

const CUSTOMERS: usize = 50;
const KEY_ENV: &str = "GM_TEST_STRIPE_KEY";

struct LocalStripe {
    child: Child,
    base: String,
}

impl Drop for LocalStripe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/stripe_fixture.py")
}

fn localstripe(state: &Path) -> LocalStripe {
    let mut child = Command::new("python3")
        .arg(fixture())
        .arg("serve")
        .arg(state)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 with localstripe (pip install localstripe)");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .strip_prefix("PORT ")
        .unwrap_or_else(|| panic!("localstripe did not start: {line:?}"))
        .trim()
        .to_string();
    LocalStripe {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

fn py(args: &[&str]) -> Value {
    let o = Command::new("python3")
        .arg(fixture())
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Stripe's view of every customer (independent reader: Python's urllib).
fn state(ls: &LocalStripe, cus: &[String]) -> Value {
    let mut args = vec!["state", ls.base.as_str()];
    args.extend(cus.iter().map(String::as_str));
    py(&args)
}

/// The registry of 50 customers mapped to their Stripe customers and subscriptions.
fn registry(stripe: &[(String, String)]) -> String {
    let mut r = String::new();
    for (i, (cus, sub)) in stripe.iter().enumerate() {
        r.push_str(&format!(
            "[[customers]]\nid = \"C-{i:03}\"\ntariff = \"pv\"\ncurrency = \"EUR\"\ntax_rate = \"0.19\"\n\
             time_zone = \"Europe/Berlin\"\nstripe_customer = \"{cus}\"\nstripe_subscription = \"{sub}\"\n\n\
             [[sites]]\nid = \"S-{i:03}\"\ncustomer = \"C-{i:03}\"\n\n\
             [[devices]]\nid = \"m-{i:03}\"\nsite = \"S-{i:03}\"\n\n"
        ));
    }
    r
}

const TARIFFS: &str = r#"
[tariffs.pv]
components = [
  { type = "flat", name = "import", quantity = "import_energy", unit = "kWh", rate = "0.3125" },
  { type = "flat", name = "export_credit", quantity = "export_energy", unit = "kWh", rate = "0.0813", credit = true },
  { type = "fixed", name = "standing_charge", monthly = "12.40" },
]
"#;

/// October 2026 in Berlin (2,980 intervals) for every meter: import and export usage rows.
fn usage(root: &Path) {
    let start = t("2026-09-30T22:00:00Z");
    let mut rows = Vec::new();
    for i in 0..CUSTOMERS {
        let imp: Vec<Decimal> = (0..2980)
            .map(|k| Decimal::from(100 + (i % 7) * 10 + k % 4) + d("0.25"))
            .collect();
        let exp: Vec<Decimal> = (0..2980)
            .map(|k| {
                if (40..56).contains(&(k % 96)) {
                    Decimal::from(30 + i)
                } else {
                    Decimal::ZERO
                }
            })
            .collect();
        rows.extend(counter(&format!("m-{i:03}"), "energy_import", "Wh", start, &imp, 1).1);
        rows.extend(counter(&format!("m-{i:03}"), "energy_export", "Wh", start, &exp, 1).1);
    }
    write_usage(root, "commit-0001", &rows);
}

fn push_cmd(config: &Path, run: &str, ls: &LocalStripe) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gridmeter-billing"));
    c.args(["push", "--config"])
        .arg(config)
        .args(["--run", run, "--to", "stripe"])
        .env(KEY_ENV, "sk_test_gridmeter")
        .env("RUST_LOG", "warn");
    let _ = ls;
    c
}

fn lines_of(p: &Path) -> usize {
    std::fs::read_to_string(p)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// Our documents: per customer id, (Stripe customer, total in cents, expected keys).
fn expected(cfg: &ExportConfig, run: &str) -> BTreeMap<String, (i64, BTreeSet<String>)> {
    let r = RunRef::resolve(&cfg.out_dir, run).unwrap();
    r.documents()
        .unwrap()
        .into_iter()
        .map(|doc| {
            let keys = doc
                .charges()
                .iter()
                .map(|c| idempotency_key(&r, &doc.customer_id, &c.key))
                .collect();
            let cents = (doc.total * Decimal::from(100))
                .normalize()
                .to_string()
                .parse()
                .unwrap();
            (doc.customer_id, (cents, keys))
        })
        .collect()
}

/// The invoices of `run` in Stripe's state of one customer.
fn invoices_of<'a>(st: &'a Value, run: &str) -> Vec<&'a Value> {
    st["invoices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|inv| {
            inv["lines"]
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l["run"].as_str() == Some(run))
        })
        .collect()
}

#[test]
fn push_a_month_for_50_customers_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    std::fs::create_dir_all(&root).unwrap();
    let ls = localstripe(dir.path());
    let stripe: Vec<(String, String)> = py(&["setup", &ls.base, &CUSTOMERS.to_string()])
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().into(), p[1].as_str().unwrap().into()))
        .collect();
    let cus: Vec<String> = stripe.iter().map(|(c, _)| c.clone()).collect();
    std::fs::write(dir.path().join("registry.toml"), registry(&stripe)).unwrap();
    std::fs::write(dir.path().join("tariffs.toml"), TARIFFS).unwrap();
    let config = dir.path().join("billing.toml");
    std::fs::write(
        &config,
        format!(
            "data_root = \"data\"\nregistry = \"registry.toml\"\ntariffs = \"tariffs.toml\"\n\
             reconcile_raw = false\ngreen_button = false\n\
             [stripe]\napi_base = \"{}\"\napi_key_env = \"{KEY_ENV}\"\n\
             [stripe.retry]\nrequests_per_second = 150\ninitial_backoff = \"20ms\"\n",
            ls.base
        ),
    )
    .unwrap();
    usage(&root);
    let cfg = ExportConfig::load(&config).unwrap();
    let first = run(&cfg, Period::month(2026, 10).unwrap()).unwrap();
    assert_eq!(first.run.as_deref(), Some("run-0001"));
    let want = expected(&cfg, "2026-10/run-0001");
    assert_eq!(want.len(), CUSTOMERS);
    let ledger = first.run_dir.as_ref().unwrap().join("push/stripe.jsonl");

    // 1. Push, and kill -9 it halfway (by the ledger: half of begin + items + invoice).
    let entries: usize = want.values().map(|(_, k)| k.len() + 2).sum();
    let mut child = push_cmd(&config, "2026-10/run-0001", &ls)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    while lines_of(&ledger) < entries / 2 {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("push ended before it could be killed: {status}");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let text = std::fs::read_to_string(&ledger).unwrap();
    let mut kept: Vec<&str> = text.lines().collect();
    assert!(kept.iter().filter(|l| l.contains("\"invoice\"")).count() < CUSTOMERS);
    // The crash windows a kill can hit, made certain: the last object Stripe accepted is not
    // in the ledger, one finished customer lost its invoice record, the last write is torn.
    kept.pop();
    let inv = kept
        .iter()
        .position(|l| l.contains("\"event\":\"invoice\""))
        .unwrap();
    kept.remove(inv);
    std::fs::write(
        &ledger,
        format!("{}\n{{\"event\":\"item\",\"cust", kept.join("\n")),
    )
    .unwrap();

    // 2. Push again: it resumes, finds what the ledger missed, and finishes.
    let o = push_cmd(&config, "2026-10/run-0001", &ls).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("50 of 50 documents delivered"), "{out}");
    assert!(
        !out.contains(" 0 found again"),
        "the resume found nothing again: {out}"
    );
    let after = state(&ls, &cus);
    for (i, (id, (cents, keys))) in want.iter().enumerate() {
        let st = &after[&cus[i]];
        let invs = invoices_of(st, "2026-10/run-0001");
        assert_eq!(invs.len(), 1, "{id}: {} invoices", invs.len());
        let got: Vec<&str> = invs[0]["lines"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|l| l["key"].as_str())
            .collect();
        let unique: BTreeSet<String> = got.iter().map(|s| s.to_string()).collect();
        assert_eq!(got.len(), unique.len(), "{id}: a line twice");
        assert_eq!(&unique, keys, "{id}: lines differ");
        assert_eq!(invs[0]["total"].as_i64(), Some(*cents), "{id}: total");
        assert_eq!(invs[0]["subtotal"].as_i64(), Some(*cents), "{id}: subtotal");
        assert!(
            st["pending"].as_array().unwrap().is_empty(),
            "{id}: items left pending"
        );
    }

    // 3. A third push creates nothing.
    let o = push_cmd(&config, "2026-10/run-0001", &ls).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains(
            "(0 objects created, 0 found again after an interruption, 50 delivered before)"
        ),
        "{out}"
    );
    assert_eq!(state(&ls, &cus), after);

    // 4. Late data for 10 customers: revision 2 moves usage up (import +, export +, so
    //    adjustment lines of both signs); the adjustment run is pushed as credits and charges.
    let mut late = Vec::new();
    for i in 0..10usize {
        for k in 500..520i64 {
            let s = t("2026-09-30T22:00:00Z") + chrono::Duration::minutes(15 * k);
            let row = |ch: &str, v: Decimal| UsageRow {
                device: format!("m-{i:03}"),
                channel: ch.into(),
                kind: "counter".into(),
                unit: "Wh".into(),
                start: s,
                usage: Some(v),
                avg: None,
                flags: "late".into(),
                revision: 2,
            };
            late.push(row("energy_import", Decimal::from(400 + 10 * i as i64)));
            // Customer 3 exported a lot more: its correction is a net credit.
            late.push(row(
                "energy_export",
                Decimal::from(if i == 3 { 9000 } else { 50 }),
            ));
        }
    }
    write_usage(&root, "commit-0002", &late);
    let second = run(&cfg, Period::month(2026, 10).unwrap()).unwrap();
    assert_eq!(second.run.as_deref(), Some("run-0002"));
    let adj = expected(&cfg, "2026-10/run-0002");
    assert_eq!(adj.len(), 10);
    // Someone else's pending item on a restated customer would be swept into our invoice:
    // that customer is held back (exit 2), the others are pushed; once it is gone, it goes too.
    let foreign = py(&["item", &ls.base, &stripe[5].0, &stripe[5].1, "999"]);
    let o = push_cmd(&config, "2026-10/run-0002", &ls).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("C-005: Stripe: ")
            && err.contains("pending invoice items that are not this run's"),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("9 of 10 documents delivered"));
    py(&["delete", &ls.base, foreign["id"].as_str().unwrap()]);
    let o = push_cmd(&config, "2026-10/run-0002", &ls).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("10 of 10 documents delivered"), "{out}");
    // The corrected bill: every line of the latest ledger, per customer, in cents.
    let ledger2: Value =
        serde_json::from_str(&read(&second.run_dir.as_ref().unwrap().join("ledger.json"))).unwrap();
    let mut corrected: BTreeMap<String, Decimal> = BTreeMap::new();
    for l in ledger2["lines"].as_array().unwrap() {
        *corrected
            .entry(l["customer_id"].as_str().unwrap().into())
            .or_default() += l["amount"].as_str().unwrap().parse::<Decimal>().unwrap();
    }
    let fin = state(&ls, &cus);
    let mut credits = 0;
    for (i, id) in want.keys().enumerate() {
        let st = &fin[&cus[i]];
        let ours: i64 = (corrected[id] * Decimal::from(100))
            .normalize()
            .to_string()
            .parse()
            .unwrap();
        let theirs: i64 = invoices_of(st, "2026-10/run-0001")
            .iter()
            .chain(invoices_of(st, "2026-10/run-0002").iter())
            .map(|inv| inv["subtotal"].as_i64().unwrap())
            .sum();
        assert_eq!(
            theirs, ours,
            "{id}: Stripe holds {theirs}, the corrected bill is {ours}"
        );
        let a = invoices_of(st, "2026-10/run-0002");
        match adj.get(id) {
            None => assert!(a.is_empty(), "{id} was not restated"),
            Some((cents, keys)) => {
                assert_eq!(a.len(), 1);
                let got: BTreeSet<String> = a[0]["lines"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|l| l["key"].as_str().map(str::to_string))
                    .collect();
                assert_eq!(&got, keys, "{id}: only the adjustment lines");
                assert_eq!(a[0]["subtotal"].as_i64(), Some(*cents));
                credits += a[0]["lines"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|l| l["amount"].as_i64().unwrap() < 0)
                    .count();
            }
        }
    }
    assert!(
        credits >= 10,
        "export credit adjustments are negative items ({credits})"
    );
    assert!(
        adj["C-003"].0 < 0,
        "customer 3's correction is a net credit"
    );
}
