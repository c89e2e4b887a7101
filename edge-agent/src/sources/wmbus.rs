//! Wireless M-Bus (EN 13757-4, T1 and C1 modes) telegrams from a receiver stick's serial
//! output.
//!
//! The stick does the radio; the agent reads its serial text output: one telegram per line
//! in hexadecimal, with or without the frame format A CRCs, optionally prefixed with `b`
//! (culfw sticks) or given as the last `;`-separated field (`T1;1;1;...;<hex>`). Only the
//! configured meters are read (by their 8-digit identification number); telegrams of other
//! meters are ignored. A meter encrypted with AES-128 in security mode 5 (CBC, the IV from
//! the link-layer address and the access number) is decrypted with its per-meter `key` from
//! the config (32 hex digits). Records are decoded by the `m-bus-parser` crate like the
//! wired source's ([`super::mbus::decode_records`]): exact decimals with their VIF units,
//! status error bits as `device_error`.
//!
//! A meter transmits on its own schedule, so this source does not poll: it listens, and a
//! configured meter not heard for `silent_after_secs` (default 15 minutes) counts one
//! `reason="timeout"` per such period. A telegram that does not decode or decrypt counts
//! `decode`. Frame format B (some C1 meters) is decoded as far as the parser crate supports.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use gridmeter_core::config::Problems;
use gridmeter_core::{Channel, Quality};
use m_bus_parser::output::DecodeOptions;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use super::bus::{self, Parity};
use super::meta::MeterInfo;
use super::{BuildEnv, PollResult, Reason, Sample, Source, SourceCtx, SourceError, SourceSpec};

/// Longest line accepted from the stick (a wM-Bus telegram is at most 255 bytes + CRCs).
const MAX_LINE: u64 = 1024;

/// The radio mode the stick is set to (it receives; the agent only reads its output).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    T1,
    C1,
}

/// A `type = "wmbus"` source: the meters one receiver stick hears.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WmbusSource {
    #[serde(default)]
    pub name: Option<String>,
    /// How often the silence of the meters is checked.
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    /// Serial device of the receiver stick.
    pub port: String,
    #[serde(default = "default_baud")]
    pub baud_rate: u32,
    #[serde(default = "default_parity")]
    pub parity: Parity,
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    pub mode: Mode,
    /// A meter not heard this long counts as silent.
    #[serde(default = "default_silent")]
    pub silent_after_secs: u64,
    pub meters: Vec<WmbusMeter>,
}

/// One meter the stick hears.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WmbusMeter {
    /// The 8-digit identification number.
    pub id: String,
    /// AES-128 key, 32 hex digits, for a meter in security mode 5.
    #[serde(default)]
    pub key: Option<String>,
    /// Channel prefix of this meter's readings.
    pub prefix: String,
}

fn default_interval() -> u64 {
    60_000
}
fn default_baud() -> u32 {
    9600
}
fn default_parity() -> Parity {
    Parity::None
}
fn default_stop_bits() -> u8 {
    1
}
fn default_silent() -> u64 {
    900
}

/// A 32-hex-digit key as bytes.
pub fn parse_key(key: &str) -> Result<[u8; 16], String> {
    let key = key.trim();
    if key.len() != 32 {
        return Err(format!(
            "an AES-128 key is 32 hex digits (16 bytes), this one has {} characters",
            key.chars().count()
        ));
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(key.get(2 * i..2 * i + 2).unwrap_or("zz"), 16)
            .map_err(|_| "the key is not hexadecimal".to_string())?;
    }
    Ok(out)
}

impl SourceSpec for WmbusSource {
    spec_common!("wmbus");

    fn validate(&self, at: &str, p: &mut Problems) {
        bus::validate_serial(at, &self.port, self.baud_rate, self.stop_bits, p);
        if self.silent_after_secs == 0 {
            p.push(format!("{at}.silent_after_secs"), "must be > 0");
        }
        if self.meters.is_empty() {
            p.push(format!("{at}.meters"), "at least one meter is required");
        }
        let mut ids = std::collections::HashSet::new();
        for (i, m) in self.meters.iter().enumerate() {
            let mat = format!("{at}.meters[{i}]");
            if m.id.len() != 8 || !m.id.bytes().all(|b| b.is_ascii_digit()) {
                p.push(
                    format!("{mat}.id"),
                    "must be the meter's 8-digit identification number",
                );
            } else if !ids.insert(m.id.clone()) {
                p.push(format!("{mat}.id"), format!("meter {} twice", m.id));
            }
            if let Some(k) = &m.key {
                if let Err(e) = parse_key(k) {
                    p.push(format!("{mat}.key"), e);
                }
            }
            if Channel::new(format!("{}.x", m.prefix)).is_err() {
                p.push(
                    format!("{mat}.prefix"),
                    format!("{:?} is not a valid channel name ([a-z0-9_.])", m.prefix),
                );
            }
        }
    }

