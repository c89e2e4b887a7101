//! Shared test helpers: the shipped Mosquitto config on loopback, publishers, a collector
//! process, and an independent Parquet reader (python3 + pyarrow).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use gridmeter_core::testkit::{free_port, mosquitto_bin, Pki};
use gridmeter_core::tls::TlsFiles;
use gridmeter_core::wire::{compact, topic_for};
use gridmeter_core::{Batch, Channel, DeviceId, Kind, Quality, Reading};
use rumqttc::{
    AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration, Transport,
};

/// Mosquitto started from deploy/mosquitto/{mosquitto.conf,acl} with paths and port
/// substituted. Killed on drop.
pub struct Broker {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

impl Broker {
    pub fn start(pki: &Pki) -> Broker {
        Broker::start_with(pki, |c| c)
    }

    /// Like [`Broker::start`], with the shipped config passed through `edit` first (to show
    /// what a setting prevents, by running without it).
    pub fn start_with(pki: &Pki, edit: impl FnOnce(String) -> String) -> Broker {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/mosquitto");
        let conf = std::fs::read_to_string(deploy.join("mosquitto.conf")).unwrap();
        let acl = std::fs::read_to_string(deploy.join("acl")).unwrap();
        let dir = tempfile::Builder::new()
            .prefix("gm-deploy-mosquitto")
            .tempdir()
            .unwrap();
        let port = free_port();
        let pki_dir = pki.dir().display().to_string();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let conf = conf
            .replace(
                "/etc/mosquitto/gridmeter/acl",
                &dir.path().join("acl").display().to_string(),
            )
            .replace("/etc/mosquitto/gridmeter", &pki_dir)
            .replace("/var/lib/mosquitto/", &format!("{}/", data.display()))
            .replace(
                "log_dest syslog",
                &format!("log_dest file {}", dir.path().join("log").display()),
            )
            .replace("listener 8883", &format!("listener {port} 127.0.0.1"));
        assert!(
            conf.contains(&format!("listener {port} 127.0.0.1")),
            "{conf}"
        );
        // Started as root (CI containers), mosquitto would drop to user "mosquitto", which
        // cannot read the test's 0600 keys. `user root` has no effect when not root.
        let conf = edit(format!("user root\n{conf}"));
        std::fs::write(dir.path().join("acl"), acl).unwrap();
        let conf_path = dir.path().join("mosquitto.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Broker::spawn(dir.path());
        let mut b = Broker { port, dir, child };
        b.wait_listening();
        b
    }

    fn spawn(dir: &Path) -> Child {
        Command::new(mosquitto_bin())
            .arg("-c")
            .arg(dir.join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
            .spawn()
            .expect("start mosquitto (apt-get install mosquitto)")
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("mosquitto exited with {status}; log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the broker (SIGTERM: it saves its sessions) and starts it again on the same
    /// port: every client is disconnected, and the CRL is read anew.
    pub fn restart(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        self.child = Broker::spawn(self.dir.path());
        self.wait_listening();
    }

    pub fn log(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        format!("{}{}", read("stderr"), read("log"))
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `cond` every 100 ms until it holds; panics after `timeout`.
pub fn wait_for(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn ts_for(seq: u64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 0).unwrap() + chrono::Duration::seconds(seq as i64)
}

/// A batch of readings `seqs` for `device` (value = seq + 0.001, exact).
pub fn batch(device: &str, seqs: impl IntoIterator<Item = u64>) -> Batch {
    let readings = seqs
        .into_iter()
        .map(|seq| Reading {
            seq,
            ts: ts_for(seq),
            channel: Channel::new("energy_import").unwrap(),
            kind: Kind::Counter,
            unit: "Wh".into(),
            value: format!("{seq}.001").parse().unwrap(),
            quality: Quality::GOOD,
        })
        .collect();
    Batch {
        device_id: DeviceId::new(device).unwrap(),
        readings,
        gaps: vec![],
    }
}

pub fn encode(b: &Batch) -> Vec<u8> {
    compact::encode(b).unwrap()
}

/// An MQTT client with a device (or any) certificate. Returns the client and a task
/// counting PUBACKs received.
pub struct Publisher {
    pub client: AsyncClient,
    pub acked: Arc<std::sync::atomic::AtomicU64>,
    pub sent: u64,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    pub fn connect(port: u16, id: &str, tls: &TlsFiles) -> Publisher {
        let mut o = MqttOptions::new(format!("pub-{id}"), "127.0.0.1", port);
        o.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(
            tls.client_config().unwrap(),
        ))));
        o.set_clean_session(false);
        o.set_max_packet_size(20 * 1024 * 1024, 20 * 1024 * 1024);
        o.set_inflight(50);
        o.set_keep_alive(Duration::from_secs(30));
        let (client, mut el) = AsyncClient::new(o, 1000);
        let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let a = acked.clone();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        a.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        Publisher {
            client,
            acked,
            sent: 0,
            task,
        }
    }

    pub async fn publish(&mut self, topic: String, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
        self.sent += 1;
    }

    pub async fn publish_batch(&mut self, b: &Batch) {
        self.publish(topic_for(&b.device_id), encode(b)).await;
    }

    /// Waits until every publish was acked by the broker.
    pub async fn wait_acked(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.acked.load(std::sync::atomic::Ordering::SeqCst) < self.sent {
            assert!(
                Instant::now() < deadline,
                "broker did not ack all publishes"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn close(self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// Collector config TOML for a broker on `port`.
pub fn collector_toml(
    id: &str,
    data_root: &Path,
    wal_dir: &Path,
    port: u16,
    tls: &TlsFiles,
    share_group: Option<&str>,
) -> String {
    let share = share_group
        .map(|g| format!("share_group = \"{g}\"\n"))
        .unwrap_or_default();
    format!(
        "collector_id = \"{id}\"\ndata_root = \"{}\"\nwal_dir = \"{}\"\nflush_interval_ms = 300\n\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nclient_id = \"collector-{id}\"\n{share}tls = {{ ca = \"{}\", cert = \"{}\", key = \"{}\" }}\n",
        data_root.display(),
        wal_dir.display(),
        tls.ca.display(),
        tls.cert.display(),
        tls.key.display()
    )
}

/// The collector binary as a child process (killed on drop).
pub struct CollectorProcess {
    pub child: Child,
    pub config: PathBuf,
}

impl CollectorProcess {
    pub fn spawn(config: &Path, log: &Path) -> CollectorProcess {
        CollectorProcess::spawn_with(config, log, &[])
    }

    /// [`CollectorProcess::spawn`] with extra environment variables.
    pub fn spawn_with(config: &Path, log: &Path, env: &[(&str, &str)]) -> CollectorProcess {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_gridmeter-collector"))
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info,rumqttd=warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        CollectorProcess {
            child,
            config: config.to_path_buf(),
        }
    }

    /// Waits until the log shows `n` SUBACKs (the subscription exists at the broker).
    pub fn wait_subscribed(log: &Path, n: usize) {
        wait_for(
            Duration::from_secs(60),
            "the collector to subscribe",
            || {
                std::fs::read_to_string(log)
                    .unwrap_or_default()
                    .matches("subscribed")
                    .count()
                    >= n
            },
        );
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    /// Panics if the process exited (it must never crash).
    pub fn assert_running(&mut self, log: &Path) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "collector exited with {status}; log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
    }

    pub fn terminate(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill9();
    }
}

impl Drop for CollectorProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs a python3 snippet (pyarrow, deltalake) and returns its stdout. Fails the test if
/// python3 or the packages are missing: CI installs them.
pub fn python(script: &str) -> String {
    let out = Command::new("python3")
        .arg("-c")
        // Leave without interpreter teardown: the deltalake package's runtime threads can
        // abort a normal exit ("terminate called without an active exception").
        .arg(format!(
            "{script}\nimport os, sys\nsys.stdout.flush()\nos._exit(0)\n"
        ))
        .output()
        .expect("python3 is required (with pyarrow) as the independent Parquet reader");
    assert!(
        out.status.success(),
        "python failed: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A Python `table(root, name)` that reads a Delta table with the `deltalake` package (an
/// independent reader of the log and the files), `None` when it does not exist or is empty.
pub const READ_TABLE: &str = r#"
import os, sys
import pyarrow as pa
from deltalake import DeltaTable
def table(root, sub):
    path = f"{root}/{sub}"
    if not os.path.isdir(f"{path}/_delta_log"):
        return None
    t = DeltaTable(path).to_pyarrow_table()
    return t if t.num_rows else None
"#;

/// (rows, distinct (device_id, seq)) in `<root>/raw`, read by pyarrow.
pub fn raw_counts(root: &Path) -> (u64, u64) {
    let script = format!(
        "{READ_TABLE}\nt = table({:?}, 'raw')\nif t is None:\n    print(0, 0)\nelse:\n    keys = set(zip(t.column('device_id').to_pylist(), t.column('seq').to_pylist()))\n    print(t.num_rows, len(keys))\n",
        root.display().to_string()
    );
    let out = python(&script);
    let mut it = out.split_whitespace().map(|s| s.parse::<u64>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

/// Checks that raw holds, for every device, exactly seqs 1..=n once each, with exact values.
pub fn assert_exactly_once(root: &Path, devices: &[(String, u64)]) {
    let expect: Vec<String> = devices
        .iter()
        .map(|(d, n)| format!("({d:?}, {n})"))
        .collect();
    let script = format!(
        "{READ_TABLE}
from collections import Counter
from decimal import Decimal
t = table({root:?}, 'raw')
expect = dict([{expect}])
rows = list(zip(t.column('device_id').to_pylist(), t.column('seq').to_pylist(), t.column('value').to_pylist()))
c = Counter((d, s) for d, s, _ in rows)
dups = [k for k, v in c.items() if v > 1]
assert not dups, f'duplicates: {{dups[:10]}} ({{len(dups)}} in all)'
for d, n in expect.items():
    got = sorted(s for (dd, s) in c if dd == d)
    missing = sorted(set(range(1, n + 1)) - set(got))
    assert not missing, f'{{d}} misses {{len(missing)}} seqs, e.g. {{missing[:10]}}'
    assert got == list(range(1, n + 1)), f'{{d}} has unexpected seqs'
for d, s, v in rows:
    assert v == Decimal(f'{{s}}.001'), (d, s, v)
assert t.schema.field('value').type == pa.decimal128(38, 9), t.schema
print('ok', t.num_rows)
",
        root = root.display().to_string(),
        expect = expect.join(", ")
    );
    let out = python(&script);
    assert!(out.starts_with("ok"), "{out}");
}

pub fn metric(registry: &prometheus::Registry, name: &str) -> Option<f64> {
    registry
        .gather()
        .iter()
        .find(|f| f.name() == name)
        .map(|f| {
            f.get_metric()
                .iter()
                .map(|m| {
                    if m.get_gauge().get_value() != 0.0 {
                        m.get_gauge().get_value()
                    } else {
                        m.get_counter().get_value()
                    }
                })
                .sum()
        })
}

pub fn counter(registry: &prometheus::Registry, name: &str) -> f64 {
    metric(registry, name).unwrap_or(0.0)
}

pub async fn wait_gauge(registry: &prometheus::Registry, name: &str, v: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(registry, name) != Some(v) {
        assert!(Instant::now() < deadline, "{name} never became {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
