//! The export run: plan, then chunk by chunk of customers (in id order) load their rows,
//! bill them in parallel, and stream what they produce into the run's files, then publish
//! (see [`crate::stage`] for the stages).
//!
//! Peak memory is a function of [`ExportConfig::chunk_customers`]: only one chunk's usage and
//! raw rows, outcomes and rendered documents are held at a time. What is held for the whole
//! run is small per customer: the registry and the plan, one manifest entry per file, the
//! invoice numbers, the held customers' reasons and, for a re-run, the previous run's ledger
//! lines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rayon::prelude::*;
use rust_decimal::Decimal;

use crate::bill::{self, Outcome};
use crate::config::ExportConfig;
use crate::error::BillingError;
use crate::espi;
use crate::exceptions::{self, Exception};
use crate::invoice;
use crate::numbering::{self, Numbers};
use crate::period::Period;
use crate::reconcile;
use crate::stage::ledger;
use crate::stage::load;
use crate::stage::plan::{self, Cust, Plan};
use crate::stage::publish::{self, CsvWriter, Entry, LedgerWriter, RunDir, StatementWriter};
use crate::statement::{Line, LineType};
use crate::tables;
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

/// Runs the export of `period`: see the crate docs.
pub fn run(cfg: &ExportConfig, period: Period) -> Result<ExportSummary, BillingError> {
    let started = std::time::Instant::now();
    let result = rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.threads)
        .thread_name(|i| format!("billing-{i}"))
        .build()
        .map_err(|e| BillingError::Input(format!("cannot start {} threads: {e}", cfg.threads)))
        .and_then(|pool| pool.install(|| run_inner(cfg, period)));
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
            held_by_reason: held_by_reason(&s.held),
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

/// Held customers per reason kind ([`exceptions::reason_kind`]; a customer held for reasons
/// of two kinds counts in both), every kind listed.
fn held_by_reason(held: &[Exception]) -> BTreeMap<&'static str, usize> {
    let mut seen: BTreeSet<(&str, &str)> = BTreeSet::new();
    for e in held {
        seen.insert((exceptions::reason_kind(&e.reason), e.customer_id.as_str()));
    }
    exceptions::REASON_KINDS
        .into_iter()
        .map(|k| (k, seen.iter().filter(|(kind, _)| *kind == k).count()))
        .collect()
}

/// Wall time spent in the stages, over all chunks.
#[derive(Default)]
struct StageTimes {
    /// Reading the usage and raw rows.
    load: Duration,
    /// Pricing, charges and tax, reconciliation.
    bill: Duration,
    /// Ledger, adjustments and writing the chunk's files.
    publish: Duration,
}

/// The streamed outputs of a run and its running figures.
struct Outputs {
    dir: RunDir,
    statements: StatementWriter,
    recon: CsvWriter,
    ledger: LedgerWriter,
    numbers: Numbers,
    issued_numbers: BTreeMap<String, Vec<String>>,
    held: Vec<Exception>,
    mismatches: usize,
    adjustment_lines: usize,
    totals: BTreeMap<String, Decimal>,
}

