//! TLS with rustls from a PEM certificate chain and key (`--tls-cert`,
//! `--tls-key`). The pair is read again when either file changes, so a
//! renewed certificate (cert-manager, certbot) is served without a restart;
//! a pair that fails to load keeps the previous one in service.

use crate::watched::Reloading;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Clone)]
pub struct TlsAcceptor(tokio_rustls::TlsAcceptor);

impl TlsAcceptor {
    /// Load the pair now (an error here stops the server from starting)
    /// and watch it from then on.
    pub fn new(cert: PathBuf, key: PathBuf) -> Result<TlsAcceptor, TlsError> {
        let pair = Reloading::new("TLS certificate", vec![cert, key], |p| {
            certified_key(&p[0], &p[1])
        })?;
        let resolver = Arc::new(CertResolver(pair));
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor(tokio_rustls::TlsAcceptor::from(Arc::new(
            config,
        ))))
    }

    pub async fn accept<IO>(&self, io: IO) -> std::io::Result<tokio_rustls::server::TlsStream<IO>>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        self.0.accept(io).await
    }
}

/// Hands rustls the pair as last loaded.
#[derive(Debug)]
struct CertResolver(Arc<Reloading<Arc<CertifiedKey>>>);

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some((*self.0.get()).clone())
    }
}

/// Why a certificate pair cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

fn certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let fail = |what: String| move |e: &dyn std::fmt::Display| TlsError(format!("{what}: {e}"));
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| fail(format!("reading {}", cert.display()))(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("parsing {}", cert.display()))(&e))?;
    if chain.is_empty() {
        return Err(TlsError(format!("{} holds no certificate", cert.display())));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| fail(format!("reading a private key from {}", key.display()))(&e))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(chain, key, &provider)
        .map_err(|e| fail("the certificate and key do not form a pair".into())(&e))?;
    Ok(Arc::new(certified))
}
