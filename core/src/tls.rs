//! Mutual TLS for MQTT clients: a rustls client configuration from PEM files, reloaded at
//! every connection attempt, with certificate errors an operator can act on.
//!
//! - [`TlsFiles::load`] reads the CA, the client certificate and its key, and refuses what
//!   can never work: an X.509 v1 certificate, a key that does not belong to the
//!   certificate. An expired or not yet valid certificate is loaded (an agent must keep
//!   buffering until it is renewed) and reported ([`CertInfo::validity_problem`]). Every
//!   message names the file, what is wrong and how to get a good one.
//! - The broker's certificate is checked by webpki; its refusals (X.509 v1, wrong CA,
//!   expired) are rewritten into the same kind of message.
//! - [`ClientTls`] keeps the loaded configuration and rebuilds it from the files before
//!   every connection attempt, so a renewed certificate is presented at the next reconnect
//!   without a restart; it keeps the expiry gauge
//!   (`gridmeter_tls_certificate_expiry_timestamp_seconds{component}`) current.
//! - [`ClientTls::explain`] turns a failed connection into such a message, including the
//!   broker's refusal of this client's certificate (revoked, expired, unknown CA).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{AlertDescription, CertificateError, DigitallySignedStruct, OtherError};
use serde::Deserialize;

use crate::config::Problems;
use crate::identity::{self, Role};

/// Paths of the PEM files for mutual TLS.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The CA that signed the broker's certificate.
    pub ca: PathBuf,
    /// This client's certificate (chain), PEM.
    pub cert: PathBuf,
    /// This client's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {path}: cannot read: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path}: {message}")]
    Content {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn content(what: &'static str, path: &Path, message: String) -> TlsError {
    TlsError::Content {
        what,
        path: path.to_path_buf(),
        message,
    }
}

/// Reads all certificates of a PEM file; at least one is required.
pub fn load_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| content(what, path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(content(
            what,
            path,
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok(certs)
}

/// Reads the private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path, "private key")?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        content(
            "private key",
            path,
            format!("no usable PEM private key: {e}"),
        )
    })
}

/// The ring-backed crypto provider every gridmeter TLS endpoint uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What a certificate says about itself: the identity a broker derives from it and its
/// validity window. Read with [`certificate_info`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject's common name (CN), if it has one. A broker configured with
    /// `use_identity_as_username` uses it as the MQTT username, which the ACLs check.
    pub common_name: Option<String>,
    /// The subject's organizational unit (OU), if any: the role ([`Role::ou`]) in
    /// certificates the gridmeter PKI issues.
    pub organizational_unit: Option<String>,
    /// X.509 version as written in the certificate: 1 or 3 (2 is unused in practice).
    pub version: u32,
    /// Start of the validity window.
    pub not_before: DateTime<Utc>,
    /// End of the validity window.
    pub not_after: DateTime<Utc>,
    /// Serial number, lowercase hex without separators (as CRLs and `openssl x509 -serial`
    /// show it, minus the colons).
    pub serial: String,
    /// The subject, as text (`CN=dev-1, OU=device, O=gridmeter`).
    pub subject: String,
    /// The issuer, as text.
    pub issuer: String,
}

impl CertInfo {
    /// The role its OU names, if any.
    pub fn role(&self) -> Option<Role> {
        self.organizational_unit.as_deref().and_then(Role::from_ou)
    }

    /// `CN "x", serial s, expires t`: how log lines and errors name a certificate.
    pub fn describe(&self) -> String {
        format!(
            "CN {:?}, serial {}, expires {}",
            self.common_name.as_deref().unwrap_or(""),
            self.serial,
            self.not_after.format("%Y-%m-%dT%H:%M:%SZ")
        )
    }
}

