//! DLMS/COSEM client (IEC 62056-5-3 / -6-2) over the TCP wrapper (IEC 62056-47): the
//! energy registers of a utility meter and its load profile, for backfill after an outage.
//!
//! Each poll connects, opens an association (AARQ with the logical-name application
//! context, no ciphering, lowest security: the public client, address 16 by default),
//! reads, and releases it:
//! - each configured register (class 3, default `1.0.1.8.0.255` -> `energy_import_wh` and
//!   `1.0.2.8.0.255` -> `energy_export_wh`): attribute 3 (scaler and unit, once) and
//!   attribute 2 (value); value × 10^scaler, exact. Wh/varh/VAh registers are counters,
//!   the rest gauges; kWh-scaled values stay exact (a scaler of 3 multiplies by 1000).
//! - the load profile, if configured (class 7, e.g. `1.0.99.1.0.255`): its capture
//!   objects (attribute 3) once, then attribute 2 (buffer) with selective access by range
//!   (selector 1, the clock `0.0.1.0.0.255` as restricting object) from the last row
//!   already read (first time: `backfill_hours` back) to now. Each row becomes readings
//!   stamped with the row's clock column (converted to UTC with the row's deviation; a row
//!   without one is taken as UTC and flagged `clock_suspect`), on the channel of the
//!   captured register.
//!
//! The COSEM logical device name (0.0.42.0.0.255: manufacturer id and serial number) is
//! the meter's metadata. Long answers arrive as GET.response-with-datablock and are read block by block. The
//! A-XDR decoder is bounded (depth, element count, lengths) and never panics on a
//! truncated or hostile answer.

use std::net::SocketAddr;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use futures::future::BoxFuture;
use gridmeter_core::config::Problems;
use gridmeter_core::{Channel, Kind, Quality};
use rust_decimal::Decimal;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::meta::MeterInfo;
use super::{BuildEnv, PollResult, Reason, Sample, Source, SourceError, SourceSpec};

/// Largest wrapper PDU accepted.
const MAX_PDU: usize = 65_535;
/// Largest reassembled block-transfer answer.
const MAX_ANSWER: usize = 4 * 1024 * 1024;

/// A `type = "dlms"` source: one meter over the TCP wrapper.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlmsSource {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    /// `ip:port` of the meter (or its gateway); 4059 is the registered DLMS port.
    pub address: String,
    /// Client SAP: 16 = public client (lowest security).
    #[serde(default = "default_client")]
    pub client_address: u16,
    /// Server SAP: the logical device, 1 = management logical device.
    #[serde(default = "default_server")]
    pub server_address: u16,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Largest APDU the agent accepts (proposed in the AARQ); longer answers come in
    /// blocks.
    #[serde(default = "default_max_pdu")]
    pub max_pdu_size: u16,
    /// Registers read at every poll.
    #[serde(default = "default_registers")]
    pub registers: Vec<DlmsRegister>,
    /// The load profile read for backfill.
    #[serde(default)]
    pub load_profile: Option<LoadProfile>,
    #[serde(default)]
    pub channel_prefix: Option<String>,
}

/// A register (class 3) read as one channel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlmsRegister {
    /// `A.B.C.D.E.F`, e.g. `1.0.1.8.0.255`.
    pub obis: String,
    pub channel: String,
}

/// A profile generic (class 7) read by range.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadProfile {
    pub obis: String,
    /// How far back the first read goes.
    #[serde(default = "default_backfill")]
    pub backfill_hours: u32,
}

fn default_interval() -> u64 {
    60_000
}
fn default_client() -> u16 {
    16
}
fn default_server() -> u16 {
    1
}
fn default_timeout() -> u64 {
    5000
}
fn default_max_pdu() -> u16 {
    1024
}
fn default_backfill() -> u32 {
    24
}
fn default_registers() -> Vec<DlmsRegister> {
    vec![
        DlmsRegister {
            obis: "1.0.1.8.0.255".into(),
            channel: "energy_import_wh".into(),
        },
        DlmsRegister {
            obis: "1.0.2.8.0.255".into(),
            channel: "energy_export_wh".into(),
        },
    ]
}

