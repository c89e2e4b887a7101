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
    /// Most devices whose raw series are loaded and recomputed at once (default: all of a
    /// run's devices). A run over many devices and a long span (a month of backlog) then
    /// works batch after batch, each with its own commits, and its peak memory is a
    /// function of this number instead of the fleet size. Every batch scans the run's raw
    /// files again, so a smaller batch costs scan time.
    #[serde(default)]
    pub devices_per_batch: Option<usize>,
    /// Validation, estimation and editing (`[vee]`); without it usage is computed as before
    /// (no rules, linear across every gap, no method flags).
    #[serde(default)]
    pub vee: Option<VeeConfig>,
}

/// `[vee]`: validation rules per channel or device class, and how gaps are estimated
/// (aggregator/README.md, "Validation, estimation, editing").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VeeConfig {
    /// Gaps up to this long are interpolated linearly; longer ones are shaped by a profile
    /// (default `2h`).
    #[serde(default = "default_max_interpolation")]
    pub max_interpolation: String,
    /// Weeks of the meter's own history the profile is built from (default 4).
    #[serde(default = "default_profile_weeks")]
    pub profile_weeks: u32,
    /// Device classes, matched in order (first match wins).
    #[serde(default)]
    pub classes: Vec<DeviceClass>,
    /// Validation rules.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

fn default_max_interpolation() -> String {
    "2h".into()
}
fn default_profile_weeks() -> u32 {
    4
}

/// A class of devices (households, businesses…).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceClass {
    pub name: String,
    /// Device ids; an entry ending in `*` matches every id with that prefix.
    pub devices: Vec<String>,
    /// The standard load profile for gaps without own history: `H0` (households) or `G0`
    /// (businesses), BDEW.
    #[serde(default)]
    pub standard_profile: Option<String>,
}

impl DeviceClass {
    /// Whether `device` belongs to the class.
    pub fn matches(&self, device: &str) -> bool {
        self.devices.iter().any(|d| match d.strip_suffix('*') {
            Some(prefix) => device.starts_with(prefix),
            None => d == device,
        })
    }
}

/// One validation rule (`[[vee.rules]]`). Which parameters a rule takes:
/// `high_limit` max; `low_limit` min; `spike` factor, trailing; `stuck` hours; `negative`
/// (none); `implausible_rollover` max; `timestamp_gap` max_gap; `gauge_range` min and/or max.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// The rule's name (`gridmeter_tables::exceptions::Rule`).
    pub rule: String,
    /// Only devices of this class (default: every device).
    #[serde(default)]
    pub class: Option<String>,
    /// Only this channel (default: every channel).
    #[serde(default)]
    pub channel: Option<String>,
    /// `flag` (default: keep the value, flag it, record the exception) or `estimate` (also
    /// replace it by an estimate).
    #[serde(default)]
    pub action: Option<String>,
    /// `info`, `warning` (default) or `critical`, recorded with the exception.
    #[serde(default)]
    pub severity: Option<String>,
    #[serde(default)]
    pub min: Option<Decimal>,
    #[serde(default)]
    pub max: Option<Decimal>,
    /// Spike: an interval above `factor` × the trailing median.
    #[serde(default)]
    pub factor: Option<Decimal>,
    /// Spike: how many trailing intervals the median is taken over (default 96).
    #[serde(default)]
    pub trailing: Option<u32>,
    /// Stuck: hours without register change.
    #[serde(default)]
    pub hours: Option<u32>,
    /// Timestamp gap: readings further apart than this (default: `max_gap`).
    #[serde(default)]
    pub max_gap: Option<String>,
}

const RULE_PARAMS: [(&str, &[&str], &[&str]); 8] = [
    ("high_limit", &["max"], &[]),
    ("low_limit", &["min"], &[]),
    ("spike", &["factor"], &["trailing"]),
    ("stuck", &["hours"], &[]),
    ("negative", &[], &[]),
    ("implausible_rollover", &["max"], &[]),
    ("timestamp_gap", &[], &["max_gap"]),
    ("gauge_range", &[], &["min", "max"]),
];

impl RuleConfig {
    fn set_params(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        for (name, set) in [
            ("min", self.min.is_some()),
            ("max", self.max.is_some()),
            ("factor", self.factor.is_some()),
            ("trailing", self.trailing.is_some()),
            ("hours", self.hours.is_some()),
            ("max_gap", self.max_gap.is_some()),
        ] {
            if set {
                out.push(name);
            }
        }
        out
    }

    /// Whether failures are replaced by an estimate.
    pub fn estimates(&self) -> bool {
        self.action.as_deref() == Some("estimate")
    }

