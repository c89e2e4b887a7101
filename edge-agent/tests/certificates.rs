//! The agent's certificate, against a real Mosquitto (mTLS, CRL, ACL): a renewed
//! certificate is presented at the next reconnect without a restart, its expiry is on
//! /metrics, an expired one does not stop the agent from buffering (and its renewal is
//! picked up without a restart), a certificate that is not this device's is refused at
//! start-up, and the binary prints a config's problem list once, with no backtrace.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{agent_config, agent_toml, metric, subscribe, virtual_meter, wait_for};
use gridmeter_core::pki::Identity;
use gridmeter_core::testkit::{free_port, Mosquitto, MosquittoOptions, Pki};
use gridmeter_core::tls::certificate_info;
use gridmeter_core::DeviceId;
use prometheus::Registry;

const EXPIRY: &str = "gridmeter_tls_certificate_expiry_timestamp_seconds";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_presented_at_the_next_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), &["meter-r"]).unwrap();
    let mut broker = Mosquitto::start(&pki, MosquittoOptions::default()).unwrap();
    let sub = subscribe(&pki, broker.port()).await;

    let mut cfg = agent_config(&pki, "meter-r", broker.port(), &dir.path().join("b.sqlite"));
    // 200 steps at 40 steps/s: 400 readings over ~5 s, most of them after the renewal.
    cfg.sources = vec![virtual_meter(200, Some(60.0 * 40.0))];
    let total = 400;
    let files = cfg.mqtt.tls.clone();
    let registry = Registry::new();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(gridmeter_agent::run(cfg, registry.clone(), async {
        let _ = stop_rx.await;
    }));
    wait_for(Duration::from_secs(60), "first readings", || {
        sub.seen.lock().unwrap().readings().count() > 20
    })
    .await;
    let old = certificate_info(&files.cert, "device").unwrap();
    assert_eq!(
        metric(&registry, EXPIRY, Some(("component", "agent"))),
        old.not_after.timestamp() as f64
    );

    // Renew the device's certificate in place and revoke the old one; keep its files.
    let old_cert = dir.path().join("old.crt");
    let old_key = dir.path().join("old.key");
    std::fs::copy(&files.cert, &old_cert).unwrap();
    std::fs::copy(&files.key, &old_key).unwrap();
    let who = Identity::device(&DeviceId::new("meter-r").unwrap()).unwrap();
    let new = pki.renew(&who, 30);
    assert_eq!(pki.revoke_superseded(&who), vec![old.serial.clone()]);
    // The restart drops the agent's connection and makes the broker load the CRL: the old
    // certificate cannot connect any more, so every reading from now on travels over a
    // connection made with the renewed one.
    broker.restart().unwrap();
    let before = sub.seen.lock().unwrap().dedup().len();
    assert!(
        before < total,
        "everything was delivered before the renewal"
    );
    wait_for(Duration::from_secs(120), "every reading delivered", || {
        sub.seen.lock().unwrap().dedup().len() == total
    })
    .await;
    assert_eq!(
        metric(&registry, EXPIRY, Some(("component", "agent"))),
        new.not_after.timestamp() as f64,
        "the expiry gauge shows the renewed certificate"
    );
    assert!(metric(&registry, "gridmeter_agent_reconnects_total", None) >= 1.0);
    stop_tx.send(()).unwrap();
    agent.await.unwrap().unwrap();

    // The broker does refuse the old certificate.
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port().to_string()])
        .args(["-t", "gridmeter/v1/meter-r/readings", "-m", "x", "-q", "1"])
        .arg("--cafile")
        .arg(&files.ca)
        .arg("--cert")
        .arg(&old_cert)
        .arg("--key")
        .arg(&old_key)
        .output()
        .unwrap();
    assert!(!out.status.success(), "the revoked certificate connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_does_not_stop_the_agent_and_its_renewal_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), &["meter-x"]).unwrap();
    let broker = Mosquitto::start(&pki, MosquittoOptions::default()).unwrap();
    let sub = subscribe(&pki, broker.port()).await;
    // The device's certificate expired yesterday.
    let who = Identity::device(&DeviceId::new("meter-x").unwrap()).unwrap();
    let (crt, key) = who.paths(pki.dir());
    let now = chrono::Utc::now();
    gridmeter_core::pki::PkiDir::open(pki.dir())
        .unwrap()
        .ca()
        .issue_window(
            &who,
            now - chrono::Duration::days(30),
            now - chrono::Duration::days(1),
            None,
        )
        .unwrap()
        .replace(&crt, &key)
        .unwrap();
    let expired = certificate_info(&crt, "device").unwrap();

    let mut cfg = agent_config(&pki, "meter-x", broker.port(), &dir.path().join("b.sqlite"));
    cfg.sources = vec![virtual_meter(100, None)];
    let total = 200;
    let registry = Registry::new();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(gridmeter_agent::run(cfg, registry.clone(), async {
        let _ = stop_rx.await;
    }));
    // It runs and buffers; the broker refuses the certificate.
    wait_for(Duration::from_secs(60), "readings buffered", || {
        metric(&registry, "gridmeter_agent_buffer_rows", None) == total as f64
    })
    .await;
    assert_eq!(metric(&registry, "gridmeter_agent_connected", None), 0.0);
    assert_eq!(
        metric(&registry, EXPIRY, Some(("component", "agent"))),
        expired.not_after.timestamp() as f64,
        "the gauge shows the expired certificate (the alert fires)"
    );
    assert!(sub.seen.lock().unwrap().readings().next().is_none());

    // Renewed files: the next connection attempt presents them and the backlog drains.
    let renewed = pki.renew(&who, 30);
    wait_for(Duration::from_secs(60), "every reading delivered", || {
        sub.seen.lock().unwrap().dedup().len() == total
    })
    .await;
    assert_eq!(
        metric(&registry, EXPIRY, Some(("component", "agent"))),
        renewed.not_after.timestamp() as f64
    );
    stop_tx.send(()).unwrap();
    agent.await.unwrap().unwrap();
}

