//! A small certificate authority for gridmeter deployments and tests: issue, renew, revoke
//! (with a CRL) and list.
//!
//! Layout of a PKI directory (all PEM):
//!
//! | file | what |
//! |---|---|
//! | `ca.crt`, `ca.key` | the CA; keep `ca.key` offline: no running host needs it |
//! | `crl.pem` | the certificate revocation list (Mosquitto `crlfile`, EMQX via `crl_url`) |
//! | `index.json` | every certificate issued: serial, role, CN, expiry, revocation |
//! | `server.crt`, `server.key` | the broker (CN `gridmeter-broker`, OU `broker`); SANs `localhost`, `127.0.0.1`, `::1` and any given names |
//! | `collectors/collector-<name>.crt`, `.key` | a collector (CN `collector-<name>`, OU `collector`) |
//! | `devices/<device_id>.crt`, `.key` | a device (CN = device_id, OU `device`) |
//! | `clients/<name>.crt`, `.key` | another client (OU `client`) |
//!
//! The role is in every certificate twice, as OU and by CN namespace
//! ([`crate::identity`]); names are validated before they become CNs or file names, so
//! `collector-1` cannot be issued as a device and `../x` cannot be a client.
//!
//! Private keys are written with mode 0600 set when the file is created (`O_CREAT|O_EXCL`,
//! `O_NOFOLLOW`: no window with umask permissions, no writing through a planted symlink) and
//! fsync'd with their directory. Renewal writes the new files beside the old ones and
//! renames them into place, so a reader sees the old pair or the new one.

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CrlDistributionPoint,
    CrlIssuingDistributionPoint, CrlScope, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams,
    SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

use crate::identity::{self, NameError, Role, BROKER_CN};
use crate::model::DeviceId;
use crate::tls;

/// Default validity of a leaf certificate, in days.
pub const DEFAULT_DAYS: u32 = 825;
/// Default validity of the CRL, in days: re-sign it (`gridmeter pki crl`) before then, or
/// a broker that checks it refuses every client.
pub const DEFAULT_CRL_DAYS: u32 = 365;

/// What went wrong in the PKI.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Cert { what: String, source: rcgen::Error },
    #[error("{0} already exists; refusing to overwrite it (renew with `gridmeter pki renew`, or remove it first)")]
    Exists(PathBuf),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("{0} was never issued here (no certificate file and no index entry)")]
    NotIssued(String),
    #[error("{path}: {message}")]
    Index { path: PathBuf, message: String },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("{0}")]
    Invalid(String),
}

fn cert_err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> PkiError {
    let what = what.into();
    move |source| PkiError::Cert { what, source }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

// --- files ---------------------------------------------------------------------------------

/// Mode of private keys.
const KEY_MODE: u32 = 0o600;
/// Mode of certificates, CRLs and the index.
const PUBLIC_MODE: u32 = 0o644;

/// Creates `dir` and its parents, never group- or world-writable (mode 0755 whatever the
/// umask allows), so nobody else can swap files in it.
fn create_dirs(dir: &Path) -> Result<(), PkiError> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o755);
    }
    b.create(dir).map_err(io_err(dir))
}

/// Creates `path` (which must not exist, not even as a symlink) with `mode` from the start,
/// writes `contents` and fsyncs it.
fn create_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(mode).custom_flags(libc::O_NOFOLLOW);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = o.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            PkiError::Exists(path.to_path_buf())
        } else {
            PkiError::Io {
                path: path.to_path_buf(),
                source: e,
            }
        }
    })?;
    f.write_all(contents).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

fn sync_dir(dir: &Path) -> Result<(), PkiError> {
    #[cfg(unix)]
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A new file at `path`, created as [`create_new`] does; its directory is created and
/// fsync'd.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let dir = parent(path);
    create_dirs(dir)?;
    create_new(path, contents, mode)?;
    sync_dir(dir)
}

fn temp_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    parent(path).join(format!(".{name}.{}.{nanos}.tmp", std::process::id()))
}