/// `A.B.C.D.E.F` (also `A-B:C.D.E*F`) as 6 bytes.
pub fn parse_obis(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split(['.', '-', ':', '*']).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut out = [0u8; 6];
    for (o, p) in out.iter_mut().zip(parts) {
        *o = p.parse().ok()?;
    }
    Some(out)
}

fn obis_text(b: &[u8]) -> String {
    b.iter().map(u8::to_string).collect::<Vec<_>>().join(".")
}

impl SourceSpec for DlmsSource {
    spec_common!("dlms");

    fn validate(&self, at: &str, p: &mut Problems) {
        if self.address.parse::<SocketAddr>().is_err() {
            p.push(format!("{at}.address"), "must be ip:port");
        }
        if self.timeout_ms == 0 {
            p.push(format!("{at}.timeout_ms"), "must be > 0");
        }
        if self.max_pdu_size < 64 {
            p.push(format!("{at}.max_pdu_size"), "must be at least 64");
        }
        if self.registers.is_empty() && self.load_profile.is_none() {
            p.push(
                format!("{at}.registers"),
                "at least one register or a load_profile is required",
            );
        }
        for (i, r) in self.registers.iter().enumerate() {
            if parse_obis(&r.obis).is_none() {
                p.push(
                    format!("{at}.registers[{i}].obis"),
                    "must be an OBIS code A.B.C.D.E.F",
                );
            }
            if Channel::new(super::prefixed(self.channel_prefix.as_deref(), &r.channel)).is_err() {
                p.push(
                    format!("{at}.registers[{i}].channel"),
                    format!("{:?} is not a valid channel name", r.channel),
                );
            }
        }
        if let Some(lp) = &self.load_profile {
            if parse_obis(&lp.obis).is_none() {
                p.push(
                    format!("{at}.load_profile.obis"),
                    "must be an OBIS code A.B.C.D.E.F",
                );
            }
            if lp.backfill_hours == 0 || lp.backfill_hours > 24 * 90 {
                p.push(
                    format!("{at}.load_profile.backfill_hours"),
                    "must be 1..=2160",
                );
            }
        }
    }

    fn channels(&self) -> Vec<(String, String)> {
        self.registers
            .iter()
            .enumerate()
            .map(|(i, r)| {
                (
                    format!("registers[{i}].channel"),
                    super::prefixed(self.channel_prefix.as_deref(), &r.channel),
                )
            })
            .collect()
    }

    fn build(&self, _env: &BuildEnv) -> Box<dyn Source> {
        Box::new(DlmsPoller::new(self.clone()))
    }
}

/// An A-XDR value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Enum(u8),
    Float(f64),
    Octets(Vec<u8>),
    Text(String),
    Array(Vec<Value>),
    Struct(Vec<Value>),
    DateTime([u8; 12]),
}

