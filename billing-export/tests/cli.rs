//! The binary reports a bad config's problems once, without a backtrace even when
//! RUST_BACKTRACE asks for one.

use std::process::Command;

#[test]
fn config_problems_are_printed_once_without_a_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("billing.toml");
    std::fs::write(&conf, "bogus_key = 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gridmeter-billing"))
        .args([
            "run",
            "--config",
            &conf.display().to_string(),
            "--period",
            "2026-10",
        ])
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LIB_BACKTRACE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("gridmeter-billing: "), "{stderr}");
    assert_eq!(stderr.matches("- bogus_key:").count(), 1, "{stderr}");
    assert!(!stderr.to_lowercase().contains("backtrace"), "{stderr}");
}
