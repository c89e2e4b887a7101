//! Invoice numbers: unique and sequential per issuer across every period and run written to
//! one `out_dir`.
//!
//! Each published run records the numbers it issued in `run-NNNN/invoice_numbers.json`; the
//! next number of an issuer is one more than the highest recorded under `exports/` (or the
//! issuer's `first_invoice_number`, if higher). The record is published with the run (the
//! same rename), so a crashed run never consumes numbers, and `exports/.lock` keeps two
//! exports from numbering at the same time.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::BillingError;
use crate::registry::Issuer;

/// File name of a run's number record.
pub const FILE: &str = "invoice_numbers.json";

/// Held while an export runs; released on drop.
pub struct Lock {
    _file: File,
}

/// Takes `exports/.lock`, waiting (and saying so) while another export holds it.
pub fn lock(exports: &Path) -> Result<Lock, BillingError> {
    std::fs::create_dir_all(exports)
        .map_err(|e| BillingError::io(format!("creating {}", exports.display()), e))?;
    let path = exports.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| BillingError::io(format!("opening {}", path.display()), e))?;
    let locked = match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => {
            tracing::info!(
                "waiting for another billing export ({} is locked)",
                path.display()
            );
            file.lock()
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    };
    locked.map_err(|e| BillingError::io(format!("locking {}", path.display()), e))?;
    Ok(Lock { _file: file })
}

/// A run's record of the numbers it issued.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub period: String,
    pub run: String,
    /// Per issuer: the first and last number of this run (contiguous).
    pub issuers: Vec<Range>,
    pub invoices: Vec<Issued>,
}

/// The numbers one issuer used in one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Range {
    pub issuer: String,
    pub first: u64,
    pub last: u64,
}

/// One issued document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Issued {
    pub invoice_number: String,
    pub issuer: String,
    pub sequence: u64,
    pub customer_id: String,
    pub document: String,
    pub total: String,
    pub currency: String,
}

#[derive(Deserialize)]
struct Head {
    issuers: Vec<Range>,
}

/// Hands out the next numbers of each issuer.
pub struct Numbers {
    last: BTreeMap<String, u64>,
    record: Record,
}

impl Numbers {
    /// The highest number of each issuer recorded under `exports/<period>/run-*/`.
    pub fn scan(exports: &Path, period: &str, run: &str) -> Result<Numbers, BillingError> {
        let mut last: BTreeMap<String, u64> = BTreeMap::new();
        for path in records(exports)? {
            let text = std::fs::read(&path)
                .map_err(|e| BillingError::io(format!("reading {}", path.display()), e))?;
            let head: Head =
                serde_json::from_slice(&text).map_err(|e| BillingError::data(&path, e))?;
            for r in head.issuers {
                let e = last.entry(r.issuer).or_default();
                *e = (*e).max(r.last);
            }
        }
        Ok(Numbers {
            last,
            record: Record {
                period: period.to_string(),
                run: run.to_string(),
                issuers: Vec::new(),
                invoices: Vec::new(),
            },
        })
    }

    /// The next number of `issuer` for `customer`'s document, recorded for this run.
    pub fn next(
        &mut self,
        issuer: &Issuer,
        customer_id: &str,
        document: &str,
        total: &str,
        currency: &str,
    ) -> String {
        let last = self.last.entry(issuer.id.clone()).or_default();
        let n = (*last + 1).max(issuer.first_invoice_number);
        *last = n;
        match self
            .record
            .issuers
            .iter_mut()
            .find(|r| r.issuer == issuer.id)
        {
            Some(r) => r.last = n,
            None => self.record.issuers.push(Range {
                issuer: issuer.id.clone(),
                first: n,
                last: n,
            }),
        }
        let number = issuer.invoice_number(n);
        self.record.invoices.push(Issued {
            invoice_number: number.clone(),
            issuer: issuer.id.clone(),
            sequence: n,
            customer_id: customer_id.to_string(),
            document: document.to_string(),
            total: total.to_string(),
            currency: currency.to_string(),
        });
        number
    }

    /// This run's record (`invoice_numbers.json`).
    pub fn record(&self) -> &Record {
        &self.record
    }
}

/// Every published run's record under `exports/` (hidden and `_` directories are not runs).
fn records(exports: &Path) -> Result<Vec<PathBuf>, BillingError> {
    let mut out = Vec::new();
    let list = |dir: &Path| -> Result<Vec<(String, PathBuf)>, BillingError> {
        let mut v = Vec::new();
        if !dir.is_dir() {
            return Ok(v);
        }
        let rd = std::fs::read_dir(dir)
            .map_err(|e| BillingError::io(format!("listing {}", dir.display()), e))?;
        for e in rd {
            let e = e.map_err(|e| BillingError::io(format!("listing {}", dir.display()), e))?;
            let name = e.file_name().to_string_lossy().to_string();
            if !name.starts_with(['.', '_']) && e.path().is_dir() {
                v.push((name, e.path()));
            }
        }
        Ok(v)
    };
    for (_, period_dir) in list(exports)? {
        for (name, run_dir) in list(&period_dir)? {
            let record = run_dir.join(FILE);
            if name.starts_with("run-") && record.exists() {
                out.push(record);
            }
        }
    }
    out.sort();
    Ok(out)
}
