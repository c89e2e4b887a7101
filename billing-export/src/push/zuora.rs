//! `push --to zuora-file`: the run's usage lines as Zuora's usage import file (the columns of
//! the usage file template: `ACCOUNT_ID,UOM,QTY,STARTDATE,ENDDATE,SUBSCRIPTION_ID,CHARGE_ID,
//! DESCRIPTION`), split into parts of at most 4 MB (the REST upload limit), with `SHA256SUMS`
//! and `manifest.json` (rows and quantity per UOM), under `<run>/push/zuora/`. Optionally each
//! part is POSTed (multipart/form-data, field `file`) to the configured usage-import endpoint;
//! `push/zuora.jsonl` records the parts the endpoint accepted, so a second push uploads
//! nothing twice.
//!
//! Zuora rates usage itself, so the file carries quantities, not amounts: every line whose
//! component has a charge number in the registry (`zuora_charges`), in the line's billing
//! unit. Tax lines are never in it (Zuora's tax engine taxes the charges), nor fixed charges
//! without a mapping (Zuora bills them as recurring charges of the subscription). Any other
//! line without a mapping stops the push, listing every missing mapping at once: a usage line
//! left out would be money lost.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::document::{Document, RunRef};
use super::http::{self, Client, Retry};
use super::ledger::{Entry, Ledger};
use crate::error::{excerpt, BillingError};
use crate::registry::Customer;

/// The usage file template's columns, in order.
pub const COLUMNS: [&str; 8] = [
    "ACCOUNT_ID",
    "UOM",
    "QTY",
    "STARTDATE",
    "ENDDATE",
    "SUBSCRIPTION_ID",
    "CHARGE_ID",
    "DESCRIPTION",
];

/// Largest part the REST usage upload takes.
pub const MAX_PART_BYTES: usize = 4 * 1024 * 1024;

/// `[zuora]` in billing.toml.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZuoraConfig {
    /// Date format of the tenant user's locale: `MM/DD/YYYY` (en_US, default) or `DD/MM/YYYY`.
    #[serde(default = "default_date_format")]
    pub date_format: String,
    /// Our billing unit -> the tenant's unit of measure (default: the same text).
    #[serde(default)]
    pub uom: BTreeMap<String, String>,
    /// Usage import endpoint (`https://rest.zuora.com/v1/usage`); unset: files only.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Bearer token file; without it the environment variable `token_env`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    #[serde(default = "default_token_env")]
    pub token_env: String,
    #[serde(default)]
    pub retry: Retry,
}

fn default_date_format() -> String {
    "MM/DD/YYYY".into()
}
fn default_token_env() -> String {
    "ZUORA_TOKEN".into()
}

/// What the Zuora push wrote and sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub files: Vec<String>,
    pub rows: usize,
    /// Parts uploaded by this push (0 without an endpoint or when all were uploaded before).
    pub uploaded: usize,
    /// Parts the ledger shows as uploaded by an earlier push.
    pub already: usize,
}

