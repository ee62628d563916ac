//! HTTPS on the TCP control listener (`[agent] control_tls`): the server
//! certificate, and with `client_ca` a client certificate required on every
//! connection (mutual TLS) on top of the bearer token. TLS 1.2 and 1.3,
//! ALPN http/1.1. The files are read again when they change; a change that
//! does not load is logged and the previous config stays.

use crate::config::ControlTls;
use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the files are looked at.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// The server config for `tls`, or what is wrong, naming the file.
pub fn server_config(tls: &ControlTls) -> Result<Arc<ServerConfig>, String> {
    let loaded = bg_proxy::tls::load_cert(&tls.cert, &tls.key, &[]).map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = Arc::new(roots(ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let key = loaded.key;
    let mut config = builder.with_cert_resolver(Arc::new(Single(key)));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The CA certificates in the PEM file at `path`.
pub fn roots(path: &std::path::Path) -> Result<RootCertStore, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: holds no CERTIFICATE block", path.display()));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| format!("{}: not a CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

/// Every handshake gets the one certificate, with or without SNI (agents
/// are often reached by IP address).
#[derive(Debug)]
struct Single(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for Single {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The current server config, swapped when the files change.
pub struct Acceptor {
    tls: ControlTls,
    current: ArcSwap<ServerConfig>,
}

impl Acceptor {
    /// Load `tls` now.
    pub fn new(tls: ControlTls) -> Result<Arc<Acceptor>, String> {
        let config = server_config(&tls)?;
        Ok(Arc::new(Acceptor { tls, current: ArcSwap::new(config) }))
    }

    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }

    /// Look at the files every second until `stop`; install what changed.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        let mut seen = fingerprint(&self.tls);
        let mut tick = tokio::time::interval(WATCH_EVERY);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = fingerprint(&self.tls);
            if now == seen {
                continue;
            }
            seen = now;
            match server_config(&self.tls) {
                Ok(config) => {
                    self.current.store(config);
                    tracing::info!(cert = %self.tls.cert.display(), "control API certificate files reloaded");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control API certificate files not reloaded; the previous ones stay")
                }
            }
        }
    }
}

/// The files' bytes, hashed.
fn fingerprint(tls: &ControlTls) -> u64 {
    use std::hash::{DefaultHasher, Hasher};
    let mut h = DefaultHasher::new();
    for p in [Some(&tls.cert), Some(&tls.key), tls.client_ca.as_ref()].into_iter().flatten() {
        h.write(&std::fs::read(p).unwrap_or_default());
        h.write_u8(0xff);
    }
    h.finish()
}
