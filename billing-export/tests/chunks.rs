//! Billing in chunks and on several threads gives the bytes of billing everyone at once on
//! one thread: first runs and adjustment runs, with held customers, a customer removed from
//! the registry, devices whose ids sort differently from their customers and data files that
//! straddle the chunks. The gzip-compressed Green Button feeds hold the plain feeds' bytes.

mod common;

use std::io::Read;
use std::path::Path;

use chrono::NaiveDate;
use common::*;
use gridmeter_billing::{run, ExportConfig, ExportSummary, Period};

const N: usize = 9;

/// A run's files as (relative path, bytes).
type Files = Vec<(String, Vec<u8>)>;

fn period() -> Period {
    let p = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
    Period::range(p("2026-10-24"), p("2026-10-26")).unwrap()
}

/// Customer `i` (C1..C9) has meter `m-<N - i>` (device ids sort the other way round);
/// customer 4 has a second site whose meter was installed during the period; customer 6 has
/// an unpriced power gauge besides its meter.
fn registry(skip: Option<usize>) -> String {
    let mut r = String::new();
    for i in 1..=N {
        if Some(i) == skip {
            continue;
        }
        r.push_str(&format!(
            "[[customers]]\nid = \"C{i}\"\ntariff = \"tou\"\ncurrency = \"EUR\"\ntax_rate = \"0.19\"\ntime_zone = \"Europe/Berlin\"\n\n\
             [[sites]]\nid = \"S{i}\"\ncustomer = \"C{i}\"\n\n[[devices]]\nid = \"m-{}\"\nsite = \"S{i}\"\n\n",
            N - i
        ));
        if i == 4 {
            r.push_str(
                "[[sites]]\nid = \"S4-b\"\ncustomer = \"C4\"\n\n[[devices]]\nid = \"m-4b\"\nsite = \"S4-b\"\ninstalled = \"2026-10-24T09:10:00Z\"\n\n",
            );
        }
    }
    r
}

const TARIFFS: &str = r#"
[tariffs.tou]
[[tariffs.tou.components]]
type = "time_of_use"
name = "energy"
quantity = "import_energy"
unit = "kWh"
default_period = "offpeak"
periods = [ { name = "peak", rate = "0.3512" }, { name = "offpeak", rate = "0.2475" } ]
rules = [ { period = "peak", days = ["mon", "tue", "wed", "thu", "fri", "sat"], from_hour = 7, to_hour = 21 } ]
[[tariffs.tou.components]]
type = "fixed"
name = "standing_charge"
monthly = "12.40"
"#;

/// Two local days (2026-10-24 00:00 to 2026-10-26 00:00 Berlin = 2026-10-23T22:00Z to
/// 2026-10-25T23:00Z, 49 h, 196 windows) of a counter per meter; customer 7's usage is one
/// Wh short of its raw readings in one window (held). Usage goes into three files and raw into
/// two, each spanning customers of several chunks.
fn data(root: &Path) {
    let start = t("2026-10-23T22:00:00Z");
    let mut usage_files: Vec<Vec<UsageRow>> = vec![Vec::new(); 3];
    let mut raw_files: Vec<Vec<RawRow>> = vec![Vec::new(); 2];
    let mut meters: Vec<(usize, String)> = (1..=N).map(|i| (i, format!("m-{}", N - i))).collect();
    meters.push((4, "m-4b".into()));
    for (k, (i, meter)) in meters.iter().enumerate() {
        let per: Vec<_> = (0..196)
            .map(|w| {
                d(&format!(
                    "{}.{:03}",
                    50 + (w * 7 + i * 13) % 200,
                    (w * i) % 1000
                ))
            })
            .collect();
        let (raw, mut usage) = counter(meter, "energy_import", "Wh", start, &per, 1);
        if *i == 7 {
            usage[100].usage = usage[100].usage.map(|u| u - d("1"));
        }
        if *i == 6 {
            usage.extend(gauge(meter, "power", "W", start, &vec![d("230.5"); 196]));
        }
        usage_files[k % 3].extend(usage);
        raw_files[k % 2].extend(raw);
    }
    for (k, rows) in usage_files.iter().enumerate() {
        write_usage(root, &format!("commit-{k}"), rows);
    }
    for (k, rows) in raw_files.iter().enumerate() {
        write_raw(root, "2026-10-24", &format!("c{k}-0"), rows);
    }
}

fn cfg(root: &Path, out: &Path, registry: &str, chunk: usize, threads: usize) -> ExportConfig {
    let mut c = config(root, registry, TARIFFS);
    c.out_dir = out.to_path_buf();
    c.chunk_customers = chunk;
    c.threads = threads;
    c
}

/// Runs the period with every (chunk size, threads) into an out dir of its own, the first
/// being the reference (everyone in one chunk, one thread); checks every run gives the
/// reference's summary and files.
fn same_everywhere(
    root: &Path,
    outs: &[(tempfile::TempDir, usize, usize)],
    registry: &str,
) -> (ExportSummary, Files) {
    let mut reference: Option<(ExportSummary, Files)> = None;
    for (out, chunk, threads) in outs {
        let s = run(&cfg(root, out.path(), registry, *chunk, *threads), period()).unwrap();
        let dir = s.run_dir.clone().unwrap();
        let files = run_files(&dir);
        let s = ExportSummary { run_dir: None, ..s };
        match &reference {
            None => reference = Some((s, files)),
            Some((rs, rf)) => {
                assert_eq!(
                    &s, rs,
                    "summary with chunks of {chunk} on {threads} threads"
                );
                let names =
                    |f: &[(String, Vec<u8>)]| f.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
                assert_eq!(names(&files), names(rf));
                for ((name, a), (_, b)) in files.iter().zip(rf) {
                    assert!(
                        a == b,
                        "{name} differs with chunks of {chunk} on {threads} threads"
                    );
                }
            }
        }
    }
    reference.unwrap()
}

