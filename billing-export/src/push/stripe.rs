//! `push --to stripe`: each customer's document of a run becomes one Stripe invoice whose
//! invoice items are the document's lines and taxes, in Stripe's minor units. Stripe receives
//! our amounts and computes nothing: no Stripe tax rates, no quantity × price.
//!
//! Exactly once, whatever crashes (README "Stripe"):
//! - every request carries an `Idempotency-Key` derived from (period/run, customer, line key),
//!   and every invoice item the same key in `metadata[gridmeter_key]`;
//! - `push/stripe.jsonl` in the run directory records each object Stripe accepted, synced to
//!   disk before the next request; a resumed push sends nothing it lists;
//! - a customer not finished is first looked up in Stripe (its invoice items, by metadata
//!   key; its invoice, through the first item), so an object accepted just before a crash is
//!   found, not created again;
//! - before the invoice is created, the customer's pending items must be exactly ours and add
//!   up to our total; after, Stripe's invoice total must equal ours to the cent.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use rust_decimal::Decimal;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::document::{Charge, Document, RunRef};
use super::http::{self, Client, Retry};
use super::ledger::{self, CustomerState, Entry, Ledger};
use crate::error::{excerpt, BillingError};
use crate::registry::Customer;

/// `[stripe]` in billing.toml.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StripeConfig {
    /// Default `https://api.stripe.com`; a test points it at a local Stripe-compatible server.
    #[serde(default = "default_api_base")]
    pub api_base: String,
    /// A file holding the secret key (`sk_live_…`); without it, the environment variable
    /// `api_key_env`. Never the key itself.
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    #[serde(default = "default_key_env")]
    pub api_key_env: String,
    #[serde(default = "stripe_retry")]
    pub retry: Retry,
}

fn default_api_base() -> String {
    "https://api.stripe.com".into()
}
fn default_key_env() -> String {
    "STRIPE_API_KEY".into()
}
fn stripe_retry() -> Retry {
    Retry {
        // Stripe's live limit is 100 requests/s (test mode 25).
        requests_per_second: 20,
        ..Retry::default()
    }
}

impl Default for StripeConfig {
    fn default() -> Self {
        StripeConfig {
            api_base: default_api_base(),
            api_key_file: None,
            api_key_env: default_key_env(),
            retry: stripe_retry(),
        }
    }
}

/// Stripe's exponent of a currency (its "zero-decimal" and three-decimal currencies).
pub fn minor_exponent(currency: &str) -> u32 {
    match currency {
        "BIF" | "CLP" | "DJF" | "GNF" | "JPY" | "KMF" | "KRW" | "MGA" | "PYG" | "RWF" | "UGX"
        | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "JOD" | "KWD" | "OMR" | "TND" => 3,
        _ => 2,
    }
}

/// `amount` in Stripe's minor units of `currency`, exactly (an amount with more decimals than
/// the currency has cannot be sent without rounding, so it is refused).
pub fn to_minor(amount: Decimal, currency: &str) -> Result<i64, String> {
    let e = minor_exponent(currency);
    let m = amount * Decimal::from(10i64.pow(e));
    if m.fract() != Decimal::ZERO {
        return Err(format!(
            "{amount} {currency} has more decimals than Stripe's {e} for {currency}"
        ));
    }
    use rust_decimal::prelude::ToPrimitive;
    m.to_i64()
        .ok_or_else(|| format!("{amount} {currency} is out of range"))
}

/// The idempotency key of a line: readable prefix, hash of the full identity.
pub fn idempotency_key(run: &RunRef, customer: &str, key: &[String]) -> String {
    let mut h = Sha256::new();
    for part in [run.period.as_str(), run.run.as_str(), customer]
        .into_iter()
        .chain(key.iter().map(String::as_str))
    {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    let hex: String = h.finalize()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("gm1-{}-{}-{customer}-{hex}", run.period, run.run)
}

/// What one push did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Customers whose invoice is in Stripe now (this push or before).
    pub done: usize,
    /// Customers finished by an earlier push (nothing sent).
    pub already: usize,
    /// Objects this push created.
    pub created: usize,
    /// Objects found in Stripe after a crash (created by an interrupted push).
    pub recovered: usize,
    /// Customers not pushed, with the reason.
    pub failed: Vec<(String, String)>,
    /// Per currency, the total of the documents now in Stripe.
    pub totals: BTreeMap<String, Decimal>,
}

struct Api<'a> {
    client: Client,
    base: String,
    key: String,
    run: &'a RunRef,
}