#[derive(Debug, Serialize)]
struct Manifest {
    run: String,
    columns: [&'static str; 8],
    files: Vec<PartInfo>,
    rows: usize,
    /// Sum of QTY per UOM (exact decimals as text).
    quantity_by_uom: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
struct PartInfo {
    name: String,
    bytes: usize,
    rows: usize,
    sha256: String,
}

/// The rows of the usage file, or every missing mapping at once.
pub fn rows(
    cfg: &ZuoraConfig,
    customers: &BTreeMap<&str, &Customer>,
    run: &RunRef,
    docs: &[Document],
) -> Result<Vec<[String; 8]>, BillingError> {
    let date = |d: &str| -> Result<String, BillingError> {
        let nd = NaiveDate::parse_from_str(d, "%Y-%m-%d")
            .map_err(|e| BillingError::Input(format!("bad date {}: {e}", excerpt(d))))?;
        Ok(match cfg.date_format.as_str() {
            "DD/MM/YYYY" => nd.format("%d/%m/%Y").to_string(),
            _ => nd.format("%m/%d/%Y").to_string(),
        })
    };
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for doc in docs {
        let c = customers.get(doc.customer_id.as_str());
        let Some(account) = c.and_then(|c| c.zuora_account.clone()) else {
            problems.push(format!("customer {} has no zuora_account", doc.customer_id));
            continue;
        };
        let (start, end) = (
            date(&doc.billing_period.first_day)?,
            date(&doc.billing_period.last_day)?,
        );
        for l in &doc.lines {
            let charges = c.map(|c| &c.zuora_charges);
            let charge = charges.and_then(|m| {
                m.get(&format!("{}.{}", l.component, l.band))
                    .or_else(|| m.get(&l.component))
            });
            let Some(charge) = charge else {
                if l.unit != "day" {
                    problems.push(format!(
                        "customer {}: no zuora_charges entry for {}{}{}",
                        doc.customer_id,
                        l.component,
                        if l.band.is_empty() { "" } else { "." },
                        l.band
                    ));
                }
                continue;
            };
            out.push([
                account.clone(),
                cfg.uom
                    .get(&l.unit)
                    .cloned()
                    .unwrap_or_else(|| l.unit.clone()),
                l.quantity.normalize().to_string(),
                start.clone(),
                end.clone(),
                c.and_then(|c| c.zuora_subscription.clone())
                    .unwrap_or_default(),
                charge.clone(),
                format!(
                    "gridmeter {} {} {} {} {} {}{}",
                    run.name(),
                    doc.customer_id,
                    [l.site_id.as_str(), l.device_id.as_str(), l.channel.as_str()]
                        .iter()
                        .filter(|s| !s.is_empty())
                        .copied()
                        .collect::<Vec<_>>()
                        .join("/"),
                    l.component,
                    l.band,
                    l.line_type,
                    if l.line_type == "adjustment" {
                        " (correction)"
                    } else {
                        ""
                    }
                ),
            ]);
        }
    }
    if !problems.is_empty() {
        problems.sort();
        problems.dedup();
        return Err(BillingError::Input(format!(
            "cannot write the Zuora usage file, {} problem(s):\n  {}",
            problems.len(),
            problems.join("\n  ")
        )));
    }
    Ok(out)
}

/// Writes the file parts and the checksums, then uploads what is not uploaded yet.
pub fn push(
    cfg: &ZuoraConfig,
    customers: &BTreeMap<&str, &Customer>,
    run: &RunRef,
    docs: &[Document],
) -> Result<Outcome, BillingError> {
    let rows = rows(cfg, customers, run, docs)?;
    let dir = run.dir.join("push").join("zuora");
    let mut ledger = Ledger::open(&run.dir.join("push"), "zuora")?;
    // Parts of at most MAX_PART_BYTES, each with the header.
    let mut parts: Vec<(Vec<u8>, usize)> = Vec::new();
    let mut w = new_part()?;
    let mut n = 0;
    for r in &rows {
        let mut line = csv::WriterBuilder::new()
            .terminator(csv::Terminator::CRLF)
            .from_writer(Vec::new());
        line.write_record(r)
            .map_err(|e| BillingError::output("zuora usage file", e))?;
        let line = line
            .into_inner()
            .map_err(|e| BillingError::output("zuora usage file", e))?;
        if n > 0 && w.len() + line.len() > MAX_PART_BYTES {
            parts.push((std::mem::replace(&mut w, new_part()?), n));
            n = 0;
        }
        w.extend_from_slice(&line);
        n += 1;
    }
    parts.push((w, n));
    let mut qty: BTreeMap<String, Decimal> = BTreeMap::new();
    for r in &rows {
        *qty.entry(r[1].clone()).or_default() += r[2].parse::<Decimal>().unwrap_or_default();
    }
    let label = run.period.replace('_', "-");
    let mut infos = Vec::new();
    let mut sums = String::new();
    std::fs::create_dir_all(&dir)
        .map_err(|e| BillingError::io(format!("creating {}", dir.display()), e))?;
    for (i, (bytes, rows)) in parts.iter().enumerate() {
        // Zuora takes file names of at most 50 characters.
        let name = format!("usage-{label}-{}-{:02}.csv", run.run, i + 1);
        let sha = hex(&Sha256::digest(bytes));
        write_atomic(&dir.join(&name), bytes)?;
        sums.push_str(&format!("{sha}  {name}\n"));
        infos.push(PartInfo {
            name,
            bytes: bytes.len(),
            rows: *rows,
            sha256: sha,
        });
    }
    write_atomic(&dir.join("SHA256SUMS"), sums.as_bytes())?;
    let manifest = Manifest {
        run: run.name(),
        columns: COLUMNS,
        rows: rows.len(),
        quantity_by_uom: qty
            .iter()
            .map(|(k, v)| (k.clone(), v.normalize().to_string()))
            .collect(),
        files: infos,
    };
    write_atomic(
        &dir.join("manifest.json"),
        &serde_json::to_vec_pretty(&manifest)
            .map_err(|e| BillingError::output("zuora manifest", e))?,
    )?;
    let mut out = Outcome {
        files: manifest.files.iter().map(|f| f.name.clone()).collect(),
        rows: rows.len(),
        ..Outcome::default()
    };
    let Some(endpoint) = &cfg.endpoint else {
        return Ok(out);
    };
    let token = http::secret("Zuora token", cfg.token_file.as_deref(), &cfg.token_env)?;
    let mut client = Client::new(cfg.retry.clone())?;
    for (info, (bytes, _)) in manifest.files.iter().zip(&parts) {
        let done = ledger.entries.iter().any(|e| {
            matches!(e, Entry::Upload { file, sha256, .. } if *file == info.name && *sha256 == info.sha256)
        });
        if done {
            out.already += 1;
            continue;
        }
        let what = format!("Zuora usage upload {}", info.name);
        let r = client.send(&what, |c| {
            let part = reqwest::multipart::Part::bytes(bytes.clone())
                .file_name(info.name.clone())
                .mime_str("text/csv")
                .unwrap_or_else(|_| reqwest::multipart::Part::bytes(bytes.clone()));
            c.post(endpoint)
                .bearer_auth(&token)
                .header(
                    "Idempotency-Key",
                    format!("gm1-{}-{}", info.name, &info.sha256[..16]),
                )
                .multipart(reqwest::multipart::Form::new().part("file", part))
        })?;
        if !r.ok() {
            return Err(BillingError::remote(
                what,
                format!("{}: {}", r.status, r.excerpt()),
            ));
        }
        ledger.append(Entry::Upload {
            file: info.name.clone(),
            sha256: info.sha256.clone(),
            status: r.status,
            response: String::from_utf8_lossy(&r.body)
                .chars()
                .take(1000)
                .collect(),
        })?;
        out.uploaded += 1;
    }
    Ok(out)
}

fn new_part() -> Result<Vec<u8>, BillingError> {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::new());
    w.write_record(COLUMNS)
        .map_err(|e| BillingError::output("zuora usage file", e))?;
    w.into_inner()
        .map_err(|e| BillingError::output("zuora usage file", e))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Writes `path` through a temporary file and a rename (never half-written).
fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<(), BillingError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| BillingError::io(format!("writing {}", path.display()), e))
}
