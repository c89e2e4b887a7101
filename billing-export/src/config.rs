//! The export configuration: in code ([`ExportConfig`]) or from `billing.toml`
//! ([`ExportConfig::load`]), which names the registry and tariff files.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use gridmeter_core::config::{Problems, Validate};
use serde::Deserialize;

use crate::error::BillingError;
use crate::money::Rounding;
use crate::registry::Registry;
use crate::tariff::Tariffs;
use gridmeter_core::store::{DataRoot, ObjectStoreConfig};

/// Everything one export needs.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    /// Where the `usage_15m` and `raw` tables are read: a local data root or an S3 location.
    pub tables: DataRoot,
    /// Outputs go to `<out_dir>/exports/<period>/run-NNNN/`.
    pub out_dir: PathBuf,
    pub registry: Registry,
    pub tariffs: Tariffs,
    /// Rounding of each line amount and tax to the currency's minor units.
    pub rounding: Rounding,
    /// The "issued"/"updated" instant written into invoices and ESPI feeds. Unset: the
    /// period's end, so re-runs stay byte-identical.
    pub as_of: Option<DateTime<Utc>>,
    /// Compare the usage sums with the register difference from raw readings.
    pub reconcile_raw: bool,
    /// Write Green Button ESPI feeds.
    pub green_button: bool,
    /// Write the feeds gzip-compressed, as `espi/<customer>.xml.gz` instead of
    /// `espi/<customer>.xml` (default off).
    pub green_button_gzip: bool,
    /// Absolute base URL of the feeds' hrefs (`https://utility.example/espi/1_1/resource`);
    /// default [`crate::espi::DEFAULT_BASE_URL`].
    pub green_button_base_url: String,
    /// Prometheus textfile; default `<out_dir>/exports/metrics.prom`. It holds wall-clock
    /// figures, so it is outside the run directories (which are byte-reproducible).
    pub metrics_file: Option<PathBuf>,
    /// `[stripe]`: where `push --to stripe` sends (default: api.stripe.com, key from
    /// `STRIPE_API_KEY`).
    pub stripe: Option<crate::push::stripe::StripeConfig>,
    /// `[zuora]`: the usage file of `push --to zuora-file` and its optional upload.
    pub zuora: Option<crate::push::zuora::ZuoraConfig>,
    /// `[[webhooks]]`: signed event endpoints.
    pub webhooks: Vec<crate::webhooks::WebhookConfig>,
    /// Customers billed per chunk (default [`DEFAULT_CHUNK_CUSTOMERS`], at least 1): a run
    /// bills one chunk at a time and reads the next while it writes the last, so its peak
    /// memory grows with this (about two chunks), not with the number of customers. The
    /// outputs do not depend on it.
    pub chunk_customers: usize,
    /// Threads pricing and rendering customers in parallel; 0 (default): one per core. The
    /// outputs do not depend on it.
    pub threads: usize,
    /// `[hold]`: the rules that hold a customer's bill for review (default: none).
    pub hold: HoldRules,
}

/// `[hold]`: hold a customer's bill (its reasons go to `exceptions.csv`, its invoice is not
/// issued) when its usage needs a review. Each rule is off unless set; with none set nothing
/// is held for these reasons.
///
/// ```toml
/// [hold]
/// max_estimated_share = "0.20"     # estimated share of the billed energy above 20 %
/// exception_severity = "critical"  # an open exception of this severity or above
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldRules {
    /// Hold when the share of the customer's billed energy (Wh and kWh channels its tariff
    /// prices, absolute usage, multiplier applied) from estimated intervals is above this,
    /// a fraction from 0 to 1.
    #[serde(default)]
    pub max_estimated_share: Option<rust_decimal::Decimal>,
    /// Hold when one of the customer's billed channels has an open exception (see
    /// README, "Hold rules") of this severity or above: `info`, `warning` or `critical`.
    #[serde(default)]
    pub exception_severity: Option<String>,
}

impl HoldRules {
    /// The severity of `exception_severity`, if set and known.
    pub fn severity(&self) -> Option<gridmeter_tables::exceptions::Severity> {
        self.exception_severity
            .as_deref()
            .and_then(gridmeter_tables::exceptions::Severity::from_name)
    }

    /// Whether any rule is set.
    pub fn any(&self) -> bool {
        self.max_estimated_share.is_some() || self.exception_severity.is_some()
    }

