//! A push ledger: `<run>/push/<target>.jsonl`, one JSON object per line, appended and synced
//! to disk as soon as the remote side has accepted something. It is how a push resumes after
//! a crash: what it lists is never sent again. A line torn by a crash (the last one, without
//! its newline) is ignored; the remote side is asked about it instead.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::BillingError;

/// One thing the ledger records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Entry {
    /// Work on a customer started: remote objects may exist that the ledger does not list.
    Begin { customer: String },
    /// A Stripe invoice item accepted (or found again by its key).
    Item {
        customer: String,
        key: String,
        id: String,
        amount: i64,
        currency: String,
    },
    /// The customer's Stripe invoice, with Stripe's totals (minor units).
    Invoice {
        customer: String,
        id: String,
        subtotal: i64,
        total: i64,
    },
    /// A Zuora usage file accepted by the import endpoint.
    Upload {
        file: String,
        sha256: String,
        status: u16,
        response: String,
    },
}

/// What the ledger says about one customer.
#[derive(Debug, Default, Clone)]
pub struct CustomerState {
    pub begun: bool,
    /// key -> (invoice item id, amount)
    pub items: BTreeMap<String, (String, i64)>,
    /// (invoice id, subtotal, total)
    pub invoice: Option<(String, i64, i64)>,
}

/// An open ledger (held under its lock).
pub struct Ledger {
    path: PathBuf,
    file: File,
    _lock: File,
    pub entries: Vec<Entry>,
}

/// The entries of a ledger file (missing file: none); a torn last line is dropped.
pub fn read(path: &Path) -> Result<Vec<Entry>, BillingError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(BillingError::io(format!("reading {}", path.display()), e)),
    };
    let complete = text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str::<Entry>(line) {
            Ok(e) => out.push(e),
            Err(_) if i + 1 == lines.len() && !complete => {
                tracing::warn!(
                    "{}: ignoring the torn last line (interrupted write)",
                    path.display()
                );
            }
            Err(e) => return Err(BillingError::data(path, format!("line {}: {e}", i + 1))),
        }
    }
    Ok(out)
}

impl Ledger {
    /// Opens (creating) `<dir>/<name>.jsonl` under the exclusive lock `<dir>/.lock`; a second
    /// push of the same run waits for the first.
    pub fn open(dir: &Path, name: &str) -> Result<Ledger, BillingError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| BillingError::io(format!("creating {}", dir.display()), e))?;
        let lock_path = dir.join(".lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| BillingError::io(format!("opening {}", lock_path.display()), e))?;
        if let Err(std::fs::TryLockError::WouldBlock) = lock.try_lock() {
            tracing::info!(
                "waiting for another push ({} is locked)",
                lock_path.display()
            );
            lock.lock()
                .map_err(|e| BillingError::io(format!("locking {}", lock_path.display()), e))?;
        }
        let path = dir.join(format!("{name}.jsonl"));
        let mut entries = read(&path)?;
        // Rewrite without a torn tail, so appends start on a fresh line.
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if !text.is_empty() && !text.ends_with('\n') {
            let mut clean = String::new();
            for e in &entries {
                clean.push_str(
                    &serde_json::to_string(e).map_err(|e| BillingError::output("ledger", e))?,
                );
                clean.push('\n');
            }
            std::fs::write(&path, clean)
                .map_err(|e| BillingError::io(format!("writing {}", path.display()), e))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| BillingError::io(format!("opening {}", path.display()), e))?;
        entries.shrink_to_fit();
        Ok(Ledger {
            path,
            file,
            _lock: lock,
            entries,
        })
    }

    /// Appends `e` and syncs it to disk before returning.
    pub fn append(&mut self, e: Entry) -> Result<(), BillingError> {
        let mut line = serde_json::to_string(&e).map_err(|e| BillingError::output("ledger", e))?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.sync_data())
            .map_err(|err| {
                BillingError::io(format!("appending to {}", self.path.display()), err)
            })?;
        self.entries.push(e);
        Ok(())
    }

    /// Per customer, what has been recorded.
    pub fn customers(&self) -> BTreeMap<String, CustomerState> {
        customers(&self.entries)
    }
}

/// Per customer, what `entries` record.
pub fn customers(entries: &[Entry]) -> BTreeMap<String, CustomerState> {
    let mut out: BTreeMap<String, CustomerState> = BTreeMap::new();
    for e in entries {
        match e {
            Entry::Begin { customer } => out.entry(customer.clone()).or_default().begun = true,
            Entry::Item {
                customer,
                key,
                id,
                amount,
                ..
            } => {
                let s = out.entry(customer.clone()).or_default();
                s.begun = true;
                s.items.insert(key.clone(), (id.clone(), *amount));
            }
            Entry::Invoice {
                customer,
                id,
                subtotal,
                total,
            } => {
                let s = out.entry(customer.clone()).or_default();
                s.begun = true;
                s.invoice = Some((id.clone(), *subtotal, *total));
            }
            Entry::Upload { .. } => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_last_line_is_dropped_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut l = Ledger::open(dir.path(), "stripe").unwrap();
            l.append(Entry::Begin {
                customer: "C-1".into(),
            })
            .unwrap();
        }
        let p = dir.path().join("stripe.jsonl");
        let mut text = std::fs::read_to_string(&p).unwrap();
        text.push_str("{\"event\":\"item\",\"cust");
        std::fs::write(&p, text).unwrap();
        let mut l = Ledger::open(dir.path(), "stripe").unwrap();
        assert_eq!(l.entries.len(), 1);
        l.append(Entry::Begin {
            customer: "C-2".into(),
        })
        .unwrap();
        drop(l);
        assert_eq!(read(&p).unwrap().len(), 2);
        // A bad line in the middle is corruption, not a torn write.
        std::fs::write(&p, "{bad}\n{\"event\":\"begin\",\"customer\":\"x\"}\n").unwrap();
        assert!(read(&p).is_err());
    }
}
