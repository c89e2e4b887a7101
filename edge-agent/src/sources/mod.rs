//! Sources of readings. Each `[[sources]]` entry runs as its own task with its own poll
//! interval and sends [`Sample`]s (readings without a seq) to the buffer writer; the seq is
//! assigned only when the sample is committed to SQLite.
//!
//! # Adding a source
//! A source is one file here: its config struct (serde, `deny_unknown_fields`) implementing
//! [`SourceSpec`] (validation, the channels it will produce, how to build it) and a poller
//! implementing [`Source`]. Registering it is one line in [`REGISTRY`]. A `[[sources]]`
//! entry is read in two steps: its `type` tag picks the registry entry, then the rest of
//! the table is read into that type's struct with exact key paths (see
//! [`crate::config::SourceConfig`]).

/// The [`SourceSpec`] methods every config with `name` and `interval_ms` fields shares.
macro_rules! spec_common {
    ($type:literal) => {
        fn type_name(&self) -> &'static str {
            $type
        }
        fn name(&self) -> Option<&str> {
            self.name.as_deref()
        }
        fn interval_ms(&self) -> u64 {
            self.interval_ms
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
        fn clone_box(&self) -> Box<dyn $crate::sources::SourceSpec> {
            Box::new(self.clone())
        }
    };
}

pub mod bus;
pub mod dlms;
pub mod drivers;
pub mod host;
pub mod iec62056;
pub mod mbus;
pub mod meta;
pub mod modbus;
pub mod prometheus;
pub mod simulator;
pub mod sunspec;
pub mod wmbus;

use std::any::Any;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use gridmeter_core::config::Problems;
use gridmeter_core::{Channel, DeviceId, Kind, Quality};
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};

use crate::metrics::AgentMetrics;
use meta::{MetaBoard, MeterInfo};

/// Every source type: its `type` tag and how its config is read. One line per source.
pub const REGISTRY: &[(&str, ParseFn)] = &[
    ("modbus", parse::<modbus::ModbusSource>),
    ("sunspec", parse::<sunspec::SunspecSource>),
    ("host", parse::<host::HostSource>),
    ("prometheus", parse::<prometheus::PrometheusSource>),
    ("simulator", parse::<simulator::SimulatorSource>),
    ("mbus", parse::<mbus::MbusSource>),
    ("wmbus", parse::<wmbus::WmbusSource>),
    ("iec62056", parse::<iec62056::Iec62056Source>),
    ("dlms", parse::<dlms::DlmsSource>),
];

/// Reads one source's table (without its `type` key) into its config, or lists every
/// problem as (key path relative to the entry, message).
pub type ParseFn = fn(toml::Table) -> Result<Box<dyn SourceSpec>, Vec<(String, String)>>;

/// A reading before it has a seq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub ts: DateTime<Utc>,
    pub channel: Channel,
    pub kind: Kind,
    pub unit: String,
    pub value: Decimal,
    pub quality: Quality,
}

/// The config of one source type (what a `[[sources]]` entry of that type reads into).
pub trait SourceSpec: fmt::Debug + Send + Sync + 'static {
    /// The `type` tag.
    fn type_name(&self) -> &'static str;
    /// The configured `name` (the `source` label of the metrics), if any.
    fn name(&self) -> Option<&str>;
    /// Time between two polls.
    fn interval_ms(&self) -> u64;
    /// Semantic checks; problems are pushed with paths below `at` (`sources[2]`).
    fn validate(&self, at: &str, problems: &mut Problems);
    /// The channels the config says it will produce, as (key path below the entry, name),
    /// for the check that channel names are unique across sources. Sources whose channels
    /// depend on the device (SunSpec models, M-Bus records) name none.
    fn channels(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    /// The physical bus the source uses, for the check that sources sharing one agree on its
    /// settings: (bus key, settings as text, key path of the setting).
    fn bus(&self) -> Option<(String, String, String)> {
        None
    }
    /// Builds the running source.
    fn build(&self, env: &BuildEnv) -> Box<dyn Source>;
    /// Runs the source until shutdown. The default polls every `interval_ms`.
    fn run(&self, env: &BuildEnv, ctx: SourceCtx) -> BoxFuture<'static, ()> {
        let source = self.build(env);
        let interval = Duration::from_millis(self.interval_ms().max(1));
        Box::pin(poll_loop(source, interval, ctx))
    }
    /// For tests and callers that need the concrete config.
    fn as_any(&self) -> &dyn Any;
    /// A copy behind a new box (configs are cloned into the source tasks).
    fn clone_box(&self) -> Box<dyn SourceSpec>;
}