/// A decoding failure (no input echoed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
    elements: usize,
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8, Malformed> {
        let v = *self.b.get(self.at).ok_or(Malformed("truncated"))?;
        self.at += 1;
        Ok(v)
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        let end = self.at.checked_add(n).ok_or(Malformed("length"))?;
        let s = self.b.get(self.at..end).ok_or(Malformed("truncated"))?;
        self.at = end;
        Ok(s)
    }
    /// A-XDR length: one byte, or 0x8N followed by N bytes.
    fn len(&mut self) -> Result<usize, Malformed> {
        let first = self.u8()?;
        if first < 0x80 {
            return Ok(usize::from(first));
        }
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 {
            return Err(Malformed("length"));
        }
        let mut v = 0usize;
        for _ in 0..n {
            v = (v << 8) | usize::from(self.u8()?);
        }
        if v > MAX_ANSWER {
            return Err(Malformed("length"));
        }
        Ok(v)
    }
    fn int(&mut self, n: usize, signed: bool) -> Result<i128, Malformed> {
        let s = self.take(n)?;
        let mut v: i128 = 0;
        for b in s {
            v = (v << 8) | i128::from(*b);
        }
        if signed && n < 16 && s.first().is_some_and(|b| b & 0x80 != 0) {
            v -= 1i128 << (8 * n);
        }
        Ok(v)
    }
    fn value(&mut self, depth: usize) -> Result<Value, Malformed> {
        if depth > 8 {
            return Err(Malformed("nested too deep"));
        }
        self.elements += 1;
        if self.elements > 1_000_000 {
            return Err(Malformed("too many elements"));
        }
        let tag = self.u8()?;
        Ok(match tag {
            0x00 => Value::Null,
            0x01 | 0x02 => {
                let n = self.len()?;
                if n > self.b.len() {
                    return Err(Malformed("element count"));
                }
                let mut items = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    items.push(self.value(depth + 1)?);
                }
                if tag == 0x01 {
                    Value::Array(items)
                } else {
                    Value::Struct(items)
                }
            }
            0x03 => Value::Bool(self.u8()? != 0),
            0x05 => Value::Int(self.int(4, true)?),
            0x06 => Value::Int(self.int(4, false)?),
            0x09 => {
                let n = self.len()?;
                Value::Octets(self.take(n)?.to_vec())
            }
            0x0A | 0x0C => {
                let n = self.len()?;
                Value::Text(String::from_utf8_lossy(self.take(n)?).into_owned())
            }
            0x0F => Value::Int(self.int(1, true)?),
            0x10 => Value::Int(self.int(2, true)?),
            0x11 => Value::Int(self.int(1, false)?),
            0x12 => Value::Int(self.int(2, false)?),
            0x14 => Value::Int(self.int(8, true)?),
            0x15 => Value::Int(self.int(8, false)?),
            0x16 => Value::Enum(self.u8()?),
            0x17 => {
                let s = self.take(4)?;
                Value::Float(f64::from(f32::from_be_bytes([s[0], s[1], s[2], s[3]])))
            }
            0x18 => {
                let s = self.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(s);
                Value::Float(f64::from_be_bytes(a))
            }
            0x19 => {
                let mut a = [0u8; 12];
                a.copy_from_slice(self.take(12)?);
                Value::DateTime(a)
            }
            0x1A => Value::Octets(self.take(5)?.to_vec()),
            0x1B => Value::Octets(self.take(4)?.to_vec()),
            _ => return Err(Malformed("unknown data type")),
        })
    }
}

/// Decodes one A-XDR value.
pub fn decode(b: &[u8]) -> Result<Value, Malformed> {
    Reader {
        b,
        at: 0,
        elements: 0,
    }
    .value(0)
}

/// A DLMS date-time (12 bytes) in UTC; the flag says the deviation was not given.
pub fn date_time(b: &[u8]) -> Option<(DateTime<Utc>, bool)> {
    if b.len() != 12 {
        return None;
    }
    let year = i32::from(u16::from_be_bytes([b[0], b[1]]));
    let (month, day, hour, min, sec) = (b[2], b[3], b[5], b[6], b[7]);
    let hundredths = if b[8] == 0xFF { 0 } else { u32::from(b[8]) };
    let local = NaiveDate::from_ymd_opt(year, u32::from(month), u32::from(day))?
        .and_hms_milli_opt(
            u32::from(hour),
            u32::from(min),
            u32::from(sec),
            hundredths * 10,
        )?;
    let deviation = i16::from_be_bytes([b[9], b[10]]);
    if deviation == i16::MIN {
        return Some((Utc.from_utc_datetime(&local), true));
    }
    // Deviation: minutes local time is ahead of UTC, negated (Blue Book: local = UTC -
    // deviation), so UTC = local + deviation.
    let utc = local + chrono::Duration::minutes(i64::from(deviation));
    Some((Utc.from_utc_datetime(&utc), false))
}

/// The 12-byte DLMS date-time of `t` (UTC, deviation 0).
pub fn encode_date_time(t: DateTime<Utc>) -> [u8; 12] {
    use chrono::{Datelike, Timelike};
    let y = (t.year() as u16).to_be_bytes();
    [
        y[0],
        y[1],
        t.month() as u8,
        t.day() as u8,
        t.weekday().number_from_monday() as u8,
        t.hour() as u8,
        t.minute() as u8,
        t.second() as u8,
        0,
        0,
        0,
        0,
    ]
}

