//! The export run, in stages: plan (customers, devices, billed ranges) -> load (usage and raw
//! tables) -> bill each customer in isolation ([`crate::bill`]; a customer that cannot be
//! billed is held, see [`crate::exceptions`]) -> corrections against the previous run's
//! ledger -> publish (statements, reconciliation, exceptions, numbered invoices, ledger,
//! manifest; one rename).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::bill::{self, Cust, Dev, Inputs};
use crate::config::ExportConfig;
use crate::error::BillingError;
use crate::espi;
use crate::exceptions::{self, Exception};
use crate::invoice;
use crate::numbering::{self, Numbers};
use crate::period::Period;
use crate::reconcile;
use crate::registry::{parse_instant, Customer};
use crate::statement::{self, tax_band, Line, LineType};
use crate::tables::{self, Selection};
use crate::tariff::TouCache;

/// What a run produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    pub period: String,
    /// `run-NNNN`, or `None` when nothing changed since the last run (nothing written).
    pub run: Option<String>,
    pub run_dir: Option<PathBuf>,
    pub customers: usize,
    /// Lines written by this run (charges for a first run, adjustments afterwards).
    pub statement_lines: usize,
    pub adjustment_lines: usize,
    pub reconciliation_rows: usize,
    /// Reconciliation rows with a mismatch (their customers are held).
    pub reconciliation_mismatches: usize,
    /// Why customers are held (one entry per reason; `exceptions.csv`).
    pub held: Vec<Exception>,
    /// Total (incl. tax) of this run's lines per currency.
    pub totals: BTreeMap<String, Decimal>,
}

impl ExportSummary {
    /// The ids of the held customers, each once.
    pub fn held_customers(&self) -> BTreeSet<&str> {
        self.held.iter().map(|e| e.customer_id.as_str()).collect()
    }
}

/// The cumulative state of what has been exported for a period (`ledger.json` of the latest
/// run): every line as it stands after that run.
#[derive(Debug, Serialize, Deserialize)]
struct Ledger {
    period: String,
    run: String,
    lines: Vec<Line>,
    /// Customers held by that run, with the reasons.
    #[serde(default)]
    held: Vec<Exception>,
    /// The invoice numbers issued for this period so far, per customer.
    #[serde(default)]
    invoices: BTreeMap<String, Vec<String>>,
}

/// Runs the export of `period`: see the crate docs.
pub fn run(cfg: &ExportConfig, period: Period) -> Result<ExportSummary, BillingError> {
    let started = std::time::Instant::now();
    let result = run_inner(cfg, period);
    if let Ok(s) = &result {
        if let Some(dir) = &s.run_dir {
            crate::webhooks::publish(&cfg.webhooks, dir, &crate::webhooks::export_events(s));
        }
    }
    let figures = match &result {
        Ok(s) => crate::metrics::Figures {
            lines: s.statement_lines,
            customers: s.customers,
            mismatches: s.reconciliation_mismatches,
            held: s.held_customers().len(),
        },
        Err(_) => crate::metrics::Figures::default(),
    };
    let metrics_path = cfg
        .metrics_file
        .clone()
        .unwrap_or_else(|| cfg.out_dir.join("exports").join("metrics.prom"));
    if let Err(e) = crate::metrics::write(&metrics_path, started.elapsed(), &figures) {
        tracing::warn!("cannot write {}: {e}", metrics_path.display());
    }
    result
}

