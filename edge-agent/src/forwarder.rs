//! Publishing buffered readings over mTLS MQTT 5; deleting them only when the collector
//! confirms they landed (or, with `require_confirmation = false`, on the broker's PUBACK).
//!
//! # From buffer to deleted
//! 1. A batch is taken from the buffer (in flight) and published, QoS 1.
//! 2. PUBACK with success: the broker took it. The batch now *awaits its confirmation*
//!    (see [`crate::delivery`]); it stays in SQLite.
//! 3. The collector publishes `gridmeter/v1/{device_id}/confirm` (docs/wire-format.md) once
//!    the readings are durable; the agent subscribes to that topic on every connection and
//!    deletes what a confirmation covers. With several collectors on a shared subscription,
//!    each confirms what it landed, and the confirmations simply add up.
//! 4. A batch whose confirmation does not come within `confirm_timeout` is released and
//!    sent again, oldest first; the wait doubles with every resend up to
//!    `confirm_timeout_max` (with jitter). Sending twice is harmless: the collector
//!    deduplicates on `(device_id, seq)` and confirms duplicates again.
//!
//! A PUBACK with an MQTT 5 failure reason (`not authorized`: the ACL refused the topic;
//! `no matching subscribers`: nobody will ever read it; a quota) means the broker dropped
//! the message: the batch is not counted as sent, the reason is logged and counted
//! (`gridmeter_agent_publish_refused_total{reason}`), and the batch is retried with the
//! same backoff as an overdue confirmation.
//!
//! # Device metadata
//! What the sources know of their meters (`sources::meta`) is published retained, QoS 1, on
//! `gridmeter/v1/{device_id}/meta` after every CONNACK and whenever it changes. Its
//! publish takes a place in the FIFO below like a batch does, so packet ids stay attributed;
//! a refused meta publish is logged and tried again at the next connection or change.
//!
//! # Packet ids
//! rumqttc's `publish` returns when the request is queued, before a packet id exists. The
//! event loop assigns ids in request order and reports each as `Outgoing::Publish(pkid)`,
//! so requested batches wait in a FIFO until their `Outgoing::Publish` names their pkid,
//! and `Incoming::PubAck(pkid)` then resolves exactly that batch.
//!
//! # Reconnects
//! On a connection error rumqttc keeps its in-flight publishes and retransmits them with
//! the *same* pkids on the next poll, which would break the FIFO attribution above. So the
//! forwarder never reuses an event loop across connections: every connection attempt gets a
//! fresh client and event loop, built from the certificate files as they are then (a
//! renewed certificate is picked up without a restart). Batches in flight are released and
//! re-read from SQLite; batches awaiting a confirmation keep waiting (the broker has them).
//! Reconnect delays grow exponentially from `reconnect_initial_ms` to `reconnect_max_ms`,
//! with jitter, so a fleet does not reconnect in lock-step after a broker restart.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use gridmeter_core::wire::confirm::{confirm_topic_for, Confirmation, MAX_RANGES_PER_MESSAGE};
use gridmeter_core::wire::meta::meta_topic_for;
use gridmeter_core::wire::{self, compact, json};
use gridmeter_core::Batch;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use rumqttc::{Outgoing, TlsConfiguration, Transport};
use tokio::sync::{watch, Notify};

use crate::buffer::{Buffer, BufferError, OutBatch};
use crate::config::{AgentConfig, WireEncoding};
use crate::metrics::AgentMetrics;
use crate::sources::meta::MetaBoard;
use crate::{lock, AgentError};

/// How long the broker keeps the agent's session (and its confirmation subscription, with
/// the confirmations queued for it) while the agent is offline: one day.
pub const SESSION_EXPIRY_SECS: u32 = 86_400;

/// A published batch, until its PUBACK.
struct InFlight {
    batch: OutBatch,
    sent_at: Instant,
}

/// A batch the broker took (or refused), until its confirmation or its resend.
struct Pending {
    due: Instant,
    runs: Vec<(u64, u64)>,
    gap_ids: Vec<i64>,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.due == other.due
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.due.cmp(&other.due)
    }
}

pub(crate) struct Forwarder {
    pub config: Arc<AgentConfig>,
    /// Rebuilt from its files at every connection attempt (certificate renewal).
    pub tls: gridmeter_core::tls::ClientTls,
    pub buffer: Arc<Mutex<Buffer>>,
    pub metrics: AgentMetrics,
    pub notify: Arc<Notify>,
    pub stop: watch::Receiver<bool>,
    /// Batches awaiting a confirmation, by resend time (kept across connections).
    pending: BinaryHeap<Reverse<Pending>>,
    /// The sources' nameplate data, published on the meta topic.
    meta: Option<MetaBoard>,
}

