//! Wiring: recovery, the MQTT task, the ingest thread (WAL + processing + acks) and the
//! flusher thread (Parquet + checkpoint + WAL cleanup).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use gridmeter_core::config::{Problems, Validate};
use gridmeter_tables::devices::Upserted;
use prometheus::Registry;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot, watch};

use crate::broker::{BrokerError, EmbeddedBroker};
use crate::checkpoint::{self, Checkpoint, CheckpointError};
use crate::config::CollectorConfig;
use crate::confirm::{self, ConfirmAfter, Durable};
use crate::dedup::DedupState;
use crate::landing::{Landing, LandingError, StagedRaw};
use crate::metrics::Metrics;
use crate::mqtt::{self, Incoming};
use crate::process::{self, Policy, RawRow, SegmentOutput};
use crate::wal::{self, WalRecord, WalWriter};

#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    #[error("invalid collector config:\n  - {}", .0.join("\n  - "))]
    Config(Vec<String>),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("WAL {path}: {source}")]
    Wal {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Landing(#[from] LandingError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("TLS: {0}")]
    Tls(#[from] gridmeter_core::tls::TlsError),
    #[error("metrics endpoint {addr}: {source}")]
    MetricsListen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("{0} thread ended unexpectedly")]
    Thread(&'static str),
}

fn wal_err(path: &Path) -> impl FnOnce(std::io::Error) -> CollectorError + '_ {
    move |source| CollectorError::Wal {
        path: path.to_path_buf(),
        source,
    }
}

/// A sealed segment on its way to the object store.
struct Sealed {
    segment: u64,
    out: SegmentOutput,
    /// Dedup state as of the end of the segment (goes into the checkpoint).
    state: DedupState,
    wal_bytes: u64,
}

/// A sealed segment whose raw data files are written, on its way to be committed.
struct Staged {
    sealed: Sealed,
    raw: StagedRaw,
}

/// The ingest thread's side of the landing: sealed segments go out, and their row buffers
/// come back emptied, to be filled again. A segment's rows are tens of megabytes; a fresh
/// buffer per segment would have the kernel zero every page of it again.
struct ToFlusher {
    sealed: std_mpsc::SyncSender<Sealed>,
    spare_rows: std_mpsc::Receiver<Vec<RawRow>>,
}

impl ToFlusher {
    /// A pair of ends: this one for the ingest thread, the other for the stager.
    fn new() -> (Self, FromIngest) {
        // One segment waits while one is staged and one commits (the memory bound of
        // collector/README.md).
        let (sealed, sealed_rx) = std_mpsc::sync_channel::<Sealed>(1);
        // One spare: the stager returns a buffer as it takes the next segment, which is
        // when a waiting ingest thread seals its own.
        let (spare_tx, spare_rows) = std_mpsc::sync_channel(1);
        (
            ToFlusher { sealed, spare_rows },
            FromIngest {
                sealed: sealed_rx,
                spare_rows: spare_tx,
            },
        )
    }

    /// An empty output for the next segment, on a returned row buffer if there is one.
    fn next_output(&self) -> SegmentOutput {
        SegmentOutput {
            raw: self.spare_rows.try_recv().unwrap_or_default(),
            ..SegmentOutput::default()
        }
    }
}

/// The stager thread's side of [`ToFlusher`].
struct FromIngest {
    sealed: std_mpsc::Receiver<Sealed>,
    spare_rows: std_mpsc::SyncSender<Vec<RawRow>>,
}

impl FromIngest {
    /// Hands a staged segment's row buffer back (dropped if a spare is already waiting).
    fn give_back(&self, mut rows: Vec<RawRow>) {
        rows.clear();
        let _ = self.spare_rows.try_send(rows);
    }
}

/// Runs the collector until `shutdown` resolves (or a fatal error): recovers the WAL,
/// connects (starting the embedded broker if `mqtt.host` is unset), ingests, lands.
/// Metrics are registered in `registry` (and served on `metrics_listen` if set).
pub async fn run(
    config: CollectorConfig,
    registry: Registry,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), CollectorError> {
    let mut problems = Problems::new();
    config.validate(&mut problems);
    if !problems.is_empty() {
        return Err(CollectorError::Config(
            problems.iter().map(String::from).collect(),
        ));
    }
    let metrics = Metrics::new(&registry)?;
    let _metrics_task = match config.metrics_listen {
        Some(addr) => Some(
            gridmeter_core::metrics::serve(addr, registry.clone())
                .await
                .map_err(|source| CollectorError::MetricsListen { addr, source })?
                .1,
        ),
        None => None,
    };
    std::fs::create_dir_all(&config.wal_dir).map_err(wal_err(&config.wal_dir))?;
    let landing = Landing::open(&config).await?;
    let policy = config.policy();
    let missing_after_us = (config.missing_after_secs as i64).saturating_mul(1_000_000);
    let detect_missing = config.detect_missing();

    // 1. Recovery: land every WAL segment the checkpoint does not cover.
    let (state, next_segment, recovered) = recover(
        &config.wal_dir,
        &landing,
        &policy,
        detect_missing,
        missing_after_us,
    )
    .await?;

    // 2. Broker connection.
    let (_embedded, host, port, tls) = match &config.mqtt.host {
        Some(h) => (None, h.clone(), config.mqtt.port, config.mqtt.tls.clone()),
        None => {
            let b = EmbeddedBroker::start(&config.embedded.pki_dir, config.embedded.port)?;
            tracing::warn!("{}", crate::broker::DEMO_ONLY);
            let port = b.port();
            let tls = config.mqtt.tls.clone().or(Some(config.embedded.tls()));
            (Some(b), "127.0.0.1".to_string(), port, tls)
        }
    };
    let tls = tls.ok_or_else(|| CollectorError::Config(vec!["mqtt.tls: required".into()]))?;
    let expiry = gridmeter_core::tls::register_expiry_gauge(&registry, "collector")?;
    let tls = gridmeter_core::tls::ClientTls::load(tls, Some(expiry))?;
    let opts = mqtt::options(
        &config.client_id(),
        &host,
        port,
        tls.config(),
        Duration::from_secs(config.mqtt.keep_alive_secs.max(5)),
        config.mqtt.max_packet_bytes,
    );
    let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 100_000);
    eventloop.set_network_options(mqtt::network_options());
    let (in_tx, in_rx) = mpsc::channel::<Incoming>(10_000);
    // Received payloads held until processed: bounded in bytes too (see the README).
    let budget = std::sync::Arc::new(tokio::sync::Semaphore::new(config.ingest_buffer_bytes));
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let session = mqtt::Session {
        eventloop,
        client: client.clone(),
        filters: config.topic_filters(),
        tls,
    };
    let mqtt_task = tokio::spawn(mqtt::drive(
        session,
        in_tx,
        budget,
        metrics.clone(),
        stop_rx,
    ));
    let (confirm_tx, confirm_rx) = mpsc::unbounded_channel::<Durable>();
    let confirm_task = tokio::spawn(confirm::publish_loop(
        client.clone(),
        confirm_rx,
        metrics.clone(),
    ));
    if !recovered.is_empty() {
        // Replayed segments are landed now: confirm them once connected.
        let _ = confirm_tx.send(recovered);
    }
    let ack_task = tokio::spawn(mqtt::ack_loop(client, ack_rx));

    // 3. Landing threads: the stager writes a segment's raw data files while the flusher
    // commits the segment before it (in order), checkpoints it and deletes it from the WAL.
    let (to_flusher, from_ingest) = ToFlusher::new();
    let (staged_tx, staged_rx) = std_mpsc::sync_channel::<Staged>(0);
    let (flush_done_tx, flush_done_rx) = oneshot::channel();
    {
        let landing = landing.clone();
        let metrics = metrics.clone();
        let handle = Handle::current();
        std::thread::Builder::new()
            .name("collector-stage".into())
            .spawn(move || {
                for mut sealed in &from_ingest.sealed {
                    let raw = until_done("staging", sealed.segment, &metrics, || {
                        Ok(handle.block_on(landing.stage_raw(sealed.segment, &sealed.out.raw))?)
                    });
                    from_ingest.give_back(std::mem::take(&mut sealed.out.raw));
                    if staged_tx.send(Staged { sealed, raw }).is_err() {
                        break;
                    }
                }
            })
            .map_err(wal_err(&config.wal_dir))?;
    }
    {
        let landing = landing.clone();
        let wal_dir = config.wal_dir.clone();
        let metrics = metrics.clone();
        let handle = Handle::current();
        let confirm_tx = confirm_tx.clone();
        std::thread::Builder::new()
            .name("collector-flush".into())
            .spawn(move || {
                for staged in staged_rx {
                    let durable = commit_staged(&handle, &landing, &wal_dir, staged, &metrics);
                    if !durable.is_empty() {
                        let _ = confirm_tx.send(durable);
                    }
                }
                let _ = flush_done_tx.send(());
            })
            .map_err(wal_err(&config.wal_dir))?;
    }

    // 4. Ingest thread.
    let (ingest_done_tx, ingest_done_rx) = oneshot::channel();
    {
        let ingest = Ingest {
            wal_dir: config.wal_dir.clone(),
            policy,
            group_max: config.group_commit_max_messages,
            flush_max_readings: config.flush_max_readings,
            flush_interval: Duration::from_millis(config.flush_interval_ms),
            detect_missing,
            missing_after_us,
            metrics: metrics.clone(),
            confirm_wal: (config.confirm_after == ConfirmAfter::Wal).then_some(confirm_tx),
        };
        let handle = Handle::current();
        std::thread::Builder::new()
            .name("collector-ingest".into())
            .spawn(move || {
                let r = ingest.run(&handle, state, next_segment, in_rx, ack_tx, to_flusher);
                let _ = ingest_done_tx.send(r);
            })
            .map_err(wal_err(&config.wal_dir))?;
    }

    // 5. Wait for shutdown or a fatal ingest error.
    tokio::pin!(shutdown);
    let mut ingest_done_rx = ingest_done_rx;
    let early = tokio::select! {
        _ = &mut shutdown => None,
        r = &mut ingest_done_rx => Some(r),
    };
    let _ = stop_tx.send(true);
    let _ = mqtt_task.await;
    let result = match early {
        Some(r) => r.unwrap_or(Err(CollectorError::Thread("ingest"))),
        None => ingest_done_rx
            .await
            .unwrap_or(Err(CollectorError::Thread("ingest"))),
    };
    let _ = flush_done_rx.await;
    ack_task.abort();
    confirm_task.abort();
    tracing::info!("collector stopped");
    result
}