impl Api<'_> {
    fn get(
        &mut self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<serde_json::Value, BillingError> {
        let url = format!("{}{path}", self.base);
        let what = format!("Stripe GET {path}");
        let key = self.key.clone();
        let r = self.client.send(&what, |c| {
            c.get(&url).basic_auth(&key, Some("")).query(query)
        })?;
        if !r.ok() {
            return Err(BillingError::remote(
                what,
                format!("{}: {}", r.status, r.excerpt()),
            ));
        }
        r.json(&what)
    }

    fn post(
        &mut self,
        path: &str,
        idempotency_key: &str,
        form: &[(String, String)],
    ) -> Result<serde_json::Value, BillingError> {
        let url = format!("{}{path}", self.base);
        let what = format!("Stripe POST {path}");
        let key = self.key.clone();
        let r = self.client.send(&what, |c| {
            c.post(&url)
                .basic_auth(&key, Some(""))
                .header("Idempotency-Key", idempotency_key)
                .form(form)
        })?;
        if !r.ok() {
            return Err(BillingError::remote(
                what,
                format!("{}: {}", r.status, r.excerpt()),
            ));
        }
        r.json(&what)
    }

    /// Every invoice item of a customer (all pages).
    fn items(&mut self, customer: &str) -> Result<Vec<serde_json::Value>, BillingError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut q = vec![("customer", customer.to_string()), ("limit", "100".into())];
            if let Some(a) = &after {
                q.push(("starting_after", a.clone()));
            }
            let page = self.get("/v1/invoiceitems", &q)?;
            let data = page["data"].as_array().cloned().unwrap_or_default();
            after = data
                .last()
                .and_then(|i| i["id"].as_str().map(str::to_string));
            out.extend(data);
            if !page["has_more"].as_bool().unwrap_or(false) || after.is_none() {
                return Ok(out);
            }
        }
    }
}

/// Pushes every document of `run` to Stripe (see the module docs).
pub fn push(
    cfg: &StripeConfig,
    customers: &BTreeMap<&str, &Customer>,
    run: &RunRef,
    docs: &[Document],
) -> Result<Outcome, BillingError> {
    let key = http::secret(
        "Stripe API key",
        cfg.api_key_file.as_deref(),
        &cfg.api_key_env,
    )?;
    let mut api = Api {
        client: Client::new(cfg.retry.clone())?,
        base: cfg.api_base.trim_end_matches('/').to_string(),
        key,
        run,
    };
    let mut ledger = Ledger::open(&run.dir.join("push"), "stripe")?;
    let state = ledger.customers();
    let earlier: Vec<(RunRef, BTreeMap<String, CustomerState>, BTreeSet<String>)> = run
        .earlier()
        .into_iter()
        .map(|r| {
            let entries = ledger::read(&r.dir.join("push/stripe.jsonl"))?;
            let docs: BTreeSet<String> =
                r.documents()?.into_iter().map(|d| d.customer_id).collect();
            Ok((r, ledger::customers(&entries), docs))
        })
        .collect::<Result<_, BillingError>>()?;
    let mut out = Outcome::default();
    for doc in docs {
        let id = doc.customer_id.as_str();
        let st = state.get(id).cloned().unwrap_or_default();
        if st.invoice.is_some() {
            out.already += 1;
            out.done += 1;
            *out.totals.entry(doc.currency.clone()).or_default() += doc.total;
            continue;
        }
        // A correction is only right on top of what it corrects.
        if let Some((r, _, _)) = earlier
            .iter()
            .find(|(_, s, d)| d.contains(id) && s.get(id).is_none_or(|c| c.invoice.is_none()))
        {
            out.failed.push((
                id.to_string(),
                format!(
                    "{} of this customer is not in Stripe yet: push it first",
                    r.name()
                ),
            ));
            continue;
        }
        match push_customer(&mut api, &mut ledger, customers.get(id).copied(), doc, &st) {
            Ok((created, recovered)) => {
                out.created += created;
                out.recovered += recovered;
                out.done += 1;
                *out.totals.entry(doc.currency.clone()).or_default() += doc.total;
            }
            Err(e @ BillingError::Io { .. }) => return Err(e),
            Err(e) => {
                tracing::error!(customer = %id, "not pushed to Stripe: {e}");
                out.failed.push((id.to_string(), e.to_string()));
            }
        }
    }
    Ok(out)
}

