//! The collector's configuration (`collector.toml`).
//!
//! ```toml
//! collector_id = "c1"            # unique per running instance; part of every file name
//! data_root = "/var/lib/gridmeter"  # or [object_store] url = "s3://bucket/prefix"
//! wal_dir = "/var/lib/gridmeter-collector/wal"   # local disk, fsync'd
//! metrics_listen = "127.0.0.1:9102"
//! confirm_after = "landed"       # or "wal": when readings are confirmed to devices
//!
//! [mqtt]
//! host = "broker.example"        # no host: start the embedded broker ([embedded])
//! port = 8883
//! share_group = "collectors"     # optional: $share/collectors/gridmeter/v1/+/readings
//! # This collector's own certificate (`gridmeter pki collector 1`): CN collector-1 is its
//! # identity, ACL entry and (on the shipped brokers) MQTT client id.
//! tls = { ca = "ca.crt", cert = "collectors/collector-1.crt", key = "collectors/collector-1.key" }
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use gridmeter_core::config::{check_readable, Problems, Validate};
use gridmeter_core::identity::Role;
use gridmeter_core::tls::TlsFiles;
use gridmeter_core::wire::Limits;
use serde::Deserialize;

pub use crate::confirm::ConfirmAfter;

/// S3 (or S3-compatible) landing instead of a local directory (shared with the aggregator).
pub use gridmeter_core::store::ObjectStoreConfig;

/// Everything the collector needs to run. Constructible in code (the demo does) or loaded
/// with [`gridmeter_core::config::load`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorConfig {
    /// Unique per collector instance: it names the Parquet files this instance writes, so
    /// two collectors never write the same file.
    pub collector_id: String,
    /// Local directory holding `raw/`, `gaps/`, `deadletter/`. Exactly one of `data_root`
    /// and `[object_store]` must be set.
    #[serde(default)]
    pub data_root: Option<PathBuf>,
    #[serde(default)]
    pub object_store: Option<ObjectStoreConfig>,
    /// Write-ahead log and checkpoint directory; must be on a local disk that honours fsync.
    pub wal_dir: PathBuf,
    #[serde(default)]
    pub mqtt: MqttConfig,
    /// Used when `mqtt.host` is not set.
    #[serde(default)]
    pub embedded: EmbeddedConfig,
    /// Seal a WAL segment and land it as Parquet after this many accepted readings...
    #[serde(default = "default_flush_max_readings")]
    pub flush_max_readings: usize,
    /// ...or after this long, whichever comes first.
    #[serde(default = "default_flush_interval_ms")]
    pub flush_interval_ms: u64,
    /// Most messages fsync'd (and acked) as one group.
    #[serde(default = "default_group_commit_max_messages")]
    pub group_commit_max_messages: usize,
    /// A hole in a device's seqs is declared `missing` once it has stayed open this long
    /// (measured on the WAL's received_at clock, so replay declares the same holes).
    #[serde(default = "default_missing_after_secs")]
    pub missing_after_secs: u64,
    /// A reading whose `ts` is more than this after the collector's `received_at` goes to
    /// the dead letters as `ts_out_of_range` (the device clock runs ahead). See the README.
    #[serde(default = "default_clock_skew_tolerance_secs")]
    pub clock_skew_tolerance_secs: u64,
    /// A reading whose `ts` is more than this before `received_at` goes to the dead letters
    /// as `ts_out_of_range` (e.g. `"400d"`; humantime syntax).
    #[serde(default = "default_max_backfill")]
    pub max_backfill: String,
    /// Most intervals of landed and lost seqs remembered per device; past it the oldest
    /// holes are declared `missing` (see `gridmeter_collector::dedup`).
    #[serde(default = "default_max_open_holes")]
    pub max_open_holes: usize,
    /// Dead-letter payloads are cut to this many bytes (the detail records the cut).
    #[serde(default = "default_deadletter_max_payload_bytes")]
    pub deadletter_max_payload_bytes: usize,
    /// Bytes of received messages held in memory before they are processed (and their
    /// payloads released); the MQTT client stops reading while it is reached.
    #[serde(default = "default_ingest_buffer_bytes")]
    pub ingest_buffer_bytes: usize,
    /// Detect holes at all. Default: on without a share group, off with one (each member
    /// of a shared subscription sees only part of every device's seqs).
    #[serde(default)]
    pub detect_missing: Option<bool>,
    /// Serve `/metrics` here.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// When a reading counts as durable and is confirmed to its device: `"landed"`
    /// (committed to the data root, the default) or `"wal"` (fsync'd in the local WAL).
    /// See [`crate::confirm`].
    #[serde(default)]
    pub confirm_after: ConfirmAfter,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker host; `None` starts the embedded broker.
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default = "default_port")]
    pub port: u16,
    /// Client TLS files; required with `host`. With the embedded broker the default is the
    /// `collector-0` certificate of `embedded.pki_dir`.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// Must be stable across restarts: the broker keeps the persistent session (and the
    /// unacked messages) under this id. Default `gridmeter-collector-{collector_id}`. The
    /// shipped Mosquitto and EMQX configs replace it with the certificate's CN, so that no
    /// client can take over another's id.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Subscribe to `$share/{group}/gridmeter/v1/+/readings`.
    #[serde(default)]
    pub share_group: Option<String>,
    #[serde(default = "default_keep_alive_secs")]
    pub keep_alive_secs: u64,
    /// Largest MQTT packet accepted. Must be at least the broker's limit, or a larger
    /// message would be refused, redelivered and refused forever.
    #[serde(default = "default_max_packet_bytes")]
    pub max_packet_bytes: usize,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            host: None,
            port: default_port(),
            tls: None,
            client_id: None,
            share_group: None,
            keep_alive_secs: default_keep_alive_secs(),
            max_packet_bytes: default_max_packet_bytes(),
        }
    }
}

