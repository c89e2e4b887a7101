//! SunSpec over Modbus TCP: finds the `SunS` marker, walks the model list and reads the
//! common model (1: nameplate), the inverter (101-103), MPPT (160), storage (124), meter
//! (201-204) and battery (802) models.
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
//! - mppt (model 160, one block per string or module `n` = 1..N):
//!   `mppt.{n}.dc_energy_wh` (counter, DCWH × 10^DCWH_SF), `mppt.{n}.dc_power_w`,
//!   `mppt.{n}.dc_voltage_v`, `mppt.{n}.dc_current_a` (gauges).
//! - storage (model 124): `storage.soc_pct` (ChaState), `storage.battery_voltage_v`.
//! - battery (model 802): `battery.soc_pct`, `battery.soh_pct`, `battery.capacity_wh`
//!   (WHRtg), `battery.voltage_v`, `battery.current_a`, `battery.power_w`.
//!
//! The common model's manufacturer (Mn), model (Md), version (Vr) and serial number (SN)
//! become the device's metadata (`gridmeter/v1/{device_id}/meta`).
//!
//! "Not implemented" values are skipped: 0x8000 for int16 and sunssf, 0xFFFF for uint16,
//! 0 for acc32 (the SunSpec convention: an accumulator of 0 means "not accumulated"), and
//! a value whose scale factor is not implemented.

use std::net::SocketAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use gridmeter_core::config::Problems;
use gridmeter_core::{Channel, Kind, Quality};
use rust_decimal::Decimal;
use serde::Deserialize;
use tokio_modbus::client::Context;

use super::meta::MeterInfo;
use super::modbus::{connect, read, ReadError, RegisterFunction};
use super::{BuildEnv, PollResult, Reason, Sample, Source, SourceError, SourceSpec};

/// A `type = "sunspec"` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SunspecSource {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "super::default_interval")]
    pub interval_ms: u64,
    /// `ip:port` of the device's Modbus TCP server.
    pub address: String,
    #[serde(default = "default_unit_id")]
    pub unit_id: u8,
    /// Base register of the `SunS` marker; searched at 0, 40000 and 50000 when absent.
    #[serde(default)]
    pub base: Option<u16>,
    #[serde(default = "super::default_timeout")]
    pub timeout_ms: u64,
}

fn default_unit_id() -> u8 {
    1
}

impl SourceSpec for SunspecSource {
    spec_common!("sunspec");

    fn validate(&self, at: &str, p: &mut Problems) {
        if self.address.parse::<SocketAddr>().is_err() {
            p.push(format!("{at}.address"), "must be ip:port");
        }
        if self.timeout_ms == 0 {
            p.push(format!("{at}.timeout_ms"), "must be > 0");
        }
    }

    fn build(&self, _env: &BuildEnv) -> Box<dyn Source> {
        Box::new(SunspecPoller::new(self.clone()))
    }
}

impl Source for SunspecPoller {
    fn poll(&mut self, ts: DateTime<Utc>, quality: Quality) -> BoxFuture<'_, PollResult> {
        Box::pin(SunspecPoller::poll(self, ts, quality))
    }
    fn meters(&self) -> Vec<MeterInfo> {
        self.nameplate.iter().cloned().collect()
    }
}

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

/// Storage model 124 (basic storage controls).
const STORAGE: &[Point] = &[
    ("soc_pct", 6, Ty::U16, 20, Kind::Gauge, "%"),
    ("battery_voltage_v", 8, Ty::U16, 22, Kind::Gauge, "V"),
];

/// Battery base model 802.
const BATTERY: &[Point] = &[
    ("soc_pct", 9, Ty::U16, 54, Kind::Gauge, "%"),
    ("soh_pct", 11, Ty::U16, 56, Kind::Gauge, "%"),
    ("capacity_wh", 1, Ty::U16, 51, Kind::Gauge, "Wh"),
    ("voltage_v", 32, Ty::U16, 57, Kind::Gauge, "V"),
    ("current_a", 42, Ty::I16, 59, Kind::Gauge, "A"),
    ("power_w", 45, Ty::I16, 61, Kind::Gauge, "W"),
];

