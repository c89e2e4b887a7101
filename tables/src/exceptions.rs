//! Table `exceptions`: one row per validation failure the aggregator found in a usage window
//! (device, channel, window, rule, observed value, threshold, severity, what was done, the
//! usage revision it was found in, when), partitioned by the date of `window_start`. The
//! aggregator appends a window's failures in the run that writes that window's row (new or
//! revised), with the transaction id `(app, version)` of the run, so a rebuild over unchanged
//! raw adds nothing and a retried run adds nothing twice.
//!
//! [`Rule`] is the list of rules, each with its flag on the usage row (`rule_*`, see
//! [`crate::flags`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Decimal128Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{Decimal128Type, Int64Type, TimestampMicrosecondType};
use chrono::NaiveDate;
use gridmeter_core::schema;

use crate::delta::{NewFile, Table, TableSpec};
use crate::flags::Flags;
use crate::parquet_io::Profile;
use crate::raw::date_of;
use crate::root::Root;
use crate::TableError;

/// The table's directory under the data root.
pub const TABLE: &str = "exceptions";

/// The layout of `exceptions`.
pub fn spec() -> TableSpec {
    TableSpec {
        name: TABLE.into(),
        schema: schema::exceptions(),
        partitioned: true,
        append_only: true,
        stats_columns: &["device_id", "channel", "window_start", "rule"],
        log_retention: "interval 30 days",
    }
}

/// Opens (creates) `exceptions` under `root`.
pub async fn open(root: &Root) -> Result<Table, TableError> {
    Table::open(root, spec()).await
}

/// A validation rule (the aggregator's `[[vee.rules]]`, `rule = "<name>"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// Interval usage above `max`.
    HighLimit,
    /// Interval usage below `min`.
    LowLimit,
    /// Interval usage above `factor` × the median of the trailing intervals.
    Spike,
    /// No register change for `hours` while the class expects usage.
    Stuck,
    /// Negative interval usage (decreasing register, reverse flow).
    Negative,
    /// A rollover window with usage above `max`.
    ImplausibleRollover,
    /// Readings further apart than `max_gap`.
    TimestampGap,
    /// A gauge reading outside `[min, max]`.
    GaugeRange,
}

impl Rule {
    /// Every rule.
    pub const ALL: [Rule; 8] = [
        Rule::HighLimit,
        Rule::LowLimit,
        Rule::Spike,
        Rule::Stuck,
        Rule::Negative,
        Rule::ImplausibleRollover,
        Rule::TimestampGap,
        Rule::GaugeRange,
    ];

    /// Its name in the config and the `rule` column.
    pub fn name(self) -> &'static str {
        match self {
            Rule::HighLimit => "high_limit",
            Rule::LowLimit => "low_limit",
            Rule::Spike => "spike",
            Rule::Stuck => "stuck",
            Rule::Negative => "negative",
            Rule::ImplausibleRollover => "implausible_rollover",
            Rule::TimestampGap => "timestamp_gap",
            Rule::GaugeRange => "gauge_range",
        }
    }

    /// The rule of a name.
    pub fn from_name(name: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|r| r.name() == name)
    }

    /// Its flag on the usage row.
    pub fn flag(self) -> Flags {
        match self {
            Rule::HighLimit => Flags::RULE_HIGH_LIMIT,
            Rule::LowLimit => Flags::RULE_LOW_LIMIT,
            Rule::Spike => Flags::RULE_SPIKE,
            Rule::Stuck => Flags::RULE_STUCK,
            Rule::Negative => Flags::RULE_NEGATIVE,
            Rule::ImplausibleRollover => Flags::RULE_ROLLOVER,
            Rule::TimestampGap => Flags::RULE_TIMESTAMP_GAP,
            Rule::GaugeRange => Flags::RULE_GAUGE_RANGE,
        }
    }
}

/// The severity of a failure (the rule's `severity`, column `severity`), in increasing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// `info`.
    Info,
    /// `warning` (a rule's default).
    Warning,
    /// `critical`.
    Critical,
}

impl Severity {
    /// Every severity, lowest first.
    pub const ALL: [Severity; 3] = [Severity::Info, Severity::Warning, Severity::Critical];

    /// Its name in the config and the `severity` column.
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    /// The severity of a name.
    pub fn from_name(name: &str) -> Option<Severity> {
        Severity::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// One validation failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExceptionRow {
    /// The device.
    pub device_id: String,
    /// Its channel.
    pub channel: String,
    /// The window table (`15m`): the smallest configured window size.
    pub window: String,
    /// The interval's start, µs.
    pub window_start: i64,
    /// The interval's end, µs.
    pub window_end: i64,
    /// [`Rule::name`].
    pub rule: String,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    /// The value the rule looked at (scaled `Decimal128(38, 9)`).
    pub observed: Option<i128>,
    /// The limit it broke (scaled).
    pub threshold: Option<i128>,
    /// `flag` (kept) or `estimate` (replaced by an estimate).
    pub action: String,
    /// The revision of the usage row written with this failure.
    pub revision: i64,
    /// µs since the epoch.
    pub detected_at: i64,
}

fn ts(v: impl IntoIterator<Item = i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from_iter_values(v).with_timezone("UTC"))
}

fn dec(v: impl IntoIterator<Item = Option<i128>>) -> Result<ArrayRef, TableError> {
    Ok(Arc::new(
        Decimal128Array::from_iter(v).with_precision_and_scale(38, 9)?,
    ))
}