/// Writes the files of `files` ((path, contents, mode)) to temporary files, then renames
/// each over its path (replacing an existing file, or a symlink, never writing through
/// it), then fsyncs the directories.
fn replace_all(files: &[(&Path, &[u8], u32)]) -> Result<(), PkiError> {
    let mut temps = Vec::new();
    for (path, contents, mode) in files {
        create_dirs(parent(path))?;
        let tmp = temp_beside(path);
        if let Err(e) = create_new(&tmp, contents, *mode) {
            for t in &temps {
                let _ = std::fs::remove_file(t);
            }
            return Err(e);
        }
        temps.push(tmp);
    }
    for ((path, _, _), tmp) in files.iter().zip(&temps) {
        std::fs::rename(tmp, path).map_err(io_err(path))?;
    }
    for (path, _, _) in files {
        sync_dir(parent(path))?;
    }
    Ok(())
}

// --- identities ----------------------------------------------------------------------------

/// Whom a certificate is for: role, CN and where its files go in a PKI directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    role: Role,
    common_name: String,
    names: Vec<String>,
}

impl Identity {
    /// A device: CN = `id`, refused if `id` is in the collectors' namespace.
    pub fn device(id: &DeviceId) -> Result<Identity, PkiError> {
        identity::check_device_id(id)?;
        Ok(Identity {
            role: Role::Device,
            common_name: id.as_str().to_string(),
            names: Vec::new(),
        })
    }

    /// A collector: CN = `collector-<name>` (`name` with or without the prefix).
    pub fn collector(name: &str) -> Result<Identity, PkiError> {
        Ok(Identity {
            role: Role::Collector,
            common_name: identity::collector_common_name(name)?,
            names: Vec::new(),
        })
    }

    /// Another client: CN = `name`, validated as a file name outside reserved names.
    pub fn client(name: &str) -> Result<Identity, PkiError> {
        identity::check_client_name(name)?;
        Ok(Identity {
            role: Role::Client,
            common_name: name.to_string(),
            names: Vec::new(),
        })
    }

