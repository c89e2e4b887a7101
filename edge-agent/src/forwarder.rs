//! Publishing buffered readings over mTLS MQTT, deleting them only on PUBACK.
//!
//! # Packet ids
//! rumqttc's `publish` returns when the request is queued, before a packet id exists. The
//! event loop assigns ids in request order and reports each as `Outgoing::Publish(pkid)`,
//! so requested batches wait in a FIFO until their `Outgoing::Publish` names their pkid,
//! and `Incoming::PubAck(pkid)` then deletes exactly that batch's readings and gap records.
//!
//! # Reconnects
//! On a connection error rumqttc keeps its in-flight publishes and, on the next poll,
//! retransmits them with the *same* pkids (rumqttc 0.25 `EventLoop::clean`/`pending`),
//! emitting `Outgoing::Publish` again, which would break the FIFO attribution above. So the
//! forwarder never reuses an event loop across connections: every connection attempt gets a
//! fresh `AsyncClient`/`EventLoop` (no rumqttc-side retransmission), the in-flight
//! bookkeeping is released, and everything not acknowledged is re-read from SQLite and sent
//! again oldest-first. A batch sent twice is harmless (the collector deduplicates on
//! `(device_id, seq)`); a batch deleted without a PUBACK would be a loss and cannot happen.
//! The session is persistent (`clean_session = false`, client id = device_id) as the
//! deployment expects; QoS 1 publishes from client to broker need no broker-side session
//! state to be safe because the buffer is the retransmission queue.
//!
//! Reconnect delays grow exponentially from `reconnect_initial_ms` to `reconnect_max_ms`
//! with "equal jitter" (a uniformly random delay between half and all of the current step)
//! so a fleet of agents does not reconnect in lock-step after a broker restart.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gridmeter_core::wire::{self, compact, json};
use gridmeter_core::Batch;
use rand::Rng;
use rumqttc::{
    AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration, Transport,
};
use tokio::sync::{watch, Notify};

use crate::buffer::{Buffer, OutBatch};
use crate::config::{AgentConfig, WireEncoding};
use crate::metrics::AgentMetrics;
use crate::{lock, AgentError};

struct InFlight {
    batch: OutBatch,
    sent_at: Instant,
}

pub(crate) struct Forwarder {
    pub config: Arc<AgentConfig>,
    /// Rebuilt from its files at every connection attempt (certificate renewal).
    pub tls: gridmeter_core::tls::ClientTls,
    pub buffer: Arc<Mutex<Buffer>>,
    pub metrics: AgentMetrics,
    pub notify: Arc<Notify>,
    pub stop: watch::Receiver<bool>,
}

/// Encodes the readings and gap records of a batch.
pub fn encode(batch: &Batch, encoding: WireEncoding) -> std::io::Result<Vec<u8>> {
    match encoding {
        WireEncoding::Compact => compact::encode(batch),
        WireEncoding::Json => Ok(json::encode(batch)),
    }
}

