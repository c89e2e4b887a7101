//! `gridmeter-billing run --config billing.toml --period 2026-10 | --from D --to D`,
//! `gridmeter-billing push --config billing.toml --run 2026-10/run-0001 --to stripe|zuora-file`,
//! `gridmeter-billing webhooks --config billing.toml --run 2026-10/run-0001`.
//!
//! Exit status: 0 when every customer was billed (pushed); 2 when the run was published but
//! some customers are held (a push: some customers were not pushed), each reason printed; 1
//! on an error (nothing published).

use std::path::PathBuf;

use anyhow::{bail, Context};
use chrono::NaiveDate;
use clap::{Parser, Subcommand};
use gridmeter_billing::{push, run, ExportConfig, Period, Target};

#[derive(Parser)]
#[command(
    name = "gridmeter-billing",
    about = "Billing export: statements, invoices, Green Button, reconciliation"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Export one period (a local calendar month, or local dates [from, to)).
    Run {
        #[arg(long)]
        config: PathBuf,
        /// YYYY-MM
        #[arg(long, conflicts_with_all = ["from", "to"])]
        period: Option<String>,
        /// First local date (YYYY-MM-DD), inclusive.
        #[arg(long, requires = "to")]
        from: Option<NaiveDate>,
        /// Last local date (YYYY-MM-DD), exclusive.
        #[arg(long, requires = "from")]
        to: Option<NaiveDate>,
        /// Issue time written into invoices and feeds (RFC 3339); default: the period end.
        #[arg(long)]
        as_of: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// Deliver a published run: Stripe invoices, or Zuora's usage import file. Resumes where
    /// an interrupted push stopped; a second push of the same run creates nothing.
    Push {
        #[arg(long)]
        config: PathBuf,
        /// `<period>/run-NNNN`, e.g. 2026-10/run-0001 (under <out_dir>/exports/).
        #[arg(long)]
        run: String,
        /// stripe or zuora-file
        #[arg(long)]
        to: Target,
    },
    /// Send again the webhook events of a run that an endpoint has not received.
    Webhooks {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        run: String,
    },
}

fn main() -> std::process::ExitCode {
    match run_cli() {
        Ok(code) => code,
        Err(e) => {
            // The message and its causes once, never a backtrace (RUST_BACKTRACE or not).
            eprintln!(
                "gridmeter-billing: {}",
                gridmeter_core::config::error_report(e.as_ref())
            );
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the command line; the exit code is 2 when the run was published with customers held.
fn run_cli() -> anyhow::Result<std::process::ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Push { config, run, to } => {
            let cfg = ExportConfig::load(&config)
                .with_context(|| format!("loading {}", config.display()))?;
            let s = push(&cfg, &run, to)?;
            println!(
                "{} -> {}: {} of {} documents delivered ({} objects created, {} found again after an interruption, {} delivered before)",
                s.run,
                to.as_str(),
                if to == Target::Stripe { s.done } else { s.documents },
                s.documents,
                s.created,
                s.recovered,
                s.already
            );
            for f in &s.files {
                println!("  file {f}");
            }
            for (cur, t) in &s.totals {
                println!("  total {cur} {t}");
            }
            if !s.failed.is_empty() {
                eprintln!("{} customer(s) not pushed:", s.failed.len());
                for (c, why) in &s.failed {
                    eprintln!("  {c}: {why}");
                }
                return Ok(std::process::ExitCode::from(2));
            }
        }
        Cmd::Webhooks { config, run } => {
            let cfg = ExportConfig::load(&config)
                .with_context(|| format!("loading {}", config.display()))?;
            let dir = gridmeter_billing::push::document::RunRef::resolve(&cfg.out_dir, &run)?;
            let d = gridmeter_billing::webhooks::resend(&cfg.webhooks, &dir.dir);
            let failed = d.iter().filter(|d| !d.delivered).count();
            println!("{} deliveries, {} failed", d.len(), failed);
            if failed > 0 {
                return Ok(std::process::ExitCode::from(2));
            }
        }
        Cmd::Run {
            config,
            period,
            from,
            to,
            as_of,
        } => {
            let mut cfg = ExportConfig::load(&config)
                .with_context(|| format!("loading {}", config.display()))?;
            if as_of.is_some() {
                cfg.as_of = as_of;
            }
            let period = match (period, from, to) {
                (Some(p), None, None) => p.parse::<Period>().map_err(anyhow::Error::msg)?,
                (None, Some(f), Some(t)) => {
                    Period::range(f, t).context("--from must be before --to")?
                }
                _ => bail!("give --period YYYY-MM or --from and --to"),
            };
            let s = run(&cfg, period)?;
            match &s.run_dir {
                Some(d) => println!(
                    "{} {}: {} lines ({} adjustments) for {} customers -> {}",
                    s.period,
                    s.run.as_deref().unwrap_or(""),
                    s.statement_lines,
                    s.adjustment_lines,
                    s.customers,
                    d.display()
                ),
                None => println!(
                    "{}: no change since the last run; nothing written",
                    s.period
                ),
            }
            for (cur, t) in &s.totals {
                println!("  total {cur} {t}");
            }
            if !s.held.is_empty() {
                let customers = s.held_customers();
                eprintln!(
                    "{} customer(s) held, not billed (exceptions.csv):",
                    customers.len()
                );
                for e in &s.held {
                    eprintln!(
                        "  {} {} {} {}: {}",
                        e.customer_id, e.site_id, e.device_id, e.channel, e.reason
                    );
                }
                return Ok(std::process::ExitCode::from(2));
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}