/// Customers in id order with their local period bounds, and their devices in (customer,
/// site, device) order with the billed range of each.
fn plan<'a>(
    cfg: &'a ExportConfig,
    period: &Period,
) -> Result<(Vec<Cust<'a>>, Vec<Dev<'a>>), BillingError> {
    let reg = &cfg.registry;
    let mut custs: Vec<Cust> = Vec::new();
    let mut order: Vec<&Customer> = reg.customers.iter().collect();
    order.sort_by(|a, b| a.id.cmp(&b.id));
    for c in order {
        let tz: Tz = c.time_zone.parse().map_err(|_| {
            BillingError::Input(format!(
                "bad time zone {}",
                crate::error::excerpt(&c.time_zone)
            ))
        })?;
        let (from, to) = period.bounds(tz).map_err(BillingError::Input)?;
        let tariff = cfg.tariffs.tariffs.get(&c.tariff).ok_or_else(|| {
            BillingError::Input(format!("customer {}: unknown tariff {}", c.id, c.tariff))
        })?;
        custs.push(Cust {
            c,
            tz,
            from,
            to,
            tariff,
            issuer: reg.issuer_of(c),
            payment_terms_days: reg.payment_terms_days(c),
            devs: 0..0,
        });
    }
    let cust_idx: HashMap<&str, usize> = custs
        .iter()
        .enumerate()
        .map(|(i, c)| (c.c.id.as_str(), i))
        .collect();
    let site_cust: HashMap<&str, usize> = reg
        .sites
        .iter()
        .filter_map(|s| {
            cust_idx
                .get(s.customer.as_str())
                .map(|&i| (s.id.as_str(), i))
        })
        .collect();
    let mut devs: Vec<Dev> = Vec::new();
    for d in &reg.devices {
        let Some(&ci) = site_cust.get(d.site.as_str()) else {
            continue;
        };
        let cu = &custs[ci];
        let inst = d
            .installed
            .as_deref()
            .map(|t| parse_instant(t, cu.tz))
            .transpose()
            .map_err(BillingError::Input)?;
        let rem = d
            .removed
            .as_deref()
            .map(|t| parse_instant(t, cu.tz))
            .transpose()
            .map_err(BillingError::Input)?;
        // Windows starting in [installed, removed): the billed range runs from the first such
        // window's start to the last one's end (15-minute boundaries).
        let from = ceil_15m(inst.map_or(cu.from, |t| t.max(cu.from)));
        let to = ceil_15m(rem.map_or(cu.to, |t| t.min(cu.to)));
        devs.push(Dev {
            customer: ci,
            site: &d.site,
            id: &d.id,
            multiplier: d.multiplier,
            channels: reg.channels_of(d).into_iter().collect(),
            from,
            to: to.max(from),
        });
    }
    devs.sort_by(|a, b| (a.customer, a.site, a.id).cmp(&(b.customer, b.site, b.id)));
    let mut i = 0;
    for (ci, cu) in custs.iter_mut().enumerate() {
        let start = i;
        while i < devs.len() && devs[i].customer == ci {
            i += 1;
        }
        cu.devs = start..i;
    }
    Ok((custs, devs))
}

fn selection(devs: &[Dev]) -> Selection {
    Selection {
        devices: devs
            .iter()
            .enumerate()
            .map(|(i, d)| (d.id.to_string(), i as u32))
            .collect(),
        channels: devs
            .iter()
            .map(|d| d.channels.iter().map(|(c, _)| c.clone()).collect())
            .collect(),
        range_us: devs
            .iter()
            .map(|d| (d.from.timestamp_micros(), d.to.timestamp_micros()))
            .collect(),
    }
}

/// A billed customer of this run.
struct Billed {
    ci: usize,
    lines: Vec<Line>,
    meters: Vec<invoice::Meter>,
}

