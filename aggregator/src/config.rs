//! The aggregator's configuration (TOML, `deny_unknown_fields`, every problem listed at once).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;

use gridmeter_core::config::{Problems, Validate};
pub use gridmeter_core::store::ObjectStoreConfig;
use rust_decimal::Decimal;
use serde::Deserialize;

/// Microseconds in one UTC day; every window size must divide it so windows align to
/// midnight UTC.
pub const DAY_US: i64 = 86_400_000_000;

/// Everything the aggregator needs to turn raw readings into usage tables.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregatorConfig {
    /// Local directory holding `raw/` (read) and `usage/` (written). Exactly one of
    /// `data_root` and `[object_store]` must be set.
    #[serde(default)]
    pub data_root: Option<PathBuf>,
    /// S3 (or S3-compatible) storage holding `raw/` and `usage/` under the URL's prefix:
    /// the same section as the collector's, so both can point at the same landing.
    #[serde(default)]
    pub object_store: Option<ObjectStoreConfig>,
    /// Tumbling window sizes, e.g. `["15m", "1h", "1d"]`; the text is also the table name
    /// (`usage/<window>/`) and the value of the `window` column.
    #[serde(default = "default_windows")]
    pub windows: Vec<String>,
    /// How long after a device's newest reading a window stays open (default `2h`).
    #[serde(default = "default_lateness")]
    pub allowed_lateness: String,
    /// Two consecutive readings further apart than this are a gap: the time between them
    /// is not covered, and usage spread over it is flagged `gap` and `estimated`
    /// (default `1h`).
    #[serde(default = "default_max_gap")]
    pub max_gap: String,
    /// Register maximum of counters without a channel-specific entry; without one, a
    /// decreasing counter is never taken for a rollover.
    #[serde(default)]
    pub default_register_max: Option<Decimal>,
    /// Register maximum per channel name.
    #[serde(default)]
    pub register_max: BTreeMap<String, Decimal>,
    /// Meter swaps recorded in the registry.
    #[serde(default)]
    pub meter_swaps: Vec<MeterSwap>,
    /// Where `run --watch` serves `/metrics` (optional).
    #[serde(default)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Most windows one series may create in one run, per window size (default 100 000,
    /// ≈ 2.8 years of 15-minute windows). A series that would create more (a reading dated
    /// 1970 next to today's) holds its device back, with the reason, instead of computing
    /// millions of windows.
    #[serde(default = "default_max_windows_per_series")]
    pub max_windows_per_series: u64,
}

fn default_max_windows_per_series() -> u64 {
    100_000
}

/// A meter replaced at `at`: the old meter's register ended at `old_final`, the new one
/// started at `new_start`. Usage across the swap is `(old_final - before) + (after -
/// new_start)`, flagged `reset`. (The shared type of `gridmeter_tables::counter`.)
pub use gridmeter_tables::counter::MeterSwap;

fn default_windows() -> Vec<String> {
    vec!["15m".into(), "1h".into(), "1d".into()]
}
fn default_lateness() -> String {
    "2h".into()
}
fn default_max_gap() -> String {
    "1h".into()
}

/// Parses `90s`, `15m`, `2h`, `1d` into microseconds.
pub fn parse_duration_us(text: &str) -> Result<i64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit (s, m, h or d)"))?;
    let (num, unit) = t.split_at(split);
    let n = i64::from_str(num).map_err(|_| format!("{text:?} is not <number><unit>"))?;
    let unit_us = match unit {
        "s" => 1_000_000,
        "m" => 60_000_000,
        "h" => 3_600_000_000,
        "d" => DAY_US,
        _ => return Err(format!("{text:?} has unknown unit {unit:?} (s, m, h or d)")),
    };
    n.checked_mul(unit_us)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// A window size with its table name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSpec {
    pub name: String,
    pub size_us: i64,
}

impl AggregatorConfig {
    /// A config with defaults for everything but the (local) data root.
    pub fn new(data_root: impl Into<PathBuf>) -> Self {
        AggregatorConfig {
            data_root: Some(data_root.into()),
            object_store: None,
            windows: default_windows(),
            allowed_lateness: default_lateness(),
            max_gap: default_max_gap(),
            default_register_max: None,
            register_max: BTreeMap::new(),
            meter_swaps: Vec::new(),
            metrics_listen: None,
            max_windows_per_series: default_max_windows_per_series(),
        }
    }

    /// A config with defaults for everything but the store: `raw/` and `usage/` on S3.
    pub fn on_object_store(object_store: ObjectStoreConfig) -> Self {
        AggregatorConfig {
            data_root: None,
            object_store: Some(object_store),
            ..AggregatorConfig::new("")
        }
    }

    /// The window sizes (validated by [`Validate`]; unparsable entries are skipped).
    pub fn window_specs(&self) -> Vec<WindowSpec> {
        self.windows
            .iter()
            .filter_map(|w| {
                parse_duration_us(w).ok().map(|size_us| WindowSpec {
                    name: w.clone(),
                    size_us,
                })
            })
            .collect()
    }

    pub fn lateness_us(&self) -> i64 {
        parse_duration_us(&self.allowed_lateness).unwrap_or(2 * 3_600_000_000)
    }