/// The unit of a DLMS unit enum and whether it accumulates.
fn unit(code: u8) -> (&'static str, bool) {
    match code {
        27 => ("W", false),
        28 => ("VA", false),
        29 => ("var", false),
        30 => ("Wh", true),
        31 => ("VAh", true),
        32 => ("varh", true),
        33 => ("A", false),
        35 => ("V", false),
        44 => ("Hz", false),
        13 => ("m3", true),
        9 => ("Cel", false),
        _ => ("1", false),
    }
}

/// `raw × 10^scaler` exactly (at most 9 decimal places).
fn scaled(raw: &Value, scaler: i8) -> Option<Decimal> {
    let v = match raw {
        Value::Int(i) => Decimal::from_i128_with_scale(*i, 0),
        Value::Float(f) => super::modbus::f32_to_decimal(*f as f32)?,
        _ => return None,
    };
    let factor = if scaler >= 0 {
        Decimal::from(10i64.checked_pow(u32::from(scaler.unsigned_abs()))?)
    } else {
        Decimal::new(1, u32::from(scaler.unsigned_abs()))
    };
    super::modbus::apply_scale(v, factor)
}

/// An association over one TCP connection.
struct Session {
    stream: TcpStream,
    client: u16,
    server: u16,
    timeout: Duration,
    invoke: u8,
    max_pdu: u16,
}

impl Session {
    async fn send(&mut self, apdu: &[u8]) -> Result<(), SourceError> {
        let mut f = Vec::with_capacity(apdu.len() + 8);
        f.extend([0x00, 0x01]);
        f.extend(self.client.to_be_bytes());
        f.extend(self.server.to_be_bytes());
        f.extend((apdu.len() as u16).to_be_bytes());
        f.extend(apdu);
        self.stream
            .write_all(&f)
            .await
            .map_err(|e| SourceError::new(Reason::Io, format!("send: {e}")))
    }

    async fn recv(&mut self) -> Result<Vec<u8>, SourceError> {
        let read = async {
            let mut head = [0u8; 8];
            self.stream.read_exact(&mut head).await?;
            let len = usize::from(u16::from_be_bytes([head[6], head[7]]));
            if head[0..2] != [0, 1] || len > MAX_PDU {
                return Err(std::io::Error::other("not a DLMS wrapper frame"));
            }
            let mut apdu = vec![0u8; len];
            self.stream.read_exact(&mut apdu).await?;
            Ok(apdu)
        };
        match tokio::time::timeout(self.timeout, read).await {
            Err(_) => Err(SourceError::new(
                Reason::Timeout,
                "the meter did not answer",
            )),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Other => {
                Err(SourceError::new(Reason::Crc, e.to_string()))
            }
            Ok(Err(e)) => Err(SourceError::new(Reason::Io, e.to_string())),
            Ok(Ok(a)) => Ok(a),
        }
    }

    /// AARQ: logical name referencing, no ciphering, lowest security.
    async fn associate(&mut self) -> Result<(), SourceError> {
        // xDLMS InitiateRequest: no dedicated key, response allowed, no QoS, version 6,
        // conformance (get, selective access, block transfer with get, multiple
        // references), the max receive PDU size.
        let pdu = self.max_pdu.to_be_bytes();
        let initiate = [
            0x01, 0x00, 0x00, 0x00, 0x06, 0x5F, 0x1F, 0x04, 0x00, 0x00, 0x1E, 0x1D, pdu[0], pdu[1],
        ];
        let mut user = vec![0xBE, (initiate.len() + 2) as u8, 0x04, initiate.len() as u8];
        user.extend(initiate);
        let context = [
            0xA1, 0x09, 0x06, 0x07, 0x60, 0x85, 0x74, 0x05, 0x08, 0x01, 0x01,
        ];
        let mut aarq = vec![0x60, (context.len() + user.len()) as u8];
        aarq.extend(context);
        aarq.extend(user);
        self.send(&aarq).await?;
        let aare = self.recv().await?;
        if aare.first() != Some(&0x61) {
            return Err(SourceError::new(
                Reason::Decode,
                "the answer to AARQ is not an AARE",
            ));
        }
        // Walk the AARE's elements to the association result (A2 03 02 01 RR).
        let mut i = 2usize;
        while i + 1 < aare.len() {
            let (tag, len) = (aare[i], usize::from(aare[i + 1]));
            if tag == 0xA2 {
                return match aare.get(i + 4) {
                    Some(0) => Ok(()),
                    Some(r) => Err(SourceError::new(
                        Reason::Exception,
                        format!("the meter refused the association (result {r})"),
                    )),
                    None => Err(SourceError::new(Reason::Decode, "a truncated AARE")),
                };
            }
            i += 2 + len;
        }
        Err(SourceError::new(Reason::Decode, "an AARE without a result"))
    }