fn run_inner(cfg: &ExportConfig, period: Period) -> Result<ExportSummary, BillingError> {
    cfg.check()?;
    let label = period.label();
    let plan = plan::plan(cfg, &period)?;
    let exports_root = cfg.out_dir.join("exports");
    let _lock = numbering::lock(&exports_root)?;
    let chunks = plan.chunks(cfg.chunk_customers);
    tracing::info!(period = %label, customers = plan.custs.len(), devices = plan.devs.len(), chunks = chunks.len(), "billing");
    let source = tables::Tables::open(&cfg.tables)?;

    // A hidden directory the files stream into; renamed into place at the end.
    let exports = exports_root.join(&label);
    let mut previous = ledger::latest_run(&exports)?;
    let run_name = format!("run-{:04}", previous.as_ref().map_or(1, |p| p.number + 1));
    let tmp = exports.join(format!(".{run_name}.tmp"));
    let dir = RunDir::create(tmp.clone())?;
    let mut out = Outputs {
        statements: StatementWriter::create(&dir.dir, &run_name)?,
        recon: CsvWriter::create(&dir.dir, "reconciliation.csv", reconcile::HEADER)?,
        ledger: LedgerWriter::create(&dir.dir, &label, &run_name)?,
        dir,
        numbers: Numbers::scan(&exports_root, &label, &run_name)?,
        issued_numbers: previous
            .as_ref()
            .map(|p| p.invoices.clone())
            .unwrap_or_default(),
        held: Vec::new(),
        mismatches: 0,
        adjustment_lines: 0,
        totals: BTreeMap::new(),
    };
    let run = bill::Run::new(cfg, period, &label, &plan.custs, &plan.devs);
    let ctx = Ctx {
        cfg,
        plan: &plan,
        period,
        label: &label,
        run_name: &run_name,
        site_refs: site_refs(cfg),
    };
    // Wall time per stage, for the log (benchmarks compare the load and billing stages with
    // a query engine computing the same totals). The load of a chunk runs beside the publish
    // of the one before, so the stage times overlap.
    let mut times = StageTimes::default();
    let load_chunk = |k: usize| -> Result<(load::Chunk, Duration), BillingError> {
        let t0 = Instant::now();
        let sel = plan.selection(&chunks[k]);
        let rows = load::load(cfg, &source, &plan, &sel)?;
        Ok((rows, t0.elapsed()))
    };
    let mut next = (!chunks.is_empty()).then(|| load_chunk(0)).transpose()?;
    for (k, chunk) in chunks.iter().enumerate() {
        let Some((rows, load_time)) = next.take() else {
            break;
        };
        times.load += load_time;
        // Price, charges and tax, reconcile: customer by customer, in parallel.
        let t1 = Instant::now();
        tracing::debug!(chunk = k, series = rows.usage.series.len(), "pricing");
        let data = bill::Loaded::new(&rows.usage, rows.raw.as_ref(), &rows.failures);
        let outcomes: Vec<Outcome> = chunk
            .clone()
            .into_par_iter()
            .map_init(TouCache::default, |tou, ci| {
                bill::bill_isolated(&run, &data, tou, ci)
            })
            .collect();
        drop(data);
        drop(rows);
        times.bill += t1.elapsed();
        // Ledger and adjustments, publish; meanwhile the next chunk loads.
        let end = chunks
            .get(k + 1)
            .map(|next| plan.custs[next.start].c.id.as_str());
        let before = previous
            .as_mut()
            .map(|p| p.take_before(end))
            .unwrap_or_default();
        let (loaded, published) = rayon::join(
            || {
                (k + 1 < chunks.len())
                    .then(|| load_chunk(k + 1))
                    .transpose()
            },
            || {
                let t2 = Instant::now();
                publish_chunk(&ctx, chunk.clone(), outcomes, &before, &mut out)
                    .map(|()| t2.elapsed())
            },
        );
        times.publish += published?;
        next = loaded?;
    }
    tracing::info!(
        load_s = times.load.as_secs_f64(),
        bill_s = times.bill.as_secs_f64(),
        publish_s = times.publish.as_secs_f64(),
        "stage times"
    );

    let customers = plan.custs.len();
    let statement_lines = out.statements.lines;
    let reconciliation_rows = out.recon.rows;
    if let Some(prev) = &previous {
        if statement_lines == 0 && prev.held == out.held {
            out.dir.discard();
            tracing::info!(period = %label, "nothing changed since the last run; nothing written");
            return Ok(ExportSummary {
                period: label,
                run: None,
                run_dir: None,
                customers,
                statement_lines: 0,
                adjustment_lines: 0,
                reconciliation_rows,
                reconciliation_mismatches: out.mismatches,
                held: out.held,
                totals: BTreeMap::new(),
            });
        }
    }

    // Publish.
    let Outputs {
        mut dir,
        statements,
        recon,
        ledger,
        numbers,
        mut issued_numbers,
        held,
        mismatches,
        adjustment_lines,
        totals,
    } = out;
    dir.record(statements.finish()?);
    dir.record([recon.finish()?]);
    dir.put("exceptions.csv", exceptions::to_csv(&held).as_bytes())?;
    dir.put(
        numbering::FILE,
        &serde_json::to_vec_pretty(numbers.record())
            .map_err(|e| BillingError::output("invoice numbers", e))?,
    )?;
    issued_numbers.retain(|_, v| !v.is_empty());
    dir.record([ledger.finish(&held, &issued_numbers)?]);
    dir.finish(&label, &run_name)?;
    let run_dir = exports.join(&run_name);
    std::fs::rename(&tmp, &run_dir)
        .map_err(|e| BillingError::io(format!("publishing {}", run_dir.display()), e))?;
    let held_customers = held
        .iter()
        .map(|e| e.customer_id.as_str())
        .collect::<BTreeSet<_>>()
        .len();
    tracing::info!(period = %label, run = %run_name, lines = statement_lines, held = held_customers, "export written");
    Ok(ExportSummary {
        period: label,
        run: Some(run_name),
        run_dir: Some(run_dir),
        customers,
        statement_lines,
        adjustment_lines,
        reconciliation_rows,
        reconciliation_mismatches: mismatches,
        held,
        totals,
    })
}

