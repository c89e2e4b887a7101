//! Compaction of a raw date partition: one row per `(device_id, seq)`.
//!
//! Why it exists: with several collectors on a shared subscription, an agent that
//! republishes after its own crash can have the two copies of a message delivered to two
//! different collectors. Each collector dedups only what it saw, so the raw table can hold
//! the reading twice (readers deduplicate on read meanwhile). Compaction rewrites the
//! partition keeping, per `(device_id, seq)`, the row with the earliest `received_at`.
//!
//! Commit protocol: one Delta commit (an OPTIMIZE) removes the partition's files and adds
//! the deduplicated ones; every reader sees either the old files or the new ones, never a
//! missing or doubled reading from compaction. Files collectors add meanwhile are not
//! inputs and stay. Re-running compaction (e.g. after a crash before its commit) is harmless:
//! the files it wrote and did not commit are invisible and deleted by vacuum.
//!
//! Production mitigation: EMQX's `hash_topic` shared-subscription strategy sends a topic
//! (= a device) always to the same collector, so cross-collector duplicates only occur when
//! group membership changes.

use chrono::NaiveDate;

pub use gridmeter_tables::raw::CompactStats;

use crate::landing::{Landing, LandingError};

/// Rewrites the raw partition of `date` deduplicated by `(device_id, seq)`, keeping the
/// earliest `received_at`, in one commit. Holds the partition in memory.
pub async fn compact_date(
    landing: &Landing,
    date: NaiveDate,
) -> Result<CompactStats, LandingError> {
    Ok(gridmeter_tables::raw::compact_date(landing.raw(), date).await?)
}
