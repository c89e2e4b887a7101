//! Device metadata: which physical meters stand behind a device's channels.
//!
//! A device publishes one JSON document, **retained**, QoS 1, on
//! `gridmeter/v1/{device_id}/meta` ([`meta_topic_for`]) whenever what it knows about its
//! meters changes (and again on every connection): the nameplate data (manufacturer, model,
//! serial number, firmware) its sources read from the meters, where the protocol offers it
//! (SunSpec model 1, Modbus driver registers, the M-Bus/wM-Bus header, the IEC 62056-21
//! identification, DLMS logical device name). Being retained, the last document per device
//! is what a collector gets when it subscribes ([`META_TOPIC_FILTER`]).
//!
//! ```json
//! {"v":1,"device_id":"site-7","ts":"2026-11-30T12:00:00Z","agent_version":"0.1.0",
//!  "meters":[{"source":"bus1","protocol":"modbus_rtu","address":"unit 3",
//!             "manufacturer":"Eastron","model":"SDM630","serial":"20123456",
//!             "firmware":null,"channels":["flat3.energy_import_wh","flat3.power_w"]}]}
//! ```
//!
//! Every string is at most [`MAX_TEXT`] characters, a document lists at most
//! [`MAX_METERS`] meters with at most [`MAX_CHANNELS`] channel names each and is at most
//! [`MAX_PAYLOAD_BYTES`] long; [`decode`] refuses anything else with a short message.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::DeviceId;

/// Version of the metadata document.
pub const VERSION: u32 = 1;
/// Subscription filter covering every device's metadata.
pub const META_TOPIC_FILTER: &str = "gridmeter/v1/+/meta";
/// Longest text field, in characters.
pub const MAX_TEXT: usize = 64;
/// Most meters in one document.
pub const MAX_METERS: usize = 256;
/// Most channel names per meter.
pub const MAX_CHANNELS: usize = 512;
/// Largest document accepted.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

/// The topic a device publishes its metadata on.
pub fn meta_topic_for(device: &DeviceId) -> String {
    format!("{}{device}/meta", super::TOPIC_PREFIX)
}

/// The device a metadata topic belongs to.
pub fn device_from_meta_topic(topic: &str) -> Option<DeviceId> {
    let id = topic
        .strip_prefix(super::TOPIC_PREFIX)?
        .strip_suffix("/meta")?;
    DeviceId::new(id).ok()
}

/// One device's metadata document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceMeta {
    /// [`VERSION`].
    pub v: u32,
    pub device_id: DeviceId,
    /// When the device last changed this document (UTC).
    pub ts: DateTime<Utc>,
    /// The agent's version, when a gridmeter agent sent it.
    #[serde(default)]
    pub agent_version: Option<String>,
    pub meters: Vec<Meter>,
}

/// One physical meter behind some of the device's channels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meter {
    /// The agent's source (its configured name, or the source type).
    pub source: String,
    /// `modbus_tcp`, `modbus_rtu`, `modbus_rtu_over_tcp`, `sunspec`, `mbus`, `wmbus`,
    /// `iec62056`, `dlms`.
    pub protocol: String,
    /// Where on the bus (`unit 3`, `primary 5`, `secondary 12345678`), if the bus has addresses.
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub manufacturer: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub serial: Option<String>,
    #[serde(default)]
    pub firmware: Option<String>,
    /// The channels this meter's readings arrive on.
    #[serde(default)]
    pub channels: Vec<String>,
}

impl Meter {
    /// Text fields cut to [`MAX_TEXT`] characters and control characters removed, channel
    /// list cut to [`MAX_CHANNELS`]: what a device may send.
    pub fn bounded(mut self) -> Meter {
        let cut = |s: &mut String| {
            *s = s
                .chars()
                .filter(|c| !c.is_control())
                .take(MAX_TEXT)
                .collect::<String>()
                .trim()
                .to_string();
        };
        cut(&mut self.source);
        cut(&mut self.protocol);
        for f in [
            &mut self.address,
            &mut self.manufacturer,
            &mut self.model,
            &mut self.serial,
            &mut self.firmware,
        ] {
            if let Some(s) = f.as_mut() {
                cut(s);
            }
            if f.as_deref() == Some("") {
                *f = None;
            }
        }
        self.channels.truncate(MAX_CHANNELS);
        self
    }
}

/// A metadata document that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    #[error("metadata payload of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("metadata is not a v1 document: {0}")]
    Json(String),
    #[error("metadata version {0} is not supported")]
    Version(u32),
    #[error("metadata for device {found} arrived on the topic of {topic}")]
    WrongDevice { found: DeviceId, topic: DeviceId },
    #[error("metadata breaks a limit: {0}")]
    Limit(String),
}

