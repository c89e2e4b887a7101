//! Modbus registers as readings: Modbus TCP, Modbus RTU on a serial port (RS-485), and
//! Modbus RTU over TCP (an RS-485 gateway that forwards RTU frames unchanged).
//!
//! Each register map entry is read with one request (function 3 holding or 4 input) and
//! decoded as u16/i16/u32/i32/u64/f32 in the configured word order, then multiplied by the
//! exact decimal `scale`. Integers stay exact. f32 registers are converted through the
//! float's shortest decimal text (`format!("{}", f)` then `decimal::parse_exact`, rounded to
//! 9 places if needed): they are approximate by nature and config validation only allows
//! them as gauges in a hand-written map (the driver catalogue may read an f32 energy
//! register as a counter where the meter offers nothing else, see [`super::drivers`]).
//!
//! # Buses
//! Several sources may name the same serial `port` (or the same RTU-over-TCP `address`):
//! they share one link ([`super::bus`]) and each takes it for a whole poll, so frames never
//! interleave. One source may also poll several `unit_ids` in turn; each unit's channels
//! are then prefixed `u{id}.`. On a serial line the agent waits `inter_frame_delay_ms`
//! (default 3.5 character times, at least 1.75 ms as the Modbus serial line spec says)
//! between the end of one frame and the next request.
//!
//! # Errors
//! A unit that does not answer within `timeout_ms` is counted (`reason="timeout"`) and the
//! rest of its registers skipped for this poll, so a silent meter costs one timeout per poll
//! and the bus goes on to the next unit. Bytes that came but never formed a valid frame
//! (a CRC error, noise) count as `reason="crc"`, and the serial port is reopened to drop
//! whatever is left in the line. A Modbus exception counts as `exception` for that register
//! only.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use gridmeter_core::config::Problems;
use gridmeter_core::{decimal, Channel, Kind, Quality};
use rust_decimal::Decimal;
use serde::Deserialize;
use tokio::time::Instant;
use tokio_modbus::client::{Context, Reader};
use tokio_modbus::prelude::SlaveContext;
use tokio_modbus::Slave;

use super::bus::{self, Counted, Parity};
use super::drivers::{self, Driver, NameplateField};
use super::meta::MeterInfo;
use super::{BuildEnv, PollResult, Reason, Sample, Source, SourceError, SourceSpec};

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

/// One register (or group of registers) read as one channel.
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

/// How the Modbus frames travel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// Modbus TCP (MBAP header) to `address`.
    #[default]
    Tcp,
    /// Modbus RTU on the serial `port`.
    Rtu,
    /// Modbus RTU frames over a TCP connection to `address` (an RS-485 gateway).
    RtuOverTcp,
}

impl Transport {
    fn protocol(self) -> &'static str {
        match self {
            Transport::Tcp => "modbus_tcp",
            Transport::Rtu => "modbus_rtu",
            Transport::RtuOverTcp => "modbus_rtu_over_tcp",
        }
    }
}

/// A `type = "modbus"` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusSource {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "super::default_interval")]
    pub interval_ms: u64,
    #[serde(default)]
    pub transport: Transport,
    /// `ip:port` of the Modbus TCP server or RTU-over-TCP gateway.
    #[serde(default)]
    pub address: String,
    /// Serial device of an RTU bus (`/dev/ttyUSB0`).
    #[serde(default)]
    pub port: String,
    /// Serial settings (RTU): the driver's factory default, else 19200 baud, even parity,
    /// 1 stop bit (the Modbus serial line default).
    #[serde(default)]
    pub baud_rate: Option<u32>,
    #[serde(default)]
    pub parity: Option<Parity>,
    #[serde(default)]
    pub stop_bits: Option<u8>,
    /// Silence between frames on a serial line (default 3.5 characters, at least 1.75 ms).
    #[serde(default)]
    pub inter_frame_delay_ms: Option<u64>,
    /// The unit (slave) id; default 1.
    #[serde(default)]
    pub unit_id: Option<u8>,
    /// Several units on the bus with the same map, polled in turn (channels `u{id}.…`).
    #[serde(default)]
    pub unit_ids: Vec<u8>,
    /// Per-request timeout.
    #[serde(default = "super::default_timeout")]
    pub timeout_ms: u64,
    /// A meter of the catalogue (`eastron_sdm630`, ...): its register map and nameplate.
    #[serde(default)]
    pub driver: Option<String>,
    /// Prepended to every channel name (`flat3` gives `flat3.energy_import_wh`).
    #[serde(default)]
    pub channel_prefix: Option<String>,
    /// Registers to read (after the driver's, if any).
    #[serde(default)]
    pub registers: Vec<RegisterMap>,
}

