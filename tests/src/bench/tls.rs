//! The one certificate every peer of the TLS cells serves, and the client
//! side of those cells. The certificate is ECDSA P-256 for
//! [`SERVER_NAME`], signed by a test CA made here ([`crate::certs`]), in
//! a temporary directory (keys mode 0600), also as the cert-and-key file
//! HAProxy takes. The client config trusts only that CA, offers TLS 1.3
//! only and ALPN `http/1.1`, and never resumes a session: every new
//! connection is a full handshake (the load generator checks each one).

use crate::certs::{TestCa, Usage};
use rustls::pki_types::CertificateDer;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

/// The name the certificate is for, sent as SNI and Host: it resolves to
/// 127.0.0.1, so wrk can use it in its URL too.
pub const SERVER_NAME: &str = "localhost";

/// The certificate files the peers are configured with.
pub struct BenchCert {
    dir: tempfile::TempDir,
    /// The leaf certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, mode 0600).
    pub key: PathBuf,
    /// Certificate then key in one file (mode 0600), for HAProxy's `crt`.
    pub combined: PathBuf,
    ca: CertificateDer<'static>,
}

impl BenchCert {
    /// A new CA and leaf in a new temporary directory.
    pub fn new() -> BenchCert {
        let dir = tempfile::Builder::new().prefix("bg-bench-tls-").tempdir().expect("temp dir");
        let ca = TestCa::new(dir.path(), "bench-ca");
        let (cert, key) = ca.leaf("bench", &[SERVER_NAME], Usage::Server, None);
        let combined = dir.path().join("bench-combined.pem");
        let both = format!(
            "{}{}",
            std::fs::read_to_string(&cert).expect("read cert"),
            std::fs::read_to_string(&key).expect("read key")
        );
        std::fs::write(&combined, both).expect("write combined pem");
        std::fs::set_permissions(&combined, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        BenchCert { ca: ca.ca_der(), dir, cert, key, combined }
    }

    /// The directory the files are in.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The client config of the TLS cells: this CA only, TLS 1.3 only,
    /// ALPN `http/1.1`, resumption disabled (no session IDs, no tickets).
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).expect("the CA certificate parses");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("ring supports TLS 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.resumption = rustls::client::Resumption::disabled();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

impl Default for BenchCert {
    fn default() -> Self {
        BenchCert::new()
    }
}

/// One handshake with `addr` as the cells make them: what was negotiated
/// (version, cipher suite, key exchange group, kind), for the report.
pub async fn probe(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Result<String, String> {
    let name = rustls::pki_types::ServerName::try_from(SERVER_NAME).expect("a server name");
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name.to_owned(), tcp)
        .await
        .map_err(|e| format!("tls handshake with {addr}: {e}"))?;
    let c = tls.get_ref().1;
    let show = |v: Option<String>| v.unwrap_or_else(|| "?".into());
    Ok(format!(
        "{} {} {}, {} handshake, ALPN {}",
        show(c.protocol_version().map(|v| format!("{v:?}"))),
        show(c.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite()))),
        show(c.negotiated_key_exchange_group().map(|g| format!("{:?}", g.name()))),
        show(c.handshake_kind().map(|k| format!("{k:?}").to_lowercase())),
        show(c.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned())),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_is_ecdsa_p256_with_private_keys() {
        let c = BenchCert::new();
        let key = std::fs::read_to_string(&c.key).unwrap();
        let pair = rcgen::KeyPair::from_pem(&key).unwrap();
        assert!(pair.is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256), "{:?}", pair.algorithm());
        for f in [&c.key, &c.combined] {
            let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", f.display());
        }
        let combined = std::fs::read_to_string(&c.combined).unwrap();
        assert!(combined.contains("BEGIN CERTIFICATE") && combined.contains("PRIVATE KEY"), "{combined}");
    }

    /// A server that hands out tickets and caches sessions (rustls'
    /// defaults) still sees a full handshake on every connection.
    #[tokio::test]
    async fn every_connection_is_a_full_tls13_handshake_verified_against_the_ca() {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::PrivateKeyDer;
        let c = BenchCert::new();
        let chain = vec![CertificateDer::from_pem_file(&c.cert).unwrap()];
        let key = PrivateKeyDer::from_pem_file(&c.key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    use tokio::io::AsyncWriteExt;
                    if let Ok(mut s) = acceptor.accept(tcp).await {
                        let _ = s.shutdown().await;
                    }
                });
            }
        });
        let config = c.client_config();
        for _ in 0..3 {
            let seen = probe(addr, config.clone()).await.unwrap();
            assert!(seen.starts_with("TLSv1_3 TLS13_"), "{seen}");
            assert!(seen.contains(", full handshake,"), "{seen}");
        }
        let mut other = rustls::RootCertStore::empty();
        other.add(crate::certs::TestCa::new(c.dir(), "other").ca_der()).unwrap();
        let stranger =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(other)
                .with_no_client_auth();
        assert!(probe(addr, Arc::new(stranger)).await.is_err(), "a certificate of another CA is refused");
    }
}