/// One customer's invoice items and invoice. Returns (created, recovered) objects.
fn push_customer(
    api: &mut Api,
    ledger: &mut Ledger,
    customer: Option<&Customer>,
    doc: &Document,
    st: &CustomerState,
) -> Result<(usize, usize), BillingError> {
    let id = doc.customer_id.as_str();
    let cus = customer
        .and_then(|c| c.stripe_customer.clone())
        .ok_or_else(|| {
            BillingError::Input(format!(
                "customer {id} has no stripe_customer in the registry"
            ))
        })?;
    let sub = customer.and_then(|c| c.stripe_subscription.clone());
    let currency = doc.currency.to_ascii_lowercase();
    // The service period as metadata (Stripe's own `period` is left to its default).
    unix(&doc.period_start)?;
    unix(&doc.period_end)?;
    let period = format!("{} {}/{}", doc.period, doc.period_start, doc.period_end);
    let charges: Vec<(Charge, String, i64)> = doc
        .charges()
        .into_iter()
        .map(|c| {
            let k = idempotency_key(api.run, id, &c.key);
            let m = to_minor(c.amount, &doc.currency).map_err(BillingError::Input)?;
            Ok((c, k, m))
        })
        .collect::<Result<_, BillingError>>()?;
    let total_minor = to_minor(doc.total, &doc.currency).map_err(BillingError::Input)?;
    if charges.is_empty() {
        return Err(BillingError::Input(format!(
            "the document of {id} has no lines"
        )));
    }
    let mut have: BTreeMap<String, (String, i64)> = st.items.clone();
    let (mut created, mut recovered) = (0, 0);

    if !st.begun {
        ledger.append(Entry::Begin {
            customer: id.into(),
        })?;
    }
    if have.len() < charges.len() {
        // What Stripe accepted but the ledger does not list (a crash between Stripe's answer
        // and the ledger write, or a lost ledger) is found by its key, not created again.
        let wanted: BTreeMap<&str, i64> =
            charges.iter().map(|(_, k, m)| (k.as_str(), *m)).collect();
        for item in api.items(&cus)? {
            let Some(k) = item["metadata"]["gridmeter_key"].as_str() else {
                continue;
            };
            if have.contains_key(k) || !wanted.contains_key(k) {
                continue;
            }
            let (iid, amount) = (
                str_of(&item, "id")?,
                item["amount"].as_i64().unwrap_or(i64::MIN),
            );
            if amount != wanted[k] {
                return Err(BillingError::remote(
                    "Stripe",
                    format!(
                        "invoice item {iid} ({k}) holds {amount}, ours is {}",
                        wanted[k]
                    ),
                ));
            }
            ledger.append(Entry::Item {
                customer: id.into(),
                key: k.into(),
                id: iid.clone(),
                amount,
                currency: currency.clone(),
            })?;
            have.insert(k.to_string(), (iid, amount));
            recovered += 1;
        }
    }

    for (c, k, m) in &charges {
        if have.contains_key(k) {
            continue;
        }
        let line = c.key.join("/");
        let mut form = vec![
            ("customer".to_string(), cus.clone()),
            ("amount".into(), m.to_string()),
            ("currency".into(), currency.clone()),
            ("description".into(), cut(&c.description, 500)),
            ("metadata[gridmeter_period]".into(), period.clone()),
            ("metadata[gridmeter_key]".into(), k.clone()),
            ("metadata[gridmeter_run]".into(), api.run.name()),
            (
                "metadata[gridmeter_invoice]".into(),
                cut(&doc.invoice_number, 500),
            ),
            ("metadata[gridmeter_line]".into(), cut(&line, 500)),
        ];
        if let Some(s) = &sub {
            form.push(("subscription".into(), s.clone()));
        }
        let item = api.post("/v1/invoiceitems", k, &form)?;
        let iid = str_of(&item, "id")?;
        ledger.append(Entry::Item {
            customer: id.into(),
            key: k.clone(),
            id: iid.clone(),
            amount: *m,
            currency: currency.clone(),
        })?;
        have.insert(k.clone(), (iid, *m));
        created += 1;
    }

    // The invoice: an interrupted push may have created it already (our first item is on it).
    let first = &have[&charges[0].1].0;
    let item = api.get(&format!("/v1/invoiceitems/{first}"), &[])?;
    let invoice = match item["invoice"].as_str() {
        Some(inv) => {
            recovered += 1;
            api.get(&format!("/v1/invoices/{inv}"), &[])?
        }
        None => {
            let ours: BTreeSet<&str> = have.values().map(|(i, _)| i.as_str()).collect();
            let pending: Vec<serde_json::Value> = api
                .items(&cus)?
                .into_iter()
                .filter(|i| i["invoice"].is_null())
                .filter(|i| sub.is_none() || i["subscription"].as_str() == sub.as_deref())
                .collect();
            let foreign: Vec<&str> = pending
                .iter()
                .filter_map(|i| i["id"].as_str())
                .filter(|i| !ours.contains(i))
                .collect();
            if !foreign.is_empty() {
                // A copy of one of our lines (a POST retried by a server that ignores
                // idempotency keys) is told apart from someone else's item.
                let ours_keys: BTreeSet<&str> =
                    charges.iter().map(|(_, k, _)| k.as_str()).collect();
                let copies = pending
                    .iter()
                    .filter(|i| i["id"].as_str().is_some_and(|x| !ours.contains(x)))
                    .filter(|i| {
                        i["metadata"]["gridmeter_key"]
                            .as_str()
                            .is_some_and(|k| ours_keys.contains(k))
                    })
                    .count();
                return Err(BillingError::remote(
                    "Stripe",
                    format!(
                        "{cus} has {} pending invoice items that are not this run's ({}; {copies} of them copies of our lines): \
                         the invoice would include them; delete them in Stripe and push again",
                        foreign.len(),
                        excerpt(&foreign.join(" "))
                    ),
                ));
            }
            let sum: i64 = pending.iter().filter_map(|i| i["amount"].as_i64()).sum();
            if pending.len() != ours.len() || sum != total_minor {
                return Err(BillingError::remote(
                    "Stripe",
                    format!(
                        "{cus}: {} pending items summing to {sum}, expected {} summing to {total_minor}",
                        pending.len(),
                        ours.len()
                    ),
                ));
            }
            let mut form = vec![
                ("customer".to_string(), cus.clone()),
                ("pending_invoice_items_behavior".into(), "include".into()),
                (
                    "description".into(),
                    cut(
                        &format!(
                            "{} {} for {} ({})",
                            doc.document,
                            doc.invoice_number,
                            doc.period,
                            api.run.name()
                        ),
                        500,
                    ),
                ),
                ("metadata[gridmeter_run]".into(), api.run.name()),
                (
                    "metadata[gridmeter_invoice]".into(),
                    cut(&doc.invoice_number, 500),
                ),
            ];
            if let Some(s) = &sub {
                form.push(("subscription".into(), s.clone()));
            }
            let k = idempotency_key(api.run, id, &["invoice".to_string()]);
            let inv = api.post("/v1/invoices", &k, &form)?;
            created += 1;
            inv
        }
    };
    let inv_id = str_of(&invoice, "id")?;
    let subtotal = invoice["subtotal"].as_i64().unwrap_or(i64::MIN);
    let total = invoice["total"].as_i64().unwrap_or(i64::MIN);
    // Stripe's totals must be ours to the cent. A negative total (a credit) may show as 0 due.
    let total_ok = total == total_minor || (total_minor < 0 && total == 0);
    if subtotal != total_minor || !total_ok {
        return Err(BillingError::remote(
            "Stripe",
            format!(
                "invoice {inv_id} of {cus}: subtotal {subtotal}, total {total}; ours is {total_minor} ({} {})",
                doc.total, doc.currency
            ),
        ));
    }
    ledger.append(Entry::Invoice {
        customer: id.into(),
        id: inv_id,
        subtotal,
        total,
    })?;
    Ok((created, recovered))
}