impl Forwarder {
    pub async fn run(mut self) -> Result<(), AgentError> {
        let config = self.config.clone();
        let m = &config.mqtt;
        let initial = Duration::from_millis(m.reconnect_initial_ms);
        let max = Duration::from_millis(m.reconnect_max_ms);
        let mut backoff = initial;
        let mut attempts = 0u64;
        loop {
            if *self.stop.borrow() {
                return Ok(());
            }
            if attempts > 0 {
                self.metrics.reconnects.inc();
            }
            attempts += 1;
            match self.connection().await {
                Ok(true) => return Ok(()),
                Ok(false) => backoff = initial,
                Err(e) => tracing::warn!("mqtt {}:{}: {e}", m.host, m.port),
            }
            self.metrics.connected.set(0);
            let half = backoff / 2;
            let delay = half + half.mul_f64(rand::rng().random_range(0.0..=1.0));
            tracing::info!("reconnecting in {delay:?}");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.stop.changed() => return Ok(()),
            }
            backoff = (backoff * 2).min(max);
        }
    }

    /// One connection. Ok(true): stopped; Ok(false): lost after it was up; Err: failed.
    async fn connection(&mut self) -> Result<bool, String> {
        let cfg = self.config.clone();
        let m = &cfg.mqtt;
        let mut opts = MqttOptions::new(cfg.device_id.as_str(), m.host.clone(), m.port);
        opts.set_keep_alive(Duration::from_secs(m.keep_alive_secs.max(1)));
        opts.set_clean_session(false);
        opts.set_inflight((m.max_inflight + 1).min(u16::MAX as usize) as u16);
        opts.set_max_packet_size(4 * 1024 * 1024, 4 * 1024 * 1024);
        opts.set_transport(Transport::Tls(TlsConfiguration::Rustls(self.tls.reload())));
        let (client, mut eventloop) = AsyncClient::new(opts, m.max_inflight * 2 + 8);
        lock(&self.buffer).release_inflight();
        let topic = wire::topic_for(&cfg.device_id);
        let mut requested: VecDeque<InFlight> = VecDeque::new();
        let mut by_pkid: HashMap<u16, InFlight> = HashMap::new();
        let mut connected = false;
        let mut stopping: Option<tokio::time::Instant> = None;
        loop {
            let mut fill = false;
            let grace = async {
                match stopping {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ev = eventloop.poll() => match ev {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        tracing::info!(session_present = ack.session_present, "connected to {}:{}", m.host, m.port);
                        connected = true;
                        self.metrics.connected.set(1);
                        fill = true;
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        match requested.pop_front() {
                            Some(f) => {
                                if by_pkid.insert(pkid, f).is_some() {
                                    // Never guess which batch an ack belongs to: start over
                                    // (everything unacked is resent from SQLite).
                                    return Err(format!("packet id {pkid} reused while still unacknowledged"));
                                }
                            }
                            None => {
                                return Err(format!("publish event (pkid {pkid}) without a requested batch"));
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        match by_pkid.remove(&ack.pkid) {
                            Some(f) => self.acked(f).await.map_err(|e| e.to_string())?,
                            None => tracing::debug!(pkid = ack.pkid, "PUBACK for an unknown packet id"),
                        }
                        fill = true;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        return if connected { tracing::warn!("connection lost: {}", self.tls.explain(&e)); Ok(false) } else { Err(self.tls.explain(&e)) };
                    }
                },
                _ = self.notify.notified(), if connected && stopping.is_none() => fill = true,
                _ = self.stop.changed(), if stopping.is_none() => {
                    // Give in-flight batches a moment to be acknowledged; they are resent
                    // at the next start otherwise.
                    stopping = Some(tokio::time::Instant::now() + Duration::from_secs(2));
                }
                _ = grace => {
                    let _ = client.try_disconnect();
                    return Ok(true);
                }
            }
            if stopping.is_some() && requested.is_empty() && by_pkid.is_empty() {
                let _ = client.try_disconnect();
                let _ = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
                return Ok(true);
            }
            if fill && connected && stopping.is_none() {
                while requested.len() + by_pkid.len() < m.max_inflight {
                    let buffer = self.buffer.clone();
                    let (max, live) = (m.batch_max_readings, m.live_every);
                    let next =
                        tokio::task::spawn_blocking(move || lock(&buffer).next_batch(max, live))
                            .await
                            .map_err(|e| e.to_string())?
                            .map_err(|e| e.to_string())?;
                    let Some(mut out) = next else { break };
                    let mut batch = Batch {
                        device_id: cfg.device_id.clone(),
                        readings: std::mem::take(&mut out.readings),
                        gaps: out.gaps.iter().map(|(_, g)| *g).collect(),
                    };
                    let payload = encode(&batch, m.encoding).map_err(|e| e.to_string())?;
                    out.readings = std::mem::take(&mut batch.readings);
                    if let Err(e) =
                        client.try_publish(topic.clone(), QoS::AtLeastOnce, false, payload)
                    {
                        return Err(format!("publish request: {e}"));
                    }
                    requested.push_back(InFlight {
                        batch: out,
                        sent_at: Instant::now(),
                    });
                }
            }
        }
    }

    async fn acked(&self, f: InFlight) -> Result<(), AgentError> {
        self.metrics
            .publish_latency
            .observe(f.sent_at.elapsed().as_secs_f64());
        let n = f.batch.readings.len() as u64;
        let buffer = self.buffer.clone();
        tokio::task::spawn_blocking(move || lock(&buffer).ack(&f.batch))
            .await
            .map_err(|e| AgentError::Task(e.to_string()))??;
        self.metrics.sent.inc_by(n);
        Ok(())
    }
}