fn run_inner(cfg: &ExportConfig, period: Period) -> Result<ExportSummary, BillingError> {
    cfg.check()?;
    let reg = &cfg.registry;
    let label = period.label();
    let (custs, devs) = plan(cfg, &period)?;
    let sel = selection(&devs);
    let exports_root = cfg.out_dir.join("exports");
    let _lock = numbering::lock(&exports_root)?;

    // Load.
    tracing::info!(period = %label, customers = custs.len(), devices = devs.len(), "loading usage");
    let source = tables::Tables::open(&cfg.tables)?;
    let usage_table = tables::load_usage(&source, &sel)?;
    let raw = bill::load_raw(cfg, &source, &sel, &devs)?;
    tracing::info!(series = usage_table.series.len(), "pricing");

    // A hidden directory the files stream into; renamed into place at the end.
    let exports = exports_root.join(&label);
    let previous = latest_run(&exports)?;
    let run_name = format!("run-{:04}", previous.as_ref().map_or(1, |(n, _)| n + 1));
    let tmp = exports.join(format!(".{run_name}.tmp"));
    let mut out = RunWriter::new(tmp.clone())?;

    // Bill each customer; a customer that cannot be billed is held.
    let mut sites_of: HashMap<&str, Vec<&str>> = HashMap::new();
    for s in &reg.sites {
        sites_of
            .entry(s.customer.as_str())
            .or_default()
            .push(s.id.as_str());
    }
    let inputs = Inputs {
        cfg,
        period,
        label: &label,
        custs: &custs,
        devs: &devs,
        usage: &usage_table,
        series_by: usage_table
            .series
            .iter()
            .map(|s| ((s.device, s.channel), s))
            .collect(),
        raw: raw.as_ref(),
        dev_cfgs: reg.devices.iter().map(|d| (d.id.as_str(), d)).collect(),
        site_cfgs: reg.sites.iter().map(|s| (s.id.as_str(), s)).collect(),
        sites_of,
        tou_cache: TouCache::default(),
    };
    let mut billed: Vec<Billed> = Vec::new();
    let mut held: Vec<Exception> = Vec::new();
    let mut recon: Vec<reconcile::Row> = Vec::new();
    for (ci, cu) in custs.iter().enumerate() {
        let outcome = bill::bill_isolated(&inputs, ci);
        recon.extend(outcome.recon);
        if !outcome.exceptions.is_empty() {
            for e in &outcome.exceptions {
                tracing::warn!(customer = %e.customer_id, device = %e.device_id, channel = %e.channel, "customer held: {}", e.reason);
            }
            held.extend(outcome.exceptions);
            continue;
        }
        if !outcome.espi.is_empty() {
            let bill = espi::BillSummary::of(&outcome.lines, cu.from, cu.to, &cu.c.currency);
            let xml = espi::feed(&espi::Feed {
                base_url: &cfg.green_button_base_url,
                customer: &cu.c.id,
                period: &label,
                tz: cu.tz,
                updated: issued(cfg, cu),
                points: &outcome.espi,
                bill: Some(&bill),
            })
            .map_err(|e| BillingError::output("green button feed", e))?;
            out.put(&format!("espi/{}.xml", cu.c.id), &xml)?;
        }
        billed.push(Billed {
            ci,
            lines: outcome.lines,
            meters: outcome.meters,
        });
    }
    drop(inputs);
    let mismatches = recon.iter().filter(|r| !r.problems.is_empty()).count();

    // Corrections against what earlier runs exported.
    let prev_ledger = previous.as_ref().map(|(_, l)| l);
    let held_ids: BTreeSet<&str> = held.iter().map(|e| e.customer_id.as_str()).collect();
    let (out_lines, ledger_lines) = corrections(prev_ledger, &billed, &custs, &held_ids);
    let customers = custs.len();
    if let Some(prev) = prev_ledger {
        if out_lines.is_empty() && prev.held == held {
            out.discard();
            tracing::info!(period = %label, "nothing changed since the last run; nothing written");
            return Ok(ExportSummary {
                period: label,
                run: None,
                run_dir: None,
                customers,
                statement_lines: 0,
                adjustment_lines: 0,
                reconciliation_rows: recon.len(),
                reconciliation_mismatches: mismatches,
                held,
                totals: BTreeMap::new(),
            });
        }
    }

    // Publish.
    out.put(
        "statement_lines.csv",
        statement::to_csv(&run_name, &out_lines).as_bytes(),
    )?;
    out.put(
        "statement_lines.parquet",
        &statement::to_parquet(&run_name, &out_lines)?,
    )?;
    out.put("reconciliation.csv", reconcile::to_csv(&recon).as_bytes())?;
    out.put("exceptions.csv", exceptions::to_csv(&held).as_bytes())?;
    let mut by_customer: BTreeMap<&str, Vec<&Line>> = BTreeMap::new();
    for l in &out_lines {
        by_customer
            .entry(l.customer_id.as_str())
            .or_default()
            .push(l);
    }
    let mut site_refs: BTreeMap<&str, Vec<invoice::SiteRef>> = BTreeMap::new();
    for s in &reg.sites {
        site_refs
            .entry(s.customer.as_str())
            .or_default()
            .push(invoice::SiteRef {
                id: s.id.clone(),
                name: s.name.clone(),
            });
    }
    for v in site_refs.values_mut() {
        v.sort_by(|a, b| a.id.cmp(&b.id));
    }
    let mut numbers = Numbers::scan(&exports_root, &label, &run_name)?;
    let mut issued_numbers = prev_ledger.map(|l| l.invoices.clone()).unwrap_or_default();
    let mut totals: BTreeMap<String, Decimal> = BTreeMap::new();
    for b in &billed {
        let cu = &custs[b.ci];
        let Some(ls) = by_customer.get(cu.c.id.as_str()) else {
            continue;
        };
        let earlier = issued_numbers.entry(cu.c.id.clone()).or_default();
        let mut inv = invoice::build(
            invoice::Context {
                run: &run_name,
                invoice_number: String::new(),
                corrects: earlier.clone(),
                issuer: &cu.issuer,
                customer: cu.c,
                sites: site_refs.get(cu.c.id.as_str()).cloned().unwrap_or_default(),
                tz: cu.tz,
                period: &label,
                period_start: cu.from,
                period_end: cu.to,
                first_day: period.from,
                last_day: period.to.pred_opt().unwrap_or(period.to),
                issued: issued(cfg, cu),
                payment_terms_days: cu.payment_terms_days,
                meters: b.meters.clone(),
            },
            ls,
        );
        inv.invoice_number = numbers.next(
            &cu.issuer,
            &cu.c.id,
            inv.document,
            &inv.total,
            &cu.c.currency,
        );
        earlier.push(inv.invoice_number.clone());
        *totals.entry(cu.c.currency.clone()).or_default() +=
            ls.iter().map(|l| l.amount).sum::<Decimal>();
        let json =
            serde_json::to_vec_pretty(&inv).map_err(|e| BillingError::output("invoice", e))?;
        out.put(&format!("invoices/{}.json", cu.c.id), &json)?;
        out.put(
            &format!("invoices/{}.html", cu.c.id),
            invoice::html(&inv).as_bytes(),
        )?;
    }
    out.put(
        numbering::FILE,
        &serde_json::to_vec_pretty(numbers.record())
            .map_err(|e| BillingError::output("invoice numbers", e))?,
    )?;
    issued_numbers.retain(|_, v| !v.is_empty());
    let ledger = Ledger {
        period: label.clone(),
        run: run_name.clone(),
        lines: ledger_lines,
        held: held.clone(),
        invoices: issued_numbers,
    };
    out.put(
        "ledger.json",
        &serde_json::to_vec_pretty(&ledger).map_err(|e| BillingError::output("ledger", e))?,
    )?;
    out.finish(&label, &run_name)?;
    let dir = exports.join(&run_name);
    std::fs::rename(&tmp, &dir)
        .map_err(|e| BillingError::io(format!("publishing {}", dir.display()), e))?;
    let adjustment_lines = out_lines
        .iter()
        .filter(|l| l.line_type == LineType::Adjustment)
        .count();
    tracing::info!(period = %label, run = %run_name, lines = out_lines.len(), held = held_ids.len(), "export written");
    Ok(ExportSummary {
        period: label,
        run: Some(run_name),
        run_dir: Some(dir),
        customers,
        statement_lines: out_lines.len(),
        adjustment_lines,
        reconciliation_rows: recon.len(),
        reconciliation_mismatches: mismatches,
        held,
        totals,
    })
}

