//! `gridmeter`: the local demo of the whole pipeline and the PKI tool.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod demo;
mod pki_cli;

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
    /// Certificates: a CA, the broker, collectors and devices (CN = device_id); renewal,
    /// revocation (CRL) and a list of what was issued.
    Pki {
        #[command(subcommand)]
        command: pki_cli::PkiCommand,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,gridmeter=info,rumqttd=off".into()),
        )
        .init();
    let result = match Cli::parse().command {
        Command::Demo(args) => demo::run(args),
        Command::Pki { command } => pki_cli::run(command),
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
