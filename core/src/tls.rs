//! Mutual TLS for MQTT clients: a rustls client configuration from PEM files.
//!
//! Every failure names the file and what is wrong with it, so a device with a missing key or
//! a certificate in the wrong format fails at start-up with a message an operator can act on.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

use crate::config::Problems;

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

/// Reads all certificates of a PEM file; at least one is required.
pub fn load_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path, what)?;
    let content = |message: String| TlsError::Content {
        what,
        path: path.to_path_buf(),
        message,
    };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| content(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(content(
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok(certs)
}

/// Reads the private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path, "private key")?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Content {
        what: "private key",
        path: path.to_path_buf(),
        message: format!("no usable PEM private key: {e}"),
    })
}

/// The ring-backed crypto provider every gridmeter TLS endpoint uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsFiles {
    /// Builds a client configuration that verifies the broker against `ca` and presents
    /// `cert`/`key`.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for c in load_certs(&self.ca, "CA certificate")? {
            roots.add(c).map_err(|e| TlsError::Content {
                what: "CA certificate",
                path: self.ca.clone(),
                message: e.to_string(),
            })?;
        }
        let certs = load_certs(&self.cert, "client certificate")?;
        let key = load_key(&self.key)?;
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(|e| TlsError::Content {
                what: "client certificate and key",
                path: self.key.clone(),
                message: format!("do not match or are unusable: {e}"),
            })?;
        Ok(config)
    }

    /// Config validation: every file readable and parseable, key matching certificate.
    pub fn check(&self, key_path: &str, problems: &mut Problems) {
        if let Err(e) = load_certs(&self.ca, "CA certificate") {
            problems.push(format!("{key_path}.ca"), e);
        }
        let cert_ok = load_certs(&self.cert, "client certificate")
            .map_err(|e| problems.push(format!("{key_path}.cert"), e))
            .is_ok();
        let key_ok = load_key(&self.key)
            .map_err(|e| problems.push(format!("{key_path}.key"), e))
            .is_ok();
        if cert_ok && key_ok {
            if let Err(e) = self.client_config() {
                problems.push(key_path, e);
            }
        }
    }
}

/// What a certificate says about itself: the identity a broker derives from it and its
/// validity window. Read with [`certificate_info`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject's common name (CN), if it has one. A broker configured with
    /// `use_identity_as_username` uses it as the MQTT username, which the ACLs check.
    pub common_name: Option<String>,
    /// The subject's organizational unit (OU), if any.
    pub organizational_unit: Option<String>,
    /// X.509 version as written in the certificate: 1 or 3 (2 is unused in practice).
    pub version: u32,
    /// Start of the validity window.
    pub not_before: chrono::DateTime<chrono::Utc>,
    /// End of the validity window.
    pub not_after: chrono::DateTime<chrono::Utc>,
}

/// Parses the first certificate of the PEM file at `path` (`what` names it in errors).
pub fn certificate_info(path: &Path, what: &'static str) -> Result<CertInfo, TlsError> {
    let certs = load_certs(path, what)?;
    let content = |message: String| TlsError::Content {
        what,
        path: path.to_path_buf(),
        message,
    };
    let (_, cert) = x509_parser::parse_x509_certificate(certs[0].as_ref())
        .map_err(|e| content(format!("not a valid X.509 certificate: {e}")))?;
    let subject = cert.subject();
    let text = |attr: Option<&x509_parser::x509::AttributeTypeAndValue<'_>>| {
        attr.and_then(|a| a.as_str().ok()).map(str::to_string)
    };
    let time = |t: x509_parser::time::ASN1Time| {
        chrono::DateTime::from_timestamp(t.timestamp(), 0)
            .ok_or_else(|| content(format!("validity time {t} is out of range")))
    };
    let common_name = text(subject.iter_common_name().next());
    let organizational_unit = text(subject.iter_organizational_unit().next());
    let info = CertInfo {
        common_name,
        organizational_unit,
        version: cert.version().0 + 1,
        not_before: time(cert.validity().not_before)?,
        not_after: time(cert.validity().not_after)?,
    };
    Ok(info)
}
