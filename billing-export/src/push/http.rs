//! The HTTP client every delivery uses: one request at a time on a small runtime, retried with
//! exponential backoff (backon) on connection errors, timeouts, 408, 409, 429 and 5xx, and
//! paced to a maximum request rate. A retry sends the same request again, idempotency key
//! included, so the remote side can recognise it.

use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use serde::Deserialize;

use crate::error::{excerpt, BillingError};

/// Retry and pacing settings (`max_attempts`, `initial_backoff`, `max_backoff`, `timeout`,
/// `requests_per_second` in the `[stripe]`, `[zuora]` and `[[webhooks]]` sections).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Attempts per request, the first included.
    #[serde(default = "default_attempts")]
    pub max_attempts: usize,
    /// First delay between attempts (humantime, e.g. `500ms`); doubled each time.
    #[serde(default = "default_initial", with = "humantime_serde_compat")]
    pub initial_backoff: Duration,
    #[serde(default = "default_max", with = "humantime_serde_compat")]
    pub max_backoff: Duration,
    /// Per attempt.
    #[serde(default = "default_timeout", with = "humantime_serde_compat")]
    pub timeout: Duration,
    /// At most this many requests per second (0: unpaced).
    #[serde(default)]
    pub requests_per_second: u32,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            max_attempts: default_attempts(),
            initial_backoff: default_initial(),
            max_backoff: default_max(),
            timeout: default_timeout(),
            requests_per_second: 0,
        }
    }
}

fn default_attempts() -> usize {
    6
}
fn default_initial() -> Duration {
    Duration::from_millis(500)
}
fn default_max() -> Duration {
    Duration::from_secs(30)
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Durations as humantime text (`"250ms"`, `"2s"`).
mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map_err(|e| serde::de::Error::custom(format!("{}: {e}", crate::error::excerpt(&s))))
    }
}

/// An HTTP response: status and body.
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
    /// The body as JSON.
    pub fn json(&self, what: &str) -> Result<serde_json::Value, BillingError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| BillingError::remote(what, format!("response is not JSON: {e}")))
    }
    /// A bounded excerpt of the body for an error message.
    pub fn excerpt(&self) -> String {
        excerpt(&String::from_utf8_lossy(&self.body))
    }
}

/// One client with its runtime, pacing and retry policy.
pub struct Client {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    retry: Retry,
    last: Option<Instant>,
}

impl Client {
    pub fn new(retry: Retry) -> Result<Client, BillingError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| BillingError::io("starting the HTTP runtime", e))?;
        let http = reqwest::Client::builder()
            .timeout(retry.timeout)
            .user_agent(concat!("gridmeter-billing/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| BillingError::remote("HTTP client", e))?;
        Ok(Client {
            rt,
            http,
            retry,
            last: None,
        })
    }

    /// The reqwest client, to build requests with.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Sends the request `build` makes, again after a backoff while it fails in a way that a
    /// retry can fix. Returns the final response (which may be a 4xx) or the last error.
    pub fn send(
        &mut self,
        what: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<Response, BillingError> {
        let mut delays = backon::ExponentialBuilder::new()
            .with_min_delay(self.retry.initial_backoff)
            .with_max_delay(self.retry.max_backoff)
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(self.retry.max_attempts.saturating_sub(1))
            .build();
        let mut attempt = 1;
        loop {
            self.pace();
            let outcome = self.rt.block_on(async {
                let resp = build(&self.http).send().await?;
                let status = resp.status().as_u16();
                let body = resp.bytes().await?.to_vec();
                Ok::<_, reqwest::Error>(Response { status, body })
            });
            let retriable = match &outcome {
                Ok(r) => matches!(r.status, 408 | 409 | 429) || r.status >= 500,
                Err(e) => e.is_connect() || e.is_timeout() || e.is_request() || e.is_body(),
            };
            if !retriable {
                return outcome.map_err(|e| BillingError::remote(what, e));
            }
            let Some(delay) = delays.next() else {
                return match outcome {
                    Ok(r) => Ok(r),
                    Err(e) => Err(BillingError::remote(
                        what,
                        format!("{e} (after {attempt} attempts)"),
                    )),
                };
            };
            match &outcome {
                Ok(r) => tracing::warn!(%what, attempt, status = r.status, "retrying in {delay:?}"),
                Err(e) => tracing::warn!(%what, attempt, "retrying in {delay:?}: {e}"),
            }
            std::thread::sleep(delay);
            attempt += 1;
        }
    }

    fn pace(&mut self) {
        if self.retry.requests_per_second > 0 {
            let gap = Duration::from_secs(1) / self.retry.requests_per_second;
            if let Some(last) = self.last {
                let since = last.elapsed();
                if since < gap {
                    std::thread::sleep(gap - since);
                }
            }
        }
        self.last = Some(Instant::now());
    }
}

/// A secret read from a file (trimmed) or, without a file, from an environment variable;
/// never from the config file itself.
pub fn secret(
    what: &str,
    file: Option<&std::path::Path>,
    env: &str,
) -> Result<String, BillingError> {
    let value = match file {
        Some(f) => std::fs::read_to_string(f)
            .map_err(|e| BillingError::io(format!("reading the {what} from {}", f.display()), e))?,
        None => std::env::var(env).map_err(|_| {
            BillingError::Input(format!(
                "no {what}: set the environment variable {env} or name a file in the config"
            ))
        })?,
    };
    let value = value.trim().to_string();
    if value.is_empty() {
        return Err(BillingError::Input(format!("the {what} is empty")));
    }
    Ok(value)
}
