//! Simulated devices for demos and load tests.
//!
//! Profiles:
//! - `household_meter`: `energy_import` (counter, Wh) and `power` (gauge, W) following a
//!   daily load curve (night base load, morning and evening peaks) with seeded noise.
//! - `pv_inverter`: `energy_yield` (counter, Wh) and `ac_power` (gauge, W) following a bell
//!   curve between 06:00 and 20:00 peaking at 13:00, with slowly drifting cloud cover.
//! - `edge_server`: `cpu_seconds`, `net.rx_bytes`, `net.tx_bytes`, `http_requests`
//!   (counters) and `memory_used_bytes` (gauge).
//!
//! Hours of the day are UTC hours of the event time (no time zone: it is a simulator).
//!
//! Physics: each step has one average power `P` (integer mW) over the step. Energy is kept
//! exactly as an integer in mW·ms (µJ) and the `power` gauge reports exactly that `P`, so
//! the counter's increase equals the integral of the reported power to within the
//! register's 1 Wh resolution (the register is the floor of the exact energy, as a real
//! meter's display is). The energy register wraps to 0 after `register_max`.
//!
//! Clock: without `start` every step is stamped with the wall clock and integrates the real
//! elapsed time. With `start` a virtual clock runs: each step advances event time by
//! `step_secs`, and steps are paced at `speedup` event seconds per real second (or not at all
//! with `as_fast_as_possible`, where the bounded channel to the buffer is the only brake);
//! `until` stops generation (a meter that stops reporting). Output is deterministic for a
//! given `seed` and `device_id`.
//!
//! Faults for demos and tests: `glitch = { at = "<time>", wh = N }` makes the energy register
//! reading of the first step at or after `at` read `N` Wh too high, once (the next reading is
//! right again), like a corrupted transfer: a spike for the aggregator's validation rules.
//! (Profile shapes use f64 internally; the emitted values are exact integers/decimals. The
//! simulator generates data, it is not on the billing path.)

use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use gridmeter_core::{Channel, DeviceId, Kind, Quality};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;

use futures::future::BoxFuture;
use gridmeter_core::config::Problems;
use serde::Deserialize;

use super::{BuildEnv, PollResult, Sample, Source, SourceCtx, SourceSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    HouseholdMeter,
    PvInverter,
    EdgeServer,
}

/// A `type = "simulator"` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatorSource {
    #[serde(default)]
    pub name: Option<String>,
    /// Real time between two steps when no virtual clock is configured.
    #[serde(default = "super::default_interval")]
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
    /// One energy register reading too high (see the module docs).
    #[serde(default)]
    pub glitch: Option<Glitch>,
}

/// A one-reading fault of the energy register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Glitch {
    /// The first step at or after this event time reads wrong.
    pub at: DateTime<Utc>,
    /// By how many Wh it reads too high.
    pub wh: u64,
}

impl SourceSpec for SimulatorSource {
    spec_common!("simulator");

    fn validate(&self, at: &str, p: &mut Problems) {
        if self.step_secs == Some(0) {
            p.push(format!("{at}.step_secs"), "must be > 0");
        }
        if let Some(sp) = self.speedup {
            if !(sp.is_finite() && sp > 0.0) {
                p.push(format!("{at}.speedup"), "must be a positive number");
            }
        }
        if self.register_max == Some(0) {
            p.push(format!("{at}.register_max"), "must be > 0");
        }
        if let (Some(a), Some(b)) = (self.start, self.until) {
            if b <= a {
                p.push(format!("{at}.until"), "must be after start");
            }
        }
    }

    fn build(&self, _env: &BuildEnv) -> Box<dyn Source> {
        // Only used for polling in wall-clock mode; `run` drives the virtual clock.
        Box::new(WallClockSim {
            sim: Simulator::new(
                self,
                &DeviceId::new("simulator").unwrap_or_else(|_| unreachable!()),
            ),
            last: None,
        })
    }

    fn run(&self, _env: &BuildEnv, mut ctx: SourceCtx) -> BoxFuture<'static, ()> {
        let cfg = self.clone();
        Box::pin(async move { run(cfg, &mut ctx).await })
    }
}

/// The simulator polled on the wall clock (each poll integrates the real time since the last).
struct WallClockSim {
    sim: Simulator,
    last: Option<tokio::time::Instant>,
}