#[test]
fn a_certificate_that_is_not_this_devices_is_refused_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), &["meter-a", "meter-b"]).unwrap();
    let check = |tls| {
        let mut cfg = agent_config(&pki, "meter-a", 8883, &dir.path().join("b.sqlite"));
        cfg.mqtt.tls = tls;
        cfg.sources = vec![virtual_meter(10, None)];
        let mut p = gridmeter_core::config::Problems::new();
        gridmeter_core::config::Validate::validate(&cfg, &mut p);
        p.iter().map(String::from).collect::<Vec<_>>().join("\n")
    };
    assert_eq!(check(pki.device("meter-a")), "");
    let other = check(pki.device("meter-b"));
    assert!(
        other.starts_with("mqtt.tls.cert:")
            && other.contains("has CN \"meter-b\", but this device is \"meter-a\""),
        "{other}"
    );
    let collector = check(pki.collector());
    assert!(
        collector.contains("is a collector certificate") && collector.contains("not a device"),
        "{collector}"
    );
}

#[test]
fn the_binary_prints_config_problems_once_without_a_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), &["meter-c", "meter-d"]).unwrap();
    // meter-c configured with meter-d's certificate, and an unknown key.
    let text = agent_toml(
        &pki,
        "meter-d",
        free_port(),
        &dir.path().join("b.sqlite"),
        free_port(),
        "colour = \"red\"",
        "[[sources]]\ntype = \"simulator\"\nprofile = \"household_meter\"\n",
    )
    .replace("device_id = \"meter-d\"", "device_id = \"meter-c\"");
    let conf = dir.path().join("agent.toml");
    std::fs::write(&conf, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gridmeter-agent"))
        .args(["--config", &conf.display().to_string()])
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LIB_BACKTRACE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("has 2 problems"), "{stderr}");
    assert_eq!(stderr.matches("- mqtt.colour:").count(), 1, "{stderr}");
    assert_eq!(stderr.matches("- mqtt.tls.cert:").count(), 1, "{stderr}");
    assert!(!stderr.to_lowercase().contains("backtrace"), "{stderr}");
}