/// What every source is built with: the buses shared by the agent's sources.
#[derive(Clone, Default)]
pub struct BuildEnv {
    pub buses: bus::Buses,
}

/// A running source: one poll at a time.
pub trait Source: Send + 'static {
    /// Reads the device once; `ts`/`quality` are the wall-clock stamp of this poll.
    fn poll(&mut self, ts: DateTime<Utc>, quality: Quality) -> BoxFuture<'_, PollResult>;
    /// The physical meters behind this source as last read (nameplate data).
    fn meters(&self) -> Vec<MeterInfo> {
        Vec::new()
    }
}

/// Why a poll (or one value of it) failed: the `reason` label of
/// `gridmeter_agent_source_errors_total`. A small fixed set, so the label stays bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Could not open the port or connect.
    Connect,
    /// The device did not answer in time (a silent meter, a broken line).
    Timeout,
    /// An answer came but failed its CRC/checksum or framing.
    Crc,
    /// The device answered with an error (a Modbus exception, an unknown register).
    Exception,
    /// An answer that does not decode to a value (wrong length, NaN, a malformed record).
    Decode,
    /// Any other I/O or protocol failure on the link.
    Io,
    /// The device's own status says it is in error (values still sent, flagged).
    DeviceStatus,
}

impl Reason {
    /// Every reason, for pre-registering the label values.
    pub const ALL: [Reason; 7] = [
        Reason::Connect,
        Reason::Timeout,
        Reason::Crc,
        Reason::Exception,
        Reason::Decode,
        Reason::Io,
        Reason::DeviceStatus,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Connect => "connect",
            Reason::Timeout => "timeout",
            Reason::Crc => "crc",
            Reason::Exception => "exception",
            Reason::Decode => "decode",
            Reason::Io => "io",
            Reason::DeviceStatus => "device_status",
        }
    }
}

/// A failed poll or value: its reason and a message (bounded text, no raw input).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceError {
    pub reason: Reason,
    pub message: String,
}

impl SourceError {
    pub fn new(reason: Reason, message: impl Into<String>) -> SourceError {
        SourceError {
            reason,
            message: message.into(),
        }
    }
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.reason.as_str())
    }
}

/// Samples of one poll plus per-value problems (counted as source errors, not fatal).
pub type PollResult = Result<(Vec<Sample>, Vec<SourceError>), SourceError>;

/// Reads a typed source config from its table: every unknown key (each removed in turn to
/// find the next), a missing key or a bad value, with its path below the entry.
pub fn parse<T: SourceSpec + DeserializeOwned>(
    mut table: toml::Table,
) -> Result<Box<dyn SourceSpec>, Vec<(String, String)>> {
    let mut problems = Vec::new();
    for _ in 0..64 {
        match serde_path_to_error::deserialize::<_, T>(toml::Value::Table(table.clone())) {
            Ok(v) if problems.is_empty() => return Ok(Box::new(v)),
            Ok(_) => return Err(problems),
            Err(e) => {
                let path = e.path().to_string();
                // serde's messages quote the offending value: keep them short.
                let message: String = e.inner().to_string().chars().take(300).collect();
                let top_key = match e.path().iter().collect::<Vec<_>>().as_slice() {
                    [serde_path_to_error::Segment::Map { key }] => Some(key.clone()),
                    _ => None,
                };
                if let Some(field) = missing_field(&message) {
                    let at = if path == "." {
                        field.to_string()
                    } else {
                        format!("{path}.{field}")
                    };
                    problems.push((at, "is required".to_string()));
                    return Err(problems);
                }
                let unknown = message.starts_with("unknown field");
                problems.push((if path == "." { String::new() } else { path }, message));
                match top_key {
                    Some(k) if unknown => {
                        table.remove(&k);
                    }
                    _ => return Err(problems),
                }
            }
        }
    }
    Err(problems)
}