    /// The problems of the rules, under `hold.`.
    pub fn problems(&self, p: &mut Problems) {
        if let Some(m) = self.max_estimated_share {
            if m.is_sign_negative() || m > rust_decimal::Decimal::ONE {
                p.push(
                    "hold.max_estimated_share",
                    format!("{m} is not a fraction from 0 to 1 (0.20 is 20 %)"),
                );
            }
            if m.scale() > crate::money::QUALITY_SCALE {
                p.push(
                    "hold.max_estimated_share",
                    format!(
                        "{m} has more than {} decimal places",
                        crate::money::QUALITY_SCALE
                    ),
                );
            }
        }
        if let Some(s) = &self.exception_severity {
            if self.severity().is_none() {
                p.push(
                    "hold.exception_severity",
                    format!(
                        "{} is not info, warning or critical",
                        crate::error::excerpt(s)
                    ),
                );
            }
        }
    }
}

/// Customers per chunk by default: about 0.4 MB of working memory per customer with a
/// month of 15-minute data on one meter (usage and raw rows, pricing, Green Button points),
/// so some 400 MB a chunk.
pub const DEFAULT_CHUNK_CUSTOMERS: usize = 1000;

impl ExportConfig {
    /// A config with defaults: half-even rounding, raw reconciliation and Green Button on.
    pub fn new(
        data_root: impl Into<PathBuf>,
        out_dir: impl Into<PathBuf>,
        registry: Registry,
        tariffs: Tariffs,
    ) -> Self {
        ExportConfig {
            tables: DataRoot::Local(data_root.into()),
            out_dir: out_dir.into(),
            registry,
            tariffs,
            rounding: Rounding::HalfEven,
            as_of: None,
            reconcile_raw: true,
            green_button: true,
            green_button_gzip: false,
            green_button_base_url: crate::espi::DEFAULT_BASE_URL.to_string(),
            metrics_file: None,
            stripe: None,
            zuora: None,
            webhooks: Vec::new(),
            chunk_customers: DEFAULT_CHUNK_CUSTOMERS,
            threads: 0,
            hold: HoldRules::default(),
        }
    }

    /// Loads `billing.toml` and the registry and tariff files it names (relative paths are
    /// relative to the config file's directory).
    pub fn load(path: &Path) -> Result<Self, BillingError> {
        let file: ConfigFile = gridmeter_core::config::load(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let rel = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let registry: Registry = gridmeter_core::config::load(&rel(&file.registry))?;
        let tariffs: Tariffs = gridmeter_core::config::load(&rel(&file.tariffs))?;
        // Validation made sure exactly one of data_root and [object_store] is set, and
        // out_dir with [object_store].
        let data_root = file.data_root.as_deref().map(rel);
        let out_dir = file.out_dir.as_deref().map(rel).or(data_root.clone());
        let tables = DataRoot::choose(data_root.as_deref(), file.object_store.as_ref())
            .map_err(|e| BillingError::Input(e.to_string()))?;
        let out_dir = out_dir.ok_or_else(|| BillingError::Input("out_dir must be set".into()))?;
        Ok(ExportConfig {
            out_dir,
            tables,
            registry,
            tariffs,
            rounding: file.rounding,
            as_of: file.as_of,
            reconcile_raw: file.reconcile_raw,
            green_button: file.green_button,
            green_button_gzip: file.green_button_gzip,
            chunk_customers: file.chunk_customers,
            threads: file.threads,
            hold: file.hold,
            green_button_base_url: file
                .green_button_base_url
                .unwrap_or_else(|| crate::espi::DEFAULT_BASE_URL.to_string()),
            metrics_file: file.metrics_file.as_deref().map(rel),
            stripe: file.stripe.map(|mut s| {
                s.api_key_file = s.api_key_file.as_deref().map(rel);
                s
            }),
            zuora: file.zuora.map(|mut z| {
                z.token_file = z.token_file.as_deref().map(rel);
                z
            }),
            webhooks: file
                .webhooks
                .into_iter()
                .map(|mut w| {
                    w.secret_file = w.secret_file.as_deref().map(rel);
                    w
                })
                .collect(),
        })
    }

    /// Cross-file checks (every customer's tariff exists), all problems at once.
    pub fn check(&self) -> Result<(), BillingError> {
        let mut p = Problems::new();
        self.registry.validate(&mut p);
        self.tariffs.validate(&mut p);
        self.hold.problems(&mut p);
        for (i, c) in self.registry.customers.iter().enumerate() {
            if !self.tariffs.tariffs.contains_key(&c.tariff) {
                p.push(
                    format!("registry customers[{i}].tariff"),
                    format!("unknown tariff {:?}", c.tariff),
                );
            }
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(BillingError::Config(gridmeter_core::config::ConfigError {
                source_name: "billing export config".into(),
                problems: p.iter().map(str::to_string).collect(),
            }))
        }
    }
}

/// `billing.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    /// Local tables; or `[object_store]`.
    #[serde(default)]
    data_root: Option<PathBuf>,
    #[serde(default)]
    object_store: Option<ObjectStoreConfig>,
    #[serde(default)]
    out_dir: Option<PathBuf>,
    registry: PathBuf,
    tariffs: PathBuf,
    #[serde(default)]
    rounding: Rounding,
    #[serde(default)]
    as_of: Option<DateTime<Utc>>,
    #[serde(default = "yes")]
    reconcile_raw: bool,
    #[serde(default = "yes")]
    green_button: bool,
    #[serde(default)]
    green_button_gzip: bool,
    #[serde(default)]
    green_button_base_url: Option<String>,
    #[serde(default = "default_chunk")]
    chunk_customers: usize,
    #[serde(default)]
    threads: usize,
    #[serde(default)]
    metrics_file: Option<PathBuf>,
    #[serde(default)]
    stripe: Option<crate::push::stripe::StripeConfig>,
    #[serde(default)]
    zuora: Option<crate::push::zuora::ZuoraConfig>,
    #[serde(default)]
    webhooks: Vec<crate::webhooks::WebhookConfig>,
    #[serde(default)]
    hold: HoldRules,
}

