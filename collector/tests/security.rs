//! The shipped broker config (deploy/mosquitto/) keeps devices honest: a device cannot
//! publish as another (the broker drops it), and a client without a certificate cannot
//! connect at all.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use gridmeter_core::testkit::Pki;
use gridmeter_core::tls::TlsFiles;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};

fn pub_args(port: u16, tls: &TlsFiles, topic: &str, msg: &str) -> Vec<String> {
    [
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-q",
        "1",
        "-i",
        "sec-pub",
        "-t",
        topic,
        "-m",
        msg,
        "--cafile",
        &tls.ca.display().to_string(),
        "--cert",
        &tls.cert.display().to_string(),
        "--key",
        &tls.key.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cannot_publish_as_another_and_no_certificate_no_connection() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), &["dev-a", "dev-b"]).unwrap();
    let broker = Broker::start(&pki);

    // A subscriber with the collector's identity sees everything the ACL lets through.
    let mut o = MqttOptions::new("sec-sub", "127.0.0.1", broker.port);
    o.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(
        pki.collector().client_config().unwrap(),
    ))));
    let (client, mut el) = AsyncClient::new(o, 100);
    client
        .subscribe("gridmeter/v1/+/readings", QoS::AtLeastOnce)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = tx.send(("suback".to_string(), String::new()));
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send((
                        p.topic.clone(),
                        String::from_utf8_lossy(&p.payload).into_owned(),
                    ));
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    let first = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.0, "suback");

    let a = pki.device("dev-a");
    // dev-a publishes on dev-b's topic (the broker acks and drops it: MQTT 3.1.1 has no
    // negative PUBACK), then on its own topic.
    let spoof = Command::new("mosquitto_pub")
        .args(pub_args(
            broker.port,
            &a,
            "gridmeter/v1/dev-b/readings",
            "spoofed",
        ))
        .output()
        .unwrap();
    assert!(
        spoof.status.success(),
        "MQTT 3.1.1: the broker acks and drops: {spoof:?}"
    );
    let legit = Command::new("mosquitto_pub")
        .args(pub_args(
            broker.port,
            &a,
            "gridmeter/v1/dev-a/readings",
            "legit",
        ))
        .output()
        .unwrap();
    assert!(legit.status.success(), "{legit:?}\n{}", broker.log());
    // Messages from one publisher are delivered in order: once "legit" is here, "spoofed"
    // would have arrived before it.
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !got.iter().any(|(_, m): &(String, String)| m == "legit") {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, rx.recv())
            .await
            .expect("legit message not received")
            .unwrap();
        got.push(m);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok(m) = rx.try_recv() {
        got.push(m);
    }
    assert_eq!(
        got,
        vec![(
            "gridmeter/v1/dev-a/readings".to_string(),
            "legit".to_string()
        )],
        "broker log:\n{}",
        broker.log()
    );

    // No client certificate: the TLS handshake fails, nothing is published.
    let no_cert = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-q",
            "1",
            "-t",
            "gridmeter/v1/dev-a/readings",
            "-m",
            "anon",
            "--cafile",
            &a.ca.display().to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        !no_cert.status.success(),
        "a client without certificate connected: {no_cert:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        rx.try_recv().is_err(),
        "a message from a client without certificate arrived"
    );
    // A certificate from another CA is refused as well.
    let other = dir.path().join("other-pki");
    let other_pki = Pki::new(&other, &["dev-a"]).unwrap();
    let foreign = other_pki.device("dev-a");
    let out = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-q",
            "1",
            "-t",
            "gridmeter/v1/dev-a/readings",
            "-m",
            "foreign",
            "--cafile",
            &a.ca.display().to_string(),
            "--cert",
            &foreign.cert.display().to_string(),
            "--key",
            &foreign.key.display().to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a certificate from a foreign CA connected"
    );
}
