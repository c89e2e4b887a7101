//! kill -9 the agent binary 20 times while it publishes; afterwards a real collector has
//! landed every seq 1..N exactly once (read back with DuckDB), the agent's buffer is empty
//! (everything confirmed), and no seq was reused with different content.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{assert_raw_exactly_once, subscribe, wait_for, Collector};
use gridmeter_agent::buffer::Buffer;
use gridmeter_agent::sources::prometheus as prom;
use gridmeter_core::testkit::{free_port, Mosquitto, MosquittoOptions, Pki};
use rand::Rng;

fn config(
    pki: &Pki,
    port: u16,
    buffer: &std::path::Path,
    generating: bool,
    metrics_port: u16,
) -> String {
    let source = if generating {
        // Wall-clock simulator: 2 readings every 2 ms.
        "[[sources]]\ntype = \"simulator\"\nprofile = \"household_meter\"\ninterval_ms = 2\n"
    } else {
        // A virtual clock that ends before its first step: nothing new, just drain.
        "[[sources]]\ntype = \"simulator\"\nprofile = \"household_meter\"\nstart = \"2026-10-01T00:00:00Z\"\nuntil = \"2026-10-01T00:00:01Z\"\nstep_secs = 900\n"
    };
    common::agent_toml(
        pki,
        "meter-k",
        port,
        buffer,
        metrics_port,
        "max_inflight = 8\nbatch_max_readings = 100\n",
        source,
    )
}

fn spawn(conf: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_gridmeter-agent"))
        .arg("--config")
        .arg(conf)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_twenty_times_loses_nothing_and_reuses_no_seq() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), &["meter-k"]).unwrap();
    let broker = Mosquitto::start(&pki, MosquittoOptions::default()).unwrap();
    let sub = subscribe(&pki, broker.port()).await;
    let collector = Collector::start(&pki, broker.port(), dir.path(), 0).await;
    let buf = dir.path().join("buf.sqlite");
    let live = dir.path().join("live.toml");
    std::fs::write(&live, config(&pki, broker.port(), &buf, true, free_port())).unwrap();

    let mut rng = rand::rng();
    let mut last_n = 0;
    for round in 0..20 {
        let mut child = spawn(&live);
        // Let it run until it has published something new, then at a random moment kill it.
        let before = sub.seen.lock().unwrap().readings().count();
        wait_for(Duration::from_secs(60), "publishing", || {
            sub.seen.lock().unwrap().readings().count() > before
        })
        .await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let n = Buffer::open(&buf, u64::MAX).unwrap().next_seq() - 1;
        assert!(
            n >= last_n,
            "round {round}: counter went back from {last_n} to {n}"
        );
        last_n = n;
    }
    let n = last_n;
    assert!(n > 0);

    let drain = dir.path().join("drain.toml");
    let metrics_port = free_port();
    std::fs::write(
        &drain,
        config(&pki, broker.port(), &buf, false, metrics_port),
    )
    .unwrap();
    let mut child = spawn(&drain);
    wait_for(Duration::from_secs(120), "every seq delivered", || {
        let s = sub.seen.lock().unwrap();
        s.dedup().len() as u64 >= n
    })
    .await;
    // The agent's own /metrics says it is connected and its buffer is empty.
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let body = prom::http_get(&url, Duration::from_secs(5))
            .await
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&body).to_string();
        if text.contains("gridmeter_agent_connected 1")
            && text.contains("gridmeter_agent_buffer_rows 0")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "agent did not drain:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Graceful stop (SIGTERM).
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");

    {
        let seen = sub.seen.lock().unwrap();
        assert!(seen.errors.is_empty(), "{:?}", seen.errors);
        // dedup() asserts that a redelivered seq carries identical content.
        let by_seq = seen.dedup();
        assert_eq!(
            by_seq.keys().copied().collect::<Vec<_>>(),
            (1..=n).collect::<Vec<_>>()
        );
        assert_eq!(Buffer::open(&buf, u64::MAX).unwrap().next_seq(), n + 1);

        eprintln!(
            "{n} readings in {} messages ({} received incl. redeliveries)",
            seen.messages.len(),
            seen.readings().count()
        );
    }
    collector.stop().await;
    assert_raw_exactly_once(&dir.path().join("data"), "meter-k", n);
}