    /// The broker: CN `gridmeter-broker`, SANs `localhost`, `127.0.0.1`, `::1` and
    /// `extra_names`.
    pub fn server(extra_names: &[String]) -> Identity {
        let mut names = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        for n in extra_names {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        Identity {
            role: Role::Broker,
            common_name: BROKER_CN.to_string(),
            names,
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn common_name(&self) -> &str {
        &self.common_name
    }

    /// Certificate and key paths in PKI directory `dir`.
    pub fn paths(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let (sub, stem) = match self.role {
            Role::Broker => (dir.to_path_buf(), "server"),
            Role::Collector => (dir.join("collectors"), self.common_name.as_str()),
            Role::Device => (dir.join("devices"), self.common_name.as_str()),
            Role::Client => (dir.join("clients"), self.common_name.as_str()),
        };
        (
            sub.join(format!("{stem}.crt")),
            sub.join(format!("{stem}.key")),
        )
    }

    fn params(
        &self,
        not_before: DateTime<Utc>,
        not_after: DateTime<Utc>,
        crl_url: Option<&str>,
    ) -> Result<CertificateParams, PkiError> {
        if not_after <= not_before {
            return Err(PkiError::Invalid(
                "a certificate's validity must end after it starts".into(),
            ));
        }
        let mut params = CertificateParams::new(self.names.clone())
            .map_err(cert_err(format!("names for {}", self.common_name)))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, self.common_name.as_str());
        dn.push(DnType::OrganizationalUnitName, self.role.ou());
        dn.push(DnType::OrganizationName, "gridmeter");
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![if self.role == Role::Broker {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        params.use_authority_key_identifier_extension = true;
        if let Some(url) = crl_url {
            params.crl_distribution_points = vec![CrlDistributionPoint {
                uris: vec![url.to_string()],
            }];
        }
        params.not_before = to_time(not_before)?;
        params.not_after = to_time(not_after)?;
        Ok(params)
    }
}

fn to_time(t: DateTime<Utc>) -> Result<time::OffsetDateTime, PkiError> {
    time::OffsetDateTime::from_unix_timestamp(t.timestamp())
        .map_err(|e| PkiError::Invalid(format!("time {t}: {e}")))
}

/// A certificate and its private key, PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl Issued {
    /// Writes `<dir>/<name>.crt` and `<dir>/<name>.key` as new files (the key with mode
    /// 0600 from creation); refuses to overwrite either.
    pub fn write(&self, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), PkiError> {
        let crt = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        self.write_to(&crt, &key)?;
        Ok((crt, key))
    }

    /// Writes the certificate and key to new files `crt` and `key`.
    pub fn write_to(&self, crt: &Path, key: &Path) -> Result<(), PkiError> {
        for p in [crt, key] {
            if p.symlink_metadata().is_ok() {
                return Err(PkiError::Exists(p.to_path_buf()));
            }
        }
        write_new(key, self.key_pem.as_bytes(), KEY_MODE)?;
        write_new(crt, self.cert_pem.as_bytes(), PUBLIC_MODE)
    }

    /// Replaces the certificate and key at `crt` and `key` (renewal): both are written
    /// beside the old ones first, then renamed into place.
    pub fn replace(&self, crt: &Path, key: &Path) -> Result<(), PkiError> {
        replace_all(&[
            (key, self.key_pem.as_bytes(), KEY_MODE),
            (crt, self.cert_pem.as_bytes(), PUBLIC_MODE),
        ])
    }

    /// What the certificate says about itself.
    pub fn info(&self) -> Result<tls::CertInfo, PkiError> {
        let der = rustls::pki_types::CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map_err(|e| PkiError::Invalid(format!("issued certificate: {e}")))?;
        tls::parse_certificate(der.as_ref())
            .map(|(i, _)| i)
            .map_err(PkiError::Invalid)
    }
}

// --- the CA --------------------------------------------------------------------------------

/// A loaded certificate authority that can issue certificates.
pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// Creates a new CA (ECDSA P-256, valid 10 years).
    pub fn create(common_name: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::generate().map_err(cert_err("CA key"))?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err("CA"))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "gridmeter");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(3650);
        let cert = params.self_signed(&key).map_err(cert_err("CA"))?;
        Ok(Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads `ca.crt` and `ca.key` from a PKI directory.
    pub fn load(dir: &Path) -> Result<Ca, PkiError> {
        let crt = dir.join("ca.crt");
        let key = dir.join("ca.key");
        let cert_pem = std::fs::read_to_string(&crt).map_err(io_err(&crt))?;
        let key_pem = std::fs::read_to_string(&key).map_err(io_err(&key))?;
        let key = KeyPair::from_pem(&key_pem).map_err(cert_err(key.display().to_string()))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
            .map_err(cert_err(crt.display().to_string()))?;
        Ok(Ca { cert_pem, issuer })
    }

    /// Writes `ca.crt` and `ca.key` (mode 0600); refuses to overwrite an existing CA.
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        let crt = dir.join("ca.crt");
        if crt.symlink_metadata().is_ok() {
            return Err(PkiError::Exists(crt));
        }
        write_new(
            &dir.join("ca.key"),
            self.issuer.key().serialize_pem().as_bytes(),
            KEY_MODE,
        )?;
        write_new(&crt, self.cert_pem.as_bytes(), PUBLIC_MODE)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a certificate for `who`, valid from an hour ago (clock skew) for `days`, with
    /// a CRL distribution point if `crl_url` is given.
    pub fn issue(
        &self,
        who: &Identity,
        days: u32,
        crl_url: Option<&str>,
    ) -> Result<Issued, PkiError> {
        if days == 0 {
            return Err(PkiError::Invalid("validity must be at least 1 day".into()));
        }
        let now = Utc::now();
        self.issue_window(
            who,
            now - chrono::Duration::hours(1),
            now + chrono::Duration::days(i64::from(days)),
            crl_url,
        )
    }

    /// Issues a certificate for `who` valid from `not_before` to `not_after` (a window in
    /// the past makes an expired certificate, as tests of expiry handling need).
    pub fn issue_window(
        &self,
        who: &Identity,
        not_before: DateTime<Utc>,
        not_after: DateTime<Utc>,
        crl_url: Option<&str>,
    ) -> Result<Issued, PkiError> {
        let what = format!("{} certificate {}", who.role, who.common_name);
        let params = who.params(not_before, not_after, crl_url)?;
        let key = KeyPair::generate().map_err(cert_err(format!("{what} key")))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(cert_err(what))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A broker certificate for `localhost`, `127.0.0.1`, `::1` and `extra_names`.
    pub fn issue_server(&self, extra_names: &[String]) -> Result<Issued, PkiError> {
        self.issue(&Identity::server(extra_names), DEFAULT_DAYS, None)
    }

    /// A client certificate with common name `name` (role client; see [`Identity::client`]).
    pub fn issue_client(&self, name: &str) -> Result<Issued, PkiError> {
        self.issue(&Identity::client(name)?, DEFAULT_DAYS, None)
    }

    /// A collector certificate: CN `collector-<name>`.
    pub fn issue_collector(&self, name: &str) -> Result<Issued, PkiError> {
        self.issue(&Identity::collector(name)?, DEFAULT_DAYS, None)
    }

    /// A device certificate: CN = device_id.
    pub fn issue_device(&self, device: &DeviceId) -> Result<Issued, PkiError> {
        self.issue(&Identity::device(device)?, DEFAULT_DAYS, None)
    }

    /// A CRL listing `revoked`, valid for `days`, numbered `number`.
    fn crl(
        &self,
        revoked: &[&IndexEntry],
        number: u64,
        days: u32,
        url: Option<&str>,
    ) -> Result<String, PkiError> {
        let now = time::OffsetDateTime::now_utc();
        let mut revoked_certs = Vec::new();
        for e in revoked {
            let serial = hex_bytes(&e.serial).ok_or_else(|| {
                PkiError::Invalid(format!("index: serial {:?} is not hex", e.serial))
            })?;
            let at = e.revoked_at.unwrap_or_else(Utc::now);
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial),
                revocation_time: time::OffsetDateTime::from_unix_timestamp(at.timestamp())
                    .unwrap_or(now),
                reason_code: e.reason.map(RevocationReason::from),
                invalidity_date: None,
            });
        }
        let params = CertificateRevocationListParams {
            this_update: now - time::Duration::hours(1),
            next_update: now + time::Duration::days(i64::from(days.max(1))),
            crl_number: SerialNumber::from(number.to_be_bytes().to_vec()),
            issuing_distribution_point: url.map(|u| CrlIssuingDistributionPoint {
                distribution_point: CrlDistributionPoint {
                    uris: vec![u.to_string()],
                },
                scope: Some(CrlScope::UserCertsOnly),
            }),
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer).map_err(cert_err("CRL"))?;
        crl.pem().map_err(cert_err("CRL"))
    }
}

