//! Stage 6, ledger and adjustments: what earlier runs exported for the period (`ledger.json`
//! of the latest run), and this run's lines against it, customer by customer in id order:
//!
//! - billed, never exported for this period before: its lines are charges;
//! - billed, exported before: adjustment lines (new − exported);
//! - held: nothing now, and its exported lines stay in the ledger as they were;
//! - exported before but no longer in the registry: its lines are reversed.
//!
//! The chunks of a run cover consecutive ranges of customer ids; [`Previous::take_before`]
//! hands each chunk the earlier lines of its range.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::error::BillingError;
use crate::exceptions::Exception;
use crate::statement::{tax_band, Line, LineType};

/// The cumulative state of what has been exported for a period (`ledger.json` of the latest
/// run): every line as it stands after that run.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Ledger {
    pub period: String,
    pub run: String,
    pub lines: Vec<Line>,
    /// Customers held by that run, with the reasons.
    #[serde(default)]
    pub held: Vec<Exception>,
    /// The invoice numbers issued for this period so far, per customer.
    #[serde(default)]
    pub invoices: BTreeMap<String, Vec<String>>,
}

/// The latest published run of a period: its number, held customers and invoice numbers, and
/// its ledger lines by customer id, handed out chunk by chunk.
pub(crate) struct Previous {
    pub number: u32,
    pub held: Vec<Exception>,
    pub invoices: BTreeMap<String, Vec<String>>,
    lines: BTreeMap<String, Vec<Line>>,
}

impl Previous {
    /// The ledger lines of customers with ids before `end` (all that are left when `None`),
    /// removed from what is left.
    pub fn take_before(&mut self, end: Option<&str>) -> BTreeMap<String, Vec<Line>> {
        match end {
            None => std::mem::take(&mut self.lines),
            Some(end) => {
                let rest = self.lines.split_off(end);
                std::mem::replace(&mut self.lines, rest)
            }
        }
    }
}

/// The latest published run under `exports` (`<out>/exports/<period>`), if any.
pub(crate) fn latest_run(exports: &Path) -> Result<Option<Previous>, BillingError> {
    if !exports.exists() {
        return Ok(None);
    }
    let mut best: Option<(u32, PathBuf)> = None;
    let rd = std::fs::read_dir(exports)
        .map_err(|e| BillingError::io(format!("listing {}", exports.display()), e))?;
    for e in rd {
        let e = e.map_err(|e| BillingError::io(format!("listing {}", exports.display()), e))?;
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(n) = name
            .strip_prefix("run-")
            .and_then(|n| n.parse::<u32>().ok())
        {
            if best.as_ref().is_none_or(|(b, _)| n > *b) {
                best = Some((n, e.path()));
            }
        }
    }
    let Some((n, dir)) = best else {
        return Ok(None);
    };
    let path = dir.join("ledger.json");
    let file = std::fs::File::open(&path)
        .map_err(|e| BillingError::io(format!("reading {}", path.display()), e))?;
    let ledger: Ledger = serde_json::from_reader(std::io::BufReader::new(file))
        .map_err(|e| BillingError::data(&path, e))?;
    let mut lines: BTreeMap<String, Vec<Line>> = BTreeMap::new();
    for mut l in ledger.lines {
        // A tax line's band is its exact rate (ledgers of earlier versions held 4 places).
        if l.is_tax() {
            l.band = tax_band(l.rate);
        }
        lines.entry(l.customer_id.clone()).or_default().push(l);
    }
    Ok(Some(Previous {
        number: n,
        held: ledger.held,
        invoices: ledger.invoices,
        lines,
    }))
}

/// This chunk's statement lines and ledger lines, in customer id order: `before` holds the
/// exported lines of the chunk's id range, `billed` the lines of its billed customers, `held`
/// its held customers (see the module docs).
pub(crate) fn corrections(
    before: &BTreeMap<String, Vec<Line>>,
    billed: &[(&str, &[Line])],
    held: &BTreeSet<&str>,
) -> (Vec<Line>, Vec<Line>) {
    let now: BTreeMap<&str, &[Line]> = billed.iter().copied().collect();
    let ids: BTreeSet<&str> = before
        .keys()
        .map(String::as_str)
        .chain(now.keys().copied())
        .chain(held.iter().copied())
        .collect();
    let (mut out, mut ledger) = (Vec::new(), Vec::new());
    for id in ids {
        let old = before.get(id);
        if held.contains(id) {
            ledger.extend(old.into_iter().flatten().cloned());
            continue;
        }
        let new = now.get(id).copied().unwrap_or_default();
        match old {
            None => out.extend(new.iter().cloned()),
            Some(old) => out.extend(adjustments(old, new)),
        }
        ledger.extend(new.iter().cloned());
    }
    (out, ledger)
}