/// One module block of MPPT model 160: fixed part of 8 registers, then 20 per module.
/// (suffix, offset within the module block, type, scale-factor offset in the fixed part)
const MPPT_MODULE: &[(&str, u16, Ty, u16, Kind, &str)] = &[
    ("dc_energy_wh", 12, Ty::Acc32, 3, Kind::Counter, "Wh"),
    ("dc_power_w", 11, Ty::U16, 2, Kind::Gauge, "W"),
    ("dc_voltage_v", 10, Ty::U16, 1, Kind::Gauge, "V"),
    ("dc_current_a", 9, Ty::U16, 0, Kind::Gauge, "A"),
];
const MPPT_FIXED: u16 = 8;
const MPPT_BLOCK: u16 = 20;

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
    let sample = |name: String, p: &Point, value| {
        Some(Sample {
            ts,
            channel: Channel::new(name).ok()?,
            kind: p.4,
            unit: p.5.to_string(),
            value,
            quality,
        })
    };
    let points = match id {
        101..=103 => INVERTER,
        201..=204 => METER,
        124 => STORAGE,
        802 => BATTERY,
        160 => {
            // N modules (register 6), each a block of 20 after the fixed part; scale
            // factors are shared, in the fixed part.
            let n = data.get(6).copied().unwrap_or(0);
            let mut out = Vec::new();
            for m in 0..n.min(64) {
                let base = MPPT_FIXED + m * MPPT_BLOCK;
                for p in MPPT_MODULE {
                    let shifted: Point = (p.0, base + p.1, p.2, p.3, p.4, p.5);
                    if let Some(v) = point_value(data, &shifted) {
                        out.extend(sample(format!("{prefix}.{}.{}", m + 1, p.0), &shifted, v));
                    }
                }
            }
            return out;
        }
        _ => return Vec::new(),
    };
    points
        .iter()
        .filter_map(|p| sample(format!("{prefix}.{}", p.0), p, point_value(data, p)?))
        .collect()
}

/// The nameplate of common model 1: Mn (0..16), Md (16..32), Vr (40..48), SN (48..64).
pub fn nameplate(data: &[u16], unit_id: u8) -> MeterInfo {
    let g = |a: usize, b: usize| {
        let t = text(data.get(a..b.min(data.len())).unwrap_or(&[]));
        (!t.is_empty()).then_some(t)
    };
    MeterInfo {
        protocol: "sunspec".into(),
        address: Some(format!("unit {unit_id}")),
        manufacturer: g(0, 16),
        model: g(16, 32),
        firmware: g(40, 48),
        serial: g(48, 64),
        ..MeterInfo::default()
    }
}

fn text(words: &[u16]) -> String {
    words
        .iter()
        .flat_map(|w| w.to_be_bytes())
        .take_while(|b| *b != 0)
        .filter(|b| b.is_ascii_graphic() || *b == b' ')
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
    nameplate: Option<MeterInfo>,
}

impl SunspecPoller {
    pub fn new(cfg: SunspecSource) -> SunspecPoller {
        SunspecPoller {
            timeout: Duration::from_millis(cfg.timeout_ms),
            cfg,
            ctx: None,
            models: Vec::new(),
            nameplate: None,
        }
    }

