//! SunSpec over Modbus TCP: finds the `SunS` marker, walks the model list and reads the
//! inverter (101-103) and meter (201-204) models.
//!
//! The marker (0x5375 0x6E53) is searched at holding register 0, 40000 and 50000 (or the
//! configured `base`). Models follow as (id, length, data...) until id 0xFFFF. The model
//! layout is discovered once per connection and re-discovered after a transport error.
//!
//! Channels (prefix `inverter`/`meter`, plus the model's index among models of the same
//! kind when there are several, e.g. `meter2.`):
//! - inverter: `ac_energy_wh` (counter, WH × 10^WH_SF), `ac_power_w` (gauge, W × 10^W_SF),
//!   `ac_current_a`, `ac_frequency_hz`, `dc_power_w`, `cabinet_temp_c` (gauges).
//! - meter: `energy_import_wh`, `energy_export_wh` (counters, TotWhImp/TotWhExp ×
//!   10^TotWh_SF), `power_w`, `current_a`, `frequency_hz` (gauges).
//!
//! "Not implemented" values are skipped: 0x8000 for int16 and sunssf, 0xFFFF for uint16,
//! 0 for acc32 (the SunSpec convention: an accumulator of 0 means "not accumulated"), and
//! a value whose scale factor is not implemented.

use std::time::Duration;

use chrono::{DateTime, Utc};
use gridmeter_core::{Channel, Kind, Quality};
use rust_decimal::Decimal;
use tokio_modbus::client::Context;

use super::modbus::{connect, read, ReadError};
use super::{PollResult, Sample};
use crate::config::{RegisterFunction, SunspecSource};

pub const MARKER: [u16; 2] = [0x5375, 0x6E53];
pub const END: u16 = 0xFFFF;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    U16,
    I16,
    Acc32,
}

/// (channel suffix, offset in the model's data, type, scale-factor offset, kind, unit)
type Point = (&'static str, u16, Ty, u16, Kind, &'static str);

const INVERTER: &[Point] = &[
    ("ac_energy_wh", 22, Ty::Acc32, 24, Kind::Counter, "Wh"),
    ("ac_power_w", 12, Ty::I16, 13, Kind::Gauge, "W"),
    ("ac_current_a", 0, Ty::U16, 4, Kind::Gauge, "A"),
    ("ac_frequency_hz", 14, Ty::U16, 15, Kind::Gauge, "Hz"),
    ("dc_power_w", 29, Ty::I16, 30, Kind::Gauge, "W"),
    ("cabinet_temp_c", 31, Ty::I16, 35, Kind::Gauge, "Cel"),
];

const METER: &[Point] = &[
    ("energy_export_wh", 36, Ty::Acc32, 52, Kind::Counter, "Wh"),
    ("energy_import_wh", 44, Ty::Acc32, 52, Kind::Counter, "Wh"),
    ("power_w", 16, Ty::I16, 20, Kind::Gauge, "W"),
    ("current_a", 0, Ty::I16, 4, Kind::Gauge, "A"),
    ("frequency_hz", 14, Ty::I16, 15, Kind::Gauge, "Hz"),
];

/// One decoded point value: `raw × 10^sf`, or `None` if not implemented.
fn point_value(data: &[u16], p: &Point) -> Option<Decimal> {
    let (_, off, ty, sf_off, _, _) = *p;
    let at = |i: u16| data.get(usize::from(i)).copied();
    let sf_raw = at(sf_off)?;
    if sf_raw == 0x8000 {
        return None;
    }
    let sf = i32::from(sf_raw as i16);
    if !(-10..=10).contains(&sf) {
        return None;
    }
    let raw: i64 = match ty {
        Ty::U16 => {
            let v = at(off)?;
            if v == 0xFFFF {
                return None;
            }
            i64::from(v)
        }
        Ty::I16 => {
            let v = at(off)?;
            if v == 0x8000 {
                return None;
            }
            i64::from(v as i16)
        }
        Ty::Acc32 => {
            let v = (u32::from(at(off)?) << 16) | u32::from(at(off + 1)?);
            if v == 0 {
                return None;
            }
            i64::from(v)
        }
    };
    let value = if sf < 0 {
        Decimal::new(raw, sf.unsigned_abs())
    } else {
        Decimal::from(raw).checked_mul(Decimal::from(10i64.pow(sf as u32)))?
    };
    Some(
        if value.scale() > 9 {
            value.round_dp(9)
        } else {
            value
        }
        .normalize(),
    )
}

/// A model found on the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    pub id: u16,
    /// Register of the first data word (after id and length).
    pub data_start: u16,
    pub len: u16,
}

/// Decodes the samples of one model's data block (inverter or meter); `prefix` names it.
pub fn decode_model(
    id: u16,
    data: &[u16],
    prefix: &str,
    ts: DateTime<Utc>,
    quality: Quality,
) -> Vec<Sample> {
    let points = match id {
        101..=103 => INVERTER,
        201..=204 => METER,
        _ => return Vec::new(),
    };
    points
        .iter()
        .filter_map(|p| {
            let value = point_value(data, p)?;
            Some(Sample {
                ts,
                channel: Channel::new(format!("{prefix}.{}", p.0)).ok()?,
                kind: p.4,
                unit: p.5.to_string(),
                value,
                quality,
            })
        })
        .collect()
}

fn text(words: &[u16]) -> String {
    words
        .iter()
        .flat_map(|w| w.to_be_bytes())
        .take_while(|b| *b != 0)
        .map(char::from)
        .collect::<String>()
        .trim()
        .to_string()
}

