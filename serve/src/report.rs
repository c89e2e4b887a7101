//! A static HTML usage report (`gridmeter serve --report usage.html`): the main panels of the
//! "gridmeter / Usage" dashboard, computed by the same engine the server runs, drawn as inline
//! SVG, for a look at the data without Grafana.

use std::fmt::Write as _;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, TimeUnit, TimestampMicrosecondType};
use arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::engine::{Engine, QueryError};

const DAILY_IMPORT: &str =
    "SELECT u.window_start AS day, m.customer_id, sum(u.usage) / 1000 AS kwh \
     FROM usage_1d u JOIN meters m ON m.device_id = u.device_id \
     WHERE u.channel = 'energy_import' GROUP BY u.window_start, m.customer_id ORDER BY 1, 2";
const PV_YIELD: &str = "SELECT window_start AS day, sum(usage) / 1000 AS kwh FROM usage_1d \
     WHERE channel = 'energy_yield' GROUP BY window_start ORDER BY 1";
const MONTHS: &str = "WITH latest AS (SELECT date_trunc('month', max(window_start)) AS this_month FROM usage_1d) \
     SELECT m.customer_id, \
       sum(CASE WHEN u.window_start < l.this_month THEN u.usage ELSE 0 END) / 1000 AS last_month_kwh, \
       sum(CASE WHEN u.window_start >= l.this_month THEN u.usage ELSE 0 END) / 1000 AS this_month_kwh \
     FROM usage_1d u JOIN meters m ON m.device_id = u.device_id CROSS JOIN latest l \
     WHERE u.channel = 'energy_import' AND u.window_start >= l.this_month - INTERVAL '1 month' \
     GROUP BY m.customer_id ORDER BY this_month_kwh DESC LIMIT 10";
const CHANNELS: &str =
    "SELECT channel, unit, count(DISTINCT device_id) AS devices, sum(usage) AS usage \
     FROM usage_1d WHERE usage IS NOT NULL GROUP BY channel, unit ORDER BY channel";
const TOP: &str = "SELECT m.customer_id, u.device_id, sum(u.usage) / 1000 AS kwh \
     FROM usage_1d u JOIN meters m ON m.device_id = u.device_id \
     WHERE u.channel = 'energy_import' GROUP BY m.customer_id, u.device_id ORDER BY kwh DESC LIMIT 10";

/// One column as floats (timestamps as µs since the epoch).
fn floats(batches: &[RecordBatch], col: usize) -> Result<Vec<f64>, QueryError> {
    let mut out = Vec::new();
    for b in batches {
        let a = b.column(col);
        let a = match a.data_type() {
            DataType::Timestamp(_, _) => {
                let t = cast(a, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
                let t = t.as_primitive::<TimestampMicrosecondType>();
                out.extend((0..t.len()).map(|i| t.value(i) as f64));
                continue;
            }
            _ => cast(a, &DataType::Float64)?,
        };
        let f = a.as_primitive::<Float64Type>();
        out.extend((0..f.len()).map(|i| if f.is_null(i) { 0.0 } else { f.value(i) }));
    }
    Ok(out)
}

/// One column as display text.
fn texts(batches: &[RecordBatch], col: usize) -> Result<Vec<String>, QueryError> {
    let opts = FormatOptions::default();
    let mut out = Vec::new();
    for b in batches {
        let f = ArrayFormatter::try_new(b.column(col).as_ref(), &opts)?;
        out.extend((0..b.num_rows()).map(|i| f.value(i).to_string()));
    }
    Ok(out)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const COLORS: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// A line chart of `series` (name, points (x µs, y)) as SVG.
fn chart(title: &str, unit: &str, series: &[(String, Vec<(f64, f64)>)]) -> String {
    let (w, h, l, r, t, b) = (560.0, 260.0, 56.0, 40.0, 28.0, 40.0);
    let pts = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
    for (x, y) in pts {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y1 = y1.max(*y);
    }
    if x0 >= x1 {
        x1 = x0 + 1.0;
    }
    if y1 <= 0.0 {
        y1 = 1.0;
    }
    let sx = |x: f64| l + (x - x0) / (x1 - x0) * (w - l - r);
    let sy = |y: f64| h - b - y / y1 * (h - t - b);
    let mut s = format!(
        "<figure><figcaption>{}</figcaption><svg viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\">",
        esc(title)
    );
    for i in 0..=4 {
        let y = y1 * f64::from(i) / 4.0;
        let _ = write!(
            s,
            "<line x1=\"{l}\" x2=\"{}\" y1=\"{py:.1}\" y2=\"{py:.1}\" class=\"grid\"/><text x=\"{}\" y=\"{:.1}\" class=\"ax\" text-anchor=\"end\">{y:.0}</text>",
            w - r,
            l - 6.0,
            sy(y) + 4.0,
            py = sy(y)
        );
    }
    for i in 0..=4 {
        let x = x0 + (x1 - x0) * f64::from(i) / 4.0;
        let day = chrono::DateTime::from_timestamp_micros(x as i64)
            .map(|d| d.format("%Y-%m-%d").to_string())
            .unwrap_or_default();
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" class=\"ax\" text-anchor=\"middle\">{day}</text>",
            sx(x),
            h - b + 18.0
        );
    }
    let _ = write!(
        s,
        "<text x=\"12\" y=\"{}\" class=\"ax\" transform=\"rotate(-90 12 {})\" text-anchor=\"middle\">{}</text>",
        h / 2.0,
        h / 2.0,
        esc(unit)
    );
    for (i, (name, p)) in series.iter().enumerate() {
        let path: Vec<String> = p
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let c = COLORS[i % COLORS.len()];
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"><title>{}</title></polyline>",
            path.join(" "),
            esc(name)
        );
    }
    s.push_str("</svg><div class=\"legend\">");
    for (i, (name, _)) in series.iter().enumerate() {
        let _ = write!(
            s,
            "<span><i style=\"background:{}\"></i>{}</span>",
            COLORS[i % COLORS.len()],
            esc(name)
        );
    }
    s.push_str("</div></figure>");
    s
}

