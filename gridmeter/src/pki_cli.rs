//! `gridmeter pki …`: the certificate lifecycle of a deployment (issue, renew, revoke, CRL,
//! list) on a PKI directory (layout in `gridmeter_core::pki`).

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use gridmeter_core::pki::{
    self, Identity, InitOptions, PkiDir, Reason, DEFAULT_CRL_DAYS, DEFAULT_DAYS,
};
use gridmeter_core::DeviceId;

#[derive(Subcommand)]
pub enum PkiCommand {
    /// Create a PKI directory: CA, empty CRL, broker certificate, collector `collector-0` (or
    /// the --collector names) and devices. Existing files are kept, so it can be rerun.
    Init {
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        /// Extra DNS names or IPs for the broker certificate (localhost, 127.0.0.1 and ::1
        /// are always included).
        #[arg(long = "server-name")]
        server_names: Vec<String>,
        /// Device ids to issue certificates for.
        #[arg(long = "device")]
        devices: Vec<String>,
        /// Collectors to issue (CN collector-NAME); default: one, collector-0.
        #[arg(long = "collector")]
        collectors: Vec<String>,
        /// URL where brokers that fetch CRLs (EMQX) get crl.pem; written into every
        /// certificate issued from now on.
        #[arg(long)]
        crl_url: Option<String>,
    },
    /// Issue device certificates (CN = device_id, OU device).
    Device {
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = DEFAULT_DAYS)]
        days: u32,
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Issue collector certificates (CN collector-NAME, OU collector): one per running
    /// collector, since the broker makes the CN the client id.
    Collector {
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        #[arg(long, default_value_t = DEFAULT_DAYS)]
        days: u32,
        /// Names (`1` or `collector-1`).
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Issue a client certificate for another tool (OU client; the ACLs give it no more than
    /// a device of that name). NAME must not be a collector's or the broker's name.
    Client {
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        #[arg(long, default_value_t = DEFAULT_DAYS)]
        days: u32,
        name: String,
    },
    /// Issue a new key and certificate with the same CN and role, replacing the files. The
    /// agent or collector presents it at its next reconnect; the old certificate stays valid
    /// until it expires or is revoked.
    Renew {
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        #[arg(long, default_value_t = DEFAULT_DAYS)]
        days: u32,
        #[command(flatten)]
        who: Who,
        /// With --server: the broker certificate's extra names (default: those of the
        /// current certificate).
        #[arg(long = "server-name", requires = "server")]
        server_names: Vec<String>,
        /// Also revoke every earlier certificate of the names (a stolen or lost key) and
        /// rewrite crl.pem. The old certificate then stops working as soon as the broker
        /// loads the CRL, so roll the new files out first.
        #[arg(long)]
        revoke_old: bool,
    },
    /// Revoke every certificate issued to the names and rewrite crl.pem. Copy it to the
    /// broker and restart it: Mosquitto reads its crlfile at start.
    Revoke {
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        #[command(flatten)]
        who: Who,
        #[arg(long, value_enum, default_value = "unspecified")]
        reason: ReasonArg,
        /// Validity of the new CRL in days.
        #[arg(long, default_value_t = DEFAULT_CRL_DAYS)]
        crl_days: u32,
    },
    /// Sign crl.pem again (same revocations, new validity): do so before it expires, or a
    /// broker checking it refuses every client.
    Crl {
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        #[arg(long, default_value_t = DEFAULT_CRL_DAYS)]
        days: u32,
    },
    /// List every certificate issued: serial, role, CN, expiry, revocation.
    List {
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
    },
}

/// Whose certificates: devices by default, or collectors, a client, the broker.
#[derive(Args)]
#[group(required = true, multiple = true)]
pub struct Who {
    /// The names are collectors.
    #[arg(long, conflicts_with_all = ["client", "server"])]
    collector: bool,
    /// The name is a client.
    #[arg(long, conflicts_with = "server")]
    client: bool,
    /// The broker's certificate.
    #[arg(long)]
    server: bool,
    /// Device ids (or collector/client names with --collector/--client).
    names: Vec<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ReasonArg {
    Unspecified,
    KeyCompromise,
    Superseded,
    CessationOfOperation,
}

impl From<ReasonArg> for Reason {
    fn from(r: ReasonArg) -> Self {
        match r {
            ReasonArg::Unspecified => Reason::Unspecified,
            ReasonArg::KeyCompromise => Reason::KeyCompromise,
            ReasonArg::Superseded => Reason::Superseded,
            ReasonArg::CessationOfOperation => Reason::CessationOfOperation,
        }
    }
}

fn device_id(s: &str) -> anyhow::Result<DeviceId> {
    DeviceId::new(s).with_context(|| format!("device id {s:?}"))
}

fn identities(who: &Who, server_names: &[String]) -> anyhow::Result<Vec<Identity>> {
    if who.server {
        if !who.names.is_empty() {
            bail!("--server takes no names");
        }
        return Ok(vec![Identity::server(server_names)]);
    }
    if who.names.is_empty() {
        bail!("name at least one device (or --collector/--client name)");
    }
    who.names
        .iter()
        .map(|n| {
            Ok(if who.collector {
                Identity::collector(n)?
            } else if who.client {
                Identity::client(n)?
            } else {
                Identity::device(&device_id(n)?)?
            })
        })
        .collect()
}

fn print_issued(path: &std::path::Path, info: &gridmeter_core::tls::CertInfo) {
    println!("{} ({})", path.display(), info.describe());
}

/// Runs one `gridmeter pki` command.
pub fn run(command: PkiCommand) -> anyhow::Result<()> {
    match command {
        PkiCommand::Init {
            dir,
            server_names,
            devices,
            collectors,
            crl_url,
        } => {
            let devices = devices
                .iter()
                .map(|d| device_id(d))
                .collect::<anyhow::Result<Vec<_>>>()?;
            PkiDir::init(
                &dir,
                &InitOptions {
                    server_names,
                    devices,
                    collectors,
                    crl_url,
                },
            )?;
            println!("PKI in {}", dir.display());
            Ok(())
        }
        PkiCommand::Device { dir, days, ids } => {
            let mut p = PkiDir::open(&dir)?;
            for id in &ids {
                let (path, info) = p.issue(&Identity::device(&device_id(id)?)?, days)?;
                print_issued(&path, &info);
            }
            Ok(())
        }
        PkiCommand::Collector { dir, days, names } => {
            let mut p = PkiDir::open(&dir)?;
            for n in &names {
                let who = Identity::collector(n)?;
                let (path, info) = p.issue(&who, days)?;
                print_issued(&path, &info);
                println!(
                    "  Mosquitto: the ACL needs a `user {}` block (deploy/mosquitto/acl lists \
                     collector-0 to collector-3); EMQX's acl.conf matches collector-* already",
                    who.common_name()
                );
            }
            Ok(())
        }
        PkiCommand::Client { dir, days, name } => {
            let mut p = PkiDir::open(&dir)?;
            let (path, info) = p.issue(&Identity::client(&name)?, days)?;
            print_issued(&path, &info);
            Ok(())
        }
        PkiCommand::Renew {
            dir,
            days,
            who,
            server_names,
            revoke_old,
        } => {
            let mut p = PkiDir::open(&dir)?;
            let names = if who.server && server_names.is_empty() {
                pki::server_names(&dir.join("server.crt"))?
            } else {
                server_names
            };
            for id in identities(&who, &names)? {
                let (path, info) = p.renew(&id, days)?;
                print_issued(&path, &info);
                if revoke_old {
                    let serials =
                        p.revoke_superseded(&id, Reason::KeyCompromise, DEFAULT_CRL_DAYS)?;
                    println!("  revoked earlier serial(s): {}", serials.join(", "));
                }
            }
            if revoke_old {
                println!(
                    "{}: copy it to the broker and restart the broker",
                    dir.join("crl.pem").display()
                );
            }
            Ok(())
        }
        PkiCommand::Revoke {
            dir,
            who,
            reason,
            crl_days,
        } => {
            let mut p = PkiDir::open(&dir)?;
            for id in identities(&who, &[])? {
                let serials = p.revoke(&id, reason.into(), crl_days)?;
                if serials.is_empty() {
                    println!("{} {}: already revoked", id.role(), id.common_name());
                } else {
                    println!(
                        "{} {}: revoked serial {}",
                        id.role(),
                        id.common_name(),
                        serials.join(", ")
                    );
                }
            }
            println!(
                "{} (CRL number {}): copy it to the broker and restart the broker",
                dir.join("crl.pem").display(),
                p.index().crl_number
            );
            Ok(())
        }
        PkiCommand::Crl { dir, days } => {
            let mut p = PkiDir::open(&dir)?;
            let path = p.write_crl(days)?;
            println!(
                "{} (CRL number {}, valid {days} days)",
                path.display(),
                p.index().crl_number
            );
            Ok(())
        }
        PkiCommand::List { dir } => {
            let p = PkiDir::open(&dir)?;
            println!("serial\trole\tcommon_name\tnot_after\tstatus");
            for e in &p.index().certificates {
                let status = match e.revoked_at {
                    Some(t) => format!("revoked {}", t.format("%Y-%m-%dT%H:%M:%SZ")),
                    None if e.not_after < chrono::Utc::now() => "expired".into(),
                    None => "valid".into(),
                };
                println!(
                    "{}\t{}\t{}\t{}\t{status}",
                    e.serial,
                    e.role,
                    e.common_name,
                    e.not_after.format("%Y-%m-%dT%H:%M:%SZ")
                );
            }
            Ok(())
        }
    }
}