impl Source for WallClockSim {
    fn poll(&mut self, ts: DateTime<Utc>, quality: Quality) -> BoxFuture<'_, PollResult> {
        let now = tokio::time::Instant::now();
        let elapsed_ms = self
            .last
            .map_or(0, |l| now.duration_since(l).as_millis() as u64);
        self.last = Some(now);
        let samples = self.sim.step(ts, elapsed_ms, quality);
        Box::pin(async move { Ok((samples, Vec::new())) })
    }
}

/// µJ (mW·ms) in one Wh.
const UJ_PER_WH: i128 = 3_600_000_000;

pub struct Simulator {
    profile: Profile,
    rng: StdRng,
    register_max: Option<u64>,
    peak_mw: f64,
    /// Exact energy in µJ.
    energy_uj: i128,
    cloud: f64,
    cpu_ms: u64,
    rx_bytes: u64,
    tx_bytes: u64,
    requests: u64,
    channels: Vec<Channel>,
    /// The glitch still to come.
    glitch: Option<Glitch>,
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

fn gauss(x: f64, mu: f64, sigma: f64) -> f64 {
    (-((x - mu) / sigma).powi(2) / 2.0).exp()
}

fn channel(s: &str) -> Channel {
    Channel::new(s).unwrap_or_else(|_| unreachable!("static channel names are valid"))
}

impl Simulator {
    pub fn new(cfg: &SimulatorSource, device: &DeviceId) -> Simulator {
        let mut rng = StdRng::seed_from_u64(cfg.seed ^ fnv(device.as_str()));
        let peak_w = cfg.peak_watts.map(f64::from).unwrap_or(match cfg.profile {
            Profile::HouseholdMeter => 4000.0,
            Profile::PvInverter => 5000.0,
            Profile::EdgeServer => 0.0,
        });
        let start_wh: u64 = match cfg.register_max {
            Some(m) => rng.random_range(0..=m),
            None => rng.random_range(0..1_000_000),
        };
        let channels = match cfg.profile {
            Profile::HouseholdMeter => vec![channel("energy_import"), channel("power")],
            Profile::PvInverter => vec![channel("energy_yield"), channel("ac_power")],
            Profile::EdgeServer => vec![
                channel("cpu_seconds"),
                channel("memory_used_bytes"),
                channel("net.rx_bytes"),
                channel("net.tx_bytes"),
                channel("http_requests"),
            ],
        };
        Simulator {
            profile: cfg.profile,
            register_max: cfg.register_max,
            peak_mw: peak_w * 1000.0,
            energy_uj: i128::from(start_wh) * UJ_PER_WH,
            cloud: 0.8,
            cpu_ms: rng.random_range(0..10_000_000),
            rx_bytes: rng.random_range(0..1 << 40),
            tx_bytes: rng.random_range(0..1 << 40),
            requests: rng.random_range(0..1 << 30),
            rng,
            channels,
            glitch: cfg.glitch,
        }
    }

    /// The energy register (Wh): the floor of the exact energy, wrapped at `register_max`.
    pub fn register_wh(&self) -> u64 {
        let wh = (self.energy_uj / UJ_PER_WH) as u64;
        match self.register_max {
            Some(m) => wh % (m + 1),
            None => wh,
        }
    }

    /// Exact energy in µJ (for tests of the physics).
    pub fn energy_uj(&self) -> i128 {
        self.energy_uj
    }