fn hex_bytes(s: &str) -> Option<Vec<u8>> {
    let s = if s.len() % 2 == 1 {
        format!("0{s}")
    } else {
        s.to_string()
    };
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

// --- the index -----------------------------------------------------------------------------

/// Why a certificate was revoked (RFC 5280 reason codes the CLI offers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    Unspecified,
    KeyCompromise,
    Superseded,
    CessationOfOperation,
}

impl From<Reason> for RevocationReason {
    fn from(r: Reason) -> Self {
        match r {
            Reason::Unspecified => RevocationReason::Unspecified,
            Reason::KeyCompromise => RevocationReason::KeyCompromise,
            Reason::Superseded => RevocationReason::Superseded,
            Reason::CessationOfOperation => RevocationReason::CessationOfOperation,
        }
    }
}

/// One issued certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexEntry {
    /// Lowercase hex, as [`tls::CertInfo::serial`].
    pub serial: String,
    pub role: Role,
    pub common_name: String,
    pub not_after: DateTime<Utc>,
    #[serde(default)]
    pub revoked_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub reason: Option<Reason>,
}

/// `index.json`: the certificates issued from this directory and the CRL settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    /// Where brokers that fetch CRLs (EMQX) get `crl.pem`; written into every certificate
    /// issued after it is set, and into the CRL as its issuing distribution point.
    #[serde(default)]
    pub crl_url: Option<String>,
    /// The number of the last CRL written.
    #[serde(default)]
    pub crl_number: u64,
    #[serde(default)]
    pub certificates: Vec<IndexEntry>,
}

/// A PKI directory with its CA loaded.
pub struct PkiDir {
    dir: PathBuf,
    ca: Ca,
    index: Index,
}

/// What `init` creates.
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    /// Extra SANs of the broker certificate.
    pub server_names: Vec<String>,
    /// Devices to issue (existing ones are kept).
    pub devices: Vec<DeviceId>,
    /// Collectors to issue (names as [`Identity::collector`] takes them); `0` when empty.
    pub collectors: Vec<String>,
    /// See [`Index::crl_url`].
    pub crl_url: Option<String>,
}