/// The embedded broker (rumqttd) started when no broker host is configured.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedConfig {
    /// PKI directory with `ca.crt`, `server.crt`, `server.key` and
    /// `collectors/collector-0.crt/.key` (`gridmeter pki init`).
    #[serde(default = "default_pki_dir")]
    pub pki_dir: PathBuf,
    /// Listen port on 127.0.0.1 (0: any free port).
    #[serde(default = "default_port")]
    pub port: u16,
}

impl EmbeddedConfig {
    /// The collector's TLS files in `pki_dir` (collector `collector-0` of `gridmeter pki
    /// init`), used with the embedded broker when `mqtt.tls` is not set.
    pub fn tls(&self) -> TlsFiles {
        let d = &self.pki_dir;
        TlsFiles {
            ca: d.join("ca.crt"),
            cert: d.join("collectors/collector-0.crt"),
            key: d.join("collectors/collector-0.key"),
        }
    }
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            pki_dir: default_pki_dir(),
            port: default_port(),
        }
    }
}

/// [`Limits`] in TOML form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    #[serde(default = "d_max_payload")]
    pub max_payload_bytes: usize,
    #[serde(default = "d_max_readings")]
    pub max_readings: usize,
    #[serde(default = "d_max_decompressed")]
    pub max_decompressed_bytes: usize,
    /// Most gap records of one message recorded; the rest go to the dead letters.
    #[serde(default = "d_max_gap_records")]
    pub max_gap_records: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let l = Limits::default();
        LimitsConfig {
            max_payload_bytes: l.max_payload_bytes,
            max_readings: l.max_readings,
            max_decompressed_bytes: l.max_decompressed_bytes,
            max_gap_records: d_max_gap_records(),
        }
    }
}

impl From<LimitsConfig> for Limits {
    fn from(l: LimitsConfig) -> Limits {
        Limits {
            max_payload_bytes: l.max_payload_bytes,
            max_readings: l.max_readings,
            max_decompressed_bytes: l.max_decompressed_bytes,
        }
    }
}

