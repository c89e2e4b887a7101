//! The `[object_store]` config section shared by the collector and the aggregator, and the
//! S3 (or S3-compatible: MinIO, Ceph, moto) store it names.
//!
//! ```toml
//! [object_store]
//! url = "s3://gridmeter-landing/prod"   # bucket, then an optional key prefix
//! endpoint = "http://minio.internal:9000"   # optional; AWS when unset
//! region = "eu-central-1"
//! access_key_id = "AKIA..."             # optional: else AWS_* environment, instance role
//! secret_access_key_file = "/run/secrets/s3-secret-key"   # or secret_access_key = "..."
//! allow_http = true                     # needed for an http:// endpoint
//! ```
//!
//! Settings not given here come from the usual `AWS_*` environment variables
//! ([`object_store::aws::AmazonS3Builder::from_env`]): `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, or an instance/pod role. With the secret in
//! a file (a Kubernetes Secret, a systemd credential) or the environment, the config file
//! holds nothing secret and may be world-readable; the secret file must not be (validation
//! refuses one that every user can read). `Debug` never prints the secret.

use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::prefix::PrefixStore;
use object_store::ObjectStore;
use serde::Deserialize;

use crate::config::{Problems, Validate};

/// S3 (or S3-compatible) storage instead of a local `data_root`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectStoreConfig {
    /// `s3://bucket/prefix`
    pub url: String,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// The secret key inline (the config file is then a secret itself); prefer
    /// `secret_access_key_file` or `AWS_SECRET_ACCESS_KEY`.
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// A file holding the secret key (surrounding whitespace ignored), read when the store
    /// is opened.
    #[serde(default)]
    pub secret_access_key_file: Option<std::path::PathBuf>,
    /// Allow `http://` endpoints (MinIO on a private network).
    #[serde(default)]
    pub allow_http: bool,
}

impl std::fmt::Debug for ObjectStoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStoreConfig")
            .field("url", &self.url)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("secret_access_key_file", &self.secret_access_key_file)
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0:?} must look like s3://bucket/prefix")]
    Url(String),
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("exactly one of data_root and [object_store] must be set")]
    Root,
    #[error("object_store.secret_access_key_file {path}: {message}")]
    SecretFile {
        path: std::path::PathBuf,
        message: String,
    },
}

/// Where an `s3://bucket/prefix` URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// Key prefix without leading or trailing `/` (empty: the bucket's root).
    pub prefix: String,
}

impl S3Location {
    /// `s3://bucket/` or `s3://bucket/prefix/`: the URL every key under the location starts
    /// with (DataFusion and DuckDB address objects this way).
    pub fn base_url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}/", self.bucket)
        } else {
            format!("s3://{}/{}/", self.bucket, self.prefix)
        }
    }

    /// `s3://bucket`: the URL an object store for the whole bucket is registered under.
    pub fn bucket_url(&self) -> String {
        format!("s3://{}", self.bucket)
    }
}

impl ObjectStoreConfig {
    /// The bucket and prefix of [`ObjectStoreConfig::url`].
    pub fn location(&self) -> Result<S3Location, StoreError> {
        let bad = || StoreError::Url(self.url.clone());
        let rest = self.url.strip_prefix("s3://").ok_or_else(bad)?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty()
            || bucket
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#' | '@'))
        {
            return Err(bad());
        }
        Ok(S3Location {
            bucket: bucket.to_string(),
            prefix: prefix
                .split('/')
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>()
                .join("/"),
        })
    }

