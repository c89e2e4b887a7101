//! Device metadata end to end: an agent reading an Eastron SDM630 (the driver catalogue,
//! a pymodbus slave behind an RTU-over-TCP gateway) publishes the meter's nameplate
//! retained on `gridmeter/v1/{device_id}/meta` through a real Mosquitto with the shipped
//! ACL; a collector identity subscribing afterwards gets it, and core's decoder accepts it.

mod common;
mod peer;

use std::sync::Arc;
use std::time::Duration;

use common::agent_config;
use gridmeter_agent::config::SourceConfig;
use gridmeter_agent::sources::modbus::{ModbusSource, Transport};
use gridmeter_core::testkit::{Mosquitto, MosquittoOptions, Pki};
use gridmeter_core::wire::meta::{self, META_TOPIC_FILTER};
use gridmeter_core::DeviceId;
use peer::Peer;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport as Tr};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nameplate_is_published_retained_on_the_meta_topic() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), &["site-1"]).unwrap();
    let broker = Mosquitto::start(&pki, MosquittoOptions::default()).unwrap();
    // The SDM630's input registers (all zero but import energy) and its serial number.
    let mut input = serde_json::Map::new();
    for a in 0..0x4C {
        input.insert(a.to_string(), 0.into());
    }
    let e = 1234.5f32.to_bits();
    input.insert(0x48.to_string(), ((e >> 16) as u16).into());
    input.insert(0x49.to_string(), (e as u16).into());
    let image = serde_json::json!({"units": {"1": {"input": input,
        "holding": {"64512": 0x0132, "64513": 0xD5F0}}}});
    let path = dir.path().join("image.json");
    std::fs::write(&path, image.to_string()).unwrap();
    let port = peer::free_port();
    let _gw = Peer::python(
        "modbus_server.py",
        &["--tcp", &port.to_string(), &path.display().to_string()],
    );

    let mut cfg = agent_config(&pki, "site-1", broker.port(), &dir.path().join("buf"));
    cfg.sources = vec![SourceConfig::new(ModbusSource {
        name: Some("mains".into()),
        interval_ms: 200,
        transport: Transport::RtuOverTcp,
        address: format!("127.0.0.1:{port}"),
        driver: Some("eastron_sdm630".into()),
        timeout_ms: 2000,
        ..ModbusSource::default()
    })];
    let registry = prometheus::Registry::new();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(gridmeter_agent::run(cfg, registry.clone(), async {
        let _ = stop_rx.await;
    }));
    // Wait until the agent has read the meter (and so published its metadata).
    common::wait_for(Duration::from_secs(30), "readings collected", || {
        common::metric(
            &registry,
            "gridmeter_agent_readings_collected_total",
            Some(("source", "mains")),
        ) > 0.0
    })
    .await;

    // A collector subscribing later gets the retained document.
    let tls = pki.collector_named("2").client_config().unwrap();
    let mut opts = MqttOptions::new("collector-2", "127.0.0.1", broker.port());
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_transport(Tr::Tls(TlsConfiguration::Rustls(Arc::new(tls))));
    let (client, mut el) = AsyncClient::new(opts, 16);
    let got = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    client
                        .subscribe(META_TOPIC_FILTER, QoS::AtLeastOnce)
                        .await
                        .unwrap();
                }
                Ok(Event::Incoming(Packet::Publish(p))) => return p,
                Ok(_) => {}
                Err(e) => panic!("subscriber: {e}"),
            }
        }
    })
    .await
    .expect("the retained metadata");
    assert!(got.retain, "the metadata is retained");
    let device = DeviceId::new("site-1").unwrap();
    assert_eq!(
        meta::device_from_meta_topic(&got.topic),
        Some(device.clone())
    );
    let doc = meta::decode(&got.payload, &device).unwrap();
    assert_eq!(doc.meters.len(), 1, "{doc:?}");
    let m = &doc.meters[0];
    assert_eq!(m.source, "mains");
    assert_eq!(m.protocol, "modbus_rtu_over_tcp");
    assert_eq!(m.address.as_deref(), Some("unit 1"));
    assert_eq!(m.manufacturer.as_deref(), Some("Eastron"));
    assert_eq!(m.model.as_deref(), Some("SDM630"));
    assert_eq!(m.serial.as_deref(), Some("20108784"));
    assert!(m.channels.contains(&"energy_import_wh".to_string()));
    let _ = stop_tx.send(());
    agent.await.unwrap().unwrap();
}
