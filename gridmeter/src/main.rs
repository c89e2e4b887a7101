//! `gridmeter`: the local demo of the whole pipeline, the SQL endpoint and the PKI tool.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod demo;
mod pki_cli;
mod serve_cli;

#[derive(Parser)]
#[command(
    name = "gridmeter",
    version,
    about = "gridmeter: edge metering to billing"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole pipeline locally: PKI, embedded broker, simulated fleet, collector,
    /// aggregator and a billing export. For local demos only: the embedded broker checks
    /// client certificates but has no ACL.
    Demo(demo::DemoArgs),
    /// A read-only SQL endpoint over the tables (PostgreSQL wire protocol, TLS, passwords or
    /// client certificates): psql, Grafana, DBeaver, Metabase and pandas connect to it.
    Serve(serve_cli::ServeArgs),
    /// Certificates: a CA, the broker, collectors and devices (CN = device_id); renewal,
    /// revocation (CRL) and a list of what was issued.
    Pki {
        #[command(subcommand)]
        command: pki_cli::PkiCommand,
    },
}

/// Logs to stderr (`RUST_LOG` overrides the default filter).
fn log_to_stderr() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,gridmeter=info,gridmeter_serve=info,rumqttd=off".into()),
        )
        .init();
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        // The demo logs to a file under its output directory; the terminal shows its
        // progress and summary.
        Command::Demo(args) => demo::run(args),
        Command::Serve(args) => {
            log_to_stderr();
            serve_cli::run(args)
        }
        Command::Pki { command } => {
            log_to_stderr();
            pki_cli::run(command)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "gridmeter: {}",
                gridmeter_core::config::error_report(e.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}
