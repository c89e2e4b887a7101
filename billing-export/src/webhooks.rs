//! Signed webhooks: JSON events POSTed to the configured URLs when a run is published
//! (`run.published`), a customer's bill is held (`bill.held`, one per customer), the
//! reconciliation fails (`reconciliation.failed`) and a push ends (`push.completed`).
//!
//! Each request carries `Gridmeter-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
//! "<t>.<body>" with the endpoint's secret>` (the Stripe-signature scheme: a receiver checks
//! the HMAC and that `t` is recent) and `Gridmeter-Event-Id`; the same event always has the
//! same id (UUIDv5 of its type, run and content), so a receiver drops duplicates from retries,
//! resends and re-runs. Failed deliveries are retried with exponential backoff (backon);
//! every event is kept in `<run>/events/<id>.json` and every outcome appended to
//! `<run>/events/deliveries.jsonl`, and `gridmeter-billing webhooks --run …` sends again what
//! was not delivered. A failing receiver never fails the export or the push.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::BillingError;
use crate::push::http::{self, Client, Retry};

/// Every event type.
pub const EVENT_TYPES: [&str; 4] = [
    "run.published",
    "bill.held",
    "reconciliation.failed",
    "push.completed",
];

/// One `[[webhooks]]` endpoint of billing.toml.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// File holding the signing secret; without it, the environment variable `secret_env`.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    #[serde(default = "default_secret_env")]
    pub secret_env: String,
    /// Event types sent to this endpoint; empty: all.
    #[serde(default)]
    pub events: Vec<String>,
    #[serde(default = "webhook_retry")]
    pub retry: Retry,
}

fn default_secret_env() -> String {
    "GRIDMETER_WEBHOOK_SECRET".into()
}
fn webhook_retry() -> Retry {
    Retry {
        max_attempts: 8,
        ..Retry::default()
    }
}

impl WebhookConfig {
    /// Problems of this entry (`at` names it), for the config's validation pass.
    pub fn problems(&self, at: &str) -> Vec<(String, String)> {
        let mut p = Vec::new();
        if let Some(problem) = crate::config::absolute_http_url(&self.url) {
            p.push((format!("{at}.url"), problem));
        }
        for e in &self.events {
            if !EVENT_TYPES.contains(&e.as_str()) {
                p.push((
                    format!("{at}.events"),
                    format!(
                        "unknown event {} (one of {})",
                        crate::error::excerpt(e),
                        EVENT_TYPES.join(", ")
                    ),
                ));
            }
        }
        if self.retry.max_attempts == 0 {
            p.push((
                format!("{at}.retry.max_attempts"),
                "must be at least 1".into(),
            ));
        }
        p
    }
}

/// An event as sent (the body is this struct's JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Stable: UUIDv5 of the type, the run and the data.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// When the event was first made (unix seconds).
    pub created: i64,
    /// `2026-10/run-0001`.
    pub run: String,
    pub data: serde_json::Value,
}

impl Event {
    /// A new event; its id depends on everything but `created`.
    pub fn new(kind: &str, run: &str, data: serde_json::Value) -> Event {
        let id = crate::espi::uuid_v5(&format!("gridmeter:event:{kind}:{run}:{data}")).to_string();
        Event {
            id,
            kind: kind.to_string(),
            created: chrono::Utc::now().timestamp(),
            run: run.to_string(),
            data,
        }
    }
}

/// `t=<t>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature(secret: &str, t: i64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(t.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

/// One delivery outcome (`deliveries.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub event: String,
    pub url: String,
    pub delivered: bool,
    /// Final HTTP status (0: no response).
    pub status: u16,
    pub error: String,
}

/// Stores `events` under `<run_dir>/events/` and delivers them to every endpoint that takes
/// their type. Never fails: problems are logged and recorded.
pub fn publish(hooks: &[WebhookConfig], run_dir: &Path, events: &[Event]) -> Vec<Delivery> {
    if hooks.is_empty() || events.is_empty() {
        return Vec::new();
    }
    let dir = run_dir.join("events");
    for e in events {
        let path = dir.join(format!("{}.json", e.id));
        if path.exists() {
            continue; // the same event made earlier keeps its first `created`
        }
        let stored = serde_json::to_vec_pretty(e)
            .map_err(|err| BillingError::output("webhook event", err))
            .and_then(|b| {
                std::fs::create_dir_all(&dir)
                    .and_then(|_| std::fs::write(&path, b))
                    .map_err(|err| BillingError::io(format!("writing {}", path.display()), err))
            });
        if let Err(err) = stored {
            tracing::warn!("cannot store webhook event {}: {err}", e.id);
        }
    }
    resend(hooks, run_dir)
}

