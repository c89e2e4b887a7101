//! `gridmeter serve --config serve.toml`: the read-only SQL endpoint (gridmeter-serve).

use std::path::PathBuf;

use anyhow::Context;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// The server's config (serve/README.md).
    #[arg(long)]
    config: PathBuf,
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