#[test]
fn chunked_and_parallel_runs_give_the_bytes_of_one_chunk_on_one_thread() {
    let data_dir = tempfile::tempdir().unwrap();
    let root = data_dir.path();
    data(root);
    let setups = [(1000, 1), (1, 1), (2, 2), (4, 1), (4, 2), (1, 2), (1000, 2)];
    let outs: Vec<_> = setups
        .iter()
        .map(|&(c, n)| (tempfile::tempdir().unwrap(), c, n))
        .collect();
    let reg = registry(None);
    let (first, files) = same_everywhere(root, &outs, &reg);
    assert_eq!(first.customers, N);
    assert_eq!(
        first.held_customers().into_iter().collect::<Vec<_>>(),
        ["C7"]
    );
    let names: Vec<&str> = files.iter().map(|f| f.0.as_str()).collect();
    for want in [
        "espi/C1.xml",
        "espi/C9.xml",
        "invoices/C4.json",
        "invoices/C9.html",
        "ledger.json",
    ] {
        assert!(names.contains(&want), "{want} missing: {names:?}");
    }
    assert!(!names.contains(&"invoices/C7.json"));
    // The reconciliation has every meter (customer 4 has two) and the gauge is not in it.
    let recon = String::from_utf8(
        files
            .iter()
            .find(|f| f.0 == "reconciliation.csv")
            .unwrap()
            .1
            .clone(),
    )
    .unwrap();
    assert_eq!(recon.lines().count(), 1 + N + 1, "{recon}");
    assert!(recon.contains("C7,S7,m-2,energy_import,counter,Wh,") && recon.contains("MISMATCH"));

    // Revision 2 of a window of customer 2's meter, customer 7's window fixed, customer 5
    // gone from the registry: adjustments, C7 billed for the first time, C5 reversed.
    write_usage(
        root,
        "commit-late",
        &[UsageRow {
            device: "m-7".into(),
            channel: "energy_import".into(),
            kind: "counter".into(),
            unit: "Wh".into(),
            start: t("2026-10-24T10:00:00Z"),
            usage: Some(d("400")),
            avg: None,
            flags: "late".into(),
            revision: 2,
        }],
    );
    let fixed7: Vec<UsageRow> = {
        let (_, usage) = counter(
            "m-2",
            "energy_import",
            "Wh",
            t("2026-10-23T22:00:00Z"),
            &(0..196)
                .map(|w| {
                    d(&format!(
                        "{}.{:03}",
                        50 + (w * 7 + 7 * 13) % 200,
                        (w * 7) % 1000
                    ))
                })
                .collect::<Vec<_>>(),
            1,
        );
        let mut r = usage[100].clone();
        r.revision = 2;
        vec![r]
    };
    write_usage(root, "commit-fix", &fixed7);
    let (second, files2) = same_everywhere(root, &outs, &registry(Some(5)));
    assert_eq!(second.run.as_deref(), Some("run-0002"));
    // C2's usage now disagrees with its raw readings: held; C7 is billed.
    assert_eq!(
        second.held_customers().into_iter().collect::<Vec<_>>(),
        ["C2"]
    );
    let csv = String::from_utf8(
        files2
            .iter()
            .find(|f| f.0 == "statement_lines.csv")
            .unwrap()
            .1
            .clone(),
    )
    .unwrap();
    assert!(csv.contains("run-0002,charge,C7,"), "{csv}");
    assert!(
        csv.contains("run-0002,adjustment,C5,"),
        "C5 reversed: {csv}"
    );
    assert!(!csv.contains(",C2,"), "{csv}");
}

#[test]
fn gzip_feeds_hold_the_plain_feeds() {
    let data_dir = tempfile::tempdir().unwrap();
    let root = data_dir.path();
    data(root);
    let reg = registry(None);
    let (plain_out, gz_out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let plain = run(&cfg(root, plain_out.path(), &reg, 3, 2), period()).unwrap();
    let mut c = cfg(root, gz_out.path(), &reg, 3, 2);
    c.green_button_gzip = true;
    let gz = run(&c, period()).unwrap();
    let plain = run_files(&plain.run_dir.unwrap());
    let gz = run_files(&gz.run_dir.unwrap());
    assert_eq!(plain.len(), gz.len());
    let (mut plain_bytes, mut gz_bytes) = (0, 0);
    for ((pn, pb), (gn, gb)) in plain.iter().zip(&gz) {
        if pn.starts_with("espi/") {
            assert_eq!(&format!("{pn}.gz"), gn);
            let mut xml = Vec::new();
            flate2::read::GzDecoder::new(&gb[..])
                .read_to_end(&mut xml)
                .unwrap();
            assert!(&xml == pb, "{gn} does not hold {pn}");
            plain_bytes += pb.len();
            gz_bytes += gb.len();
        } else if pn != "manifest.json" {
            assert_eq!(pn, gn);
            assert!(pb == gb, "{pn} differs");
        }
    }
    assert!(gz_bytes * 5 < plain_bytes, "{gz_bytes} of {plain_bytes}");
}
