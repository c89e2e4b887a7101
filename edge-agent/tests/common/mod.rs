//! Shared helpers of the agent's integration tests: agent configs and a test-side MQTT
//! subscriber (collector certificate, persistent session, QoS 1).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use gridmeter_agent::config::{AgentConfig, BufferConfig, MqttConfig, SourceConfig, WireEncoding};
use gridmeter_agent::sources::simulator::{Profile, SimulatorSource};
use gridmeter_core::testkit::Pki;
use gridmeter_core::wire::{self, Decoded, Limits};
use gridmeter_core::{DeviceId, Gap, Reading};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};

pub fn agent_config(pki: &Pki, device: &str, port: u16, buffer: &Path) -> AgentConfig {
    AgentConfig {
        device_id: DeviceId::new(device).unwrap(),
        mqtt: MqttConfig {
            host: "127.0.0.1".into(),
            port,
            tls: pki.device(device),
            keep_alive_secs: 5,
            max_inflight: 8,
            batch_max_readings: 50,
            encoding: WireEncoding::Compact,
            live_every: 4,
            reconnect_initial_ms: 100,
            reconnect_max_ms: 1000,
            connect_timeout: Duration::from_secs(30),
            require_confirmation: true,
            confirm_timeout: Duration::from_secs(2),
            confirm_timeout_max: Duration::from_secs(8),
            check_identity: true,
        },
        buffer: BufferConfig {
            path: buffer.to_path_buf(),
            max_buffer_bytes: 64 * 1024 * 1024,
            commit_interval_ms: 50,
            commit_max_readings: 1000,
        },
        metrics_listen: None,
        sources: vec![],
    }
}

/// The agent's TOML config as the binary reads it: `device` with its PKI certificate, the
/// broker on 127.0.0.1:`port`, metrics on `metrics_port`, fast reconnects and commits.
/// `mqtt_extra` adds lines to `[mqtt]`; `sources` is appended as is (`[[sources]]` tables).
pub fn agent_toml(
    pki: &Pki,
    device: &str,
    port: u16,
    buffer: &Path,
    metrics_port: u16,
    mqtt_extra: &str,
    sources: &str,
) -> String {
    let tls = pki.device(device);
    format!(
        r#"device_id = "{device}"
metrics_listen = "127.0.0.1:{metrics_port}"

[mqtt]
host = "127.0.0.1"
port = {port}
keep_alive_secs = 5
reconnect_initial_ms = 100
reconnect_max_ms = 1000
confirm_timeout = "2s"
confirm_timeout_max = "8s"
tls = {{ ca = "{ca}", cert = "{cert}", key = "{key}" }}
{mqtt_extra}
[buffer]
path = "{buf}"
commit_interval_ms = 20

{sources}"#,
        ca = tls.ca.display(),
        cert = tls.cert.display(),
        key = tls.key.display(),
        buf = buffer.display(),
    )
}

/// A virtual-clock household meter producing exactly `2 * steps` readings.
pub fn virtual_meter(steps: i64, speedup: Option<f64>) -> SourceConfig {
    let start: DateTime<Utc> = "2026-10-01T00:00:00Z".parse().unwrap();
    SourceConfig::new(SimulatorSource {
        name: None,
        interval_ms: 1000,
        profile: Profile::HouseholdMeter,
        seed: 1,
        register_max: Some(99_999_999),
        start: Some(start),
        step_secs: Some(60),
        speedup,
        as_fast_as_possible: speedup.is_none(),
        until: Some(start + chrono::Duration::seconds(60 * steps)),
        peak_watts: None,
        glitch: None,
    })
}

/// What the test-side subscriber saw, in arrival order.
#[derive(Default)]
pub struct Seen {
    pub messages: Vec<Decoded>,
    pub errors: Vec<String>,
}

impl Seen {
    pub fn readings(&self) -> impl Iterator<Item = &Reading> {
        self.messages.iter().flat_map(|m| m.readings.iter())
    }
    pub fn gaps(&self) -> Vec<Gap> {
        self.messages
            .iter()
            .flat_map(|m| m.gaps.iter().copied())
            .collect()
    }
    /// seq -> reading, asserting that a redelivered seq carries identical content.
    pub fn dedup(&self) -> BTreeMap<u64, Reading> {
        let mut by_seq: BTreeMap<u64, Reading> = BTreeMap::new();
        for r in self.readings() {
            if let Some(prev) = by_seq.get(&r.seq) {
                assert_eq!(
                    prev, r,
                    "seq {} delivered twice with different content",
                    r.seq
                );
            } else {
                by_seq.insert(r.seq, r.clone());
            }
        }
        by_seq
    }
}

