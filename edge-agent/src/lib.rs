//! gridmeter-agent: reads devices, buffers readings in SQLite, forwards them over mTLS MQTT
//! with nothing lost.
//!
//! One agent = one device identity = one client certificate (CN = `device_id`) = one MQTT
//! connection = one seq counter. All its sources (Modbus TCP/RTU registers and meter
//! drivers, SunSpec, M-Bus, wireless M-Bus, DLMS/COSEM, IEC 62056-21, host metrics, a
//! Prometheus scrape, the simulator; see [`sources`]) produce channels of that one device,
//! and the nameplate data they read is published on the device's retained meta topic.
//!
//! ```text
//! sources (one task each) ──mpsc──▶ writer: batched SQLite transactions, seq assigned
//!                                    in the same transaction (buffer)
//!                                         │ notify
//!                                         ▼
//!                                   forwarder: batches → MQTT 5 QoS 1 → PUBACK
//!                                         │ collector lands them, publishes …/confirm
//!                                         ▼
//!                                   delete (only what a confirmation covers)
//! ```
//!
//! Library first: [`run`] takes an [`AgentConfig`] (from TOML or built in code), a
//! Prometheus [`Registry`] the metrics go into (no global state; the demo runs ~200 agents
//! in one process with one registry each) and a shutdown future.

pub mod buffer;
pub mod config;
pub mod delivery;
pub mod forwarder;
pub mod lease;
pub mod metrics;
pub mod sources;

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::Utc;
use prometheus::Registry;
use tokio::sync::{mpsc, watch, Notify};

pub use config::AgentConfig;

