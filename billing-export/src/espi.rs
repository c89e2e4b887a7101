//! Green Button (NAESB ESPI) interval data: an Atom feed per customer with, per usage point
//! (device energy channel), the entries UsagePoint, MeterReading, ReadingType and one
//! IntervalBlock per local day, each with IntervalReading/timePeriod/{duration,start} and value.
//!
//! ESPI values are integers (`Int48`) scaled by `ReadingType/powerOfTenMultiplier`; the
//! multiplier is chosen per usage point as the smallest that keeps every value exact (no
//! rounding): Wh with up to 9 decimals gives at most 10^-9.

use std::fmt::Write;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;

/// One usage point's intervals (energy, Wh, multiplier applied).
pub struct UsagePoint {
    pub device_id: String,
    pub channel: String,
    /// `true` for energy delivered to the grid (flowDirection 19 = reverse).
    pub reverse: bool,
    /// (start, Wh, estimated)
    pub intervals: Vec<(DateTime<Utc>, Decimal, bool)>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// The ESPI feed XML for one customer. `updated` is the run's as-of time (an input, so the
/// output stays reproducible).
pub fn feed(
    customer: &str,
    period: &str,
    tz: Tz,
    updated: DateTime<Utc>,
    points: &[UsagePoint],
) -> String {
    let upd = crate::statement::iso(updated);
    let base = format!("urn:gridmeter:{}:{}", esc(customer), esc(period));
    let mut x = String::with_capacity(
        1024 + points
            .iter()
            .map(|p| p.intervals.len() * 160)
            .sum::<usize>(),
    );
    x.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    x.push_str(
        "<feed xmlns=\"http://www.w3.org/2005/Atom\" xmlns:espi=\"http://naesb.org/espi\">\n",
    );
    let _ = writeln!(x, "  <id>{base}</id>");
    let _ = writeln!(
        x,
        "  <title>Green Button usage for customer {} period {}</title>",
        esc(customer),
        esc(period)
    );
    let _ = writeln!(x, "  <updated>{upd}</updated>");
    let entry =
        |x: &mut String, id: &str, href: &str, related: &[String], title: &str, content: &str| {
            let _ = writeln!(x, "  <entry>");
            let _ = writeln!(x, "    <id>{id}</id>");
            let _ = writeln!(x, "    <link rel=\"self\" href=\"{href}\"/>");
            for r in related {
                let _ = writeln!(x, "    <link rel=\"related\" href=\"{r}\"/>");
            }
            let _ = writeln!(x, "    <title>{title}</title>");
            let _ = writeln!(x, "    <published>{upd}</published>");
            let _ = writeln!(x, "    <updated>{upd}</updated>");
            let _ = writeln!(x, "    <content>\n{content}    </content>");
            let _ = writeln!(x, "  </entry>");
        };
    for (n, p) in points.iter().enumerate() {
        let up = n + 1;
        let name = esc(&format!("{} {}", p.device_id, p.channel));
        let up_href = format!("RetailCustomer/{}/UsagePoint/{up}", esc(customer));
        let mr_href = format!("{up_href}/MeterReading/1");
        let rt_href = format!("ReadingType/{up}");
        entry(
            &mut x,
            &format!("{base}:UsagePoint:{up}"),
            &up_href,
            &[format!("{up_href}/MeterReading")],
            &name,
            "      <espi:UsagePoint>\n        <espi:ServiceCategory>\n          <espi:kind>0</espi:kind>\n        </espi:ServiceCategory>\n      </espi:UsagePoint>\n",
        );
        entry(
            &mut x,
            &format!("{base}:MeterReading:{up}"),
            &mr_href,
            &[format!("{mr_href}/IntervalBlock"), rt_href.clone()],
            &name,
            "      <espi:MeterReading/>\n",
        );
        // Smallest power of ten keeping every value an exact integer.
        let scale = p
            .intervals
            .iter()
            .map(|(_, v, _)| v.normalize().scale())
            .max()
            .unwrap_or(0);
        let rt = format!(
            "      <espi:ReadingType>\n        <espi:accumulationBehaviour>4</espi:accumulationBehaviour>\n        <espi:commodity>1</espi:commodity>\n        <espi:dataQualifier>12</espi:dataQualifier>\n        <espi:flowDirection>{}</espi:flowDirection>\n        <espi:intervalLength>900</espi:intervalLength>\n        <espi:kind>12</espi:kind>\n        <espi:phase>769</espi:phase>\n        <espi:powerOfTenMultiplier>{}</espi:powerOfTenMultiplier>\n        <espi:timeAttribute>0</espi:timeAttribute>\n        <espi:uom>72</espi:uom>\n      </espi:ReadingType>\n",
            if p.reverse { 19 } else { 1 },
            -(scale as i64)
        );
        entry(
            &mut x,
            &format!("{base}:ReadingType:{up}"),
            &rt_href,
            &[],
            &format!("{name} Wh"),
            &rt,
        );
        // One IntervalBlock per local day.
        let mut i = 0;
        let mut block = 0;
        while i < p.intervals.len() {
            let day = p.intervals[i].0.with_timezone(&tz).date_naive();
            let mut j = i;
            while j < p.intervals.len() && p.intervals[j].0.with_timezone(&tz).date_naive() == day {
                j += 1;
            }
            block += 1;
            let start = p.intervals[i].0.timestamp();
            let end = p.intervals[j - 1].0.timestamp() + 900;
            let mut c = String::with_capacity((j - i) * 170 + 200);
            let _ = writeln!(c, "      <espi:IntervalBlock>");
            let _ = writeln!(
                c,
                "        <espi:interval>\n          <espi:duration>{}</espi:duration>\n          <espi:start>{start}</espi:start>\n        </espi:interval>",
                end - start
            );
            for (t, v, est) in &p.intervals[i..j] {
                let mut m = v.normalize();
                m.rescale(scale);
                let _ = write!(c, "        <espi:IntervalReading>");
                if *est {
                    // ESPI QualityOfReading 8 = estimated.
                    let _ = write!(
                        c,
                        "<espi:ReadingQuality><espi:quality>8</espi:quality></espi:ReadingQuality>"
                    );
                }
                let _ = writeln!(
                    c,
                    "<espi:timePeriod><espi:duration>900</espi:duration><espi:start>{}</espi:start></espi:timePeriod><espi:value>{}</espi:value></espi:IntervalReading>",
                    t.timestamp(),
                    m.mantissa()
                );
            }
            let _ = writeln!(c, "      </espi:IntervalBlock>");
            entry(
                &mut x,
                &format!("{base}:IntervalBlock:{up}:{block}"),
                &format!("{mr_href}/IntervalBlock/{block}"),
                &[],
                &format!("{name} {day}"),
                &c,
            );
            i = j;
        }
    }
    x.push_str("</feed>\n");
    x
}