    /// Simulates the `step_ms` milliseconds ending at `ts` and returns the samples stamped `ts`.
    pub fn step(&mut self, ts: DateTime<Utc>, step_ms: u64, quality: Quality) -> Vec<Sample> {
        let mid = ts - chrono::Duration::milliseconds((step_ms / 2) as i64);
        let hour = f64::from(mid.hour()) + f64::from(mid.minute()) / 60.0;
        let sample = |c: &Channel, kind, unit: &str, value| Sample {
            ts,
            channel: c.clone(),
            kind,
            unit: unit.to_string(),
            value,
            quality,
        };
        match self.profile {
            Profile::HouseholdMeter | Profile::PvInverter => {
                let shape = if self.profile == Profile::HouseholdMeter {
                    let s = 0.07
                        + 0.30 * gauss(hour, 7.5, 1.0)
                        + 0.10 * gauss(hour, 13.0, 2.0)
                        + 0.55 * gauss(hour, 19.5, 1.5);
                    s * self.rng.random_range(0.85..1.15)
                } else {
                    self.cloud = (self.cloud + self.rng.random_range(-0.05..0.05)).clamp(0.3, 1.0);
                    if (6.0..20.0).contains(&hour) {
                        gauss(hour, 13.0, 2.2) * self.cloud
                    } else {
                        0.0
                    }
                };
                let p_mw = (self.peak_mw * shape).round().max(0.0) as i64;
                self.energy_uj += i128::from(p_mw) * i128::from(step_ms);
                let power = Decimal::new(p_mw, 3).normalize();
                let mut register = self.register_wh();
                if self.glitch.is_some_and(|g| ts >= g.at) {
                    register += self.glitch.take().map_or(0, |g| g.wh);
                }
                vec![
                    sample(
                        &self.channels[0],
                        Kind::Counter,
                        "Wh",
                        Decimal::from(register),
                    ),
                    sample(&self.channels[1], Kind::Gauge, "W", power),
                ]
            }
            Profile::EdgeServer => {
                let load = (0.1 + 0.5 * gauss(hour, 14.0, 4.0)) * self.rng.random_range(0.7..1.3);
                // Two cores.
                self.cpu_ms += (load * 2.0 * step_ms as f64) as u64;
                let rps = 50.0 * load * self.rng.random_range(0.8..1.2);
                let reqs = (rps * step_ms as f64 / 1000.0) as u64;
                self.requests += reqs;
                self.rx_bytes += reqs * self.rng.random_range(400..1200);
                self.tx_bytes += reqs * self.rng.random_range(2_000..40_000);
                let mem: u64 = 600_000_000 + (load * 400_000_000.0) as u64;
                vec![
                    sample(
                        &self.channels[0],
                        Kind::Counter,
                        "s",
                        Decimal::new(self.cpu_ms as i64, 3).normalize(),
                    ),
                    sample(&self.channels[1], Kind::Gauge, "B", Decimal::from(mem)),
                    sample(
                        &self.channels[2],
                        Kind::Counter,
                        "B",
                        Decimal::from(self.rx_bytes),
                    ),
                    sample(
                        &self.channels[3],
                        Kind::Counter,
                        "B",
                        Decimal::from(self.tx_bytes),
                    ),
                    sample(
                        &self.channels[4],
                        Kind::Counter,
                        "1",
                        Decimal::from(self.requests),
                    ),
                ]
            }
        }
    }
}

/// The simulator source's task.
pub async fn run(cfg: SimulatorSource, ctx: &mut SourceCtx) {
    let mut sim = Simulator::new(&cfg, &ctx.device);
    match cfg.start {
        Some(start) => {
            let step_secs = cfg.step_secs.unwrap_or((cfg.interval_ms / 1000).max(1));
            let speedup = cfg.speedup.unwrap_or(1.0);
            let pace = Duration::from_secs_f64(step_secs as f64 / speedup);
            let mut t = start;
            let mut next = tokio::time::Instant::now();
            loop {
                if *ctx.shutdown.borrow() {
                    return;
                }
                let nt = t + chrono::Duration::seconds(step_secs as i64);
                if cfg.until.is_some_and(|u| nt > u) {
                    // Done generating; idle until shutdown.
                    let _ = ctx.shutdown.changed().await;
                    return;
                }
                t = nt;
                let samples = sim.step(t, step_secs * 1000, Quality::GOOD);
                if !ctx.emit(samples).await {
                    return;
                }
                if cfg.as_fast_as_possible {
                    tokio::task::yield_now().await;
                } else {
                    next += pace;
                    tokio::select! {
                        _ = tokio::time::sleep_until(next) => {}
                        _ = ctx.shutdown.changed() => return,
                    }
                }
            }
        }
        None => {
            let mut tick = tokio::time::interval(Duration::from_millis(cfg.interval_ms.max(1)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let mut last = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = ctx.shutdown.changed() => return,
                }
                let now = tokio::time::Instant::now();
                let elapsed_ms = now.duration_since(last).as_millis() as u64;
                last = now;
                let (ts, q) = ctx.clock.now();
                let samples = sim.step(ts, elapsed_ms, q);
                if !ctx.emit(samples).await {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(profile: Profile, register_max: Option<u64>) -> SimulatorSource {
        SimulatorSource {
            name: None,
            interval_ms: 1000,
            profile,
            seed: 7,
            register_max,
            start: None,
            step_secs: None,
            speedup: None,
            as_fast_as_possible: false,
            until: None,
            peak_watts: None,
            glitch: None,
        }
    }

    #[test]
    fn a_glitch_reads_too_high_once() {
        let dev = DeviceId::new("hh-1").unwrap();
        let start = DateTime::parse_from_rfc3339("2026-10-01T00:00:00Z")
            .unwrap()
            .to_utc();
        let at = start + chrono::Duration::seconds(900 * 10);
        let mut glitchy = cfg(Profile::HouseholdMeter, None);
        glitchy.glitch = Some(Glitch { at, wh: 5000 });
        let (mut a, mut b) = (
            Simulator::new(&cfg(Profile::HouseholdMeter, None), &dev),
            Simulator::new(&glitchy, &dev),
        );
        for i in 1..=20 {
            let t = start + chrono::Duration::seconds(900 * i);
            let (x, y) = (
                a.step(t, 900_000, Quality::GOOD),
                b.step(t, 900_000, Quality::GOOD),
            );
            let want = if t == at { 5000 } else { 0 };
            assert_eq!(y[0].value - x[0].value, Decimal::from(want), "step {i}");
            assert_eq!(y[1].value, x[1].value);
        }
    }

    fn day(sim: &mut Simulator) -> Vec<Vec<Sample>> {
        let start = DateTime::parse_from_rfc3339("2026-10-01T00:00:00Z")
            .unwrap()
            .to_utc();
        (1..=96)
            .map(|i| {
                sim.step(
                    start + chrono::Duration::seconds(900 * i),
                    900_000,
                    Quality::GOOD,
                )
            })
            .collect()
    }

    #[test]
    fn counter_increase_is_the_integral_of_power() {
        let dev = DeviceId::new("m1").unwrap();
        for profile in [Profile::HouseholdMeter, Profile::PvInverter] {
            let mut sim = Simulator::new(&cfg(profile, None), &dev);
            let e0 = sim.energy_uj();
            let r0 = sim.register_wh();
            let steps = day(&mut sim);
            // Σ P·dt from the reported gauges (W × 900 s), in Wh, exactly.
            let integral: Decimal = steps
                .iter()
                .map(|s| s[1].value * Decimal::from(900))
                .sum::<Decimal>()
                / Decimal::from(3600);
            let last = steps.last().unwrap()[0].value;
            let delta = last - Decimal::from(r0);
            let exact =
                Decimal::from_i128_with_scale(sim.energy_uj() - e0, 0) / Decimal::from(UJ_PER_WH);
            assert_eq!(exact, integral, "{profile:?}");
            assert!(
                (delta - integral).abs() < Decimal::ONE,
                "{profile:?}: {delta} vs {integral}"
            );
            assert!(
                integral > Decimal::from(1000),
                "{profile:?}: a day has energy: {integral}"
            );
        }
    }

    #[test]
    fn pv_is_dark_at_night_and_peaks_midday() {
        let mut sim = Simulator::new(
            &cfg(Profile::PvInverter, None),
            &DeviceId::new("pv").unwrap(),
        );
        let steps = day(&mut sim);
        assert_eq!(steps[8][1].value, Decimal::ZERO); // 02:15
        assert!(steps[51][1].value > Decimal::from(1000)); // 13:00
    }

    #[test]
    fn deterministic_and_rolls_over() {
        let dev = DeviceId::new("m1").unwrap();
        let a = day(&mut Simulator::new(
            &cfg(Profile::HouseholdMeter, Some(999)),
            &dev,
        ));
        let b = day(&mut Simulator::new(
            &cfg(Profile::HouseholdMeter, Some(999)),
            &dev,
        ));
        assert_eq!(a, b);
        let vals: Vec<Decimal> = a.iter().map(|s| s[0].value).collect();
        assert!(vals.iter().all(|v| *v <= Decimal::from(999)));
        assert!(
            vals.windows(2).any(|w| w[1] < w[0]),
            "a 999 Wh register wraps within a day"
        );
        let other = day(&mut Simulator::new(
            &cfg(Profile::HouseholdMeter, Some(999)),
            &DeviceId::new("m2").unwrap(),
        ));
        assert_ne!(a, other);
    }

    #[test]
    fn edge_server_counters_only_grow() {
        let mut sim = Simulator::new(
            &cfg(Profile::EdgeServer, None),
            &DeviceId::new("e").unwrap(),
        );
        let steps = day(&mut sim);
        for w in steps.windows(2) {
            for c in [0, 2, 3, 4] {
                assert!(w[1][c].value >= w[0][c].value);
                assert_eq!(w[1][c].kind, Kind::Counter);
            }
        }
    }
}
