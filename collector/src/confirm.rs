//! Confirmations to devices: which of their seqs are durable (docs/wire-format.md,
//! "Confirmations").
//!
//! While a WAL record is processed, every seq it carries is noted in a [`Durable`]: new
//! readings, duplicates (already landed earlier, or landing with this segment) and gap
//! records. When the point set by `confirm_after` is reached, the notes of that stretch of
//! the WAL are published, one message per device ([`publish_loop`]):
//!
//! - `landed` (the default): after the segment's files are committed to the data root. The
//!   flusher lands segments strictly in order, so when segment N is committed every seq a
//!   record of segments ≤ N referred to is in the data root, duplicates included.
//! - `wal`: right after the group's fsync. Faster, but a lost collector disk then loses
//!   readings the devices have already deleted.
//!
//! Confirming duplicates again is what makes lost confirmations heal: a device resends
//! what stays unconfirmed, and the resend is confirmed.

use std::collections::BTreeMap;

use gridmeter_core::wire::confirm::{
    confirm_topic_for, Confirmation, SeqRanges, MAX_RANGES_PER_MESSAGE,
};
use gridmeter_core::DeviceId;
use rumqttc::{AsyncClient, QoS};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// When a seq counts as durable and is confirmed to its device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfirmAfter {
    /// Committed to the data root (object store): survives the loss of the collector's disk.
    #[default]
    Landed,
    /// fsync'd in the collector's local WAL.
    Wal,
}

/// Seqs of readings and gap records, per device, that become durable together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Durable {
    by_device: BTreeMap<DeviceId, (SeqRanges, SeqRanges)>,
}

impl Durable {
    /// The readings and gap-record ranges noted for `device`.
    pub fn device(&mut self, device: &DeviceId) -> (&mut SeqRanges, &mut SeqRanges) {
        // No key clone (an allocation) for a device already noted in this stretch.
        if !self.by_device.contains_key(device) {
            self.by_device.insert(device.clone(), Default::default());
        }
        let entry = self.by_device.get_mut(device).expect("inserted just above");
        (&mut entry.0, &mut entry.1)
    }

    /// Whether nothing was noted.
    pub fn is_empty(&self) -> bool {
        self.by_device.is_empty()
    }

    /// Adds everything noted in `other`.
    pub fn merge(&mut self, other: Durable) {
        for (device, (seqs, gaps)) in other.by_device {
            let (s, g) = self.device(&device);
            s.extend(&seqs);
            g.extend(&gaps);
        }
    }

    /// The confirmation messages to publish: per device, split to at most
    /// [`MAX_RANGES_PER_MESSAGE`] ranges each.
    pub fn into_confirmations(self) -> Vec<Confirmation> {
        self.by_device
            .into_iter()
            .flat_map(|(device_id, (seqs, gaps))| {
                Confirmation {
                    device_id,
                    seqs,
                    gaps,
                }
                .split(MAX_RANGES_PER_MESSAGE)
            })
            .filter(|c| !c.is_empty())
            .collect()
    }
}

/// Publishes what arrives on `rx`, one QoS 1 message per device and batch, until the channel
/// closes. A publish that cannot be queued (the client is gone) is dropped with a warning:
/// the device resends what stays unconfirmed, and the resend is confirmed.
pub async fn publish_loop(
    client: AsyncClient,
    mut rx: mpsc::UnboundedReceiver<Durable>,
    metrics: Metrics,
) {
    while let Some(first) = rx.recv().await {
        // Merge what queued up meanwhile: one message per device, not one per segment.
        let mut durable = first;
        while let Ok(more) = rx.try_recv() {
            durable.merge(more);
        }
        for c in durable.into_confirmations() {
            let topic = confirm_topic_for(&c.device_id);
            if let Err(e) = client
                .publish(topic, QoS::AtLeastOnce, false, c.encode())
                .await
            {
                tracing::warn!(device = %c.device_id, "confirmation not sent: {e}");
                continue;
            }
            metrics.confirmations_sent.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_message_per_device_with_merged_ranges() {
        let a = DeviceId::new("a").unwrap();
        let b = DeviceId::new("b").unwrap();
        let mut d = Durable::default();
        for s in 1..=10 {
            d.device(&a).0.push(s);
        }
        d.device(&b).1.push_range(5, 9);
        let mut later = Durable::default();
        later.device(&a).0.push_range(11, 20);
        d.merge(later);
        let c = d.into_confirmations();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].device_id, a);
        assert_eq!(c[0].seqs.ranges(), &[(1, 20)]);
        assert_eq!(c[1].gaps.ranges(), &[(5, 9)]);
        assert!(c[1].seqs.is_empty());
    }
}
