//! IEC 62056-21 (formerly IEC 61107) optical readout, mode C: the data readout of
//! electricity meters through the optical head (or a current loop).
//!
//! The agent sends the request `/?!` (or `/?{address}!`) at 300 baud, 7 data bits, even
//! parity; the meter answers with its identification `/XXXZ...` (manufacturer XXX, baud
//! character Z); the agent acknowledges with `ACK 0 Z 0` (protocol mode C, data readout)
//! and both switch to the baud rate Z names; the meter sends its readout list
//! `STX {OBIS}({value}*{unit}) ... ! CR LF ETX BCC`, whose block check character (XOR of
//! everything after STX up to ETX) is verified. Received bytes are masked to 7 bits, so a
//! line read as 8N1 works too.
//!
//! Channels: `1.8.0` -> `energy_import_wh`, `2.8.0` -> `energy_export_wh`, `1.8.T` /
//! `2.8.T` (tariffs) -> `energy_import_t{T}_wh` / `energy_export_t{T}_wh` (counters, kWh
//! read as Wh, exact), `1.7.0`/`16.7.0` -> `power_w`, `2.7.0` -> `power_export_w`,
//! `32.7.0`/`52.7.0`/`72.7.0` -> `voltage_l{1,2,3}_v`, `31.7.0`/`51.7.0`/`71.7.0` ->
//! `current_l{1,2,3}_a`, `14.7.0` -> `frequency_hz` (gauges); any other OBIS code with a
//! numeric value and a unit -> `obis_{code}` (`.`/`:`/`*` as `_`). The identification line
//! and `0.0.0` / `C.1.0` (serial number) are the meter's metadata.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use gridmeter_core::config::Problems;
use gridmeter_core::{decimal, Channel, Kind, Quality};
use rust_decimal::Decimal;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_serial::SerialPort;

use super::bus::{self, Parity};
use super::meta::MeterInfo;
use super::{BuildEnv, PollResult, Reason, Sample, Source, SourceError, SourceSpec};

/// Longest readout accepted.
const MAX_READOUT: usize = 64 * 1024;

/// A `type = "iec62056"` source: one meter on an optical head.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Iec62056Source {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    pub port: String,
    /// The meter's device address (for a bus of meters), else any meter answers.
    #[serde(default)]
    pub device_address: Option<String>,
    /// Settings of the first exchange: 300 baud, 7E1 by the standard.
    #[serde(default = "default_baud")]
    pub baud_rate: u32,
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    #[serde(default = "default_parity")]
    pub parity: Parity,
    /// Switch to the baud rate the meter offers (mode C); off reads at `baud_rate`.
    #[serde(default = "yes")]
    pub baud_switch: bool,
    /// Time for the identification, and for the whole readout after it.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    #[serde(default)]
    pub channel_prefix: Option<String>,
}

fn default_interval() -> u64 {
    60_000
}
fn default_baud() -> u32 {
    300
}
fn default_data_bits() -> u8 {
    7
}
fn default_parity() -> Parity {
    Parity::Even
}
fn yes() -> bool {
    true
}
fn default_timeout() -> u64 {
    10_000
}

impl SourceSpec for Iec62056Source {
    spec_common!("iec62056");