/// Rows as a batch of `schema::exceptions()`.
pub fn to_batch(rows: &[ExceptionRow]) -> Result<RecordBatch, TableError> {
    let s = |f: fn(&ExceptionRow) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
    };
    let columns: Vec<ArrayRef> = vec![
        s(|r| &r.device_id),
        s(|r| &r.channel),
        s(|r| &r.window),
        ts(rows.iter().map(|r| r.window_start)),
        ts(rows.iter().map(|r| r.window_end)),
        s(|r| &r.rule),
        s(|r| &r.severity),
        dec(rows.iter().map(|r| r.observed))?,
        dec(rows.iter().map(|r| r.threshold))?,
        s(|r| &r.action),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.revision),
        )),
        ts(rows.iter().map(|r| r.detected_at)),
    ];
    Ok(RecordBatch::try_new(schema::exceptions(), columns)?)
}

fn data_error(message: String) -> TableError {
    TableError::Data {
        table: TABLE.into(),
        message,
    }
}

/// The inverse of [`to_batch`].
pub fn from_batch(b: &RecordBatch) -> Result<Vec<ExceptionRow>, TableError> {
    let col = |n: &str| {
        b.column_by_name(n)
            .ok_or_else(|| data_error(format!("column {n} missing")))
    };
    let s = |n: &str| -> Result<StringArray, TableError> {
        Ok(
            arrow::compute::cast(col(n)?, &arrow::datatypes::DataType::Utf8)?
                .as_string::<i32>()
                .clone(),
        )
    };
    let t = |n: &str| -> Result<TimestampMicrosecondArray, TableError> {
        col(n)?
            .as_primitive_opt::<TimestampMicrosecondType>()
            .cloned()
            .ok_or_else(|| data_error(format!("column {n} is not a timestamp")))
    };
    let d = |n: &str| -> Result<Decimal128Array, TableError> {
        col(n)?
            .as_primitive_opt::<Decimal128Type>()
            .cloned()
            .ok_or_else(|| data_error(format!("column {n} is not a decimal")))
    };
    let (device, channel, window, rule, severity, action) = (
        s("device_id")?,
        s("channel")?,
        s("window")?,
        s("rule")?,
        s("severity")?,
        s("action")?,
    );
    let (start, end, detected) = (t("window_start")?, t("window_end")?, t("detected_at")?);
    let (observed, threshold) = (d("observed")?, d("threshold")?);
    let revision = col("revision")?
        .as_primitive_opt::<Int64Type>()
        .cloned()
        .ok_or_else(|| data_error("column revision is not a long".into()))?;
    let opt = |a: &Decimal128Array, i: usize| a.is_valid(i).then(|| a.value(i));
    Ok((0..b.num_rows())
        .map(|i| ExceptionRow {
            device_id: device.value(i).into(),
            channel: channel.value(i).into(),
            window: window.value(i).into(),
            window_start: start.value(i),
            window_end: end.value(i),
            rule: rule.value(i).into(),
            severity: severity.value(i).into(),
            observed: opt(&observed, i),
            threshold: opt(&threshold, i),
            action: action.value(i).into(),
            revision: revision.value(i),
            detected_at: detected.value(i),
        })
        .collect())
}

/// Appends `rows` exactly once for `(app, version)`: one file per date partition.
pub async fn append(
    table: &Table,
    app: &str,
    version: i64,
    mut rows: Vec<ExceptionRow>,
) -> Result<Option<i64>, TableError> {
    if rows.is_empty() {
        return Ok(None);
    }
    rows.sort_by(|a, b| {
        (&a.device_id, &a.channel, a.window_start, &a.rule).cmp(&(
            &b.device_id,
            &b.channel,
            b.window_start,
            &b.rule,
        ))
    });
    let mut by_date: BTreeMap<NaiveDate, Vec<ExceptionRow>> = BTreeMap::new();
    for r in rows {
        by_date.entry(date_of(r.window_start)).or_default().push(r);
    }
    let files = by_date
        .into_iter()
        .map(|(date, rows)| {
            Ok(NewFile {
                path: format!("date={date}/{app}-{version:012}.parquet"),
                date: Some(date),
                batch: to_batch(&rows)?,
                tags: vec![(crate::usage::TAG_APP, app.to_string())],
            })
        })
        .collect::<Result<Vec<_>, TableError>>()?;
    Ok(table
        .append_once(app, version, files, Profile::Standard, "")
        .await?
        .version)
}

/// Every row of the table, sorted by (device, channel, window_start, rule, revision).
pub async fn read_all(table: &Table) -> Result<Vec<ExceptionRow>, TableError> {
    let snapshot = table.snapshot().await?;
    let mut out = Vec::new();
    for f in snapshot.files() {
        for b in table.read_file(&f, None).await? {
            out.extend(from_batch(&b)?);
        }
    }
    out.sort_by(|a, b| {
        (
            &a.device_id,
            &a.channel,
            a.window_start,
            &a.rule,
            a.revision,
        )
            .cmp(&(
                &b.device_id,
                &b.channel,
                b.window_start,
                &b.rule,
                b.revision,
            ))
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severities_are_ordered_and_named() {
        assert!(Severity::Info < Severity::Warning && Severity::Warning < Severity::Critical);
        for s in Severity::ALL {
            assert_eq!(Severity::from_name(s.name()), Some(s));
        }
        assert_eq!(Severity::from_name("fatal"), None);
    }
}
