//! Billing what the real aggregator validated, estimated and edited, hand-computed: raw
//! readings committed to a real `raw` Delta table, `gridmeter-aggregator`'s `run_once`,
//! `close` and `edit`, then the billing export over the usage and exceptions tables it wrote.

use std::path::Path;
use std::sync::Arc;

use gridmeter_aggregator::{AggregatorConfig, EditRequest, Metrics};
use gridmeter_billing::{ExportConfig, Period};
use gridmeter_core::{Channel, Kind, Quality, Reading};
use gridmeter_tables::raw::RawRow;
use rust_decimal::Decimal;

const MIN: i64 = 60_000_000;
const Q: i64 = 15 * MIN;
const DAY: i64 = 96 * Q;
/// 2026-01-01T00:00:00Z.
const BASE: i64 = 1_767_225_600_000_000;

fn time(us: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_micros(us).unwrap()
}

/// Quarter-hourly readings of `device` from `from` for `n` quarters starting at `start` Wh,
/// each adding `per` Wh; returns them and the last value.
fn quarters(
    device: &str,
    seq0: u64,
    from: i64,
    n: i64,
    start: i64,
    per: i64,
) -> (Vec<RawRow>, i64) {
    let id: Arc<str> = device.into();
    let rows = (0..=n)
        .map(|k| RawRow {
            device_id: id.clone(),
            reading: Reading {
                seq: seq0 + k as u64,
                ts: time(from + k * Q),
                channel: Channel::new("energy_import").unwrap(),
                kind: Kind::Counter,
                unit: "Wh".into(),
                value: Decimal::from(start + k * per),
                quality: Quality::GOOD,
            },
            received_at_us: from + k * Q + 1_000_000,
        })
        .collect();
    (rows, start + n * per)
}

/// Commits `rows` to `<root>/raw` as the collector does (one commit, transaction id
/// `(test/<name>, 1)`).
async fn write_raw(root: &Path, name: &str, rows: &[RawRow]) {
    let root =
        gridmeter_tables::Root::open(&gridmeter_core::store::DataRoot::Local(root.to_path_buf()))
            .unwrap();
    let table = gridmeter_tables::raw::open(&root).await.unwrap();
    let files = gridmeter_tables::raw::plan(name, rows).unwrap();
    table
        .append_once(
            &format!("test/{name}"),
            1,
            files,
            gridmeter_tables::parquet_io::Profile::Standard,
            "",
        )
        .await
        .unwrap();
}

fn aggregator(root: &Path, rules: &str) -> AggregatorConfig {
    let text = format!(
        "data_root = {:?}\n[vee]\nmax_interpolation = \"2h\"\nprofile_weeks = 4\n{rules}",
        root.display().to_string()
    );
    gridmeter_core::config::parse(&text, "aggregator.toml").unwrap()
}

/// One UTC customer `C-1` with meter `device`, energy at 10 per kWh, no tax.
fn billing(root: &Path, out: &Path, device: &str) -> ExportConfig {
    let registry = format!(
        "[[customers]]\nid = \"C-1\"\ntariff = \"flat\"\ncurrency = \"EUR\"\ntax_rate = \"0\"\ntime_zone = \"UTC\"\n\
         [[sites]]\nid = \"S-1\"\ncustomer = \"C-1\"\n[[devices]]\nid = \"{device}\"\nsite = \"S-1\"\n"
    );
    let tariffs = "[tariffs.flat]\ncomponents = [ { type = \"flat\", name = \"energy\", quantity = \"import_energy\", unit = \"kWh\", rate = \"10\" } ]\n";
    ExportConfig::new(
        root,
        out,
        gridmeter_core::config::parse(&registry, "registry").unwrap(),
        gridmeter_core::config::parse(tariffs, "tariffs").unwrap(),
    )
}

fn period(from: &str, to: &str) -> Period {
    let d = |s: &str| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
    Period::range(d(from), d(to)).unwrap()
}

