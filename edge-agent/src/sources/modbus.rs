//! Modbus TCP registers as readings.
//!
//! Each register map entry is read with one request (function 3 holding or 4 input) and
//! decoded as u16/i16/u32/i32/u64/f32 in the configured word order, then multiplied by the
//! exact decimal `scale`. Integers stay exact. f32 registers are converted through the
//! float's shortest decimal text (`format!("{}", f)` then `decimal::parse_exact`, rounded to
//! 9 places if needed): they are approximate by nature and config validation only allows
//! them as gauges.

use std::net::SocketAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use gridmeter_core::{decimal, Channel, Quality};
use rust_decimal::Decimal;
use tokio_modbus::client::{Context, Reader};
use tokio_modbus::Slave;

use super::{PollResult, Sample};
use crate::config::{ModbusSource, RegisterFunction, RegisterMap, RegisterType, WordOrder};

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

pub struct ModbusPoller {
    address: String,
    unit_id: u8,
    timeout: Duration,
    entries: Vec<Entry>,
    ctx: Option<Context>,
}

impl ModbusPoller {
    pub fn new(cfg: ModbusSource) -> ModbusPoller {
        // Validation already checked channel names and scales; entries that still fail are
        // skipped here rather than panicking.
        let entries = cfg
            .registers
            .into_iter()
            .filter_map(|map| {
                let channel = Channel::new(map.channel.clone()).ok()?;
                let scale = decimal::parse_exact(&map.scale).ok()?;
                Some(Entry {
                    map,
                    channel,
                    scale,
                })
            })
            .collect();
        ModbusPoller {
            address: cfg.address,
            unit_id: cfg.unit_id,
            timeout: Duration::from_millis(cfg.timeout_ms),
            entries,
            ctx: None,
        }
    }

    pub async fn poll(&mut self, ts: DateTime<Utc>, quality: Quality) -> PollResult {
        let ctx = match self.ctx.as_mut() {
            Some(c) => c,
            None => {
                let c = connect(&self.address, self.unit_id, self.timeout).await?;
                self.ctx.insert(c)
            }
        };
        let mut samples = Vec::with_capacity(self.entries.len());
        let mut problems = Vec::new();
        for e in &self.entries {
            let words = match read(
                ctx,
                e.map.function,
                e.map.address,
                e.map.data_type.words(),
                self.timeout,
            )
            .await
            {
                Ok(w) => w,
                Err(ReadError::Exception(msg)) => {
                    problems.push(format!("{}: {msg}", e.map.channel));
                    continue;
                }
                Err(ReadError::Transport(msg)) => {
                    self.ctx = None;
                    return Err(format!("modbus {}: {msg}", self.address));
                }
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
                None => problems.push(format!(
                    "{}: registers {words:?} are not a valid {:?}",
                    e.map.channel, e.map.data_type
                )),
            }
        }
        Ok((samples, problems))
    }
}

pub(crate) async fn connect(
    address: &str,
    unit_id: u8,
    timeout: Duration,
) -> Result<Context, String> {
    let addr: SocketAddr = address
        .parse()
        .map_err(|_| format!("modbus address {address:?} is not ip:port"))?;
    tokio::time::timeout(
        timeout,
        tokio_modbus::client::tcp::connect_slave(addr, Slave(unit_id)),
    )
    .await
    .map_err(|_| format!("modbus {address}: connect timed out"))?
    .map_err(|e| format!("modbus {address}: connect: {e}"))
}

pub(crate) enum ReadError {
    /// The device answered with a Modbus exception (this register only).
    Exception(String),
    /// The connection is broken; reconnect next poll.
    Transport(String),
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
            .map_err(|_| ReadError::Transport("request timed out".into()))?
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
