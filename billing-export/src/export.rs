//! The export run: usage -> priced lines -> reconciliation -> corrections -> files.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::ExportConfig;
use crate::error::BillingError;
use crate::espi;
use crate::invoice;
use crate::period::{days_in_month, Period};
use crate::reconcile;
use crate::registry::{parse_instant, ChannelSpec, Customer};
use crate::statement::{self, Line, LineType};
use crate::tables::{self, Selection};
use crate::tariff::{self, Component, Interval, PriceCtx};
use crate::units;

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
    /// Total (incl. tax) of this run's lines per currency.
    pub totals: BTreeMap<String, Decimal>,
}

struct Dev<'a> {
    customer: usize,
    site: &'a str,
    id: &'a str,
    multiplier: Decimal,
    channels: Vec<(String, ChannelSpec)>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
}

struct Cust<'a> {
    c: &'a Customer,
    tz: Tz,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
}

/// The cumulative state of what has been exported for a period (`ledger.json` of the latest
/// run): every line as it stands after that run.
#[derive(Debug, Serialize, Deserialize)]
struct Ledger {
    period: String,
    run: String,
    lines: Vec<Line>,
}

/// Runs the export of `period`: see the crate docs.
pub fn run(cfg: &ExportConfig, period: Period) -> Result<ExportSummary, BillingError> {
    let started = std::time::Instant::now();
    let result = run_inner(cfg, period);
    let (lines, customers, mismatches) = match &result {
        Ok(s) => (s.statement_lines, s.customers, 0),
        Err(BillingError::Reconciliation { count, .. }) => {
            (0, cfg.registry.customers.len(), *count)
        }
        Err(_) => (0, 0, 0),
    };
    let metrics_path = cfg
        .metrics_file
        .clone()
        .unwrap_or_else(|| cfg.out_dir.join("exports").join("metrics.prom"));
    if let Err(e) = crate::metrics::write(
        &metrics_path,
        started.elapsed(),
        lines,
        customers,
        mismatches,
    ) {
        tracing::warn!("cannot write {}: {e}", metrics_path.display());
    }
    result
}

