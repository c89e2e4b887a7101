//! Hostile or merely unusual scrape targets, through the real agent: the Prometheus source
//! sends a valid unit for every metric (the collector's own decoder accepts every reading it
//! publishes), and one scrape is capped in samples and bytes.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::*;
use gridmeter_agent::config::SourceConfig;
use gridmeter_agent::sources::prometheus::{self as prom, PrometheusSource};
use gridmeter_agent::sources::Reason;
use gridmeter_core::testkit::{Mosquitto, MosquittoOptions, Pki};
use gridmeter_core::Quality;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn prom_source(url: String) -> PrometheusSource {
    PrometheusSource {
        name: Some("edge-web".into()),
        interval_ms: 200,
        url,
        include: vec![],
        rename: Default::default(),
        units: Default::default(),
        max_samples: 10_000,
        max_scrape_bytes: 1 << 20,
        timeout_ms: 5000,
    }
}

/// The edge server of the report: 20 request counters and the CPU counter. Every reading
/// the agent publishes decodes without a reject; requests have unit `1` (or the configured
/// one), CPU seconds `s`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_units_are_valid_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), &["edge-1", "edge-2"]).unwrap();
    let broker = Mosquitto::start(&pki, MosquittoOptions::default()).unwrap();
    let registry = prometheus::Registry::new();
    let requests = prometheus::IntCounterVec::new(
        prometheus::Opts::new("http_requests_total", "Requests."),
        &["code", "path"],
    )
    .unwrap();
    registry.register(Box::new(requests.clone())).unwrap();
    for i in 0..20 {
        requests
            .with_label_values(&["200", &format!("p{i}")])
            .inc_by(i + 1);
    }
    let cpu = prometheus::Counter::new("process_cpu_seconds_total", "CPU.").unwrap();
    registry.register(Box::new(cpu.clone())).unwrap();
    cpu.inc_by(12.5);
    let (addr, task) = gridmeter_core::metrics::serve("127.0.0.1:0".parse().unwrap(), registry)
        .await
        .unwrap();
    let sub = subscribe(&pki, broker.port()).await;

    for (device, units) in [("edge-1", None), ("edge-2", Some("requests"))] {
        let mut cfg = agent_config(&pki, device, broker.port(), &dir.path().join(device));
        let mut source = prom_source(format!("http://{addr}/metrics"));
        if let Some(u) = units {
            source.units = [("http_requests_total".to_string(), u.to_string())].into();
        }
        cfg.sources = vec![SourceConfig::new(source)];
        let agent_registry = prometheus::Registry::new();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let agent = tokio::spawn(gridmeter_agent::run(cfg, agent_registry.clone(), async {
            let _ = stop_rx.await;
        }));
        wait_for(Duration::from_secs(60), "both counters published", || {
            let seen = sub.seen.lock().unwrap();
            let channels: std::collections::BTreeSet<&str> = seen
                .messages
                .iter()
                .filter(|m| m.device_id.as_str() == device)
                .flat_map(|m| m.readings.iter().map(|r| r.channel.as_str()))
                .collect();
            channels.len() >= 21
        })
        .await;
        stop_tx.send(()).unwrap();
        agent.await.unwrap().unwrap();
        assert_eq!(
            metric(
                &agent_registry,
                "gridmeter_agent_readings_invalid_total",
                Some(("source", "edge-web"))
            ),
            0.0
        );
        let seen = sub.seen.lock().unwrap();
        assert!(seen.errors.is_empty(), "{:?}", seen.errors);
        for r in seen
            .messages
            .iter()
            .filter(|m| m.device_id.as_str() == device)
            .flat_map(|m| m.readings.iter())
        {
            let want = if r.channel.as_str().starts_with("process_cpu_seconds") {
                "s"
            } else {
                units.unwrap_or("1")
            };
            assert_eq!(&*r.unit, want, "{}", r.channel);
        }
    }
    task.abort();
}

/// An HTTP server on 127.0.0.1 answering every request with `body` (Content-Length, or
/// chunked in 4 KiB chunks).
async fn serve_body(body: Vec<u8>, chunked: bool) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let mut req = [0u8; 4096];
                let _ = s.read(&mut req).await;
                if chunked {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                        .await;
                    for c in body.chunks(4096) {
                        let _ = s.write_all(format!("{:x}\r\n", c.len()).as_bytes()).await;
                        let _ = s.write_all(c).await;
                        let _ = s.write_all(b"\r\n").await;
                    }
                    let _ = s.write_all(b"0\r\n\r\n").await;
                } else {
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                    let _ = s.write_all(head.as_bytes()).await;
                    let _ = s.write_all(&body).await;
                }
            });
        }
    });
    format!("http://{addr}/metrics")
}

#[tokio::test]
async fn hostile_scrapes_are_capped_in_samples_and_bytes() {
    // 50 000 samples, ~1 MB: over max_samples (10 000), under max_scrape_bytes (4 MiB).
    let many: String = (0..50_000)
        .map(|i| format!("m{{i=\"{i}\"}} {i}\n"))
        .collect();
    for chunked in [false, true] {
        let url = serve_body(many.clone().into_bytes(), chunked).await;
        let mut p = prom::PromPoller::new(PrometheusSource {
            max_scrape_bytes: 4 << 20,
            ..prom_source(url.clone())
        });
        let Err(e) = p.poll(Utc::now(), Quality::GOOD).await else {
            panic!("the scrape was accepted");
        };
        assert_eq!(
            e.message,
            format!("scrape of {url} has more than 10000 samples (max_samples); none kept")
        );
        assert_eq!(e.reason, Reason::Decode);
        // With a cap above it, the same scrape is read whole.
        let mut p = prom::PromPoller::new(PrometheusSource {
            max_samples: 60_000,
            max_scrape_bytes: 4 << 20,
            ..prom_source(url.clone())
        });
        let (samples, problems) = p.poll(Utc::now(), Quality::GOOD).await.unwrap();
        assert_eq!((samples.len(), problems.len()), (50_000, 0));
        // Over the byte cap: refused before it is parsed.
        let mut p = prom::PromPoller::new(PrometheusSource {
            max_samples: 60_000,
            max_scrape_bytes: 256 * 1024,
            ..prom_source(url)
        });
        let Err(e) = p.poll(Utc::now(), Quality::GOOD).await else {
            panic!("the scrape was accepted");
        };
        assert!(e.message.contains("larger than 262144"), "{e}");
        assert!(e.message.contains("max_scrape_bytes"), "{e}");
    }
}
