//! Aggregation past one machine and across crashes, through the binary:
//! - three shards (`run --shard I/3`) run at once on one data root give the same current and
//!   history rows as one unsharded run over the same raw data, first run and after late data;
//! - a `kill -9` between a run's history commit and its current commit leaves the current
//!   table as it was (no half state, nothing twice) and the next run completes the commit.
//!
//! Tables are read back by the Python deltalake package.

mod common;

use std::path::Path;
use std::process::Command;

use common::{write_raw, Raw, DAY};

const MIN15: i64 = 900_000_000;
const T0: i64 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z

/// 24 meters, two days of 15-minute counter readings (jittered) and a gauge.
fn readings() -> Vec<Raw> {
    let mut rows = Vec::new();
    for d in 0..24 {
        let device = format!("meter-{d:02}");
        let mut v: i128 = d as i128 * 1_000_000_000_000;
        for i in 0..(2 * 96 + 1) {
            let ts = T0 + i * MIN15 + (d as i64 * 7 + i * 13) % 300 * 1_000_000;
            v += ((d as i128 * 31 + i as i128 * 17) % 500 + 1) * 1_000_000;
            for (channel, kind, value) in [
                ("energy_import", "counter", v),
                ("power", "gauge", (i as i128 % 40) * 1_000_000_000),
            ] {
                rows.push(Raw {
                    device: device.clone(),
                    channel: channel.into(),
                    kind,
                    seq: (i * 2 + (kind == "gauge") as i64) as u64 + 1,
                    ts,
                    value,
                    quality: "",
                    received_at: ts + 2_000_000,
                });
            }
        }
    }
    rows
}

fn config(dir: &Path) -> std::path::PathBuf {
    let conf = dir.join("aggregator.toml");
    std::fs::write(
        &conf,
        format!(
            "data_root = \"{}\"\nallowed_lateness = \"1h\"\ndefault_register_max = \"999999999\"\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    conf
}

fn aggregator(conf: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gridmeter-aggregator"));
    c.arg("--config")
        .arg(conf)
        .arg("run")
        .args(args)
        .envs(env.iter().copied());
    c.env("RUST_LOG", "warn");
    c
}

fn run(conf: &Path, args: &[&str]) -> String {
    let out = aggregator(conf, args, &[]).output().unwrap();
    assert!(
        out.status.success(),
        "aggregator {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Three shard processes at once.
fn run_shards(conf: &Path) {
    let children: Vec<_> = (0..3)
        .map(|i| {
            aggregator(conf, &["--shard", &format!("{i}/3")], &[])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "shard: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The rows of a table (all columns but computed_at), sorted, read by the deltalake package.
fn rows(data: &Path, table: &str) -> String {
    let script = format!(
        "from deltalake import DeltaTable\nimport os, sys\nt = DeltaTable({:?}).to_pandas().drop(columns=['computed_at'])\n\
         t = t.sort_values(list(t.columns)).astype(str)\nprint(len(t))\nprint(t.to_csv(index=False))\nsys.stdout.flush()\nos._exit(0)\n",
        data.join(table).display().to_string()
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .expect("python3 with deltalake");
    assert!(
        out.status.success(),
        "deltalake: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

const TABLES: [&str; 6] = [
    "usage_15m",
    "usage_history_15m",
    "usage_1h",
    "usage_history_1h",
    "usage_1d",
    "usage_history_1d",
];

#[test]
fn three_shards_at_once_equal_one_unsharded_run() {
    let (one, three) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut raw = readings();
    // Late readings of three meters arrive after the first runs.
    let late: Vec<Raw> = raw
        .iter()
        .filter(|r| {
            r.ts > T0 + DAY / 2 && r.ts < T0 + DAY / 2 + MIN15 && r.device.as_str() < "meter-03"
        })
        .cloned()
        .collect();
    raw.retain(|r| !late.contains(r));
    for dir in [one.path(), three.path()] {
        write_raw(&dir.join("data"), "c1-0", &raw);
    }
    let (c1, c3) = (config(one.path()), config(three.path()));
    run(&c1, &[]);
    run_shards(&c3);
    for t in TABLES {
        let (a, b) = (
            rows(&one.path().join("data"), t),
            rows(&three.path().join("data"), t),
        );
        assert!(
            a.lines().next().unwrap().parse::<usize>().unwrap() > 0,
            "{t} is empty"
        );
        assert_eq!(a, b, "{t}: sharded differs from unsharded");
    }
    // The late readings: revisions, again equal.
    for dir in [one.path(), three.path()] {
        write_raw(&dir.join("data"), "c1-1", &late);
    }
    assert!(run(&c1, &[]).contains("revisions {\"15m\":"));
    run_shards(&c3);
    for t in TABLES {
        assert_eq!(
            rows(&one.path().join("data"), t),
            rows(&three.path().join("data"), t),
            "{t} after late data: sharded differs from unsharded"
        );
    }
    // Each shard kept its own state.
    for i in 0..3 {
        assert!(three
            .path()
            .join(format!("data/_state/aggregator-shard-{i}-of-3.json"))
            .exists());
    }
}

#[test]
fn kill_9_between_history_and_current_commit_is_completed_by_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut raw = readings();
    let late = raw.remove(
        raw.iter()
            .position(|r| r.device == "meter-05" && r.ts > T0 + DAY / 2)
            .unwrap(),
    );
    write_raw(&data, "c1-0", &raw);
    let conf = config(dir.path());
    run(&conf, &[]);
    let before = rows(&data, "usage_15m");
    write_raw(&data, "c1-1", std::slice::from_ref(&late));
    // The run that revises the late reading's windows dies after its first history commit.
    let out = aggregator(
        &conf,
        &[],
        &[("GRIDMETER_CRASH_AT", "aggregator_after_history_commit")],
    )
    .output()
    .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(9),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Readers see the current table as it was; history holds the new revisions once.
    assert_eq!(
        rows(&data, "usage_15m"),
        before,
        "no half state in the current table"
    );
    let history = rows(&data, "usage_history_15m");
    assert!(history.contains(",2,"), "the revision is in history");
    // The next run completes the commit, and redoes nothing twice.
    let summary = run(&conf, &[]);
    assert!(
        summary.contains("recovered {\"15m\": 2}"),
        "run 2 completed: {summary}"
    );
    let after = rows(&data, "usage_15m");
    assert_ne!(after, before);
    assert!(after.contains(",2,"), "current holds the revision");
    assert_eq!(
        rows(&data, "usage_history_15m"),
        history,
        "history unchanged: nothing twice"
    );
    // Current equals the latest revision of every key in history, checked by DuckDB.
    let check = format!(
        "import duckdb\nfrom deltalake import DeltaTable\nh = DeltaTable({h:?}).to_pyarrow_table()\nc = DeltaTable({c:?}).to_pyarrow_table()\n\
         print(duckdb.sql(\"SELECT count(*) FROM (SELECT device_id, channel, window_start, max(revision) r FROM h GROUP BY ALL) x \
         FULL JOIN c USING (device_id, channel, window_start) WHERE x.r IS DISTINCT FROM c.revision\").fetchall()[0][0])\n\
         print(duckdb.sql(\"SELECT count(*) - count(DISTINCT (device_id, channel, window_start, revision)) FROM h\").fetchall()[0][0])\n\
         import os, sys\nsys.stdout.flush()\nos._exit(0)\n",
        h = data.join("usage_history_15m").display().to_string(),
        c = data.join("usage_15m").display().to_string()
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(check)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0\n0",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
