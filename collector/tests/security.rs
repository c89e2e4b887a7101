//! The shipped broker config (deploy/mosquitto/) keeps devices honest: a device cannot
//! publish as another (the broker drops it), a client without a certificate cannot connect
//! at all, no client can take over another's client id, only collector certificates read
//! readings, and a revoked certificate is refused.

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

/// What an MQTT client saw on its connection(s).
#[derive(Default, Debug)]
struct Seen {
    connacks: u32,
    errors: Vec<String>,
    subacks: Vec<Vec<rumqttc::SubscribeReasonCode>>,
    topics: Vec<String>,
}

/// A client that stays connected and records its events (persistent session).
struct Watched {
    client: AsyncClient,
    seen: Arc<std::sync::Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watched {
    async fn connect(port: u16, client_id: &str, tls: &TlsFiles) -> Watched {
        let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
        o.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(
            tls.client_config().unwrap(),
        ))));
        o.set_clean_session(false);
        o.set_keep_alive(Duration::from_secs(30));
        let (client, mut el) = AsyncClient::new(o, 100);
        let seen = Arc::new(std::sync::Mutex::new(Seen::default()));
        let s = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => s.lock().unwrap().connacks += 1,
                    Ok(Event::Incoming(Packet::SubAck(a))) => {
                        s.lock().unwrap().subacks.push(a.return_codes)
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        s.lock().unwrap().topics.push(p.topic.clone())
                    }
                    Ok(_) => {}
                    Err(e) => {
                        s.lock().unwrap().errors.push(e.to_string());
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        let w = Watched { client, seen, task };
        w.wait("the first CONNACK", |s| s.connacks >= 1).await;
        w
    }

    async fn wait(&self, what: &str, cond: impl Fn(&Seen) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cond(&self.seen.lock().unwrap()) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {:?}",
                self.seen.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Subscribes to `filter` and returns its SUBACK code: a round trip over the current
    /// connection (or over a new one, if the broker dropped it).
    async fn subscribe(&self, filter: &str) -> rumqttc::SubscribeReasonCode {
        let before = self.seen.lock().unwrap().subacks.len();
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        self.wait("a SUBACK", |s| s.subacks.len() > before).await;
        self.seen.lock().unwrap().subacks[before][0]
    }

    fn connacks_and_errors(&self) -> (u32, Vec<String>) {
        let s = self.seen.lock().unwrap();
        (s.connacks, s.errors.clone())
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Device dev-b connects with each victim's client id (and the collector's configured one).
fn impersonate(port: u16, attacker: &TlsFiles, ids: &[&str]) {
    for id in ids {
        let out = Command::new("mosquitto_pub")
            .args(pub_args(port, attacker, "gridmeter/v1/dev-b/readings", "x"))
            .args(["-i", id])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_take_over_another_clients_id() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), &["dev-a", "dev-b"]).unwrap();
    let attacker = pki.device("dev-b");
    let ids = ["collector-0", "dev-a", "gridmeter-collector-c1"];

    // The shipped config: the client id is the certificate's CN, whatever the client asks.
    let broker = Broker::start(&pki);
    let collector = Watched::connect(broker.port, "gridmeter-collector-c1", &pki.collector()).await;
    let device = Watched::connect(broker.port, "dev-a", &pki.device("dev-a")).await;
    impersonate(broker.port, &attacker, &ids);
    // A round trip on each victim's connection after the attacks: still the first one.
    assert_eq!(
        collector.subscribe("gridmeter/v1/+/readings").await,
        rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    assert_eq!(
        device.subscribe("gridmeter/v1/dev-a/confirm").await,
        rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    for (who, w) in [("collector", &collector), ("device", &device)] {
        let (connacks, errors) = w.connacks_and_errors();
        assert_eq!(
            (connacks, errors.len()),
            (1, 0),
            "{who} was disconnected: {errors:?}\n{}",
            broker.log()
        );
    }
    assert!(
        !broker.log().contains("already connected"),
        "{}",
        broker.log()
    );

    // Without use_username_as_clientid the same attack kicks both victims off.
    let open = Broker::start_with(&pki, |c| {
        c.replace(
            "use_username_as_clientid true",
            "use_username_as_clientid false",
        )
    });
    let collector = Watched::connect(open.port, "collector-0", &pki.collector()).await;
    let device = Watched::connect(open.port, "dev-a", &pki.device("dev-a")).await;
    impersonate(open.port, &attacker, &ids);
    for w in [&collector, &device] {
        w.wait("the victim to be disconnected", |s| !s.errors.is_empty())
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_collector_certificates_may_read_readings() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), &["dev-a", "dev-b"]).unwrap();
    let broker = Broker::start(&pki);
    let collector = Watched::connect(broker.port, "collector-1", &pki.collector_named("1")).await;
    let device = Watched::connect(broker.port, "dev-b", &pki.device("dev-b")).await;
    let client = Watched::connect(broker.port, "ops-tool", &pki.client("ops-tool")).await;
    // Mosquitto grants the SUBSCRIBE and filters each message by read access.
    collector.subscribe("gridmeter/v1/+/readings").await;
    for (w, own) in [(&device, "dev-b"), (&client, "ops-tool")] {
        w.subscribe("gridmeter/v1/+/readings").await;
        w.subscribe("$share/g/gridmeter/v1/+/readings").await;
        w.subscribe(&format!("gridmeter/v1/{own}/confirm")).await;
    }
    let out = Command::new("mosquitto_pub")
        .args(pub_args(
            broker.port,
            &pki.device("dev-a"),
            "gridmeter/v1/dev-a/readings",
            "r",
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    collector
        .wait("the collector to read the reading", |s| {
            s.topics
                .contains(&"gridmeter/v1/dev-a/readings".to_string())
        })
        .await;
    // After the reading, the collector confirms to each: on the same connection, the
    // reading would have arrived before the confirmation.
    for own in ["dev-b", "ops-tool"] {
        collector
            .client
            .publish(
                format!("gridmeter/v1/{own}/confirm"),
                QoS::AtLeastOnce,
                false,
                "c",
            )
            .await
            .unwrap();
    }
    for (w, own) in [(&device, "dev-b"), (&client, "ops-tool")] {
        let confirm = format!("gridmeter/v1/{own}/confirm");
        w.wait("its confirmation", |s| s.topics.contains(&confirm))
            .await;
        assert_eq!(
            w.seen.lock().unwrap().topics,
            vec![confirm],
            "{own} read what only collectors may: {}",
            broker.log()
        );
    }
    // The role is in the certificate: OU and CN namespace agree.
    for (tls, ou, cn) in [
        (pki.collector_named("1"), "collector", "collector-1"),
        (pki.device("dev-a"), "device", "dev-a"),
        (pki.client("ops-tool"), "client", "ops-tool"),
    ] {
        let info = gridmeter_core::tls::certificate_info(&tls.cert, "c").unwrap();
        assert_eq!(info.organizational_unit.as_deref(), Some(ou));
        assert_eq!(info.common_name.as_deref(), Some(cn));
    }
    // And the PKI refuses to put a collector's name in another role's certificate.
    let reserved = gridmeter_core::DeviceId::new("collector-1").unwrap();
    assert!(gridmeter_core::pki::Identity::device(&reserved).is_err());
    assert!(gridmeter_core::pki::Identity::client("collector-1").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_device_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), &["dev-a", "dev-b"]).unwrap();
    let mut broker = Broker::start(&pki);
    let publish = |tls: &TlsFiles, port: u16, dev: &str| {
        Command::new("mosquitto_pub")
            .args(pub_args(
                port,
                tls,
                &format!("gridmeter/v1/{dev}/readings"),
                "x",
            ))
            .output()
            .unwrap()
    };
    let (a, b) = (pki.device("dev-a"), pki.device("dev-b"));
    assert!(publish(&a, broker.port, "dev-a").status.success());

    let dev_a = gridmeter_core::pki::Identity::device(&"dev-a".parse().unwrap()).unwrap();
    let serials = pki.revoke(&dev_a);
    assert_eq!(serials.len(), 1);
    broker.restart(); // Mosquitto reads its crlfile at start

    let out = publish(&a, broker.port, "dev-a");
    assert!(
        !out.status.success(),
        "a revoked device connected: {out:?}\n{}",
        broker.log()
    );
    assert!(
        publish(&b, broker.port, "dev-b").status.success(),
        "dev-b is not revoked: {}",
        broker.log()
    );
    // The agent's own client says why.
    let tls = gridmeter_core::tls::ClientTls::load(a.clone(), None).unwrap();
    let mut o = MqttOptions::new("dev-a", "127.0.0.1", broker.port);
    o.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls.config())));
    let (_c, mut el) = AsyncClient::new(o, 10);
    let err = loop {
        match tokio::time::timeout(Duration::from_secs(20), el.poll())
            .await
            .expect("a connection result")
        {
            Ok(Event::Incoming(Packet::ConnAck(_))) => panic!("a revoked device got a CONNACK"),
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    let message = tls.explain(&err);
    assert!(
        message.contains("is revoked") && message.contains(&serials[0]),
        "{message}"
    );
}