impl PkiDir {
    /// Creates (or completes) a PKI directory: CA, empty CRL, broker, collectors and
    /// devices. Existing CA, certificates and keys are kept, so it can be run again.
    pub fn init(dir: &Path, opts: &InitOptions) -> Result<PkiDir, PkiError> {
        create_dirs(dir)?;
        if !dir.join("ca.crt").exists() {
            Ca::create("gridmeter CA")?.save(dir)?;
        }
        let mut pki = PkiDir::open(dir)?;
        if opts.crl_url.is_some() && pki.index.crl_url != opts.crl_url {
            pki.index.crl_url = opts.crl_url.clone();
            pki.save_index()?;
        }
        let mut wanted = vec![Identity::server(&opts.server_names)];
        let collectors = if opts.collectors.is_empty() {
            vec!["0".to_string()]
        } else {
            opts.collectors.clone()
        };
        for c in &collectors {
            wanted.push(Identity::collector(c)?);
        }
        for d in &opts.devices {
            wanted.push(Identity::device(d)?);
        }
        for who in &wanted {
            if !who.paths(dir).0.exists() {
                pki.issue(who, DEFAULT_DAYS)?;
            }
        }
        if !dir.join("crl.pem").exists() {
            pki.write_crl(DEFAULT_CRL_DAYS)?;
        }
        Ok(pki)
    }

