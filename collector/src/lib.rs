//! gridmeter-collector: where a reading becomes the company's record.
//!
//! A message travels through the collector like this:
//!
//! 1. [`mqtt`] receives it (QoS 1, persistent session, **manual acks**), optionally on a
//!    shared subscription `$share/{group}/gridmeter/v1/+/readings`.
//! 2. The ingest thread appends `(received_at, topic, payload)` to the write-ahead log
//!    ([`wal`]), fsyncs once per group of messages (group commit), and only then acks the
//!    whole group to the broker. A crash before the fsync means the broker redelivers.
//! 3. The same thread decodes and validates the record ([`process`]): bad messages and bad
//!    readings become dead letters, good readings are deduplicated by `(device_id, seq)`
//!    ([`dedup`]) and buffered with the WAL segment they came from.
//! 4. When a segment is sealed, the landing ([`landing`]) writes its Parquet files under
//!    deterministic names (`<collector>-<segment>-<part>`), commits them, then writes an
//!    atomic checkpoint of the dedup state ([`checkpoint`]), then deletes the segment. Two
//!    threads pipeline it: the stager writes segment N + 1's raw files while the flusher
//!    commits segment N; commits stay in segment order. Replaying a segment after a
//!    crash re-derives exactly the same files from the same WAL bytes and the same
//!    checkpointed state, so a crash anywhere neither loses nor duplicates a reading.
//! 5. Then ([`confirm`]) each device is told which of its seqs are now durable, on
//!    `gridmeter/v1/{device_id}/confirm`; only then may the agent delete them.
//!
//! With several collectors on one shared subscription, per-collector dedup cannot see a
//! duplicate that went to the other collector; [`compact`] rewrites a date partition
//! deduplicated, and readers dedup on read (see the crate README). [`retention`] prunes old
//! dead letters.

pub mod broker;
pub mod checkpoint;
pub mod compact;
pub mod config;
pub mod confirm;
pub mod dedup;
pub mod landing;
pub mod metrics;
pub mod mqtt;
pub mod process;
pub mod retention;
mod run;
pub mod wal;

pub use broker::EmbeddedBroker;
pub use config::CollectorConfig;
pub use run::{run, CollectorError};
