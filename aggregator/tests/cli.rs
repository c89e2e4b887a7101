//! The binary reports a bad config's problem list once and exits 2, without a backtrace
//! even when RUST_BACKTRACE asks for one.

use std::process::Command;

#[test]
fn config_problems_are_printed_once_without_a_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("aggregator.toml");
    std::fs::write(&conf, "bogus_key = 1\nwindows = [\"15m\"]\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gridmeter-aggregator"))
        .args(["--config", &conf.display().to_string(), "run"])
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LIB_BACKTRACE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("has 2 problems"), "{stderr}");
    assert_eq!(stderr.matches("- bogus_key:").count(), 1, "{stderr}");
    assert_eq!(stderr.matches("- data_root:").count(), 1, "{stderr}");
    assert!(!stderr.to_lowercase().contains("backtrace"), "{stderr}");
}
