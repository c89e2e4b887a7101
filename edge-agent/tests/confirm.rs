//! End-to-end delivery confirmation against a real Mosquitto (mTLS, the shipped ACL) and a
//! real collector: the agent deletes a reading only when the collector confirms it landed,
//! whatever the broker does meanwhile. Raw is read back with DuckDB.

mod common;

use std::time::Duration;

use common::{agent_config, assert_raw_exactly_once, metric, virtual_meter, wait_for, Collector};
use gridmeter_agent::AgentConfig;
use gridmeter_core::testkit::{Mosquitto, MosquittoOptions, Pki};
use prometheus::Registry;

/// A running agent and how to stop it.
struct Agent {
    registry: Registry,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), gridmeter_agent::AgentError>>,
}

fn start_agent(cfg: AgentConfig) -> Agent {
    let registry = Registry::new();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(gridmeter_agent::run(cfg, registry.clone(), async {
        let _ = rx.await;
    }));
    Agent {
        registry,
        stop,
        task,
    }
}

impl Agent {
    fn get(&self, name: &str) -> f64 {
        metric(&self.registry, name, None)
    }
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// Readings `total` of a virtual meter published while the collector is offline: the
/// broker has them all (every one PUBACKed), the agent keeps them all.
async fn publish_while_collector_offline(agent: &Agent, total: u64) {
    wait_for(Duration::from_secs(60), "every reading PUBACKed", || {
        agent.get("gridmeter_agent_readings_sent_total") >= total as f64
    })
    .await;
    wait_for(Duration::from_secs(10), "all of them buffered", || {
        agent.get("gridmeter_agent_buffer_rows") == total as f64
    })
    .await;
    assert_eq!(agent.get("gridmeter_agent_readings_confirmed_total"), 0.0);
}

/// The broker's power cut: it had PUBACKed every reading (queued for the offline
/// collector's session), then dies by SIGKILL and comes back without its persistence file.
/// Nothing was deleted by the agent, so everything is resent and lands exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_power_cut_with_lost_persistence_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), &["meter-p"]).unwrap();
    let mut broker = Mosquitto::start(&pki, MosquittoOptions::default()).unwrap();
    // The collector's persistent session exists, then the collector goes away.
    Collector::start(&pki, broker.port(), dir.path(), 1)
        .await
        .stop()
        .await;
    let mut cfg = agent_config(&pki, "meter-p", broker.port(), &dir.path().join("b.sqlite"));
    let total = 400u64;
    cfg.sources = vec![virtual_meter(total as i64 / 2, None)];
    let agent = start_agent(cfg);
    publish_while_collector_offline(&agent, total).await;

    broker.kill();
    broker.wipe_persistence().unwrap();
    broker.start_again().unwrap();
    let collector = Collector::start(&pki, broker.port(), dir.path(), 1).await;
    wait_for(Duration::from_secs(90), "every reading confirmed", || {
        agent.get("gridmeter_agent_readings_confirmed_total") == total as f64
            && agent.get("gridmeter_agent_buffer_rows") == 0.0
    })
    .await;
    assert!(agent.get("gridmeter_agent_resends_total") >= total as f64);
    assert_eq!(
        agent.get("gridmeter_agent_readings_confirmed_total"),
        total as f64
    );
    assert_eq!(agent.get("gridmeter_agent_unconfirmed_readings"), 0.0);
    agent.stop().await;
    collector.stop().await;
    assert_raw_exactly_once(&dir.path().join("data"), "meter-p", total);
}

/// The collector's session is gone (the broker restarted without persistence) while the
/// agent publishes: the broker answers "no matching subscribers" (MQTT 5) and drops the
/// messages. The agent keeps them, retries, and once a collector subscribes they land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_session_lost_while_publishing_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), &["meter-s"]).unwrap();
    let mut broker = Mosquitto::start(
        &pki,
        MosquittoOptions {
            persistence: false,
            ..Default::default()
        },
    )
    .unwrap();
    Collector::start(&pki, broker.port(), dir.path(), 1)
        .await
        .stop()
        .await;
    broker.restart().unwrap(); // no persistence: the collector's session is gone
    let mut cfg = agent_config(&pki, "meter-s", broker.port(), &dir.path().join("b.sqlite"));
    let total = 200u64;
    cfg.sources = vec![virtual_meter(total as i64 / 2, None)];
    let agent = start_agent(cfg);
    wait_for(Duration::from_secs(60), "publishes refused", || {
        metric(
            &agent.registry,
            "gridmeter_agent_publish_refused_total",
            Some(("reason", "no_matching_subscribers")),
        ) > 0.0
    })
    .await;
    wait_for(Duration::from_secs(10), "all of them buffered", || {
        agent.get("gridmeter_agent_buffer_rows") == total as f64
    })
    .await;
    let collector = Collector::start(&pki, broker.port(), dir.path(), 1).await;
    wait_for(Duration::from_secs(90), "every reading confirmed", || {
        agent.get("gridmeter_agent_readings_confirmed_total") == total as f64
            && agent.get("gridmeter_agent_buffer_rows") == 0.0
    })
    .await;
    agent.stop().await;
    collector.stop().await;
    assert_raw_exactly_once(&dir.path().join("data"), "meter-s", total);
}