    /// Opens an existing PKI directory (its CA and index).
    pub fn open(dir: &Path) -> Result<PkiDir, PkiError> {
        let ca = Ca::load(dir)?;
        let path = dir.join("index.json");
        let index = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| PkiError::Index {
                path: path.clone(),
                message: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Index::default(),
            Err(e) => return Err(PkiError::Io { path, source: e }),
        };
        Ok(PkiDir {
            dir: dir.to_path_buf(),
            ca,
            index,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    fn save_index(&self) -> Result<(), PkiError> {
        let path = self.dir.join("index.json");
        let mut json = serde_json::to_vec_pretty(&self.index).map_err(|e| PkiError::Index {
            path: path.clone(),
            message: e.to_string(),
        })?;
        json.push(b'\n');
        replace_all(&[(&path, &json, PUBLIC_MODE)])
    }

    fn record(&mut self, who: &Identity, issued: &Issued) -> Result<tls::CertInfo, PkiError> {
        let info = issued.info()?;
        self.index.certificates.push(IndexEntry {
            serial: info.serial.clone(),
            role: who.role,
            common_name: who.common_name.clone(),
            not_after: info.not_after,
            revoked_at: None,
            reason: None,
        });
        self.save_index()?;
        Ok(info)
    }

    /// Issues a certificate for `who` (valid `days`) into new files; refuses to overwrite
    /// existing ones (that is [`PkiDir::renew`]).
    pub fn issue(
        &mut self,
        who: &Identity,
        days: u32,
    ) -> Result<(PathBuf, tls::CertInfo), PkiError> {
        let (crt, key) = who.paths(&self.dir);
        let issued = self.ca.issue(who, days, self.index.crl_url.as_deref())?;
        issued.write_to(&crt, &key)?;
        let info = self.record(who, &issued)?;
        Ok((crt, info))
    }

    /// Issues a new key and certificate for `who` (same CN and role) and replaces its
    /// files. The old certificate stays valid until it expires or is revoked.
    pub fn renew(
        &mut self,
        who: &Identity,
        days: u32,
    ) -> Result<(PathBuf, tls::CertInfo), PkiError> {
        let (crt, key) = who.paths(&self.dir);
        if !crt.exists() {
            return Err(PkiError::NotIssued(format!(
                "{} {} ({})",
                who.role,
                who.common_name,
                crt.display()
            )));
        }
        let issued = self.ca.issue(who, days, self.index.crl_url.as_deref())?;
        issued.replace(&crt, &key)?;
        let info = self.record(who, &issued)?;
        Ok((crt, info))
    }

    /// Revokes every certificate ever issued to `who` (the current file's too, also if it
    /// predates the index) and rewrites the CRL. Returns the serials newly revoked.
    pub fn revoke(
        &mut self,
        who: &Identity,
        reason: Reason,
        crl_days: u32,
    ) -> Result<Vec<String>, PkiError> {
        self.revoke_except(who, None, reason, crl_days)
    }

    /// Revokes every certificate of `who` except the one in its file now (after
    /// [`PkiDir::renew`]: the key of the old one may be compromised) and rewrites the CRL.
    pub fn revoke_superseded(
        &mut self,
        who: &Identity,
        reason: Reason,
        crl_days: u32,
    ) -> Result<Vec<String>, PkiError> {
        let (crt, _) = who.paths(&self.dir);
        let current = tls::certificate_info(&crt, "certificate")?.serial;
        self.revoke_except(who, Some(&current), reason, crl_days)
    }

    fn revoke_except(
        &mut self,
        who: &Identity,
        keep: Option<&str>,
        reason: Reason,
        crl_days: u32,
    ) -> Result<Vec<String>, PkiError> {
        let (crt, _) = who.paths(&self.dir);
        if crt.exists() {
            let info = tls::certificate_info(&crt, "certificate")?;
            let known = self
                .index
                .certificates
                .iter()
                .any(|e| e.serial == info.serial);
            if !known {
                self.index.certificates.push(IndexEntry {
                    serial: info.serial,
                    role: who.role,
                    common_name: who.common_name.clone(),
                    not_after: info.not_after,
                    revoked_at: None,
                    reason: None,
                });
            }
        }
        let now = Utc::now();
        let mut serials = Vec::new();
        let mut any = false;
        for e in &mut self.index.certificates {
            if e.role == who.role && e.common_name == who.common_name {
                any = true;
                if e.revoked_at.is_none() && Some(e.serial.as_str()) != keep {
                    e.revoked_at = Some(now);
                    e.reason = Some(reason);
                    serials.push(e.serial.clone());
                }
            }
        }
        if !any {
            return Err(PkiError::NotIssued(format!(
                "{} {}",
                who.role, who.common_name
            )));
        }
        self.save_index()?;
        self.write_crl(crl_days)?;
        Ok(serials)
    }

    /// Signs and writes `crl.pem` with every revoked certificate, valid `days`.
    pub fn write_crl(&mut self, days: u32) -> Result<PathBuf, PkiError> {
        self.index.crl_number += 1;
        let revoked: Vec<&IndexEntry> = self
            .index
            .certificates
            .iter()
            .filter(|e| e.revoked_at.is_some())
            .collect();
        let pem = self.ca.crl(
            &revoked,
            self.index.crl_number,
            days,
            self.index.crl_url.as_deref(),
        )?;
        self.save_index()?;
        let path = self.dir.join("crl.pem");
        replace_all(&[(&path, pem.as_bytes(), PUBLIC_MODE)])?;
        Ok(path)
    }
}

/// The subjectAltNames of the certificate at `path` beyond the three [`Identity::server`]
/// always has (to renew a broker certificate with the names it had).
pub fn server_names(path: &Path) -> Result<Vec<String>, PkiError> {
    let certs = tls::load_certs(path, "server certificate")?;
    let (_, cert) = x509_parser::parse_x509_certificate(certs[0].as_ref())
        .map_err(|e| PkiError::Invalid(format!("{}: {e}", path.display())))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            let s = match n {
                x509_parser::extensions::GeneralName::DNSName(d) => d.to_string(),
                x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                    4 => std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).to_string(),
                    16 => {
                        let mut b = [0u8; 16];
                        b.copy_from_slice(ip);
                        std::net::Ipv6Addr::from(b).to_string()
                    }
                    _ => continue,
                },
                _ => continue,
            };
            if !["localhost", "127.0.0.1", "::1"].contains(&s.as_str()) {
                names.push(s);
            }
        }
    }
    Ok(names)
}