/// Encodes the readings and gap records of a batch.
pub fn encode(batch: &Batch, encoding: WireEncoding) -> std::io::Result<Vec<u8>> {
    match encoding {
        WireEncoding::Compact => compact::encode(batch),
        WireEncoding::Json => Ok(json::encode(batch)),
    }
}

/// A stable label for a PUBACK failure reason (metrics and logs).
fn refused_reason(r: PubAckReason) -> &'static str {
    match r {
        PubAckReason::Success => "success",
        PubAckReason::NoMatchingSubscribers => "no_matching_subscribers",
        PubAckReason::UnspecifiedError => "unspecified_error",
        PubAckReason::ImplementationSpecificError => "implementation_specific_error",
        PubAckReason::NotAuthorized => "not_authorized",
        PubAckReason::TopicNameInvalid => "topic_name_invalid",
        PubAckReason::PacketIdentifierInUse => "packet_identifier_in_use",
        PubAckReason::QuotaExceeded => "quota_exceeded",
        PubAckReason::PayloadFormatInvalid => "payload_format_invalid",
    }
}

/// What the operator should check for a refused publish.
fn refused_hint(r: PubAckReason) -> &'static str {
    match r {
        PubAckReason::NotAuthorized => {
            "the broker's ACL refused the topic: check that device_id equals the certificate's CN and that the ACL lets the device publish to its own topic"
        }
        PubAckReason::NoMatchingSubscribers => {
            "no collector subscribes to the readings topic (no collector has ever connected, or its session expired)"
        }
        PubAckReason::QuotaExceeded => "the broker's queue for the collector is full",
        _ => "the broker dropped the message",
    }
}

impl Forwarder {
    pub fn new(
        config: Arc<AgentConfig>,
        tls: gridmeter_core::tls::ClientTls,
        buffer: Arc<Mutex<Buffer>>,
        metrics: AgentMetrics,
        notify: Arc<Notify>,
        stop: watch::Receiver<bool>,
    ) -> Forwarder {
        Forwarder {
            config,
            tls,
            buffer,
            metrics,
            notify,
            stop,
            pending: BinaryHeap::new(),
            meta: None,
        }
    }

    /// Publishes the sources' metadata on the device's meta topic.
    pub fn with_meta(mut self, meta: MetaBoard) -> Forwarder {
        self.meta = Some(meta);
        self
    }

    /// Requests the retained publish of the current metadata document, if there is one.
    fn publish_meta(
        &self,
        client: &AsyncClient,
        requested: &mut VecDeque<Option<InFlight>>,
    ) -> Result<(), String> {
        let Some(doc) = self
            .meta
            .as_ref()
            .and_then(|m| m.document(&self.config.device_id))
        else {
            return Ok(());
        };
        client
            .try_publish(
                meta_topic_for(&self.config.device_id),
                QoS::AtLeastOnce,
                true,
                wire::meta::encode(&doc),
            )
            .map_err(|e| format!("meta publish request: {e}"))?;
        requested.push_back(None);
        Ok(())
    }