/// Parses one DER certificate.
pub fn parse_certificate(der: &[u8]) -> Result<(CertInfo, Vec<u8>), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("not a valid X.509 certificate: {e}"))?;
    let subject = cert.subject();
    let text = |attr: Option<&x509_parser::x509::AttributeTypeAndValue<'_>>| {
        attr.and_then(|a| a.as_str().ok()).map(str::to_string)
    };
    let time = |t: x509_parser::time::ASN1Time| {
        DateTime::from_timestamp(t.timestamp(), 0)
            .ok_or_else(|| format!("validity time {t} is out of range"))
    };
    let serial: String = cert
        .raw_serial()
        .iter()
        .skip_while(|b| **b == 0)
        .map(|b| format!("{b:02x}"))
        .collect();
    let info = CertInfo {
        common_name: text(subject.iter_common_name().next()),
        organizational_unit: text(subject.iter_organizational_unit().next()),
        version: cert.version().0 + 1,
        not_before: time(cert.validity().not_before)?,
        not_after: time(cert.validity().not_after)?,
        serial: if serial.is_empty() {
            "00".into()
        } else {
            serial
        },
        subject: subject.to_string(),
        issuer: cert.issuer().to_string(),
    };
    Ok((info, cert.public_key().raw.to_vec()))
}

/// Parses the first certificate of the PEM file at `path` (`what` names it in errors).
pub fn certificate_info(path: &Path, what: &'static str) -> Result<CertInfo, TlsError> {
    let certs = load_certs(path, what)?;
    parse_certificate(certs[0].as_ref())
        .map(|(info, _)| info)
        .map_err(|m| content(what, path, m))
}

const V1_ADVICE: &str = "it has no extensions (no key usage, no subjectAltName), and TLS \
    libraries such as rustls accept only v3 (a plain `openssl x509 -req` without `-extfile` \
    makes v1)";

/// The `gridmeter pki renew …` command for the certificate `info` describes.
fn renew_hint(info: &CertInfo) -> String {
    let cn = info.common_name.as_deref().unwrap_or("NAME");
    match info.role() {
        Some(Role::Device) => format!("gridmeter pki renew {cn}"),
        Some(Role::Collector) => format!("gridmeter pki renew --collector {cn}"),
        Some(Role::Client) => format!("gridmeter pki renew --client {cn}"),
        Some(Role::Broker) => "gridmeter pki renew --server".into(),
        None => "gridmeter pki renew NAME".into(),
    }
}

fn ago(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let d = now - t;
    if d.num_days() >= 1 {
        format!("{} days ago", d.num_days())
    } else {
        format!("{} minutes ago", d.num_minutes().max(0))
    }
}

fn ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The check a client certificate must pass to be worth presenting at all: X.509 v3.
fn check_client_certificate(path: &Path, info: &CertInfo) -> Result<(), TlsError> {
    if info.version < 3 {
        return Err(content(
            "client certificate",
            path,
            format!(
                "is an X.509 v{} certificate ({}): {V1_ADVICE}. Reissue it as v3 with \
                 `{}`, or with openssl pass `-extfile` naming basicConstraints=CA:FALSE, \
                 keyUsage=digitalSignature and extendedKeyUsage=clientAuth",
                info.version,
                info.subject,
                renew_hint(info)
            ),
        ));
    }
    Ok(())
}

impl CertInfo {
    /// Why this (client) certificate is outside its validity window now, worded for an
    /// operator, or `None` while it is valid.
    ///
    /// Not a reason to refuse to start: an agent with an expired certificate must keep
    /// reading and buffering its devices until the renewed files arrive (it loads them at
    /// its next connection attempt). [`ClientTls`] logs this as an error instead, and the
    /// broker's refusal is explained by [`ClientTls::explain`].
    pub fn validity_problem(&self) -> Option<String> {
        let now = Utc::now();
        if self.not_after < now {
            Some(format!(
                "expired at {} ({}; {}): renew it with `{}` and replace the files; the new \
                 certificate is used at the next connection",
                ts(self.not_after),
                ago(self.not_after, now),
                self.subject,
                renew_hint(self)
            ))
        } else if self.not_before > now {
            Some(format!(
                "is not valid before {} (this host's clock says {}): check the clock (NTP) \
                 of this host",
                ts(self.not_before),
                ts(now)
            ))
        } else {
            None
        }
    }
}

/// A certificate problem, worded for an operator (shown by [`ClientTls::explain`]).
#[derive(Clone, PartialEq, Eq)]
pub struct CertificateProblem(pub String);

impl std::fmt::Debug for CertificateProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Display for CertificateProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CertificateProblem {}

fn problem(message: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
        CertificateProblem(message),
    ))))
}

/// webpki's verification of the broker's certificate, with its refusals explained.
#[derive(Debug)]
struct ExplainingVerifier {
    inner: Arc<WebPkiServerVerifier>,
    ca_path: PathBuf,
    ca_subjects: Vec<String>,
}

