//! The agent's configuration (TOML), with a validation pass that lists every problem.
//!
//! One agent is one device identity: one `device_id`, one client certificate (CN =
//! `device_id`), one MQTT connection and one seq counter. Every `[[sources]]` entry
//! produces channels of that one device, so channel names must be unique across sources.
//! Each source type owns its config struct and its checks (`crate::sources::*`); this
//! module reads the `type` of each entry and hands the rest to that type.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use gridmeter_core::config::{Problems, Validate};
use gridmeter_core::tls::TlsFiles;
use gridmeter_core::DeviceId;
use serde::Deserialize;

use crate::sources::{SourceSpec, REGISTRY};

/// The whole agent configuration. Also constructible in code (the demo runs ~200 agents in
/// one process, each with its own `AgentConfig`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub device_id: DeviceId,
    pub mqtt: MqttConfig,
    #[serde(default)]
    pub buffer: BufferConfig,
    /// Where the binary serves `/metrics` (the library never binds ports by itself).
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
}

/// Payload encoding on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireEncoding {
    #[default]
    Compact,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    pub tls: TlsFiles,
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u64,
    /// Unacknowledged batches at most (each is one MQTT message).
    #[serde(default = "default_inflight")]
    pub max_inflight: usize,
    /// Readings per MQTT message at most.
    #[serde(default = "default_batch_max")]
    pub batch_max_readings: usize,
    #[serde(default)]
    pub encoding: WireEncoding,
    /// During a backfill every `live_every`-th batch carries the newest unsent readings
    /// (0 = strictly oldest first). See [`crate::buffer`].
    #[serde(default = "default_live_every")]
    pub live_every: u32,
    /// Reconnect backoff: first delay, doubling up to `reconnect_max_ms`, with jitter.
    #[serde(default = "default_reconnect_initial")]
    pub reconnect_initial_ms: u64,
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_ms: u64,
    /// How long the TCP connect, TLS handshake and CONNACK may take (`"30s"`, humantime).
    /// On a loaded host a fleet's handshakes queue up behind each other; an agent that
    /// gives up while the broker is already registering it only makes the broker busier
    /// (the MQTT client's own default is 5 s; edge-agent/README.md has the measurement).
    #[serde(
        default = "default_connect_timeout",
        deserialize_with = "gridmeter_core::config::duration::deserialize"
    )]
    pub connect_timeout: Duration,
    /// Keep every reading until the collector confirms that it landed (docs/wire-format.md,
    /// "Confirmations"). Off: delete on the broker's PUBACK, for a pipeline without a
    /// gridmeter collector; a broker crash can then lose what it had acknowledged.
    #[serde(default = "yes")]
    pub require_confirmation: bool,
    /// A reading the broker took but the collector has not confirmed within this time is
    /// sent again, oldest first (`"2m"`, humantime). The wait doubles with every resend...
    #[serde(
        default = "default_confirm_timeout",
        deserialize_with = "gridmeter_core::config::duration::deserialize"
    )]
    pub confirm_timeout: Duration,
    /// ...up to this (`"30m"`).
    #[serde(
        default = "default_confirm_timeout_max",
        deserialize_with = "gridmeter_core::config::duration::deserialize"
    )]
    pub confirm_timeout_max: Duration,
    /// Refuse to start when `device_id` differs from the client certificate's CN: the
    /// broker names the device by its CN, so its ACL would take and drop every publish.
    /// Turn off only for a broker that takes the identity from elsewhere.
    #[serde(default = "yes")]
    pub check_identity: bool,
}

fn yes() -> bool {
    true
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_confirm_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_confirm_timeout_max() -> Duration {
    Duration::from_secs(1800)
}

fn default_port() -> u16 {
    8883
}
fn default_keep_alive() -> u64 {
    30
}
fn default_inflight() -> usize {
    32
}
fn default_batch_max() -> usize {
    500
}
fn default_live_every() -> u32 {
    4
}
fn default_reconnect_initial() -> u64 {
    500
}
fn default_reconnect_max() -> u64 {
    60_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BufferConfig {
    pub path: PathBuf,
    /// Disk budget in logical bytes (see [`crate::buffer::row_bytes`]).
    #[serde(default = "default_max_bytes")]
    pub max_buffer_bytes: u64,
    /// A transaction is committed at least this often while readings arrive...
    #[serde(default = "default_commit_interval")]
    pub commit_interval_ms: u64,
    /// ...or as soon as this many readings are waiting.
    #[serde(default = "default_commit_max")]
    pub commit_max_readings: usize,
}

fn default_max_bytes() -> u64 {
    256 * 1024 * 1024
}
fn default_commit_interval() -> u64 {
    200
}
fn default_commit_max() -> usize {
    10_000
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            path: PathBuf::from("gridmeter-agent-buffer.sqlite"),
            max_buffer_bytes: default_max_bytes(),
            commit_interval_ms: default_commit_interval(),
            commit_max_readings: default_commit_max(),
        }
    }
}

