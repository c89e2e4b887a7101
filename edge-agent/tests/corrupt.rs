//! The SQLite buffer is overwritten with garbage, then truncated, between runs of the agent
//! binary (against a real Mosquitto with TLS client certificates). Each time the agent says
//! so, sets the file aside, delivers new readings with seqs above every earlier one (the seq
//! lease) and sends a `buffer_corrupt` gap record ending right below its new first seq.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{subscribe, wait_for, Subscriber};
use gridmeter_agent::sources::prometheus as prom;
use gridmeter_core::testkit::{free_port, Mosquitto, MosquittoOptions, Pki};
use gridmeter_core::GapReason;

/// 60 steps of a virtual household meter as fast as possible: 120 readings, then idle.
fn config(pki: &Pki, port: u16, buffer: &Path, metrics_port: u16) -> String {
    common::agent_toml(
        pki,
        "meter-c",
        port,
        buffer,
        metrics_port,
        "batch_max_readings = 50\n",
        r#"[[sources]]
type = "simulator"
profile = "household_meter"
start = "2026-10-01T00:00:00Z"
until = "2026-10-01T01:00:00Z"
step_secs = 60
as_fast_as_possible = true
"#,
    )
}

struct Agent {
    child: Child,
}

impl Agent {
    fn spawn(conf: &Path, stderr: &Path) -> Agent {
        let child = Command::new(env!("CARGO_BIN_EXE_gridmeter-agent"))
            .arg("--config")
            .arg(conf)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(stderr).unwrap())
            .spawn()
            .unwrap();
        Agent { child }
    }

    fn terminate(mut self) {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status}");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn max_seq(sub: &Subscriber) -> u64 {
    sub.seen
        .lock()
        .unwrap()
        .readings()
        .map(|r| r.seq)
        .max()
        .unwrap_or(0)
}

/// Runs the agent until it has delivered 120 readings above `above` (and, if `expect_gap`,
/// a `buffer_corrupt` gap record); returns the lowest new seq.
async fn run_once(
    dir: &Path,
    pki: &Pki,
    port: u16,
    sub: &Subscriber,
    round: &str,
    above: u64,
    expect_gap: bool,
) -> u64 {
    let buf = dir.join("buf.sqlite");
    let metrics_port = free_port();
    let conf = dir.join(format!("{round}.toml"));
    std::fs::write(&conf, config(pki, port, &buf, metrics_port)).unwrap();
    let log = dir.join(format!("{round}.log"));
    let agent = Agent::spawn(&conf, &log);
    wait_for(Duration::from_secs(90), "120 new readings", || {
        sub.seen
            .lock()
            .unwrap()
            .dedup()
            .keys()
            .filter(|&&s| s > above)
            .count()
            >= 120
    })
    .await;
    let first_new = sub
        .seen
        .lock()
        .unwrap()
        .readings()
        .map(|r| r.seq)
        .filter(|&s| s > above)
        .min()
        .unwrap();
    if expect_gap {
        wait_for(
            Duration::from_secs(60),
            "the buffer_corrupt gap record",
            || {
                sub.seen
                    .lock()
                    .unwrap()
                    .gaps()
                    .iter()
                    .any(|g| g.reason == GapReason::BufferCorrupt && g.to_seq == first_new - 1)
            },
        )
        .await;
        let gaps = sub.seen.lock().unwrap().gaps();
        let g = gaps
            .iter()
            .find(|g| g.reason == GapReason::BufferCorrupt && g.to_seq == first_new - 1)
            .unwrap();
        // The range covers the last seq of the run before (it might have been unsent).
        assert!(
            g.from_seq <= above,
            "{round}: gap {g:?}, previous top {above}"
        );
        let url = format!("http://127.0.0.1:{metrics_port}/metrics");
        let body = prom::http_get(&url, Duration::from_secs(10)).await.unwrap();
        let text = String::from_utf8_lossy(&body).to_string();
        assert!(
            text.contains("gridmeter_agent_buffer_corruptions_total 1"),
            "{round}:\n{text}"
        );
    }
    agent.terminate();
    let log = std::fs::read_to_string(&log).unwrap();
    if expect_gap {
        assert!(
            log.contains("ERROR") && log.contains("is corrupt") && log.contains(".corrupt-"),
            "{round}: the agent did not say so:\n{log}"
        );
    }
    first_new
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_buffer_is_set_aside_and_no_seq_is_reused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), &["meter-c"]).unwrap();
    let broker = Mosquitto::start(&pki, MosquittoOptions::default()).unwrap();
    let sub = subscribe(&pki, broker.port()).await;
    let buf = dir.path().join("buf.sqlite");

    let first = run_once(dir.path(), &pki, broker.port(), &sub, "run1", 0, false).await;
    assert_eq!(first, 1);
    let top1 = max_seq(&sub);

    // Garbage over the whole file.
    let len = std::fs::metadata(&buf).unwrap().len() as usize;
    std::fs::write(&buf, vec![0xa5u8; len.max(4096)]).unwrap();
    let first2 = run_once(dir.path(), &pki, broker.port(), &sub, "run2", top1, true).await;
    assert!(first2 > top1, "seq {first2} not above {top1}");
    let top2 = max_seq(&sub);

    // Truncated to half its size.
    let len = std::fs::metadata(&buf).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&buf)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let first3 = run_once(dir.path(), &pki, broker.port(), &sub, "run3", top2, true).await;
    assert!(first3 > top2, "seq {first3} not above {top2}");

    // Both damaged files were kept for inspection.
    let aside = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            let n = e.as_ref().unwrap().file_name();
            let n = n.to_string_lossy();
            n.starts_with("buf.sqlite.corrupt-") && !n.ends_with("-wal") && !n.ends_with("-shm")
        })
        .count();
    assert_eq!(aside, 2);
    let seen = sub.seen.lock().unwrap();
    assert!(seen.errors.is_empty(), "{:?}", seen.errors);
    // Every seq carried one content only (dedup() asserts it), and each run's seqs are
    // above every earlier run's.
    let by_seq = seen.dedup();
    assert_eq!(by_seq.len(), 360);
}