    /// GET.request-normal of (class, instance, attribute), optional selective access;
    /// reads a block-transfer answer to the end. Returns the A-XDR data.
    async fn get(
        &mut self,
        class: u16,
        obis: [u8; 6],
        attribute: i8,
        access: Option<&[u8]>,
    ) -> Result<Vec<u8>, SourceError> {
        self.invoke = (self.invoke + 1) & 0x0F;
        let invoke = 0xC0 | self.invoke;
        let mut req = vec![0xC0, 0x01, invoke];
        req.extend(class.to_be_bytes());
        req.extend(obis);
        req.push(attribute as u8);
        match access {
            Some(a) => {
                req.push(0x01);
                req.extend(a);
            }
            None => req.push(0x00),
        }
        self.send(&req).await?;
        let mut data = Vec::new();
        loop {
            let rsp = self.recv().await?;
            let bad = || SourceError::new(Reason::Decode, "a malformed GET.response");
            match rsp.get(0..2) {
                Some([0xC4, 0x01]) => {
                    return match rsp.get(3) {
                        Some(0) => Ok(rsp[4..].to_vec()),
                        Some(1) => Err(SourceError::new(
                            Reason::Exception,
                            format!(
                                "{} attribute {attribute}: data access result {}",
                                obis_text(&obis),
                                rsp.get(4).copied().unwrap_or(0)
                            ),
                        )),
                        _ => Err(bad()),
                    };
                }
                Some([0xC4, 0x02]) => {
                    // invoke, last-block, block-number (u32), result 0 + raw octet string.
                    let last = *rsp.get(3).ok_or_else(bad)? != 0;
                    let block = rsp.get(4..8).ok_or_else(bad)?;
                    let block = u32::from_be_bytes([block[0], block[1], block[2], block[3]]);
                    if rsp.get(8) != Some(&0) {
                        return Err(SourceError::new(
                            Reason::Exception,
                            format!("{}: block {block} refused", obis_text(&obis)),
                        ));
                    }
                    let mut r = Reader {
                        b: &rsp[9..],
                        at: 0,
                        elements: 0,
                    };
                    let n = r.len().map_err(|_| bad())?;
                    data.extend_from_slice(r.take(n).map_err(|_| bad())?);
                    if data.len() > MAX_ANSWER {
                        return Err(SourceError::new(Reason::Decode, "an answer over 4 MiB"));
                    }
                    if last {
                        return Ok(data);
                    }
                    let mut next = vec![0xC0, 0x02, invoke];
                    next.extend(block.to_be_bytes());
                    self.send(&next).await?;
                }
                _ => return Err(bad()),
            }
        }
    }

    async fn release(&mut self) {
        let _ = self.send(&[0x62, 0x00]).await;
        let _ = tokio::time::timeout(Duration::from_millis(200), self.recv()).await;
    }
}

/// A captured column of the load profile.
#[derive(Debug, Clone)]
enum Column {
    Clock,
    Register {
        channel: Channel,
        scaler: i8,
        unit: &'static str,
        counter: bool,
    },
    Other,
}

