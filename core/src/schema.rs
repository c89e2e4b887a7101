//! Arrow schemas of the tables under `<data_root>/` (see ARCHITECTURE.md).
//!
//! Timestamps are `Timestamp(Microsecond, "UTC")`; exact values are `Decimal128(38, 9)`
//! ([`crate::decimal::to_scaled_i128`]). These schemas are the contract between the collector
//! (writes raw, gaps, dead letters), the aggregator (reads raw, writes usage) and the billing
//! export (reads usage and raw).

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// `Decimal128(38, 9)`: every reading value and usage quantity.
pub const VALUE_TYPE: DataType = DataType::Decimal128(38, crate::model::VALUE_SCALE as i8);

/// `Timestamp(Microsecond, "UTC")`.
pub fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// `<data_root>/raw/date=YYYY-MM-DD/*.parquet`: one row per accepted reading, exactly once
/// per `(device_id, seq)`.
pub fn raw() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("device_id", DataType::Utf8, false),
        Field::new("seq", DataType::UInt64, false),
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

/// `<data_root>/gaps/*.parquet`: seq ranges known to be lost (reported by agents) or not
/// yet seen (detected by the collector).
pub fn gaps() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("device_id", DataType::Utf8, false),
        Field::new("from_seq", DataType::UInt64, false),
        Field::new("to_seq", DataType::UInt64, false),
        // buffer_full, buffer_corrupt (agent) or missing (collector)
        Field::new("reason", DataType::Utf8, false),
        Field::new("recorded_at", ts_type(), false),
    ]))
}

/// `<data_root>/deadletter/date=YYYY-MM-DD/*.parquet`: what could not be accepted, with why.
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

/// `<data_root>/usage/<window>/…`: one row per (device_id, channel, window_start, revision),
/// written by the aggregator. `usage` is set for counter and delta channels; `min`, `max`,
/// `avg` (time-weighted) and `last` for gauges. `flags` is a comma-separated, sorted list of
/// quality flags (gap, interpolated, rollover, reset, late, estimated, clock_suspect).
/// The latest `revision` of a key is the current one; earlier ones are kept for audit.
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
