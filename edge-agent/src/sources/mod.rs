//! Sources of readings. Each `[[sources]]` entry runs as its own task with its own poll
//! interval and sends [`Sample`]s (readings without a seq) to the buffer writer; the seq is
//! assigned only when the sample is committed to SQLite.

pub mod host;
pub mod modbus;
pub mod prometheus;
pub mod simulator;
pub mod sunspec;

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use gridmeter_core::{Channel, DeviceId, Kind, Quality};
use rust_decimal::Decimal;
use tokio::sync::{mpsc, watch};

use crate::config::SourceConfig;
use crate::metrics::AgentMetrics;

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
pub(crate) struct SourceCtx {
    pub label: String,
    pub device: DeviceId,
    pub tx: mpsc::Sender<Vec<Sample>>,
    pub metrics: AgentMetrics,
    pub clock: std::sync::Arc<WallClock>,
    pub shutdown: watch::Receiver<bool>,
}

impl SourceCtx {
    /// Hands samples to the writer; false once the agent is shutting down. Samples the
    /// collector would refuse are dropped here (see [`refuse_invalid`]).
    async fn emit(&self, mut samples: Vec<Sample>) -> bool {
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

    fn error(&self, what: &str) {
        self.metrics
            .source_errors
            .with_label_values(&[self.label.as_str()])
            .inc();
        tracing::warn!(source = %self.label, "{what}");
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

/// Runs one source until shutdown.
pub(crate) async fn run_source(config: SourceConfig, mut ctx: SourceCtx) {
    let interval = Duration::from_millis(config.interval_ms().max(1));
    let mut poller = match config {
        SourceConfig::Simulator(s) => {
            simulator::run(s, &mut ctx).await;
            return;
        }
        SourceConfig::Modbus(m) => Poller::Modbus(modbus::ModbusPoller::new(m)),
        SourceConfig::Sunspec(s) => Poller::Sunspec(sunspec::SunspecPoller::new(s)),
        SourceConfig::Host(h) => Poller::Host(host::HostPoller::new(h)),
        SourceConfig::Prometheus(p) => Poller::Prometheus(prometheus::PromPoller::new(p)),
        SourceConfig::Invalid(problems) => {
            ctx.error(&format!("invalid source config: {problems:?}"));
            return;
        }
    };
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
        let result = match &mut poller {
            Poller::Modbus(p) => p.poll(ts, quality).await,
            Poller::Sunspec(p) => p.poll(ts, quality).await,
            Poller::Host(p) => p.poll(ts, quality).await,
            Poller::Prometheus(p) => p.poll(ts, quality).await,
        };
        match result {
            Ok((samples, problems)) => {
                for p in problems {
                    ctx.error(&p);
                }
                if !ctx.emit(samples).await {
                    return;
                }
            }
            Err(e) => ctx.error(&e),
        }
    }
}

enum Poller {
    Modbus(modbus::ModbusPoller),
    Sunspec(sunspec::SunspecPoller),
    Host(host::HostPoller),
    Prometheus(prometheus::PromPoller),
}

/// Samples of one poll plus per-value problems (counted as source errors, not fatal).
pub(crate) type PollResult = Result<(Vec<Sample>, Vec<String>), String>;

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
}