impl Default for ModbusSource {
    fn default() -> Self {
        ModbusSource {
            name: None,
            interval_ms: super::default_interval(),
            transport: Transport::Tcp,
            address: String::new(),
            port: String::new(),
            baud_rate: None,
            parity: None,
            stop_bits: None,
            inter_frame_delay_ms: None,
            unit_id: None,
            unit_ids: Vec::new(),
            timeout_ms: super::default_timeout(),
            driver: None,
            channel_prefix: None,
            registers: Vec::new(),
        }
    }
}

/// Serial settings after defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Serial {
    pub baud_rate: u32,
    pub parity: Parity,
    pub stop_bits: u8,
}

impl ModbusSource {
    fn driver(&self) -> Option<Result<&'static Driver, String>> {
        self.driver.as_deref().map(drivers::get)
    }

    /// The units polled in turn.
    pub fn units(&self) -> Vec<u8> {
        if self.unit_ids.is_empty() {
            vec![self.unit_id.unwrap_or(1)]
        } else {
            self.unit_ids.clone()
        }
    }

    /// Serial settings: configured, else the driver's factory default, else 19200 8E1.
    pub fn serial(&self) -> Serial {
        let d = self.driver().and_then(Result::ok).map(|d| d.serial);
        Serial {
            baud_rate: self.baud_rate.or(d.map(|d| d.baud_rate)).unwrap_or(19_200),
            parity: self.parity.or(d.map(|d| d.parity)).unwrap_or(Parity::Even),
            stop_bits: self.stop_bits.or(d.map(|d| d.stop_bits)).unwrap_or(1),
        }
    }

    fn inter_frame_delay(&self) -> Duration {
        match (self.transport, self.inter_frame_delay_ms) {
            (_, Some(ms)) => Duration::from_millis(ms),
            (Transport::Rtu, None) => {
                let s = self.serial();
                bus::char_time(s.baud_rate, s.parity, s.stop_bits, 3.5)
                    .max(Duration::from_micros(1750))
            }
            _ => Duration::ZERO,
        }
    }

    /// The bus key: sources with the same key share one link.
    pub fn bus_key(&self) -> String {
        match self.transport {
            Transport::Tcp => format!("modbus_tcp:{}", self.address),
            Transport::Rtu => format!("serial:{}", self.port),
            Transport::RtuOverTcp => format!("rtu_over_tcp:{}", self.address),
        }
    }

    /// Every register read per unit: the driver's, then the configured ones.
    fn register_maps(&self) -> Vec<RegisterMap> {
        let mut maps = match self.driver() {
            Some(Ok(d)) => d.registers.clone(),
            _ => Vec::new(),
        };
        maps.extend(self.registers.iter().cloned());
        maps
    }

    /// The channel of register `channel` on `unit`.
    fn channel_name(&self, unit: u8, channel: &str) -> String {
        let mut name = String::new();
        if let Some(p) = self.channel_prefix.as_deref().filter(|p| !p.is_empty()) {
            name.push_str(p);
            name.push('.');
        }
        if self.unit_ids.len() > 1 {
            name.push_str(&format!("u{unit}."));
        }
        name.push_str(channel);
        name
    }
}

impl SourceSpec for ModbusSource {
    spec_common!("modbus");

