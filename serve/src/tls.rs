//! The server's TLS: its certificate, and the CA of client certificates (optional: a
//! client without a certificate may still log in with a password).

use std::sync::Arc;

use gridmeter_core::tls::{load_certs, load_key, provider};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;
use crate::ServeError;

/// The TLS acceptor of `[tls]`.
pub fn acceptor(tls: &TlsConfig) -> Result<TlsAcceptor, ServeError> {
    let certs = load_certs(&tls.cert, "tls.cert")?;
    let key = load_key(&tls.key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in load_certs(ca, "tls.client_ca")? {
                roots
                    .add(c)
                    .map_err(|e| ServeError::Tls(format!("tls.client_ca {}: {e}", ca.display())))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .allow_unauthenticated()
                .build()
                .map_err(|e| ServeError::Tls(format!("tls.client_ca {}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| ServeError::Tls(format!("tls.cert/tls.key: {e}")))?;
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
