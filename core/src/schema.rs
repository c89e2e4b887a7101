//! Arrow schemas of the tables under `<data_root>/` (see ARCHITECTURE.md and docs/tables.md).
//!
//! Every table is a Delta Lake table. The functions here give the columns of its data files;
//! a partitioned table adds the partition column [`partition_date`] (kept in the Delta log,
//! not in the files), which readers of the table (Spark, DuckDB's `delta_scan`, polars, …)
//! see as the last column ([`with_partition`]).
//!
//! Timestamps are `Timestamp(Microsecond, "UTC")` (Delta `timestamp`); exact values are
//! `Decimal128(38, 9)` ([`crate::decimal::to_scaled_i128`]); sequence numbers are `Int64`
//! (Delta `long`: Delta has no unsigned types, so seqs above 2^63 - 1 are refused at the
//! collector). These schemas are the contract between the collector (writes raw, gaps, dead
//! letters), the aggregator (reads raw, writes usage) and the billing export (reads usage and
//! raw).

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// `Decimal128(38, 9)`: every reading value and usage quantity.
pub const VALUE_TYPE: DataType = DataType::Decimal128(38, crate::model::VALUE_SCALE as i8);

/// `Timestamp(Microsecond, "UTC")`.
pub fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The partition column of the partitioned tables: a UTC date (`raw`: of `ts`; `deadletter`:
/// of `received_at`; the usage tables: of `window_start`).
pub const PARTITION_DATE: &str = "date";

/// The [`PARTITION_DATE`] column: Delta `date`.
pub fn partition_date() -> Field {
    Field::new(PARTITION_DATE, DataType::Date32, false)
}

/// The columns a reader of a partitioned table sees: the file columns, then the partition.
pub fn with_partition(files: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = files.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(partition_date());
    Arc::new(Schema::new(fields))
}

/// Table `raw` (partitioned by the event date of `ts`): one row per accepted reading, exactly
/// once per `(device_id, seq)` once compacted (readers dedup on read before that).
pub fn raw() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("device_id", DataType::Utf8, false),
        Field::new("seq", DataType::Int64, false),
        Field::new("ts", ts_type(), false),
        Field::new("channel", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("unit", DataType::Utf8, false),
        Field::new("value", VALUE_TYPE, false),
        // Comma-separated quality flag names; empty for good readings.
        Field::new("quality", DataType::Utf8, false),
        Field::new("received_at", ts_type(), false),
    ]))
}

/// Table `gaps` (not partitioned): seq ranges known to be lost (reported by agents) or not
/// yet seen (detected by the collector).
pub fn gaps() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("device_id", DataType::Utf8, false),
        Field::new("from_seq", DataType::Int64, false),
        Field::new("to_seq", DataType::Int64, false),
        // buffer_full, buffer_corrupt (agent) or missing (collector)
        Field::new("reason", DataType::Utf8, false),
        Field::new("recorded_at", ts_type(), false),
    ]))
}

/// Table `deadletter` (partitioned by the date of `received_at`): what could not be
/// accepted, with why.
pub fn dead_letter() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("received_at", ts_type(), false),
        Field::new("topic", DataType::Utf8, false),
        // Stable label, e.g. bad_json, device_mismatch, bad_ts.
        Field::new("reason", DataType::Utf8, false),
        // Full message naming the field and index.
        Field::new("detail", DataType::Utf8, false),
        // The whole payload for batch-level errors, the element for reading-level ones.
        Field::new("payload", DataType::Binary, false),
    ]))
}

/// Table `devices` (not partitioned): the physical meters behind each device's channels,
/// one row per meter of the device's latest metadata document (`crate::wire::meta`).
pub fn devices() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("device_id", DataType::Utf8, false),
        // Position of the meter in the device's document, from 0.
        Field::new("meter", DataType::Int32, false),
        // The agent's source and its protocol (modbus_tcp, sunspec, mbus, ...).
        Field::new("source", DataType::Utf8, false),
        Field::new("protocol", DataType::Utf8, false),
        Field::new("address", DataType::Utf8, true),
        Field::new("manufacturer", DataType::Utf8, true),
        Field::new("model", DataType::Utf8, true),
        Field::new("serial", DataType::Utf8, true),
        Field::new("firmware", DataType::Utf8, true),
        // Comma-separated names of the channels this meter's readings arrive on (channel
        // names never hold a comma), in the document's order.
        Field::new("channels", DataType::Utf8, false),
        Field::new("agent_version", DataType::Utf8, true),
        // When the device last changed its document, and when the collector received it.
        Field::new("meta_ts", ts_type(), false),
        Field::new("received_at", ts_type(), false),
    ]))
}