/// Creates a complete PKI directory: CA, CRL, broker, collector `collector-0` and the given
/// devices. Existing files are kept, so devices can be added later.
pub fn init_dir(dir: &Path, server_names: &[String], devices: &[DeviceId]) -> Result<Ca, PkiError> {
    let pki = PkiDir::init(
        dir,
        &InitOptions {
            server_names: server_names.to_vec(),
            devices: devices.to_vec(),
            ..Default::default()
        },
    )?;
    Ok(pki.ca)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_a_working_chain() {
        let dir = tempfile::tempdir().unwrap();
        let dev = DeviceId::new("inv-042").unwrap();
        init_dir(
            dir.path(),
            &["broker.example".into()],
            std::slice::from_ref(&dev),
        )
        .unwrap();
        // Reload and issue another device from the saved CA.
        let mut pki = PkiDir::open(dir.path()).unwrap();
        pki.issue(
            &Identity::device(&DeviceId::new("m-2").unwrap()).unwrap(),
            10,
        )
        .unwrap();
        let files = crate::tls::TlsFiles {
            ca: dir.path().join("ca.crt"),
            cert: dir.path().join("devices/inv-042.crt"),
            key: dir.path().join("devices/inv-042.key"),
        };
        files.client_config().unwrap();
        let info = crate::tls::certificate_info(&files.cert, "client certificate").unwrap();
        assert_eq!(info.common_name.as_deref(), Some("inv-042"));
        assert_eq!(info.role(), Some(Role::Device));
        assert_eq!(info.version, 3);
        assert!(info.not_before < Utc::now() && info.not_after > Utc::now());
        let c = crate::tls::certificate_info(
            &dir.path().join("collectors/collector-0.crt"),
            "collector",
        )
        .unwrap();
        assert_eq!(c.common_name.as_deref(), Some("collector-0"));
        assert_eq!(c.role(), Some(Role::Collector));
        assert!(matches!(
            pki.ca().save(dir.path()),
            Err(PkiError::Exists(_))
        ));
        // Every certificate is in the index; an empty CRL exists.
        assert_eq!(pki.index().certificates.len(), 4);
        assert!(dir.path().join("crl.pem").exists());
    }

    #[test]
    fn renew_keeps_the_name_and_revoke_covers_every_serial() {
        let dir = tempfile::tempdir().unwrap();
        let dev = DeviceId::new("d-1").unwrap();
        let mut pki = PkiDir::init(
            dir.path(),
            &InitOptions {
                devices: vec![dev.clone()],
                ..Default::default()
            },
        )
        .unwrap();
        let who = Identity::device(&dev).unwrap();
        let (crt, _) = who.paths(dir.path());
        let old = crate::tls::certificate_info(&crt, "c").unwrap();
        let (_, new) = pki.renew(&who, 30).unwrap();
        assert_eq!(new.common_name, old.common_name);
        assert_ne!(new.serial, old.serial);
        assert!(new.not_after < old.not_after);
        assert_eq!(crate::tls::certificate_info(&crt, "c").unwrap(), new);
        let renewed = pki.renew(&who, 20).unwrap().1;
        // Superseded certificates only: the one in the file stays valid.
        let superseded = pki.revoke_superseded(&who, Reason::Superseded, 30).unwrap();
        assert_eq!(superseded, vec![old.serial.clone(), new.serial.clone()]);
        let revoked = pki.revoke(&who, Reason::KeyCompromise, 30).unwrap();
        assert_eq!(revoked, vec![renewed.serial.clone()]);
        // Revoking again changes nothing; an unknown name is an error.
        assert!(pki
            .revoke(&who, Reason::KeyCompromise, 30)
            .unwrap()
            .is_empty());
        let other = Identity::device(&DeviceId::new("nobody").unwrap()).unwrap();
        assert!(matches!(
            pki.revoke(&other, Reason::Unspecified, 30),
            Err(PkiError::NotIssued(_))
        ));
        // The index survives a reopen.
        let again = PkiDir::open(dir.path()).unwrap();
        assert_eq!(again.index(), pki.index());
    }

    #[test]
    fn refuses_to_overwrite_or_follow_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let mut pki = PkiDir::init(dir.path(), &InitOptions::default()).unwrap();
        let who = Identity::client("tool").unwrap();
        pki.issue(&who, 10).unwrap();
        assert!(matches!(pki.issue(&who, 10), Err(PkiError::Exists(_))));
    }

    #[test]
    fn hex_serials() {
        assert_eq!(hex_bytes("0a1b"), Some(vec![0x0a, 0x1b]));
        assert_eq!(hex_bytes("a1b"), Some(vec![0x0a, 0x1b]));
        assert_eq!(hex_bytes("zz"), None);
    }
}
