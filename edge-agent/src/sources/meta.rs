//! Nameplate data the sources read, gathered for the device's retained meta topic
//! (`gridmeter_core::wire::meta`). Each source reports the meters behind it after every
//! good poll; the forwarder publishes the document when it changed and on every connection.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use gridmeter_core::wire::meta::{DeviceMeta, Meter, VERSION};
use gridmeter_core::DeviceId;
use tokio::sync::watch;

/// One physical meter as a source reports it.
pub type MeterInfo = Meter;

/// The meters by source, and when they last changed.
type Board = (BTreeMap<String, Vec<Meter>>, DateTime<Utc>);

/// The meters of every source, with a change counter the forwarder watches.
#[derive(Clone)]
pub struct MetaBoard {
    meters: Arc<Mutex<Board>>,
    changed: Arc<watch::Sender<u64>>,
}

impl Default for MetaBoard {
    fn default() -> Self {
        MetaBoard {
            meters: Arc::new(Mutex::new((BTreeMap::new(), Utc::now()))),
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
        let mut board = crate::lock(&self.meters);
        if board.0.get(label) == Some(&meters) {
            return;
        }
        board.0.insert(label.to_string(), meters);
        board.1 = Utc::now();
        drop(board);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Notified whenever the document changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The current document, or `None` while no source has reported a meter.
    pub fn document(&self, device: &DeviceId) -> Option<DeviceMeta> {
        let board = crate::lock(&self.meters);
        let (map, changed) = &*board;
        if map.is_empty() {
            return None;
        }
        Some(DeviceMeta {
            v: VERSION,
            device_id: device.clone(),
            ts: *changed,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_announced_once_and_stamped_when_it_happened() {
        let board = MetaBoard::default();
        let dev = DeviceId::new("site-1").unwrap();
        assert_eq!(board.document(&dev), None);
        let rx = board.subscribe();
        let meter = Meter {
            protocol: "mbus".into(),
            serial: Some("12345678".into()),
            ..Meter::default()
        };
        board.set("heat", vec![meter.clone()]);
        let first = board.document(&dev).unwrap();
        board.set("heat", vec![meter.clone()]);
        assert_eq!(*rx.borrow(), 1, "the same meters again change nothing");
        assert_eq!(board.document(&dev).unwrap().ts, first.ts);
        assert_eq!(first.meters[0].source, "heat");
        board.set(
            "heat",
            vec![Meter {
                firmware: Some("2".into()),
                ..meter
            }],
        );
        assert_eq!(*rx.borrow(), 2);
    }
}