/// Reads one meter.
pub struct DlmsPoller {
    cfg: DlmsSource,
    /// (obis, channel, scaler, unit, counter) per register, once read.
    registers: Vec<Option<(i8, &'static str, bool)>>,
    columns: Option<Vec<Column>>,
    /// The newest profile row read so far.
    profile_until: Option<DateTime<Utc>>,
    meter: Option<MeterInfo>,
    /// The COSEM logical device name (0.0.42.0.0.255), once read.
    device_name: Option<String>,
}

impl DlmsPoller {
    pub fn new(cfg: DlmsSource) -> DlmsPoller {
        DlmsPoller {
            registers: vec![None; cfg.registers.len()],
            columns: None,
            profile_until: None,
            meter: None,
            device_name: None,
            cfg,
        }
    }

    fn channel(&self, name: &str) -> Option<Channel> {
        Channel::new(super::prefixed(self.cfg.channel_prefix.as_deref(), name)).ok()
    }

    /// One poll: associate, read the registers and the new profile rows, release.
    pub async fn poll(&mut self, ts: DateTime<Utc>, quality: Quality) -> PollResult {
        let where_ = format!("dlms {}", self.cfg.address);
        let ctx = |e: SourceError| SourceError::new(e.reason, format!("{where_}: {}", e.message));
        let timeout = Duration::from_millis(self.cfg.timeout_ms);
        let stream = tokio::time::timeout(timeout, TcpStream::connect(&self.cfg.address))
            .await
            .map_err(|_| SourceError::new(Reason::Connect, format!("{where_}: connect timed out")))?
            .map_err(|e| SourceError::new(Reason::Connect, format!("{where_}: connect: {e}")))?;
        let mut s = Session {
            stream,
            client: self.cfg.client_address,
            server: self.cfg.server_address,
            timeout,
            invoke: 0,
            max_pdu: self.cfg.max_pdu_size,
        };
        s.associate().await.map_err(ctx)?;
        if self.device_name.is_none() {
            // Best effort: a meter without the object simply has no nameplate here.
            if let Ok(raw) = s.get(1, [0, 0, 42, 0, 0, 255], 2, None).await {
                self.device_name = match decode(&raw) {
                    Ok(Value::Octets(b)) => Some(
                        b.iter()
                            .filter(|c| c.is_ascii_graphic())
                            .map(|c| char::from(*c))
                            .take(64)
                            .collect(),
                    ),
                    Ok(Value::Text(t)) => Some(t.chars().take(64).collect()),
                    _ => None,
                };
            }
        }
        let mut samples = Vec::new();
        let mut problems = Vec::new();
        for i in 0..self.cfg.registers.len() {
            match self.read_register(&mut s, i, ts, quality).await {
                Ok(Some(sample)) => samples.push(sample),
                Ok(None) => {}
                Err(e) if e.reason == Reason::Exception || e.reason == Reason::Decode => {
                    problems.push(ctx(e))
                }
                Err(e) => return Err(ctx(e)),
            }
        }
        if self.cfg.load_profile.is_some() {
            match self.read_profile(&mut s, ts).await {
                Ok(rows) => samples.extend(rows),
                Err(e) if e.reason == Reason::Exception || e.reason == Reason::Decode => {
                    problems.push(ctx(e))
                }
                Err(e) => return Err(ctx(e)),
            }
        }
        s.release().await;
        // The logical device name is the 3-letter manufacturer id and a serial number.
        let name = self.device_name.clone().unwrap_or_default();
        let (manufacturer, serial) = match (name.get(..3), name.get(3..)) {
            (Some(m), Some(s)) if !s.is_empty() => (Some(m.to_string()), Some(s.to_string())),
            _ => (None, None),
        };
        self.meter = Some(MeterInfo {
            protocol: "dlms".into(),
            address: Some(format!("logical device {}", self.cfg.server_address)),
            manufacturer,
            serial,
            channels: {
                let mut c: Vec<String> = samples.iter().map(|s| s.channel.to_string()).collect();
                c.sort();
                c.dedup();
                c
            },
            ..MeterInfo::default()
        });
        Ok((samples, problems))
    }