    fn validate(&self, at: &str, p: &mut Problems) {
        bus::validate_serial(at, &self.port, self.baud_rate, 1, p);
        if !(7..=8).contains(&self.data_bits) {
            p.push(format!("{at}.data_bits"), "must be 7 or 8");
        }
        if self.timeout_ms == 0 {
            p.push(format!("{at}.timeout_ms"), "must be > 0");
        }
        if let Some(a) = &self.device_address {
            if a.is_empty() || a.len() > 32 || !a.bytes().all(|b| b.is_ascii_alphanumeric()) {
                p.push(
                    format!("{at}.device_address"),
                    "must be 1 to 32 letters or digits",
                );
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
    }

    fn bus(&self) -> Option<(String, String, String)> {
        Some((
            format!("serial:{}", self.port),
            format!(
                "{} baud, {} data bits, parity {:?}",
                self.baud_rate, self.data_bits, self.parity
            ),
            "baud_rate".into(),
        ))
    }

    fn build(&self, _env: &BuildEnv) -> Box<dyn Source> {
        Box::new(Readout::new(self.clone()))
    }
}

/// Reads one meter's readout list.
pub struct Readout {
    cfg: Iec62056Source,
    meter: Option<MeterInfo>,
}

impl Readout {
    pub fn new(cfg: Iec62056Source) -> Readout {
        Readout { cfg, meter: None }
    }

    fn err(&self, reason: Reason, m: impl std::fmt::Display) -> SourceError {
        SourceError::new(reason, format!("iec62056 {}: {m}", self.cfg.port))
    }

    /// One readout.
    pub async fn poll(&mut self, ts: DateTime<Utc>, quality: Quality) -> PollResult {
        let mut port = bus::open_serial_bits(
            &self.cfg.port,
            self.cfg.baud_rate,
            self.cfg.data_bits,
            self.cfg.parity,
            1,
        )
        .map_err(|e| self.err(Reason::Connect, format!("open: {e}")))?;
        let request = format!(
            "/?{}!\r\n",
            self.cfg.device_address.as_deref().unwrap_or("")
        );
        port.write_all(request.as_bytes())
            .await
            .map_err(|e| self.err(Reason::Io, e))?;
        let timeout = Duration::from_millis(self.cfg.timeout_ms);
        let mut buf = Vec::new();
        let ident = tokio::time::timeout(
            timeout,
            read_until(&mut port, &mut buf, |b| b.ends_with(b"\r\n")),
        )
        .await
        .map_err(|_| {
            if buf.is_empty() {
                self.err(Reason::Timeout, "the meter did not answer the request")
            } else {
                self.err(Reason::Crc, "a garbled identification")
            }
        })?
        .map_err(|e| self.err(Reason::Io, e))?;
        let ident = String::from_utf8_lossy(&ident).trim().to_string();
        let (manufacturer, baud_char, model) = parse_identification(&ident)
            .ok_or_else(|| self.err(Reason::Decode, "not an identification message"))?;
        let z = if self.cfg.baud_switch { baud_char } else { '0' };
        port.write_all(&[0x06, b'0', z as u8, b'0', b'\r', b'\n'])
            .await
            .map_err(|e| self.err(Reason::Io, e))?;
        if self.cfg.baud_switch {
            if let Some(baud) = baud_for(baud_char) {
                port.flush().await.map_err(|e| self.err(Reason::Io, e))?;
                port.set_baud_rate(baud)
                    .map_err(|e| self.err(Reason::Io, e))?;
            }
        }
        let mut buf = Vec::new();
        let block = tokio::time::timeout(
            timeout,
            read_until(&mut port, &mut buf, |b| {
                b.len() >= 2 && b[b.len() - 2] == 0x03
            }),
        )
        .await
        .map_err(|_| {
            if buf.is_empty() {
                self.err(Reason::Timeout, "no readout after the acknowledgement")
            } else {
                self.err(Reason::Crc, "an incomplete readout")
            }
        })?
        .map_err(|e| self.err(Reason::Io, e))?;
        let lines = check_block(&block).map_err(|e| self.err(Reason::Crc, e))?;
        let (samples, problems, serial) =
            readings(&lines, self.cfg.channel_prefix.as_deref(), ts, quality);
        self.meter = Some(MeterInfo {
            protocol: "iec62056".into(),
            address: self.cfg.device_address.clone(),
            manufacturer: Some(manufacturer),
            model: Some(model),
            serial,
            channels: samples.iter().map(|s| s.channel.to_string()).collect(),
            ..MeterInfo::default()
        });
        Ok((
            samples,
            problems
                .into_iter()
                .map(|p| self.err(Reason::Decode, p))
                .collect(),
        ))
    }
}

impl Source for Readout {
    fn poll(&mut self, ts: DateTime<Utc>, quality: Quality) -> BoxFuture<'_, PollResult> {
        Box::pin(Readout::poll(self, ts, quality))
    }
    fn meters(&self) -> Vec<MeterInfo> {
        self.meter.iter().cloned().collect()
    }
}

/// Reads 7-bit bytes into `buf` until `done(buf)` (at most [`MAX_READOUT`]).
async fn read_until(
    port: &mut tokio_serial::SerialStream,
    buf: &mut Vec<u8>,
    done: impl Fn(&[u8]) -> bool,
) -> std::io::Result<Vec<u8>> {
    let mut byte = [0u8; 1];
    loop {
        port.read_exact(&mut byte).await?;
        buf.push(byte[0] & 0x7F);
        if done(buf) {
            return Ok(std::mem::take(buf));
        }
        if buf.len() > MAX_READOUT {
            return Err(std::io::Error::other("readout longer than 64 KiB"));
        }
    }
}

/// `/XXXZident`: (manufacturer, baud character, identification).
pub fn parse_identification(line: &str) -> Option<(String, char, String)> {
    let rest = line.strip_prefix('/')?;
    let mut chars = rest.chars();
    let manufacturer: String = chars.by_ref().take(3).collect();
    let z = chars.next()?;
    let ident: String = chars
        .collect::<String>()
        .trim_start_matches('\\')
        .to_string();
    (manufacturer.len() == 3 && manufacturer.chars().all(|c| c.is_ascii_alphabetic()))
        .then(|| (manufacturer, z, ident.chars().take(64).collect()))
}

/// The baud rate of a mode C baud character.
pub fn baud_for(z: char) -> Option<u32> {
    match z {
        '0' => Some(300),
        '1' => Some(600),
        '2' => Some(1200),
        '3' => Some(2400),
        '4' => Some(4800),
        '5' => Some(9600),
        '6' => Some(19200),
        _ => None,
    }
}

/// Checks `STX ... ETX BCC` and returns the data lines.
pub fn check_block(block: &[u8]) -> Result<Vec<String>, String> {
    let start = block
        .iter()
        .position(|b| *b == 0x02)
        .ok_or("no STX in the readout")?;
    let n = block.len();
    if n < start + 3 || block[n - 2] != 0x03 {
        return Err("no ETX at the end of the readout".into());
    }
    let bcc = block[start + 1..n - 1].iter().fold(0u8, |a, b| a ^ b);
    if bcc != block[n - 1] {
        return Err("the readout failed its block check character".into());
    }
    let text = String::from_utf8_lossy(&block[start + 1..n - 2]);
    Ok(text
        .split(['\r', '\n'])
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "!")
        .map(String::from)
        .collect())
}