/// `None` if `u` is an absolute http(s) URL without query or fragment, else the problem.
pub fn absolute_http_url(u: &str) -> Option<String> {
    match url::Url::parse(u) {
        Ok(p)
            if matches!(p.scheme(), "http" | "https")
                && p.query().is_none()
                && p.fragment().is_none() =>
        {
            None
        }
        _ => Some(format!(
            "{} is not an absolute http(s) URL without query or fragment",
            crate::error::excerpt(u)
        )),
    }
}

fn yes() -> bool {
    true
}

fn default_chunk() -> usize {
    DEFAULT_CHUNK_CUSTOMERS
}

impl Validate for ConfigFile {
    fn validate(&self, p: &mut Problems) {
        gridmeter_core::store::check_root(self.data_root.as_deref(), self.object_store.as_ref(), p);
        if self.chunk_customers == 0 {
            p.push("chunk_customers", "must be at least 1");
        }
        if self.threads > 1024 {
            p.push("threads", "must be at most 1024 (0: one per core)");
        }
        if let Some(u) = &self.green_button_base_url {
            if let Some(problem) = absolute_http_url(u) {
                p.push("green_button_base_url", problem);
            }
        }
        if let Some(st) = &self.stripe {
            if let Some(problem) = absolute_http_url(&st.api_base) {
                p.push("stripe.api_base", problem);
            }
            if st.retry.max_attempts == 0 {
                p.push("stripe.retry.max_attempts", "must be at least 1");
            }
        }
        if let Some(z) = &self.zuora {
            if !matches!(z.date_format.as_str(), "MM/DD/YYYY" | "DD/MM/YYYY") {
                p.push("zuora.date_format", "must be MM/DD/YYYY or DD/MM/YYYY");
            }
            if let Some(problem) = z.endpoint.as_deref().and_then(absolute_http_url) {
                p.push("zuora.endpoint", problem);
            }
        }
        for (i, w) in self.webhooks.iter().enumerate() {
            for (k, v) in w.problems(&format!("webhooks[{i}]")) {
                p.push(k, v);
            }
        }
        self.hold.problems(p);
        if self.object_store.is_some() && self.out_dir.is_none() {
            p.push(
                "out_dir",
                "must be set with [object_store]: exports are written to a local directory",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ConfigFile, gridmeter_core::config::ConfigError> {
        gridmeter_core::config::parse::<ConfigFile>(text, "billing.toml")
    }

    #[test]
    fn local_or_object_store() {
        let c = parse("data_root = \"/d\"\nregistry = \"r.toml\"\ntariffs = \"t.toml\"\n").unwrap();
        assert_eq!(c.data_root.as_deref(), Some(Path::new("/d")));
        let c = parse(
            "out_dir = \"/o\"\nregistry = \"r.toml\"\ntariffs = \"t.toml\"\n\
             [object_store]\nurl = \"s3://b/p\"\n",
        )
        .unwrap();
        assert_eq!(c.object_store.map(|o| o.url), Some("s3://b/p".to_string()));
    }

    #[test]
    fn secrets_are_never_in_the_config_file() {
        let base = "data_root = \"/d\"\nregistry = \"r\"\ntariffs = \"t\"\n";
        let e = parse(&format!("{base}[stripe]\napi_key = \"sk_live_x\"\n")).unwrap_err();
        assert!(e.problems.join("\n").contains("api_key"), "{e:?}");
        let e = parse(&format!(
            "{base}[[webhooks]]\nurl = \"https://h/x\"\nsecret = \"s\"\n"
        ))
        .unwrap_err();
        assert!(e.problems.join("\n").contains("secret"), "{e:?}");
        let c = parse(&format!(
            "{base}[stripe]\napi_key_file = \"stripe.key\"\n[stripe.retry]\ninitial_backoff = \"20ms\"\n\
             [[webhooks]]\nurl = \"https://h/x\"\nevents = [\"bill.held\"]\n"
        ))
        .unwrap();
        let st = c.stripe.unwrap();
        assert_eq!(
            st.retry.initial_backoff,
            std::time::Duration::from_millis(20)
        );
        assert_eq!(st.api_key_env, "STRIPE_API_KEY");
        let bad = parse(&format!(
            "{base}[[webhooks]]\nurl = \"ftp://h\"\nevents = [\"nope\"]\n[zuora]\ndate_format = \"YYYY\"\n"
        ))
        .unwrap_err()
        .problems
        .join("\n");
        for want in ["webhooks[0].url", "webhooks[0].events", "zuora.date_format"] {
            assert!(bad.contains(want), "{want} missing in {bad}");
        }
    }

    #[test]
    fn hold_rules_off_by_default_and_every_problem_listed() {
        let base = "data_root = \"/d\"\nregistry = \"r\"\ntariffs = \"t\"\n";
        assert_eq!(parse(base).unwrap().hold, HoldRules::default());
        assert!(!HoldRules::default().any());
        let c = parse(&format!(
            "{base}[hold]\nmax_estimated_share = \"0.20\"\nexception_severity = \"critical\"\n"
        ))
        .unwrap();
        assert_eq!(
            c.hold.max_estimated_share,
            Some(rust_decimal::Decimal::new(20, 2))
        );
        assert_eq!(
            c.hold.severity(),
            Some(gridmeter_tables::exceptions::Severity::Critical)
        );
        let bad = parse(&format!(
            "{base}[hold]\nmax_estimated_share = \"1.5\"\nexception_severity = \"fatal\"\n"
        ))
        .unwrap_err()
        .problems
        .join("\n");
        for want in [
            "hold.max_estimated_share: 1.5 is not a fraction",
            "hold.exception_severity",
            "fatal",
        ] {
            assert!(bad.contains(want), "{want} missing in {bad}");
        }
        let bad = parse(&format!("{base}[hold]\nmax_share = \"0.2\"\n"))
            .unwrap_err()
            .problems
            .join("\n");
        assert!(bad.contains("max_share"), "{bad}");
        let bad = parse(&format!(
            "{base}[hold]\nmax_estimated_share = \"0.12345\"\n"
        ))
        .unwrap_err()
        .problems
        .join("\n");
        assert!(bad.contains("decimal places"), "{bad}");
    }

    #[test]
    fn every_problem_at_once() {
        let all = |text: &str| parse(text).unwrap_err().problems.join("\n");
        let a = all("registry = \"r\"\ntariffs = \"t\"\n");
        assert!(
            a.contains("data_root: set data_root or [object_store]"),
            "{a}"
        );
        let a = all("data_root = \"/d\"\nregistry = \"r\"\ntariffs = \"t\"\n\
             [object_store]\nurl = \"bucket/p\"\nendpoint = \"http://h:9000\"\n");
        for want in ["not both", "object_store.url", "allow_http", "out_dir"] {
            assert!(a.contains(want), "{want} missing in {a}");
        }
    }
}