impl ExplainingVerifier {
    fn explain(&self, end_entity: &CertificateDer<'_>, err: rustls::Error) -> rustls::Error {
        let Ok((info, _)) = parse_certificate(end_entity.as_ref()) else {
            return err;
        };
        let who = format!(
            "the broker's certificate ({}; issuer {}; serial {})",
            info.subject, info.issuer, info.serial
        );
        let now = Utc::now();
        let message = match &err {
            _ if info.version < 3 => format!(
                "{who} is an X.509 v{} certificate: {V1_ADVICE}. Reissue the broker certificate as v3 \
                 (`gridmeter pki renew --server --server-name HOST`, or openssl with \
                 `-extfile` naming subjectAltName=DNS:HOST, keyUsage=digitalSignature and \
                 extendedKeyUsage=serverAuth) and restart the broker",
                info.version
            ),
            rustls::Error::InvalidCertificate(
                e @ (CertificateError::UnknownIssuer | CertificateError::BadSignature),
            ) => format!(
                "{who} is not signed by the CA in {} ({}){}: this client trusts another CA \
                 than the one that issued the broker's certificate; point mqtt.tls.ca at \
                 the broker's CA (the ca.crt of the PKI that issued server.crt)",
                self.ca_path.display(),
                self.ca_subjects.join("; "),
                if matches!(e, CertificateError::BadSignature) {
                    ", which has the issuer's name but another key (two PKIs created apart)"
                } else {
                    ""
                }
            ),
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. },
            ) => format!(
                "{who} expired at {} ({}): renew it (`gridmeter pki renew --server`) and \
                 restart the broker",
                ts(info.not_after),
                ago(info.not_after, now)
            ),
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
            ) => format!(
                "{who} is not valid before {} (this host's clock says {}): check the \
                 clock (NTP) of this host",
                ts(info.not_before),
                ts(now)
            ),
            _ => return err,
        };
        problem(message)
    }
}

impl ServerCertVerifier for ExplainingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map_err(|e| self.explain(end_entity, e))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

/// A client configuration built from [`TlsFiles`] and what its certificate says.
#[derive(Clone)]
pub struct LoadedTls {
    /// The rustls configuration presenting the certificate.
    pub config: Arc<rustls::ClientConfig>,
    /// The client certificate (the first of its file).
    pub cert: CertInfo,
}

