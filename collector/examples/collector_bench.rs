//! Collector benchmark (run by bench/collector/run.sh, release build):
//!
//! 1. Ceiling: loopback publishers → Mosquitto (deploy/mosquitto config) → `mosquitto_sub`
//!    writing to /dev/null, same topic filter, QoS 1, same 100-reading batches.
//! 2. Collector: the same publishers → Mosquitto → `gridmeter-collector` (release binary)
//!    until every reading is durable (WAL fsync'd and acked), then until it is in Parquet.
//! 3. Redelivery: the collector is killed (-9), 1M readings are published while it is down,
//!    and the time from restart to having caught up is measured.
//!
//! Environment: BENCH_MESSAGES (default 200000 per phase), BENCH_PUBLISHERS (default 4).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gridmeter_core::testkit::{free_port, mosquitto_bin, Pki};
use gridmeter_core::tls::TlsFiles;
use gridmeter_core::wire::{compact, topic_for};
use gridmeter_core::{Batch, Channel, DeviceId, Kind, Quality, Reading};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};

const BATCH: u64 = 100;

fn env_or(name: &str, d: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_broker(pki: &Pki, dir: &Path) -> (Proc, u16) {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/mosquitto");
    let conf = std::fs::read_to_string(deploy.join("mosquitto.conf")).unwrap();
    let port = free_port();
    let data = dir.join("mosq");
    std::fs::create_dir_all(&data).unwrap();
    let conf = conf
        .replace(
            "/etc/mosquitto/gridmeter/acl",
            &dir.join("acl").display().to_string(),
        )
        .replace("/etc/mosquitto/gridmeter", &pki.dir().display().to_string())
        .replace("/var/lib/mosquitto/", &format!("{}/", data.display()))
        .replace(
            "log_dest syslog",
            &format!("log_dest file {}", dir.join("mosquitto.log").display()),
        )
        .replace("listener 8883", &format!("listener {port} 127.0.0.1"));
    std::fs::copy(deploy.join("acl"), dir.join("acl")).unwrap();
    let path = dir.join("mosquitto.conf");
    std::fs::write(&path, format!("user root\n{conf}")).unwrap();
    let child = Command::new(mosquitto_bin())
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (Proc(child), port)
}

/// Pre-encoded payloads for one device: seqs from `first_seq`, `n` messages of BATCH readings.
fn payloads(device: &str, first_seq: u64, n: u64) -> Vec<Vec<u8>> {
    // An hour ago plus one microsecond per seq: inside the collector's accepted window
    // (clock_skew_tolerance, max_backfill) for any number of seqs a run publishes.
    let t0 = chrono::Utc::now() - chrono::Duration::hours(1);
    (0..n)
        .map(|m| {
            let readings = (0..BATCH)
                .map(|i| {
                    let seq = first_seq + m * BATCH + i;
                    Reading {
                        seq,
                        ts: t0 + chrono::Duration::microseconds(seq as i64),
                        channel: Channel::new(if i % 2 == 0 { "energy_import" } else { "power" })
                            .unwrap(),
                        kind: if i % 2 == 0 {
                            Kind::Counter
                        } else {
                            Kind::Gauge
                        },
                        unit: if i % 2 == 0 { "Wh".into() } else { "W".into() },
                        value: rust_decimal::Decimal::new((seq * 1237 % 100_000_000) as i64, 3),
                        quality: Quality::GOOD,
                    }
                })
                .collect();
            compact::encode(&Batch {
                device_id: DeviceId::new(device).unwrap(),
                readings,
                gaps: vec![],
            })
            .unwrap()
        })
        .collect()
}

/// Publishes every payload (QoS 1) and waits for all PUBACKs.
async fn publish_all(port: u16, pki: &Pki, work: Vec<(String, Vec<Vec<u8>>)>) {
    let mut tasks = Vec::new();
    for (device, msgs) in work {
        let tls = pki.device(&device);
        tasks.push(tokio::spawn(async move {
            let mut o = MqttOptions::new(format!("bench-{device}"), "127.0.0.1", port);
            o.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(
                tls.client_config().unwrap(),
            ))));
            o.set_inflight(200);
            o.set_max_packet_size(1 << 20, 1 << 20);
            let (client, mut el) = AsyncClient::new(o, 1000);
            let n = msgs.len() as u64;
            let topic = topic_for(&DeviceId::new(&device).unwrap());
            let c = client.clone();
            let sender = tokio::spawn(async move {
                for m in msgs {
                    c.publish(topic.clone(), QoS::AtLeastOnce, false, m)
                        .await
                        .unwrap();
                }
            });
            let mut acked = 0;
            while acked < n {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                    Ok(_) => {}
                    Err(e) => panic!("publisher: {e}"),
                }
            }
            sender.await.unwrap();
            let _ = client.disconnect().await;
            let _ = tokio::time::timeout(Duration::from_secs(2), el.poll()).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

fn tls_args(t: &TlsFiles) -> Vec<String> {
    vec![
        "--cafile".into(),
        t.ca.display().to_string(),
        "--cert".into(),
        t.cert.display().to_string(),
        "--key".into(),
        t.key.display().to_string(),
    ]
}

fn scrape(port: u16, name: &str) -> f64 {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return 0.0;
    };
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// User + system CPU seconds of the children waited for so far.
fn children_cpu_secs() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

fn self_cpu_secs() -> f64 {
    proc_cpu_secs(std::process::id())
}

/// User + system CPU seconds a running process has used (Linux /proc).
fn proc_cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / ticks
}

fn collector_bin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/gridmeter-collector")
}