use buffer::{Buffer, BufferError};
use metrics::AgentMetrics;
use sources::meta::MetaBoard;
use sources::{BuildEnv, Sample, SourceCtx, WallClock};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid config: {}", .0.join("; "))]
    Config(Vec<String>),
    #[error("TLS: {0}")]
    Tls(#[from] gridmeter_core::tls::TlsError),
    #[error(transparent)]
    Buffer(#[from] BufferError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("internal task failed: {0}")]
    Task(String),
}

/// Locks a mutex, recovering from poisoning (the buffer's state is kept consistent by
/// SQLite transactions, not by the lock).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Validates `config` (every problem listed in [`AgentError::Config`]) and runs the agent
/// until `shutdown` completes, then stops the sources, commits what they
/// produced, gives in-flight batches up to 2 s to be acknowledged and returns.
pub async fn run(
    config: AgentConfig,
    registry: Registry,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let mut problems = gridmeter_core::config::Problems::new();
    gridmeter_core::config::Validate::validate(&config, &mut problems);
    if !problems.is_empty() {
        return Err(AgentError::Config(
            problems.iter().map(String::from).collect(),
        ));
    }
    let metrics = AgentMetrics::register(&registry)?;
    let expiry = gridmeter_core::tls::register_expiry_gauge(&registry, "agent")?;
    let tls = gridmeter_core::tls::ClientTls::load(config.mqtt.tls.clone(), Some(expiry))?;
    metrics
        .buffer_budget_bytes
        .set(config.buffer.max_buffer_bytes as i64);
    let path = config.buffer.path.clone();
    let max = config.buffer.max_buffer_bytes;
    let buffer = tokio::task::spawn_blocking(move || Buffer::open(&path, max))
        .await
        .map_err(|e| AgentError::Task(e.to_string()))??;
    metrics.buffer_corruptions.inc_by(buffer.corruptions());
    tracing::info!(
        device = %config.device_id,
        next_seq = buffer.next_seq(),
        "buffer {} opened",
        config.buffer.path.display()
    );
    let buffer = Arc::new(Mutex::new(buffer));
    let config = Arc::new(config);
    let notify = Arc::new(Notify::new());
    let (stop_sources_tx, stop_sources) = watch::channel(false);
    let (stop_fwd_tx, stop_fwd) = watch::channel(false);
    let (tx, rx) = mpsc::channel::<Vec<Sample>>(256);
    let clock = Arc::new(WallClock::default());

    let meta = MetaBoard::default();
    let env = BuildEnv::default();
    let mut source_tasks = Vec::new();
    for s in &config.sources {
        let Some(spec) = s.spec() else {
            continue;
        };
        let ctx = SourceCtx {
            label: s.label(),
            device: config.device_id.clone(),
            tx: tx.clone(),
            metrics: metrics.clone(),
            clock: clock.clone(),
            shutdown: stop_sources.clone(),
            meta: meta.clone(),
        };
        metrics.collected.with_label_values(&[ctx.label.as_str()]);
        for reason in sources::Reason::ALL {
            metrics
                .source_errors
                .with_label_values(&[ctx.label.as_str(), reason.as_str()]);
        }
        metrics.invalid.with_label_values(&[ctx.label.as_str()]);
        source_tasks.push(tokio::spawn(spec.run(&env, ctx)));
    }
    drop(tx);

    let mut writer = tokio::spawn(write_loop(
        rx,
        buffer.clone(),
        Duration::from_millis(config.buffer.commit_interval_ms),
        config.buffer.commit_max_readings,
        metrics.clone(),
        notify.clone(),
    ));
    let mut forwarder = tokio::spawn(
        forwarder::Forwarder::new(
            config.clone(),
            tls,
            buffer.clone(),
            metrics.clone(),
            notify.clone(),
            stop_fwd,
        )
        .with_meta(meta.clone())
        .run(),
    );
    let stats = tokio::spawn(stats_loop(buffer.clone(), metrics.clone()));

    let joined = |r: Result<Result<(), AgentError>, tokio::task::JoinError>| {
        r.map_err(|e| AgentError::Task(e.to_string()))
            .and_then(|r| r)
    };
    let mut result = Ok(());
    let mut writer_done = false;
    let mut forwarder_done = false;
    tokio::select! {
        _ = shutdown => {}
        r = &mut writer => { writer_done = true; result = joined(r); }
        r = &mut forwarder => { forwarder_done = true; result = joined(r); }
    }
    let _ = stop_sources_tx.send(true);
    for t in source_tasks {
        let _ = t.await;
    }
    if !writer_done {
        let r = joined(writer.await);
        if result.is_ok() {
            result = r;
        }
    }
    notify.notify_one();
    let _ = stop_fwd_tx.send(true);
    if !forwarder_done {
        let r = joined(forwarder.await);
        if result.is_ok() {
            result = r;
        }
    }
    stats.abort();
    result
}

/// Collects samples from all sources and commits them in batched transactions: every
/// `commit_max` samples or `commit_interval` after the first uncommitted one.
async fn write_loop(
    mut rx: mpsc::Receiver<Vec<Sample>>,
    buffer: Arc<Mutex<Buffer>>,
    commit_interval: Duration,
    commit_max: usize,
    metrics: AgentMetrics,
    notify: Arc<Notify>,
) -> Result<(), AgentError> {
    let mut pending: Vec<Sample> = Vec::new();
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let mut closed = false;
        let received = match deadline {
            Some(d) => tokio::select! {
                m = rx.recv() => Some(m),
                _ = tokio::time::sleep_until(d) => None,
            },
            None => Some(rx.recv().await),
        };
        match received {
            Some(Some(v)) => {
                if pending.is_empty() {
                    deadline = Some(tokio::time::Instant::now() + commit_interval);
                }
                pending.extend(v);
                if pending.len() < commit_max {
                    continue;
                }
            }
            Some(None) => closed = true,
            None => {}
        }
        if !pending.is_empty() {
            let batch = std::mem::take(&mut pending);
            let b = buffer.clone();
            let inserted = tokio::task::spawn_blocking(move || lock(&b).insert(&batch))
                .await
                .map_err(|e| AgentError::Task(e.to_string()))??;
            if inserted.dropped > 0 {
                metrics
                    .dropped
                    .with_label_values(&["buffer_full"])
                    .inc_by(inserted.dropped);
                tracing::warn!(
                    dropped = inserted.dropped,
                    "buffer over budget: oldest readings dropped and reported as a gap"
                );
            }
            notify.notify_one();
        }
        deadline = None;
        if closed {
            return Ok(());
        }
    }
}

/// Refreshes the buffer gauges once a second.
async fn stats_loop(buffer: Arc<Mutex<Buffer>>, metrics: AgentMetrics) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut corruptions = lock(&buffer).corruptions();
    loop {
        tick.tick().await;
        let b = buffer.clone();
        let Ok(Ok((st, c))) = tokio::task::spawn_blocking(move || {
            let g = lock(&b);
            g.stats().map(|st| (st, g.corruptions()))
        })
        .await
        else {
            continue;
        };
        // Corruption found while running (the buffer replaced itself).
        metrics
            .buffer_corruptions
            .inc_by(c.saturating_sub(corruptions));
        corruptions = corruptions.max(c);
        metrics.buffer_rows.set(st.rows as i64);
        metrics.buffer_bytes.set(st.bytes as i64);
        metrics.gap_records_pending.set(st.gaps_pending as i64);
        let age = st
            .oldest_ts
            .map(|t| (Utc::now() - t).num_milliseconds() as f64 / 1000.0)
            .unwrap_or(0.0)
            .max(0.0);
        metrics.oldest_unsent_age.set(age);
        metrics.unconfirmed.set(st.unconfirmed as i64);
        metrics.oldest_unconfirmed_age.set(
            st.oldest_unconfirmed_sent
                .map_or(0.0, |t| t.elapsed().as_secs_f64()),
        );
    }
}