    fn validate(&self, at: &str, p: &mut Problems) {
        match self.transport {
            Transport::Tcp | Transport::RtuOverTcp => {
                if self.address.is_empty() {
                    p.push(
                        format!("{at}.address"),
                        "is required (ip:port of the Modbus server or gateway)",
                    );
                } else if self.address.parse::<SocketAddr>().is_err() {
                    p.push(format!("{at}.address"), "must be ip:port");
                }
                if !self.port.is_empty() {
                    p.push(
                        format!("{at}.port"),
                        "is for transport \"rtu\" (a serial device); this source uses address",
                    );
                }
            }
            Transport::Rtu => {
                if !self.address.is_empty() {
                    p.push(
                        format!("{at}.address"),
                        "is for TCP transports; transport \"rtu\" reads the serial `port`",
                    );
                }
                let s = self.serial();
                bus::validate_serial(at, &self.port, s.baud_rate, s.stop_bits, p);
            }
        }
        if self.transport == Transport::Tcp {
            for key in [
                ("baud_rate", self.baud_rate.is_some()),
                ("parity", self.parity.is_some()),
                ("stop_bits", self.stop_bits.is_some()),
                ("inter_frame_delay_ms", self.inter_frame_delay_ms.is_some()),
            ]
            .iter()
            .filter(|k| k.1)
            {
                p.push(
                    format!("{at}.{}", key.0),
                    "is a serial setting; it needs transport = \"rtu\"",
                );
            }
        }
        if self.timeout_ms == 0 {
            p.push(format!("{at}.timeout_ms"), "must be > 0");
        }
        if self.unit_id.is_some() && !self.unit_ids.is_empty() {
            p.push(
                format!("{at}.unit_ids"),
                "set either unit_id or unit_ids, not both",
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (i, u) in self.units().iter().enumerate() {
            if *u == 0 || *u > 247 {
                p.push(
                    format!("{at}.unit_ids[{i}]"),
                    format!("unit id {u} is not 1..=247 (0 is broadcast)"),
                );
            }
            if !seen.insert(*u) {
                p.push(format!("{at}.unit_ids[{i}]"), format!("unit {u} twice"));
            }
        }
        if let Some(prefix) = &self.channel_prefix {
            if Channel::new(format!("{prefix}.x")).is_err() {
                p.push(
                    format!("{at}.channel_prefix"),
                    format!("{prefix:?} is not a valid channel name ([a-z0-9_.])"),
                );
            }
        }
        match self.driver() {
            Some(Err(e)) => p.push(format!("{at}.driver"), e),
            Some(Ok(_)) => {}
            None if self.registers.is_empty() => p.push(
                format!("{at}.registers"),
                "at least one register is required (or a driver)",
            ),
            None => {}
        }
        for (j, r) in self.registers.iter().enumerate() {
            validate_register(r, &format!("{at}.registers[{j}]"), p);
        }
    }

    fn channels(&self) -> Vec<(String, String)> {
        let driver_regs = match self.driver() {
            Some(Ok(d)) => d.registers.len(),
            _ => 0,
        };
        let mut out = Vec::new();
        for u in self.units() {
            for (j, r) in self.register_maps().iter().enumerate() {
                let key = if j < driver_regs {
                    "driver".to_string()
                } else {
                    format!("registers[{}].channel", j - driver_regs)
                };
                out.push((key, self.channel_name(u, &r.channel)));
            }
        }
        out
    }

    fn bus(&self) -> Option<(String, String, String)> {
        match self.transport {
            Transport::Rtu => {
                let s = self.serial();
                Some((
                    self.bus_key(),
                    format!(
                        "{} baud, parity {:?}, {} stop bit(s)",
                        s.baud_rate, s.parity, s.stop_bits
                    ),
                    "baud_rate".into(),
                ))
            }
            _ => None,
        }
    }

    fn build(&self, env: &BuildEnv) -> Box<dyn Source> {
        Box::new(ModbusPoller::with_env(self.clone(), env))
    }
}

/// Checks one hand-written register map entry.
pub fn validate_register(r: &RegisterMap, rat: &str, p: &mut Problems) {
    if let Err(e) = Channel::new(r.channel.clone()) {
        p.push(format!("{rat}.channel"), format!("{:?} {e}", r.channel));
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

/// Decodes the raw registers of one value into an exact decimal (before scaling). `None`
/// if the words do not fit the type or an f32 is not finite.
pub fn decode_registers(words: &[u16], ty: RegisterType, order: WordOrder) -> Option<Decimal> {
    if words.len() != usize::from(ty.words()) {
        return None;
    }
    let mut w = words.to_vec();
    if order == WordOrder::Little {
        w.reverse();
    }
    let wide = w.iter().fold(0u64, |acc, x| (acc << 16) | u64::from(*x));
    match ty {
        RegisterType::U16 | RegisterType::U32 => Some(Decimal::from(wide)),
        RegisterType::I16 => Some(Decimal::from(wide as u16 as i16)),
        RegisterType::I32 => Some(Decimal::from(wide as u32 as i32)),
        RegisterType::U64 => Some(Decimal::from(wide)),
        RegisterType::F32 => f32_to_decimal(f32::from_bits(wide as u32)),
    }
}

/// An f32 through its shortest decimal text; at most 9 decimal places.
pub fn f32_to_decimal(f: f32) -> Option<Decimal> {
    if !f.is_finite() {
        return None;
    }
    let text = format!("{f}");
    match decimal::parse_exact(&text) {
        Ok(d) => Some(d),
        Err(decimal::DecimalError::Scale(_)) => {
            use std::str::FromStr;
            Decimal::from_str(&text)
                .ok()
                .map(|d| d.round_dp(9).normalize())
        }
        Err(_) => None,
    }
}

/// Multiplies by the scale, keeping at most 9 decimal places.
pub fn apply_scale(raw: Decimal, scale: Decimal) -> Option<Decimal> {
    raw.checked_mul(scale)
        .map(|v| if v.scale() > 9 { v.round_dp(9) } else { v }.normalize())
}

struct Entry {
    map: RegisterMap,
    channel: Channel,
    scale: Decimal,
}

/// The link of one bus: its connection (if open), when the last frame ended, and the bytes
/// received so far (to tell a timeout from a garbled answer).
#[derive(Default)]
pub struct Link {
    ctx: Option<Context>,
    last_frame: Option<Instant>,
    received: Arc<AtomicU64>,
}

/// Polls the register map of one or more units.
pub struct ModbusPoller {
    cfg: ModbusSource,
    timeout: Duration,
    delay: Duration,
    units: Vec<(u8, Vec<Entry>)>,
    link: Arc<tokio::sync::Mutex<Link>>,
    nameplate: Vec<Option<MeterInfo>>,
}

impl ModbusPoller {
    /// A poller with a link of its own.
    pub fn new(cfg: ModbusSource) -> ModbusPoller {
        ModbusPoller::with_env(cfg, &BuildEnv::default())
    }

    /// A poller on the agent's shared buses.
    pub fn with_env(cfg: ModbusSource, env: &BuildEnv) -> ModbusPoller {
        // Validation already checked channel names and scales; entries that still fail are
        // skipped here rather than panicking.
        let maps = cfg.register_maps();
        let units: Vec<(u8, Vec<Entry>)> = cfg
            .units()
            .into_iter()
            .map(|u| {
                let entries = maps
                    .iter()
                    .filter_map(|map| {
                        let channel = Channel::new(cfg.channel_name(u, &map.channel)).ok()?;
                        let scale = decimal::parse_exact(&map.scale).ok()?;
                        Some(Entry {
                            map: map.clone(),
                            channel,
                            scale,
                        })
                    })
                    .collect();
                (u, entries)
            })
            .collect();
        ModbusPoller {
            timeout: Duration::from_millis(cfg.timeout_ms),
            delay: cfg.inter_frame_delay(),
            link: env.buses.get::<Link>(&cfg.bus_key()),
            nameplate: vec![None; units.len()],
            units,
            cfg,
        }
    }

    /// Reads every unit once.
    pub async fn poll(&mut self, ts: DateTime<Utc>, quality: Quality) -> PollResult {
        let link = self.link.clone();
        let mut link = link.lock().await;
        if link.ctx.is_none() {
            let received = link.received.clone();
            link.ctx = Some(self.open(received).await?);
        }
        let mut samples = Vec::new();
        let mut problems = Vec::new();
        for i in 0..self.units.len() {
            let unit = self.units[i].0;
            if self.nameplate[i].is_none() {
                self.nameplate[i] = Some(self.read_nameplate(&mut link, unit).await);
            }
            match self
                .poll_unit(&mut link, i, ts, quality, &mut samples, &mut problems)
                .await
            {
                Ok(()) => {}
                Err(e) => {
                    link.ctx = None;
                    problems.push(e);
                    // The next unit gets a fresh link (a TCP server that broke the
                    // connection, a serial line with garbage in it).
                    if i + 1 < self.units.len() {
                        let received = link.received.clone();
                        match self.open(received).await {
                            Ok(c) => link.ctx = Some(c),
                            Err(e) => {
                                problems.push(e);
                                break;
                            }
                        }
                    }
                }
            }
        }
        if samples.is_empty() {
            if let Some(first) = problems.first().cloned() {
                if problems.len() == 1 {
                    return Err(first);
                }
            }
        }
        Ok((samples, problems))
    }

    /// One unit's registers. Err: the link must be reopened.
    async fn poll_unit(
        &self,
        link: &mut Link,
        i: usize,
        ts: DateTime<Utc>,
        quality: Quality,
        samples: &mut Vec<Sample>,
        problems: &mut Vec<SourceError>,
    ) -> Result<(), SourceError> {
        let (unit, entries) = &self.units[i];
        for e in entries {
            let words = match self
                .request(
                    link,
                    *unit,
                    e.map.function,
                    e.map.address,
                    e.map.data_type.words(),
                )
                .await
            {
                Ok(w) => w,
                Err(Failure::Exception(msg)) => {
                    problems.push(SourceError::new(
                        Reason::Exception,
                        format!("{}: {msg}", e.channel),
                    ));
                    continue;
                }
                Err(Failure::Timeout) if self.cfg.transport != Transport::Tcp => {
                    // A silent unit: skip its other registers this poll, keep the link.
                    problems.push(SourceError::new(
                        Reason::Timeout,
                        format!(
                            "{}: unit {unit} did not answer within {:?}",
                            self.where_(),
                            self.timeout
                        ),
                    ));
                    return Ok(());
                }
                Err(f) => return Err(f.into_error(&self.where_(), *unit)),
            };
            match decode_registers(&words, e.map.data_type, e.map.word_order)
                .and_then(|raw| apply_scale(raw, e.scale))
            {
                Some(value) => samples.push(Sample {
                    ts,
                    channel: e.channel.clone(),
                    kind: e.map.kind,
                    unit: e.map.unit.clone(),
                    value,
                    quality,
                }),
                None => problems.push(SourceError::new(
                    Reason::Decode,
                    format!(
                        "{}: registers {words:?} are not a valid {:?}",
                        e.channel, e.map.data_type
                    ),
                )),
            }
        }
        Ok(())
    }

    fn where_(&self) -> String {
        match self.cfg.transport {
            Transport::Rtu => format!("modbus rtu {}", self.cfg.port),
            Transport::Tcp => format!("modbus {}", self.cfg.address),
            Transport::RtuOverTcp => format!("modbus rtu-over-tcp {}", self.cfg.address),
        }
    }

    /// One request on the bus, after the inter-frame silence.
    async fn request(
        &self,
        link: &mut Link,
        unit: u8,
        function: RegisterFunction,
        address: u16,
        count: u16,
    ) -> Result<Vec<u16>, Failure> {
        if let Some(last) = link.last_frame {
            tokio::time::sleep_until(last + self.delay).await;
        }
        let before = link.received.load(Ordering::Relaxed);
        let ctx = link
            .ctx
            .as_mut()
            .ok_or(Failure::Io("not connected".into()))?;
        ctx.set_slave(Slave(unit));
        let r = read(ctx, function, address, count, self.timeout).await;
        link.last_frame = Some(Instant::now());
        match r {
            Ok(w) => Ok(w),
            Err(ReadError::Exception(m)) => Err(Failure::Exception(m)),
            Err(ReadError::Timeout) => {
                if link.received.load(Ordering::Relaxed) != before {
                    Err(Failure::Garbled)
                } else {
                    Err(Failure::Timeout)
                }
            }
            Err(ReadError::Transport(m)) => Err(Failure::Io(m)),
        }
    }

    /// Opens the link (a fresh transport counting into `received`).
    async fn open(&self, received: Arc<AtomicU64>) -> Result<Context, SourceError> {
        let slave = Slave(self.units.first().map_or(1, |u| u.0));
        let where_ = self.where_();
        match self.cfg.transport {
            Transport::Rtu => {
                let s = self.cfg.serial();
                let port = bus::open_serial(&self.cfg.port, s.baud_rate, s.parity, s.stop_bits)
                    .map_err(|e| {
                        SourceError::new(Reason::Connect, format!("{where_}: open: {e}"))
                    })?;
                Ok(tokio_modbus::client::rtu::attach_slave(
                    Counted::new(port, received),
                    slave,
                ))
            }
            Transport::Tcp | Transport::RtuOverTcp => {
                let addr: SocketAddr = self.cfg.address.parse().map_err(|_| {
                    SourceError::new(Reason::Connect, format!("{where_}: address is not ip:port"))
                })?;
                let stream =
                    tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(addr))
                        .await
                        .map_err(|_| {
                            SourceError::new(
                                Reason::Connect,
                                format!("{where_}: connect timed out"),
                            )
                        })?
                        .map_err(|e| {
                            SourceError::new(Reason::Connect, format!("{where_}: connect: {e}"))
                        })?;
                let _ = stream.set_nodelay(true);
                let io = Counted::new(stream, received);
                Ok(if self.cfg.transport == Transport::Tcp {
                    tokio_modbus::client::tcp::attach_slave(io, slave)
                } else {
                    tokio_modbus::client::rtu::attach_slave(io, slave)
                })
            }
        }
    }

    /// The unit's nameplate: the driver's manufacturer/model and the registers it names
    /// (best effort: a register that cannot be read is left out).
    async fn read_nameplate(&self, link: &mut Link, unit: u8) -> MeterInfo {
        let channels = self
            .units
            .iter()
            .find(|u| u.0 == unit)
            .map(|u| u.1.iter().map(|e| e.channel.to_string()).collect())
            .unwrap_or_default();
        let mut info = MeterInfo {
            protocol: self.cfg.transport.protocol().into(),
            address: Some(format!("unit {unit}")),
            channels,
            ..MeterInfo::default()
        };
        let Some(Ok(driver)) = self.cfg.driver() else {
            return info;
        };
        info.manufacturer = Some(driver.manufacturer.clone());
        info.model = Some(driver.model.clone());
        for (field, slot) in [
            (&driver.nameplate.serial, &mut info.serial),
            (&driver.nameplate.firmware, &mut info.firmware),
            (&driver.nameplate.model, &mut info.model),
        ] {
            let Some(f) = field else { continue };
            match self
                .request(link, unit, f.function, f.address, f.words())
                .await
            {
                Ok(words) => {
                    if let Some(text) = f.render(&words) {
                        *slot = Some(text);
                    }
                }
                Err(Failure::Exception(_)) => {}
                // A silent or garbled unit: the poll reports it; try again next time.
                Err(_) => break,
            }
        }
        info
    }
}

impl NameplateField {
    fn words(&self) -> u16 {
        self.count.unwrap_or(match self.data_type {
            drivers::TextType::U16 => 1,
            drivers::TextType::U32 => 2,
            drivers::TextType::Ascii => 8,
        })
    }
}

impl Source for ModbusPoller {
    fn poll(&mut self, ts: DateTime<Utc>, quality: Quality) -> BoxFuture<'_, PollResult> {
        Box::pin(ModbusPoller::poll(self, ts, quality))
    }
    fn meters(&self) -> Vec<MeterInfo> {
        self.nameplate.iter().flatten().cloned().collect()
    }
}

/// Why a request failed.
enum Failure {
    Exception(String),
    Timeout,
    /// Bytes arrived but no valid frame (CRC error, noise).
    Garbled,
    Io(String),
}

impl Failure {
    fn into_error(self, where_: &str, unit: u8) -> SourceError {
        match self {
            Failure::Exception(m) => SourceError::new(Reason::Exception, format!("{where_}: {m}")),
            Failure::Timeout => SourceError::new(
                Reason::Timeout,
                format!("{where_}: unit {unit}: request timed out"),
            ),
            Failure::Garbled => SourceError::new(
                Reason::Crc,
                format!("{where_}: unit {unit}: the answer failed its CRC or framing"),
            ),
            Failure::Io(m) => SourceError::new(Reason::Io, format!("{where_}: unit {unit}: {m}")),
        }
    }
}

/// Connects to a Modbus TCP server.
pub(crate) async fn connect(
    address: &str,
    unit_id: u8,
    timeout: Duration,
) -> Result<Context, SourceError> {
    let addr: SocketAddr = address.parse().map_err(|_| {
        SourceError::new(
            Reason::Connect,
            format!("modbus address {address:?} is not ip:port"),
        )
    })?;
    tokio::time::timeout(
        timeout,
        tokio_modbus::client::tcp::connect_slave(addr, Slave(unit_id)),
    )
    .await
    .map_err(|_| {
        SourceError::new(
            Reason::Connect,
            format!("modbus {address}: connect timed out"),
        )
    })?
    .map_err(|e| SourceError::new(Reason::Connect, format!("modbus {address}: connect: {e}")))
}

pub(crate) enum ReadError {
    /// The device answered with a Modbus exception (this register only).
    Exception(String),
    /// No (valid) answer in time.
    Timeout,
    /// The connection is broken; reconnect next poll.
    Transport(String),
}

impl ReadError {
    pub(crate) fn into_error(self, where_: &str) -> SourceError {
        match self {
            ReadError::Exception(m) => {
                SourceError::new(Reason::Exception, format!("{where_}: {m}"))
            }
            ReadError::Timeout => {
                SourceError::new(Reason::Timeout, format!("{where_}: request timed out"))
            }
            ReadError::Transport(m) => SourceError::new(Reason::Io, format!("{where_}: {m}")),
        }
    }
}

/// Reads `count` registers (split into requests of at most 125).
pub(crate) async fn read(
    ctx: &mut Context,
    function: RegisterFunction,
    address: u16,
    count: u16,
    timeout: Duration,
) -> Result<Vec<u16>, ReadError> {
    let mut out = Vec::with_capacity(usize::from(count));
    let mut done = 0u16;
    while done < count {
        let n = (count - done).min(125);
        let at = address.wrapping_add(done);
        let fut = async {
            match function {
                RegisterFunction::Holding => ctx.read_holding_registers(at, n).await,
                RegisterFunction::Input => ctx.read_input_registers(at, n).await,
            }
        };
        let words = tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| ReadError::Timeout)?
            .map_err(|e| ReadError::Transport(e.to_string()))?
            .map_err(|e| ReadError::Exception(format!("exception {e:?} reading {n} at {at}")))?;
        if words.len() != usize::from(n) {
            return Err(ReadError::Transport(format!(
                "asked for {n} registers at {at}, got {}",
                words.len()
            )));
        }
        out.extend(words);
        done += n;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn decodes_every_type_and_word_order() {
        use RegisterType::*;
        use WordOrder::*;
        assert_eq!(decode_registers(&[0xFFFF], U16, Big), Some(d("65535")));
        assert_eq!(decode_registers(&[0xFFFF], I16, Big), Some(d("-1")));
        assert_eq!(
            decode_registers(&[0x0001, 0x0002], U32, Big),
            Some(d("65538"))
        );
        assert_eq!(
            decode_registers(&[0x0002, 0x0001], U32, Little),
            Some(d("65538"))
        );
        assert_eq!(decode_registers(&[0xFFFF, 0xFFFE], I32, Big), Some(d("-2")));
        assert_eq!(
            decode_registers(&[0, 0, 0x0001, 0], U64, Big),
            Some(d("65536"))
        );
        assert_eq!(
            decode_registers(&[0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF], U64, Big),
            Some(d("18446744073709551615"))
        );
        // 230.5f32 = 0x43668000
        assert_eq!(
            decode_registers(&[0x4366, 0x8000], F32, Big),
            Some(d("230.5"))
        );
        assert_eq!(
            decode_registers(&[0x8000, 0x4366], F32, Little),
            Some(d("230.5"))
        );
        // 0.1f32 stays 0.1 (shortest text), not 0.100000001490116...
        assert_eq!(f32_to_decimal(0.1), Some(d("0.1")));
        assert_eq!(f32_to_decimal(f32::NAN), None);
        assert_eq!(decode_registers(&[1, 2], U16, Big), None);
        assert_eq!(apply_scale(d("12345"), d("0.1")), Some(d("1234.5")));
    }

    #[test]
    fn serial_defaults_come_from_the_driver_then_the_modbus_spec() {
        let plain = ModbusSource {
            transport: Transport::Rtu,
            ..ModbusSource::default()
        };
        assert_eq!(
            plain.serial(),
            Serial {
                baud_rate: 19_200,
                parity: Parity::Even,
                stop_bits: 1
            }
        );
        // 3.5 characters of 11 bits at 19200 baud = 2.005 ms.
        assert_eq!(plain.inter_frame_delay().as_micros(), 2005);
        let sdm = ModbusSource {
            transport: Transport::Rtu,
            driver: Some("eastron_sdm630".into()),
            parity: Some(Parity::Odd),
            ..ModbusSource::default()
        };
        assert_eq!(
            sdm.serial(),
            Serial {
                baud_rate: 9600,
                parity: Parity::Odd,
                stop_bits: 1
            }
        );
        let fast = ModbusSource {
            transport: Transport::Rtu,
            baud_rate: Some(115_200),
            ..ModbusSource::default()
        };
        assert_eq!(fast.inter_frame_delay(), Duration::from_micros(1750));
    }

    #[test]
    fn several_units_get_their_own_channels() {
        let s = ModbusSource {
            unit_ids: vec![3, 4],
            channel_prefix: Some("bus1".into()),
            registers: vec![RegisterMap {
                channel: "power_w".into(),
                address: 0,
                function: RegisterFunction::Holding,
                data_type: RegisterType::I16,
                count: None,
                word_order: WordOrder::Big,
                scale: "1".into(),
                kind: Kind::Gauge,
                unit: "W".into(),
            }],
            ..ModbusSource::default()
        };
        let names: Vec<String> = s.channels().into_iter().map(|c| c.1).collect();
        assert_eq!(names, vec!["bus1.u3.power_w", "bus1.u4.power_w"]);
    }

    proptest! {
        #[test]
        fn u32_round_trips(v in any::<u32>(), little in any::<bool>()) {
            let (hi, lo) = ((v >> 16) as u16, v as u16);
            let (words, order) = if little { ([lo, hi], WordOrder::Little) } else { ([hi, lo], WordOrder::Big) };
            prop_assert_eq!(decode_registers(&words, RegisterType::U32, order), Some(Decimal::from(v)));
            prop_assert_eq!(decode_registers(&words, RegisterType::I32, order), Some(Decimal::from(v as i32)));
        }

        #[test]
        fn f32_never_panics(bits in any::<u32>()) {
            let _ = decode_registers(&[(bits >> 16) as u16, bits as u16], RegisterType::F32, WordOrder::Big);
        }
    }
}
