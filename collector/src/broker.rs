//! The embedded broker: rumqttd with TLS and client-certificate verification, so the demo
//! runs with nothing installed. **For local demos only.**
//!
//! rumqttd 0.20 verifies client certificates against the CA but has no per-device ACL and
//! no hook to add one: its only authentication hook sees the client id, username and
//! password of CONNECT, never the certificate, and nothing is called per PUBLISH or
//! SUBSCRIBE. So any certified client may publish on any device's topic (the collector
//! still dead-letters a payload whose device_id differs from its topic's, but a client can
//! send both) and read everything. It listens on 127.0.0.1 only, is announced as demo-only
//! ([`DEMO_ONLY`]) wherever it is started, and cannot be stopped in-process (its threads
//! end with the process). Deployments use Mosquitto or EMQX with the shipped ACLs
//! (deploy/mosquitto/, deploy/emqx/).

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rumqttd::{Config, ConnectionSettings, RouterConfig, ServerSettings, TlsConfig};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("embedded broker: {path} is missing (create the PKI with `gridmeter pki init`)")]
    MissingFile { path: PathBuf },
    #[error("embedded broker: {0}")]
    Io(#[from] std::io::Error),
    #[error("embedded broker did not listen on 127.0.0.1:{0} within 20 s")]
    NotListening(u16),
}

/// What the embedded broker is not: printed by the demo, logged by a collector that starts it.
pub const DEMO_ONLY: &str = "the embedded broker is for local demos only: it checks client \
    certificates but has no ACL, so any certified client may publish for any device; deploy \
    Mosquitto or EMQX with the ACLs in deploy/";

/// A running rumqttd on 127.0.0.1 (mTLS): an MQTT 3.1.1 listener (the collector) and an
/// MQTT 5 listener (agents, which read PUBACK reason codes).
pub struct EmbeddedBroker {
    port: u16,
    port_v5: u16,
    _thread: std::thread::JoinHandle<()>,
}

/// `port` if not 0, else a free port on loopback.
fn pick_port(port: u16) -> std::io::Result<u16> {
    if port != 0 {
        return Ok(port);
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl EmbeddedBroker {
    /// Starts the broker with `<pki_dir>/ca.crt`, `server.crt`, `server.key` on
    /// `127.0.0.1:port` (MQTT 3.1.1; 0 picks a free port) and on a free port for MQTT 5
    /// ([`EmbeddedBroker::port_v5`]), and waits until both accept connections.
    pub fn start(pki_dir: &Path, port: u16) -> Result<EmbeddedBroker, BrokerError> {
        let file = |name: &str| -> Result<String, BrokerError> {
            let p = pki_dir.join(name);
            if !p.is_file() {
                return Err(BrokerError::MissingFile { path: p });
            }
            Ok(p.display().to_string())
        };
        let tls = TlsConfig::Rustls {
            capath: Some(file("ca.crt")?),
            certpath: file("server.crt")?,
            keypath: file("server.key")?,
        };
        let port = pick_port(port)?;
        let port_v5 = pick_port(0)?;
        let listen = SocketAddr::from(([127, 0, 0, 1], port));
        let listen_v5 = SocketAddr::from(([127, 0, 0, 1], port_v5));
        let server = ServerSettings {
            name: "gridmeter-v4-tls".into(),
            listen,
            tls: Some(tls.clone()),
            next_connection_delay_ms: 1,
            connections: ConnectionSettings {
                connection_timeout_ms: 60_000,
                max_payload_size: 16 * 1024 * 1024,
                max_inflight_count: 500,
                auth: None,
                external_auth: None,
                dynamic_filters: true,
            },
        };
        let server_v5 = ServerSettings {
            name: "gridmeter-v5-tls".into(),
            listen: listen_v5,
            tls: Some(tls),
            ..server.clone()
        };
        let config = Config {
            id: 0,
            router: RouterConfig {
                max_connections: 10_010,
                max_outgoing_packet_count: 500,
                max_segment_size: 100 * 1024 * 1024,
                max_segment_count: 10,
                ..Default::default()
            },
            v4: Some(HashMap::from([("1".to_string(), server)])),
            v5: Some(HashMap::from([("1".to_string(), server_v5)])),
            ..Default::default()
        };
        let thread = std::thread::Builder::new()
            .name("embedded-broker".into())
            .spawn(move || {
                let mut broker = rumqttd::Broker::new(config);
                if let Err(e) = broker.start() {
                    tracing::error!("embedded broker stopped: {e}");
                }
            })?;
        let deadline = Instant::now() + Duration::from_secs(20);
        for (addr, p) in [(listen, port), (listen_v5, port_v5)] {
            while TcpStream::connect(addr).is_err() {
                if Instant::now() > deadline {
                    return Err(BrokerError::NotListening(p));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        tracing::info!(%listen, %listen_v5, "embedded broker (rumqttd, mTLS) listening: MQTT 3.1.1 and 5");
        Ok(EmbeddedBroker {
            port,
            port_v5,
            _thread: thread,
        })
    }

    /// The MQTT 3.1.1 listener's port (the collector's).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The MQTT 5 listener's port (the agents').
    pub fn port_v5(&self) -> u16 {
        self.port_v5
    }

    /// Stops accepting work from this handle. rumqttd 0.20 has no shutdown API: its
    /// threads keep running until the process exits.
    pub fn stop(self) {
        tracing::debug!(
            port = self.port,
            "embedded broker handle dropped; rumqttd threads end with the process"
        );
    }
}