/// One `[[sources]]` entry: the config of one source type (see [`crate::sources`]).
///
/// Read in two steps: the entry's `type` picks the source type in
/// [`crate::sources::REGISTRY`], then the rest of the table is read into that type's struct
/// with exact key paths (`sources[1].speeed: unknown field`). An entry that does not fit its
/// type keeps its problems and validation reports them with the others, so one run of a bad
/// config lists every problem of every source.
#[derive(Debug)]
pub struct SourceConfig(Entry);

#[derive(Debug)]
enum Entry {
    Spec(Box<dyn SourceSpec>),
    /// An entry whose fields do not fit its type: (key path, problem) pairs.
    Invalid(Vec<(String, String)>),
}

impl Clone for SourceConfig {
    fn clone(&self) -> Self {
        SourceConfig(match &self.0 {
            Entry::Spec(s) => Entry::Spec(s.clone_box()),
            Entry::Invalid(p) => Entry::Invalid(p.clone()),
        })
    }
}

impl SourceConfig {
    /// A source built in code.
    pub fn new(spec: impl SourceSpec) -> SourceConfig {
        SourceConfig(Entry::Spec(Box::new(spec)))
    }

    /// Reads one entry (its `type` key, then the typed struct).
    pub fn from_table(mut table: toml::Table) -> SourceConfig {
        let types = || {
            REGISTRY
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let type_name = match table.remove("type") {
            Some(toml::Value::String(t)) => t,
            Some(_) => {
                return SourceConfig(Entry::Invalid(vec![(
                    "type".into(),
                    format!("must be a string, one of: {}", types()),
                )]))
            }
            None => {
                return SourceConfig(Entry::Invalid(vec![(
                    "type".into(),
                    format!("is required, one of: {}", types()),
                )]))
            }
        };
        let Some((name, parse)) = REGISTRY.iter().find(|(n, _)| *n == type_name) else {
            return SourceConfig(Entry::Invalid(vec![(
                "type".into(),
                format!(
                    "unknown source type {}, one of: {}",
                    gridmeter_core::text::excerpt(&type_name),
                    types()
                ),
            )]));
        };
        match parse(table) {
            Ok(spec) => SourceConfig(Entry::Spec(spec)),
            Err(problems) => SourceConfig(Entry::Invalid(
                problems
                    .into_iter()
                    .map(|(path, message)| {
                        let message = if message == "is required" {
                            format!("is required for type {name:?}")
                        } else if let Some(rest) = message.strip_prefix("unknown field ") {
                            match rest.split_once(", expected") {
                                Some((field, expected)) => {
                                    format!("unknown field {field} for type {name:?}, expected{expected}")
                                }
                                None => format!("unknown field {rest} for type {name:?}"),
                            }
                        } else {
                            message
                        };
                        (path, message)
                    })
                    .collect(),
            )),
        }
    }

    /// The source's config, unless the entry was invalid.
    pub fn spec(&self) -> Option<&dyn SourceSpec> {
        match &self.0 {
            Entry::Spec(s) => Some(s.as_ref()),
            Entry::Invalid(_) => None,
        }
    }

    /// The concrete config, if the source is of type `T`.
    pub fn get<T: 'static>(&self) -> Option<&T> {
        self.spec()?.as_any().downcast_ref()
    }

    pub fn type_name(&self) -> &'static str {
        self.spec().map_or("invalid", |s| s.type_name())
    }

    /// The `source` label of the metrics: the configured name, or the type.
    pub fn label(&self) -> String {
        self.spec()
            .and_then(|s| s.name())
            .unwrap_or_else(|| self.type_name())
            .to_string()
    }

    pub fn interval_ms(&self) -> u64 {
        self.spec().map_or(1, |s| s.interval_ms())
    }
}

impl<'de> Deserialize<'de> for SourceConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let table = toml::Table::deserialize(d)?;
        Ok(SourceConfig::from_table(table))
    }
}

