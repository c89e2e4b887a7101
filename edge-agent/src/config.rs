//! The agent's configuration (TOML), with a validation pass that lists every problem.
//!
//! One agent is one device identity: one `device_id`, one client certificate (CN =
//! `device_id`), one MQTT connection and one seq counter. Every `[[sources]]` entry
//! (Modbus registers, SunSpec, host metrics, a Prometheus scrape, the simulator) produces
//! channels of that one device, so channel names must be unique across sources.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use gridmeter_core::config::{Problems, Validate};
use gridmeter_core::decimal;
use gridmeter_core::tls::TlsFiles;
use gridmeter_core::{Channel, DeviceId, Kind};
use serde::Deserialize;

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

/// One source of readings.
///
/// In TOML a `[[sources]]` entry is one flat table with a `type` key. It is read through a
/// flat intermediate (every field of every type, `deny_unknown_fields`) rather than a
/// serde-tagged enum, so that a misspelt key inside a source is reported with its path
/// (`sources[1].speeed: unknown field`) and parsing goes on to report the other problems;
/// fields that do not belong to the entry's type, or required ones that are missing, end up
/// in [`SourceConfig::Invalid`] and are reported by validation.
#[derive(Debug, Clone, Deserialize)]
#[serde(from = "RawSource")]
pub enum SourceConfig {
    Modbus(ModbusSource),
    Sunspec(SunspecSource),
    Host(HostSource),
    Prometheus(PrometheusSource),
    Simulator(SimulatorSource),
    /// A TOML entry whose fields do not fit its type: (field, problem) pairs.
    #[doc(hidden)]
    Invalid(Vec<(String, String)>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum SourceType {
    Modbus,
    Sunspec,
    Host,
    Prometheus,
    Simulator,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    #[serde(rename = "type")]
    kind: SourceType,
    name: Option<String>,
    interval_ms: Option<u64>,
    address: Option<String>,
    unit_id: Option<u8>,
    timeout_ms: Option<u64>,
    registers: Option<Vec<RegisterMap>>,
    base: Option<u16>,
    proc_root: Option<PathBuf>,
    url: Option<String>,
    include: Option<Vec<String>>,
    rename: Option<BTreeMap<String, String>>,
    units: Option<BTreeMap<String, String>>,
    max_samples: Option<usize>,
    max_scrape_bytes: Option<usize>,
    profile: Option<Profile>,
    seed: Option<u64>,
    register_max: Option<u64>,
    start: Option<DateTime<Utc>>,
    step_secs: Option<u64>,
    speedup: Option<f64>,
    as_fast_as_possible: Option<bool>,
    until: Option<DateTime<Utc>>,
    peak_watts: Option<u32>,
}

impl From<RawSource> for SourceConfig {
    fn from(r: RawSource) -> SourceConfig {
        let set: [(&str, bool); 21] = [
            ("address", r.address.is_some()),
            ("unit_id", r.unit_id.is_some()),
            ("timeout_ms", r.timeout_ms.is_some()),
            ("registers", r.registers.is_some()),
            ("base", r.base.is_some()),
            ("proc_root", r.proc_root.is_some()),
            ("url", r.url.is_some()),
            ("include", r.include.is_some()),
            ("rename", r.rename.is_some()),
            ("units", r.units.is_some()),
            ("max_samples", r.max_samples.is_some()),
            ("max_scrape_bytes", r.max_scrape_bytes.is_some()),
            ("profile", r.profile.is_some()),
            ("seed", r.seed.is_some()),
            ("register_max", r.register_max.is_some()),
            ("start", r.start.is_some()),
            ("step_secs", r.step_secs.is_some()),
            ("speedup", r.speedup.is_some()),
            ("as_fast_as_possible", r.as_fast_as_possible.is_some()),
            ("until", r.until.is_some()),
            ("peak_watts", r.peak_watts.is_some()),
        ];
        let (type_name, allowed, required): (&str, &[&str], &[&str]) = match r.kind {
            SourceType::Modbus => (
                "modbus",
                &["address", "unit_id", "timeout_ms", "registers"],
                &["address", "registers"],
            ),
            SourceType::Sunspec => (
                "sunspec",
                &["address", "unit_id", "timeout_ms", "base"],
                &["address"],
            ),
            SourceType::Host => ("host", &["proc_root"], &[]),
            SourceType::Prometheus => (
                "prometheus",
                &[
                    "url",
                    "include",
                    "rename",
                    "units",
                    "max_samples",
                    "max_scrape_bytes",
                    "timeout_ms",
                ],
                &["url"],
            ),
            SourceType::Simulator => (
                "simulator",
                &[
                    "profile",
                    "seed",
                    "register_max",
                    "start",
                    "step_secs",
                    "speedup",
                    "as_fast_as_possible",
                    "until",
                    "peak_watts",
                ],
                &["profile"],
            ),
        };
        let mut problems = Vec::new();
        for (field, is_set) in set {
            if is_set && !allowed.contains(&field) {
                problems.push((
                    field.to_string(),
                    format!("is not used by type {type_name:?}"),
                ));
            }
            if !is_set && required.contains(&field) {
                problems.push((
                    field.to_string(),
                    format!("is required for type {type_name:?}"),
                ));
            }
        }
        if !problems.is_empty() {
            return SourceConfig::Invalid(problems);
        }
        let interval_ms = r.interval_ms.unwrap_or_else(default_interval);
        let timeout_ms = r.timeout_ms.unwrap_or_else(default_timeout);
        let unit_id = r.unit_id.unwrap_or_else(default_unit_id);
        match r.kind {
            SourceType::Modbus => SourceConfig::Modbus(ModbusSource {
                name: r.name,
                interval_ms,
                address: r.address.unwrap_or_default(),
                unit_id,
                timeout_ms,
                registers: r.registers.unwrap_or_default(),
            }),
            SourceType::Sunspec => SourceConfig::Sunspec(SunspecSource {
                name: r.name,
                interval_ms,
                address: r.address.unwrap_or_default(),
                unit_id,
                base: r.base,
                timeout_ms,
            }),
            SourceType::Host => SourceConfig::Host(HostSource {
                name: r.name,
                interval_ms,
                proc_root: r.proc_root.unwrap_or_else(default_proc_root),
            }),
            SourceType::Prometheus => SourceConfig::Prometheus(PrometheusSource {
                name: r.name,
                interval_ms,
                url: r.url.unwrap_or_default(),
                include: r.include.unwrap_or_default(),
                rename: r.rename.unwrap_or_default(),
                units: r.units.unwrap_or_default(),
                max_samples: r
                    .max_samples
                    .unwrap_or(crate::sources::prometheus::MAX_SAMPLES),
                max_scrape_bytes: r
                    .max_scrape_bytes
                    .unwrap_or(crate::sources::prometheus::MAX_BODY),
                timeout_ms,
            }),
            SourceType::Simulator => SourceConfig::Simulator(SimulatorSource {
                name: r.name,
                interval_ms,
                profile: r.profile.unwrap_or(Profile::HouseholdMeter),
                seed: r.seed.unwrap_or_default(),
                register_max: r.register_max,
                start: r.start,
                step_secs: r.step_secs,
                speedup: r.speedup,
                as_fast_as_possible: r.as_fast_as_possible.unwrap_or_default(),
                until: r.until,
                peak_watts: r.peak_watts,
            }),
        }
    }
}

impl SourceConfig {
    pub fn type_name(&self) -> &'static str {
        match self {
            SourceConfig::Modbus(_) => "modbus",
            SourceConfig::Sunspec(_) => "sunspec",
            SourceConfig::Host(_) => "host",
            SourceConfig::Prometheus(_) => "prometheus",
            SourceConfig::Simulator(_) => "simulator",
            SourceConfig::Invalid(_) => "invalid",
        }
    }
    /// The `source` label of the metrics: the configured name, or the type.
    pub fn label(&self) -> String {
        let name = match self {
            SourceConfig::Modbus(s) => &s.name,
            SourceConfig::Sunspec(s) => &s.name,
            SourceConfig::Host(s) => &s.name,
            SourceConfig::Prometheus(s) => &s.name,
            SourceConfig::Simulator(s) => &s.name,
            SourceConfig::Invalid(_) => &None,
        };
        name.clone().unwrap_or_else(|| self.type_name().to_string())
    }
    pub fn interval_ms(&self) -> u64 {
        match self {
            SourceConfig::Modbus(s) => s.interval_ms,
            SourceConfig::Sunspec(s) => s.interval_ms,
            SourceConfig::Host(s) => s.interval_ms,
            SourceConfig::Prometheus(s) => s.interval_ms,
            SourceConfig::Simulator(s) => s.interval_ms,
            SourceConfig::Invalid(_) => 1,
        }
    }
}

fn default_interval() -> u64 {
    1000
}
fn default_unit_id() -> u8 {
    1
}
fn default_timeout() -> u64 {
    3000
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegisterFunction {
    #[default]
    Holding,
    Input,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegisterType {
    U16,
    I16,
    U32,
    I32,
    U64,
    F32,
}

impl RegisterType {
    /// Number of 16-bit registers the type occupies.
    pub fn words(self) -> u16 {
        match self {
            RegisterType::U16 | RegisterType::I16 => 1,
            RegisterType::U32 | RegisterType::I32 | RegisterType::F32 => 2,
            RegisterType::U64 => 4,
        }
    }
}

/// Order of the 16-bit words of a multi-register value (bytes within a word are always
/// big-endian, as Modbus defines).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WordOrder {
    #[default]
    Big,
    Little,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterMap {
    pub channel: String,
    pub address: u16,
    #[serde(default)]
    pub function: RegisterFunction,
    #[serde(rename = "type")]
    pub data_type: RegisterType,
    /// Optional explicit register count; must match the type.
    #[serde(default)]
    pub count: Option<u16>,
    #[serde(default)]
    pub word_order: WordOrder,
    /// Decimal text multiplied with the raw value, e.g. "0.1".
    #[serde(default = "default_scale")]
    pub scale: String,
    #[serde(default = "default_kind")]
    pub kind: Kind,
    /// Required: 1 to 32 characters without white space (`Wh`, `W`, `V`, `1` for a count);
    /// checked at config time with the collector's own rule.
    #[serde(default)]
    pub unit: String,
}

fn default_scale() -> String {
    "1".into()
}
fn default_kind() -> Kind {
    Kind::Gauge
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusSource {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    /// `host:port` of the Modbus TCP server.
    pub address: String,
    #[serde(default = "default_unit_id")]
    pub unit_id: u8,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    pub registers: Vec<RegisterMap>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SunspecSource {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    pub address: String,
    #[serde(default = "default_unit_id")]
    pub unit_id: u8,
    /// Base register of the `SunS` marker; searched at 0, 40000 and 50000 when absent.
    #[serde(default)]
    pub base: Option<u16>,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSource {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    /// Where procfs is mounted (tests point this at a fixture).
    #[serde(default = "default_proc_root")]
    pub proc_root: PathBuf,
}

fn default_proc_root() -> PathBuf {
    PathBuf::from("/proc")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusSource {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    /// `http://host:port/path` (plain HTTP; scrape a local endpoint).
    pub url: String,
    /// Metric names to keep (family names as exposed, e.g. `http_requests_total`);
    /// empty keeps all.
    #[serde(default)]
    pub include: Vec<String>,
    /// Metric name -> channel base name.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Metric name (sample or family) -> unit, e.g. `http_requests_total = "requests"`.
    /// Without an entry: `s` for `_seconds`, `B` for `_bytes`, otherwise `1`.
    #[serde(default)]
    pub units: BTreeMap<String, String>,
    /// A scrape with more samples than this (after `include`) fails as a whole.
    #[serde(default = "default_max_samples")]
    pub max_samples: usize,
    /// A response body larger than this fails the scrape.
    #[serde(default = "default_max_scrape_bytes")]
    pub max_scrape_bytes: usize,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
}

fn default_max_samples() -> usize {
    crate::sources::prometheus::MAX_SAMPLES
}
fn default_max_scrape_bytes() -> usize {
    crate::sources::prometheus::MAX_BODY
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    HouseholdMeter,
    PvInverter,
    EdgeServer,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatorSource {
    #[serde(default)]
    pub name: Option<String>,
    /// Real time between two steps when no virtual clock is configured.
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    pub profile: Profile,
    #[serde(default)]
    pub seed: u64,
    /// Energy registers wrap to 0 after this value (e.g. 99999999 Wh).
    #[serde(default)]
    pub register_max: Option<u64>,
    /// Virtual clock: event time of the first step. Absent: wall-clock time.
    #[serde(default)]
    pub start: Option<DateTime<Utc>>,
    /// Virtual clock: event-time seconds per step (default: interval_ms).
    #[serde(default)]
    pub step_secs: Option<u64>,
    /// Virtual clock: event-time seconds per real second (default 1).
    #[serde(default)]
    pub speedup: Option<f64>,
    /// Virtual clock: generate steps without sleeping.
    #[serde(default)]
    pub as_fast_as_possible: bool,
    /// Stop generating at this event time.
    #[serde(default)]
    pub until: Option<DateTime<Utc>>,
    /// Peak power of the profile in W (defaults: 4000 household, 5000 PV).
    #[serde(default)]
    pub peak_watts: Option<u32>,
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
        let mut channels = HashSet::new();
        for (i, s) in self.sources.iter().enumerate() {
            let at = format!("sources[{i}]");
            if s.interval_ms() == 0 {
                p.push(format!("{at}.interval_ms"), "must be > 0");
            }
            match s {
                SourceConfig::Invalid(problems) => {
                    for (field, why) in problems {
                        p.push(format!("{at}.{field}"), why);
                    }
                }
                SourceConfig::Modbus(m) => validate_modbus(m, &at, &mut channels, p),
                SourceConfig::Sunspec(m) => {
                    if m.address.parse::<SocketAddr>().is_err() {
                        p.push(format!("{at}.address"), "must be ip:port");
                    }
                }
                SourceConfig::Host(_) => {}
                SourceConfig::Prometheus(m) => {
                    if let Err(e) = crate::sources::prometheus::parse_url(&m.url) {
                        p.push(format!("{at}.url"), e);
                    }
                    for (k, v) in &m.rename {
                        if Channel::new(v.clone()).is_err() {
                            p.push(
                                format!("{at}.rename.{k}"),
                                format!("{v:?} is not a valid channel name ([a-z0-9_.])"),
                            );
                        }
                    }
                    for (k, u) in &m.units {
                        if let Err(e) = gridmeter_core::wire::check_unit(u) {
                            p.push(format!("{at}.units.{k}"), e);
                        }
                    }
                    if m.max_samples == 0 {
                        p.push(format!("{at}.max_samples"), "must be > 0");
                    }
                    if m.max_scrape_bytes < 1024 {
                        p.push(format!("{at}.max_scrape_bytes"), "must be at least 1024");
                    }
                }
                SourceConfig::Simulator(m) => {
                    if m.step_secs == Some(0) {
                        p.push(format!("{at}.step_secs"), "must be > 0");
                    }
                    if let Some(sp) = m.speedup {
                        if !(sp.is_finite() && sp > 0.0) {
                            p.push(format!("{at}.speedup"), "must be a positive number");
                        }
                    }
                    if m.register_max == Some(0) {
                        p.push(format!("{at}.register_max"), "must be > 0");
                    }
                    if let (Some(a), Some(b)) = (m.start, m.until) {
                        if b <= a {
                            p.push(format!("{at}.until"), "must be after start");
                        }
                    }
                }
            }
        }
    }
}

fn validate_modbus(m: &ModbusSource, at: &str, channels: &mut HashSet<String>, p: &mut Problems) {
    if m.address.parse::<SocketAddr>().is_err() {
        p.push(format!("{at}.address"), "must be ip:port");
    }
    if m.registers.is_empty() {
        p.push(
            format!("{at}.registers"),
            "at least one register is required",
        );
    }
    for (j, r) in m.registers.iter().enumerate() {
        let rat = format!("{at}.registers[{j}]");
        if let Err(e) = Channel::new(r.channel.clone()) {
            p.push(format!("{rat}.channel"), format!("{:?} {e}", r.channel));
        } else if !channels.insert(r.channel.clone()) {
            p.push(
                format!("{rat}.channel"),
                format!("{:?} is used twice", r.channel),
            );
        }
        if let Some(c) = r.count {
            if c != r.data_type.words() {
                p.push(
                    format!("{rat}.count"),
                    format!(
                        "is {c} but type {:?} occupies {} register(s)",
                        r.data_type,
                        r.data_type.words()
                    ),
                );
            }
        }
        if u32::from(r.address) + u32::from(r.data_type.words()) > 65536 {
            p.push(
                format!("{rat}.address"),
                "the value extends past register 65535",
            );
        }
        if let Err(e) = gridmeter_core::wire::check_unit(&r.unit) {
            p.push(
                format!("{rat}.unit"),
                format!("{e} (e.g. \"Wh\", \"W\", \"V\", or \"1\" for a count)"),
            );
        }
        match decimal::parse_exact(&r.scale) {
            Ok(s) if s.is_zero() => p.push(format!("{rat}.scale"), "must not be 0"),
            Ok(_) => {}
            Err(e) => p.push(format!("{rat}.scale"), e),
        }
        if r.data_type.words() == 1 && r.word_order == WordOrder::Little {
            p.push(
                format!("{rat}.word_order"),
                "little word order only applies to multi-register types",
            );
        }
        if r.data_type == RegisterType::F32 && r.kind == Kind::Counter {
            p.push(
                format!("{rat}.kind"),
                "f32 registers are approximate; read them as gauges, not counters",
            );
        }
    }
}
