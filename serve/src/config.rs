//! The `gridmeter serve` configuration (TOML, every problem reported at once).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use gridmeter_core::config::{check_readable, Problems, Validate};
use gridmeter_core::store::{check_root, DataRoot, ObjectStoreConfig};
use serde::Deserialize;

/// `serve.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Address to listen on (default `127.0.0.1:5433`).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Local data root (the collector's and aggregator's). Exactly one of `data_root` and
    /// `[object_store]`.
    #[serde(default)]
    pub data_root: Option<PathBuf>,
    /// S3 data root, the section the other components use.
    #[serde(default)]
    pub object_store: Option<ObjectStoreConfig>,
    /// The billing export's `out_dir` (its published runs are under `exports/`); default:
    /// the data root.
    #[serde(default)]
    pub exports_dir: Option<PathBuf>,
    /// The billing registry (`registry.toml`): served as the table `meters` (which device
    /// belongs to which site and customer). Optional.
    #[serde(default)]
    pub registry: Option<PathBuf>,
    /// A query running longer than this is cancelled (default `30s`).
    #[serde(default = "default_timeout")]
    pub query_timeout: String,
    /// Memory one query may use for its operators (hash tables, sorts), in MiB (default
    /// 512). A query that needs more fails with "resources exhausted"; nothing spills.
    #[serde(default = "default_memory")]
    pub query_memory_mib: u64,
    /// Most rows a result returns; a longer result is cut there with a warning (default
    /// 100000).
    #[serde(default = "default_rows")]
    pub row_limit: usize,
    /// Most connections at once (default 32); more are refused.
    #[serde(default = "default_connections")]
    pub max_connections: usize,
    /// TLS (required unless `insecure_plaintext = true`).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Accept connections without TLS (local tests and demos only; passwords then travel
    /// hashed by SCRAM but the data does not).
    #[serde(default)]
    pub insecure_plaintext: bool,
    /// Who may connect.
    #[serde(default)]
    pub users: Vec<UserConfig>,
}

/// `[tls]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// CA (PEM) whose client certificates are accepted; needed by users with
    /// `client_cert = true`.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// `[[users]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The user name clients log in with.
    pub name: String,
    /// A file holding the password (first line); checked with SCRAM-SHA-256.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// An environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Log in with a client certificate (signed by `tls.client_ca`) whose CN is `name`,
    /// no password.
    #[serde(default)]
    pub client_cert: bool,
}

fn default_listen() -> String {
    "127.0.0.1:5433".into()
}
fn default_timeout() -> String {
    "30s".into()
}
fn default_memory() -> u64 {
    512
}
fn default_rows() -> usize {
    100_000
}
fn default_connections() -> usize {
    32
}

/// How a user authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// SCRAM-SHA-256 with this password.
    Password(String),
    /// A client certificate with CN = the user name.
    ClientCert,
}

impl ServeConfig {
    /// The address to listen on.
    pub fn listen_addr(&self) -> Result<SocketAddr, String> {
        self.listen
            .parse()
            .map_err(|e| format!("listen {:?}: {e}", self.listen))
    }

    /// The per-query timeout.
    pub fn timeout(&self) -> Result<Duration, String> {
        humantime::parse_duration(&self.query_timeout)
            .map_err(|e| format!("query_timeout {:?}: {e}", self.query_timeout))
    }

    /// The data root.
    pub fn root(&self) -> Result<DataRoot, gridmeter_core::store::StoreError> {
        DataRoot::choose(self.data_root.as_deref(), self.object_store.as_ref())
    }

    /// Each user's credential (passwords read from their file or variable).
    pub fn credentials(&self) -> Result<Vec<(String, Credential)>, String> {
        self.users
            .iter()
            .map(|u| {
                let cred = if u.client_cert {
                    Credential::ClientCert
                } else if let Some(f) = &u.password_file {
                    let text = std::fs::read_to_string(f).map_err(|e| {
                        format!("users {}: password_file {}: {e}", u.name, f.display())
                    })?;
                    Credential::Password(text.lines().next().unwrap_or_default().to_string())
                } else if let Some(var) = &u.password_env {
                    Credential::Password(std::env::var(var).map_err(|_| {
                        format!("users {}: environment variable {var} is not set", u.name)
                    })?)
                } else {
                    return Err(format!("users {}: no credential", u.name));
                };
                Ok((u.name.clone(), cred))
            })
            .collect()
    }
}

impl Validate for ServeConfig {
    fn validate(&self, p: &mut Problems) {
        check_root(self.data_root.as_deref(), self.object_store.as_ref(), p);
        if let Err(e) = self.listen_addr() {
            p.push("listen", e);
        }
        match self.timeout() {
            Err(e) => p.push("query_timeout", e),
            Ok(d) if d.is_zero() => p.push("query_timeout", "must be more than 0"),
            Ok(_) => {}
        }
        if self.query_memory_mib == 0 {
            p.push("query_memory_mib", "must be at least 1");
        }
        if self.row_limit == 0 {
            p.push("row_limit", "must be at least 1");
        }
        if self.max_connections == 0 {
            p.push("max_connections", "must be at least 1");
        }
        if let Some(r) = &self.registry {
            check_readable(r, "registry", p);
        }
        match &self.tls {
            Some(tls) => {
                check_readable(&tls.cert, "tls.cert", p);
                check_readable(&tls.key, "tls.key", p);
                if let Some(ca) = &tls.client_ca {
                    check_readable(ca, "tls.client_ca", p);
                }
            }
            None if !self.insecure_plaintext => p.push(
                "tls",
                "set [tls] (cert, key), or insecure_plaintext = true for a local test",
            ),
            None => {}
        }
        if self.users.is_empty() {
            p.push("users", "list at least one [[users]] entry");
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, u) in self.users.iter().enumerate() {
            let at = format!("users[{i}]");
            if u.name.is_empty() || u.name.len() > 64 {
                p.push(&at, "name must be 1 to 64 characters");
            }
            if !seen.insert(u.name.as_str()) {
                p.push(&at, format!("user {:?} is listed twice", u.name));
            }
            let n = [
                u.password_file.is_some(),
                u.password_env.is_some(),
                u.client_cert,
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if n != 1 {
                p.push(
                    &at,
                    "set exactly one of password_file, password_env, client_cert = true",
                );
            }
            if let Some(f) = &u.password_file {
                check_readable(f, &format!("{at}.password_file"), p);
            }
            if u.client_cert && self.tls.as_ref().is_none_or(|t| t.client_ca.is_none()) {
                p.push(&at, "client_cert = true needs tls.client_ca");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_listed_at_once() {
        let err = gridmeter_core::config::parse::<ServeConfig>(
            r#"
listen = "nowhere"
query_timeout = "soon"
row_limit = 0
[[users]]
name = "a"
client_cert = true
password_env = "X"
"#,
            "serve.toml",
        )
        .unwrap_err();
        let text = err.to_string();
        for needle in [
            "data_root",
            "listen",
            "query_timeout",
            "row_limit",
            "tls",
            "exactly one of",
            "needs tls.client_ca",
        ] {
            assert!(text.contains(needle), "{needle} missing in {text}");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = gridmeter_core::config::parse::<ServeConfig>(
            "data_root = \"/tmp\"\ninsecure_plaintext = true\nwritable = true\n[[users]]\nname = \"a\"\npassword_env = \"P\"\n",
            "serve.toml",
        )
        .unwrap_err();
        assert!(err.to_string().contains("writable"), "{err}");
    }
}