impl Validate for AgentConfig {
    fn validate(&self, p: &mut Problems) {
        if self.mqtt.host.trim().is_empty() {
            p.push("mqtt.host", "must not be empty");
        }
        if self.mqtt.port == 0 {
            p.push("mqtt.port", "must not be 0");
        }
        // The broker takes the device's identity from the certificate's CN: a certificate
        // of another device (or a collector's) would have every publish dropped.
        self.mqtt.tls.check_role(
            "mqtt.tls",
            gridmeter_core::identity::Role::Device,
            self.mqtt.check_identity.then_some(self.device_id.as_str()),
            p,
        );
        if self.mqtt.confirm_timeout.is_zero() {
            p.push("mqtt.confirm_timeout", "must be > 0");
        }
        if self.mqtt.confirm_timeout_max < self.mqtt.confirm_timeout {
            p.push("mqtt.confirm_timeout_max", "must be >= confirm_timeout");
        }
        if self.mqtt.max_inflight == 0 || self.mqtt.max_inflight > 1000 {
            p.push("mqtt.max_inflight", "must be 1..=1000");
        }
        if self.mqtt.batch_max_readings == 0 || self.mqtt.batch_max_readings > 10_000 {
            p.push(
                "mqtt.batch_max_readings",
                "must be 1..=10000 (the collector's per-message limit)",
            );
        }
        if self.mqtt.connect_timeout < Duration::from_secs(1) {
            p.push("mqtt.connect_timeout", "must be at least 1 s");
        }
        if self.mqtt.reconnect_initial_ms == 0 {
            p.push("mqtt.reconnect_initial_ms", "must be > 0");
        }
        if self.mqtt.reconnect_max_ms < self.mqtt.reconnect_initial_ms {
            p.push("mqtt.reconnect_max_ms", "must be >= reconnect_initial_ms");
        }
        if self.buffer.max_buffer_bytes < 4096 {
            p.push("buffer.max_buffer_bytes", "must be at least 4096");
        }
        if self.buffer.commit_interval_ms == 0 {
            p.push("buffer.commit_interval_ms", "must be > 0");
        }
        if self.buffer.commit_max_readings == 0 {
            p.push("buffer.commit_max_readings", "must be > 0");
        }
        if self.buffer.path.as_os_str().is_empty() {
            p.push("buffer.path", "must not be empty");
        }
        if self.sources.is_empty() {
            p.push("sources", "at least one [[sources]] entry is required");
        }
        let mut channels: HashMap<String, String> = HashMap::new();
        let mut buses: HashMap<String, (String, String, &'static str)> = HashMap::new();
        let mut labels: HashMap<String, usize> = HashMap::new();
        for (i, s) in self.sources.iter().enumerate() {
            let at = format!("sources[{i}]");
            let spec = match &s.0 {
                Entry::Invalid(problems) => {
                    for (field, why) in problems {
                        if field.is_empty() {
                            p.push(&at, why);
                        } else {
                            p.push(format!("{at}.{field}"), why);
                        }
                    }
                    continue;
                }
                Entry::Spec(spec) => spec,
            };
            if spec.interval_ms() == 0 {
                p.push(format!("{at}.interval_ms"), "must be > 0");
            }
            if let Some(prev) = labels.insert(s.label(), i) {
                if spec.name().is_some() {
                    p.push(
                        format!("{at}.name"),
                        format!("{:?} is also the name of sources[{prev}]", s.label()),
                    );
                }
            }
            spec.validate(&at, p);
            for (key, channel) in spec.channels() {
                if let Some(first) = channels.insert(channel.clone(), format!("{at}.{key}")) {
                    p.push(
                        format!("{at}.{key}"),
                        format!("{channel:?} is used twice (first at {first})"),
                    );
                }
            }
            if let Some((bus, settings, key)) = spec.bus() {
                match buses.get(&bus) {
                    Some((_, first, kind)) if *kind != spec.type_name() => p.push(
                        format!("{at}.port"),
                        format!(
                            "the serial port is also used by {first} (type {kind:?}); one port speaks one protocol"
                        ),
                    ),
                    Some((other, first, _)) if *other != settings => p.push(
                        format!("{at}.{key}"),
                        format!(
                            "{} shares its bus with {first}, which sets {other}; one bus has one setting",
                            settings
                        ),
                    ),
                    Some(_) => {}
                    None => {
                        buses.insert(bus, (settings, at.clone(), spec.type_name()));
                    }
                }
            }
        }
    }
}
