//! Delivering a published run where the bill is used: Stripe invoices ([`stripe`]) and
//! Zuora's usage import ([`zuora`]). A push reads the run's documents (verified against its
//! manifest), never changes the export's files, and keeps its own state in `<run>/push/`.

pub mod document;
pub mod http;
pub mod ledger;
pub mod stripe;
pub mod zuora;

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use crate::config::ExportConfig;
use crate::error::BillingError;
use crate::registry::Customer;
use crate::webhooks::{self, Event};
use document::RunRef;

/// Where a run is pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Stripe,
    ZuoraFile,
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Stripe => "stripe",
            Target::ZuoraFile => "zuora-file",
        }
    }
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stripe" => Ok(Target::Stripe),
            "zuora-file" => Ok(Target::ZuoraFile),
            _ => Err(format!(
                "unknown target {} (stripe or zuora-file)",
                crate::error::excerpt(s)
            )),
        }
    }
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushSummary {
    /// `2026-10/run-0001`.
    pub run: String,
    pub target: Target,
    pub documents: usize,
    /// Stripe: customers whose invoice is in Stripe; Zuora: rows in the file.
    pub done: usize,
    /// Objects (Stripe) or uploads (Zuora) this push created.
    pub created: usize,
    /// Stripe objects found again after an interrupted push.
    pub recovered: usize,
    /// Customers (Stripe) finished by an earlier push, or parts (Zuora) uploaded before.
    pub already: usize,
    /// Customers not pushed and why (the others were).
    pub failed: Vec<(String, String)>,
    /// Per currency, the total of the documents delivered (Stripe).
    pub totals: BTreeMap<String, Decimal>,
    /// Zuora: the usage files written under `<run>/push/zuora/`.
    pub files: Vec<String>,
}

/// Pushes the published run `run` (`2026-10/run-0001`, under `<out_dir>/exports/`) to `target`
/// and sends a `push.completed` webhook.
pub fn push(cfg: &ExportConfig, run: &str, target: Target) -> Result<PushSummary, BillingError> {
    let run = RunRef::resolve(&cfg.out_dir, run)?;
    run.verify()?;
    let docs = run.documents()?;
    let customers: BTreeMap<&str, &Customer> = cfg
        .registry
        .customers
        .iter()
        .map(|c| (c.id.as_str(), c))
        .collect();
    let mut s = PushSummary {
        run: run.name(),
        target,
        documents: docs.len(),
        done: 0,
        created: 0,
        recovered: 0,
        already: 0,
        failed: Vec::new(),
        totals: BTreeMap::new(),
        files: Vec::new(),
    };
    match target {
        Target::Stripe => {
            let sc = cfg.stripe.clone().unwrap_or_default();
            let o = stripe::push(&sc, &customers, &run, &docs)?;
            s.done = o.done;
            s.created = o.created;
            s.recovered = o.recovered;
            s.already = o.already;
            s.failed = o.failed;
            s.totals = o.totals;
        }
        Target::ZuoraFile => {
            let zc = cfg.zuora.clone().ok_or_else(|| {
                BillingError::Input(
                    "push --to zuora-file needs a [zuora] section in billing.toml".into(),
                )
            })?;
            let o = zuora::push(&zc, &customers, &run, &docs)?;
            s.done = o.rows;
            s.created = o.uploaded;
            s.already = o.already;
            s.files = o.files;
        }
    }
    let event = Event::new(
        "push.completed",
        &s.run,
        serde_json::json!({
            "target": target.as_str(),
            "documents": s.documents,
            "done": s.done,
            "created": s.created,
            "recovered": s.recovered,
            "already": s.already,
            "failed": s.failed.iter().map(|(c, r)| serde_json::json!({"customer_id": c, "reason": r})).collect::<Vec<_>>(),
            "totals": s.totals.iter().map(|(c, t)| (c.clone(), t.to_string())).collect::<BTreeMap<_, _>>(),
            "files": s.files,
        }),
    );
    webhooks::publish(&cfg.webhooks, &run.dir, &[event]);
    Ok(s)
}
