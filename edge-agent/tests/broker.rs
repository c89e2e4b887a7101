//! Against a real Mosquitto with TLS client certificates: a broker outage is backfilled
//! oldest-first with nothing lost, and an exhausted disk budget is reported as a gap record
//! naming exactly the dropped seqs.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{
    agent_config, assert_raw_exactly_once, metric, subscribe, virtual_meter, wait_for, Collector,
};
use gridmeter_core::testkit::{Mosquitto, MosquittoOptions, Pki};
use gridmeter_core::GapReason;
use prometheus::Registry;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_is_backfilled_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), &["meter-1"]).unwrap();
    let mut broker = Mosquitto::start(&pki, MosquittoOptions::default()).unwrap();
    let sub = subscribe(&pki, broker.port()).await;
    let collector = Collector::start(&pki, broker.port(), dir.path(), 1).await;

    let mut cfg = agent_config(
        &pki,
        "meter-1",
        broker.port(),
        &dir.path().join("buf.sqlite"),
    );
    cfg.mqtt.live_every = 0; // strictly oldest-first, so arrival order can be asserted
                             // 600 steps at 40 steps/s: 1200 readings over ~15 s.
    cfg.sources = vec![virtual_meter(600, Some(60.0 * 40.0))];
    let total = 1200u64;
    let registry = Registry::new();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(gridmeter_agent::run(cfg, registry.clone(), async {
        let _ = stop_rx.await;
    }));

    wait_for(Duration::from_secs(60), "first readings", || {
        sub.seen.lock().unwrap().readings().count() > 40
    })
    .await;
    broker.stop();
    wait_for(
        Duration::from_secs(60),
        "readings piling up while the broker is down",
        || metric(&registry, "gridmeter_agent_buffer_rows", None) > 150.0,
    )
    .await;
    assert_eq!(metric(&registry, "gridmeter_agent_connected", None), 0.0);
    broker.start_again().unwrap();
    wait_for(Duration::from_secs(120), "every reading delivered", || {
        sub.seen.lock().unwrap().dedup().len() as u64 == total
    })
    .await;
    wait_for(
        Duration::from_secs(30),
        "buffer drained (confirmed)",
        || {
            metric(&registry, "gridmeter_agent_buffer_rows", None) == 0.0
                && metric(&registry, "gridmeter_agent_readings_confirmed_total", None)
                    == total as f64
        },
    )
    .await;
    stop_tx.send(()).unwrap();
    agent.await.unwrap().unwrap();
    collector.stop().await;
    assert_raw_exactly_once(&dir.path().join("data"), "meter-1", total);
    assert_eq!(
        metric(&registry, "gridmeter_agent_readings_confirmed_total", None),
        total as f64
    );

    let seen = sub.seen.lock().unwrap();
    assert!(seen.errors.is_empty(), "{:?}", seen.errors);
    let by_seq = seen.dedup();
    assert_eq!(
        by_seq.keys().copied().collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>()
    );
    // Oldest first: in arrival order, every seq seen for the first time is larger than all
    // seen before (redeliveries of already-seen seqs are allowed).
    let mut first_seen = BTreeSet::new();
    let mut max = 0;
    for r in seen.readings() {
        if first_seen.insert(r.seq) {
            assert!(r.seq > max, "seq {} arrived after {}", r.seq, max);
            max = r.seq;
        }
    }
    assert!(metric(&registry, "gridmeter_agent_readings_sent_total", None) >= total as f64);
    assert!(metric(&registry, "gridmeter_agent_reconnects_total", None) >= 1.0);
    assert_eq!(
        metric(
            &registry,
            "gridmeter_agent_readings_collected_total",
            Some(("source", "simulator"))
        ),
        total as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_budget_drops_oldest_and_reports_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), &["meter-2"]).unwrap();
    let mut broker = Mosquitto::start(&pki, MosquittoOptions::default()).unwrap();
    // The collector's persistent session exists before the outage, so nothing published
    // after the broker returns is missed.
    let sub = subscribe(&pki, broker.port()).await;
    let collector = Collector::start(&pki, broker.port(), dir.path(), 2).await;
    broker.stop();

    let mut cfg = agent_config(
        &pki,
        "meter-2",
        broker.port(),
        &dir.path().join("buf.sqlite"),
    );
    cfg.buffer.max_buffer_bytes = 4096;
    cfg.sources = vec![virtual_meter(300, None)];
    let total = 600u64;
    let registry = Registry::new();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(gridmeter_agent::run(cfg, registry.clone(), async {
        let _ = stop_rx.await;
    }));
    wait_for(Duration::from_secs(60), "all readings collected", || {
        metric(&registry, "gridmeter_agent_readings_collected_total", None) == total as f64
    })
    .await;
    wait_for(
        Duration::from_secs(30),
        "budget enforced and a gap record pending",
        || {
            let bytes = metric(&registry, "gridmeter_agent_buffer_bytes", None);
            bytes > 0.0
                && bytes <= 4096.0
                && metric(&registry, "gridmeter_agent_gap_records_pending", None) == 1.0
                && metric(&registry, "gridmeter_agent_readings_dropped_total", None) > 0.0
        },
    )
    .await;
    assert_eq!(
        metric(&registry, "gridmeter_agent_buffer_budget_bytes", None),
        4096.0
    );

    broker.start_again().unwrap();
    wait_for(
        Duration::from_secs(90),
        "readings and gap records delivered",
        || {
            let s = sub.seen.lock().unwrap();
            let gap_seqs: u64 = s.gaps().iter().map(|g| g.len()).sum();
            s.dedup().len() as u64 + gap_seqs >= total
        },
    )
    .await;
    wait_for(Duration::from_secs(30), "gap record confirmed", || {
        metric(&registry, "gridmeter_agent_gap_records_pending", None) == 0.0
            && metric(&registry, "gridmeter_agent_buffer_rows", None) == 0.0
    })
    .await;
    stop_tx.send(()).unwrap();
    agent.await.unwrap().unwrap();
    collector.stop().await;
    let dropped = metric(
        &registry,
        "gridmeter_agent_readings_dropped_total",
        Some(("reason", "buffer_full")),
    );

    let seen = sub.seen.lock().unwrap();
    assert!(seen.errors.is_empty(), "{:?}", seen.errors);
    let received: BTreeSet<u64> = seen.dedup().keys().copied().collect();
    let mut gaps = seen.gaps();
    gaps.sort_by_key(|g| g.from_seq);
    gaps.dedup();
    let mut lost = BTreeSet::new();
    for g in &gaps {
        assert_eq!(g.reason, GapReason::BufferFull);
        for s in g.from_seq..=g.to_seq {
            assert!(lost.insert(s), "seq {s} in two gap records");
            assert!(
                !received.contains(&s),
                "seq {s} both delivered and reported lost"
            );
        }
    }
    // The oldest were dropped: one range from seq 1, as many seqs as the counter says.
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert_eq!(gaps[0].from_seq, 1);
    assert_eq!(lost.len() as f64, dropped);
    let all: BTreeSet<u64> = received.union(&lost).copied().collect();
    assert_eq!(all, (1..=total).collect::<BTreeSet<_>>());
}
