//! Dead-letter retention through the binary: `deadletter prune --older-than 90d` deletes
//! the partitions received more than 90 days ago and nothing else.

use std::process::Command;

use gridmeter_core::testkit::Pki;

#[test]
fn prune_deletes_old_dead_letter_partitions_only() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), &[]).unwrap();
    let data = dir.path().join("data");
    let today = chrono::Utc::now().date_naive();
    let day = |n: u64| today - chrono::Days::new(n);
    let mut files = Vec::new();
    for n in [400, 92, 91, 90, 1, 0] {
        let p = data.join(format!("deadletter/date={}/c1-{n:016}.parquet", day(n)));
        files.push((n, p));
    }
    let raw = data.join(format!("raw/date={}/c1-0-0.parquet", day(400)));
    for p in files.iter().map(|(_, p)| p).chain([&raw]) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"PAR1").unwrap();
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
    let dry = run(&["--dry-run"]);
    assert!(
        dry.contains("would delete 3 partitions (3 files); kept 3"),
        "{dry}"
    );
    assert!(
        files.iter().all(|(_, p)| p.exists()),
        "a dry run deletes nothing"
    );
    let out = run(&[]);
    assert!(
        out.contains(&format!("deleted deadletter/date={}/", day(400))),
        "{out}"
    );
    assert!(
        out.contains("deleted 3 partitions (3 files); kept 3"),
        "{out}"
    );
    for (n, p) in &files {
        assert_eq!(p.exists(), *n <= 90, "{n} days old: {}", p.display());
    }
    assert!(raw.exists(), "only dead letters are pruned");
    assert!(run(&[]).contains("deleted 0 partitions"));
}