    pub fn max_gap_us(&self) -> i64 {
        parse_duration_us(&self.max_gap).unwrap_or(3_600_000_000)
    }

    /// The register maximum of `channel`, if configured.
    pub fn register_max_for(&self, channel: &str) -> Option<Decimal> {
        self.register_max
            .get(channel)
            .copied()
            .or(self.default_register_max)
    }

    /// The counter rules of one device channel (`gridmeter_tables::counter`).
    pub fn counter_rules(
        &self,
        device: &str,
        channel: &str,
    ) -> gridmeter_tables::counter::CounterRules {
        gridmeter_tables::counter::CounterRules::resolve(
            self.default_register_max,
            &self.register_max,
            &self.meter_swaps,
            device,
            channel,
            None,
        )
    }
}

impl Validate for AggregatorConfig {
    fn validate(&self, p: &mut Problems) {
        gridmeter_core::store::check_root(self.data_root.as_deref(), self.object_store.as_ref(), p);
        if self.windows.is_empty() {
            p.push("windows", "needs at least one window size");
        }
        for (i, w) in self.windows.iter().enumerate() {
            match parse_duration_us(w) {
                Err(e) => p.push(format!("windows[{i}]"), e),
                Ok(us) if us < 60_000_000 || DAY_US % us != 0 => p.push(
                    format!("windows[{i}]"),
                    format!("{w:?} must be at least 1m and divide one day"),
                ),
                Ok(_) => {}
            }
            if self.windows[..i].contains(w) {
                p.push(format!("windows[{i}]"), format!("{w:?} is listed twice"));
            }
            if w.starts_with(['_', '.']) || w.contains('/') {
                p.push(format!("windows[{i}]"), "is not usable as a directory name");
            }
        }
        match parse_duration_us(&self.allowed_lateness) {
            Err(e) => p.push("allowed_lateness", e),
            Ok(us) if us < 0 => p.push("allowed_lateness", "must not be negative"),
            Ok(_) => {}
        }
        if self.max_windows_per_series == 0 {
            p.push("max_windows_per_series", "must be positive");
        }
        match parse_duration_us(&self.max_gap) {
            Err(e) => p.push("max_gap", e),
            Ok(us) if us <= 0 => p.push("max_gap", "must be positive"),
            Ok(_) => {}
        }
        gridmeter_tables::counter::check(
            self.default_register_max.as_ref(),
            &self.register_max,
            &self.meter_swaps,
            p,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_every_problem() {
        let text = "data_root = \"/x\"\nwindows = [\"7m\", \"15m\", \"15m\", \"2x\"]\nallowed_lateness = \"soon\"\ntypo = 1\n";
        let err = gridmeter_core::config::parse::<AggregatorConfig>(text, "t").unwrap_err();
        let all = err.problems.join("\n");
        assert!(all.contains("typo"), "{all}");
        assert!(all.contains("windows[0]"), "{all}");
        assert!(all.contains("windows[2]"), "{all}");
        assert!(all.contains("windows[3]"), "{all}");
        assert!(all.contains("allowed_lateness"), "{all}");
    }

    #[test]
    fn object_store_section() {
        let text = "[object_store]\nurl = \"s3://bucket/gm\"\nendpoint = \"http://127.0.0.1:9000\"\nregion = \"us-east-1\"\naccess_key_id = \"k\"\nsecret_access_key = \"s\"\nallow_http = true\n";
        let c: AggregatorConfig = gridmeter_core::config::parse(text, "t").unwrap();
        assert_eq!(c.data_root, None);
        let os = c.object_store.unwrap();
        assert_eq!(os.url, "s3://bucket/gm");
        assert!(os.allow_http);

        // Every problem at once: both stores, a bad URL, http without allow_http, a typo.
        let text = "data_root = \"/x\"\nwindows = [\"7m\"]\n[object_store]\nurl = \"bucket/gm\"\nendpoint = \"http://h:9000\"\nbucket = \"b\"\n";
        let err = gridmeter_core::config::parse::<AggregatorConfig>(text, "t").unwrap_err();
        let all = err.problems.join("\n");
        assert!(all.contains("object_store.bucket"), "{all}");
        assert!(all.contains("not both"), "{all}");
        assert!(all.contains("object_store.url"), "{all}");
        assert!(all.contains("allow_http"), "{all}");
        assert!(all.contains("windows[0]"), "{all}");

        let err = gridmeter_core::config::parse::<AggregatorConfig>("windows = [\"1h\"]\n", "t")
            .unwrap_err();
        assert!(err
            .problems
            .join("\n")
            .contains("set data_root or [object_store]"));
    }

    #[test]
    fn defaults() {
        let c: AggregatorConfig =
            gridmeter_core::config::parse("data_root = \"/x\"\n", "t").unwrap();
        assert_eq!(c.lateness_us(), 7_200_000_000);
        assert_eq!(
            c.window_specs()
                .iter()
                .map(|w| w.size_us)
                .collect::<Vec<_>>(),
            vec![900_000_000, 3_600_000_000, DAY_US]
        );
    }
}