    fn validate(&self, key: &str, classes: &[DeviceClass], p: &mut Problems) {
        let Some((_, required, optional)) = RULE_PARAMS.iter().find(|(n, _, _)| *n == self.rule)
        else {
            p.push(
                format!("{key}.rule"),
                format!(
                    "unknown rule {} (known: {})",
                    gridmeter_core::text::excerpt(&self.rule),
                    RULE_PARAMS.map(|r| r.0).join(", ")
                ),
            );
            return;
        };
        let set = self.set_params();
        for r in required.iter() {
            if !set.contains(r) {
                p.push(
                    format!("{key}.{r}"),
                    format!("is required by rule {}", self.rule),
                );
            }
        }
        for s in &set {
            if !required.contains(s) && !optional.contains(s) {
                p.push(
                    format!("{key}.{s}"),
                    format!("is not a parameter of rule {}", self.rule),
                );
            }
        }
        if self.rule == "gauge_range" && self.min.is_none() && self.max.is_none() {
            p.push(key, "rule gauge_range needs min or max");
        }
        for (name, d) in [
            ("min", self.min),
            ("max", self.max),
            ("factor", self.factor),
        ] {
            if let Some(d) = d {
                if gridmeter_core::decimal::to_scaled_i128(d).is_none() {
                    p.push(format!("{key}.{name}"), "has more than 9 decimal places");
                }
            }
        }
        if self.factor.is_some_and(|f| f <= Decimal::ONE) {
            p.push(format!("{key}.factor"), "must be above 1");
        }
        if let (Some(lo), Some(hi)) = (self.min, self.max) {
            if lo > hi {
                p.push(key, "min is above max");
            }
        }
        if self.trailing == Some(0) {
            p.push(format!("{key}.trailing"), "must be positive");
        }
        if self.hours == Some(0) {
            p.push(format!("{key}.hours"), "must be positive");
        }
        if let Some(g) = &self.max_gap {
            match parse_duration_us(g) {
                Err(e) => p.push(format!("{key}.max_gap"), e),
                Ok(us) if us <= 0 => p.push(format!("{key}.max_gap"), "must be positive"),
                Ok(_) => {}
            }
        }
        match self.action.as_deref() {
            None | Some("flag") => {}
            Some("estimate") if matches!(self.rule.as_str(), "timestamp_gap" | "gauge_range") => p
                .push(
                    format!("{key}.action"),
                    format!(
                        "rule {} can only flag (its windows are estimated already or are gauges)",
                        self.rule
                    ),
                ),
            Some("estimate") => {}
            Some(other) => p.push(
                format!("{key}.action"),
                format!(
                    "{} is not flag or estimate",
                    gridmeter_core::text::excerpt(other)
                ),
            ),
        }
        if let Some(s) = &self.severity {
            if gridmeter_tables::exceptions::Severity::from_name(s).is_none() {
                p.push(
                    format!("{key}.severity"),
                    format!(
                        "{} is not info, warning or critical",
                        gridmeter_core::text::excerpt(s)
                    ),
                );
            }
        }
        if let Some(c) = &self.class {
            if !classes.iter().any(|k| &k.name == c) {
                p.push(
                    format!("{key}.class"),
                    format!(
                        "{} is not a class of [[vee.classes]]",
                        gridmeter_core::text::excerpt(c)
                    ),
                );
            }
        }
    }
}

impl VeeConfig {
    /// Steps longer than this are shaped by a profile.
    pub fn max_interpolation_us(&self) -> i64 {
        parse_duration_us(&self.max_interpolation).unwrap_or(2 * 3_600_000_000)
    }

    /// The class of `device`, if any.
    pub fn class_of(&self, device: &str) -> Option<&DeviceClass> {
        self.classes.iter().find(|c| c.matches(device))
    }

    fn validate(&self, p: &mut Problems) {
        match parse_duration_us(&self.max_interpolation) {
            Err(e) => p.push("vee.max_interpolation", e),
            Ok(us) if us < 0 => p.push("vee.max_interpolation", "must not be negative"),
            Ok(_) => {}
        }
        if self.profile_weeks == 0 || self.profile_weeks > 52 {
            p.push("vee.profile_weeks", "must be 1 to 52");
        }
        for (i, c) in self.classes.iter().enumerate() {
            let key = format!("vee.classes[{i}]");
            if c.name.is_empty() {
                p.push(format!("{key}.name"), "must not be empty");
            }
            if self.classes[..i].iter().any(|k| k.name == c.name) {
                p.push(format!("{key}.name"), "is listed twice");
            }
            if c.devices.is_empty()
                || c.devices
                    .iter()
                    .any(|d| d.is_empty() || d == "*" && c.devices.len() > 1)
            {
                p.push(
                    format!("{key}.devices"),
                    "needs device ids or prefixes ending in *",
                );
            }
            if let Some(sp) = &c.standard_profile {
                if crate::estimation::StandardProfile::from_name(sp).is_none() {
                    p.push(
                        format!("{key}.standard_profile"),
                        format!("{} is not H0 or G0", gridmeter_core::text::excerpt(sp)),
                    );
                }
            }
        }
        for (i, r) in self.rules.iter().enumerate() {
            r.validate(&format!("vee.rules[{i}]"), &self.classes, p);
        }
    }
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
            devices_per_batch: None,
            vee: None,
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
        if self.devices_per_batch == Some(0) {
            p.push("devices_per_batch", "must be positive");
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
        if let Some(v) = &self.vee {
            v.validate(p);
        }
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