    async fn scaler_unit(
        s: &mut Session,
        obis: [u8; 6],
    ) -> Result<(i8, &'static str, bool), SourceError> {
        let raw = s.get(3, obis, 3, None).await?;
        match decode(&raw) {
            Ok(Value::Struct(v)) if v.len() == 2 => match (&v[0], &v[1]) {
                (Value::Int(sc), Value::Enum(u)) => {
                    let (unit, counter) = unit(*u);
                    Ok((*sc as i8, unit, counter))
                }
                _ => Err(SourceError::new(Reason::Decode, "a malformed scaler_unit")),
            },
            _ => Err(SourceError::new(Reason::Decode, "a malformed scaler_unit")),
        }
    }

    async fn read_register(
        &mut self,
        s: &mut Session,
        i: usize,
        ts: DateTime<Utc>,
        quality: Quality,
    ) -> Result<Option<Sample>, SourceError> {
        let r = self.cfg.registers[i].clone();
        let Some(obis) = parse_obis(&r.obis) else {
            return Ok(None);
        };
        let (scaler, unit, counter) = match self.registers[i] {
            Some(su) => su,
            None => {
                let su = Self::scaler_unit(s, obis).await?;
                self.registers[i] = Some(su);
                su
            }
        };
        let raw = s.get(3, obis, 2, None).await?;
        let value = decode(&raw)
            .ok()
            .and_then(|v| scaled(&v, scaler))
            .ok_or_else(|| SourceError::new(Reason::Decode, format!("{}: not a number", r.obis)))?;
        let Some(channel) = self.channel(&r.channel) else {
            return Ok(None);
        };
        Ok(Some(Sample {
            ts,
            channel,
            kind: if counter { Kind::Counter } else { Kind::Gauge },
            unit: unit.into(),
            value,
            quality,
        }))
    }

    async fn read_profile(
        &mut self,
        s: &mut Session,
        now: DateTime<Utc>,
    ) -> Result<Vec<Sample>, SourceError> {
        let Some(lp) = self.cfg.load_profile.clone() else {
            return Ok(Vec::new());
        };
        let Some(obis) = parse_obis(&lp.obis) else {
            return Ok(Vec::new());
        };
        if self.columns.is_none() {
            self.columns = Some(self.capture_objects(s, obis).await?);
        }
        let columns = self.columns.clone().unwrap_or_default();
        let from = match self.profile_until {
            Some(t) => t + chrono::Duration::seconds(1),
            None => now - chrono::Duration::hours(i64::from(lp.backfill_hours)),
        };
        // Selective access by range (selector 1): the clock as restricting object.
        let mut access = vec![0x01, 0x02, 0x04];
        access.extend([0x02, 0x04, 0x12, 0x00, 0x08, 0x09, 0x06, 0, 0, 1, 0, 0, 255]);
        access.extend([0x0F, 0x02, 0x12, 0x00, 0x00]);
        access.extend([0x09, 0x0C]);
        access.extend(encode_date_time(from));
        access.extend([0x09, 0x0C]);
        access.extend(encode_date_time(now));
        access.extend([0x01, 0x00]);
        let raw = s.get(7, obis, 2, Some(&access)).await?;
        let Value::Array(rows) = decode(&raw)
            .map_err(|m| SourceError::new(Reason::Decode, format!("profile buffer: {}", m.0)))?
        else {
            return Err(SourceError::new(
                Reason::Decode,
                "the profile buffer is not an array",
            ));
        };
        let mut out = Vec::new();
        for row in rows {
            let Value::Struct(cells) = row else { continue };
            let mut stamp = None;
            for (c, v) in columns.iter().zip(&cells) {
                match (c, v) {
                    (Column::Clock, Value::Octets(b)) => stamp = date_time(b),
                    (Column::Clock, Value::DateTime(b)) => stamp = date_time(b),
                    _ => {}
                }
            }
            let Some((t, no_deviation)) = stamp else {
                continue;
            };
            let quality = if no_deviation {
                Quality::CLOCK_SUSPECT
            } else {
                Quality::GOOD
            };
            for (c, v) in columns.iter().zip(&cells) {
                if let Column::Register {
                    channel,
                    scaler,
                    unit,
                    counter,
                } = c
                {
                    if let Some(value) = scaled(v, *scaler) {
                        out.push(Sample {
                            ts: t,
                            channel: channel.clone(),
                            kind: if *counter { Kind::Counter } else { Kind::Gauge },
                            unit: (*unit).into(),
                            value,
                            quality,
                        });
                    }
                }
            }
            if self.profile_until.is_none_or(|u| t > u) {
                self.profile_until = Some(t);
            }
        }
        Ok(out)
    }