/// The sites of each customer for the invoice header, in id order.
fn site_refs(cfg: &ExportConfig) -> BTreeMap<&str, Vec<invoice::SiteRef>> {
    let mut site_refs: BTreeMap<&str, Vec<invoice::SiteRef>> = BTreeMap::new();
    for s in &cfg.registry.sites {
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
    site_refs
}

/// What every chunk's publishing reads.
struct Ctx<'a> {
    cfg: &'a ExportConfig,
    plan: &'a Plan<'a>,
    period: Period,
    label: &'a str,
    run_name: &'a str,
    site_refs: BTreeMap<&'a str, Vec<invoice::SiteRef>>,
}

/// Streams one chunk's results into the run: reconciliation rows, held customers, ESPI feeds
/// (rendered in parallel), statement and ledger lines against the earlier runs' `before`, and
/// numbered invoices (rendered in parallel).
fn publish_chunk(
    ctx: &Ctx,
    chunk: std::ops::Range<usize>,
    outcomes: Vec<Outcome>,
    before: &BTreeMap<String, Vec<Line>>,
    out: &mut Outputs,
) -> Result<(), BillingError> {
    let (cfg, plan, label) = (ctx.cfg, ctx.plan, ctx.label);
    let mut text = String::new();
    let mut rows = 0;
    let mut held_now: BTreeSet<&str> = BTreeSet::new();
    for (ci, o) in chunk.clone().zip(&outcomes) {
        reconcile::csv_rows(&o.recon, &mut text);
        rows += o.recon.len();
        out.mismatches += o.recon.iter().filter(|r| !r.problems.is_empty()).count();
        if !o.exceptions.is_empty() {
            for e in &o.exceptions {
                tracing::warn!(customer = %e.customer_id, device = %e.device_id, channel = %e.channel, "customer held: {}", e.reason);
            }
            out.held.extend(o.exceptions.iter().cloned());
            held_now.insert(plan.custs[ci].c.id.as_str());
        }
    }
    out.recon.put(&text, rows)?;
    drop(text);
    let billed: Vec<(&Cust, &Outcome)> = chunk
        .map(|ci| &plan.custs[ci])
        .zip(&outcomes)
        .filter(|(_, o)| o.exceptions.is_empty())
        .collect();

    // Green Button feeds, rendered and written in parallel.
    let run_dir = &out.dir;
    let feeds: Vec<Entry> = billed
        .par_iter()
        .filter(|(_, o)| !o.espi.is_empty())
        .map(|(cu, o)| {
            let bill = espi::BillSummary::of(&o.lines, cu.from, cu.to, &cu.c.currency);
            let xml = espi::feed(&espi::Feed {
                base_url: &cfg.green_button_base_url,
                customer: &cu.c.id,
                period: label,
                tz: cu.tz,
                updated: issued(cfg, cu),
                points: &o.espi,
                bill: Some(&bill),
            })
            .map_err(|e| BillingError::output("green button feed", e))?;
            let (name, bytes) = publish::espi_file(&cu.c.id, xml, cfg.green_button_gzip)?;
            run_dir.write(&name, bytes)
        })
        .collect::<Result<_, _>>()?;
    out.dir.record(feeds);

    // Corrections against what earlier runs exported.
    let lines_of: Vec<(&str, &[Line])> = billed
        .iter()
        .map(|(cu, o)| (cu.c.id.as_str(), o.lines.as_slice()))
        .collect();
    let (out_lines, ledger_lines) = ledger::corrections(before, &lines_of, &held_now);
    out.statements.put(&out_lines)?;
    out.ledger.put(&ledger_lines)?;
    drop(ledger_lines);
    out.adjustment_lines += out_lines
        .iter()
        .filter(|l| l.line_type == LineType::Adjustment)
        .count();

    // Invoices: numbered in customer order, rendered and written in parallel.
    let mut by_customer: BTreeMap<&str, Vec<&Line>> = BTreeMap::new();
    for l in &out_lines {
        by_customer
            .entry(l.customer_id.as_str())
            .or_default()
            .push(l);
    }
    let mut invoices = Vec::new();
    for (cu, o) in &billed {
        let Some(ls) = by_customer.get(cu.c.id.as_str()) else {
            continue;
        };
        let earlier = out.issued_numbers.entry(cu.c.id.clone()).or_default();
        let mut inv = invoice::build(
            invoice::Context {
                run: ctx.run_name,
                invoice_number: String::new(),
                corrects: earlier.clone(),
                issuer: &cu.issuer,
                customer: cu.c,
                sites: ctx
                    .site_refs
                    .get(cu.c.id.as_str())
                    .cloned()
                    .unwrap_or_default(),
                tz: cu.tz,
                period: label,
                period_start: cu.from,
                period_end: cu.to,
                first_day: ctx.period.from,
                last_day: ctx.period.to.pred_opt().unwrap_or(ctx.period.to),
                issued: issued(cfg, cu),
                payment_terms_days: cu.payment_terms_days,
                meters: o.meters.clone(),
            },
            ls,
        );
        inv.invoice_number = out.numbers.next(
            &cu.issuer,
            &cu.c.id,
            inv.document,
            &inv.total,
            &cu.c.currency,
        );
        earlier.push(inv.invoice_number.clone());
        *out.totals.entry(cu.c.currency.clone()).or_default() +=
            ls.iter().map(|l| l.amount).sum::<Decimal>();
        invoices.push((cu.c.id.as_str(), inv));
    }
    let run_dir = &out.dir;
    let written: Vec<[Entry; 2]> = invoices
        .par_iter()
        .map(|(id, inv)| {
            let json =
                serde_json::to_vec_pretty(inv).map_err(|e| BillingError::output("invoice", e))?;
            Ok([
                run_dir.write(&format!("invoices/{id}.json"), json)?,
                run_dir.write(
                    &format!("invoices/{id}.html"),
                    invoice::html(inv).into_bytes(),
                )?,
            ])
        })
        .collect::<Result<_, BillingError>>()?;
    out.dir.record(written.into_iter().flatten());
    Ok(())
}

/// The issue instant of a customer's documents: `as_of`, or the customer's own period end.
fn issued(cfg: &ExportConfig, cu: &Cust) -> DateTime<Utc> {
    cfg.as_of.unwrap_or(cu.to)
}
