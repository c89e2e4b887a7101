//! Statement lines and their CSV/Parquet form (the stable schema documented in README.md).

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Decimal128Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use chrono::{DateTime, SecondsFormat, Utc};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::error::BillingError;
use crate::money::{fixed, QUALITY_SCALE, QUANTITY_SCALE};

/// What a line is: a charge of a first export, or the difference against what was exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineType {
    Charge,
    Adjustment,
}

impl LineType {
    pub fn as_str(self) -> &'static str {
        match self {
            LineType::Charge => "charge",
            LineType::Adjustment => "adjustment",
        }
    }
}

/// One statement line. Money and quantities are exact decimals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    pub line_type: LineType,
    pub customer_id: String,
    pub site_id: String,
    pub device_id: String,
    pub channel: String,
    /// Tariff component name; `tax` for tax lines.
    pub component: String,
    /// Time-of-use period, tier block, or month (fixed charges); empty otherwise.
    pub band: String,
    pub period: String,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub quantity: Decimal,
    pub unit: String,
    pub rate: Decimal,
    pub amount: Decimal,
    pub currency: String,
    pub minor_units: u32,
    pub tax_rate: Decimal,
    /// The usage this line bills in the channel's unit, multiplier applied (reconciled).
    pub usage_quantity: Decimal,
    pub usage_unit: String,
    /// Share of the usage from estimated intervals (flag `estimated`), 0..1, 4 places.
    pub quality: Decimal,
    /// Share of the usage from edited intervals (flag `edited`), 0..1, 4 places. Absent in
    /// the ledgers of older runs: zero.
    #[serde(default)]
    pub edited_share: Decimal,
    /// Highest usage revision used.
    pub revision: i64,
    /// For adjustments: the revision previously exported.
    pub previous_revision: Option<i64>,
    pub peak_at: Option<DateTime<Utc>>,
    pub peak_at_local: String,
}

impl Line {
    /// Identity of a line across runs (for corrections).
    pub fn key(&self) -> (String, String, String, String, String, String) {
        (
            self.customer_id.clone(),
            self.site_id.clone(),
            self.device_id.clone(),
            self.channel.clone(),
            self.component.clone(),
            self.band.clone(),
        )
    }
    pub fn is_tax(&self) -> bool {
        self.component == "tax"
    }
}

/// Column names of the statement files, in order.
pub const COLUMNS: [&str; 25] = [
    "run",
    "line_type",
    "customer_id",
    "site_id",
    "device_id",
    "channel",
    "component",
    "band",
    "period",
    "period_start",
    "period_end",
    "quantity",
    "unit",
    "rate",
    "amount",
    "currency",
    "tax_rate",
    "usage_quantity",
    "usage_unit",
    "quality",
    "edited_share",
    "revision",
    "previous_revision",
    "peak_at",
    "peak_at_local",
];

pub fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// RFC 4180 field (see [`crate::csv_out::field`]).
pub fn csv_field(s: &str) -> String {
    crate::csv_out::field(s)
}

/// The `band` of a tax line: the exact rate, without trailing zeros (`0.19`, `0.08875`), so
/// two rates never share a band (it is part of the line key).
pub fn tax_band(rate: Decimal) -> String {
    rate.normalize().to_string()
}

/// The CSV text (header + one row per line, CRLF line ends as RFC 4180 says). Text columns
/// are neutralised against spreadsheet formulas ([`crate::csv_out`]).
pub fn to_csv(run: &str, lines: &[Line]) -> String {
    let mut out = csv_header();
    csv_rows(run, lines, &mut out);
    out
}

/// The header row of the CSV (with CRLF).
pub fn csv_header() -> String {
    let mut out = COLUMNS.join(",");
    out.push_str("\r\n");
    out
}

/// Appends the CSV rows of `lines` to `out`.
pub fn csv_rows(run: &str, lines: &[Line], out: &mut String) {
    for l in lines {
        let fields: [(String, bool); 25] = [
            (run.to_string(), true),
            (l.line_type.as_str().to_string(), true),
            (l.customer_id.clone(), true),
            (l.site_id.clone(), true),
            (l.device_id.clone(), true),
            (l.channel.clone(), true),
            (l.component.clone(), true),
            (l.band.clone(), true),
            (l.period.clone(), true),
            (iso(l.period_start), false),
            (iso(l.period_end), false),
            (fixed(l.quantity, QUANTITY_SCALE), false),
            (l.unit.clone(), true),
            (fixed(l.rate, QUANTITY_SCALE), false),
            (fixed(l.amount, l.minor_units), false),
            (l.currency.clone(), true),
            (fixed(l.tax_rate, QUANTITY_SCALE), false),
            (fixed(l.usage_quantity, QUANTITY_SCALE), false),
            (l.usage_unit.clone(), true),
            (fixed(l.quality, QUALITY_SCALE), false),
            (fixed(l.edited_share, QUALITY_SCALE), false),
            (l.revision.to_string(), false),
            (
                l.previous_revision
                    .map(|r| r.to_string())
                    .unwrap_or_default(),
                false,
            ),
            (l.peak_at.map(iso).unwrap_or_default(), false),
            (l.peak_at_local.clone(), true),
        ];
        let cells: Vec<(&str, bool)> = fields.iter().map(|(v, t)| (v.as_str(), *t)).collect();
        crate::csv_out::row(out, &cells);
    }
}

