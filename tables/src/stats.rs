//! Per-file statistics in the Delta log (`add.stats`): row count and, for the table's stats
//! columns, min, max and null count. Every Delta reader uses them to skip files.
//!
//! Timestamps are written with millisecond precision as the protocol has it, the minimum
//! rounded down and the maximum rounded up, so the bounds stay true bounds.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type, TimestampMicrosecondType};
use serde_json::{json, Map, Value};

use crate::TableError;

/// The statistics of one data file, as read back from the log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileStats {
    pub num_records: Option<u64>,
    pub min: Map<String, Value>,
    pub max: Map<String, Value>,
}

impl FileStats {
    /// Parses `add.stats`; unreadable statistics are treated as absent.
    pub fn parse(text: &str) -> FileStats {
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            return FileStats::default();
        };
        let obj = |k: &str| {
            v.get(k)
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default()
        };
        FileStats {
            num_records: v.get("numRecords").and_then(Value::as_u64),
            min: obj("minValues"),
            max: obj("maxValues"),
        }
    }

    /// The min and max of a string column, if recorded.
    pub fn str_range(&self, column: &str) -> Option<(&str, &str)> {
        Some((
            self.min.get(column)?.as_str()?,
            self.max.get(column)?.as_str()?,
        ))
    }

    /// The min and max of a timestamp column in µs, if recorded (ms precision: the min is a
    /// lower bound and the max an upper bound).
    pub fn ts_range(&self, column: &str) -> Option<(i64, i64)> {
        let parse = |v: &Value| {
            chrono::DateTime::parse_from_rfc3339(v.as_str()?)
                .ok()
                .map(|t| t.timestamp_micros())
        };
        Some((parse(self.min.get(column)?)?, parse(self.max.get(column)?)?))
    }

    /// Whether a file with these statistics may hold a row with `device_id` in `devices`.
    pub fn may_hold_device<'a>(&self, mut devices: impl Iterator<Item = &'a str>) -> bool {
        match self.str_range("device_id") {
            Some((lo, hi)) => devices.any(|d| lo <= d && d <= hi),
            None => true,
        }
    }
}

fn ts_text(us: i64, round_up: bool) -> Value {
    let ms = if round_up {
        us.div_euclid(1000) + i64::from(us.rem_euclid(1000) != 0)
    } else {
        us.div_euclid(1000)
    };
    let t = chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default();
    Value::from(t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
}

/// The `add.stats` JSON of a batch: `numRecords`, and min/max/nullCount of `columns`
/// (strings, integers, timestamps).
pub fn of_batch(batch: &RecordBatch, columns: &[&str]) -> Result<String, TableError> {
    let (mut min, mut max, mut nulls) = (Map::new(), Map::new(), Map::new());
    for name in columns {
        let Some(col) = batch.column_by_name(name) else {
            continue;
        };
        nulls.insert(name.to_string(), json!(col.null_count()));
        let (lo, hi) = match col.data_type() {
            DataType::Utf8 => {
                let a = col.as_string::<i32>();
                match (arrow::compute::min_string(a), arrow::compute::max_string(a)) {
                    (Some(lo), Some(hi)) => (Value::from(lo), Value::from(hi)),
                    _ => continue,
                }
            }
            DataType::Int64 => {
                let a = col.as_primitive::<Int64Type>();
                match (arrow::compute::min(a), arrow::compute::max(a)) {
                    (Some(lo), Some(hi)) => (Value::from(lo), Value::from(hi)),
                    _ => continue,
                }
            }
            DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, _) => {
                let a = col.as_primitive::<TimestampMicrosecondType>();
                match (arrow::compute::min(a), arrow::compute::max(a)) {
                    (Some(lo), Some(hi)) => (ts_text(lo, false), ts_text(hi, true)),
                    _ => continue,
                }
            }
            _ => continue,
        };
        min.insert(name.to_string(), lo);
        max.insert(name.to_string(), hi);
    }
    Ok(json!({
        "numRecords": batch.num_rows(),
        "minValues": min,
        "maxValues": max,
        "nullCount": nulls,
    })
    .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_bounds_stay_bounds() {
        assert_eq!(ts_text(1_500, false), "1970-01-01T00:00:00.001Z");
        assert_eq!(ts_text(1_500, true), "1970-01-01T00:00:00.002Z");
        assert_eq!(ts_text(2_000, true), "1970-01-01T00:00:00.002Z");
        let s = FileStats::parse(
            r#"{"numRecords":3,"minValues":{"device_id":"a","ts":"1970-01-01T00:00:00.001Z"},"maxValues":{"device_id":"c","ts":"1970-01-01T00:00:00.002Z"}}"#,
        );
        assert_eq!(s.num_records, Some(3));
        assert_eq!(s.ts_range("ts"), Some((1_000, 2_000)));
        assert!(s.may_hold_device(["b"].into_iter()));
        assert!(!s.may_hold_device(["d"].into_iter()));
    }
}