/// An HTML table of a result.
fn table(title: &str, batches: &[RecordBatch]) -> Result<String, QueryError> {
    let mut s = format!("<figure><figcaption>{}</figcaption><table>", esc(title));
    let Some(first) = batches.first() else {
        s.push_str("<tr><td>no rows</td></tr></table></figure>");
        return Ok(s);
    };
    s.push_str("<tr>");
    for f in first.schema().fields() {
        let _ = write!(s, "<th>{}</th>", esc(f.name()));
    }
    s.push_str("</tr>");
    let cols: Vec<Vec<String>> = (0..first.num_columns())
        .map(|c| texts(batches, c))
        .collect::<Result<_, _>>()?;
    for row in 0..cols[0].len() {
        s.push_str("<tr>");
        for col in &cols {
            let v = &col[row];
            let v = match v.split_once('.') {
                // kWh and Wh to 3 decimals in the report.
                Some((i, d))
                    if i.chars().all(|c| c.is_ascii_digit() || c == '-') && d.len() > 3 =>
                {
                    format!("{i}.{}", &d[..3])
                }
                _ => v.clone(),
            };
            let _ = write!(s, "<td>{}</td>", esc(&v));
        }
        s.push_str("</tr>");
    }
    s.push_str("</table></figure>");
    Ok(s)
}

/// The report as one HTML page.
pub async fn usage_report(engine: &Engine) -> Result<String, QueryError> {
    let daily = engine.sql(DAILY_IMPORT).await?.batches;
    let (days, customers, kwh) = (floats(&daily, 0)?, texts(&daily, 1)?, floats(&daily, 2)?);
    // The eight customers with the most energy, one line each.
    let mut totals: std::collections::BTreeMap<&str, f64> = Default::default();
    for (c, k) in customers.iter().zip(&kwh) {
        *totals.entry(c).or_default() += k;
    }
    let mut top: Vec<(&str, f64)> = totals.into_iter().collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    top.truncate(8);
    let series: Vec<(String, Vec<(f64, f64)>)> = top
        .iter()
        .map(|(name, _)| {
            let p = (0..days.len())
                .filter(|&i| customers[i] == *name)
                .map(|i| (days[i], kwh[i]))
                .collect();
            (name.to_string(), p)
        })
        .collect();
    let pv = engine.sql(PV_YIELD).await?.batches;
    let pv_series = vec![(
        "all inverters".to_string(),
        floats(&pv, 0)?.into_iter().zip(floats(&pv, 1)?).collect(),
    )];
    let mut html = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>gridmeter usage</title><style>\
         body{font-family:'DejaVu Sans',sans-serif;margin:24px;color:#222;background:#fafafa}\
         h1{font-size:22px;margin:0 0 4px}p.sub{color:#666;margin:0 0 16px;font-size:13px}\
         .grid{stroke:#e3e3e3}.ax{font-size:11px;fill:#555}\
         figure{display:inline-block;vertical-align:top;background:#fff;border:1px solid #ddd;border-radius:4px;margin:0 12px 12px 0;padding:10px}\
         figcaption{font-weight:bold;font-size:14px;margin-bottom:6px}\
         .legend span{font-size:11px;margin-right:10px;white-space:nowrap}.legend i{display:inline-block;width:10px;height:10px;margin-right:4px}\
         table{border-collapse:collapse;font-size:12px}th,td{padding:3px 8px;border-bottom:1px solid #eee;text-align:right}\
         th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}\
         </style></head><body><h1>gridmeter / Usage</h1>\
         <p class=\"sub\">Computed by gridmeter serve from the current usage tables (daily windows, UTC) and the registry; the same queries as the Grafana \"gridmeter / Usage\" dashboard.</p>",
    );
    html.push_str(&chart(
        "Energy import per customer (kWh per day, top 8)",
        "kWh",
        &series,
    ));
    html.push_str(&chart("PV yield (kWh per day)", "kWh", &pv_series));
    html.push_str(&table(
        "Month over month (kWh, top 10)",
        &engine.sql(MONTHS).await?.batches,
    )?);
    html.push_str(&table(
        "Top consumers (kWh)",
        &engine.sql(TOP).await?.batches,
    )?);
    html.push_str(&table(
        "Usage per channel (channel unit)",
        &engine.sql(CHANNELS).await?.batches,
    )?);
    html.push_str("</body></html>\n");
    Ok(html)
}