pub struct SunspecPoller {
    cfg: SunspecSource,
    timeout: Duration,
    ctx: Option<Context>,
    models: Vec<(Model, String)>,
}

impl SunspecPoller {
    pub fn new(cfg: SunspecSource) -> SunspecPoller {
        SunspecPoller {
            timeout: Duration::from_millis(cfg.timeout_ms),
            cfg,
            ctx: None,
            models: Vec::new(),
        }
    }

    async fn discover(&mut self) -> Result<(), String> {
        let timeout = self.timeout;
        let ctx = self.ctx.as_mut().ok_or("not connected")?;
        let bases: Vec<u16> = match self.cfg.base {
            Some(b) => vec![b],
            None => vec![0, 40000, 50000],
        };
        let mut base = None;
        for b in bases {
            match read(ctx, RegisterFunction::Holding, b, 2, timeout).await {
                Ok(w) if w == MARKER => {
                    base = Some(b);
                    break;
                }
                Ok(_) | Err(ReadError::Exception(_)) => {}
                Err(ReadError::Transport(e)) => return Err(e),
            }
        }
        let base = base.ok_or("no SunS marker at registers 0, 40000 or 50000")?;
        let mut at = base
            .checked_add(2)
            .ok_or("marker at the end of the address space")?;
        let mut models = Vec::new();
        let mut counts = std::collections::HashMap::new();
        for _ in 0..64 {
            let head = read(ctx, RegisterFunction::Holding, at, 2, timeout)
                .await
                .map_err(|e| match e {
                    ReadError::Exception(m) | ReadError::Transport(m) => m,
                })?;
            let (id, len) = (head[0], head[1]);
            if id == END {
                break;
            }
            let data_start = at
                .checked_add(2)
                .ok_or("model list runs past register 65535")?;
            if id == 1 {
                if let Ok(w) = read(
                    ctx,
                    RegisterFunction::Holding,
                    data_start,
                    len.min(66),
                    timeout,
                )
                .await
                {
                    let g = |a: usize, b: usize| text(w.get(a..b.min(w.len())).unwrap_or(&[]));
                    tracing::info!(
                        manufacturer = %g(0, 16),
                        model = %g(16, 32),
                        serial = %g(48, 64),
                        "SunSpec device at {}",
                        self.cfg.address
                    );
                }
            }
            let kind = match id {
                101..=103 => Some("inverter"),
                201..=204 => Some("meter"),
                _ => None,
            };
            if let Some(kind) = kind {
                let n = counts.entry(kind).or_insert(0u32);
                *n += 1;
                let prefix = if *n == 1 {
                    kind.to_string()
                } else {
                    format!("{kind}{n}")
                };
                models.push((
                    Model {
                        id,
                        data_start,
                        len,
                    },
                    prefix,
                ));
            }
            at = data_start
                .checked_add(len)
                .ok_or("model list runs past register 65535")?;
        }
        if models.is_empty() {
            return Err("SunSpec device has no inverter (101-103) or meter (201-204) model".into());
        }
        self.models = models;
        Ok(())
    }

    pub async fn poll(&mut self, ts: DateTime<Utc>, quality: Quality) -> PollResult {
        if self.ctx.is_none() {
            self.ctx = Some(connect(&self.cfg.address, self.cfg.unit_id, self.timeout).await?);
            self.models.clear();
        }
        if self.models.is_empty() {
            if let Err(e) = self.discover().await {
                self.ctx = None;
                return Err(format!("sunspec {}: {e}", self.cfg.address));
            }
        }
        let ctx = self.ctx.as_mut().ok_or("not connected")?;
        let mut samples = Vec::new();
        let mut problems = Vec::new();
        for (m, prefix) in &self.models {
            match read(
                ctx,
                RegisterFunction::Holding,
                m.data_start,
                m.len,
                self.timeout,
            )
            .await
            {
                Ok(data) => samples.extend(decode_model(m.id, &data, prefix, ts, quality)),
                Err(ReadError::Exception(e)) => problems.push(format!("model {}: {e}", m.id)),
                Err(ReadError::Transport(e)) => {
                    self.ctx = None;
                    return Err(format!("sunspec {}: {e}", self.cfg.address));
                }
            }
        }
        Ok((samples, problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn meter_model_with_scale_factors_and_sentinels() {
        let mut data = vec![0u16; 105];
        data[16] = (-1500i16) as u16; // W
        data[20] = (-1i16) as u16; // W_SF
        data[0] = 0x8000; // A not implemented
        data[4] = 0;
        data[14] = 5000; // Hz
        data[15] = (-2i16) as u16;
        data[44] = 0x0001; // TotWhImp = 0x0001_0000 = 65536
        data[45] = 0x0000;
        data[52] = 1; // TotWh_SF = +1
                      // TotWhExp = 0: not accumulated -> skipped
        let t = DateTime::from_timestamp(0, 0).unwrap();
        let s = decode_model(203, &data, "meter", t, Quality::GOOD);
        let got: Vec<(String, String, Kind)> = s
            .iter()
            .map(|s| (s.channel.to_string(), s.value.to_string(), s.kind))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "meter.energy_import_wh".into(),
                    "655360".into(),
                    Kind::Counter
                ),
                ("meter.power_w".into(), "-150".into(), Kind::Gauge),
                ("meter.frequency_hz".into(), "50".into(), Kind::Gauge),
            ]
        );
        assert_eq!(s[1].value, Decimal::from_str("-150").unwrap());
    }
}