    fn bus(&self) -> Option<(String, String, String)> {
        Some((
            format!("serial:{}", self.port),
            format!(
                "{} baud, parity {:?}, {} stop bit(s)",
                self.baud_rate, self.parity, self.stop_bits
            ),
            "baud_rate".into(),
        ))
    }

    fn build(&self, _env: &BuildEnv) -> Box<dyn Source> {
        Box::new(Telegrams::new(self.clone()))
    }

    fn run(&self, _env: &BuildEnv, ctx: SourceCtx) -> BoxFuture<'static, ()> {
        Box::pin(listen(self.clone(), ctx))
    }
}

/// A configured meter's telegram: its id, readings and problems.
pub type Heard = (String, Vec<Sample>, Vec<SourceError>);

/// Decodes the telegrams of the configured meters.
pub struct Telegrams {
    cfg: WmbusSource,
    keys: HashMap<String, Option<[u8; 16]>>,
    meters: HashMap<String, MeterInfo>,
    /// Lines handed in by [`Telegrams::push_line`] and not yet decoded (for polling).
    queue: Vec<String>,
}

impl Telegrams {
    pub fn new(cfg: WmbusSource) -> Telegrams {
        let keys = cfg
            .meters
            .iter()
            .map(|m| {
                (
                    m.id.clone(),
                    m.key.as_deref().and_then(|k| parse_key(k).ok()),
                )
            })
            .collect();
        Telegrams {
            cfg,
            keys,
            meters: HashMap::new(),
            queue: Vec::new(),
        }
    }

    /// Queues one line of the stick's output for the next poll.
    pub fn push_line(&mut self, line: &str) {
        self.queue.push(line.to_string());
    }

    /// Decodes one line: the meter's id and its readings, `Ok(None)` for a meter that is
    /// not configured (or a line that is not a telegram).
    pub fn decode_line(
        &mut self,
        line: &str,
        ts: DateTime<Utc>,
        quality: Quality,
    ) -> Result<Option<Heard>, SourceError> {
        let Some(bytes) = telegram_bytes(line) else {
            return Ok(None);
        };
        let plain = m_bus_parser::output::decode_bytes(&bytes, &no_key()).map_err(|_| {
            SourceError::new(Reason::Decode, "a line that is not a wM-Bus telegram")
        })?;
        let Some(id) = plain.meter.identity.as_ref().and_then(|i| i.id.clone()) else {
            return Ok(None);
        };
        let Some(key) = self.keys.get(&id).copied() else {
            return Ok(None);
        };
        let decoded = match key {
            Some(k) => m_bus_parser::output::decode_bytes(
                &bytes,
                &DecodeOptions {
                    key: Some(k),
                    include_enrichment: false,
                },
            )
            .map_err(|e| {
                SourceError::new(
                    Reason::Decode,
                    format!(
                        "meter {id}: {}",
                        e.to_string().chars().take(200).collect::<String>()
                    ),
                )
            })?,
            None => plain,
        };
        // Mode 5 plaintext starts with the filler 2F 2F: the check that the key is right.
        let sec = &decoded.security;
        let verified = sec
            .decrypted_payload_hex
            .as_deref()
            .is_some_and(|h| h.to_ascii_lowercase().replace(' ', "").starts_with("2f2f"));
        if sec.payload_protection != "cleartext" && !verified {
            let why = if key.is_none() {
                "no key is configured for it"
            } else {
                "it does not decrypt with the configured key"
            };
            return Err(SourceError::new(
                Reason::Decode,
                format!("meter {id}: encrypted telegram, but {why}"),
            ));
        }
        let prefix = self
            .cfg
            .meters
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.prefix.clone());
        let (samples, problems, mut info) =
            super::mbus::decode_records(&decoded, prefix.as_deref(), ts, quality);
        info.protocol = "wmbus".into();
        info.address = Some(format!("id {id}"));
        let known = self
            .meters
            .entry(id.clone())
            .or_insert_with(|| info.clone());
        known.channels.extend(info.channels);
        known.channels.sort();
        known.channels.dedup();
        Ok(Some((id, samples, problems)))
    }
}

fn no_key() -> DecodeOptions {
    DecodeOptions {
        key: None,
        include_enrichment: false,
    }
}