/// The issue instant of a customer's documents: `as_of`, or the customer's own period end.
fn issued(cfg: &ExportConfig, cu: &Cust) -> DateTime<Utc> {
    cfg.as_of.unwrap_or(cu.to)
}

/// This run's lines and the ledger after it, customer by customer (in id order):
/// - billed, never exported for this period before: its lines are charges;
/// - billed, exported before: adjustment lines (new − exported);
/// - held: nothing now, and its exported lines stay in the ledger as they were;
/// - exported before but no longer in the registry: its lines are reversed.
fn corrections(
    prev: Option<&Ledger>,
    billed: &[Billed],
    custs: &[Cust],
    held: &BTreeSet<&str>,
) -> (Vec<Line>, Vec<Line>) {
    let mut before: BTreeMap<&str, Vec<Line>> = BTreeMap::new();
    for l in prev.map(|p| p.lines.as_slice()).unwrap_or_default() {
        before
            .entry(l.customer_id.as_str())
            .or_default()
            .push(l.clone());
    }
    let now: BTreeMap<&str, &Billed> = billed
        .iter()
        .map(|b| (custs[b.ci].c.id.as_str(), b))
        .collect();
    let ids: BTreeSet<&str> = before
        .keys()
        .copied()
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
        let new = now.get(id).map(|b| b.lines.as_slice()).unwrap_or_default();
        match old {
            None => out.extend(new.iter().cloned()),
            Some(old) => out.extend(adjustments(old, new)),
        }
        ledger.extend(new.iter().cloned());
    }
    (out, ledger)
}