    /// Connects, publishes and reconnects until `stop`.
    pub async fn run(mut self) -> Result<(), AgentError> {
        let config = self.config.clone();
        let m = &config.mqtt;
        let backoff = || {
            backon::ExponentialBuilder::new()
                .with_min_delay(Duration::from_millis(m.reconnect_initial_ms))
                .with_max_delay(Duration::from_millis(m.reconnect_max_ms))
                .with_factor(2.0)
                .with_jitter()
                .without_max_times()
                .build()
        };
        let mut delays = backoff();
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
                Ok(false) => delays = backoff(),
                Err(e) => tracing::warn!("mqtt {}:{}: {e}", m.host, m.port),
            }
            self.metrics.connected.set(0);
            let delay = delays
                .next()
                .unwrap_or(Duration::from_millis(m.reconnect_max_ms));
            tracing::info!("reconnecting in {delay:?}");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.stop.changed() => return Ok(()),
            }
        }
    }

    fn options(&mut self) -> MqttOptions {
        // Read the files at every attempt: a renewed certificate is used on the next
        // connection without a restart.
        let tls = self.tls.reload();
        let cfg = &self.config;
        let m = &cfg.mqtt;
        let mut opts = MqttOptions::new(cfg.device_id.as_str(), m.host.clone(), m.port);
        opts.set_keep_alive(Duration::from_secs(m.keep_alive_secs.max(1)));
        opts.set_connection_timeout(m.connect_timeout.as_secs().max(1));
        opts.set_clean_start(false);
        opts.set_session_expiry_interval(Some(SESSION_EXPIRY_SECS));
        opts.set_outgoing_inflight_upper_limit((m.max_inflight + 1).min(u16::MAX as usize) as u16);
        opts.set_max_packet_size(Some(4 * 1024 * 1024));
        opts.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls)));
        opts
    }

    /// One connection. Ok(true): stopped; Ok(false): lost after it was up; Err: failed.
    async fn connection(&mut self) -> Result<bool, String> {
        let cfg = self.config.clone();
        let m = &cfg.mqtt;
        let (client, mut eventloop) = AsyncClient::new(self.options(), m.max_inflight * 2 + 8);
        lock(&self.buffer).release_inflight();
        let topic = wire::topic_for(&cfg.device_id);
        let confirm_topic = confirm_topic_for(&cfg.device_id);
        // Requested publishes in order: a batch, or `None` for a metadata document.
        let mut requested: VecDeque<Option<InFlight>> = VecDeque::new();
        let mut meta_pkid: Option<u16> = None;
        let mut meta_changes = self.meta.as_ref().map(|m| m.subscribe());
        let mut by_pkid: HashMap<u16, InFlight> = HashMap::new();
        let mut connected = false;
        let mut stopping: Option<tokio::time::Instant> = None;
        let mut resend_tick = tokio::time::interval(Duration::from_millis(500));
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
                        tracing::info!(device = %cfg.device_id, session_present = ack.session_present, "connected to {}:{}", m.host, m.port);
                        connected = true;
                        self.metrics.connected.set(1);
                        self.publish_meta(&client, &mut requested)?;
                        if m.require_confirmation {
                            client
                                .try_subscribe(confirm_topic.clone(), QoS::AtLeastOnce)
                                .map_err(|e| format!("subscribe request: {e}"))?;
                        }
                        fill = true;
                    }
                    Ok(Event::Incoming(Packet::SubAck(s))) => {
                        for code in &s.return_codes {
                            if !matches!(code, SubscribeReasonCode::Success(_)) {
                                tracing::error!(
                                    "the broker refused the subscription to {confirm_topic} ({code:?}): \
                                     readings stay buffered until confirmations can arrive; \
                                     check the ACL (a device must be allowed to read its own confirm topic)"
                                );
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if p.topic.as_ref() == confirm_topic.as_bytes() {
                            self.confirmed(&p.payload).await.map_err(|e| e.to_string())?;
                            fill = true;
                        }
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        match requested.pop_front() {
                            Some(None) => meta_pkid = Some(pkid),
                            Some(Some(f)) => {
                                if by_pkid.insert(pkid, f).is_some() {
                                    // Never guess which batch an ack belongs to: start over.
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
                            Some(f) => self.acked(f, ack.reason).await.map_err(|e| e.to_string())?,
                            None if meta_pkid == Some(ack.pkid) => {
                                meta_pkid = None;
                                if ack.reason != PubAckReason::Success {
                                    tracing::warn!(
                                        "broker refused the metadata publish ({}): {}",
                                        refused_reason(ack.reason),
                                        "check that the ACL lets a device publish its own meta topic"
                                    );
                                }
                            }
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
                r = async {
                    match meta_changes.as_mut() {
                        Some(rx) => rx.changed().await,
                        None => std::future::pending().await,
                    }
                }, if connected && stopping.is_none() => {
                    match r {
                        Ok(()) => self.publish_meta(&client, &mut requested)?,
                        Err(_) => meta_changes = None,
                    }
                }
                // Only once connected: rumqttc's poll is not cancel-safe while it connects; a
                // dropped poll abandons the half-open connection and the next poll opens a
                // second one under the same client id.
                _ = resend_tick.tick(), if connected => {
                    if self.resend_due() > 0 {
                        fill = true;
                    }
                }
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
                    let Some(out) = self.next_batch().await? else {
                        break;
                    };
                    let batch = Batch {
                        device_id: cfg.device_id.clone(),
                        readings: out.readings.clone(),
                        gaps: out.gaps.iter().map(|(_, g)| *g).collect(),
                    };
                    let payload = encode(&batch, m.encoding).map_err(|e| e.to_string())?;
                    client
                        .try_publish(topic.clone(), QoS::AtLeastOnce, false, payload)
                        .map_err(|e| format!("publish request: {e}"))?;
                    requested.push_back(Some(InFlight {
                        batch: out,
                        sent_at: Instant::now(),
                    }));
                }
            }
        }
    }

    async fn next_batch(&self) -> Result<Option<OutBatch>, String> {
        let buffer = self.buffer.clone();
        let (max, live) = (
            self.config.mqtt.batch_max_readings,
            self.config.mqtt.live_every,
        );
        tokio::task::spawn_blocking(move || lock(&buffer).next_batch(max, live))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// The resend delay after `resends` resends: `confirm_timeout` doubling up to
    /// `confirm_timeout_max`, with jitter.
    fn resend_delay(&self, resends: u32) -> Duration {
        let m = &self.config.mqtt;
        backon::ExponentialBuilder::new()
            .with_min_delay(m.confirm_timeout)
            .with_max_delay(m.confirm_timeout_max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
            .nth(resends as usize)
            .unwrap_or(m.confirm_timeout_max)
            .min(m.confirm_timeout_max)
    }

    /// A PUBACK arrived for `f`.
    async fn acked(&mut self, f: InFlight, reason: PubAckReason) -> Result<(), AgentError> {
        self.metrics
            .publish_latency
            .observe(f.sent_at.elapsed().as_secs_f64());
        let n = f.batch.readings.len() as u64;
        let refused = reason != PubAckReason::Success;
        if refused {
            let label = refused_reason(reason);
            self.metrics
                .publish_refused
                .with_label_values(&[label])
                .inc();
            tracing::error!(
                readings = n,
                "broker refused the publish ({label}): {}; the readings stay buffered and are retried",
                refused_hint(reason)
            );
        } else {
            self.metrics.sent.inc_by(n);
        }
        let buffer = self.buffer.clone();
        if !self.config.mqtt.require_confirmation && !refused {
            let confirmed = self.metrics.confirmed.clone();
            return tokio::task::spawn_blocking(move || {
                lock(&buffer).ack(&f.batch)?;
                confirmed.inc_by(n);
                Ok::<_, BufferError>(())
            })
            .await
            .map_err(|e| AgentError::Task(e.to_string()))?
            .map_err(AgentError::from);
        }
        let (runs, gap_ids) = (f.batch.runs(), f.batch.gap_ids());
        let resends = lock(&self.buffer).published(&runs, &gap_ids, Instant::now());
        self.pending.push(Reverse(Pending {
            due: Instant::now() + self.resend_delay(resends),
            runs,
            gap_ids,
        }));
        Ok(())
    }

    /// A confirmation arrived: delete what it covers.
    async fn confirmed(&mut self, payload: &[u8]) -> Result<(), AgentError> {
        let c = match Confirmation::decode(payload, 2 * MAX_RANGES_PER_MESSAGE) {
            Ok(c) if c.device_id == self.config.device_id => c,
            Ok(c) => {
                tracing::warn!(other = %c.device_id, "confirmation for another device ignored");
                return Ok(());
            }
            Err(e) => {
                tracing::warn!("unreadable confirmation ignored: {e}");
                return Ok(());
            }
        };
        self.metrics.confirmations.inc();
        let buffer = self.buffer.clone();
        let confirmed = self.metrics.confirmed.clone();
        // The counter moves with the delete, in the same task: whoever sees the buffer
        // shrink sees the confirmations counted, even if this future is dropped meanwhile.
        let done = tokio::task::spawn_blocking(move || {
            let done = lock(&buffer).confirm(&c)?;
            confirmed.inc_by(done.readings);
            Ok::<_, BufferError>(done)
        })
        .await
        .map_err(|e| AgentError::Task(e.to_string()))??;
        if let Some(t) = done.first_sent {
            self.metrics
                .confirmation_latency
                .observe(t.elapsed().as_secs_f64());
        }
        Ok(())
    }

    /// Releases the batches whose confirmation is overdue (they are resent oldest first) and
    /// forgets confirmed ones. Returns the number of readings released.
    fn resend_due(&mut self) -> u64 {
        let now = Instant::now();
        let mut released = 0;
        let mut buffer = lock(&self.buffer);
        while let Some(Reverse(p)) = self.pending.peek() {
            if p.due > now {
                break;
            }
            let Some(Reverse(p)) = self.pending.pop() else {
                break;
            };
            released += buffer.resend(&p.runs, &p.gap_ids);
        }
        // Confirmed batches leave the heap only when due; drop them early once it is big.
        if self.pending.len() > 4096 {
            let kept: Vec<Reverse<Pending>> = std::mem::take(&mut self.pending)
                .into_iter()
                .filter(|Reverse(p)| buffer.awaiting(&p.runs, &p.gap_ids))
                .collect();
            self.pending = kept.into_iter().collect();
        }
        drop(buffer);
        if released > 0 {
            self.metrics.resends.inc_by(released);
            tracing::info!(
                readings = released,
                "no confirmation in time: resending, oldest first"
            );
        }
        released
    }
}
