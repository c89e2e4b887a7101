//! The certificate lifecycle on the collector's side, against the shipped Mosquitto: a
//! renewed certificate is presented at the next reconnect without a restart (and its expiry
//! is on /metrics), and every certificate problem is reported with what is wrong and how to
//! fix it: an X.509 v1 certificate, a wrong CA, an expired certificate (the broker's, or this
//! client's, which is still loaded so that the process keeps running until it is renewed),
//! a key that does not match. The binary prints a config's problem list once, with no
//! backtrace.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::*;
use gridmeter_collector::CollectorConfig;
use gridmeter_core::pki::{Identity, PkiDir};
use gridmeter_core::testkit::Pki;
use gridmeter_core::tls::{certificate_info, ClientTls, TlsFiles};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, TlsConfiguration, Transport};

const EXPIRY: &str = "gridmeter_tls_certificate_expiry_timestamp_seconds";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (Debian package openssl)");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

/// What `openssl x509 -req` without `-extfile` makes: an X.509 v1 certificate for the key
/// `key` (relative to `dir`, the PKI directory) with subject `subject`, signed by the CA.
fn v1_certificate(dir: &Path, key: &str, subject: &str, out: &str) {
    openssl(
        dir,
        &[
            "req", "-new", "-key", key, "-subj", subject, "-out", "v1.csr",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "v1.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-set_serial",
            "4242",
            "-days",
            "30",
            "-out",
            out,
        ],
    );
    let info = certificate_info(&dir.join(out), "test certificate").unwrap();
    assert_eq!(
        info.version, 1,
        "openssl made a v{} certificate",
        info.version
    );
}

/// Connects with `tls` until the connection fails; returns the explained error.
async fn connect_error(port: u16, tls: &ClientTls) -> String {
    let mut o = MqttOptions::new("probe", "127.0.0.1", port);
    o.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls.config())));
    let (_client, mut el) = AsyncClient::new(o, 10);
    loop {
        match tokio::time::timeout(Duration::from_secs(20), el.poll())
            .await
            .expect("a connection result within 20 s")
        {
            Ok(Event::Incoming(Packet::ConnAck(_))) => panic!("connected"),
            Ok(_) => {}
            Err(e) => {
                let m = tls.explain(&e);
                eprintln!("connection error: {m}");
                return m;
            }
        }
    }
}

