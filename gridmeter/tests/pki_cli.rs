//! `gridmeter pki` as an operator runs it: roles it cannot confuse, names that cannot escape
//! the directory, private keys 0600 from creation whatever the umask, no writing through
//! planted symlinks, renewal with the same name, revocation that OpenSSL (what Mosquitto
//! uses) honours, and errors printed once without a backtrace.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn gridmeter(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gridmeter"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LIB_BACKTRACE", "1")
        .output()
        .unwrap()
}

/// Runs `gridmeter pki <args> --dir <dir>` with umask 000, so nothing is protected by the
/// umask: modes come from the tool alone.
fn pki(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = format!("umask 000; exec '{}' pki", env!("CARGO_BIN_EXE_gridmeter"));
    for a in args {
        cmd.push_str(&format!(" '{a}'"));
    }
    cmd.push_str(&format!(" --dir '{}'", dir.display()));
    Command::new("sh")
        .args(["-c", &cmd])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn failed(out: Output) -> String {
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!stderr.to_lowercase().contains("backtrace"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    stderr
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

/// `openssl verify -crl_check`: what Mosquitto's TLS (OpenSSL) decides about `cert`.
fn verify(dir: &Path, cert: &Path) -> String {
    let out = Command::new("openssl")
        .args(["verify", "-crl_check", "-CAfile"])
        .arg(dir.join("ca.crt"))
        .arg("-CRLfile")
        .arg(dir.join("crl.pem"))
        .arg(cert)
        .output()
        .expect("openssl");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn roles_and_names_cannot_be_confused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    ok(pki(&dir, &["init", "--device", "dev-1"]));
    let before = files(&dir);
    for name in [
        "collector",
        "collector-1",
        "Collector-9",
        "gridmeter-broker",
    ] {
        let e = failed(pki(&dir, &["device", name]));
        assert!(e.contains("reserved") || e.contains("broker's name"), "{e}");
        let e = failed(pki(&dir, &["client", name]));
        assert!(e.contains("reserved") || e.contains("broker's name"), "{e}");
    }
    for name in ["../evil", "a/b", "..", ".hidden", "x y"] {
        let e = failed(pki(&dir, &["client", name]));
        assert!(e.contains(name) || e.contains("start with"), "{e}");
        failed(pki(&dir, &["device", name]));
        failed(pki(&dir, &["collector", name]));
    }
    assert_eq!(files(&dir), before, "a refused name created a file");
    assert!(!tmp.path().join("evil.crt").exists());
    // The right command issues the collector, with its role in the certificate.
    let out = ok(pki(&dir, &["collector", "1"]));
    assert!(out.contains("collectors/collector-1.crt"), "{out}");
    let info =
        gridmeter_core::tls::certificate_info(&dir.join("collectors/collector-1.crt"), "collector")
            .unwrap();
    assert_eq!(info.organizational_unit.as_deref(), Some("collector"));
    // Issuing twice refuses to overwrite.
    let e = failed(pki(&dir, &["device", "dev-1"]));
    assert!(e.contains("already exists") && e.contains("renew"), "{e}");
}

#[test]
fn keys_are_0600_from_creation_and_symlinks_are_not_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    ok(pki(
        &dir,
        &["init", "--device", "dev-1", "--collector", "2"],
    ));
    ok(pki(&dir, &["client", "ops-tool"]));
    let all = files(&dir);
    let keys: Vec<&PathBuf> = all
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "key"))
        .collect();
    assert_eq!(keys.len(), 5, "{all:?}"); // ca, server, collector-2, dev-1, ops-tool
    for k in &keys {
        assert_eq!(mode(k), 0o600, "{}", k.display());
    }
    for p in &all {
        assert_eq!(
            mode(p) & 0o022,
            0,
            "{} is group/world writable",
            p.display()
        );
    }
    for d in ["", "devices", "collectors", "clients"] {
        assert_eq!(
            mode(&dir.join(d)) & 0o022,
            0,
            "{d}/ is group/world writable"
        );
    }

    // A key path planted as a symlink to a file elsewhere: refused, the target untouched.
    let target = tmp.path().join("victim");
    std::fs::write(&target, "precious").unwrap();
    std::os::unix::fs::symlink(&target, dir.join("devices/dev-2.key")).unwrap();
    let e = failed(pki(&dir, &["device", "dev-2"]));
    assert!(
        e.contains("dev-2.key") && e.contains("already exists"),
        "{e}"
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
    assert!(!dir.join("devices/dev-2.crt").exists());

    // Renewal replaces the files (never writing through a link) and keeps the key 0600.
    let key = dir.join("devices/dev-1.key");
    std::fs::remove_file(&key).unwrap();
    std::os::unix::fs::symlink(&target, &key).unwrap();
    ok(pki(&dir, &["renew", "dev-1"]));
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
    assert!(std::fs::symlink_metadata(&key).unwrap().is_file());
    assert_eq!(mode(&key), 0o600);
}

#[test]
fn renew_keeps_the_name_and_revoke_is_honoured_by_openssl() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    ok(pki(
        &dir,
        &[
            "init",
            "--device",
            "dev-1",
            "--device",
            "dev-2",
            "--server-name",
            "broker.example",
        ],
    ));
    // Rerunning init keeps everything (compose runs it at every start).
    let ca = std::fs::read(dir.join("ca.crt")).unwrap();
    ok(pki(&dir, &["init", "--device", "dev-1"]));
    assert_eq!(std::fs::read(dir.join("ca.crt")).unwrap(), ca);

    let cert = |n: &str| dir.join(format!("devices/{n}.crt"));
    let info = |p: &Path| gridmeter_core::tls::certificate_info(p, "c").unwrap();
    let old = info(&cert("dev-1"));
    std::fs::copy(cert("dev-1"), tmp.path().join("old-dev-1.crt")).unwrap();
    let out = ok(pki(&dir, &["renew", "--days", "30", "dev-1"]));
    let new = info(&cert("dev-1"));
    assert!(out.contains(&new.serial), "{out}");
    assert_eq!(new.common_name, old.common_name);
    assert_eq!(new.organizational_unit, old.organizational_unit);
    assert_ne!(new.serial, old.serial);
    assert!(new.not_after < old.not_after); // 30 days instead of 825
                                            // Both verify until the old one is revoked.
    assert!(verify(&dir, &tmp.path().join("old-dev-1.crt")).contains(": OK"));
    ok(pki(&dir, &["renew", "--revoke-old", "dev-1"]));
    assert!(verify(&dir, &tmp.path().join("old-dev-1.crt")).contains("certificate revoked"));
    assert!(verify(&dir, &cert("dev-1")).contains(": OK"));

    let out = ok(pki(
        &dir,
        &["revoke", "--reason", "key-compromise", "dev-2"],
    ));
    assert!(out.contains(&info(&cert("dev-2")).serial), "{out}");
    assert!(verify(&dir, &cert("dev-2")).contains("certificate revoked"));
    assert!(verify(&dir, &cert("dev-1")).contains(": OK"));
    let e = failed(pki(&dir, &["revoke", "nobody"]));
    assert!(e.contains("never issued"), "{e}");

    let list = ok(pki(&dir, &["list"]));
    assert!(
        list.lines()
            .any(|l| l.contains("\tdev-2\t") && l.contains("revoked")),
        "{list}"
    );
    assert_eq!(
        list.lines()
            .filter(|l| l.contains("\tdev-1\t") && l.ends_with("valid"))
            .count(),
        1,
        "{list}"
    );
    // The broker certificate keeps its names when renewed.
    ok(pki(&dir, &["renew", "--server"]));
    assert_eq!(
        gridmeter_core::pki::server_names(&dir.join("server.crt")).unwrap(),
        vec!["broker.example".to_string()]
    );
    // Re-signing the CRL keeps its revocations.
    ok(pki(&dir, &["crl", "--days", "7"]));
    assert!(verify(&dir, &cert("dev-2")).contains("certificate revoked"));
}

#[test]
fn errors_are_one_line_without_a_backtrace() {
    let tmp = tempfile::tempdir().unwrap();
    let out = gridmeter(&[
        "pki",
        "device",
        "--dir",
        &tmp.path().join("missing").display().to_string(),
        "dev-1",
    ]);
    let e = failed(out);
    assert!(e.starts_with("gridmeter: ") && e.contains("ca.crt"), "{e}");
}