/// An agent whose publishes the ACL denies (its device_id is not its certificate's CN; the
/// start-up check is turned off to get here) keeps every reading, says why, and its
/// oldest-unconfirmed age rises: the "transmission delay" alert's input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_publish_keeps_every_reading_and_the_age_rises() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), &["meter-a"]).unwrap();
    let broker = Mosquitto::start(&pki, MosquittoOptions::default()).unwrap();
    let collector = Collector::start(&pki, broker.port(), dir.path(), 1).await;
    let mut cfg = agent_config(&pki, "meter-a", broker.port(), &dir.path().join("b.sqlite"));
    cfg.device_id = gridmeter_core::DeviceId::new("meter-b").unwrap();
    let total = 100u64;
    cfg.sources = vec![virtual_meter(total as i64 / 2, None)];

    // With the check on (the default), the agent refuses to start and names both ids.
    let err = gridmeter_agent::run(cfg.clone(), Registry::new(), async {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"meter-b\"") && err.contains("\"meter-a\"") && err.contains("CN"),
        "{err}"
    );

    cfg.mqtt.check_identity = false;
    let agent = start_agent(cfg);
    wait_for(Duration::from_secs(60), "the broker refused it", || {
        metric(
            &agent.registry,
            "gridmeter_agent_publish_refused_total",
            Some(("reason", "not_authorized")),
        ) > 0.0
    })
    .await;
    wait_for(Duration::from_secs(30), "an unconfirmed age", || {
        agent.get("gridmeter_agent_oldest_unconfirmed_age_seconds") > 0.0
    })
    .await;
    let first = agent.get("gridmeter_agent_oldest_unconfirmed_age_seconds");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let later = agent.get("gridmeter_agent_oldest_unconfirmed_age_seconds");
    assert!(later > first, "age {first} -> {later} should rise");
    assert_eq!(agent.get("gridmeter_agent_buffer_rows"), total as f64);
    assert_eq!(agent.get("gridmeter_agent_readings_confirmed_total"), 0.0);
    assert_eq!(agent.get("gridmeter_agent_readings_sent_total"), 0.0);
    agent.stop().await;
    collector.stop().await;
    assert!(common::raw_seq_counts(&dir.path().join("data")).is_empty());
}

/// `confirm_after = "wal"`: confirmed right after the collector's fsync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_after_wal_drains_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), &["meter-w"]).unwrap();
    let broker = Mosquitto::start(&pki, MosquittoOptions::default()).unwrap();
    let collector = Collector::start_with(&pki, broker.port(), dir.path(), 1, |c| {
        c.confirm_after = gridmeter_collector::config::ConfirmAfter::Wal;
        c.flush_interval_ms = 60_000; // nothing lands during the test: only the WAL confirms
    })
    .await;
    let mut cfg = agent_config(&pki, "meter-w", broker.port(), &dir.path().join("b.sqlite"));
    let total = 200u64;
    cfg.sources = vec![virtual_meter(total as i64 / 2, None)];
    let agent = start_agent(cfg);
    wait_for(Duration::from_secs(60), "every reading confirmed", || {
        agent.get("gridmeter_agent_readings_confirmed_total") == total as f64
    })
    .await;
    assert!(common::raw_seq_counts(&dir.path().join("data")).is_empty());
    agent.stop().await;
    collector.stop().await;
    assert_raw_exactly_once(&dir.path().join("data"), "meter-w", total);
}

/// Two collectors on one shared subscription: each confirms what it landed, and the agent
/// merges the confirmations until its buffer is empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_collectors_each_confirm_their_part() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), &["meter-h"]).unwrap();
    let broker = Mosquitto::start(&pki, MosquittoOptions::default()).unwrap();
    let shared = |c: &mut gridmeter_collector::CollectorConfig| {
        c.mqtt.share_group = Some("g".into());
    };
    let c1 = Collector::start_with(&pki, broker.port(), dir.path(), 1, shared).await;
    let c2 = Collector::start_with(&pki, broker.port(), dir.path(), 2, shared).await;
    let mut cfg = agent_config(&pki, "meter-h", broker.port(), &dir.path().join("b.sqlite"));
    let total = 600u64;
    cfg.mqtt.batch_max_readings = 20;
    cfg.sources = vec![virtual_meter(total as i64 / 2, None)];
    let agent = start_agent(cfg);
    wait_for(Duration::from_secs(90), "every reading confirmed", || {
        agent.get("gridmeter_agent_readings_confirmed_total") == total as f64
    })
    .await;
    let (sent1, sent2) = (
        metric(
            &c1.registry,
            "gridmeter_collector_confirmations_sent_total",
            None,
        ),
        metric(
            &c2.registry,
            "gridmeter_collector_confirmations_sent_total",
            None,
        ),
    );
    assert!(
        sent1 > 0.0 && sent2 > 0.0,
        "both confirmed: {sent1}, {sent2}"
    );
    agent.stop().await;
    c1.stop().await;
    c2.stop().await;
    // Shared subscriptions may land a resend twice (readers and `compact` dedup); every
    // seq is there.
    let seqs: std::collections::BTreeSet<u64> = common::raw_seq_counts(&dir.path().join("data"))
        .into_iter()
        .map(|(_, s, _)| s)
        .collect();
    assert_eq!(seqs, (1..=total).collect());
}