/// The readings of a readout list, the problems, and the serial number if listed.
pub fn readings(
    lines: &[String],
    prefix: Option<&str>,
    ts: DateTime<Utc>,
    quality: Quality,
) -> (Vec<Sample>, Vec<String>, Option<String>) {
    let mut samples = Vec::new();
    let mut problems = Vec::new();
    let mut serial = None;
    for line in lines {
        let Some((code, rest)) = line.split_once('(') else {
            continue;
        };
        let code = code.trim();
        let value = rest.split(')').next().unwrap_or("");
        // Codes may carry the medium/channel prefix: 1-0:1.8.0*255.
        let short = code
            .rsplit(':')
            .next()
            .unwrap_or(code)
            .split('*')
            .next()
            .unwrap_or(code);
        if matches!(short, "0.0.0" | "C.1.0" | "96.1.0") {
            serial = Some(value.chars().take(64).collect());
            continue;
        }
        let (num, unit) = match value.split_once('*') {
            Some((n, u)) => (n.trim(), u.trim()),
            None => continue,
        };
        let Ok(raw) = Decimal::from_str(num) else {
            if !num.is_empty() {
                problems.push(format!(
                    "{}: value is not a number",
                    gridmeter_core::text::excerpt(short)
                ));
            }
            continue;
        };
        let (unit, factor) = match unit {
            "kWh" => ("Wh", Decimal::from(1000)),
            "kvarh" => ("varh", Decimal::from(1000)),
            "kW" => ("W", Decimal::from(1000)),
            "kvar" => ("var", Decimal::from(1000)),
            u => (u, Decimal::ONE),
        };
        let Some(value) = super::modbus::apply_scale(raw, factor) else {
            continue;
        };
        let energy = unit == "Wh" || unit == "varh";
        let name = channel_for(short).unwrap_or_else(|| {
            format!(
                "obis_{}",
                short
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() {
                        c.to_ascii_lowercase()
                    } else {
                        '_'
                    })
                    .collect::<String>()
            )
        });
        let Ok(channel) = Channel::new(super::prefixed(prefix, &name)) else {
            problems.push(format!(
                "{}: no valid channel name",
                gridmeter_core::text::excerpt(short)
            ));
            continue;
        };
        if decimal::parse_exact(&value.to_string()).is_err() {
            continue;
        }
        samples.push(Sample {
            ts,
            channel,
            kind: if energy { Kind::Counter } else { Kind::Gauge },
            unit: unit.to_string(),
            value,
            quality,
        });
    }
    (samples, problems, serial)
}

