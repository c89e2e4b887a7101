//! Dead-letter retention through the binary: `deadletter prune --older-than 90d` removes
//! the partitions received more than 90 days ago, and nothing else, from the Delta table.

use std::process::Command;

use gridmeter_core::store::DataRoot;
use gridmeter_core::testkit::Pki;
use gridmeter_tables::deadletter::{self, DeadRow};
use gridmeter_tables::parquet_io::Profile;
use gridmeter_tables::Root;

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_removes_old_dead_letter_partitions_only() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), &[]).unwrap();
    let data = dir.path().join("data");
    let today = chrono::Utc::now().date_naive();
    let day = |n: u64| today - chrono::Days::new(n);
    let root = Root::open(&DataRoot::Local(data.clone())).unwrap();
    let table = deadletter::open(&root).await.unwrap();
    for (i, n) in [400u64, 92, 91, 90, 1, 0].into_iter().enumerate() {
        let at = day(n)
            .and_hms_opt(12, 0, 0)
            .unwrap()
            .and_utc()
            .timestamp_micros();
        let rows = [DeadRow {
            received_at_us: at,
            topic: "gridmeter/v1/x/readings".into(),
            reason: "bad_json".into(),
            detail: format!("{n} days old"),
            payload: bytes::Bytes::from_static(b"{"),
        }];
        let files = deadletter::plan(&format!("c1-{n:016}"), &rows).unwrap();
        table
            .append_once("collector/c1", i as i64 + 1, files, Profile::Standard, "")
            .await
            .unwrap();
    }
    let conf = dir.path().join("collector.toml");
    std::fs::write(
        &conf,
        format!(
            "collector_id = \"c1\"\ndata_root = \"{}\"\nwal_dir = \"{}\"\n[embedded]\npki_dir = \"{}\"\n",
            data.display(),
            dir.path().join("wal").display(),
            pki.dir().display()
        ),
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_gridmeter-collector"))
            .arg("--config")
            .arg(&conf)
            .args(["deadletter", "prune", "--older-than", "90d"])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    // The details left in the table, read by the Python deltalake package.
    let left = || {
        common::python(&format!(
            "{}\nt = table({:?}, 'deadletter')\nprint(sorted(t.column('detail').to_pylist()) if t is not None else [])",
            common::READ_TABLE,
            data.display().to_string()
        ))
    };
    let all = left();
    let dry = run(&["--dry-run"]);
    assert!(
        dry.contains("would remove 3 partitions (3 files); kept 3"),
        "{dry}"
    );
    assert_eq!(left(), all, "a dry run removes nothing");
    let out = run(&[]);
    assert!(
        out.contains(&format!("removed deadletter/date={}/", day(400))),
        "{out}"
    );
    assert!(
        out.contains("removed 3 partitions (3 files); kept 3"),
        "{out}"
    );
    assert_eq!(left(), "['0 days old', '1 days old', '90 days old']");
    assert!(run(&[]).contains("removed 0 partitions"));
}