/// `t` rounded up to a 15-minute boundary (UTC; every time zone offset is a multiple of 15
/// minutes, so local period bounds already are).
fn ceil_15m(t: DateTime<Utc>) -> DateTime<Utc> {
    let q = 900_000_000i64;
    let us = t.timestamp_micros();
    DateTime::from_timestamp_micros(us.div_euclid(q) * q + if us.rem_euclid(q) > 0 { q } else { 0 })
        .unwrap_or(t)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The latest published run of a period and its ledger.
fn latest_run(exports: &Path) -> Result<Option<(u32, Ledger)>, BillingError> {
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
    let text = std::fs::read(&path)
        .map_err(|e| BillingError::io(format!("reading {}", path.display()), e))?;
    let mut ledger: Ledger =
        serde_json::from_slice(&text).map_err(|e| BillingError::data(&path, e))?;
    // A tax line's band is its exact rate (ledgers of earlier versions held 4 places).
    for l in ledger.lines.iter_mut().filter(|l| l.is_tax()) {
        l.band = tax_band(l.rate);
    }
    Ok(Some((n, ledger)))
}

/// Adjustment lines: for every line key, the current line minus what was exported before.
fn adjustments(before: &[Line], now: &[Line]) -> Vec<Line> {
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

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), BillingError> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)
            .map_err(|e| BillingError::io(format!("creating {}", p.display()), e))?;
    }
    std::fs::write(path, bytes)
        .map_err(|e| BillingError::io(format!("writing {}", path.display()), e))
}

/// Streams the files of a run into its hidden directory, recording each file's SHA-256 for
/// `manifest.json`.
struct RunWriter {
    dir: PathBuf,
    manifest: Vec<(String, usize, String)>,
}

impl RunWriter {
    fn new(dir: PathBuf) -> Result<Self, BillingError> {
        if dir.exists() {
            // Left over from an interrupted run: never published, safe to drop.
            std::fs::remove_dir_all(&dir)
                .map_err(|e| BillingError::io(format!("removing {}", dir.display()), e))?;
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| BillingError::io(format!("creating {}", dir.display()), e))?;
        Ok(RunWriter {
            dir,
            manifest: Vec::new(),
        })
    }

    fn put(&mut self, name: &str, bytes: &[u8]) -> Result<(), BillingError> {
        write_file(&self.dir.join(name), bytes)?;
        self.manifest
            .push((name.to_string(), bytes.len(), hex(&Sha256::digest(bytes))));
        Ok(())
    }

    fn finish(&mut self, period: &str, run: &str) -> Result<(), BillingError> {
        self.manifest.sort();
        let files: Vec<serde_json::Value> = self
            .manifest
            .iter()
            .map(|(p, n, h)| serde_json::json!({ "path": p, "bytes": n, "sha256": h }))
            .collect();
        let m = serde_json::json!({ "period": period, "run": run, "files": files });
        let m = serde_json::to_vec_pretty(&m).map_err(|e| BillingError::output("manifest", e))?;
        write_file(&self.dir.join("manifest.json"), &m)
    }

    fn discard(&self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!("cannot remove {}: {e}", self.dir.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_up_to_15_minutes() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        assert_eq!(
            ceil_15m(t("2026-10-25T01:37:00Z")),
            t("2026-10-25T01:45:00Z")
        );
        assert_eq!(
            ceil_15m(t("2026-10-25T01:45:00Z")),
            t("2026-10-25T01:45:00Z")
        );
    }
}