/// Adjustment lines: for every line key, the current line minus what was exported before.
pub(crate) fn adjustments(before: &[Line], now: &[Line]) -> Vec<Line> {
    let old: HashMap<_, &Line> = before.iter().map(|l| (l.key(), l)).collect();
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut push = |new: Option<&Line>, prev: Option<&Line>| {
        let Some(base) = new.or(prev) else { return };
        let z = Decimal::ZERO;
        let dq = new.map_or(z, |l| l.quantity) - prev.map_or(z, |l| l.quantity);
        let da = new.map_or(z, |l| l.amount) - prev.map_or(z, |l| l.amount);
        let du = new.map_or(z, |l| l.usage_quantity) - prev.map_or(z, |l| l.usage_quantity);
        if dq.is_zero() && da.is_zero() && du.is_zero() {
            return;
        }
        let mut l = base.clone();
        l.line_type = LineType::Adjustment;
        l.quantity = dq;
        l.amount = da;
        l.usage_quantity = du;
        l.revision = new.map_or(0, |l| l.revision);
        l.previous_revision = Some(prev.map_or(0, |l| l.revision));
        out.push(l);
    };
    for l in now {
        seen.insert(l.key());
        push(Some(l), old.get(&l.key()).copied());
    }
    for l in before {
        if !seen.contains(&l.key()) {
            push(None, Some(l));
        }
    }
    out.sort_by(|a, b| {
        (
            a.customer_id.as_str(),
            a.is_tax(),
            a.site_id.as_str(),
            a.device_id.as_str(),
            a.channel.as_str(),
            a.component.as_str(),
            a.band.as_str(),
        )
            .cmp(&(
                b.customer_id.as_str(),
                b.is_tax(),
                b.site_id.as_str(),
                b.device_id.as_str(),
                b.channel.as_str(),
                b.component.as_str(),
                b.band.as_str(),
            ))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};

    fn line(customer: &str, component: &str, quantity: i64, amount: i64) -> Line {
        let t = DateTime::<Utc>::from_timestamp(1_790_805_600, 0).unwrap();
        Line {
            line_type: LineType::Charge,
            customer_id: customer.into(),
            site_id: "S".into(),
            device_id: "m".into(),
            channel: "energy_import".into(),
            component: component.into(),
            band: String::new(),
            period: "2026-10".into(),
            period_start: t,
            period_end: t,
            quantity: Decimal::from(quantity),
            unit: "kWh".into(),
            rate: Decimal::ONE,
            amount: Decimal::from(amount),
            currency: "EUR".into(),
            minor_units: 2,
            tax_rate: Decimal::ZERO,
            usage_quantity: Decimal::from(quantity),
            usage_unit: "kWh".into(),
            quality: Decimal::ZERO,
            edited_share: Decimal::ZERO,
            revision: 1,
            previous_revision: None,
            peak_at: None,
            peak_at_local: String::new(),
        }
    }

    #[test]
    fn adjustments_are_differences_per_line_key() {
        let before = [line("C1", "energy", 10, 3), line("C1", "gone", 1, 1)];
        let mut changed = line("C1", "energy", 12, 4);
        changed.revision = 2;
        let now = [changed, line("C1", "new", 2, 2)];
        let adj = adjustments(&before, &now);
        let got: Vec<(&str, String, String, Option<i64>)> = adj
            .iter()
            .map(|l| {
                (
                    l.component.as_str(),
                    l.quantity.to_string(),
                    l.amount.to_string(),
                    l.previous_revision,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("energy", "2".into(), "1".into(), Some(1)),
                ("gone", "-1".into(), "-1".into(), Some(1)),
                ("new", "2".into(), "2".into(), Some(0)),
            ]
        );
        assert!(adj.iter().all(|l| l.line_type == LineType::Adjustment));
        assert!(adjustments(&before, &before).is_empty());
    }

    #[test]
    fn chunks_see_the_earlier_lines_of_their_id_range_once() {
        let mut prev = Previous {
            number: 1,
            held: Vec::new(),
            invoices: BTreeMap::new(),
            lines: ["A", "B", "C", "D"]
                .iter()
                .map(|c| (c.to_string(), vec![line(c, "energy", 1, 1)]))
                .collect(),
        };
        // Chunks start at "B" and "D": "A" (no longer in the registry) goes with the first.
        let first = prev.take_before(Some("D"));
        assert_eq!(first.keys().collect::<Vec<_>>(), ["A", "B", "C"]);
        let rest = prev.take_before(None);
        assert_eq!(rest.keys().collect::<Vec<_>>(), ["D"]);
        assert!(prev.take_before(None).is_empty());
        // First chunk: B billed unchanged, C held, A gone: A is reversed, B has nothing to
        // adjust, C keeps its exported line in the ledger.
        let b = [line("B", "energy", 1, 1)];
        let held: BTreeSet<&str> = ["C"].into_iter().collect();
        let (out, ledger) = corrections(&first, &[("B", &b)], &held);
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].customer_id.as_str(), out[0].amount),
            ("A", Decimal::from(-1))
        );
        let ids: Vec<&str> = ledger.iter().map(|l| l.customer_id.as_str()).collect();
        assert_eq!(ids, ["B", "C"]);
        // A first run: lines are charges, as billed.
        let (out, ledger) = corrections(&BTreeMap::new(), &[("B", &b)], &BTreeSet::new());
        assert_eq!(out[0].line_type, LineType::Charge);
        assert_eq!(ledger.len(), 1);
    }
}
