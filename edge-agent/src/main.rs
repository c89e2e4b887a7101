//! `gridmeter-agent --config agent.toml`: runs one agent until SIGTERM or ctrl-c.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use gridmeter_agent::AgentConfig;

#[derive(Parser)]
#[command(
    version,
    about = "gridmeter edge agent: devices -> SQLite buffer -> mTLS MQTT"
)]
struct Args {
    /// The agent's TOML config.
    #[arg(long, short)]
    config: PathBuf,
    /// Only validate the config (every problem is listed) and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config: AgentConfig = match gridmeter_core::config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        println!("config {} is valid", args.config.display());
        return ExitCode::SUCCESS;
    }
    // Two worker threads at most: the agent targets 1-2 core devices.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gridmeter-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: AgentConfig) -> anyhow::Result<()> {
    // Install the SIGTERM handler before anything else, so an early SIGTERM is a clean stop.
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let registry = prometheus::Registry::new();
    let _metrics = match config.metrics_listen {
        Some(addr) => {
            let (bound, task) = gridmeter_core::metrics::serve(addr, registry.clone())
                .await
                .with_context(|| format!("serving /metrics on {addr}"))?;
            tracing::info!("metrics on http://{bound}/metrics");
            Some(task)
        }
        None => None,
    };
    #[cfg(unix)]
    let shutdown = shutdown_signal(term);
    #[cfg(not(unix))]
    let shutdown = shutdown_signal();
    gridmeter_agent::run(config, registry, shutdown).await?;
    Ok(())
}

#[cfg(unix)]
async fn shutdown_signal(mut term: tokio::signal::unix::Signal) {
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}

#[cfg(not(unix))]
async fn shutdown_signal() {
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("shutting down");
}
