//! A published run as the pushes read it: its directory, verified against `manifest.json`, and
//! its documents (`invoices/<customer>.json`: this run's lines, taxes and totals per customer).

use std::path::{Path, PathBuf};

use rust_decimal::Decimal;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{excerpt, BillingError};

/// A run directory named `<period>/run-NNNN` under `<out_dir>/exports/`.
#[derive(Debug, Clone)]
pub struct RunRef {
    pub period: String,
    pub run: String,
    pub dir: PathBuf,
}

impl RunRef {
    /// Resolves `spec` (`2026-10/run-0001`) under `out_dir`; refuses anything else (no path
    /// tricks: the period is a period label, the run `run-` and four or more digits).
    pub fn resolve(out_dir: &Path, spec: &str) -> Result<RunRef, BillingError> {
        let bad = || {
            BillingError::Input(format!(
                "--run {}: give <period>/run-NNNN, e.g. 2026-10/run-0001",
                excerpt(spec)
            ))
        };
        let (period, run) = spec.trim_end_matches('/').split_once('/').ok_or_else(bad)?;
        let period_ok = !period.is_empty()
            && period.len() <= 32
            && period
                .chars()
                .all(|c| c.is_ascii_digit() || c == '-' || c == '_');
        let run_ok = run
            .strip_prefix("run-")
            .is_some_and(|n| n.len() >= 4 && n.chars().all(|c| c.is_ascii_digit()));
        if !period_ok || !run_ok {
            return Err(bad());
        }
        let dir = out_dir.join("exports").join(period).join(run);
        if !dir.join("manifest.json").is_file() {
            return Err(BillingError::Input(format!(
                "{} is not a published run (no manifest.json)",
                dir.display()
            )));
        }
        Ok(RunRef {
            period: period.to_string(),
            run: run.to_string(),
            dir,
        })
    }

    /// `2026-10/run-0001`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.period, self.run)
    }

    /// The run's number.
    pub fn number(&self) -> u32 {
        self.run[4..].parse().unwrap_or(0)
    }

    /// Earlier runs of the same period, oldest first.
    pub fn earlier(&self) -> Vec<RunRef> {
        (1..self.number())
            .map(|n| {
                let run = format!("run-{n:04}");
                RunRef {
                    period: self.period.clone(),
                    dir: self.dir.with_file_name(&run),
                    run,
                }
            })
            .filter(|r| r.dir.join("manifest.json").is_file())
            .collect()
    }

    /// Checks every file `manifest.json` lists (size and SHA-256): a push never sends a run
    /// that was changed or only partly copied.
    pub fn verify(&self) -> Result<(), BillingError> {
        #[derive(Deserialize)]
        struct Manifest {
            files: Vec<File>,
        }
        #[derive(Deserialize)]
        struct File {
            path: String,
            bytes: u64,
            sha256: String,
        }
        let mpath = self.dir.join("manifest.json");
        let m: Manifest = serde_json::from_slice(
            &std::fs::read(&mpath)
                .map_err(|e| BillingError::io(format!("reading {}", mpath.display()), e))?,
        )
        .map_err(|e| BillingError::data(&mpath, e))?;
        for f in m.files {
            if f.path
                .split('/')
                .any(|c| c.is_empty() || c == ".." || c == ".")
            {
                return Err(BillingError::data(
                    &mpath,
                    format!("bad path {}", excerpt(&f.path)),
                ));
            }
            let p = self.dir.join(&f.path);
            let bytes = std::fs::read(&p)
                .map_err(|e| BillingError::io(format!("reading {}", p.display()), e))?;
            let sum: String = Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            if bytes.len() as u64 != f.bytes || sum != f.sha256 {
                return Err(BillingError::data(
                    &p,
                    "differs from manifest.json (the run was changed after it was published)",
                ));
            }
        }
        Ok(())
    }

    /// The run's documents, in customer id order.
    pub fn documents(&self) -> Result<Vec<Document>, BillingError> {
        let dir = self.dir.join("invoices");
        let mut paths: Vec<PathBuf> = match std::fs::read_dir(&dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(BillingError::io(format!("listing {}", dir.display()), e)),
        };
        paths.sort();
        paths
            .iter()
            .map(|p| {
                let bytes = std::fs::read(p)
                    .map_err(|e| BillingError::io(format!("reading {}", p.display()), e))?;
                serde_json::from_slice(&bytes).map_err(|e| BillingError::data(p, e))
            })
            .collect()
    }
}

/// One customer's document of a run (the fields of `invoices/<customer>.json` a push needs).
#[derive(Debug, Clone, Deserialize)]
pub struct Document {
    /// `invoice` or `adjustment`.
    pub document: String,
    pub invoice_number: String,
    pub customer_id: String,
    pub period: String,
    pub period_start: String,
    pub period_end: String,
    pub billing_period: LocalPeriod,
    pub currency: String,
    pub lines: Vec<DocLine>,
    pub taxes: Vec<DocTax>,
    pub total: Decimal,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LocalPeriod {
    pub first_day: String,
    pub last_day: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DocLine {
    pub line_type: String,
    pub site_id: String,
    pub device_id: String,
    pub channel: String,
    pub component: String,
    pub band: String,
    pub quantity: Decimal,
    pub unit: String,
    pub rate: Decimal,
    pub amount: Decimal,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DocTax {
    pub rate: Decimal,
    pub base: Decimal,
    pub amount: Decimal,
}

/// One amount a push delivers: a statement line or a tax line of a document, with its key.
#[derive(Debug, Clone)]
pub struct Charge {
    /// The statement line key: site, device, channel, component, band (`tax`, rate for taxes).
    pub key: [String; 5],
    pub amount: Decimal,
    pub description: String,
}

impl Document {
    /// Every amount of the document: its lines, then its taxes (they add up to `total`).
    pub fn charges(&self) -> Vec<Charge> {
        let mut out: Vec<Charge> = self
            .lines
            .iter()
            .map(|l| {
                let place = [l.site_id.as_str(), l.device_id.as_str(), l.channel.as_str()]
                    .iter()
                    .filter(|s| !s.is_empty())
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" ");
                Charge {
                    key: [
                        l.site_id.clone(),
                        l.device_id.clone(),
                        l.channel.clone(),
                        l.component.clone(),
                        l.band.clone(),
                    ],
                    amount: l.amount,
                    description: format!(
                        "{}{}{} {}: {} {} × {} {}{}",
                        l.component,
                        if l.band.is_empty() { "" } else { " " },
                        l.band,
                        place,
                        l.quantity.normalize(),
                        l.unit,
                        l.rate.normalize(),
                        self.currency,
                        if l.line_type == "adjustment" {
                            " (adjustment)"
                        } else {
                            ""
                        }
                    ),
                }
            })
            .collect();
        for t in &self.taxes {
            out.push(Charge {
                key: [
                    String::new(),
                    String::new(),
                    String::new(),
                    "tax".into(),
                    crate::statement::tax_band(t.rate),
                ],
                amount: t.amount,
                description: format!(
                    "tax {} % on {} {}",
                    (t.rate * Decimal::from(100)).normalize(),
                    t.base.normalize(),
                    self.currency
                ),
            });
        }
        out
    }
}