fn d_max_payload() -> usize {
    Limits::default().max_payload_bytes
}
fn d_max_readings() -> usize {
    Limits::default().max_readings
}
fn d_max_decompressed() -> usize {
    Limits::default().max_decompressed_bytes
}
fn d_max_gap_records() -> usize {
    gridmeter_core::wire::MAX_GAP_RECORDS
}
fn default_max_backfill() -> String {
    "400d".into()
}
fn default_max_open_holes() -> usize {
    64
}
fn default_deadletter_max_payload_bytes() -> usize {
    64 * 1024
}
fn default_ingest_buffer_bytes() -> usize {
    64 * 1024 * 1024
}
fn default_flush_max_readings() -> usize {
    200_000
}
fn default_flush_interval_ms() -> u64 {
    2_000
}
fn default_group_commit_max_messages() -> usize {
    2_000
}
fn default_missing_after_secs() -> u64 {
    300
}
fn default_clock_skew_tolerance_secs() -> u64 {
    300
}
fn default_port() -> u16 {
    8883
}
fn default_keep_alive_secs() -> u64 {
    30
}
fn default_max_packet_bytes() -> usize {
    16 * 1024 * 1024
}
fn default_pki_dir() -> PathBuf {
    PathBuf::from("pki")
}

impl CollectorConfig {
    /// A config with defaults: local `data_root`, embedded broker unless `mqtt.host` is set.
    pub fn new(collector_id: impl Into<String>, data_root: PathBuf, wal_dir: PathBuf) -> Self {
        CollectorConfig {
            collector_id: collector_id.into(),
            data_root: Some(data_root),
            object_store: None,
            wal_dir,
            mqtt: MqttConfig::default(),
            embedded: EmbeddedConfig::default(),
            flush_max_readings: default_flush_max_readings(),
            flush_interval_ms: default_flush_interval_ms(),
            group_commit_max_messages: default_group_commit_max_messages(),
            missing_after_secs: default_missing_after_secs(),
            clock_skew_tolerance_secs: default_clock_skew_tolerance_secs(),
            max_backfill: default_max_backfill(),
            max_open_holes: default_max_open_holes(),
            deadletter_max_payload_bytes: default_deadletter_max_payload_bytes(),
            ingest_buffer_bytes: default_ingest_buffer_bytes(),
            detect_missing: None,
            metrics_listen: None,
            limits: LimitsConfig::default(),
            confirm_after: ConfirmAfter::default(),
        }
    }

    /// The MQTT client id (stable across restarts).
    pub fn client_id(&self) -> String {
        self.mqtt
            .client_id
            .clone()
            .unwrap_or_else(|| format!("gridmeter-collector-{}", self.collector_id))
    }

    /// The subscription filter, shared or not.
    pub fn topic_filter(&self) -> String {
        match &self.mqtt.share_group {
            Some(g) => format!("$share/{g}/{}", gridmeter_core::wire::TOPIC_FILTER),
            None => gridmeter_core::wire::TOPIC_FILTER.to_string(),
        }
    }

    /// Everything the collector subscribes to: [`Self::topic_filter`], and every device's
    /// retained metadata (never shared: a broker sends retained messages only to plain
    /// subscriptions, so every collector of a group receives them; their `devices` writes
    /// converge, see `gridmeter_tables::devices`).
    pub fn topic_filters(&self) -> Vec<String> {
        vec![
            self.topic_filter(),
            gridmeter_core::wire::meta::META_TOPIC_FILTER.to_string(),
        ]
    }

    /// `max_backfill` in µs (the default where it does not parse; validation reports it).
    pub fn max_backfill_us(&self) -> i64 {
        humantime::parse_duration(&self.max_backfill)
            .ok()
            .and_then(|d| i64::try_from(d.as_micros()).ok())
            .unwrap_or(400 * 86_400_000_000)
    }

    /// The rules the processing applies.
    pub fn policy(&self) -> crate::process::Policy {
        crate::process::Policy {
            limits: self.limits.into(),
            clock_skew_tolerance_us: (self.clock_skew_tolerance_secs as i64)
                .saturating_mul(1_000_000),
            max_backfill_us: self.max_backfill_us(),
            max_open_holes: self.max_open_holes,
            max_gap_records: self.limits.max_gap_records,
            deadletter_max_payload_bytes: self.deadletter_max_payload_bytes,
            detect_missing: self.detect_missing(),
        }
    }