fn load_error(files: &TlsFiles) -> String {
    match files.load() {
        Ok(_) => panic!("{} loaded", files.cert.display()),
        Err(e) => {
            eprintln!("load error: {e}");
            e.to_string()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_presented_at_the_next_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), &["dev-r"]).unwrap();
    let mut broker = Broker::start(&pki);
    let data = dir.path().join("data");
    let mut cfg = CollectorConfig::new("r1", data.clone(), dir.path().join("wal"));
    cfg.mqtt.host = Some("127.0.0.1".into());
    cfg.mqtt.port = broker.port;
    cfg.mqtt.tls = Some(pki.collector());
    cfg.flush_interval_ms = 200;
    let registry = prometheus::Registry::new();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(gridmeter_collector::run(cfg, registry.clone(), async {
        let _ = rx.await;
    }));
    wait_gauge(&registry, "gridmeter_collector_connected", 1.0).await;
    let files = pki.collector();
    let old = certificate_info(&files.cert, "collector").unwrap();
    assert_eq!(
        metric(&registry, EXPIRY),
        Some(old.not_after.timestamp() as f64)
    );

    let received = |n: f64| {
        let registry = registry.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while counter(&registry, "gridmeter_collector_messages_received_total") < n {
                assert!(Instant::now() < deadline, "message {n} never arrived");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let port = broker.port;
    let send = |seqs: std::ops::RangeInclusive<u64>| {
        let tls = pki.device("dev-r");
        async move {
            let mut p = Publisher::connect(port, "dev-r", &tls);
            p.publish_batch(&batch("dev-r", seqs)).await;
            p.wait_acked(Duration::from_secs(30)).await;
            p.close().await;
        }
    };
    send(1..=10).await;
    received(1.0).await;

    // Renew (new key, same CN) and revoke the old certificate; keep a copy of the old files.
    std::fs::copy(&files.cert, dir.path().join("old.crt")).unwrap();
    std::fs::copy(&files.key, dir.path().join("old.key")).unwrap();
    let who = Identity::collector("0").unwrap();
    let new = pki.renew(&who, 30);
    assert_eq!(pki.revoke_superseded(&who), vec![old.serial.clone()]);
    // A broker restart drops the connection and loads the CRL: from now on the old
    // certificate is refused, so only the renewed one can get the collector back in.
    broker.restart();
    send(11..=20).await;
    received(2.0).await;
    assert_eq!(
        metric(&registry, EXPIRY),
        Some(new.not_after.timestamp() as f64),
        "the expiry gauge shows the renewed certificate"
    );
    assert_ne!(new.not_after, old.not_after);
    // The old certificate really is refused now (so the collector did present the new one).
    let old_files = TlsFiles {
        ca: files.ca.clone(),
        cert: dir.path().join("old.crt"),
        key: dir.path().join("old.key"),
    };
    let old_tls = ClientTls::load(old_files, None).unwrap();
    let refused = connect_error(broker.port, &old_tls).await;
    assert!(refused.contains("is revoked"), "{refused}");

    tx.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(raw_counts(&data), (20, 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_brokers_certificate_problems_are_explained() {
    let dir = tempfile::tempdir().unwrap();

    // A broker whose certificate is X.509 v1 (the classic `openssl x509 -req`).
    let v1 = Pki::new(&dir.path().join("v1"), &[]).unwrap();
    v1_certificate(v1.dir(), "server.key", "/CN=localhost", "server-v1.crt");
    std::fs::copy(v1.dir().join("server-v1.crt"), v1.server_cert()).unwrap();
    let broker = Broker::start(&v1);
    let tls = ClientTls::load(v1.collector(), None).unwrap();
    let m = connect_error(broker.port, &tls).await;
    assert!(
        m.contains("the broker's certificate")
            && m.contains("X.509 v1")
            && m.contains("-extfile")
            && m.contains("gridmeter pki renew --server"),
        "{m}"
    );
    assert!(!m.contains("UnsupportedCertVersion"), "{m}");
    drop(broker);

    // A broker whose certificate has expired.
    let old = Pki::new(&dir.path().join("expired"), &[]).unwrap();
    let now = Utc::now();
    let issued = PkiDir::open(old.dir())
        .unwrap()
        .ca()
        .issue_window(
            &Identity::server(&[]),
            now - chrono::Duration::days(400),
            now - chrono::Duration::days(3),
            None,
        )
        .unwrap();
    std::fs::write(old.server_cert(), &issued.cert_pem).unwrap();
    std::fs::write(old.server_key(), &issued.key_pem).unwrap();
    let broker = Broker::start(&old);
    let tls = ClientTls::load(old.collector(), None).unwrap();
    let m = connect_error(broker.port, &tls).await;
    assert!(
        m.contains("the broker's certificate")
            && m.contains("expired at")
            && m.contains("3 days ago")
            && m.contains("gridmeter pki renew --server"),
        "{m}"
    );
    drop(broker);

    // A client that trusts another CA than the one that issued the broker's certificate.
    let pki = Pki::new(&dir.path().join("pki"), &[]).unwrap();
    let other = Pki::new(&dir.path().join("other"), &[]).unwrap();
    let broker = Broker::start(&pki);
    let wrong_ca = TlsFiles {
        ca: other.ca_cert(),
        ..pki.collector()
    };
    let tls = ClientTls::load(wrong_ca, None).unwrap();
    let m = connect_error(broker.port, &tls).await;
    assert!(
        m.contains("is not signed by the CA in")
            && m.contains(&other.ca_cert().display().to_string())
            && m.contains("mqtt.tls.ca"),
        "{m}"
    );

    // This client's certificate has expired: the broker refuses it and the client says so.
    let expired = ClientTls::load(expired_collector(&pki, dir.path()), None).unwrap();
    let m = connect_error(broker.port, &expired).await;
    assert!(
        m.contains("the broker refused this client's certificate")
            && m.contains("expired at")
            && m.contains("gridmeter pki renew --collector collector-0"),
        "{m}"
    );

    // A client certificate from another CA: the broker refuses it and the client says so.
    let foreign = ClientTls::load(
        TlsFiles {
            ca: pki.ca_cert(),
            ..other.collector()
        },
        None,
    )
    .unwrap();
    let m = connect_error(broker.port, &foreign).await;
    assert!(
        m.contains("the broker refused this client's certificate")
            && m.contains(&other.collector().cert.display().to_string()),
        "{m}"
    );
}

#[test]
fn this_clients_certificate_problems_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), &["dev-a", "dev-b"]).unwrap();
    let good = pki.collector();
    good.load().unwrap();

    // Expired: loaded all the same (an agent keeps buffering until the renewal arrives),
    // and reported.
    let expired = expired_collector(&pki, dir.path());
    let m = expired
        .load()
        .unwrap()
        .cert
        .validity_problem()
        .expect("an expired certificate has a validity problem");
    assert!(
        m.contains("expired at")
            && m.contains("2 days ago")
            && m.contains("gridmeter pki renew --collector collector-0"),
        "{m}"
    );
    assert_eq!(good.load().unwrap().cert.validity_problem(), None);

    // X.509 v1.
    v1_certificate(
        pki.dir(),
        "collectors/collector-0.key",
        "/CN=collector-0/OU=collector",
        "collector-v1.crt",
    );
    let v1 = TlsFiles {
        cert: pki.dir().join("collector-v1.crt"),
        ..good.clone()
    };
    let m = load_error(&v1);
    assert!(
        m.contains("X.509 v1") && m.contains("-extfile") && m.contains("gridmeter pki renew"),
        "{m}"
    );

    // A key that belongs to another certificate.
    let mismatch = TlsFiles {
        key: pki.device("dev-b").key,
        ..pki.device("dev-a")
    };
    let m = load_error(&mismatch);
    assert!(
        m.contains("does not belong to the client certificate")
            && m.contains(&mismatch.key.display().to_string())
            && m.contains("dev-a"),
        "{m}"
    );

    // The config check files each under its key.
    let mut cfg = CollectorConfig::new("c1", dir.path().join("d"), dir.path().join("w"));
    cfg.mqtt.host = Some("127.0.0.1".into());
    for (files, key, what) in [
        (v1, "mqtt.tls.cert", "X.509 v1"),
        (mismatch, "mqtt.tls.key", "does not belong"),
        (
            pki.device("dev-a"),
            "mqtt.tls.cert",
            "not a collector certificate",
        ),
    ] {
        cfg.mqtt.tls = Some(files);
        let mut p = gridmeter_core::config::Problems::new();
        gridmeter_core::config::Validate::validate(&cfg, &mut p);
        let all: Vec<&str> = p.iter().collect();
        assert!(
            all.iter().any(|l| l.starts_with(key) && l.contains(what)),
            "{key} {what}: {all:?}"
        );
    }
    // An expired certificate is no config problem: the process starts and keeps retrying.
    cfg.mqtt.tls = Some(expired);
    let mut p = gridmeter_core::config::Problems::new();
    gridmeter_core::config::Validate::validate(&cfg, &mut p);
    assert!(p.is_empty(), "{:?}", p.iter().collect::<Vec<_>>());
}

/// A collector-0 certificate that expired yesterday, in `dir`.
fn expired_collector(pki: &Pki, dir: &Path) -> TlsFiles {
    let ca = PkiDir::open(pki.dir()).unwrap();
    let now = Utc::now();
    let issued = ca
        .ca()
        .issue_window(
            &Identity::collector("0").unwrap(),
            now - chrono::Duration::days(30),
            now - chrono::Duration::days(2),
            None,
        )
        .unwrap();
    let files = TlsFiles {
        ca: pki.ca_cert(),
        cert: dir.join("expired.crt"),
        key: dir.join("expired.key"),
    };
    issued.write_to(&files.cert, &files.key).unwrap();
    files
}

#[test]
fn the_binary_prints_config_problems_once_without_a_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), &["dev-a"]).unwrap();
    // A device's certificate where the collector's belongs, and an unknown key.
    let tls = pki.device("dev-a");
    let conf = dir.path().join("collector.toml");
    std::fs::write(
        &conf,
        format!(
            "collector_id = \"c1\"\ndata_root = \"{}\"\nwal_dir = \"{}\"\nbogus_key = 1\n[mqtt]\nhost = \"127.0.0.1\"\ntls = {{ ca = \"{}\", cert = \"{}\", key = \"{}\" }}\n",
            dir.path().join("data").display(),
            dir.path().join("wal").display(),
            tls.ca.display(),
            tls.cert.display(),
            tls.key.display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gridmeter-collector"))
        .args(["--config", &conf.display().to_string()])
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LIB_BACKTRACE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.matches("- bogus_key:").count(), 1, "{stderr}");
    assert_eq!(stderr.matches("- mqtt.tls.cert:").count(), 1, "{stderr}");
    assert_eq!(
        stderr.matches("not a collector certificate").count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("has 2 problems"), "{stderr}");
    assert!(!stderr.to_lowercase().contains("backtrace"), "{stderr}");
}
