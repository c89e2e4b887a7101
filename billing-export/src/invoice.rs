//! Per-customer invoice documents: JSON (itemized lines, subtotals per site, taxes, totals)
//! and a plain HTML rendering of the same numbers.

use rust_decimal::Decimal;
use serde::Serialize;

use crate::money::fixed;
use crate::registry::Customer;
use crate::statement::{iso, Line};

#[derive(Debug, Serialize)]
pub struct Invoice {
    pub document: &'static str,
    pub run: String,
    pub customer_id: String,
    pub customer_name: String,
    pub period: String,
    pub period_start: String,
    pub period_end: String,
    pub time_zone: String,
    pub currency: String,
    pub issued: String,
    pub lines: Vec<InvoiceLine>,
    pub subtotals: Vec<Subtotal>,
    pub net_total: String,
    pub taxes: Vec<Tax>,
    pub tax_total: String,
    pub total: String,
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
    pub tax_rate: String,
    pub quality: String,
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
    pub rate: String,
    pub base: String,
    pub amount: String,
}

/// Builds the invoice of `customer` from its lines (charges or adjustments of one run).
pub fn build(run: &str, customer: &Customer, issued: &str, lines: &[&Line]) -> Invoice {
    let mu = customer.minor_units;
    let q = |d: Decimal| fixed(d, crate::money::QUANTITY_SCALE);
    let m = |d: Decimal| fixed(d, mu);
    let mut items = Vec::new();
    let mut subtotals: Vec<(String, Decimal)> = Vec::new();
    let mut taxes = Vec::new();
    let (mut net, mut tax_total) = (Decimal::ZERO, Decimal::ZERO);
    for l in lines {
        if l.is_tax() {
            taxes.push(Tax {
                rate: fixed(l.rate, 4),
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
            tax_rate: fixed(l.tax_rate, 4),
            quality: fixed(l.quality, crate::money::QUALITY_SCALE),
            revision: l.revision,
            peak_at: l.peak_at.map(iso),
            peak_at_local: l.peak_at.map(|_| l.peak_at_local.clone()),
        });
    }
    let first = lines.first();
    Invoice {
        document: if lines
            .iter()
            .any(|l| l.line_type == crate::statement::LineType::Adjustment)
        {
            "adjustment"
        } else {
            "invoice"
        },
        run: run.to_string(),
        customer_id: customer.id.clone(),
        customer_name: customer.name.clone(),
        period: first.map(|l| l.period.clone()).unwrap_or_default(),
        period_start: first.map(|l| iso(l.period_start)).unwrap_or_default(),
        period_end: first.map(|l| iso(l.period_end)).unwrap_or_default(),
        time_zone: customer.time_zone.clone(),
        currency: customer.currency.clone(),
        issued: issued.to_string(),
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

/// A self-contained HTML rendering of the invoice.
pub fn html(inv: &Invoice) -> String {
    let mut h = String::new();
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    h.push_str(&format!(
        "<title>{} {} {}</title>",
        inv.document,
        esc(&inv.customer_id),
        esc(&inv.period)
    ));
    h.push_str("<style>body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #999;padding:2px 6px}td.n{text-align:right}</style></head><body>\n");
    h.push_str(&format!(
        "<h1>{} {}</h1>\n<p>Customer {} {}<br>Period {} ({} to {}, {})<br>Run {} issued {}</p>\n",
        if inv.document == "invoice" {
            "Invoice"
        } else {
            "Adjustment"
        },
        esc(&inv.period),
        esc(&inv.customer_id),
        esc(&inv.customer_name),
        esc(&inv.period),
        inv.period_start,
        inv.period_end,
        esc(&inv.time_zone),
        esc(&inv.run),
        inv.issued
    ));
    h.push_str("<table>\n<tr><th>site</th><th>device</th><th>channel</th><th>component</th><th>band</th><th>quantity</th><th>unit</th><th>rate</th><th>amount</th></tr>\n");
    for l in &inv.lines {
        h.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>\n",
            esc(&l.site_id), esc(&l.device_id), esc(&l.channel), esc(&l.component), esc(&l.band), l.quantity, esc(&l.unit), l.rate, l.amount
        ));
    }
    h.push_str("</table>\n<table>\n");
    for s in &inv.subtotals {
        h.push_str(&format!(
            "<tr><td>Subtotal site {}</td><td class=\"n\">{} {}</td></tr>\n",
            esc(&s.site_id),
            s.amount,
            esc(&inv.currency)
        ));
    }
    h.push_str(&format!(
        "<tr><td>Net total</td><td class=\"n\">{} {}</td></tr>\n",
        inv.net_total,
        esc(&inv.currency)
    ));
    for t in &inv.taxes {
        h.push_str(&format!(
            "<tr><td>Tax {} on {}</td><td class=\"n\">{} {}</td></tr>\n",
            t.rate,
            t.base,
            t.amount,
            esc(&inv.currency)
        ));
    }
    h.push_str(&format!(
        "<tr><th>Total</th><th class=\"n\">{} {}</th></tr>\n</table>\n</body></html>\n",
        inv.total,
        esc(&inv.currency)
    ));
    h
}