/// Commits a staged segment, checkpoints it and deletes it from the WAL, retrying until it
/// succeeds; returns what became durable, to be confirmed.
fn commit_staged(
    handle: &Handle,
    landing: &Landing,
    wal_dir: &Path,
    staged: Staged,
    metrics: &Metrics,
) -> Durable {
    let Staged { sealed: s, raw } = staged;
    let (bytes, devices) = until_done("landing", s.segment, metrics, || {
        let written = handle.block_on(landing.commit_segment(s.segment, &s.out, &raw))?;
        finish_segment(wal_dir, s.segment, s.state.clone())?;
        Ok(written)
    });
    metrics.bytes_written.inc_by(bytes);
    metrics.devices_updated.inc_by(devices.devices as u64);
    metrics.wal_bytes.sub(s.wal_bytes as i64);
    s.out.durable
}

/// Runs a landing step until it succeeds: the segment is safe in the WAL meanwhile and the
/// broker has been acked, so there is nothing to give up to. Waits from 100 ms, doubling to
/// 10 s.
fn until_done<T>(
    step: &str,
    segment: u64,
    metrics: &Metrics,
    mut attempt: impl FnMut() -> Result<T, CollectorError>,
) -> T {
    use backon::BackoffBuilder;
    let mut delays = backon::ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(10))
        .with_factor(2.0)
        .without_max_times()
        .build();
    loop {
        match attempt() {
            Ok(v) => return v,
            Err(e) => {
                metrics.write_errors.inc();
                let wait = delays.next().unwrap_or(Duration::from_secs(10));
                tracing::error!(segment, "{step} failed, retrying in {wait:?}: {e}");
                std::thread::sleep(wait);
            }
        }
    }
}