/// The channel of a well-known OBIS code.
fn channel_for(code: &str) -> Option<String> {
    let fixed = match code {
        "1.8.0" => "energy_import_wh",
        "2.8.0" => "energy_export_wh",
        "1.7.0" | "16.7.0" => "power_w",
        "2.7.0" => "power_export_w",
        "32.7.0" => "voltage_l1_v",
        "52.7.0" => "voltage_l2_v",
        "72.7.0" => "voltage_l3_v",
        "31.7.0" => "current_l1_a",
        "51.7.0" => "current_l2_a",
        "71.7.0" => "current_l3_a",
        "14.7.0" => "frequency_hz",
        _ => {
            let tariff = |p: &str| {
                code.strip_prefix(p)
                    .filter(|t| t.len() == 1 && t.chars().all(|c| c.is_ascii_digit()))
            };
            if let Some(t) = tariff("1.8.") {
                return Some(format!("energy_import_t{t}_wh"));
            }
            if let Some(t) = tariff("2.8.") {
                return Some(format!("energy_export_t{t}_wh"));
            }
            return None;
        }
    };
    Some(fixed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identification_block_and_readings() {
        assert_eq!(
            parse_identification("/ISk5MT174-0001"),
            Some(("ISk".into(), '5', "MT174-0001".into()))
        );
        assert_eq!(parse_identification("hello"), None);
        let data = b"0.0.0(12345678)\r\n1.8.0(001234.567*kWh)\r\n1.8.1(000100.001*kWh)\r\n16.7.0(0.540*kW)\r\n99.1.0(ERROR)\r\n!\r\n\x03";
        let mut block = vec![0x02];
        block.extend_from_slice(data);
        block.push(data.iter().fold(0u8, |a, b| a ^ b));
        let lines = check_block(&block).unwrap();
        let ts = DateTime::from_timestamp(0, 0).unwrap();
        let (s, p, serial) = readings(&lines, None, ts, Quality::GOOD);
        let got: Vec<(String, String, String)> = s
            .iter()
            .map(|s| (s.channel.to_string(), s.value.to_string(), s.unit.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("energy_import_wh".into(), "1234567".into(), "Wh".into()),
                ("energy_import_t1_wh".into(), "100001".into(), "Wh".into()),
                ("power_w".into(), "540".into(), "W".into()),
            ]
        );
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(serial.as_deref(), Some("12345678"));
        let n = block.len();
        block[n - 1] ^= 1;
        assert!(check_block(&block).unwrap_err().contains("block check"));
    }
}