/// Delivers every stored event of `run_dir` that an endpoint has not received yet.
pub fn resend(hooks: &[WebhookConfig], run_dir: &Path) -> Vec<Delivery> {
    let dir = run_dir.join("events");
    let log = dir.join("deliveries.jsonl");
    let done: BTreeSet<(String, String)> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Delivery>(l).ok())
        .filter(|d| d.delivered)
        .map(|d| (d.event, d.url))
        .collect();
    let mut events: Vec<(Event, Vec<u8>)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter_map(|p| {
            let bytes = std::fs::read(&p).ok()?;
            let e: Event = serde_json::from_slice(&bytes).ok()?;
            let body = serde_json::to_vec(&e).ok()?;
            Some((e, body))
        })
        .collect();
    events.sort_by(|a, b| (a.0.created, &a.0.id).cmp(&(b.0.created, &b.0.id)));
    let mut out = Vec::new();
    for hook in hooks {
        let secret = match http::secret(
            "webhook secret",
            hook.secret_file.as_deref(),
            &hook.secret_env,
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(url = %hook.url, "webhooks not sent: {e}");
                continue;
            }
        };
        let mut client = match Client::new(hook.retry.clone()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(url = %hook.url, "webhooks not sent: {e}");
                continue;
            }
        };
        for (e, body) in &events {
            let wanted = hook.events.is_empty() || hook.events.contains(&e.kind);
            if !wanted || done.contains(&(e.id.clone(), hook.url.clone())) {
                continue;
            }
            let d = deliver(&mut client, hook, &secret, e, body);
            if d.delivered {
                tracing::info!(url = %hook.url, event = %e.id, kind = %e.kind, "webhook delivered");
            } else {
                tracing::error!(url = %hook.url, event = %e.id, kind = %e.kind, "webhook not delivered: {} {}", d.status, d.error);
            }
            let line = serde_json::to_string(&d).unwrap_or_default();
            let appended = std::fs::create_dir_all(&dir).and_then(|_| {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)?;
                f.write_all(format!("{line}\n").as_bytes())?;
                f.sync_data()
            });
            if let Err(err) = appended {
                tracing::warn!("cannot record the delivery in {}: {err}", log.display());
            }
            out.push(d);
        }
    }
    out
}

/// One event to one endpoint, signed afresh for every attempt.
fn deliver(
    client: &mut Client,
    hook: &WebhookConfig,
    secret: &str,
    e: &Event,
    body: &[u8],
) -> Delivery {
    let what = format!("webhook {} to {}", e.kind, hook.url);
    let r = client.send(&what, |c| {
        let t = chrono::Utc::now().timestamp();
        c.post(&hook.url)
            .header("Content-Type", "application/json")
            .header("Gridmeter-Event-Id", &e.id)
            .header("Gridmeter-Signature", signature(secret, t, body))
            .body(body.to_vec())
    });
    match r {
        Ok(r) => Delivery {
            event: e.id.clone(),
            url: hook.url.clone(),
            delivered: r.ok(),
            status: r.status,
            error: if r.ok() { String::new() } else { r.excerpt() },
        },
        Err(err) => Delivery {
            event: e.id.clone(),
            url: hook.url.clone(),
            delivered: false,
            status: 0,
            error: err.to_string(),
        },
    }
}

/// The events of a published export run.
pub fn export_events(s: &crate::ExportSummary) -> Vec<Event> {
    let Some(run) = &s.run else { return Vec::new() };
    let name = format!("{}/{run}", s.period);
    let mut out = vec![Event::new(
        "run.published",
        &name,
        serde_json::json!({
            "period": s.period,
            "run": run,
            "customers": s.customers,
            "statement_lines": s.statement_lines,
            "adjustment_lines": s.adjustment_lines,
            "totals": s.totals.iter().map(|(c, t)| (c.clone(), t.to_string())).collect::<std::collections::BTreeMap<_, _>>(),
            "held_customers": s.held_customers().len(),
            "reconciliation_mismatches": s.reconciliation_mismatches,
        }),
    )];
    for c in s.held_customers() {
        let reasons: Vec<serde_json::Value> = s
            .held
            .iter()
            .filter(|e| e.customer_id == c)
            .map(|e| {
                serde_json::json!({
                    "site_id": e.site_id, "device_id": e.device_id, "channel": e.channel, "reason": e.reason
                })
            })
            .collect();
        out.push(Event::new(
            "bill.held",
            &name,
            serde_json::json!({ "customer_id": c, "reasons": reasons }),
        ));
    }
    if s.reconciliation_mismatches > 0 {
        let rows: Vec<serde_json::Value> = s
            .held
            .iter()
            .filter(|e| e.reason.starts_with("reconciliation"))
            .map(|e| {
                serde_json::json!({
                    "customer_id": e.customer_id, "device_id": e.device_id, "channel": e.channel, "reason": e.reason
                })
            })
            .collect();
        out.push(Event::new(
            "reconciliation.failed",
            &name,
            serde_json::json!({ "mismatches": s.reconciliation_mismatches, "rows": rows }),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_over_timestamp_and_body() {
        // RFC 4231 test case 2 (key "Jefe"), with the message split as "<t>.<body>".
        let s = signature("Jefe", 0, b"");
        assert!(s.starts_with("t=0,v1="), "{s}");
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"Jefe");
        let want = ring::hmac::sign(&key, b"what do ya want for nothing?");
        let hex: String = want.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // "<t>.<body>" with t = "what do ya want for nothing?" split at the dot is not
        // possible, so check the framing directly:
        let direct = ring::hmac::sign(&key, b"17.{\"a\":1}");
        let hex: String = direct.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            signature("Jefe", 17, b"{\"a\":1}"),
            format!("t=17,v1={hex}")
        );
    }

    #[test]
    fn the_same_event_has_the_same_id() {
        let a = Event::new(
            "bill.held",
            "2026-10/run-0001",
            serde_json::json!({"customer_id": "C-1"}),
        );
        let b = Event::new(
            "bill.held",
            "2026-10/run-0001",
            serde_json::json!({"customer_id": "C-1"}),
        );
        let c = Event::new(
            "bill.held",
            "2026-10/run-0001",
            serde_json::json!({"customer_id": "C-2"}),
        );
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id);
    }
}