    /// Whether collector-side hole detection is on (see [`CollectorConfig::detect_missing`]).
    pub fn detect_missing(&self) -> bool {
        self.detect_missing
            .unwrap_or(self.mqtt.share_group.is_none())
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

impl Validate for CollectorConfig {
    fn validate(&self, p: &mut Problems) {
        if !is_name(&self.collector_id) {
            p.push(
                "collector_id",
                format!(
                    "{:?} must be 1 to 64 characters of [A-Za-z0-9._-]",
                    self.collector_id
                ),
            );
        }
        gridmeter_core::store::check_root(self.data_root.as_deref(), self.object_store.as_ref(), p);
        if self.flush_max_readings == 0 {
            p.push("flush_max_readings", "must be positive");
        }
        if self.flush_interval_ms == 0 {
            p.push("flush_interval_ms", "must be positive");
        }
        if self.group_commit_max_messages == 0 {
            p.push("group_commit_max_messages", "must be positive");
        }
        if let Some(g) = &self.mqtt.share_group {
            if !is_name(g) {
                p.push(
                    "mqtt.share_group",
                    format!("{g:?} must be 1 to 64 characters of [A-Za-z0-9._-]"),
                );
            }
        }
        if self.mqtt.max_packet_bytes < self.limits.max_payload_bytes {
            p.push(
                "mqtt.max_packet_bytes",
                "must be at least limits.max_payload_bytes (oversized messages must reach the dead letters)",
            );
        }
        match (&self.mqtt.host, &self.mqtt.tls) {
            (Some(_), None) => p.push(
                "mqtt.tls",
                "required with mqtt.host (the collector only speaks mTLS)",
            ),
            // A collector's certificate: the broker ACL grants the collector rights by its
            // CN (collector-<name>), and takes the client id from it.
            (_, Some(tls)) => tls.check_role("mqtt.tls", Role::Collector, None, p),
            (None, None) => {
                for f in ["ca.crt", "server.crt", "server.key"] {
                    check_readable(&self.embedded.pki_dir.join(f), "embedded.pki_dir", p);
                }
                let tls = self.embedded.tls();
                for f in [&tls.cert, &tls.key] {
                    check_readable(f, "embedded.pki_dir", p);
                }
            }
        }
        if self.limits.max_payload_bytes == 0 || self.limits.max_readings == 0 {
            p.push("limits", "limits must be positive");
        }
        match humantime::parse_duration(&self.max_backfill) {
            Err(e) => p.push(
                "max_backfill",
                format!(
                    "{:?} is not a duration like \"400d\": {e}",
                    self.max_backfill
                ),
            ),
            Ok(d) if d.as_secs() == 0 => p.push("max_backfill", "must be positive"),
            Ok(_) => {}
        }
        if self.max_open_holes < 2 {
            p.push("max_open_holes", "must be at least 2");
        }
        if self.deadletter_max_payload_bytes == 0 {
            p.push("deadletter_max_payload_bytes", "must be positive");
        }
        if self.ingest_buffer_bytes < self.limits.max_payload_bytes {
            p.push(
                "ingest_buffer_bytes",
                "must be at least limits.max_payload_bytes (one message must fit)",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_every_problem() {
        let text = "collector_id = \"a b\"\nwal_dir = \"/tmp/x\"\nflush_interval_ms = 0\nbogus = 1\n[mqtt]\nhost = \"h\"\n";
        let err = gridmeter_core::config::parse::<CollectorConfig>(text, "t.toml").unwrap_err();
        let all = err.problems.join("\n");
        assert!(all.contains("bogus"), "{all}");
        assert!(all.contains("collector_id"), "{all}");
        assert!(all.contains("data_root"), "{all}");
        assert!(all.contains("flush_interval_ms"), "{all}");
        assert!(all.contains("mqtt.tls"), "{all}");
    }

    #[test]
    fn shared_filter() {
        let mut c = CollectorConfig::new("c1", "/d".into(), "/w".into());
        assert_eq!(c.topic_filter(), "gridmeter/v1/+/readings");
        assert!(c.detect_missing());
        c.mqtt.share_group = Some("g".into());
        assert_eq!(c.topic_filter(), "$share/g/gridmeter/v1/+/readings");
        assert!(!c.detect_missing());
    }
}
