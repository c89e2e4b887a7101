//! `gridmeter`: the local demo of the whole pipeline and the PKI tool.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gridmeter_core::pki;
use gridmeter_core::DeviceId;

mod demo;

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
    /// aggregator and a billing export.
    Demo(demo::DemoArgs),
    /// Certificates: a CA, the broker, collectors and devices (CN = device_id).
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Create a PKI directory: CA, broker certificate, collector certificate and devices.
    /// An existing CA in the directory is reused.
    Init {
        /// The PKI directory.
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        /// Extra DNS names or IPs for the broker certificate (localhost, 127.0.0.1 and ::1
        /// are always included).
        #[arg(long = "server-name")]
        server_names: Vec<String>,
        /// Device ids to issue certificates for.
        #[arg(long = "device")]
        devices: Vec<String>,
    },
    /// Issue device certificates (CN = device_id) from the CA in the directory.
    Device {
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        /// Device ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Issue a client certificate with the given common name (e.g. collector-2).
    Client {
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        common_name: String,
    },
}

fn device_ids(ids: &[String]) -> anyhow::Result<Vec<DeviceId>> {
    ids.iter()
        .map(|s| DeviceId::new(s.as_str()).with_context(|| format!("device id {s:?}")))
        .collect()
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,gridmeter=info,rumqttd=off".into()),
        )
        .init();
    match Cli::parse().command {
        Command::Demo(args) => demo::run(args),
        Command::Pki { command } => match command {
            PkiCommand::Init {
                dir,
                server_names,
                devices,
            } => {
                pki::init_dir(&dir, &server_names, &device_ids(&devices)?)?;
                println!("PKI in {}", dir.display());
                Ok(())
            }
            PkiCommand::Device { dir, ids } => {
                let ca = pki::Ca::load(&dir)?;
                for id in device_ids(&ids)? {
                    let (crt, _) = ca
                        .issue_device(&id)?
                        .write(&dir.join("devices"), id.as_str())?;
                    println!("{}", crt.display());
                }
                Ok(())
            }
            PkiCommand::Client { dir, common_name } => {
                let ca = pki::Ca::load(&dir)?;
                let (crt, _) = ca.issue_client(&common_name)?.write(&dir, &common_name)?;
                println!("{}", crt.display());
                Ok(())
            }
        },
    }
}
