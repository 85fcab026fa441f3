//! TLS with rustls from a PEM certificate chain and key (`--tls-cert`,
//! `--tls-key`). The pair is read again when either file changes, so a
//! renewed certificate (cert-manager, certbot) is served without a restart;
//! a pair that fails to load keeps the previous one in service.

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

/// How often the files' mtimes and sizes are compared.
const RELOAD_POLL: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct TlsAcceptor(tokio_rustls::TlsAcceptor);

impl TlsAcceptor {
    /// Load the pair now (an error here stops the server from starting)
    /// and watch it from then on.
    pub fn new(cert: PathBuf, key: PathBuf) -> Result<TlsAcceptor, TlsError> {
        let resolver = Arc::new(ReloadingCert::load(cert, key)?);
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELOAD_POLL);
            loop {
                tick.tick().await;
                resolver.reload_if_changed();
            }
        });
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

#[derive(Debug)]
struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<(Stamp, Arc<CertifiedKey>)>,
}

/// What tells a changed file: mtime and size of both.
type Stamp = [(Option<SystemTime>, u64); 2];

fn stamp(cert: &Path, key: &Path) -> Stamp {
    let one = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| (m.modified().ok(), m.len()))
            .unwrap_or((None, 0))
    };
    [one(cert), one(key)]
}

impl ReloadingCert {
    fn load(cert_path: PathBuf, key_path: PathBuf) -> Result<ReloadingCert, TlsError> {
        let s = stamp(&cert_path, &key_path);
        let key = certified_key(&cert_path, &key_path)?;
        Ok(ReloadingCert {
            cert_path,
            key_path,
            current: RwLock::new((s, key)),
        })
    }

    fn reload_if_changed(&self) {
        let s = stamp(&self.cert_path, &self.key_path);
        if self.current.read().unwrap_or_else(|p| p.into_inner()).0 == s {
            return;
        }
        match certified_key(&self.cert_path, &self.key_path) {
            Ok(key) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = (s, key);
                tracing::info!(cert = %self.cert_path.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                // Keep serving the old pair; try again when the files next
                // change (a writer may be half way through).
                self.current.write().unwrap_or_else(|p| p.into_inner()).0 = s;
                tracing::warn!(error = %e, "TLS certificate changed but cannot be loaded; keeping the previous one");
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .1
                .clone(),
        )
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
