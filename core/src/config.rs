//! TOML configuration that reports every problem at once.
//!
//! Config structs use `#[serde(deny_unknown_fields)]` and implement [`Validate`]. [`parse`]
//! keeps going after an unknown key (it removes the key and tries again), then runs the
//! semantic validation, so one run of a bad config lists the unknown key, the unreadable
//! certificate and the bad register map together.

use std::fmt;
use std::path::Path;

use serde::de::DeserializeOwned;

/// Problems found in one config, each with the path of the key it concerns.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Problems(Vec<String>);

impl Problems {
    pub fn new() -> Self {
        Self::default()
    }
    /// Records a problem at `path` (e.g. `sources[1].registers[0].scale`).
    pub fn push(&mut self, path: impl fmt::Display, message: impl fmt::Display) {
        self.0
            .push(format!("{path}: {}", message.to_string().trim_end()));
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }
}

/// The semantic checks of a config, run after it parsed.
pub trait Validate {
    fn validate(&self, problems: &mut Problems);
}

/// A config that cannot be used, with every problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// Where the config came from (a path, or a name for embedded text).
    pub source_name: String,
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "config {} has {n} problem{}:",
            self.source_name,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

/// Reads and parses a TOML config file.
pub fn load<T: DeserializeOwned + Validate>(path: &Path) -> Result<T, ConfigError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        source_name: name.clone(),
        problems: vec![format!("cannot read the file: {e}")],
    })?;
    parse(&text, &name)
}

/// Parses TOML text into `T`, collecting every problem: syntax, unknown keys, wrong types
/// (the first one that stops parsing) and the semantic validation.
pub fn parse<T: DeserializeOwned + Validate>(
    text: &str,
    source_name: &str,
) -> Result<T, ConfigError> {
    let fail = |problems: Vec<String>| ConfigError {
        source_name: source_name.to_string(),
        problems,
    };
    let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let msg = e.message().to_string();
        let at = e
            .span()
            .map(|s| {
                let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                format!("line {line}: ")
            })
            .unwrap_or_default();
        fail(vec![format!("{at}{msg}")])
    })?;
    let mut problems = Problems::new();
    let mut parsed = None;
    for _ in 0..64 {
        match serde_path_to_error::deserialize::<_, T>(toml::Value::Table(table.clone())) {
            Ok(v) => {
                parsed = Some(v);
                break;
            }
            Err(e) => {
                let path = e.path().to_string();
                let message = e.inner().to_string();
                problems.push(&path, &message);
                // An unknown key can be removed and parsing retried, to find the next problem.
                if !(message.starts_with("unknown field") && remove_path(&mut table, e.path())) {
                    break;
                }
            }
        }
    }
    if let Some(v) = &parsed {
        v.validate(&mut problems);
    }
    match parsed {
        Some(v) if problems.is_empty() => Ok(v),
        _ => Err(fail(problems.0)),
    }
}

fn remove_path(table: &mut toml::Table, path: &serde_path_to_error::Path) -> bool {
    let segments: Vec<&serde_path_to_error::Segment> = path.iter().collect();
    let mut root = toml::Value::Table(std::mem::take(table));
    let removed = remove_at(&mut root, &segments);
    if let toml::Value::Table(t) = root {
        *table = t;
    }
    removed
}

/// Removes the key at `segments` (map keys, array indices, enum variants as keys).
fn remove_at(value: &mut toml::Value, segments: &[&serde_path_to_error::Segment]) -> bool {
    use serde_path_to_error::Segment;
    let key_of = |seg: &Segment| match seg {
        Segment::Map { key } => Some(key.clone()),
        Segment::Enum { variant } => Some(variant.clone()),
        _ => None,
    };
    match segments {
        [] => false,
        [last] => match (value, key_of(last)) {
            (toml::Value::Table(t), Some(k)) => t.remove(&k).is_some(),
            _ => false,
        },
        [first, rest @ ..] => {
            let child = match (value, first) {
                (toml::Value::Array(a), Segment::Seq { index }) => a.get_mut(*index),
                (toml::Value::Table(t), seg) => key_of(seg).and_then(|k| t.get_mut(&k)),
                _ => None,
            };
            child.is_some_and(|c| remove_at(c, rest))
        }
    }
}

/// Serde helpers for durations written the way people write them (`"2m"`, `"90s"`,
/// `"1h 30m"`), parsed with `humantime`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    /// Deserialises a humantime duration string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            let shown: String = s.chars().take(40).collect();
            serde::de::Error::custom(format!(
                "{shown:?} is not a duration like \"90s\", \"2m\" or \"1h 30m\": {e}"
            ))
        })
    }
}

/// Checks that a file exists and is readable; records a problem naming the key otherwise.
pub fn check_readable(path: &Path, key: &str, problems: &mut Problems) {
    if let Err(e) = std::fs::File::open(path) {
        problems.push(key, format!("cannot read {}: {e}", path.display()));
    }
}

/// An error as a binary reports it on exit: its message, then each cause whose text the
/// message does not already contain (`thiserror`'s `#[error("...: {0}")]` wrappers repeat
/// their source), joined with `: `. No backtrace, whatever `RUST_BACKTRACE` says, so a
/// config error prints its problem list once.
pub fn error_report(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Conf {
        name: String,
        #[serde(default)]
        inner: Inner,
        #[serde(default)]
        items: Vec<Item>,
    }
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[serde(default)]
        port: u16,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Item {
        size: u32,
    }
    impl Validate for Conf {
        fn validate(&self, p: &mut Problems) {
            if self.name.is_empty() {
                p.push("name", "must not be empty");
            }
            if self.inner.port == 0 {
                p.push("inner.port", "must be set");
            }
            for (i, it) in self.items.iter().enumerate() {
                if it.size == 0 {
                    p.push(format!("items[{i}].size"), "must be positive");
                }
            }
        }
    }

    #[test]
    fn lists_every_problem() {
        let err =
            parse::<Conf>("name = \"\"\ntypo = 1\n[inner]\nprot = 3\n", "t.toml").unwrap_err();
        let all = err.problems.join("\n");
        assert!(all.contains("typo: unknown field `typo`"), "{all}");
        assert!(all.contains("inner.prot: unknown field `prot`"), "{all}");
        assert!(all.contains("name: must not be empty"), "{all}");
        assert!(all.contains("inner.port: must be set"), "{all}");
        assert_eq!(err.problems.len(), 4, "{all}");
    }

    #[test]
    fn reports_wrong_types_and_syntax() {
        let err = parse::<Conf>("name = 5\n", "t.toml").unwrap_err();
        assert!(err.problems[0].starts_with("name: invalid type"), "{err}");
        let err = parse::<Conf>("name = \n", "t.toml").unwrap_err();
        assert!(err.problems[0].starts_with("line 1:"), "{err}");
        let err =
            parse::<Conf>("name = \"x\"\n[[items]]\nsize = 0\n[inner]\nport=1\n", "t").unwrap_err();
        assert_eq!(
            err.problems,
            vec!["items[0].size: must be positive".to_string()]
        );
    }
}
