//! `gridmeter serve --config serve.toml`: the read-only SQL endpoint (gridmeter-serve).

use std::path::PathBuf;

use anyhow::Context;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// The server's config (serve/README.md).
    #[arg(long)]
    config: PathBuf,
    /// Write an HTML usage report (the main panels of the Usage dashboard) to this file and
    /// exit instead of serving.
    #[arg(long)]
    report: Option<PathBuf>,
}

/// Runs the server until Ctrl-C (or SIGTERM).
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = gridmeter_serve::load_config(&args.config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(async {
        let server = gridmeter_serve::Server::bind(&config).await?;
        if let Some(path) = &args.report {
            let html = gridmeter_serve::report::usage_report(server.engine()).await?;
            std::fs::write(path, html).with_context(|| format!("write {}", path.display()))?;
            println!("usage report: {}", path.display());
            return Ok(());
        }
        tracing::info!(
            addr = %server.local_addr()?,
            tables = ?server.tables(),
            "gridmeter serve: listening"
        );
        server.run(shutdown()).await?;
        Ok(())
    })
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
