//! Nameplate data the sources read, gathered for the device's retained meta topic
//! (`gridmeter_core::wire::meta`). Each source reports the meters behind it after every
//! good poll; the forwarder publishes the document when it changed and on every connection.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::Utc;
use gridmeter_core::wire::meta::{DeviceMeta, Meter, VERSION};
use gridmeter_core::DeviceId;
use tokio::sync::watch;

/// One physical meter as a source reports it.
pub type MeterInfo = Meter;

/// The meters of every source, with a change counter the forwarder watches.
#[derive(Clone)]
pub struct MetaBoard {
    meters: Arc<Mutex<BTreeMap<String, Vec<Meter>>>>,
    changed: Arc<watch::Sender<u64>>,
}

impl Default for MetaBoard {
    fn default() -> Self {
        MetaBoard {
            meters: Arc::default(),
            changed: Arc::new(watch::channel(0).0),
        }
    }
}

impl MetaBoard {
    /// Records what source `label` knows of its meters (nothing changes if it is the same).
    pub fn set(&self, label: &str, meters: Vec<Meter>) {
        if meters.is_empty() {
            return;
        }
        let meters: Vec<Meter> = meters
            .into_iter()
            .map(|m| {
                Meter {
                    source: label.to_string(),
                    ..m
                }
                .bounded()
            })
            .collect();
        let mut map = crate::lock(&self.meters);
        if map.get(label) == Some(&meters) {
            return;
        }
        map.insert(label.to_string(), meters);
        drop(map);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Notified whenever the document changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The current document, or `None` while no source has reported a meter.
    pub fn document(&self, device: &DeviceId) -> Option<DeviceMeta> {
        let map = crate::lock(&self.meters);
        if map.is_empty() {
            return None;
        }
        Some(DeviceMeta {
            v: VERSION,
            device_id: device.clone(),
            ts: Utc::now(),
            agent_version: Some(env!("CARGO_PKG_VERSION").to_string()),
            meters: map
                .values()
                .flatten()
                .take(gridmeter_core::wire::meta::MAX_METERS)
                .cloned()
                .collect(),
        })
    }
}