impl TlsFiles {
    /// Reads the files and builds a client configuration that verifies the broker against
    /// `ca` and presents `cert`/`key`, after checking that the certificate is X.509 v3 and
    /// matches the key. Its validity window is not checked here (see
    /// [`CertInfo::validity_problem`]).
    pub fn load(&self) -> Result<LoadedTls, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        let mut ca_subjects = Vec::new();
        for c in load_certs(&self.ca, "CA certificate")? {
            if let Ok((info, _)) = parse_certificate(c.as_ref()) {
                ca_subjects.push(info.subject);
            }
            roots
                .add(c)
                .map_err(|e| content("CA certificate", &self.ca, e.to_string()))?;
        }
        let certs = load_certs(&self.cert, "client certificate")?;
        let (cert, cert_spki) = parse_certificate(certs[0].as_ref())
            .map_err(|m| content("client certificate", &self.cert, m))?;
        check_client_certificate(&self.cert, &cert)?;
        let key = load_key(&self.key)?;
        let provider = provider();
        let signing = provider.key_provider.load_private_key(key.clone_key());
        match signing.as_ref().map(|k| k.public_key()) {
            Ok(Some(spki)) if spki.as_ref() != cert_spki.as_slice() => {
                return Err(content(
                    "private key",
                    &self.key,
                    format!(
                        "does not belong to the client certificate {} ({}): the key's public \
                         key is not the one in the certificate. The key was replaced or mixed \
                         up with another one; restore the key issued with this certificate, \
                         or reissue both (`{}`)",
                        self.cert.display(),
                        cert.subject,
                        renew_hint(&cert)
                    ),
                ))
            }
            Ok(_) => {}
            Err(e) => return Err(content("private key", &self.key, format!("unusable: {e}"))),
        }
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| content("CA certificate", &self.ca, e.to_string()))?;
        let verifier = ExplainingVerifier {
            inner,
            ca_path: self.ca.clone(),
            ca_subjects,
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(certs, key)
            .map_err(|e| {
                content(
                    "client certificate and key",
                    &self.key,
                    format!("do not match or are unusable: {e}"),
                )
            })?;
        Ok(LoadedTls {
            config: Arc::new(config),
            cert,
        })
    }

    /// [`TlsFiles::load`]'s client configuration.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        self.load().map(|l| Arc::unwrap_or_clone(l.config))
    }

    /// Config validation: every file readable and parseable, the certificate usable and
    /// matching its key.
    pub fn check(&self, key_path: &str, problems: &mut Problems) {
        self.check_loaded(key_path, problems);
    }

    fn check_loaded(&self, key_path: &str, problems: &mut Problems) -> Option<LoadedTls> {
        if let Err(e) = load_certs(&self.ca, "CA certificate") {
            problems.push(format!("{key_path}.ca"), e);
        }
        let cert_ok = load_certs(&self.cert, "client certificate")
            .map_err(|e| problems.push(format!("{key_path}.cert"), e))
            .is_ok();
        let key_ok = load_key(&self.key)
            .map_err(|e| problems.push(format!("{key_path}.key"), e))
            .is_ok();
        if !(cert_ok && key_ok) {
            return None;
        }
        match self.load() {
            Ok(l) => Some(l),
            Err(e) => {
                let at = match &e {
                    TlsError::Content { what, .. } | TlsError::Read { what, .. } => match *what {
                        "client certificate" => format!("{key_path}.cert"),
                        "private key" => format!("{key_path}.key"),
                        "CA certificate" => format!("{key_path}.ca"),
                        _ => key_path.to_string(),
                    },
                    TlsError::Rustls(_) => key_path.to_string(),
                };
                problems.push(at, e);
                None
            }
        }
    }

    /// [`TlsFiles::check`], and the certificate must be one of `role` (and, given, have CN
    /// `expected_cn`); see [`identity::check_certificate_role`].
    pub fn check_role(
        &self,
        key_path: &str,
        role: Role,
        expected_cn: Option<&str>,
        problems: &mut Problems,
    ) {
        if let Some(l) = self.check_loaded(key_path, problems) {
            if let Err(m) = identity::check_certificate_role(&l.cert, role, expected_cn) {
                problems.push(
                    format!("{key_path}.cert"),
                    format!("client certificate {} {m}", self.cert.display()),
                );
            }
        }
    }
}

