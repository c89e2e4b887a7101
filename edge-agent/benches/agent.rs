//! Agent benchmarks (run with `bench/agent/run.sh`, which builds the release binary first):
//! buffer throughput vs a raw rusqlite insert loop; the backfill of a million buffered
//! readings end to end (published, PUBACKed, landed by a real collector, confirmed, deleted)
//! through a loopback Mosquitto vs `mosquitto_pub` with the same message size; bytes per
//! reading compact vs JSON; and the footprint (RSS, CPU, stripped binary size) of the release
//! agent with 3 sources at 1 s.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use gridmeter_agent::buffer::Buffer;
use gridmeter_agent::config::{AgentConfig, BufferConfig, MqttConfig, SourceConfig, WireEncoding};
use gridmeter_agent::forwarder::encode;
use gridmeter_agent::sources::simulator::Simulator;
use gridmeter_agent::sources::simulator::{Profile, SimulatorSource};
use gridmeter_agent::sources::Sample;
use gridmeter_core::testkit::{free_port, Mosquitto, MosquittoOptions, Pki};
use gridmeter_core::{Batch, DeviceId, Quality, Reading};

fn sim_cfg(profile: Profile, start: Option<DateTime<Utc>>, steps: i64) -> SimulatorSource {
    SimulatorSource {
        name: None,
        interval_ms: 1000,
        profile,
        seed: 1,
        register_max: Some(99_999_999),
        start,
        step_secs: Some(60),
        speedup: None,
        as_fast_as_possible: true,
        until: start.map(|s| s + chrono::Duration::seconds(60 * steps)),
        peak_watts: None,
        glitch: None,
    }
}

fn samples(n: usize) -> Vec<Sample> {
    let dev = DeviceId::new("bench-1").unwrap();
    let mut sim = Simulator::new(&sim_cfg(Profile::HouseholdMeter, None, 0), &dev);
    let start: DateTime<Utc> = "2026-10-01T00:00:00Z".parse().unwrap();
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    while out.len() < n {
        i += 1;
        out.extend(sim.step(
            start + chrono::Duration::seconds(60 * i),
            60_000,
            Quality::GOOD,
        ));
    }
    out.truncate(n);
    out
}