/// The rows of a run's `statement_lines.csv` as column -> value (no field here holds a
/// comma).
fn statement(run: &Path) -> Vec<std::collections::BTreeMap<String, String>> {
    let text = std::fs::read_to_string(run.join("statement_lines.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    lines
        .map(|l| {
            header
                .iter()
                .zip(l.split(','))
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_critical_exception_holds_the_bill_until_the_window_is_edited() {
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    // Three days of 1 Wh per quarter; reading 150 (2026-01-02T13:30Z) reads 100 Wh too high.
    let (mut raw, _) = quarters("hh-1", 1, BASE, 3 * 96, 500, 1);
    raw[150].reading.value += Decimal::from(100);
    write_raw(data.path(), "c1", &raw).await;
    let agg = aggregator(
        data.path(),
        "[[vee.rules]]\nrule = \"spike\"\nfactor = \"10\"\ntrailing = 96\naction = \"estimate\"\nseverity = \"critical\"\n",
    );
    let metrics = Metrics::unregistered();
    gridmeter_aggregator::run_once(&agg, &metrics)
        .await
        .unwrap();
    let mut cfg = billing(data.path(), out.path(), "hh-1");
    cfg.hold.exception_severity = Some("critical".into());
    let day2 = period("2026-01-02", "2026-01-03");
    let s = gridmeter_billing::run(&cfg, day2).unwrap();
    // The spike: interval 149 (13:15-13:30) used 101 Wh against 10 × the median of 1 Wh.
    assert_eq!(s.held.len(), 1, "{:?}", s.held);
    assert_eq!(
        s.held[0].reason,
        "hold rule exception_severity: open \"critical\" exception \"spike\" on window 2026-01-02T13:15:00Z to 2026-01-02T13:30:00Z (observed 101, threshold 10, action \"estimate\", usage revision 1); 1 open window(s) of this rule up to 2026-01-02T13:30:00Z"
    );
    let run1 = s.run_dir.unwrap();
    assert!(!run1.join("invoices/C-1.json").exists());
    // The billing team reviews the window and sets it to 1 Wh: a new revision, edited.
    gridmeter_aggregator::edit(
        &agg,
        &[EditRequest {
            device_id: "hh-1".into(),
            channel: "energy_import".into(),
            window: "15m".into(),
            from: time(BASE + 149 * Q),
            to: time(BASE + 150 * Q),
            set: Some(Decimal::ONE),
            scale: None,
            reason: "glitch reviewed".into(),
            who: "billing".into(),
        }],
        &metrics,
    )
    .await
    .unwrap();
    let rows = gridmeter_aggregator::current(&agg, "15m").await.unwrap();
    let w = rows
        .iter()
        .find(|r| r.window_start == BASE + 149 * Q)
        .unwrap();
    assert!(w.flags.contains(gridmeter_tables::Flags::EDITED));
    assert_eq!(w.revision, 2);
    let s = gridmeter_billing::run(&cfg, day2).unwrap();
    assert!(s.held.is_empty(), "{:?}", s.held);
    let run2 = s.run_dir.unwrap();
    assert!(run2.ends_with("run-0002"));
    assert!(run2.join("invoices/C-1.json").exists());
    // 96 quarters of 1 Wh (the spike and the fall after it estimated, one of them edited to
    // the same 1 Wh) = 0.096 kWh × 10 = 0.96.
    assert_eq!(s.totals.get("EUR"), Some(&Decimal::new(96, 2)));
    let lines = statement(&run2);
    assert_eq!(lines.len(), 1, "{lines:?}");
    // quality: 2 of 96 Wh estimated = 0.0208; edited: 1 of 96 = 0.0104.
    assert_eq!(lines[0]["quality"], "0.0208");
    assert_eq!(lines[0]["edited_share"], "0.0104");
    assert_eq!(lines[0]["quantity"], "0.096000000");
    let recon = std::fs::read_to_string(run2.join("reconciliation.csv")).unwrap();
    assert!(recon.contains(",ok,"), "{recon}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_end_estimate_is_billed_and_adjusted_when_the_readings_arrive() {
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    // Two days of 2 Wh per quarter, then the meter stops reporting.
    let (raw, v) = quarters("hh-2", 1, BASE, 2 * 96, 0, 2);
    write_raw(data.path(), "c1", &raw).await;
    let agg = aggregator(data.path(), "");
    let metrics = Metrics::unregistered();
    gridmeter_aggregator::run_once(&agg, &metrics)
        .await
        .unwrap();
    // The period 2026-01-02 and 03 is closed: the third day is estimated (open end).
    gridmeter_aggregator::close(&agg, time(BASE + 3 * DAY), &metrics)
        .await
        .unwrap();
    let rows = gridmeter_aggregator::current(&agg, "15m").await.unwrap();
    let open: Vec<_> = rows
        .iter()
        .filter(|r| r.flags.method() == Some("open_end"))
        .collect();
    assert_eq!(open.len(), 96);
    // The meter's own rate: 2 Wh per quarter.
    assert!(open.iter().all(|r| r.usage == Some(2 * 1_000_000_000)));
    let cfg = billing(data.path(), out.path(), "hh-2");
    let days = period("2026-01-02", "2026-01-04");
    let s = gridmeter_billing::run(&cfg, days).unwrap();
    assert!(s.held.is_empty(), "{:?}", s.held);
    // 96 × 2 measured + 96 × 2 estimated = 384 Wh = 0.384 kWh × 10 = 3.84; half estimated.
    assert_eq!(s.totals.get("EUR"), Some(&Decimal::new(384, 2)));
    let run1 = s.run_dir.unwrap();
    let lines = statement(&run1);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["quality"], "0.5000", "{lines:?}");
    assert_eq!(lines[0]["revision"], "1");
    // The raw side has no readings after the meter stopped: the open end is left out.
    let recon = std::fs::read_to_string(run1.join("reconciliation.csv")).unwrap();
    assert!(
        recon.contains("384.000000000,192.000000000,384.000000000,ok,compared without 96 edited/open-end windows and their estimated neighbours (usage 192; raw 0)"),
        "{recon}"
    );
    // Green Button: the projected quarters carry QualityOfReading 12.
    let xml = std::fs::read_to_string(run1.join("espi/C-1.xml")).unwrap();
    assert_eq!(xml.matches("<espi:quality>12</espi:quality>").count(), 96);
    // The readings arrive: the meter used 3 Wh per quarter on the third day (and goes on, so
    // the watermark passes the period end).
    let (late, _) = quarters("hh-2", 1_000, BASE + 2 * DAY, 120, v, 3);
    write_raw(data.path(), "c2", &late[1..]).await;
    let s = gridmeter_aggregator::run_once(&agg, &metrics)
        .await
        .unwrap();
    assert!(s.revisions["15m"] >= 96, "{s:?}");
    let s = gridmeter_billing::run(&cfg, days).unwrap();
    assert!(s.held.is_empty(), "{:?}", s.held);
    assert_eq!(s.adjustment_lines, 1);
    // Now 192 + 96 × 3 = 480 Wh = 4.80: the adjustment is +0.096 kWh, +0.96.
    assert_eq!(s.totals.get("EUR"), Some(&Decimal::new(96, 2)));
    let run2 = s.run_dir.unwrap();
    let lines = statement(&run2);
    assert_eq!(lines.len(), 1);
    let l = &lines[0];
    assert_eq!(l["line_type"], "adjustment");
    assert_eq!(l["quantity"], "0.096000000", "{l:?}");
    assert_eq!(l["amount"], "0.96", "{l:?}");
    // Revision 2 against the revision 1 billed before; nothing estimated any more.
    assert_eq!(l["revision"], "2");
    assert_eq!(l["previous_revision"], "1");
    assert_eq!(l["quality"], "0.0000");
    assert_eq!(l["edited_share"], "0.0000");
}