    /// Validation under `key` (the section's name in the config, e.g. `object_store`).
    pub fn check(&self, key: &str, p: &mut Problems) {
        if let Err(e) = self.location() {
            p.push(format!("{key}.url"), e);
        }
        if let Some(e) = &self.endpoint {
            if e.starts_with("http://") {
                if !self.allow_http {
                    p.push(
                        format!("{key}.endpoint"),
                        format!("{e:?} is plain http: set allow_http = true to use it"),
                    );
                }
            } else if !e.starts_with("https://") {
                p.push(
                    format!("{key}.endpoint"),
                    format!("{e:?} must start with http:// or https://"),
                );
            }
        }
        if self.region.as_deref().is_some_and(|r| r.trim().is_empty()) {
            p.push(format!("{key}.region"), "must not be empty when set");
        }
        if let Some(path) = &self.secret_access_key_file {
            if self.secret_access_key.is_some() {
                p.push(
                    format!("{key}.secret_access_key_file"),
                    "set either secret_access_key or secret_access_key_file, not both",
                );
            }
            if let Err(e) = self.secret_from_file(path) {
                p.push(format!("{key}.secret_access_key_file"), e);
            }
        }
    }

    /// The secret key in `path`: readable, not readable by every user, not empty.
    fn secret_from_file(&self, path: &std::path::Path) -> Result<String, String> {
        let meta =
            std::fs::metadata(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o004 != 0 {
                return Err(format!(
                    "{} is readable by every user (mode {mode:04o}): chmod o-r it (0600 or 0640)",
                    path.display()
                ));
            }
        }
        #[cfg(not(unix))]
        let _ = meta;
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let secret = text.trim();
        if secret.is_empty() {
            return Err(format!("{} is empty", path.display()));
        }
        Ok(secret.to_string())
    }

    /// The store for the whole bucket (object keys include the prefix).
    pub fn bucket_store(&self) -> Result<Arc<dyn ObjectStore>, StoreError> {
        let loc = self.location()?;
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&loc.bucket)
            .with_allow_http(self.allow_http);
        if let Some(e) = &self.endpoint {
            b = b.with_endpoint(e);
        }
        if let Some(r) = &self.region {
            b = b.with_region(r);
        }
        if let Some(k) = &self.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(s) = &self.secret_access_key {
            b = b.with_secret_access_key(s);
        }
        if let Some(path) = &self.secret_access_key_file {
            let secret = self
                .secret_from_file(path)
                .map_err(|message| StoreError::SecretFile {
                    path: path.clone(),
                    message,
                })?;
            b = b.with_secret_access_key(secret);
        }
        Ok(Arc::new(b.build()?))
    }

    /// The store rooted at the URL's prefix: object keys are relative to it, as they are to
    /// a local `data_root`.
    pub fn open(&self) -> Result<Arc<dyn ObjectStore>, StoreError> {
        let loc = self.location()?;
        Ok(with_prefix(self.bucket_store()?, &loc.prefix))
    }
}

/// Where a component's tables are: a local directory or an S3 location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataRoot {
    Local(std::path::PathBuf),
    ObjectStore(ObjectStoreConfig),
}

impl DataRoot {
    /// The one of a config's `data_root` and `[object_store]` that is set ([`check_root`]
    /// reports neither or both, with the other problems, when the config is loaded).
    pub fn choose(
        data_root: Option<&std::path::Path>,
        object_store: Option<&ObjectStoreConfig>,
    ) -> Result<DataRoot, StoreError> {
        match (data_root, object_store) {
            (Some(root), None) => Ok(DataRoot::Local(root.to_path_buf())),
            (None, Some(os)) => Ok(DataRoot::ObjectStore(os.clone())),
            _ => Err(StoreError::Root),
        }
    }
}

/// Validation of a component's choice between a local `data_root` and an `[object_store]`
/// section: exactly one, a non-empty root, and the section's own checks.
pub fn check_root(
    data_root: Option<&std::path::Path>,
    object_store: Option<&ObjectStoreConfig>,
    p: &mut Problems,
) {
    match (data_root, object_store) {
        (None, None) => p.push("data_root", "set data_root or [object_store]"),
        (Some(_), Some(_)) => p.push(
            "object_store",
            "set either data_root or [object_store], not both",
        ),
        (Some(root), None) if root.as_os_str().is_empty() => {
            p.push("data_root", "must not be empty")
        }
        _ => {}
    }
    if let Some(os) = object_store {
        os.check("object_store", p);
    }
}

