//! The MQTT side: a persistent session with manual acks.
//!
//! `clean_session = false` and a stable client id make the broker keep the subscription
//! and every unacked QoS 1 message while the collector is down, and redeliver them when it
//! comes back. Manual acks make the PUBACK wait for the WAL fsync (see [`crate::wal`]).
//! The shipped brokers make the client id the certificate's CN (`collector-<name>`), so each
//! running collector needs its own certificate.
//!
//! The TLS configuration is rebuilt from its files before every reconnect
//! ([`gridmeter_core::tls::ClientTls`]): a renewed certificate is presented at the next
//! connection, without a restart.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gridmeter_core::tls::ClientTls;
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS, TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;

/// A message as handed to the ingest thread.
pub struct Incoming {
    pub publish: Publish,
    pub received_at_us: i64,
    pub at: Instant,
    /// Its payload's share of the ingest buffer, released when the message is dropped.
    pub permit: OwnedSemaphorePermit,
}

/// MQTT options for the collector: mTLS, persistent session, manual acks.
pub fn options(
    client_id: &str,
    host: &str,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    keep_alive: Duration,
    max_packet_bytes: usize,
) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, host, port);
    o.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls)));
    o.set_clean_session(false);
    o.set_manual_acks(true);
    o.set_keep_alive(keep_alive);
    o.set_max_packet_size(max_packet_bytes, 64 * 1024);
    o.set_request_channel_capacity(100_000);
    // Confirmations are QoS 1 publishes, one per device and flush: with a fleet of hundreds
    // of devices the default window of 100 packet ids wraps while earlier confirmations are
    // still unacknowledged, and rumqttc then stalls the connection on the packet-id
    // collision until it times out and reconnects. The whole packet-id space avoids that.
    o.set_inflight(u16::MAX);
    o
}

/// How long connecting, or writing (acks) to the broker, may take before the connection is
/// dropped and re-established.
///
/// rumqttc sends each manual PUBACK as its own write (one TLS record), and Mosquitto reads
/// one TLS record per client per loop iteration, so at tens of thousands of messages/s a
/// busy broker can take seconds to drain the acks. rumqttc's default of 5 s then drops a
/// healthy connection, and the broker resends the whole unacked window (harmless, dedup
/// absorbs it, but throughput collapses into redeliveries). A dead peer is still detected
/// by the keep-alive.
pub const NETWORK_TIMEOUT_SECS: u64 = 30;

/// Network options for the collector's connection (see [`NETWORK_TIMEOUT_SECS`]).
pub fn network_options() -> rumqttc::NetworkOptions {
    let mut n = rumqttc::NetworkOptions::new();
    n.set_connection_timeout(NETWORK_TIMEOUT_SECS);
    n
}

/// The collector's side of the broker connection.
pub struct Session {
    pub eventloop: EventLoop,
    pub client: AsyncClient,
    /// What it subscribes to: the readings (plain or shared) and the devices' metadata.
    pub filters: Vec<String>,
    /// The certificate files, reloaded before every reconnect.
    pub tls: ClientTls,
}

/// Polls the event loop until `stop` turns true: forwards publishes to `tx`, (re)subscribes
/// on every connection that has no session yet, and reconnects after errors, with the TLS
/// configuration reloaded from the session's files. Each message takes its payload's size in
/// permits of `budget` (at most all of them) before it is forwarded: while the ingest thread
/// holds the whole budget, no more is read.
pub async fn drive(
    session: Session,
    tx: mpsc::Sender<Incoming>,
    budget: Arc<Semaphore>,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) {
    let Session {
        mut eventloop,
        client,
        filters,
        mut tls,
    } = session;
    let mut backoff = Duration::from_millis(200);
    let budget_total = budget.available_permits().max(1);
    loop {
        let ev = tokio::select! {
            ev = eventloop.poll() => ev,
            _ = stop.changed() => break,
        };
        match ev {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let want = p
                    .payload
                    .len()
                    .clamp(1, budget_total)
                    .min(u32::MAX as usize) as u32;
                let permit = tokio::select! {
                    permit = budget.clone().acquire_many_owned(want) => permit,
                    _ = stop.changed() => break,
                };
                let Ok(permit) = permit else { break };
                let m = Incoming {
                    publish: p,
                    received_at_us: chrono::Utc::now().timestamp_micros(),
                    at: Instant::now(),
                    permit,
                };
                if tx.send(m).await.is_err() {
                    break;
                }
            }
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                metrics.connected.set(1);
                backoff = Duration::from_millis(200);
                tracing::info!(session_present = ack.session_present, filters = ?filters, "connected to broker");
                // Subscribing again is harmless, covers a broker that lost its session, and
                // has the broker send the retained metadata documents again.
                for filter in &filters {
                    if let Err(e) = client.try_subscribe(filter.clone(), QoS::AtLeastOnce) {
                        tracing::error!("subscribe {filter}: {e}");
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(s))) => {
                tracing::info!(codes = ?s.return_codes, "subscribed");
            }
            Ok(_) => {}
            Err(e) => {
                metrics.connected.set(0);
                tracing::warn!(
                    "broker connection: {}; reconnecting in {backoff:?}",
                    tls.explain(&e)
                );
                reload_tls(&mut eventloop, &mut tls);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    metrics.connected.set(0);
    let _ = client.try_disconnect();
}

/// Puts a TLS configuration freshly loaded from `tls`'s files into the event loop's
/// options, which rumqttc uses for its next connection attempt.
fn reload_tls(eventloop: &mut EventLoop, tls: &mut ClientTls) {
    let config = tls.reload();
    eventloop
        .mqtt_options
        .set_transport(Transport::Tls(TlsConfiguration::Rustls(config)));
}

/// Sends the PUBACKs the ingest thread releases (after the fsync).
pub async fn ack_loop(client: AsyncClient, mut rx: mpsc::UnboundedReceiver<Vec<Publish>>) {
    while let Some(group) = rx.recv().await {
        for p in &group {
            if let Err(e) = client.ack(p).await {
                // The connection is gone; the broker will redeliver, dedup absorbs it.
                tracing::debug!("ack pkid {}: {e}", p.pkid);
            }
        }
    }
}