    async fn discover(&mut self) -> Result<(), SourceError> {
        let timeout = self.timeout;
        let unit_id = self.cfg.unit_id;
        let where_ = format!("sunspec {}", self.cfg.address);
        let fail = |reason: Reason, m: &str| SourceError::new(reason, format!("{where_}: {m}"));
        let ctx = self
            .ctx
            .as_mut()
            .ok_or_else(|| fail(Reason::Io, "not connected"))?;
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
                Err(e) => return Err(e.into_error(&where_)),
            }
        }
        let base = base.ok_or_else(|| {
            fail(
                Reason::Decode,
                "no SunS marker at registers 0, 40000 or 50000",
            )
        })?;
        let mut at = base
            .checked_add(2)
            .ok_or_else(|| fail(Reason::Decode, "marker at the end of the address space"))?;
        let mut models = Vec::new();
        let mut nameplate_found = None;
        let mut counts = std::collections::HashMap::new();
        for _ in 0..64 {
            let head = read(ctx, RegisterFunction::Holding, at, 2, timeout)
                .await
                .map_err(|e| e.into_error(&where_))?;
            let (id, len) = (head[0], head[1]);
            if id == END {
                break;
            }
            let data_start = at
                .checked_add(2)
                .ok_or_else(|| fail(Reason::Decode, "model list runs past register 65535"))?;
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
                    let info = nameplate(&w, unit_id);
                    tracing::info!(
                        manufacturer = info.manufacturer.as_deref().unwrap_or(""),
                        model = info.model.as_deref().unwrap_or(""),
                        serial = info.serial.as_deref().unwrap_or(""),
                        "SunSpec device at {}",
                        self.cfg.address
                    );
                    nameplate_found = Some(info);
                }
            }
            let kind = match id {
                101..=103 => Some("inverter"),
                201..=204 => Some("meter"),
                160 => Some("mppt"),
                124 => Some("storage"),
                802 => Some("battery"),
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
                .ok_or_else(|| fail(Reason::Decode, "model list runs past register 65535"))?;
        }
        if models.is_empty() {
            return Err(fail(
                Reason::Decode,
                "SunSpec device has no inverter (101-103), MPPT (160), storage (124), meter (201-204) or battery (802) model",
            ));
        }
        self.models = models;
        if let Some(info) = nameplate_found {
            self.nameplate = Some(info);
        }
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
                return Err(e);
            }
        }
        let where_ = format!("sunspec {}", self.cfg.address);
        let ctx = self
            .ctx
            .as_mut()
            .ok_or_else(|| SourceError::new(Reason::Io, format!("{where_}: not connected")))?;
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
                Err(ReadError::Exception(e)) => problems.push(SourceError::new(
                    Reason::Exception,
                    format!("{where_}: model {}: {e}", m.id),
                )),
                Err(e) => {
                    self.ctx = None;
                    return Err(e.into_error(&where_));
                }
            }
        }
        if let Some(info) = self.nameplate.as_mut() {
            // Every channel seen so far (a point that is sometimes "not implemented" does
            // not make the metadata change at every poll).
            let mut channels: std::collections::BTreeSet<String> =
                info.channels.drain(..).collect();
            channels.extend(samples.iter().map(|s| s.channel.to_string()));
            info.channels = channels.into_iter().collect();
        }
        Ok((samples, problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn mppt_battery_storage_and_nameplate() {
        let t = DateTime::from_timestamp(0, 0).unwrap();
        // Model 160, two modules: shared SFs (DCA -2, DCV -1, DCW 0, DCWH 0), N = 2.
        let mut m = vec![0u16; 8 + 2 * 20];
        m[0] = (-2i16) as u16;
        m[1] = (-1i16) as u16;
        m[6] = 2;
        let (a, b) = (8, 28);
        m[a + 9] = 812; // 8.12 A
        m[a + 10] = 3987; // 398.7 V
        m[a + 11] = 3237; // W
        m[a + 12] = 0x0001; // DCWH = 65537 Wh
        m[a + 13] = 0x0001;
        m[b + 9] = 0xFFFF; // not implemented
        m[b + 10] = 4001;
        m[b + 11] = 100;
        m[b + 13] = 42;
        let got: Vec<(String, String, Kind)> = decode_model(160, &m, "mppt", t, Quality::GOOD)
            .iter()
            .map(|s| (s.channel.to_string(), s.value.to_string(), s.kind))
            .collect();
        assert_eq!(
            got,
            vec![
                ("mppt.1.dc_energy_wh".into(), "65537".into(), Kind::Counter),
                ("mppt.1.dc_power_w".into(), "3237".into(), Kind::Gauge),
                ("mppt.1.dc_voltage_v".into(), "398.7".into(), Kind::Gauge),
                ("mppt.1.dc_current_a".into(), "8.12".into(), Kind::Gauge),
                ("mppt.2.dc_energy_wh".into(), "42".into(), Kind::Counter),
                ("mppt.2.dc_power_w".into(), "100".into(), Kind::Gauge),
                ("mppt.2.dc_voltage_v".into(), "400.1".into(), Kind::Gauge),
            ]
        );
        // Model 802: SoC 87.5 % (SF -1), capacity 10 kWh (WHRtg 100, SF 2), W -1500.
        let mut bat = vec![0u16; 62];
        bat[9] = 875;
        bat[54] = (-1i16) as u16;
        bat[1] = 100;
        bat[51] = 2;
        bat[45] = (-1500i16) as u16;
        bat[11] = 0xFFFF; // SoH not implemented
        bat[32] = 0xFFFF;
        bat[42] = 0x8000;
        let got: Vec<(String, String)> = decode_model(802, &bat, "battery", t, Quality::GOOD)
            .iter()
            .map(|s| (s.channel.to_string(), s.value.to_string()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("battery.soc_pct".into(), "87.5".into()),
                ("battery.capacity_wh".into(), "10000".into()),
                ("battery.power_w".into(), "-1500".into()),
            ]
        );
        // Model 124: ChaState 55 % (SF 0).
        let mut st = vec![0u16; 24];
        st[6] = 55;
        st[8] = 0xFFFF;
        let s = decode_model(124, &st, "storage", t, Quality::GOOD);
        assert_eq!(s.len(), 1);
        assert_eq!(
            (s[0].channel.as_str(), s[0].unit.as_str()),
            ("storage.soc_pct", "%")
        );
        // Model 1: the nameplate.
        let mut common = vec![0u16; 66];
        common[0] = u16::from_be_bytes(*b"SM");
        common[1] = u16::from_be_bytes(*b"A\0");
        common[16] = u16::from_be_bytes(*b"SB");
        common[40] = u16::from_be_bytes(*b"3.");
        common[41] = u16::from_be_bytes(*b"1\0");
        common[48] = u16::from_be_bytes(*b"42");
        let n = nameplate(&common, 3);
        assert_eq!(n.manufacturer.as_deref(), Some("SMA"));
        assert_eq!(n.model.as_deref(), Some("SB"));
        assert_eq!(n.firmware.as_deref(), Some("3.1"));
        assert_eq!(n.serial.as_deref(), Some("42"));
        assert_eq!(n.address.as_deref(), Some("unit 3"));
    }

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