fn run_inner(cfg: &ExportConfig, period: Period) -> Result<ExportSummary, BillingError> {
    cfg.check()?;
    let reg = &cfg.registry;
    let label = period.label();
    // Customers in id order with their local period bounds.
    let mut custs: Vec<Cust> = Vec::new();
    let mut order: Vec<&Customer> = reg.customers.iter().collect();
    order.sort_by(|a, b| a.id.cmp(&b.id));
    for c in order {
        let tz: Tz = c
            .time_zone
            .parse()
            .map_err(|_| BillingError::Input(format!("bad time zone {}", c.time_zone)))?;
        let (from, to) = period.bounds(tz).map_err(BillingError::Input)?;
        custs.push(Cust { c, tz, from, to });
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
    // Devices ordered by (customer, site, device).
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
    let sel = Selection {
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
    };
    tracing::info!(period = %label, customers = custs.len(), devices = devs.len(), "loading usage");
    let source = tables::Tables::open(&cfg.tables)?;
    let usage_table = tables::load_usage(&source, &sel)?;
    let mut series_by: HashMap<(u32, u16), &tables::Series> = usage_table
        .series
        .iter()
        .map(|s| ((s.device, s.channel), s))
        .collect();
    let raw = if cfg.reconcile_raw && !devs.is_empty() {
        let lo = devs
            .iter()
            .map(|d| d.from)
            .min()
            .unwrap_or_default()
            .timestamp_micros();
        let hi = devs
            .iter()
            .map(|d| d.to)
            .max()
            .unwrap_or_default()
            .timestamp_micros();
        Some(tables::load_raw(
            &source,
            &sel,
            lo,
            hi,
            |dev, chan, kind, readings| {
                let d = &devs[dev as usize];
                let (channel, spec) = &d.channels[chan as usize];
                reconcile::raw_difference(
                    kind,
                    readings,
                    d.from.timestamp_micros(),
                    d.to.timestamp_micros(),
                    &reg.counter_rules(d.id, channel, spec),
                )
            },
        )?)
    } else {
        None
    };
    tracing::info!(series = usage_table.series.len(), "pricing");

    let mut lines: Vec<Line> = Vec::new();
    let mut recon: Vec<reconcile::Row> = Vec::new();
    let dev_cfgs: HashMap<&str, &crate::registry::Device> =
        reg.devices.iter().map(|d| (d.id.as_str(), d)).collect();
    let site_cfgs: HashMap<&str, &crate::registry::Site> =
        reg.sites.iter().map(|s| (s.id.as_str(), s)).collect();
    let mut sites_of: HashMap<&str, Vec<&str>> = HashMap::new();
    for s in &reg.sites {
        sites_of
            .entry(s.customer.as_str())
            .or_default()
            .push(s.id.as_str());
    }
    // Run number and a hidden directory the files stream into; renamed into place at the end.
    let exports = cfg.out_dir.join("exports").join(&label);
    let previous = latest_run(&exports)?;
    let run_name = format!("run-{:04}", previous.as_ref().map_or(1, |(n, _)| n + 1));
    let tmp = exports.join(format!(".{run_name}.tmp"));
    let mut out = RunWriter::new(tmp.clone())?;
    let issued = cfg
        .as_of
        .unwrap_or_else(|| custs.iter().map(|c| c.to).max().unwrap_or_default());
    let issued_s = statement::iso(issued);
    let tou_cache = tariff::TouCache::default();
    let mut di = 0;
    for (ci, cu) in custs.iter().enumerate() {
        let c = cu.c;
        let tariff = cfg.tariffs.tariffs.get(&c.tariff).ok_or_else(|| {
            BillingError::Input(format!("customer {}: unknown tariff {}", c.id, c.tariff))
        })?;
        let tax_of = |comp: &Component| comp.tax_rate().unwrap_or(c.tax_rate);
        let base_line = |site: &str, device: &str, channel: &str| Line {
            line_type: LineType::Charge,
            customer_id: c.id.clone(),
            site_id: site.to_string(),
            device_id: device.to_string(),
            channel: channel.to_string(),
            component: String::new(),
            band: String::new(),
            period: label.clone(),
            period_start: cu.from,
            period_end: cu.to,
            quantity: Decimal::ZERO,
            unit: String::new(),
            rate: Decimal::ZERO,
            amount: Decimal::ZERO,
            currency: c.currency.clone(),
            minor_units: c.minor_units,
            tax_rate: c.tax_rate,
            usage_quantity: Decimal::ZERO,
            usage_unit: String::new(),
            quality: Decimal::ZERO,
            revision: 0,
            previous_revision: None,
            peak_at: None,
            peak_at_local: String::new(),
        };
        let first_line = lines.len();
        // Sites of this customer in id order, each with its devices.
        let mut sites: Vec<&str> = sites_of.get(c.id.as_str()).cloned().unwrap_or_default();
        let mut espi_points: Vec<espi::UsagePoint> = Vec::new();
        sites.sort();
        for site in sites {
            let mut site_span: Option<(DateTime<Utc>, Option<DateTime<Utc>>)> = None;
            while di < devs.len() && devs[di].customer == ci && devs[di].site == site {
                let d = &devs[di];
                let dev_cfg = dev_cfgs.get(d.id).copied();
                if let Some(dc) = dev_cfg {
                    let inst = dc
                        .installed
                        .as_deref()
                        .and_then(|t| parse_instant(t, cu.tz).ok())
                        .unwrap_or(DateTime::<Utc>::MIN_UTC);
                    let rem = dc
                        .removed
                        .as_deref()
                        .and_then(|t| parse_instant(t, cu.tz).ok());
                    site_span = Some(match site_span {
                        None => (inst, rem),
                        Some((a, b)) => (
                            a.min(inst),
                            match (b, rem) {
                                (Some(x), Some(y)) => Some(x.max(y)),
                                _ => None,
                            },
                        ),
                    });
                }
                for (chi, (channel, spec)) in d.channels.iter().enumerate() {
                    let Some(s) = series_by.remove(&(di as u32, chi as u16)) else {
                        continue;
                    };
                    let gauge = s.kind == "gauge";
                    let unit = if gauge {
                        format!("{}h", units::canonical(&s.unit))
                    } else {
                        s.unit.clone()
                    };
                    // Gauge averages become quantity × hours (15 minutes = 0.25 h).
                    let factor = if gauge {
                        d.multiplier * Decimal::new(25, 2)
                    } else {
                        d.multiplier
                    };
                    let intervals: Vec<Interval> = usage_table
                        .rows(s)
                        .map(|(ws, v, est, rev)| Interval {
                            start: DateTime::from_timestamp_micros(ws).unwrap_or_default(),
                            quantity: v * factor,
                            estimated: est,
                            revision: rev,
                        })
                        .collect();
                    let usage: Decimal = usage_table.rows(s).map(|r| r.1).sum();
                    let ctx = PriceCtx {
                        tz: cu.tz,
                        unit: &unit,
                        minor_units: c.minor_units,
                        rounding: cfg.rounding,
                        tou_cache: Some(&tou_cache),
                    };
                    let mut problems = Vec::new();
                    let mut billed: Option<Decimal> = None;
                    for comp in tariff
                        .components
                        .iter()
                        .filter(|k| k.quantity() == Some(spec.quantity.as_str()))
                    {
                        let fail = |e: tariff::PriceError| {
                            BillingError::Input(format!(
                                "customer {} device {} channel {}: {}",
                                c.id, d.id, channel, e.0
                            ))
                        };
                        tariff::check_unit(comp, &unit).map_err(fail)?;
                        let priced = tariff::price(&ctx, comp, &intervals).map_err(fail)?;
                        if comp.is_volumetric() && !gauge {
                            let b: Decimal = priced.iter().map(|p| p.usage_quantity).sum();
                            if b != usage * d.multiplier {
                                problems.push(format!(
                                    "component {} bills {} {} but usage × multiplier is {}",
                                    comp.name(),
                                    b,
                                    unit,
                                    usage * d.multiplier
                                ));
                            }
                            billed.get_or_insert(b);
                        }
                        for p in priced {
                            let mut l = base_line(site, d.id, channel);
                            l.component = p.component;
                            l.band = p.band;
                            l.quantity = p.quantity;
                            l.unit = p.unit;
                            l.rate = p.rate;
                            l.amount = p.amount;
                            l.tax_rate = tax_of(comp);
                            l.usage_quantity = p.usage_quantity;
                            l.usage_unit = unit.clone();
                            l.quality = p.quality;
                            l.revision = p.revision;
                            l.peak_at = p.peak_at;
                            l.peak_at_local = p
                                .peak_at
                                .map(|t| {
                                    t.with_timezone(&cu.tz)
                                        .to_rfc3339_opts(SecondsFormat::Secs, true)
                                })
                                .unwrap_or_default();
                            lines.push(l);
                        }
                    }
                    if !gauge {
                        let mut raw_diff = None;
                        if let Some(raw) = &raw {
                            let (v, n) = raw
                                .get(&(di as u32, chi as u16))
                                .copied()
                                .unwrap_or((Decimal::ZERO, 0));
                            if v != usage {
                                problems.push(format!(
                                    "usage sum {usage} {} differs from the raw register difference {v} ({} readings)",
                                    s.unit,
                                    n
                                ));
                            }
                            raw_diff = Some(v);
                        }
                        recon.push(reconcile::Row {
                            customer_id: c.id.clone(),
                            site_id: site.to_string(),
                            device_id: d.id.to_string(),
                            channel: channel.clone(),
                            kind: s.kind.clone(),
                            unit: s.unit.clone(),
                            multiplier: d.multiplier,
                            usage,
                            raw: raw_diff,
                            billed,
                            problems,
                        });
                        if cfg.green_button {
                            if let Some(to_wh) = units::factor(&s.unit, "Wh")
                                .filter(|_| matches!(s.unit.as_str(), "Wh" | "kWh"))
                            {
                                espi_points.push(espi::UsagePoint {
                                    device_id: d.id.to_string(),
                                    channel: channel.clone(),
                                    reverse: spec.quantity == "export_energy",
                                    intervals: intervals
                                        .iter()
                                        .map(|iv| (iv.start, iv.quantity * to_wh, iv.estimated))
                                        .collect(),
                                });
                            }
                        }
                    }
                }
                di += 1;
            }
            // Fixed charges of the site, pro-rated by active local days.
            let site_cfg = site_cfgs.get(site).copied();
            let parse =
                |v: &Option<String>| v.as_deref().and_then(|t| parse_instant(t, cu.tz).ok());
            let (inst, rem) = match site_cfg {
                Some(s) if s.installed.is_some() || s.removed.is_some() => (
                    parse(&s.installed).unwrap_or(DateTime::<Utc>::MIN_UTC),
                    parse(&s.removed),
                ),
                _ => site_span.unwrap_or((DateTime::<Utc>::MIN_UTC, None)),
            };
            for comp in &tariff.components {
                let Component::Fixed(f) = comp else { continue };
                for (m_from, m_to) in period.months() {
                    let days = active_days(m_from, m_to, inst, rem, cu.tz);
                    if days == 0 {
                        continue;
                    }
                    let rate = (f.monthly / Decimal::from(days_in_month(m_from)))
                        .round_dp(crate::money::QUANTITY_SCALE);
                    let qty = Decimal::from(days);
                    let mut l = base_line(site, "", "");
                    l.component = f.name.clone();
                    l.band = m_from.format("%Y-%m").to_string();
                    l.quantity = qty;
                    l.unit = "day".into();
                    l.rate = rate;
                    l.amount = cfg.rounding.round(qty * rate, c.minor_units);
                    l.tax_rate = tax_of(comp);
                    lines.push(l);
                }
            }
        }
        if !espi_points.is_empty() {
            out.put(
                &format!("espi/{}.xml", c.id),
                espi::feed(&c.id, &label, cu.tz, issued, &espi_points).as_bytes(),
            )?;
        }
        // Taxes: one line per rate, on the sum of the rounded line amounts at that rate.
        let mut by_rate: BTreeMap<Decimal, Decimal> = BTreeMap::new();
        for l in &lines[first_line..] {
            *by_rate.entry(l.tax_rate.normalize()).or_default() += l.amount;
        }
        for (rate, base) in by_rate {
            if rate.is_zero() {
                continue;
            }
            let mut l = base_line("", "", "");
            l.component = "tax".into();
            l.band = crate::money::fixed(rate, 4);
            l.quantity = base;
            l.unit = c.currency.clone();
            l.rate = rate;
            l.tax_rate = rate;
            l.amount = cfg.rounding.round(base * rate, c.minor_units);
            lines.push(l);
        }
    }

    let mismatches: Vec<&reconcile::Row> =
        recon.iter().filter(|r| !r.problems.is_empty()).collect();
    if !mismatches.is_empty() {
        let details: Vec<String> = mismatches
            .iter()
            .map(|r| {
                format!(
                    "customer {} device {} channel {}: {}",
                    r.customer_id,
                    r.device_id,
                    r.channel,
                    r.problems.join("; ")
                )
            })
            .collect();
        out.discard();
        let failed = exports.join("_failed");
        write_file(
            &failed.join("reconciliation.csv"),
            reconcile::to_csv(&recon).as_bytes(),
        )?;
        return Err(BillingError::Reconciliation {
            count: mismatches.len(),
            details: details.join("\n"),
        });
    }

    // Corrections against what earlier runs exported.
    let out_lines = match &previous {
        None => lines.clone(),
        Some((_, ledger)) => adjustments(&ledger.lines, &lines),
    };
    let customers = custs.len();
    if previous.is_some() && out_lines.is_empty() {
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
            totals: BTreeMap::new(),
        });
    }
    out.put(
        "statement_lines.csv",
        statement::to_csv(&run_name, &out_lines).as_bytes(),
    )?;
    out.put(
        "statement_lines.parquet",
        &statement::to_parquet(&run_name, &out_lines)?,
    )?;
    out.put("reconciliation.csv", reconcile::to_csv(&recon).as_bytes())?;
    let mut by_customer: BTreeMap<&str, Vec<&Line>> = BTreeMap::new();
    for l in &out_lines {
        by_customer
            .entry(l.customer_id.as_str())
            .or_default()
            .push(l);
    }
    let mut totals: BTreeMap<String, Decimal> = BTreeMap::new();
    for cu in &custs {
        let Some(ls) = by_customer.get(cu.c.id.as_str()) else {
            continue;
        };
        let inv = invoice::build(&run_name, cu.c, &issued_s, ls);
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
    let ledger = Ledger {
        period: label.clone(),
        run: run_name.clone(),
        lines: lines.clone(),
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
    tracing::info!(period = %label, run = %run_name, lines = out_lines.len(), "export written");
    Ok(ExportSummary {
        period: label,
        run: Some(run_name),
        run_dir: Some(dir),
        customers,
        statement_lines: out_lines.len(),
        adjustment_lines,
        reconciliation_rows: recon.len(),
        totals,
    })
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

/// Local dates in `[m_from, m_to)` on which the site was active: from its installation date
/// (that day counts) to its removal (the removal day counts unless removal is at local midnight).
fn active_days(
    m_from: chrono::NaiveDate,
    m_to: chrono::NaiveDate,
    inst: DateTime<Utc>,
    rem: Option<DateTime<Utc>>,
    tz: Tz,
) -> i64 {
    let first = if inst == DateTime::<Utc>::MIN_UTC {
        m_from
    } else {
        inst.with_timezone(&tz).date_naive().max(m_from)
    };
    let last_excl = match rem {
        None => m_to,
        Some(r) => {
            let local = r.with_timezone(&tz);
            let d = local.date_naive();
            let at_midnight = crate::registry::local_midnight(d, tz)
                .map(|m| m == r)
                .unwrap_or(false);
            let end = if at_midnight {
                d
            } else {
                d.succ_opt().unwrap_or(d)
            };
            end.min(m_to)
        }
    };
    (last_excl - first).num_days().max(0)
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
    let ledger: Ledger = serde_json::from_slice(&text).map_err(|e| BillingError::data(&path, e))?;
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
    fn fixed_charges_prorate_by_local_days() {
        let tz: Tz = chrono_tz::Europe::Berlin;
        let d = |s: &str| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let (oct, nov) = (d("2026-10-01"), d("2026-11-01"));
        // Installed 2026-10-15 12:00 local: the 15th counts, so 15..=31 = 17 days.
        assert_eq!(
            active_days(oct, nov, t("2026-10-15T10:00:00Z"), None, tz),
            17
        );
        // Installed 2026-10-14T22:30Z = 2026-10-15 00:30 local: still the 15th.
        assert_eq!(
            active_days(oct, nov, t("2026-10-14T22:30:00Z"), None, tz),
            17
        );
        // Removed at local midnight of the 21st: days 1..=20.
        let open = DateTime::<Utc>::MIN_UTC;
        assert_eq!(
            active_days(oct, nov, open, Some(t("2026-10-20T22:00:00Z")), tz),
            20
        );
        // Removed during the 21st: that day counts.
        assert_eq!(
            active_days(oct, nov, open, Some(t("2026-10-21T09:00:00Z")), tz),
            21
        );
        assert_eq!(active_days(oct, nov, open, None, tz), 31);
    }

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
