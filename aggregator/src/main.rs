//! `gridmeter-aggregator`: run (once or watching), rebuild a time range, print current rows.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use chrono::{DateTime, NaiveDate, Utc};
use clap::{Parser, Subcommand};
use gridmeter_aggregator::{config, AggregatorConfig, Metrics, UsageRow};

#[derive(Parser)]
#[command(
    version,
    about = "Raw readings to usage tables (event-time windows, revisions)"
)]
struct Cli {
    /// TOML config file.
    #[arg(long, short)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Aggregate raw files not processed yet.
    Run {
        /// Keep running, one pass per interval.
        #[arg(long)]
        watch: bool,
        /// Aggregate only the devices of shard I of N (0 <= I < N), e.g. 0/3; shards run
        /// concurrently, one process each, on the same tables.
        #[arg(long, default_value = "0/1")]
        shard: gridmeter_tables::Shard,
        /// Time between passes with --watch, e.g. 30s or 5m.
        #[arg(long, default_value = "30s")]
        interval: String,
    },
    /// Recompute windows starting in [from, to) from raw; writes only rows that changed.
    Rebuild {
        /// Date (YYYY-MM-DD, UTC midnight) or RFC 3339 time.
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
    },
    /// Close a period: estimate counters that stopped reporting from their last reading to
    /// UNTIL (flagged estimated,method_open_end) so the period can be billed; the next run
    /// after their readings arrive revises the estimates. Needs [vee].
    Close {
        /// The period end: date (YYYY-MM-DD, UTC midnight) or RFC 3339 time.
        #[arg(long)]
        until: String,
    },
    /// Set or scale the usage of a device channel's windows, with a reason and who asks;
    /// recorded in the edits table and applied as a new revision flagged edited (kept by
    /// every later run and rebuild). Either the flags below or --file with a reviewed
    /// [[edits]] TOML file.
    Edit {
        /// A reviewed edits file ([[edits]] entries with the fields of the flags below).
        #[arg(long, conflicts_with_all = ["device", "channel", "from", "to", "set", "scale", "reason", "who"])]
        file: Option<PathBuf>,
        #[arg(long)]
        device: Option<String>,
        #[arg(long)]
        channel: Option<String>,
        /// The window size the value refers to.
        #[arg(long, default_value = "15m")]
        window: String,
        /// First window start (date or RFC 3339).
        #[arg(long)]
        from: Option<String>,
        /// End of the last window (date or RFC 3339).
        #[arg(long)]
        to: Option<String>,
        /// The usage of every window in [from, to).
        #[arg(long)]
        set: Option<rust_decimal::Decimal>,
        /// The factor every window's usage in [from, to) is multiplied by.
        #[arg(long)]
        scale: Option<rust_decimal::Decimal>,
        #[arg(long)]
        reason: Option<String>,
        /// Who asks for the edit (recorded).
        #[arg(long)]
        who: Option<String>,
    },
    /// Print the exceptions table (validation failures) as CSV.
    Exceptions,
    /// Print the edits table (the audit trail of edits) as CSV.
    Edits,
    /// Print the current rows (one per key) of one window's usage table as CSV.
    Current {
        #[arg(long, default_value = "15m")]
        window: String,
    },
    /// Convert a data root in the pre-Delta layout (raw/…/*.parquet, usage/<w>/part-*.parquet
    /// with _commits/) into the Delta tables, checked row for row.
    Migrate {
        /// Keep the old files (they are deleted once the check passed by default).
        #[arg(long)]
        keep_old: bool,
    },
    /// Delete files that no table version within the retention needs (every table).
    Vacuum {
        /// At least the tables' delta.deletedFileRetentionDuration (7 days).
        #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
        retention: std::time::Duration,
        /// List what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

fn parse_time(text: &str) -> Result<DateTime<Utc>> {
    if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(d.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    Ok(DateTime::parse_from_rfc3339(text)
        .with_context(|| format!("{text:?} is neither YYYY-MM-DD nor RFC 3339"))?
        .with_timezone(&Utc))
}

fn dec(v: Option<i128>) -> String {
    v.and_then(gridmeter_core::decimal::from_scaled_i128)
        .map(|d| d.to_string())
        .unwrap_or_default()
}

fn ts(v: Option<i64>) -> String {
    v.and_then(DateTime::<Utc>::from_timestamp_micros)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .unwrap_or_default()
}

/// A CSV field, quoted (with `"` doubled) when it holds a comma, a quote or a line break.
fn csv_text(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn write_csv(rows: &[UsageRow]) -> Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    writeln!(out, "device_id,channel,kind,unit,window,window_start,window_end,usage,min,max,avg,last,readings,first_ts,last_ts,coverage,flags,revision,computed_at")?;
    for r in rows {
        writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},\"{}\",{},{}",
            r.device_id,
            r.channel,
            r.kind,
            r.unit,
            r.window,
            ts(Some(r.window_start)),
            ts(Some(r.window_end)),
            dec(r.usage),
            dec(r.min),
            dec(r.max),
            dec(r.avg),
            dec(r.last),
            r.readings,
            ts(r.first_ts),
            ts(r.last_ts),
            dec(Some(r.coverage)),
            r.flags,
            r.revision,
            ts(Some(r.computed_at)),
        )?;
    }
    out.flush()?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")
        .and_then(|rt| rt.block_on(run()));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The message and its causes once, never a backtrace (RUST_BACKTRACE or not).
            eprintln!(
                "gridmeter-aggregator: {}",
                gridmeter_core::config::error_report(e.as_ref())
            );
            if e.downcast_ref::<gridmeter_core::config::ConfigError>()
                .is_some()
            {
                std::process::ExitCode::from(2)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}

async fn run() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            // Shards committing at once retry lost races: routine, not a warning.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,deltalake_core::kernel::transaction=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let cfg: AggregatorConfig = gridmeter_core::config::load(&cli.config)?;
    match cli.command {
        Command::Run {
            watch,
            interval,
            shard,
        } => {
            let registry = prometheus::Registry::new();
            let metrics = Metrics::register(&registry)?;
            let _server = match cfg.metrics_listen {
                Some(addr) => {
                    let (bound, task) = gridmeter_core::metrics::serve(addr, registry.clone())
                        .await
                        .with_context(|| format!("serving metrics on {addr}"))?;
                    tracing::info!(%bound, "metrics at /metrics");
                    Some(task)
                }
                None => None,
            };
            let every = config::parse_duration_us(&interval).map_err(anyhow::Error::msg)?;
            if every <= 0 {
                bail!("--interval must be positive");
            }
            loop {
                let result = gridmeter_aggregator::run_shard(&cfg, shard, &metrics).await;
                if !watch {
                    let s = result?;
                    println!(
                        "files {} readings {} late {} rows {:?} revisions {:?} recovered {:?}",
                        s.files_processed,
                        s.readings_processed,
                        s.late_readings,
                        s.rows_written,
                        s.revisions,
                        s.recovered
                    );
                    for (device, reason) in &s.held {
                        println!("held {device}: {reason}");
                    }
                    return Ok(());
                }
                // In watch mode a failed pass is logged (by run_once) and retried.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_micros(every as u64)) => {}
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                }
            }
        }
        Command::Rebuild { from, to } => {
            let (from, to) = (parse_time(&from)?, parse_time(&to)?);
            if from >= to {
                bail!("--from must be before --to");
            }
            let s = gridmeter_aggregator::rebuild(&cfg, from, to, &Metrics::unregistered()).await?;
            println!("rows {:?} revisions {:?}", s.rows_written, s.revisions);
        }
        Command::Close { until } => {
            let until = parse_time(&until)?;
            let s = gridmeter_aggregator::close(&cfg, until, &Metrics::unregistered()).await?;
            println!(
                "rows {:?} estimated {:?} revisions {:?}",
                s.rows_written, s.estimated, s.revisions
            );
        }
        Command::Edit {
            file,
            device,
            channel,
            window,
            from,
            to,
            set,
            scale,
            reason,
            who,
        } => {
            let requests = match file {
                Some(path) => {
                    gridmeter_core::config::load::<gridmeter_aggregator::EditsFile>(&path)?.edits
                }
                None => {
                    let need = |v: Option<String>, name: &str| {
                        v.with_context(|| format!("--{name} is required (or --file)"))
                    };
                    vec![gridmeter_aggregator::EditRequest {
                        device_id: need(device, "device")?,
                        channel: need(channel, "channel")?,
                        window,
                        from: parse_time(&need(from, "from")?)?,
                        to: parse_time(&need(to, "to")?)?,
                        set,
                        scale,
                        reason: need(reason, "reason")?,
                        who: need(who, "who")?,
                    }]
                }
            };
            let (recorded, s) =
                gridmeter_aggregator::edit(&cfg, &requests, &Metrics::unregistered()).await?;
            for e in &recorded {
                println!(
                    "edit {} recorded: {} {} {}",
                    e.edit_id,
                    e.device_id,
                    e.channel,
                    e.action.name()
                );
            }
            println!("rows {:?} revisions {:?}", s.rows_written, s.revisions);
        }
        Command::Exceptions => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            writeln!(out, "device_id,channel,window,window_start,window_end,rule,severity,observed,threshold,action,revision,detected_at")?;
            for e in gridmeter_aggregator::exceptions(&cfg).await? {
                writeln!(
                    out,
                    "{},{},{},{},{},{},{},{},{},{},{},{}",
                    e.device_id,
                    e.channel,
                    e.window,
                    ts(Some(e.window_start)),
                    ts(Some(e.window_end)),
                    e.rule,
                    e.severity,
                    dec(e.observed),
                    dec(e.threshold),
                    e.action,
                    e.revision,
                    ts(Some(e.detected_at)),
                )?;
            }
            out.flush()?;
        }
        Command::Edits => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            writeln!(
                out,
                "edit_id,device_id,channel,window,from,to,action,value,reason,who,at"
            )?;
            for e in gridmeter_aggregator::edits(&cfg).await? {
                writeln!(
                    out,
                    "{},{},{},{},{},{},{},{},{},{},{}",
                    e.edit_id,
                    e.device_id,
                    e.channel,
                    e.window,
                    ts(Some(e.from)),
                    ts(Some(e.to)),
                    e.action.name(),
                    dec(Some(e.value)),
                    csv_text(&e.reason),
                    csv_text(&e.who),
                    ts(Some(e.at)),
                )?;
            }
            out.flush()?;
        }
        Command::Current { window } => {
            let rows = gridmeter_aggregator::current(&cfg, &window).await?;
            write_csv(&rows)?;
        }
        Command::Migrate { keep_old } => {
            let report = gridmeter_aggregator::migrate(&cfg, keep_old).await?;
            print!("{report}");
        }
        Command::Vacuum { retention, dry_run } => {
            let retention =
                chrono::Duration::from_std(retention).context("--retention is too large")?;
            for (table, files) in gridmeter_aggregator::vacuum(&cfg, retention, dry_run).await? {
                let verb = if dry_run { "would delete" } else { "deleted" };
                println!("{table}: {verb} {files} files");
            }
        }
    }
    Ok(())
}
