//! Table `edits`: the audit trail of billing-team edits (not partitioned: a handful of rows).
//! An edit sets or scales the usage of one device channel's windows of one size in a time
//! range, with a reason, who and when. Rows are only ever appended, each in its own commit
//! with the transaction id `(edits, edit_id)`, so two editors never get the same id. The
//! aggregator reads the whole table at every computation and applies the edits (in id order)
//! to the consumption curve, so every window size agrees with the edit and a rebuild keeps
//! it.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, AsArray, Decimal128Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{Decimal128Type, Int64Type, TimestampMicrosecondType};
use gridmeter_core::schema;

use crate::delta::{NewFile, Table, TableSpec};
use crate::parquet_io::Profile;
use crate::root::Root;
use crate::TableError;

/// The table's directory under the data root.
pub const TABLE: &str = "edits";

/// The transaction application id of edit commits (the version is the edit id).
pub const APP: &str = "edits";

/// The layout of `edits`.
pub fn spec() -> TableSpec {
    TableSpec {
        name: TABLE.into(),
        schema: schema::edits(),
        partitioned: false,
        append_only: true,
        stats_columns: &["edit_id", "device_id", "from", "to"],
        log_retention: "interval 30 days",
    }
}

/// Opens (creates) `edits` under `root`.
pub async fn open(root: &Root) -> Result<Table, TableError> {
    Table::open(root, spec()).await
}

/// What an edit does to each window of its range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditAction {
    /// The window's usage becomes the value (scaled).
    Set,
    /// The window's usage is multiplied by the value (scaled), rounded half-to-even.
    Scale,
}

impl EditAction {
    /// `set` or `scale`.
    pub fn name(self) -> &'static str {
        match self {
            EditAction::Set => "set",
            EditAction::Scale => "scale",
        }
    }

    /// The action of a name.
    pub fn from_name(name: &str) -> Option<EditAction> {
        match name {
            "set" => Some(EditAction::Set),
            "scale" => Some(EditAction::Scale),
            _ => None,
        }
    }
}

/// One edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditRow {
    /// 1, 2, 3…: the order edits are applied in.
    pub edit_id: i64,
    /// The device.
    pub device_id: String,
    /// Its channel.
    pub channel: String,
    /// The window size the edit's value refers to (`15m`).
    pub window: String,
    /// Start of the first window edited, µs.
    pub from: i64,
    /// End of the last window edited, µs.
    pub to: i64,
    pub action: EditAction,
    /// Usage per window (set) or factor (scale), scaled by 10^9.
    pub value: i128,
    /// Why.
    pub reason: String,
    /// Who asked for it.
    pub who: String,
    /// When the edit was recorded, µs.
    pub at: i64,
}

/// Rows as a batch of `schema::edits()`.
pub fn to_batch(rows: &[EditRow]) -> Result<RecordBatch, TableError> {
    let s = |f: fn(&EditRow) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
    };
    let ts = |f: fn(&EditRow) -> i64| -> ArrayRef {
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(rows.iter().map(f)).with_timezone("UTC"),
        )
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.edit_id))),
        s(|r| &r.device_id),
        s(|r| &r.channel),
        s(|r| &r.window),
        ts(|r| r.from),
        ts(|r| r.to),
        s(|r| r.action.name()),
        Arc::new(
            Decimal128Array::from_iter_values(rows.iter().map(|r| r.value))
                .with_precision_and_scale(38, 9)?,
        ),
        s(|r| &r.reason),
        s(|r| &r.who),
        ts(|r| r.at),
    ];
    Ok(RecordBatch::try_new(schema::edits(), columns)?)
}

fn data_error(message: String) -> TableError {
    TableError::Data {
        table: TABLE.into(),
        message,
    }
}

/// The inverse of [`to_batch`]; an unknown action is an error naming the edit.
pub fn from_batch(b: &RecordBatch) -> Result<Vec<EditRow>, TableError> {
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
    let id = col("edit_id")?
        .as_primitive_opt::<Int64Type>()
        .cloned()
        .ok_or_else(|| data_error("column edit_id is not a long".into()))?;
    let value = col("value")?
        .as_primitive_opt::<Decimal128Type>()
        .cloned()
        .ok_or_else(|| data_error("column value is not a decimal".into()))?;
    let (device, channel, window, action, reason, who) = (
        s("device_id")?,
        s("channel")?,
        s("window")?,
        s("action")?,
        s("reason")?,
        s("who")?,
    );
    let (from, to, at) = (t("from")?, t("to")?, t("at")?);
    (0..b.num_rows())
        .map(|i| {
            let action = EditAction::from_name(action.value(i)).ok_or_else(|| {
                data_error(format!(
                    "edit {}: unknown action {}",
                    id.value(i),
                    gridmeter_core::text::excerpt(action.value(i))
                ))
            })?;
            Ok(EditRow {
                edit_id: id.value(i),
                device_id: device.value(i).into(),
                channel: channel.value(i).into(),
                window: window.value(i).into(),
                from: from.value(i),
                to: to.value(i),
                action,
                value: value.value(i),
                reason: reason.value(i).into(),
                who: who.value(i).into(),
                at: at.value(i),
            })
        })
        .collect()
}

/// Every edit, in id order.
pub async fn read_all(table: &Table) -> Result<Vec<EditRow>, TableError> {
    let snapshot = table.snapshot().await?;
    let mut out = Vec::new();
    for f in snapshot.files() {
        for b in table.read_file(&f, None).await? {
            out.extend(from_batch(&b)?);
        }
    }
    out.sort_by_key(|e| e.edit_id);
    Ok(out)
}

/// Appends `edits` as the next edit ids (their `edit_id` is assigned here), one commit per
/// edit with the transaction id `(edits, edit_id)`; a concurrent editor that took an id makes
/// this one retry with the next. Returns the edits as recorded.
pub async fn append(table: &Table, edits: Vec<EditRow>) -> Result<Vec<EditRow>, TableError> {
    let mut out = Vec::with_capacity(edits.len());
    for mut e in edits {
        let mut done = false;
        for _ in 0..crate::MAX_REPLANS {
            let last = table.snapshot().await?.txn_version(APP).await?.unwrap_or(0);
            e.edit_id = last + 1;
            let file = NewFile {
                path: format!("edit-{:012}.parquet", e.edit_id),
                date: None,
                batch: to_batch(std::slice::from_ref(&e))?,
                tags: Vec::new(),
            };
            let appended = table
                .append_once(APP, e.edit_id, vec![file], Profile::Standard, "")
                .await?;
            if appended.version.is_some() {
                done = true;
                break;
            }
        }
        if !done {
            return Err(TableError::Conflict {
                table: TABLE.into(),
                message: format!("edit ids still taken after {} attempts", crate::MAX_REPLANS),
            });
        }
        out.push(e);
    }
    Ok(out)
}
