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
    /// Prometheus textfile; default `<out_dir>/exports/metrics.prom`. It holds wall-clock
    /// figures, so it is outside the run directories (which are byte-reproducible).
    pub metrics_file: Option<PathBuf>,
}

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
            metrics_file: None,
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
            metrics_file: file.metrics_file.as_deref().map(rel),
        })
    }

    /// Cross-file checks (every customer's tariff exists), all problems at once.
    pub fn check(&self) -> Result<(), BillingError> {
        let mut p = Problems::new();
        self.registry.validate(&mut p);
        self.tariffs.validate(&mut p);
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
    metrics_file: Option<PathBuf>,
}

fn yes() -> bool {
    true
}

impl Validate for ConfigFile {
    fn validate(&self, p: &mut Problems) {
        gridmeter_core::store::check_root(self.data_root.as_deref(), self.object_store.as_ref(), p);
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