/// Arrow schema of `statement_lines.parquet`: strings, `Timestamp(µs, UTC)` and
/// `Decimal128(38, 9)` for every decimal (amounts carry the currency's minor units).
pub fn schema() -> SchemaRef {
    let ts = gridmeter_core::schema::ts_type();
    let dec = gridmeter_core::schema::VALUE_TYPE;
    let s = |n: &str| Field::new(n, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        s("run"),
        s("line_type"),
        s("customer_id"),
        s("site_id"),
        s("device_id"),
        s("channel"),
        s("component"),
        s("band"),
        s("period"),
        Field::new("period_start", ts.clone(), false),
        Field::new("period_end", ts.clone(), false),
        Field::new("quantity", dec.clone(), false),
        s("unit"),
        Field::new("rate", dec.clone(), false),
        Field::new("amount", dec.clone(), false),
        s("currency"),
        Field::new("tax_rate", dec.clone(), false),
        Field::new("usage_quantity", dec.clone(), false),
        s("usage_unit"),
        Field::new("quality", dec.clone(), false),
        Field::new("edited_share", dec, false),
        Field::new("revision", DataType::Int64, false),
        Field::new("previous_revision", DataType::Int64, true),
        Field::new("peak_at", ts, true),
        s("peak_at_local"),
    ]))
}

fn scaled(v: Decimal) -> Result<i128, BillingError> {
    let r = v.round_dp(QUANTITY_SCALE);
    gridmeter_core::decimal::to_scaled_i128(r).ok_or_else(|| {
        BillingError::output(
            "statement parquet",
            format!("{v} does not fit Decimal128(38, 9)"),
        )
    })
}

/// The Parquet file bytes (zstd; deterministic for the same lines and library version).
pub fn to_parquet(run: &str, lines: &[Line]) -> Result<Vec<u8>, BillingError> {
    let batch = batch(run, lines)?;
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, schema(), Some(parquet_props()))
        .map_err(|e| BillingError::output("statement parquet", e))?;
    w.write(&batch)
        .map_err(|e| BillingError::output("statement parquet", e))?;
    w.close()
        .map_err(|e| BillingError::output("statement parquet", e))?;
    Ok(buf)
}

/// The writer properties of `statement_lines.parquet`.
pub fn parquet_props() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_created_by("gridmeter-billing".to_string())
        .build()
}

/// `lines` as one record batch of [`schema`].
pub fn batch(run: &str, lines: &[Line]) -> Result<RecordBatch, BillingError> {
    let schema = schema();
    let mut strs: Vec<StringBuilder> = (0..13).map(|_| StringBuilder::new()).collect();
    let dec = || Decimal128Builder::new().with_data_type(gridmeter_core::schema::VALUE_TYPE);
    let mut decs: Vec<Decimal128Builder> = (0..7).map(|_| dec()).collect();
    let ts = || TimestampMicrosecondBuilder::new().with_timezone("UTC");
    let (mut ps, mut pe, mut peak) = (ts(), ts(), ts());
    let (mut rev, mut prev) = (Int64Builder::new(), Int64Builder::new());
    for l in lines {
        let s = [
            run,
            l.line_type.as_str(),
            &l.customer_id,
            &l.site_id,
            &l.device_id,
            &l.channel,
            &l.component,
            &l.band,
            &l.period,
            &l.unit,
            &l.currency,
            &l.usage_unit,
            &l.peak_at_local,
        ];
        for (b, v) in strs.iter_mut().zip(s) {
            b.append_value(v);
        }
        for (b, v) in decs.iter_mut().zip([
            l.quantity,
            l.rate,
            l.amount,
            l.tax_rate,
            l.usage_quantity,
            l.quality,
            l.edited_share,
        ]) {
            b.append_value(scaled(v)?);
        }
        ps.append_value(l.period_start.timestamp_micros());
        pe.append_value(l.period_end.timestamp_micros());
        peak.append_option(l.peak_at.map(|t| t.timestamp_micros()));
        rev.append_value(l.revision);
        prev.append_option(l.previous_revision);
    }
    let mut s: Vec<ArrayRef> = strs
        .iter_mut()
        .map(|b| Arc::new(b.finish()) as ArrayRef)
        .collect();
    let mut d: Vec<ArrayRef> = decs
        .iter_mut()
        .map(|b| Arc::new(b.finish()) as ArrayRef)
        .collect();
    let mut take_s = |n: usize| -> Vec<ArrayRef> { s.drain(..n).collect() };
    let mut first = take_s(9); // run .. period
    first.push(Arc::new(ps.finish()));
    first.push(Arc::new(pe.finish()));
    let unit = take_s(1);
    let currency = take_s(1);
    let usage_unit = take_s(1);
    let peak_local = take_s(1);
    let mut dd = |n: usize| -> Vec<ArrayRef> { d.drain(..n).collect() };
    let q_rate_amount = dd(3);
    let tax_usage = dd(2);
    let quality = dd(2); // quality, edited_share
    let mut cols: Vec<ArrayRef> = first;
    cols.push(q_rate_amount[0].clone());
    cols.extend(unit);
    cols.push(q_rate_amount[1].clone());
    cols.push(q_rate_amount[2].clone());
    cols.extend(currency);
    cols.extend(tax_usage.iter().take(2).cloned());
    cols.extend(usage_unit);
    cols.extend(quality);
    cols.push(Arc::new(rev.finish()));
    cols.push(Arc::new(prev.finish()));
    cols.push(Arc::new(peak.finish()));
    cols.extend(peak_local);
    RecordBatch::try_new(schema, cols).map_err(|e| BillingError::output("statement parquet", e))
}