fn spawn_collector(conf: &Path, log: &Path) -> Proc {
    let log = std::fs::File::create(log).unwrap();
    Proc(
        Command::new(collector_bin())
            .arg("--config")
            .arg(conf)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("build the release binary first (bench/collector/run.sh does)"),
    )
}

fn wait_metric(port: u16, name: &str, target: f64, timeout: Duration) -> Instant {
    let deadline = Instant::now() + timeout;
    loop {
        if scrape(port, name) >= target {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "{name} did not reach {target}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let messages = env_or("BENCH_MESSAGES", 200_000);
    let publishers = env_or("BENCH_PUBLISHERS", 4);
    let per_pub = messages / publishers;
    let total_msgs = per_pub * publishers;
    let total_readings = total_msgs * BATCH;
    let dir = tempfile::Builder::new()
        .prefix("gm-bench")
        .tempdir()
        .unwrap();
    let devices: Vec<String> = (0..publishers).map(|i| format!("bench-{i}")).collect();
    let refs: Vec<&str> = devices.iter().map(String::as_str).collect();
    let pki = Pki::new(&dir.path().join("pki"), &refs).unwrap();
    let (broker, port) = start_broker(&pki, dir.path());
    let sample = payloads("bench-0", 1, 1);
    println!(
        "{publishers} publishers, {total_msgs} messages of {BATCH} readings ({} bytes compact) per phase",
        sample[0].len()
    );

    // 1. Ceiling: mosquitto_sub to /dev/null.
    let work: Vec<_> = devices
        .iter()
        .map(|d| (d.clone(), payloads(d, 1, per_pub)))
        .collect();
    let mut sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-i",
            "bench-ceiling",
        ])
        .args([
            "-t",
            "gridmeter/v1/+/readings",
            "-C",
            &total_msgs.to_string(),
        ])
        .args(tls_args(&pki.collector()))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let t0 = Instant::now();
    let (broker0, self0) = (proc_cpu_secs(broker.0.id()), self_cpu_secs());
    publish_all(port, &pki, work).await;
    let before = children_cpu_secs();
    sub.wait().unwrap();
    let (broker1, self1) = (proc_cpu_secs(broker.0.id()), self_cpu_secs());
    let ceiling = t0.elapsed().as_secs_f64();
    let sub_cpu = children_cpu_secs() - before;
    let ceiling_rate = total_readings as f64 / ceiling;
    println!(
        "ceiling (mosquitto_sub > /dev/null): {ceiling:.2} s, {ceiling_rate:.0} readings/s; mosquitto_sub CPU {:.2} s per million readings",
        sub_cpu / total_readings as f64 * 1e6
    );
    println!(
        "  same phase: broker CPU {:.2} s, publishers CPU {:.2} s over {ceiling:.2} s wall",
        broker1 - broker0,
        self1 - self0
    );

    // 2. Collector.
    let mport = free_port();
    let conf = dir.path().join("collector.toml");
    let c = pki.collector();
    std::fs::write(
        &conf,
        format!(
            "collector_id = \"bench\"\ndata_root = \"{}\"\nwal_dir = \"{}\"\nmetrics_listen = \"127.0.0.1:{mport}\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\ntls = {{ ca = \"{}\", cert = \"{}\", key = \"{}\" }}\n",
            dir.path().join("data").display(),
            dir.path().join("wal").display(),
            c.ca.display(),
            c.cert.display(),
            c.key.display()
        ),
    )
    .unwrap();
    let log = dir.path().join("collector.log");
    let mut collector = spawn_collector(&conf, &log);
    wait_metric(
        mport,
        "gridmeter_collector_connected",
        1.0,
        Duration::from_secs(30),
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let work: Vec<_> = devices
        .iter()
        .map(|d| (d.clone(), payloads(d, 1, per_pub)))
        .collect();
    let t0 = Instant::now();
    let (broker0, self0) = (proc_cpu_secs(broker.0.id()), self_cpu_secs());
    publish_all(port, &pki, work).await;
    let durable = wait_metric(
        mport,
        "gridmeter_collector_readings_accepted_total",
        total_readings as f64,
        Duration::from_secs(600),
    );
    let secs = durable.duration_since(t0).as_secs_f64();
    let rate = total_readings as f64 / secs;
    // Then until it is all in Parquet (WAL empty).
    let deadline = Instant::now() + Duration::from_secs(600);
    while scrape(mport, "gridmeter_collector_wal_bytes") > 0.0 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    let landed = t0.elapsed().as_secs_f64();
    let collector_cpu = proc_cpu_secs(collector.0.id());
    let landing_wait = scrape(mport, "gridmeter_collector_landing_wait_seconds_total");
    let raw_bytes = dir_bytes(&dir.path().join("data/raw"));
    let (broker1, self1) = (proc_cpu_secs(broker.0.id()), self_cpu_secs());
    println!(
        "collector: durable+acked after {secs:.2} s = {rate:.0} readings/s ({:.0}% of the ceiling); in Parquet after {landed:.2} s = {:.0} readings/s",
        100.0 * rate / ceiling_rate,
        total_readings as f64 / landed
    );
    println!(
        "ingest waited {landing_wait:.2} s for the landing (Parquet, commits) of the {secs:.2} s"
    );
    println!(
        "raw Parquet: {:.1} bytes per reading",
        raw_bytes as f64 / total_readings as f64
    );
    println!(
        "collector CPU: {:.2} s per million readings (decode, dedup, WAL, acks, Parquet), {:.1}x mosquitto_sub's",
        collector_cpu / total_readings as f64 * 1e6,
        collector_cpu / sub_cpu.max(1e-9)
    );
    println!(
        "  same phase: broker CPU {:.2} s, publishers (and scrapes) CPU {:.2} s, collector {collector_cpu:.2} s over {landed:.2} s wall",
        broker1 - broker0,
        self1 - self0
    );

    // 3. Redelivery: kill -9, publish while down, restart, catch up.
    let _ = collector.0.kill();
    let _ = collector.0.wait();
    let backlog_msgs = (1_000_000 / BATCH / publishers) * publishers;
    let work: Vec<_> = devices
        .iter()
        .map(|d| {
            (
                d.clone(),
                payloads(d, per_pub * BATCH + 1, backlog_msgs / publishers),
            )
        })
        .collect();
    publish_all(port, &pki, work).await;
    let t0 = Instant::now();
    let _collector = spawn_collector(&conf, &log);
    wait_metric(
        mport,
        "gridmeter_collector_readings_accepted_total",
        (backlog_msgs * BATCH) as f64,
        Duration::from_secs(600),
    );
    let catch_up = t0.elapsed().as_secs_f64();
    println!(
        "redelivery: {} readings queued while the collector was down caught up in {catch_up:.2} s = {:.2} s per million readings",
        backlog_msgs * BATCH,
        catch_up / (backlog_msgs * BATCH) as f64 * 1e6
    );
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    let reconnects = log.matches("broker connection").count();
    println!("collector reconnects during the run: {reconnects}");
    for l in log
        .lines()
        .filter(|l| l.contains("broker connection"))
        .take(3)
    {
        println!("  {l}");
    }
}