/// `store` seen from under `prefix` (`store` itself for an empty prefix).
pub fn with_prefix(store: Arc<dyn ObjectStore>, prefix: &str) -> Arc<dyn ObjectStore> {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        store
    } else {
        Arc::new(PrefixStore::new(store, prefix))
    }
}

impl Validate for ObjectStoreConfig {
    fn validate(&self, p: &mut Problems) {
        self.check("object_store", p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> ObjectStoreConfig {
        ObjectStoreConfig {
            url: url.into(),
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            secret_access_key_file: None,
            allow_http: false,
        }
    }

    #[test]
    fn locations() {
        let l = cfg("s3://b/some//prefix/").location().unwrap();
        assert_eq!(l.bucket, "b");
        assert_eq!(l.prefix, "some/prefix");
        assert_eq!(l.base_url(), "s3://b/some/prefix/");
        assert_eq!(l.bucket_url(), "s3://b");
        let l = cfg("s3://b").location().unwrap();
        assert_eq!(l.prefix, "");
        assert_eq!(l.base_url(), "s3://b/");
        for bad in ["b/x", "s3://", "s3:///x", "gs://b/x", "s3://a b/x"] {
            assert!(cfg(bad).location().is_err(), "{bad}");
        }
    }

    #[test]
    fn lists_every_problem() {
        let text =
            "url = \"/tmp/x\"\nendpoint = \"http://127.0.0.1:9000\"\nregion = \"\"\ntypo = 1\n";
        let err = crate::config::parse::<ObjectStoreConfig>(text, "t").unwrap_err();
        let all = err.problems.join("\n");
        assert!(all.contains("typo"), "{all}");
        assert!(all.contains("object_store.url"), "{all}");
        assert!(all.contains("allow_http"), "{all}");
        assert!(all.contains("object_store.region"), "{all}");
    }

    #[test]
    fn opens_without_network() {
        let mut c = cfg("s3://bucket/p");
        c.endpoint = Some("http://127.0.0.1:1".into());
        c.allow_http = true;
        c.region = Some("us-east-1".into());
        c.access_key_id = Some("k".into());
        c.secret_access_key = Some("s".into());
        assert!(c.open().is_ok());
        assert!(cfg("nope").open().is_err());
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let mut c = cfg("s3://b/p");
        c.access_key_id = Some("AKIAEXAMPLE".into());
        c.secret_access_key = Some("wJalrXUtnFEMI-very-secret".into());
        let shown = format!("{c:?} {c:#?}");
        assert!(!shown.contains("very-secret"), "{shown}");
        assert!(
            shown.contains("<redacted>") && shown.contains("AKIAEXAMPLE"),
            "{shown}"
        );
        // Nor does the collector's or the aggregator's whole config, which embeds it.
        let wrapped = format!("{:?}", Some(c));
        assert!(!wrapped.contains("very-secret"));
    }

    #[test]
    fn secret_key_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let mut c = cfg("s3://bucket/p");
        c.endpoint = Some("http://127.0.0.1:1".into());
        c.allow_http = true;
        c.region = Some("us-east-1".into());
        c.access_key_id = Some("k".into());
        c.secret_access_key_file = Some(path.clone());
        let problems = |c: &ObjectStoreConfig| {
            let mut p = Problems::new();
            c.check("object_store", &mut p);
            p.iter().map(String::from).collect::<Vec<_>>().join("\n")
        };
        assert!(problems(&c).contains("cannot read"), "{}", problems(&c));
        assert!(c.open().is_err());
        std::fs::write(&path, "s3cr3t\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(
                problems(&c).contains("readable by every user"),
                "{}",
                problems(&c)
            );
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        assert_eq!(problems(&c), "");
        assert_eq!(c.secret_from_file(&path).unwrap(), "s3cr3t");
        assert!(c.open().is_ok());
        c.secret_access_key = Some("inline".into());
        assert!(problems(&c).contains("not both"), "{}", problems(&c));
    }
}