pub struct Subscriber {
    pub seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Subscribes to every device's readings as the `collector` identity with a persistent
/// session, and returns once the subscription is acknowledged.
pub async fn subscribe(pki: &Pki, port: u16) -> Subscriber {
    // Its own collector identity (collector-3): the broker uses the CN as the client id,
    // so it must not share one with a collector a test runs.
    let tls = pki.collector_named("3").client_config().unwrap();
    let mut opts = MqttOptions::new("collector", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_clean_session(false);
    opts.set_max_packet_size(8 << 20, 8 << 20);
    opts.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(tls))));
    let (client, mut el) = AsyncClient::new(opts, 64);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let s2 = seen.clone();
    let task = tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.try_subscribe(wire::TOPIC_FILTER, QoS::AtLeastOnce);
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let mut s = s2.lock().unwrap();
                    match wire::decode_for_topic(&p.topic, &p.payload, &Limits::default()) {
                        Ok(d) => {
                            if !d.rejects.is_empty() {
                                s.errors.push(format!("rejects: {:?}", d.rejects));
                            }
                            s.messages.push(d)
                        }
                        Err(e) => s.errors.push(e.to_string()),
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(30), ready_rx)
        .await
        .expect("subscription acknowledged within 30 s")
        .unwrap();
    Subscriber { seen, task }
}

/// Polls `cond` every 100 ms until it holds or `timeout` passes.
pub async fn wait_for(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A metric's value from a registry (sum over label sets containing `label`), read from
/// the text exposition (what Prometheus would scrape).
pub fn metric(registry: &prometheus::Registry, name: &str, label: Option<(&str, &str)>) -> f64 {
    use prometheus::Encoder;
    let mut buf = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&registry.gather(), &mut buf)
        .unwrap();
    let text = String::from_utf8(buf).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let metric_name = series.split('{').next()?;
            if metric_name != name {
                return None;
            }
            if let Some((k, v)) = label {
                if !series.contains(&format!("{k}=\"{v}\"")) {
                    return None;
                }
            }
            value.parse::<f64>().ok()
        })
        .sum()
}

/// A real collector (the library, in this process) landing in `<dir>/data`, with a short
/// flush interval so confirmations come quickly.
pub struct Collector {
    pub data: std::path::PathBuf,
    pub registry: prometheus::Registry,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), gridmeter_collector::CollectorError>>,
}

impl Collector {
    /// Starts collector number `n` (0 to 2: certificate `collector-<n>`, collector id
    /// `c<n>`) against the broker on 127.0.0.1:`port` and waits until it is connected.
    pub async fn start(pki: &Pki, port: u16, dir: &Path, n: u8) -> Collector {
        Collector::start_with(pki, port, dir, n, |_| {}).await
    }

    /// [`Collector::start`] with `adjust` applied to its config first.
    pub async fn start_with(
        pki: &Pki,
        port: u16,
        dir: &Path,
        n: u8,
        adjust: impl FnOnce(&mut gridmeter_collector::CollectorConfig),
    ) -> Collector {
        assert!(n < 3, "collector-3 is the test subscriber's");
        let id = format!("c{n}");
        let data = dir.join("data");
        let mut cfg = gridmeter_collector::CollectorConfig::new(
            id.clone(),
            data.clone(),
            dir.join(format!("wal-{id}")),
        );
        cfg.mqtt.host = Some("127.0.0.1".into());
        cfg.mqtt.port = port;
        cfg.mqtt.tls = Some(pki.collector_named(&n.to_string()));
        cfg.flush_interval_ms = 200;
        adjust(&mut cfg);
        let registry = prometheus::Registry::new();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(gridmeter_collector::run(cfg, registry.clone(), async {
            let _ = stop_rx.await;
        }));
        let c = Collector {
            data,
            registry,
            stop: Some(stop_tx),
            task,
        };
        wait_for(Duration::from_secs(30), "collector connected", || {
            metric(&c.registry, "gridmeter_collector_connected", None) == 1.0
        })
        .await;
        c
    }

    /// Stops it gracefully (lands what it has).
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await.unwrap().unwrap();
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `(device_id, seq, count)` of every seq in `<data>/raw`, read with DuckDB (python3), so
/// that exactly-once is checked by a reader that is not ours.
pub fn raw_seq_counts(data: &Path) -> Vec<(String, u64, u64)> {
    let raw = data.join("raw");
    if !raw.exists() {
        return Vec::new();
    }
    let script = format!(
        "import duckdb\nfor d, s, n in duckdb.sql(\"SELECT device_id, seq, count(*) FROM read_parquet('{}/**/*.parquet') GROUP BY ALL ORDER BY 1, 2\").fetchall():\n    print(d, s, n)\n",
        raw.display()
    );
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .expect("python3 with duckdb (pip install -r .ci/requirements.txt)");
    assert!(
        out.status.success(),
        "duckdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let mut it = l.split(' ');
            let d = it.next().unwrap().to_string();
            let s = it.next().unwrap().parse().unwrap();
            let n = it.next().unwrap().parse().unwrap();
            (d, s, n)
        })
        .collect()
}

/// Asserts that `<data>/raw` holds seqs 1..=n of `device` exactly once each.
pub fn assert_raw_exactly_once(data: &Path, device: &str, n: u64) {
    let rows: Vec<(u64, u64)> = raw_seq_counts(data)
        .into_iter()
        .filter(|(d, ..)| d == device)
        .map(|(_, s, c)| (s, c))
        .collect();
    let twice: Vec<u64> = rows.iter().filter(|(_, c)| *c != 1).map(|r| r.0).collect();
    assert!(
        twice.is_empty(),
        "{device}: seqs landed more than once: {twice:?}"
    );
    let seqs: Vec<u64> = rows.iter().map(|r| r.0).collect();
    assert_eq!(
        seqs.len() as u64,
        n,
        "{device}: {} of {n} seqs in raw",
        seqs.len()
    );
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "{device}");
}