/// The expiry gauge of a component's client certificate,
/// `gridmeter_tls_certificate_expiry_timestamp_seconds{component}` (Unix seconds of
/// `not_after`), registered in `registry`.
pub fn register_expiry_gauge(
    registry: &prometheus::Registry,
    component: &str,
) -> prometheus::Result<prometheus::Gauge> {
    let g = prometheus::Gauge::with_opts(
        prometheus::Opts::new(
            "gridmeter_tls_certificate_expiry_timestamp_seconds",
            "When the client certificate currently loaded expires (not_after, Unix seconds)",
        )
        .const_label("component", component),
    )?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

/// A client's TLS configuration, rebuilt from its files at every connection attempt.
///
/// Replacing the certificate and key files (`gridmeter pki renew`) is enough: the next
/// reconnect presents the new certificate. Files that cannot be loaded (half-copied, a key
/// that does not match) are reported and the previous configuration is kept, so a botched
/// renewal does not take a working client down.
pub struct ClientTls {
    files: TlsFiles,
    current: LoadedTls,
    expiry: Option<prometheus::Gauge>,
}

impl ClientTls {
    /// Loads the files (they must be usable now) and sets `expiry` to the certificate's
    /// `not_after`.
    pub fn load(files: TlsFiles, expiry: Option<prometheus::Gauge>) -> Result<Self, TlsError> {
        let current = files.load()?;
        let t = ClientTls {
            files,
            current,
            expiry,
        };
        t.set_gauge();
        tracing::info!(
            "client certificate {}: {}",
            t.files.cert.display(),
            t.current.cert.describe()
        );
        t.report_validity();
        Ok(t)
    }

    fn report_validity(&self) {
        if let Some(p) = self.current.cert.validity_problem() {
            tracing::error!("client certificate {} {p}", self.files.cert.display());
        }
    }

    fn set_gauge(&self) {
        if let Some(g) = &self.expiry {
            g.set(self.current.cert.not_after.timestamp() as f64);
        }
    }

    /// Rebuilds the configuration from the files and returns it: call before every
    /// connection attempt. A changed certificate is logged (old and new serial and expiry);
    /// a failure is logged and the configuration loaded before is returned.
    pub fn reload(&mut self) -> Arc<rustls::ClientConfig> {
        match self.files.load() {
            Ok(loaded) => {
                if loaded.cert.serial != self.current.cert.serial {
                    tracing::info!(
                        "client certificate {} changed: now {} (was serial {}, expiring {})",
                        self.files.cert.display(),
                        loaded.cert.describe(),
                        self.current.cert.serial,
                        ts(self.current.cert.not_after)
                    );
                }
                self.current = loaded;
                self.set_gauge();
                self.report_validity();
            }
            Err(e) => tracing::warn!(
                "cannot reload the client certificate, keeping the one loaded before ({}): {e}",
                self.current.cert.describe()
            ),
        }
        self.current.config.clone()
    }

    /// The configuration loaded last.
    pub fn config(&self) -> Arc<rustls::ClientConfig> {
        self.current.config.clone()
    }

    /// The certificate loaded last.
    pub fn certificate(&self) -> &CertInfo {
        &self.current.cert
    }

    /// The files this configuration is loaded from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// A connection error, worded for an operator: a refused certificate (the broker's, or
    /// ours by the broker) is named with its file, subject and serial, what is wrong and
    /// how to fix it. Anything else is the error's own text.
    pub fn explain(&self, err: &(dyn std::error::Error + 'static)) -> String {
        explain_connect_error(err, &self.files, &self.current.cert)
    }
}

/// The rustls error somewhere in `err`'s chain (also inside an `io::Error`, where tokio-rustls
/// puts it).
pub fn find_rustls_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(r);
            }
        }
        cur = e.source();
    }
    None
}

/// See [`ClientTls::explain`]; `files` and `cert` describe this client's certificate.
pub fn explain_connect_error(
    err: &(dyn std::error::Error + 'static),
    files: &TlsFiles,
    cert: &CertInfo,
) -> String {
    let Some(tls) = find_rustls_error(err) else {
        return err.to_string();
    };
    let ours = format!(
        "the broker refused this client's certificate {} ({}; issuer {})",
        files.cert.display(),
        cert.describe(),
        cert.issuer
    );
    match tls {
        rustls::Error::InvalidCertificate(CertificateError::Other(o)) => {
            match o.0.downcast_ref::<CertificateProblem>() {
                Some(p) => p.0.clone(),
                None => tls.to_string(),
            }
        }
        rustls::Error::AlertReceived(AlertDescription::CertificateRevoked) => format!(
            "{ours}: it is revoked (on the broker's certificate revocation list). Issue a new \
             one (`{}`) and replace the files; it is used at the next connection",
            renew_hint(cert)
        ),
        rustls::Error::AlertReceived(AlertDescription::CertificateExpired) => {
            match cert.validity_problem() {
                Some(p) => format!("{ours}: it {p}"),
                None => format!(
                    "{ours}: the broker considers it expired, but it is valid until {} by \
                     this host's clock: check the broker's clock (NTP)",
                    ts(cert.not_after)
                ),
            }
        }
        rustls::Error::AlertReceived(AlertDescription::UnknownCA) => format!(
            "{ours}: the broker does not trust its issuer; it was issued by another CA than \
             the broker's `cafile`. Use a certificate of the broker's PKI"
        ),
        rustls::Error::AlertReceived(
            a @ (AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::AccessDenied
            | AlertDescription::HandshakeFailure),
        ) => match cert.validity_problem() {
            Some(p) => format!("{ours} ({a:?}): it {p}"),
            None => format!(
                "{ours} ({a:?}): the broker's log says why (a revoked, expired or foreign \
                 certificate)"
            ),
        },
        other => format!("TLS: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_rustls_errors_inside_io_errors() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(AlertDescription::CertificateRevoked),
        );
        assert!(matches!(
            find_rustls_error(&io),
            Some(rustls::Error::AlertReceived(
                AlertDescription::CertificateRevoked
            ))
        ));
        let plain = std::io::Error::other("refused");
        assert!(find_rustls_error(&plain).is_none());
    }
}
