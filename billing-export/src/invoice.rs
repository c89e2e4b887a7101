//! Per-customer invoice documents: JSON (what a utility invoice carries: number, issuer, dates,
//! billing period, meter readings, itemized lines, subtotals per site, taxes, totals) and a
//! printable HTML rendering of the same numbers.
//!
//! The HTML shows every number exactly as the JSON has it, except that quantities, rates and
//! register values drop trailing zeros beyond three (quantities) or two (rates) decimal
//! places, and tax rates and estimated shares are shown as percentages; no number is rounded
//! for display.

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use serde::Serialize;

use crate::money::{fixed, QUALITY_SCALE, QUANTITY_SCALE};
use crate::reconcile::{ReadingMethod, RegisterValue};
use crate::registry::{Customer, Issuer};
use crate::statement::{iso, tax_band, Line, LineType};

/// One invoice (or adjustment invoice) of one customer and run.
#[derive(Debug, Serialize)]
pub struct Invoice {
    /// `invoice`, or `adjustment` when the run corrects what was invoiced before.
    pub document: &'static str,
    /// Unique and sequential per issuer across periods and runs.
    pub invoice_number: String,
    /// For adjustments: the numbers of this period's earlier documents of the customer.
    pub corrects: Vec<String>,
    pub run: String,
    pub issuer: Party,
    pub customer_id: String,
    pub customer_name: String,
    pub customer_address: Vec<String>,
    /// The customer's sites (service addresses) in id order.
    pub sites: Vec<SiteRef>,
    pub period: String,
    /// The customer's local period bounds in UTC.
    pub period_start: String,
    pub period_end: String,
    /// The same period in the customer's local dates, both days included.
    pub billing_period: LocalPeriod,
    pub time_zone: String,
    pub currency: String,
    /// The issue instant (UTC): `--as-of`, or the customer's period end.
    pub issued: String,
    /// The local date of `issued` in the customer's time zone.
    pub issue_date: String,
    /// `issue_date` + `payment_terms_days`.
    pub due_date: String,
    pub payment_terms_days: u32,
    /// Register readings and billed usage per metered device channel.
    pub meters: Vec<Meter>,
    pub lines: Vec<InvoiceLine>,
    pub subtotals: Vec<Subtotal>,
    pub net_total: String,
    pub taxes: Vec<Tax>,
    pub tax_total: String,
    pub total: String,
}

/// The issuer on the letterhead.
#[derive(Debug, Serialize)]
pub struct Party {
    pub id: String,
    pub name: String,
    pub address: Vec<String>,
    pub tax_id: String,
}

/// A site on the invoice.
#[derive(Debug, Clone, Serialize)]
pub struct SiteRef {
    pub id: String,
    pub name: String,
}

/// Local dates `[first_day, last_day]`.
#[derive(Debug, Serialize)]
pub struct LocalPeriod {
    pub first_day: String,
    pub last_day: String,
}

/// One metered device channel on the invoice.
#[derive(Debug, Clone, Serialize)]
pub struct Meter {
    pub site_id: String,
    pub device_id: String,
    pub channel: String,
    /// `counter` (a register) or `delta` (increments; no register readings).
    pub kind: String,
    /// The channel's measured unit (register values and `register_difference`).
    pub unit: String,
    /// The register at the start and end of the billed range (counters, with the raw
    /// reconciliation on).
    pub start: Option<Reading>,
    pub end: Option<Reading>,
    /// Consumption from the raw readings (the reconciliation's `raw`), before the multiplier.
    pub register_difference: Option<String>,
    /// `rollover`, `reset`, `meter_swap`, `decrease`: why `end - start` may differ from
    /// `register_difference`.
    pub events: Vec<String>,
    pub multiplier: String,
    /// Usage billed = usage × multiplier, in `unit`.
    pub billed_usage: String,
    /// Share of the usage from intervals flagged estimated, 4 places.
    pub estimated_share: String,
    /// Share of the usage from intervals flagged edited, 4 places.
    pub edited_share: String,
}

/// A register value on the invoice.
#[derive(Debug, Clone, Serialize)]
pub struct Reading {
    pub value: String,
    pub at: String,
    pub at_local: String,
    pub method: ReadingMethod,
}