/// The field of serde's "missing field `x`" message.
fn missing_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("missing field `")?
        .split('`')
        .next()
        .filter(|f| !f.is_empty())
}

/// The agent's wall clock. If it ever goes backwards relative to the last timestamp it
/// handed out (NTP step, RTC reset), readings are stamped with the real (earlier) time and
/// flagged [`Quality::CLOCK_SUSPECT`]: they are never silently reordered or clamped.
#[derive(Debug, Default)]
pub struct WallClock {
    last: Mutex<Option<DateTime<Utc>>>,
}

impl WallClock {
    pub fn now(&self) -> (DateTime<Utc>, Quality) {
        self.stamp(Utc::now())
    }

    /// Stamps `now` (separate from [`now`](Self::now) for tests).
    pub fn stamp(&self, now: DateTime<Utc>) -> (DateTime<Utc>, Quality) {
        let mut last = match self.last.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let q = match *last {
            Some(l) if now < l => Quality::CLOCK_SUSPECT,
            _ => Quality::GOOD,
        };
        if last.is_none_or(|l| now > l) {
            *last = Some(now);
        }
        (now, q)
    }
}

/// What a source task needs.
pub struct SourceCtx {
    pub label: String,
    pub device: DeviceId,
    pub tx: mpsc::Sender<Vec<Sample>>,
    pub metrics: AgentMetrics,
    pub clock: std::sync::Arc<WallClock>,
    pub shutdown: watch::Receiver<bool>,
    /// Where the source's nameplate data goes (published on the device's meta topic).
    pub meta: MetaBoard,
}

impl SourceCtx {
    /// Hands samples to the writer; false once the agent is shutting down. Samples the
    /// collector would refuse are dropped here (see [`refuse_invalid`]).
    pub async fn emit(&self, mut samples: Vec<Sample>) -> bool {
        refuse_invalid(&self.label, &mut samples, &self.metrics);
        if samples.is_empty() {
            return true;
        }
        let n = samples.len() as u64;
        if self.tx.send(samples).await.is_err() {
            return false;
        }
        self.metrics
            .collected
            .with_label_values(&[self.label.as_str()])
            .inc_by(n);
        true
    }

    /// Counts and logs a failed poll or value.
    pub fn error(&self, e: &SourceError) {
        self.metrics
            .source_errors
            .with_label_values(&[self.label.as_str(), e.reason.as_str()])
            .inc();
        tracing::warn!(source = %self.label, reason = e.reason.as_str(), "{}", e.message);
    }
}

/// Removes the samples that fail the collector's own validation
/// ([`gridmeter_core::wire::check_reading`]): they would only end in its dead letters. Each
/// one is counted in `gridmeter_agent_readings_invalid_total{source}`, and the poll's first
/// one is logged with the source and the channel.
pub fn refuse_invalid(source: &str, samples: &mut Vec<Sample>, metrics: &AgentMetrics) {
    let before = samples.len();
    let mut first = None;
    samples.retain(|s| {
        match gridmeter_core::wire::check_reading(s.channel.as_str(), &s.unit, s.value, s.ts) {
            Ok(()) => true,
            Err(e) => {
                first.get_or_insert_with(|| format!("{}: {e}", s.channel));
                false
            }
        }
    });
    let refused = before - samples.len();
    if refused > 0 {
        metrics
            .invalid
            .with_label_values(&[source])
            .inc_by(refused as u64);
        tracing::warn!(
            source = %source,
            refused,
            "readings refused before buffering (the collector would dead-letter them); first: {}",
            first.unwrap_or_default()
        );
    }
}