/// Table `exceptions` (partitioned by the date of `window_start`): one row per validation
/// failure the aggregator found in a usage window (written with the usage revision it
/// flagged). `rule` is the rule's name (high_limit, low_limit, spike, stuck, negative,
/// implausible_rollover, timestamp_gap, gauge_range); `action` is `flag` (the value was kept)
/// or `estimate` (the value was replaced by an estimate).
pub fn exceptions() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("device_id", DataType::Utf8, false),
        Field::new("channel", DataType::Utf8, false),
        Field::new("window", DataType::Utf8, false),
        Field::new("window_start", ts_type(), false),
        Field::new("window_end", ts_type(), false),
        Field::new("rule", DataType::Utf8, false),
        // info, warning or critical (configured per rule)
        Field::new("severity", DataType::Utf8, false),
        Field::new("observed", VALUE_TYPE, true),
        Field::new("threshold", VALUE_TYPE, true),
        Field::new("action", DataType::Utf8, false),
        // The usage row's revision this failure was found in.
        Field::new("revision", DataType::Int64, false),
        Field::new("detected_at", ts_type(), false),
    ]))
}

/// Table `edits` (not partitioned): the audit trail of billing-team edits. An edit sets
/// (`action` = `set`, `value` per window) or scales (`scale`, `value` the factor) the usage
/// of one device channel's windows of size `window` in `[from, to)`; the aggregator applies
/// every edit at every (re)computation, so edits survive a rebuild.
pub fn edits() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("edit_id", DataType::Int64, false),
        Field::new("device_id", DataType::Utf8, false),
        Field::new("channel", DataType::Utf8, false),
        Field::new("window", DataType::Utf8, false),
        Field::new("from", ts_type(), false),
        Field::new("to", ts_type(), false),
        Field::new("action", DataType::Utf8, false),
        Field::new("value", VALUE_TYPE, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("who", DataType::Utf8, false),
        Field::new("at", ts_type(), false),
    ]))
}

/// Tables `usage_history_<window>` (one row per (device_id, channel, window_start, revision):
/// every revision, the audit record) and `usage_<window>` (the current revision of every
/// key, one row per key), written by the aggregator, partitioned by the date of
/// `window_start`. `usage` is set for counter and delta channels; `min`, `max`, `avg`
/// (time-weighted) and `last` for gauges. `flags` is a comma-separated, sorted list of flag
/// names (`gridmeter_tables::Flags`: clock_suspect, edited, estimated, gap, interpolated, late,
/// method_*, reset, rollover, rule_*).
pub fn usage() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("device_id", DataType::Utf8, false),
        Field::new("channel", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("unit", DataType::Utf8, false),
        // "15m", "1h", "1d"
        Field::new("window", DataType::Utf8, false),
        Field::new("window_start", ts_type(), false),
        Field::new("window_end", ts_type(), false),
        Field::new("usage", VALUE_TYPE, true),
        Field::new("min", VALUE_TYPE, true),
        Field::new("max", VALUE_TYPE, true),
        Field::new("avg", VALUE_TYPE, true),
        Field::new("last", VALUE_TYPE, true),
        Field::new("readings", DataType::Int64, false),
        Field::new("first_ts", ts_type(), true),
        Field::new("last_ts", ts_type(), true),
        // Fraction of the window covered by data, 0..1.
        Field::new("coverage", VALUE_TYPE, false),
        Field::new("flags", DataType::Utf8, false),
        Field::new("revision", DataType::Int64, false),
        Field::new("computed_at", ts_type(), false),
    ]))
}