fn buffer_throughput(dir: &Path) {
    let n = 300_000;
    let data = samples(n);
    let chunk = 10_000;
    // Through the agent's buffer (seq assignment, counter row, budget accounting).
    let mut b = Buffer::open(&dir.join("buffer.sqlite"), u64::MAX).unwrap();
    let t = Instant::now();
    for c in data.chunks(chunk) {
        b.insert(c).unwrap();
    }
    let buffered = n as f64 / t.elapsed().as_secs_f64();
    // Out of the buffer (next_batch + ack, no network).
    let t = Instant::now();
    let mut drained = 0;
    while let Some(batch) = b.next_batch(500, 4).unwrap() {
        drained += batch.readings.len();
        b.ack(&batch).unwrap();
    }
    let drain = drained as f64 / t.elapsed().as_secs_f64();
    // Raw rusqlite ceiling: same schema and pragmas, one prepared INSERT per row.
    let conn = rusqlite::Connection::open(dir.join("raw.sqlite")).unwrap();
    conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
        .unwrap();
    conn.execute_batch(
        "PRAGMA synchronous=FULL; CREATE TABLE r (seq INTEGER PRIMARY KEY, ts_us INTEGER, channel TEXT, kind INTEGER, unit TEXT, value TEXT, quality INTEGER);",
    )
    .unwrap();
    let mut conn = conn;
    let t = Instant::now();
    let mut seq = 0i64;
    for c in data.chunks(chunk) {
        let tx = conn.transaction().unwrap();
        {
            let mut st = tx
                .prepare_cached("INSERT INTO r VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")
                .unwrap();
            for s in c {
                seq += 1;
                st.execute(rusqlite::params![
                    seq,
                    s.ts.timestamp_micros(),
                    s.channel.as_str(),
                    s.kind.code(),
                    s.unit,
                    s.value.to_string(),
                    s.quality.bits()
                ])
                .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let raw = n as f64 / t.elapsed().as_secs_f64();
    println!("buffer_insert_readings_per_s {buffered:.0}");
    println!("raw_sqlite_insert_readings_per_s {raw:.0}");
    println!("buffer_vs_raw_ratio {:.2}", buffered / raw);
    println!("buffer_drain_readings_per_s {drain:.0} (next_batch+ack, 500/batch)");
}

fn wire_bytes() -> usize {
    let data = samples(500);
    let batch = Batch {
        device_id: DeviceId::new("bench-1").unwrap(),
        readings: data
            .into_iter()
            .enumerate()
            .map(|(i, s)| Reading {
                seq: 1_000_000 + i as u64,
                ts: s.ts,
                channel: s.channel,
                kind: s.kind,
                unit: s.unit.into(),
                value: s.value,
                quality: s.quality,
            })
            .collect(),
        gaps: vec![],
    };
    let compact = encode(&batch, WireEncoding::Compact).unwrap().len();
    let json = encode(&batch, WireEncoding::Json).unwrap().len();
    // MQTT PUBLISH overhead: fixed header (~4) + topic length (2) + topic + packet id (2).
    let overhead = 8 + gridmeter_core::wire::topic_for(&batch.device_id).len();
    let per = |b: usize| (b + overhead) as f64 / 500.0;
    println!(
        "wire_bytes_per_reading_compact {:.2} (500/msg, incl. MQTT header)",
        per(compact)
    );
    println!("wire_bytes_per_reading_json {:.2}", per(json));
    println!(
        "wire_json_vs_compact_ratio {:.1}",
        json as f64 / compact as f64
    );
    compact
}

fn agent_config(pki: &Pki, device: &str, port: u16, dir: &Path) -> AgentConfig {
    AgentConfig {
        device_id: DeviceId::new(device).unwrap(),
        mqtt: MqttConfig {
            host: "127.0.0.1".into(),
            port,
            tls: pki.device(device),
            keep_alive_secs: 30,
            max_inflight: 32,
            batch_max_readings: 500,
            encoding: WireEncoding::Compact,
            live_every: 4,
            reconnect_initial_ms: 100,
            reconnect_max_ms: 1000,
            connect_timeout: Duration::from_secs(30),
            require_confirmation: true,
            confirm_timeout: Duration::from_secs(120),
            confirm_timeout_max: Duration::from_secs(1800),
            check_identity: true,
        },
        buffer: BufferConfig {
            path: dir.join(format!("{device}.sqlite")),
            max_buffer_bytes: 1 << 32,
            commit_interval_ms: 100,
            commit_max_readings: 10_000,
        },
        metrics_listen: None,
        sources: vec![],
    }
}

fn gauge(registry: &prometheus::Registry, name: &str) -> f64 {
    use prometheus::Encoder;
    let mut buf = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&registry.gather(), &mut buf)
        .unwrap();
    String::from_utf8(buf)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// A collector (the library, release) landing in `dir/collector`, so that agents get their
/// confirmations. Returns the runtime it runs on and a stop handle.
fn start_collector(
    dir: &Path,
    pki: &Pki,
    broker: &Mosquitto,
) -> (tokio::runtime::Runtime, tokio::sync::oneshot::Sender<()>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut cfg = gridmeter_collector::CollectorConfig::new(
        "bench",
        dir.join("collector/data"),
        dir.join("collector/wal"),
    );
    cfg.mqtt.host = Some("127.0.0.1".into());
    cfg.mqtt.port = broker.port();
    cfg.mqtt.tls = Some(pki.collector());
    let registry = prometheus::Registry::new();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    rt.spawn(async move {
        if let Err(e) = gridmeter_collector::run(cfg, registry, async {
            let _ = rx.await;
        })
        .await
        {
            eprintln!("collector: {e}");
        }
    });
    std::thread::sleep(Duration::from_secs(1));
    (rt, tx)
}

/// The backfill of a device back from a long outage: `n` readings already in the buffer,
/// timed from the agent's start until every one is published, PUBACKed, landed by the
/// collector, confirmed and deleted. Against `mosquitto_pub` publishing messages of the
/// same size (QoS 1, same TLS) in the same run.
fn backfill_end_to_end(dir: &Path, pki: &Pki, broker: &Mosquitto, compact_len: usize) {
    let n = 1_000_000usize;
    let buf = dir.join("backfill.sqlite");
    {
        let data = samples(n);
        let mut b = Buffer::open(&buf, u64::MAX).unwrap();
        for c in data.chunks(10_000) {
            b.insert(c).unwrap();
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let start: DateTime<Utc> = "2026-10-01T00:00:00Z".parse().unwrap();
    let mut cfg = agent_config(pki, "bench-1", broker.port(), dir);
    cfg.buffer.path = buf;
    // A source that produces one step (two readings): the backlog is nearly all there is.
    cfg.sources = vec![SourceConfig::new(sim_cfg(
        Profile::HouseholdMeter,
        Some(start),
        1,
    ))];
    let registry = prometheus::Registry::new();
    let r2 = registry.clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (published_s, confirmed_s) = rt.block_on(async move {
        let agent = tokio::spawn(gridmeter_agent::run(cfg, r2, async {
            let _ = rx.await;
        }));
        let t = Instant::now();
        let mut published_at = None;
        loop {
            if published_at.is_none()
                && gauge(&registry, "gridmeter_agent_readings_sent_total") >= n as f64
            {
                published_at = Some(t.elapsed());
            }
            if gauge(&registry, "gridmeter_agent_readings_confirmed_total") >= n as f64 {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(900),
                "backfill did not finish"
            );
            assert!(!agent.is_finished(), "the agent stopped early");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let confirmed = t.elapsed();
        let _ = tx.send(());
        agent.await.unwrap().unwrap();
        (
            published_at.unwrap_or(confirmed).as_secs_f64(),
            confirmed.as_secs_f64(),
        )
    });
    let rate = n as f64 / confirmed_s;
    println!(
        "agent_backfill_published_readings_per_s {:.0} ({n} buffered readings, PUBACKed)",
        n as f64 / published_s
    );
    println!(
        "agent_backfill_end_to_end_readings_per_s {rate:.0} (published, PUBACKed, landed, confirmed, deleted; {confirmed_s:.2} s)"
    );

    // Ceiling: mosquitto_pub publishing messages of the same size, QoS 1, same TLS.
    let msgs = 4000;
    let line = "x".repeat(compact_len);
    let input = dir.join("lines.txt");
    std::fs::write(&input, format!("{line}\n").repeat(msgs)).unwrap();
    let tls = pki.device("bench-1");
    let t = Instant::now();
    let status = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port().to_string(),
            "-q",
            "1",
            "-l",
            "-i",
            "bench-pub",
        ])
        .args(["-t", "gridmeter/v1/bench-1/readings"])
        .arg("--cafile")
        .arg(&tls.ca)
        .arg("--cert")
        .arg(&tls.cert)
        .arg("--key")
        .arg(&tls.key)
        .stdin(Stdio::from(std::fs::File::open(&input).unwrap()))
        .status();
    match status {
        Ok(s) if s.success() => {
            let secs = t.elapsed().as_secs_f64();
            let mps = msgs as f64 / secs;
            println!(
                "mosquitto_pub_msgs_per_s {mps:.0} ({compact_len}-byte payloads, QoS 1, mTLS)"
            );
            println!(
                "mosquitto_pub_equivalent_readings_per_s {:.0} (x500 readings/msg)",
                mps * 500.0
            );
            println!("agent_vs_mosquitto_pub_ratio {:.3}", rate / (mps * 500.0));
        }
        other => println!("mosquitto_pub failed: {other:?}"),
    }
}

fn release_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GRIDMETER_AGENT_BIN") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.parent()?.join("gridmeter-agent");
    p.exists().then_some(p)
}

fn footprint(dir: &Path, pki: &Pki, broker: &Mosquitto) {
    let Some(bin) = release_binary() else {
        println!(
            "footprint: build the release binary first (cargo build --release -p gridmeter-agent)"
        );
        return;
    };
    let size = std::fs::metadata(&bin).unwrap().len();
    let stripped = dir.join("gridmeter-agent.stripped");
    let _ = Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(&bin)
        .status();
    let ssize = std::fs::metadata(&stripped).map(|m| m.len()).unwrap_or(0);
    println!(
        "binary_bytes {size} (release), stripped {ssize} ({:.1} MB)",
        ssize as f64 / 1e6
    );

    let tls = pki.device("bench-f");
    let mport = free_port();
    let conf = dir.join("footprint.toml");
    std::fs::write(
        &conf,
        format!(
            r#"device_id = "bench-f"
metrics_listen = "127.0.0.1:{mport}"
[mqtt]
host = "127.0.0.1"
port = {port}
tls = {{ ca = "{ca}", cert = "{cert}", key = "{key}" }}
[buffer]
path = "{buf}"
[[sources]]
type = "simulator"
profile = "household_meter"
interval_ms = 1000
[[sources]]
type = "host"
interval_ms = 1000
[[sources]]
type = "prometheus"
url = "http://127.0.0.1:{mport}/metrics"
interval_ms = 1000
"#,
            port = broker.port(),
            ca = tls.ca.display(),
            cert = tls.cert.display(),
            key = tls.key.display(),
            buf = dir.join("footprint.sqlite").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(&bin)
        .arg("--config")
        .arg(&conf)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id();
    let ticks = |pid: u32| -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        f.get(11).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0)
    };
    let rss = |pid: u32| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    std::thread::sleep(Duration::from_secs(5)); // warm-up
    let t0 = ticks(pid);
    let start = Instant::now();
    let mut max_rss = 0;
    while start.elapsed() < Duration::from_secs(30) {
        max_rss = max_rss.max(rss(pid));
        std::thread::sleep(Duration::from_millis(500));
    }
    let cpu = (ticks(pid) - t0) as f64 / 100.0 / start.elapsed().as_secs_f64() * 100.0;
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let _ = child.wait();
    println!(
        "footprint_rss_kb_max {max_rss} (3 sources at 1 s: simulator, host, prometheus scrape)"
    );
    println!("footprint_cpu_percent {cpu:.2} (of one core, 30 s)");
}

/// End-to-end with the release binary (separate process): 231k simulator readings as fast
/// as possible, timed from spawn until /metrics reports them all confirmed.
fn release_end_to_end(dir: &Path, pki: &Pki, broker: &Mosquitto) {
    let Some(bin) = release_binary() else { return };
    let tls = pki.device("bench-r");
    let mport = free_port();
    let conf = dir.join("e2e.toml");
    std::fs::write(
        &conf,
        format!(
            r#"device_id = "bench-r"
metrics_listen = "127.0.0.1:{mport}"
[mqtt]
host = "127.0.0.1"
port = {port}
max_inflight = 16
tls = {{ ca = "{ca}", cert = "{cert}", key = "{key}" }}
[buffer]
path = "{buf}"
[[sources]]
type = "simulator"
profile = "household_meter"
start = "2026-10-01T00:00:00Z"
until = "2026-12-20T10:40:00Z"
step_secs = 60
as_fast_as_possible = true
"#,
            port = broker.port(),
            ca = tls.ca.display(),
            cert = tls.cert.display(),
            key = tls.key.display(),
            buf = dir.join("e2e.sqlite").display()
        ),
    )
    .unwrap();
    let total = 2.0 * 115_840.0; // steps between start and until, 2 readings each
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let t = Instant::now();
    let mut child = Command::new(&bin)
        .arg("--config")
        .arg(&conf)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{mport}/metrics");
    let mut collected_at = None;
    loop {
        let body = rt
            .block_on(gridmeter_agent::sources::prometheus::http_get(
                &url,
                Duration::from_secs(5),
            ))
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&body).to_string();
        let value = |name: &str| -> f64 {
            text.lines()
                .filter(|l| l.starts_with(name))
                .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
                .sum()
        };
        if collected_at.is_none() && value("gridmeter_agent_readings_collected_total") >= total {
            collected_at = Some(t.elapsed());
        }
        if value("gridmeter_agent_readings_confirmed_total") >= total {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "release end-to-end did not finish"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent = t.elapsed().as_secs_f64();
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    println!(
        "release_binary_collect_and_buffer_readings_per_s {:.0} ({total} readings, incl. process start)",
        total / collected_at.map(|d| d.as_secs_f64()).unwrap_or(sent)
    );
    println!(
        "release_binary_end_to_end_readings_per_s {:.0}",
        total / sent
    );
}

fn main() {
    // `cargo bench` passes --bench; ignore arguments.
    let dir = tempfile::tempdir().unwrap();
    buffer_throughput(dir.path());
    let compact = wire_bytes();
    let pki = Pki::new(&dir.path().join("pki"), &["bench-1", "bench-f", "bench-r"]).unwrap();
    let broker = Mosquitto::start(
        &pki,
        MosquittoOptions {
            acl: false,
            ..Default::default()
        },
    )
    .unwrap();
    let (collector_rt, collector_stop) = start_collector(dir.path(), &pki, &broker);
    backfill_end_to_end(dir.path(), &pki, &broker, compact);
    release_end_to_end(dir.path(), &pki, &broker);
    footprint(dir.path(), &pki, &broker);
    let _ = collector_stop.send(());
    collector_rt.shutdown_timeout(Duration::from_secs(10));
}