/// Polls `source` every `interval` until shutdown; errors are counted, never fatal. A poll
/// that hangs cannot stall other sources: each source is its own task, and every protocol
/// bounds its requests with a timeout.
pub async fn poll_loop(mut source: Box<dyn Source>, interval: Duration, mut ctx: SourceCtx) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = ctx.shutdown.changed() => return,
        }
        if *ctx.shutdown.borrow() {
            return;
        }
        let (ts, quality) = ctx.clock.now();
        let result = tokio::select! {
            r = source.poll(ts, quality) => r,
            _ = ctx.shutdown.changed() => return,
        };
        match result {
            Ok((samples, problems)) => {
                for p in &problems {
                    ctx.error(p);
                }
                ctx.meta.set(&ctx.label, source.meters());
                if !ctx.emit(samples).await {
                    return;
                }
            }
            Err(e) => ctx.error(&e),
        }
    }
}

/// Default `interval_ms` of every source.
pub fn default_interval() -> u64 {
    1000
}

/// Default per-request `timeout_ms`.
pub fn default_timeout() -> u64 {
    3000
}

/// Channel name helper: `prefix.name`, or `name` without a prefix.
pub fn prefixed(prefix: Option<&str>, name: &str) -> String {
    match prefix {
        Some(p) if !p.is_empty() => format!("{p}.{name}"),
        _ => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hostile: a source producing readings the collector would dead-letter (an empty unit,
    /// as the Prometheus source once sent, or more than 9 decimal places). They are refused
    /// before buffering, counted per source; the good ones pass.
    #[test]
    fn hostile_invalid_readings_are_refused_before_buffering() {
        let registry = ::prometheus::Registry::new();
        let metrics = AgentMetrics::register(&registry).unwrap();
        let sample = |channel: &str, unit: &str, value: Decimal| Sample {
            ts: DateTime::from_timestamp(1_795_000_000, 0).unwrap(),
            channel: Channel::new(channel).unwrap(),
            kind: Kind::Counter,
            unit: unit.into(),
            value,
            quality: Quality::GOOD,
        };
        let mut samples: Vec<Sample> = (0..20)
            .map(|i| sample(&format!("http_requests_total.{i}"), "", Decimal::from(i)))
            .collect();
        samples.push(sample(
            "process_cpu_seconds_total",
            "s",
            Decimal::new(125, 2),
        ));
        samples.push(sample("x", "1", Decimal::new(1, 12)));
        refuse_invalid("edge-web", &mut samples, &metrics);
        let kept: Vec<&str> = samples.iter().map(|s| s.channel.as_str()).collect();
        assert_eq!(kept, vec!["process_cpu_seconds_total"]);
        assert_eq!(metrics.invalid.with_label_values(&["edge-web"]).get(), 21);
    }

    #[test]
    fn clock_going_backwards_is_flagged_not_reordered() {
        let c = WallClock::default();
        let t = |s| DateTime::from_timestamp(s, 0).unwrap();
        assert_eq!(c.stamp(t(100)), (t(100), Quality::GOOD));
        assert_eq!(c.stamp(t(90)), (t(90), Quality::CLOCK_SUSPECT));
        assert_eq!(c.stamp(t(95)), (t(95), Quality::CLOCK_SUSPECT));
        assert_eq!(c.stamp(t(101)), (t(101), Quality::GOOD));
    }

    #[test]
    fn every_registered_type_is_unique() {
        let mut names: Vec<&str> = REGISTRY.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), REGISTRY.len());
    }
}
