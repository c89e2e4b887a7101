//! `gridmeter-collector --config collector.toml` runs the collector;
//! `gridmeter-collector --config collector.toml compact --date 2026-11-22` deduplicates a
//! raw date partition (see `gridmeter_collector::compact`);
//! `gridmeter-collector --config collector.toml deadletter prune --older-than 90d` deletes old
//! dead letters (see `gridmeter_collector::retention`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gridmeter_collector::landing::Landing;
use gridmeter_collector::CollectorConfig;

#[derive(Parser)]
#[command(
    name = "gridmeter-collector",
    version,
    about = "Ingests meter readings over mTLS MQTT into raw Parquet, exactly once"
)]
struct Cli {
    /// Path of collector.toml.
    #[arg(long, short)]
    config: PathBuf,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the collector (the default).
    Run,
    /// Rewrite raw/date=DATE/ with one row per (device_id, seq), keeping the earliest received_at.
    Compact {
        /// YYYY-MM-DD
        #[arg(long)]
        date: chrono::NaiveDate,
    },
    /// The dead-letter store.
    Deadletter {
        #[command(subcommand)]
        cmd: DeadletterCmd,
    },
}

#[derive(Subcommand)]
enum DeadletterCmd {
    /// Delete the dead-letter partitions received more than this long ago.
    Prune {
        /// A duration: 90d, 12w, 2160h.
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: std::time::Duration,
        /// List what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The message and its causes once, never a backtrace (RUST_BACKTRACE or not).
            eprintln!(
                "gridmeter-collector: {}",
                gridmeter_core::config::error_report(e.as_ref())
            );
            if e.downcast_ref::<gridmeter_core::config::ConfigError>()
                .is_some()
            {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| // A commit that lost a race to another writer is retried: routine, not a warning.
                    tracing_subscriber::EnvFilter::new("info,rumqttd=warn,deltalake_core::kernel::transaction=error")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let config: CollectorConfig = gridmeter_core::config::load(&cli.config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    rt.block_on(async move {
        match cli.cmd.unwrap_or(Cmd::Run) {
            Cmd::Run => {
                let shutdown = async {
                    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!("cannot listen for SIGTERM: {e}");
                            let _ = tokio::signal::ctrl_c().await;
                            return;
                        }
                    };
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                    tracing::info!("shutting down");
                };
                gridmeter_collector::run(config, prometheus::Registry::new(), shutdown).await?;
            }
            Cmd::Deadletter {
                cmd: DeadletterCmd::Prune { older_than, dry_run },
            } => {
                let landing = Landing::open(&config).await?;
                let stats = gridmeter_collector::retention::prune_deadletters(
                    &landing,
                    older_than,
                    chrono::Utc::now(),
                    dry_run,
                )
                .await?;
                let verb = if dry_run { "would remove" } else { "removed" };
                for d in &stats.pruned {
                    println!("{verb} deadletter/date={d}/");
                }
                println!(
                    "{verb} {} partitions ({} files); kept {}",
                    stats.pruned.len(),
                    stats.files,
                    stats.kept
                );
            }
            Cmd::Compact { date } => {
                let landing = Landing::open(&config).await?;
                let stats = gridmeter_collector::compact::compact_date(&landing, date).await?;
                println!(
                    "compacted raw/date={date}: {} files, {} rows in; {} rows ({} duplicates removed) in {} files out",
                    stats.files_in,
                    stats.rows_in,
                    stats.rows_out,
                    stats.rows_in - stats.rows_out,
                    stats.files_out
                );
            }
        }
        Ok(())
    })
}