/// Lands a segment in one go (recovery): Parquet files and commits, then checkpoint, then
/// delete the WAL segment. Each step is idempotent, so a crash between any two of them is
/// repaired by replaying the segment.
async fn land_segment(
    landing: &Landing,
    wal_dir: &Path,
    segment: u64,
    out: &SegmentOutput,
    state: DedupState,
) -> Result<(u64, Upserted), CollectorError> {
    let written = landing.write_segment(segment, out).await?;
    finish_segment(wal_dir, segment, state)?;
    Ok(written)
}

/// After a segment's commits: the checkpoint, then the WAL segment's deletion.
fn finish_segment(wal_dir: &Path, segment: u64, state: DedupState) -> Result<(), CollectorError> {
    checkpoint::store(
        wal_dir,
        &Checkpoint {
            last_segment: Some(segment),
            state,
        },
    )?;
    let path = wal::segment_path(wal_dir, segment);
    match std::fs::remove_file(&path) {
        Ok(()) => wal::sync_dir(wal_dir).map_err(wal_err(wal_dir))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(wal_err(&path)(e)),
    }
    Ok(())
}

/// Replays the WAL segments newer than the checkpoint and lands them; returns the state,
/// the next segment number and what the replayed segments made durable.
async fn recover(
    wal_dir: &Path,
    landing: &Landing,
    policy: &Policy,
    detect_missing: bool,
    missing_after_us: i64,
) -> Result<(DedupState, u64, Durable), CollectorError> {
    let cp = checkpoint::load(wal_dir)?;
    let mut state = cp.state;
    let mut durable = Durable::default();
    let mut last = cp.last_segment;
    let segments = wal::list_segments(wal_dir).map_err(wal_err(wal_dir))?;
    for seg in segments {
        let path = wal::segment_path(wal_dir, seg);
        if last.is_some_and(|l| seg <= l) {
            // Landed and checkpointed; the crash came before the delete.
            std::fs::remove_file(&path).map_err(wal_err(&path))?;
            continue;
        }
        let contents = wal::recover_segment(&path).map_err(wal_err(&path))?;
        let mut out = SegmentOutput::default();
        for rec in &contents.records {
            process::process_isolated(&mut state, rec, policy, &mut out, None);
        }
        if detect_missing {
            process::declare_missing(&mut state, missing_after_us, &mut out, None);
        }
        tracing::info!(
            segment = seg,
            records = contents.records.len(),
            readings = out.raw.len(),
            "replaying WAL segment"
        );
        land_segment(landing, wal_dir, seg, &out, state.clone()).await?;
        durable.merge(out.durable);
        last = Some(seg);
    }
    if wal::list_segments(wal_dir)
        .map_err(wal_err(wal_dir))?
        .is_empty()
    {
        wal::sync_dir(wal_dir).map_err(wal_err(wal_dir))?;
    }
    // A collector without checkpoint or WAL starts numbering at the current Unix time in ms,
    // above any segment an earlier incarnation with a lost wal_dir could have used: file
    // names must never be reused for different content.
    let fresh = || (chrono::Utc::now().timestamp_millis().max(1)) as u64;
    Ok((state, last.map_or_else(fresh, |l| l + 1), durable))
}

