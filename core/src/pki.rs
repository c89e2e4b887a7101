//! A small certificate authority for gridmeter deployments and tests.
//!
//! Layout of a PKI directory (all PEM):
//!
//! | file | what |
//! |---|---|
//! | `ca.crt`, `ca.key` | the CA; keep `ca.key` offline in production |
//! | `server.crt`, `server.key` | the broker; SANs `localhost`, `127.0.0.1` and any given names |
//! | `collector.crt`, `collector.key` | a collector client (CN `collector`) |
//! | `devices/<device_id>.crt`, `.key` | a device client; CN = device_id, which the broker uses as the MQTT username for its ACL |

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::model::DeviceId;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Cert { what: String, source: rcgen::Error },
    #[error("{0} already exists; refusing to overwrite a CA (remove it first)")]
    Exists(PathBuf),
}

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A loaded certificate authority that can issue certificates.
pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
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

fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), PkiError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    std::fs::write(path, contents).map_err(io_err(path))?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err(path))?;
    }
    #[cfg(not(unix))]
    let _ = private;
    Ok(())
}

impl Issued {
    /// Writes `<dir>/<name>.crt` and `<dir>/<name>.key` (the key with mode 0600).
    pub fn write(&self, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), PkiError> {
        let crt = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        write_file(&crt, &self.cert_pem, false)?;
        write_file(&key, &self.key_pem, true)?;
        Ok((crt, key))
    }
}

fn leaf_params(
    cn: &str,
    sans: Vec<String>,
    eku: ExtendedKeyUsagePurpose,
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(sans).map_err(cert_err(format!("names for {cn}")))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, "gridmeter");
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![eku];
    params.use_authority_key_identifier_extension = true;
    let now = time_now();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(825);
    Ok(params)
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
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
        let now = time_now();
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

    /// Writes `ca.crt` and `ca.key`; refuses to overwrite an existing CA.
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        let crt = dir.join("ca.crt");
        if crt.exists() {
            return Err(PkiError::Exists(crt));
        }
        write_file(&crt, &self.cert_pem, false)?;
        write_file(
            &dir.join("ca.key"),
            &self.issuer.key().serialize_pem(),
            true,
        )
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    fn issue(&self, params: CertificateParams, what: &str) -> Result<Issued, PkiError> {
        let key = KeyPair::generate().map_err(cert_err(format!("{what} key")))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(cert_err(what.to_string()))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A broker certificate for `localhost`, `127.0.0.1`, `::1` and `extra_names`.
    pub fn issue_server(&self, extra_names: &[String]) -> Result<Issued, PkiError> {
        let mut names = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        names.extend(extra_names.iter().cloned());
        let params = leaf_params(
            "gridmeter-broker",
            names,
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        self.issue(params, "server certificate")
    }

    /// A client certificate with the given common name (e.g. `collector`).
    pub fn issue_client(&self, common_name: &str) -> Result<Issued, PkiError> {
        let params = leaf_params(common_name, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)?;
        self.issue(params, &format!("client certificate {common_name}"))
    }

    /// A device certificate: CN = device_id.
    pub fn issue_device(&self, device: &DeviceId) -> Result<Issued, PkiError> {
        self.issue_client(device.as_str())
    }
}

/// Creates a complete PKI directory: CA, broker, collector and the given devices.
/// Existing CA files are reused, so devices can be added later.
pub fn init_dir(dir: &Path, server_names: &[String], devices: &[DeviceId]) -> Result<Ca, PkiError> {
    let ca = if dir.join("ca.crt").exists() {
        Ca::load(dir)?
    } else {
        let ca = Ca::create("gridmeter CA")?;
        ca.save(dir)?;
        ca
    };
    if !dir.join("server.crt").exists() {
        ca.issue_server(server_names)?.write(dir, "server")?;
    }
    if !dir.join("collector.crt").exists() {
        ca.issue_client("collector")?.write(dir, "collector")?;
    }
    for d in devices {
        ca.issue_device(d)?
            .write(&dir.join("devices"), d.as_str())?;
    }
    Ok(ca)
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
        let ca = Ca::load(dir.path()).unwrap();
        ca.issue_device(&DeviceId::new("m-2").unwrap())
            .unwrap()
            .write(&dir.path().join("devices"), "m-2")
            .unwrap();
        let files = crate::tls::TlsFiles {
            ca: dir.path().join("ca.crt"),
            cert: dir.path().join("devices/inv-042.crt"),
            key: dir.path().join("devices/inv-042.key"),
        };
        files.client_config().unwrap();
        let info = crate::tls::certificate_info(&files.cert, "client certificate").unwrap();
        assert_eq!(info.common_name.as_deref(), Some("inv-042"));
        assert_eq!(info.version, 3);
        assert!(info.not_before < chrono::Utc::now() && info.not_after > chrono::Utc::now());
        assert!(matches!(ca.save(dir.path()), Err(PkiError::Exists(_))));
    }
}