/// The bytes of a line of stick output (hex, optional `b` prefix, or the last `;` field).
fn telegram_bytes(line: &str) -> Option<Vec<u8>> {
    let t = line.trim();
    let t = t.rsplit(';').next().unwrap_or(t);
    let t = t.strip_prefix('b').unwrap_or(t);
    if t.len() < 20 || !t.len().is_multiple_of(2) {
        return None;
    }
    (0..t.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(t.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Source for Telegrams {
    /// Decodes the queued lines (the running source listens instead, see [`listen`]).
    fn poll(&mut self, ts: DateTime<Utc>, quality: Quality) -> BoxFuture<'_, PollResult> {
        let lines = std::mem::take(&mut self.queue);
        let mut samples = Vec::new();
        let mut problems = Vec::new();
        for l in lines {
            match self.decode_line(&l, ts, quality) {
                Ok(Some((_, s, p))) => {
                    samples.extend(s);
                    problems.extend(p);
                }
                Ok(None) => {}
                Err(e) => problems.push(e),
            }
        }
        Box::pin(async move { Ok((samples, problems)) })
    }
    fn meters(&self) -> Vec<MeterInfo> {
        let mut m: Vec<MeterInfo> = self.meters.values().cloned().collect();
        m.sort_by(|a, b| a.address.cmp(&b.address));
        m
    }
}

/// Listens to the stick until shutdown: decodes each line as it comes, checks the
/// meters' silence every `interval_ms`, reopens the port after an error.
pub async fn listen(cfg: WmbusSource, mut ctx: SourceCtx) {
    let mut telegrams = Telegrams::new(cfg.clone());
    let silent_after = Duration::from_secs(cfg.silent_after_secs);
    let mut last_heard: HashMap<String, tokio::time::Instant> = cfg
        .meters
        .iter()
        .map(|m| (m.id.clone(), tokio::time::Instant::now()))
        .collect();
    let mut tick = tokio::time::interval(Duration::from_millis(cfg.interval_ms.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let port = match bus::open_serial(&cfg.port, cfg.baud_rate, cfg.parity, cfg.stop_bits) {
            Ok(p) => p,
            Err(e) => {
                ctx.error(&SourceError::new(
                    Reason::Connect,
                    format!("wmbus {}: open: {e}", cfg.port),
                ));
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(cfg.interval_ms.max(1000))) => continue,
                    _ = ctx.shutdown.changed() => return,
                }
            }
        };
        let mut reader = BufReader::new(port);
        loop {
            let mut line = String::new();
            let read = async {
                let n = (&mut reader).take(MAX_LINE).read_line(&mut line).await?;
                Ok::<usize, std::io::Error>(n)
            };
            tokio::select! {
                r = read => match r {
                    Ok(0) => break,
                    Ok(_) if !line.ends_with('\n') && line.len() as u64 >= MAX_LINE => {
                        ctx.error(&SourceError::new(Reason::Decode, "a line longer than 1024 characters"));
                        // Skip the rest of that line.
                        let mut rest = Vec::new();
                        let _ = reader.read_until(b'\n', &mut rest).await;
                    }
                    Ok(_) => {
                        let (ts, q) = ctx.clock.now();
                        match telegrams.decode_line(&line, ts, q) {
                            Ok(Some((id, samples, problems))) => {
                                last_heard.insert(id, tokio::time::Instant::now());
                                for p in &problems {
                                    ctx.error(p);
                                }
                                ctx.meta.set(&ctx.label, Source::meters(&telegrams));
                                if !ctx.emit(samples).await {
                                    return;
                                }
                            }
                            Ok(None) => {}
                            Err(e) => ctx.error(&e),
                        }
                    }
                    Err(e) => {
                        ctx.error(&SourceError::new(Reason::Io, format!("wmbus {}: {e}", cfg.port)));
                        break;
                    }
                },
                _ = tick.tick() => {
                    let now = tokio::time::Instant::now();
                    for (id, at) in last_heard.iter_mut() {
                        if now.duration_since(*at) >= silent_after {
                            ctx.error(&SourceError::new(
                                Reason::Timeout,
                                format!("wmbus meter {id} not heard for {}s", silent_after.as_secs()),
                            ));
                            *at = now;
                        }
                    }
                }
                _ = ctx.shutdown.changed() => return,
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(1000)) => {}
            _ = ctx.shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_lines() {
        assert!(parse_key("00112233445566778899AABBCCDDEEFF").is_ok());
        assert!(parse_key("0011").unwrap_err().contains("32 hex digits"));
        assert!(parse_key("zz112233445566778899AABBCCDDEEFF").is_err());
        assert_eq!(
            telegram_bytes("b0A0B0C0D0E0F10111213").map(|b| b.len()),
            Some(10)
        );
        assert_eq!(
            telegram_bytes("T1;1;1;0A0B0C0D0E0F10111213").map(|b| b.len()),
            Some(10)
        );
        assert_eq!(telegram_bytes("hello"), None);
    }
}