struct Ingest {
    wal_dir: PathBuf,
    policy: Policy,
    group_max: usize,
    flush_max_readings: usize,
    flush_interval: Duration,
    detect_missing: bool,
    missing_after_us: i64,
    metrics: Metrics,
    /// With `confirm_after = "wal"`: where each group's seqs go right after its fsync.
    confirm_wal: Option<mpsc::UnboundedSender<Durable>>,
}

impl Ingest {
    /// The ingest loop: group commit to the WAL, process, ack, seal segments.
    fn run(
        &self,
        handle: &Handle,
        mut state: DedupState,
        mut segment: u64,
        mut rx: mpsc::Receiver<Incoming>,
        ack_tx: mpsc::UnboundedSender<Vec<rumqttc::Publish>>,
        flusher: ToFlusher,
    ) -> Result<(), CollectorError> {
        let seg_path = |s| wal::segment_path(&self.wal_dir, s);
        let mut wal =
            WalWriter::open(&self.wal_dir, segment).map_err(wal_err(&seg_path(segment)))?;
        let mut out = SegmentOutput::default();
        let mut seg_started = Instant::now();
        let mut last_age_refresh = Instant::now();
        let mut group: Vec<Incoming> = Vec::with_capacity(self.group_max);
        let mut records: Vec<WalRecord> = Vec::with_capacity(self.group_max);
        let mut closed = false;
        loop {
            let wait = if wal.is_empty() {
                Duration::from_secs(1)
            } else {
                self.flush_interval.saturating_sub(seg_started.elapsed())
            };
            match handle.block_on(async { tokio::time::timeout(wait, rx.recv()).await }) {
                Ok(Some(m)) => group.push(m),
                Ok(None) => closed = true,
                Err(_) => {}
            }
            while group.len() < self.group_max {
                match rx.try_recv() {
                    Ok(m) => group.push(m),
                    Err(_) => break,
                }
            }
            if !group.is_empty() {
                records.clear();
                records.extend(group.iter().map(|m| WalRecord {
                    received_at_us: m.received_at_us,
                    topic: m.publish.topic.clone(),
                    payload: m.publish.payload.clone(),
                }));
                if wal.is_empty() {
                    seg_started = Instant::now();
                }
                let n = match wal.append_group(&records) {
                    Ok(n) => n,
                    Err(e) => {
                        self.metrics.write_errors.inc();
                        // Nothing of this group was acked; the broker redelivers after restart.
                        return Err(wal_err(&seg_path(segment))(e));
                    }
                };
                self.metrics.bytes_written.inc_by(n);
                self.metrics.wal_bytes.add(n as i64);
                // Durable: ack now, so the broker can send more while this group is being
                // processed (processing is a pure function of the WAL and can be replayed).
                // An ack needs the packet id only: the payloads are not kept alive for it.
                let publishes: Vec<rumqttc::Publish> = group
                    .iter()
                    .map(|m| {
                        let mut p = m.publish.clone();
                        p.payload = bytes::Bytes::new();
                        p
                    })
                    .collect();
                let _ = ack_tx.send(publishes);
                for rec in &records {
                    process::process_isolated(
                        &mut state,
                        rec,
                        &self.policy,
                        &mut out,
                        Some(&self.metrics),
                    );
                }
                if let Some(tx) = &self.confirm_wal {
                    let durable = std::mem::take(&mut out.durable);
                    if !durable.is_empty() {
                        let _ = tx.send(durable);
                    }
                }
                let now = Instant::now();
                for m in &group {
                    self.metrics
                        .landing_latency_seconds
                        .observe(now.duration_since(m.at).as_secs_f64());
                }
                group.clear();
            }
            let due = !wal.is_empty()
                && (out.rows() >= self.flush_max_readings
                    || out.dead_bytes() >= process::MAX_SEGMENT_DEAD_BYTES
                    || seg_started.elapsed() >= self.flush_interval);
            if due || (closed && !wal.is_empty()) {
                if self.detect_missing {
                    process::declare_missing(
                        &mut state,
                        self.missing_after_us,
                        &mut out,
                        Some(&self.metrics),
                    );
                }
                let sealed = Sealed {
                    segment,
                    out: std::mem::take(&mut out),
                    state: state.clone(),
                    wal_bytes: wal.len(),
                };
                let waited = Instant::now();
                if flusher.sealed.send(sealed).is_err() {
                    return Err(CollectorError::Thread("flush"));
                }
                self.metrics
                    .landing_wait_seconds
                    .inc_by(waited.elapsed().as_secs_f64());
                out = flusher.next_output();
                segment += 1;
                wal =
                    WalWriter::open(&self.wal_dir, segment).map_err(wal_err(&seg_path(segment)))?;
                seg_started = Instant::now();
            }
            if last_age_refresh.elapsed() >= Duration::from_secs(10) || closed {
                let now_us = chrono::Utc::now().timestamp_micros();
                self.metrics
                    .refresh_device_ages(state.devices.values().map(|d| d.last_seen_us), now_us);
                last_age_refresh = Instant::now();
            }
            if closed {
                break;
            }
        }
        // The last (empty) segment file is not needed.
        let empty = seg_path(segment);
        drop(wal);
        let _ = std::fs::remove_file(&empty);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridmeter_core::wire::compact;
    use gridmeter_core::{Batch, Channel, DeviceId, Kind, Quality, Reading};

    const T0_US: i64 = 1_795_000_000_000_000;

    fn payload(dev: &str, seqs: std::ops::RangeInclusive<u64>) -> bytes::Bytes {
        let t0 = chrono::DateTime::from_timestamp(1_795_000_000, 0).unwrap();
        let readings = seqs
            .map(|seq| Reading {
                seq,
                ts: t0 + chrono::Duration::seconds(seq as i64),
                channel: Channel::new("energy_import").unwrap(),
                kind: Kind::Counter,
                unit: "Wh".into(),
                value: rust_decimal::Decimal::new(seq as i64 * 7, 3),
                quality: Quality::GOOD,
            })
            .collect();
        let b = Batch {
            device_id: DeviceId::new(dev).unwrap(),
            readings,
            gaps: vec![],
        };
        bytes::Bytes::from(compact::encode(&b).unwrap())
    }

    fn files(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push((p.clone(), std::fs::read(&p).unwrap()));
                }
            }
        }
        out.sort();
        out
    }

    /// A crash after the commits but before the checkpoint: replay finds the segment's
    /// transaction id in every table, writes nothing and adds nothing.
    #[tokio::test]
    async fn replay_after_a_crash_before_the_checkpoint_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let (wal_dir, data) = (dir.path().join("wal"), dir.path().join("data"));
        std::fs::create_dir_all(&wal_dir).unwrap();
        let mut cfg = CollectorConfig::new("t", data.clone(), wal_dir.clone());
        cfg.mqtt.host = Some("unused".into());
        let landing = Landing::open(&cfg).await.unwrap();
        let policy = Policy::default();
        let rec = |dev: &str, seqs, at| WalRecord {
            received_at_us: T0_US + at,
            topic: format!("gridmeter/v1/{dev}/readings"),
            payload: payload(dev, seqs),
        };
        // Segment 1 lands normally; segment 2 (with a redelivered batch) is in the WAL.
        let mut w = WalWriter::open(&wal_dir, 1).unwrap();
        w.append_group(&[rec("a", 1..=10, 1), rec("b", 1..=5, 2)])
            .unwrap();
        let mut w = WalWriter::open(&wal_dir, 2).unwrap();
        w.append_group(&[
            rec("a", 1..=10, 3),
            rec("a", 11..=20, 4),
            rec("b", 6..=6, 5),
        ])
        .unwrap();
        drop(w);
        let seg2 = std::fs::read(wal::segment_path(&wal_dir, 2)).unwrap();
        // Simulate: segment 1 landed + checkpointed, then segment 2's files written, crash.
        let (state, next, _) = recover(&wal_dir, &landing, &policy, true, 1).await.unwrap();
        assert_eq!(next, 3);
        let after_first = files(&data);
        let cp_full = checkpoint::load(&wal_dir).unwrap();
        assert_eq!(cp_full.state, state);
        // Roll the checkpoint back to "segment 1 only" and put segment 2 back.
        let mut st1 = DedupState::default();
        let mut out = SegmentOutput::default();
        process::process(&mut st1, &rec("a", 1..=10, 1), &policy, &mut out, None);
        process::process(&mut st1, &rec("b", 1..=5, 2), &policy, &mut out, None);
        process::declare_missing(&mut st1, 1, &mut out, None);
        checkpoint::store(
            &wal_dir,
            &Checkpoint {
                last_segment: Some(1),
                state: st1,
            },
        )
        .unwrap();
        std::fs::write(wal::segment_path(&wal_dir, 2), &seg2).unwrap();
        let (state2, next2, durable) = recover(&wal_dir, &landing, &policy, true, 1).await.unwrap();
        assert_eq!((state2, next2), (state, 3));
        // The replayed segment's seqs, redelivered or new, are confirmed once connected.
        let confirmed = durable.into_confirmations();
        let a = confirmed
            .iter()
            .find(|c| c.device_id.as_str() == "a")
            .unwrap();
        assert_eq!(a.seqs.ranges(), &[(1, 20)]);
        assert_eq!(files(&data), after_first, "replay must not write anything");
        let raw_rows = landed_in(&landing).await.1.len();
        assert_eq!(
            raw_rows, 26,
            "10 + 5 + 10 new + 1 new, the redelivery deduplicated"
        );
    }

    /// `(reason, topic)` of every dead letter and `(device, seq)` of every raw row.
    type Landed = (Vec<(String, String)>, Vec<(String, u64)>);

    /// What the landing's tables hold (their current snapshots), read back.
    async fn landed_in(landing: &Landing) -> Landed {
        use arrow::array::AsArray;
        let (mut dead, mut raw) = (Vec::new(), Vec::new());
        for (table, is_raw) in [(landing.deadletter(), false), (landing.raw(), true)] {
            for f in table.snapshot().await.unwrap().files() {
                for b in table.read_file(&f, None).await.unwrap() {
                    let col = |n: &str| b.column_by_name(n).unwrap().clone();
                    if is_raw {
                        let (dev, seq) = (col("device_id"), col("seq"));
                        let seq = seq.as_primitive::<arrow::datatypes::Int64Type>();
                        for i in 0..b.num_rows() {
                            raw.push((
                                dev.as_string::<i32>().value(i).to_string(),
                                seq.value(i) as u64,
                            ));
                        }
                    } else {
                        let (reason, topic) = (col("reason"), col("topic"));
                        for i in 0..b.num_rows() {
                            dead.push((
                                reason.as_string::<i32>().value(i).to_string(),
                                topic.as_string::<i32>().value(i).to_string(),
                            ));
                        }
                    }
                }
            }
        }
        raw.sort();
        (dead, raw)
    }

    /// A message whose processing panics, in the WAL: replay dead-letters it as
    /// `processing_failed` and lands its neighbours, instead of crash-looping.
    #[tokio::test]
    async fn hostile_poison_in_the_wal_is_isolated_during_replay() {
        let dir = tempfile::tempdir().unwrap();
        let (wal_dir, data) = (dir.path().join("wal"), dir.path().join("data"));
        std::fs::create_dir_all(&wal_dir).unwrap();
        let mut cfg = CollectorConfig::new("t", data.clone(), wal_dir.clone());
        cfg.mqtt.host = Some("unused".into());
        let landing = Landing::open(&cfg).await.unwrap();
        let rec = |dev: &str, seqs, at| WalRecord {
            received_at_us: T0_US + at,
            topic: format!("gridmeter/v1/{dev}/readings"),
            payload: payload(dev, seqs),
        };
        let mut w = WalWriter::open(&wal_dir, 1).unwrap();
        w.append_group(&[
            rec("good", 1..=5, 1),
            rec("test-poison", 10..=20, 2),
            rec("good", 6..=10, 3),
        ])
        .unwrap();
        drop(w);
        let (state, next, _) = recover(&wal_dir, &landing, &Policy::default(), true, 1)
            .await
            .unwrap();
        assert_eq!(next, 2);
        assert!(!state.devices["good"].seen.is_empty());
        let (dead, raw) = landed_in(&landing).await;
        assert_eq!(
            dead,
            vec![(
                "processing_failed".to_string(),
                "gridmeter/v1/test-poison/readings".to_string()
            )]
        );
        let expect: Vec<(String, u64)> = (1..=10).map(|s| ("good".to_string(), s)).collect();
        assert_eq!(raw, expect);
        assert!(wal::list_segments(&wal_dir).unwrap().is_empty());
    }

    /// The same poison during live ingest: the loop carries on with the next messages.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hostile_poison_is_isolated_during_live_ingest() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        std::fs::create_dir_all(&wal_dir).unwrap();
        let metrics = Metrics::new(&Registry::new()).unwrap();
        let ingest = Ingest {
            wal_dir: wal_dir.clone(),
            policy: Policy::default(),
            group_max: 1,
            flush_max_readings: 1_000_000,
            flush_interval: Duration::from_secs(3600),
            detect_missing: true,
            missing_after_us: 1_000_000,
            metrics: metrics.clone(),
            confirm_wal: None,
        };
        let (tx, rx) = mpsc::channel(16);
        let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
        let (to_flusher, from_ingest) = ToFlusher::new();
        let handle = Handle::current();
        let thread = std::thread::spawn(move || {
            ingest.run(&handle, DedupState::default(), 1, rx, ack_tx, to_flusher)
        });
        let budget = std::sync::Arc::new(tokio::sync::Semaphore::new(1 << 20));
        for (dev, seqs) in [("good", 1..=5), ("test-poison", 10..=20), ("good", 6..=10)] {
            let p = payload(dev, seqs);
            let permit = budget
                .clone()
                .acquire_many_owned(p.len() as u32)
                .await
                .unwrap();
            let publish = rumqttc::Publish::new(
                format!("gridmeter/v1/{dev}/readings"),
                rumqttc::QoS::AtLeastOnce,
                p.to_vec(),
            );
            tx.send(Incoming {
                publish,
                received_at_us: T0_US + 30_000_000,
                at: Instant::now(),
                permit,
            })
            .await
            .unwrap();
        }
        drop(tx);
        let result = tokio::task::spawn_blocking(move || thread.join().unwrap())
            .await
            .unwrap();
        assert!(result.is_ok(), "{result:?}");
        let mut acked = 0;
        while let Ok(g) = ack_rx.try_recv() {
            acked += g.len();
        }
        assert_eq!(acked, 3, "every message was made durable and acked");
        let sealed: Vec<Sealed> = from_ingest.sealed.try_iter().collect();
        let dead: Vec<&str> = sealed
            .iter()
            .flat_map(|s| s.out.dead.iter().map(|d| d.reason.as_str()))
            .collect();
        assert_eq!(dead, vec!["processing_failed"]);
        let raw: Vec<u64> = sealed
            .iter()
            .flat_map(|s| s.out.raw.iter().map(|r| r.reading.seq))
            .collect();
        assert_eq!(raw, (1..=10).collect::<Vec<_>>());
        assert_eq!(
            budget.available_permits(),
            1 << 20,
            "payloads were released"
        );
        assert_eq!(
            metrics
                .messages_rejected
                .with_label_values(&["processing_failed"])
                .get(),
            1
        );
    }
}