    /// The profile's columns: the clock, registers (with their scaler and unit), others.
    async fn capture_objects(
        &self,
        s: &mut Session,
        obis: [u8; 6],
    ) -> Result<Vec<Column>, SourceError> {
        let raw = s.get(7, obis, 3, None).await?;
        let Ok(Value::Array(objects)) = decode(&raw) else {
            return Err(SourceError::new(
                Reason::Decode,
                "malformed capture objects",
            ));
        };
        let mut columns = Vec::new();
        for o in objects {
            let Value::Struct(f) = o else {
                columns.push(Column::Other);
                continue;
            };
            let (class, ln, attr) = match (f.first(), f.get(1), f.get(2)) {
                (Some(Value::Int(c)), Some(Value::Octets(ln)), Some(Value::Int(a)))
                    if ln.len() == 6 =>
                {
                    (*c, ln.clone(), *a)
                }
                _ => {
                    columns.push(Column::Other);
                    continue;
                }
            };
            let mut ln6 = [0u8; 6];
            ln6.copy_from_slice(&ln);
            columns.push(match (class, attr) {
                (8, 2) => Column::Clock,
                (3 | 4, 2) => {
                    let text = obis_text(&ln6);
                    let name = self
                        .cfg
                        .registers
                        .iter()
                        .find(|r| parse_obis(&r.obis) == Some(ln6))
                        .map(|r| r.channel.clone())
                        .unwrap_or_else(|| format!("obis_{}", text.replace('.', "_")));
                    let (scaler, unit, counter) = Self::scaler_unit(s, ln6).await?;
                    match self.channel(&name) {
                        Some(channel) => Column::Register {
                            channel,
                            scaler,
                            unit,
                            counter,
                        },
                        None => Column::Other,
                    }
                }
                _ => Column::Other,
            });
        }
        Ok(columns)
    }
}

impl Source for DlmsPoller {
    fn poll(&mut self, ts: DateTime<Utc>, quality: Quality) -> BoxFuture<'_, PollResult> {
        Box::pin(DlmsPoller::poll(self, ts, quality))
    }
    fn meters(&self) -> Vec<MeterInfo> {
        self.meter.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn axdr_values_and_date_times() {
        assert_eq!(
            decode(&[0x06, 0, 0xBC, 0x61, 0x4E]),
            Ok(Value::Int(12_345_678))
        );
        assert_eq!(decode(&[0x0F, 0xFF]), Ok(Value::Int(-1)));
        assert_eq!(
            decode(&[0x02, 0x02, 0x0F, 0xFD, 0x16, 0x1E]),
            Ok(Value::Struct(vec![Value::Int(-3), Value::Enum(30)]))
        );
        assert_eq!(decode(&[0x01, 0x05, 0x00]), Err(Malformed("element count")));
        assert_eq!(
            decode(&[0x09, 0x83, 0xFF, 0xFF, 0xFF]),
            Err(Malformed("length"))
        );
        let t = DateTime::parse_from_rfc3339("2026-12-01T10:15:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(date_time(&encode_date_time(t)), Some((t, false)));
        // 11:15 local with deviation -60 (CET) is 10:15 UTC.
        let mut cet = encode_date_time(t);
        cet[5] = 11;
        cet[9..11].copy_from_slice(&(-60i16).to_be_bytes());
        assert_eq!(date_time(&cet), Some((t, false)));
        assert_eq!(
            scaled(&Value::Int(12_345_678), -1).unwrap().to_string(),
            "1234567.8"
        );
        assert_eq!(scaled(&Value::Int(5), 3).unwrap().to_string(), "5000");
        assert_eq!(parse_obis("1-0:1.8.0*255"), Some([1, 0, 1, 8, 0, 255]));
    }

    proptest! {
        #[test]
        fn hostile_answers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
            let _ = date_time(&bytes);
        }
    }
}