/// Encodes a document (JSON).
pub fn encode(meta: &DeviceMeta) -> Vec<u8> {
    serde_json::to_vec(meta).unwrap_or_default()
}

/// Decodes and checks a document published on `topic_device`'s meta topic.
pub fn decode(payload: &[u8], topic_device: &DeviceId) -> Result<DeviceMeta, MetaError> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(MetaError::TooLarge(payload.len()));
    }
    let meta: DeviceMeta = serde_json::from_slice(payload).map_err(|e| {
        let text = e.to_string();
        MetaError::Json(text.chars().take(200).collect())
    })?;
    if meta.v != VERSION {
        return Err(MetaError::Version(meta.v));
    }
    if &meta.device_id != topic_device {
        return Err(MetaError::WrongDevice {
            found: meta.device_id,
            topic: topic_device.clone(),
        });
    }
    if meta.meters.len() > MAX_METERS {
        return Err(MetaError::Limit(format!(
            "{} meters (at most {MAX_METERS})",
            meta.meters.len()
        )));
    }
    for (i, m) in meta.meters.iter().enumerate() {
        let texts = [
            Some(&m.source),
            Some(&m.protocol),
            m.address.as_ref(),
            m.manufacturer.as_ref(),
            m.model.as_ref(),
            m.serial.as_ref(),
            m.firmware.as_ref(),
        ];
        if texts
            .into_iter()
            .flatten()
            .any(|s| s.chars().count() > MAX_TEXT)
        {
            return Err(MetaError::Limit(format!(
                "meters[{i}] has a text longer than {MAX_TEXT} characters"
            )));
        }
        if m.channels.len() > MAX_CHANNELS {
            return Err(MetaError::Limit(format!(
                "meters[{i}] lists {} channels (at most {MAX_CHANNELS})",
                m.channels.len()
            )));
        }
        if let Some(c) = m
            .channels
            .iter()
            .find(|c| crate::Channel::new(c.as_str()).is_err())
        {
            return Err(MetaError::Limit(format!(
                "meters[{i}] names an invalid channel {}",
                crate::text::excerpt(c)
            )));
        }
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> DeviceMeta {
        DeviceMeta {
            v: VERSION,
            device_id: DeviceId::new("site-7").unwrap(),
            ts: DateTime::from_timestamp(1_796_000_000, 0).unwrap(),
            agent_version: Some("0.1.0".into()),
            meters: vec![Meter {
                source: "bus1".into(),
                protocol: "modbus_rtu".into(),
                address: Some("unit 3".into()),
                manufacturer: Some("Eastron".into()),
                model: Some("SDM630".into()),
                serial: Some("20123456".into()),
                firmware: None,
                channels: vec!["flat3.energy_import_wh".into()],
            }],
        }
    }

    #[test]
    fn round_trips_and_checks_the_topic() {
        let d = doc();
        let dev = d.device_id.clone();
        assert_eq!(meta_topic_for(&dev), "gridmeter/v1/site-7/meta");
        assert_eq!(
            device_from_meta_topic("gridmeter/v1/site-7/meta"),
            Some(dev.clone())
        );
        assert_eq!(device_from_meta_topic("gridmeter/v1/site-7/readings"), None);
        assert_eq!(decode(&encode(&d), &dev).unwrap(), d);
        let other = DeviceId::new("site-8").unwrap();
        assert!(matches!(
            decode(&encode(&d), &other),
            Err(MetaError::WrongDevice { .. })
        ));
    }

    #[test]
    fn hostile_documents_are_refused_briefly() {
        let dev = DeviceId::new("site-7").unwrap();
        let mut d = doc();
        d.meters[0].serial = Some("x".repeat(10_000));
        let e = decode(&encode(&d), &dev).unwrap_err().to_string();
        assert!(e.len() < 200, "{e}");
        let mut d = doc();
        d.meters[0].channels = vec!["Bad Channel".into()];
        assert!(matches!(
            decode(&encode(&d), &dev),
            Err(MetaError::Limit(_))
        ));
        let e = decode(&vec![b'['; 5000], &dev).unwrap_err().to_string();
        assert!(e.len() < 300, "{e}");
        assert!(matches!(
            decode(&vec![b' '; MAX_PAYLOAD_BYTES + 1], &dev),
            Err(MetaError::TooLarge(_))
        ));
        let bounded = Meter {
            serial: Some(format!("{}\u{0}", "9".repeat(100))),
            model: Some(" ".into()),
            ..Meter::default()
        }
        .bounded();
        assert_eq!(bounded.serial.unwrap().len(), MAX_TEXT);
        assert_eq!(bounded.model, None);
    }
}