fn str_of(v: &serde_json::Value, field: &str) -> Result<String, BillingError> {
    v[field]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| BillingError::remote("Stripe", format!("response without {field}")))
}

fn unix(iso: &str) -> Result<i64, BillingError> {
    chrono::DateTime::parse_from_rfc3339(iso)
        .map(|t| t.timestamp())
        .map_err(|e| BillingError::Input(format!("bad period bound {}: {e}", excerpt(iso))))
}

/// At most `n` characters.
fn cut(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_in_stripe_minor_units_exactly() {
        let d = |s: &str| s.parse::<Decimal>().unwrap();
        assert_eq!(to_minor(d("12.34"), "EUR"), Ok(1234));
        assert_eq!(to_minor(d("-0.26"), "EUR"), Ok(-26));
        assert_eq!(to_minor(d("1500"), "JPY"), Ok(1500));
        assert_eq!(to_minor(d("1.5"), "KWD"), Ok(1500));
        assert!(to_minor(d("12.345"), "EUR").is_err());
        assert!(to_minor(d("1.5"), "JPY").is_err());
    }

    #[test]
    fn keys_differ_per_run_customer_and_line() {
        let r = |n: &str| RunRef {
            period: "2026-10".into(),
            run: n.into(),
            dir: PathBuf::new(),
        };
        let k = |run: &str, c: &str, band: &str| {
            idempotency_key(
                &r(run),
                c,
                &[
                    "S".into(),
                    "D".into(),
                    "ch".into(),
                    "energy".into(),
                    band.into(),
                ],
            )
        };
        assert_eq!(k("run-0001", "C-1", "peak"), k("run-0001", "C-1", "peak"));
        let all: BTreeSet<String> = [
            k("run-0001", "C-1", "peak"),
            k("run-0002", "C-1", "peak"),
            k("run-0001", "C-2", "peak"),
            k("run-0001", "C-1", "offpeak"),
        ]
        .into();
        assert_eq!(all.len(), 4);
        assert!(k("run-0001", "C-1", "peak").len() <= 255);
    }
}