impl Reading {
    pub fn new(r: &RegisterValue, tz: Tz) -> Reading {
        let at = DateTime::from_timestamp_micros(r.at_us).unwrap_or_default();
        Reading {
            value: fixed(r.value, QUANTITY_SCALE),
            at: iso(at),
            at_local: at
                .with_timezone(&tz)
                .to_rfc3339_opts(SecondsFormat::Secs, true),
            method: r.method,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct InvoiceLine {
    pub line_type: String,
    pub site_id: String,
    pub device_id: String,
    pub channel: String,
    pub component: String,
    pub band: String,
    pub quantity: String,
    pub unit: String,
    pub rate: String,
    pub amount: String,
    /// Exact (`0.08875`).
    pub tax_rate: String,
    /// Share of the line's usage from estimated intervals, 4 places.
    pub quality: String,
    /// Share of the line's usage from edited intervals, 4 places.
    pub edited_share: String,
    pub revision: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_at_local: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Subtotal {
    pub site_id: String,
    pub amount: String,
}

#[derive(Debug, Serialize)]
pub struct Tax {
    /// Exact (`0.08875`): `amount = round(base × rate)`.
    pub rate: String,
    pub base: String,
    pub amount: String,
}

/// What an invoice needs besides its lines.
pub struct Context<'a> {
    pub run: &'a str,
    pub invoice_number: String,
    pub corrects: Vec<String>,
    pub issuer: &'a Issuer,
    pub customer: &'a Customer,
    pub sites: Vec<SiteRef>,
    pub tz: Tz,
    pub period: &'a str,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    /// Local dates, both included.
    pub first_day: NaiveDate,
    pub last_day: NaiveDate,
    pub issued: DateTime<Utc>,
    pub payment_terms_days: u32,
    pub meters: Vec<Meter>,
}

/// Builds the invoice of one customer from its lines (charges or adjustments of one run).
pub fn build(ctx: Context, lines: &[&Line]) -> Invoice {
    let customer = ctx.customer;
    let mu = customer.minor_units;
    let q = |d: Decimal| fixed(d, QUANTITY_SCALE);
    let m = |d: Decimal| fixed(d, mu);
    let mut items = Vec::new();
    let mut subtotals: Vec<(String, Decimal)> = Vec::new();
    let mut taxes = Vec::new();
    let (mut net, mut tax_total) = (Decimal::ZERO, Decimal::ZERO);
    for l in lines {
        if l.is_tax() {
            taxes.push(Tax {
                rate: tax_band(l.rate),
                base: m(l.quantity),
                amount: m(l.amount),
            });
            tax_total += l.amount;
            continue;
        }
        net += l.amount;
        match subtotals.iter_mut().find(|(s, _)| *s == l.site_id) {
            Some((_, a)) => *a += l.amount,
            None => subtotals.push((l.site_id.clone(), l.amount)),
        }
        items.push(InvoiceLine {
            line_type: l.line_type.as_str().to_string(),
            site_id: l.site_id.clone(),
            device_id: l.device_id.clone(),
            channel: l.channel.clone(),
            component: l.component.clone(),
            band: l.band.clone(),
            quantity: q(l.quantity),
            unit: l.unit.clone(),
            rate: q(l.rate),
            amount: m(l.amount),
            tax_rate: tax_band(l.tax_rate),
            quality: fixed(l.quality, QUALITY_SCALE),
            edited_share: fixed(l.edited_share, QUALITY_SCALE),
            revision: l.revision,
            peak_at: l.peak_at.map(iso),
            peak_at_local: l.peak_at.map(|_| l.peak_at_local.clone()),
        });
    }
    let issue_date = ctx.issued.with_timezone(&ctx.tz).date_naive();
    let due_date = issue_date
        .checked_add_days(chrono::Days::new(u64::from(ctx.payment_terms_days)))
        .unwrap_or(NaiveDate::MAX);
    let issuer = ctx.issuer;
    Invoice {
        document: if lines.iter().any(|l| l.line_type == LineType::Adjustment) {
            "adjustment"
        } else {
            "invoice"
        },
        invoice_number: ctx.invoice_number,
        corrects: ctx.corrects,
        run: ctx.run.to_string(),
        issuer: Party {
            id: issuer.id.clone(),
            name: issuer.name.clone(),
            address: issuer.address.clone(),
            tax_id: issuer.tax_id.clone(),
        },
        customer_id: customer.id.clone(),
        customer_name: customer.name.clone(),
        customer_address: customer.address.clone(),
        sites: ctx.sites,
        period: ctx.period.to_string(),
        period_start: iso(ctx.period_start),
        period_end: iso(ctx.period_end),
        billing_period: LocalPeriod {
            first_day: ctx.first_day.to_string(),
            last_day: ctx.last_day.to_string(),
        },
        time_zone: customer.time_zone.clone(),
        currency: customer.currency.clone(),
        issued: iso(ctx.issued),
        issue_date: issue_date.to_string(),
        due_date: due_date.to_string(),
        payment_terms_days: ctx.payment_terms_days,
        meters: ctx.meters,
        lines: items,
        subtotals: subtotals
            .into_iter()
            .map(|(site_id, a)| Subtotal {
                site_id,
                amount: m(a),
            })
            .collect(),
        net_total: m(net),
        taxes,
        tax_total: m(tax_total),
        total: m(net + tax_total),
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A fixed-scale decimal text without the trailing zeros beyond `min_dp` places (exact: only
/// zeros are dropped).
pub fn trim(text: &str, min_dp: usize) -> String {
    let Some((int, frac)) = text.split_once('.') else {
        return text.to_string();
    };
    let mut keep = frac.trim_end_matches('0').len().max(min_dp);
    keep = keep.min(frac.len());
    if keep == 0 {
        int.to_string()
    } else {
        format!("{int}.{}", &frac[..keep])
    }
}

/// `0.08875` as `8.875 %` (exact).
pub fn percent(rate: &str) -> String {
    match rate.parse::<Decimal>() {
        Ok(r) => format!("{} %", (r * Decimal::ONE_HUNDRED).normalize()),
        Err(_) => esc(rate),
    }
}

/// A share `0.2500` as `25.00 %` (exact: shares have 4 places).
fn share_percent(share: &str) -> String {
    match share.parse::<Decimal>() {
        Ok(r) => format!("{} %", fixed(r * Decimal::ONE_HUNDRED, 2)),
        Err(_) => esc(share),
    }
}

fn local_minute(rfc3339: &str) -> String {
    // 2026-10-24T00:00:00+02:00 -> 2026-10-24 00:00
    rfc3339.get(..16).unwrap_or(rfc3339).replace('T', " ")
}

fn method_text(m: ReadingMethod) -> &'static str {
    match m {
        ReadingMethod::Actual => "actual",
        ReadingMethod::Interpolated => "interpolated",
        ReadingMethod::FirstReading => "first reading",
        ReadingMethod::LastReading => "last reading",
    }
}

const STYLE: &str = "\
@page{size:A4;margin:14mm 14mm 16mm 14mm}\
*{box-sizing:border-box}\
body{font-family:'DejaVu Sans','Liberation Sans',Arial,sans-serif;font-size:9pt;color:#111;margin:0}\
@media screen{body{max-width:182mm;margin:8mm auto}}\
header{display:flex;justify-content:space-between;align-items:flex-start;border-bottom:2px solid #1f4e79;padding-bottom:6px}\
.issuer .name{font-size:13pt;font-weight:bold;color:#1f4e79}\
.issuer div{line-height:1.35}\
h1{font-size:16pt;margin:0 0 4px 0;color:#1f4e79;text-align:right}\
table.facts{border-collapse:collapse;margin-left:auto}\
table.facts td{padding:1px 0 1px 14px}\
table.facts td:first-child{color:#555}\
.parties{display:flex;justify-content:space-between;margin:12px 0 4px 0}\
.parties .label{color:#555;font-size:8pt;text-transform:uppercase;letter-spacing:.05em}\
.parties div{line-height:1.35}\
h2{font-size:10pt;margin:12px 0 3px 0;color:#1f4e79;border-bottom:1px solid #9bb;padding-bottom:1px}\
table.grid{width:100%;border-collapse:collapse}\
table.grid th{text-align:left;font-weight:600;border-bottom:1px solid #555;padding:3px 4px;background:#eef3f8}\
table.grid td{padding:2px 4px;border-bottom:1px solid #ddd;vertical-align:top}\
td.n,th.n{text-align:right;white-space:nowrap}\
table.meters{font-size:8pt}\
table.meters td.n small{white-space:normal}\
small{color:#555;font-size:7.5pt}\
tr{break-inside:avoid}\
thead{display:table-header-group}\
table.totals{margin-left:auto;border-collapse:collapse;margin-top:6px;min-width:80mm}\
table.totals td{padding:2px 4px}\
table.totals tr.total td{font-weight:bold;font-size:10.5pt;border-top:2px solid #111}\
.pay{margin-top:12px;padding:6px 8px;border:1px solid #1f4e79;background:#f5f8fb;break-inside:avoid}\
footer{margin-top:10px;font-size:7.5pt;color:#555;line-height:1.4}";

/// A self-contained, printable HTML rendering of the invoice (A4, no external resources).
pub fn html(inv: &Invoice) -> String {
    let cur = esc(&inv.currency);
    let adjustment = inv.document != "invoice";
    let title = if adjustment {
        "Adjustment invoice"
    } else {
        "Invoice"
    };
    let mut h = String::with_capacity(8192 + inv.lines.len() * 400);
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    h.push_str(&format!(
        "<title>{title} {} {} {}</title><style>{STYLE}</style></head><body>\n",
        esc(&inv.invoice_number),
        esc(&inv.customer_id),
        esc(&inv.period)
    ));
    // Letterhead and the invoice facts.
    h.push_str("<header><div class=\"issuer\">");
    if !inv.issuer.name.is_empty() {
        h.push_str(&format!(
            "<div class=\"name\">{}</div>",
            esc(&inv.issuer.name)
        ));
    }
    for a in &inv.issuer.address {
        h.push_str(&format!("<div>{}</div>", esc(a)));
    }
    if !inv.issuer.tax_id.is_empty() {
        h.push_str(&format!("<div>Tax ID {}</div>", esc(&inv.issuer.tax_id)));
    }
    h.push_str("</div><div>");
    h.push_str(&format!("<h1>{title}</h1><table class=\"facts\">"));
    let mut fact = |k: &str, v: String| {
        h.push_str(&format!("<tr><td>{k}</td><td>{v}</td></tr>"));
    };
    fact("Invoice number", esc(&inv.invoice_number));
    fact("Issue date", esc(&inv.issue_date));
    fact("Due date", esc(&inv.due_date));
    fact("Customer number", esc(&inv.customer_id));
    fact(
        "Billing period",
        format!(
            "{} to {}",
            esc(&inv.billing_period.first_day),
            esc(&inv.billing_period.last_day)
        ),
    );
    if !inv.corrects.is_empty() {
        fact("Corrects", esc(&inv.corrects.join(", ")));
    }
    h.push_str("</table></div></header>\n");
    // Bill-to and service details.
    h.push_str("<div class=\"parties\"><div><div class=\"label\">Bill to</div>");
    let name = if inv.customer_name.is_empty() {
        &inv.customer_id
    } else {
        &inv.customer_name
    };
    h.push_str(&format!("<div><b>{}</b></div>", esc(name)));
    for a in &inv.customer_address {
        h.push_str(&format!("<div>{}</div>", esc(a)));
    }
    h.push_str("</div><div style=\"text-align:right\"><div class=\"label\">Service</div>");
    for site in &inv.sites {
        if site.name.is_empty() {
            h.push_str(&format!("<div>Site {}</div>", esc(&site.id)));
        } else {
            h.push_str(&format!(
                "<div>{} <small>(site {})</small></div>",
                esc(&site.name),
                esc(&site.id)
            ));
        }
    }
    h.push_str(&format!(
        "<div>Local time {}</div><div>Statement {} {}</div>",
        esc(&inv.time_zone),
        esc(&inv.period),
        esc(&inv.run)
    ));
    h.push_str("</div></div>\n");
    // Meter readings.
    if !inv.meters.is_empty() {
        h.push_str("<h2>Meter readings</h2>\n<table class=\"grid meters\"><thead><tr><th>Meter</th><th class=\"n\">Start reading</th><th class=\"n\">End reading</th><th class=\"n\">Consumption</th><th class=\"n\">Factor</th><th class=\"n\">Billed usage</th><th class=\"n\">Estimated</th><th class=\"n\">Edited</th></tr></thead><tbody>\n");
        for mt in &inv.meters {
            let reading = |r: &Option<Reading>| match r {
                Some(r) => format!(
                    "{}<br><small>{}<br>{}</small>",
                    trim(&r.value, 3),
                    esc(&local_minute(&r.at_local)),
                    method_text(r.method)
                ),
                None => "&mdash;".to_string(),
            };
            let diff = match &mt.register_difference {
                Some(d) => trim(d, 3),
                None => "&mdash;".into(),
            };
            let events = if mt.events.is_empty() {
                String::new()
            } else {
                format!("<br><small>{}</small>", esc(&mt.events.join(", ")))
            };
            h.push_str(&format!(
                "<tr><td>{}<br><small>{} &middot; {}<br>site {}</small>{events}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{diff}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>\n",
                esc(&mt.device_id),
                esc(&mt.channel),
                esc(crate::units::canonical(&mt.unit)),
                esc(&mt.site_id),
                reading(&mt.start),
                reading(&mt.end),
                trim(&mt.multiplier, 0),
                trim(&mt.billed_usage, 3),
                share_percent(&mt.estimated_share),
                share_percent(&mt.edited_share),
            ));
        }
        h.push_str("</tbody></table>\n");
    }
    // Charges.
    h.push_str("<h2>Charges</h2>\n<table class=\"grid items\"><thead><tr><th>#</th><th>Description</th><th>Meter</th><th class=\"n\">Quantity</th><th class=\"n\">Rate</th><th class=\"n\">Amount</th></tr></thead><tbody>\n");
    for (i, l) in inv.lines.iter().enumerate() {
        let mut desc = esc(&l.component);
        if !l.band.is_empty() {
            desc.push_str(&format!(" &middot; {}", esc(&l.band)));
        }
        if l.quality.parse::<Decimal>().is_ok_and(|q| !q.is_zero()) {
            desc.push_str(" *");
        }
        if l.edited_share
            .parse::<Decimal>()
            .is_ok_and(|q| !q.is_zero())
        {
            desc.push_str(" &dagger;");
        }
        if let Some(p) = &l.peak_at_local {
            desc.push_str(&format!(
                "<br><small>peak {}</small>",
                esc(&local_minute(p))
            ));
        }
        let meter = if l.device_id.is_empty() {
            esc(&l.site_id)
        } else {
            format!("{} {}", esc(&l.device_id), esc(&l.channel))
        };
        h.push_str(&format!(
            "<tr><td>{}</td><td>{desc}</td><td>{meter}</td><td class=\"n\">{} {}</td><td class=\"n\">{} {cur}/{}</td><td class=\"n\">{}</td></tr>\n",
            i + 1,
            trim(&l.quantity, 3),
            esc(&l.unit),
            trim(&l.rate, 2),
            esc(&l.unit),
            esc(&l.amount),
        ));
    }
    h.push_str("</tbody></table>\n<table class=\"totals\">\n");
    for s in &inv.subtotals {
        h.push_str(&format!(
            "<tr><td>Subtotal site {}</td><td class=\"n\">{} {cur}</td></tr>\n",
            esc(&s.site_id),
            esc(&s.amount)
        ));
    }
    h.push_str(&format!(
        "<tr><td>Net total</td><td class=\"n\">{} {cur}</td></tr>\n",
        esc(&inv.net_total)
    ));
    for t in &inv.taxes {
        h.push_str(&format!(
            "<tr><td>Tax {} on {} {cur}</td><td class=\"n\">{} {cur}</td></tr>\n",
            percent(&t.rate),
            esc(&t.base),
            esc(&t.amount)
        ));
    }
    h.push_str(&format!(
        "<tr class=\"total\"><td>Total</td><td class=\"n\">{} {cur}</td></tr>\n</table>\n",
        esc(&inv.total)
    ));
    // Payment.
    let negative = inv.total.starts_with('-');
    h.push_str("<div class=\"pay\">");
    if negative {
        h.push_str(&format!(
            "The credit of {} {cur} will be settled with your next payment.",
            esc(inv.total.trim_start_matches('-'))
        ));
    } else {
        h.push_str(&format!(
            "Please pay {} {cur} by {} ({} days from the issue date), quoting invoice number <span style=\"white-space:nowrap\">{}</span>.",
            esc(&inv.total),
            esc(&inv.due_date),
            inv.payment_terms_days,
            esc(&inv.invoice_number)
        ));
    }
    h.push_str("</div>\n<footer>");
    h.push_str("Amounts are quantity &times; rate, rounded once per line; the tax of each rate is the rate &times; the sum of that rate's line amounts, rounded once. Quantities are in billing units with up to 9 decimal places. ");
    h.push_str("Lines marked * include usage from intervals that were estimated, lines marked &dagger; usage that was edited after review (the shares per meter are under Estimated and Edited). ");
    h.push_str("Register readings are in the meter's unit; interpolated readings lie on the straight line between the readings around the period boundary.");
    h.push_str("</footer>\n</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_exact() {
        assert_eq!(trim("5.600000000", 3), "5.600");
        assert_eq!(trim("0.027777778", 3), "0.027777778");
        assert_eq!(trim("0.385000000", 2), "0.385");
        assert_eq!(trim("12.000000000", 0), "12");
        assert_eq!(trim("-1.50", 3), "-1.50");
        assert_eq!(percent("0.08875"), "8.875 %");
        assert_eq!(percent("0.19"), "19 %");
        assert_eq!(share_percent("0.2500"), "25.00 %");
    }
}
