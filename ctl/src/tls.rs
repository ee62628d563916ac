//! TLS to agents reached at `https://` (`[agent] control_tls`): the CA that
//! signed the agent's certificate (`--ca`, `$BG_CA`, the fleet file's
//! `ca_file`) and, for mutual TLS, a client certificate (`--cert`/`--key`,
//! `cert_file`/`key_file`). A certificate that does not verify is an
//! [`Error::Tls`] (exit 3) saying why: expired, wrong name, unknown CA,
//! client certificate required or refused.

use crate::error::Error;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The files a TLS client is made of.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificates (PEM) that sign the agents' certificates.
    pub ca: Option<PathBuf>,
    /// Client certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// Client private key (PEM).
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    /// These files, each falling back to `defaults`'.
    pub fn or(&self, defaults: &TlsFiles) -> TlsFiles {
        TlsFiles {
            ca: self.ca.clone().or_else(|| defaults.ca.clone()),
            cert: self.cert.clone().or_else(|| defaults.cert.clone()),
            key: self.key.clone().or_else(|| defaults.key.clone()),
        }
    }

    /// The client config, or a usage error naming the file.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, Error> {
        let Some(ca) = &self.ca else {
            return Err(Error::Usage(
                "an https:// agent needs the CA that signed its certificate: --ca FILE, $BG_CA or the fleet file's ca_file".into(),
            ));
        };
        let roots = roots(ca)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| Error::Usage(format!("TLS: {e}")))?
            .with_root_certificates(roots);
        let mut config = match (&self.cert, &self.key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(key)) => {
                let chain = certs(cert)?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                    Error::Usage(format!("--key {}: not a PEM private key: {e}", key.display()))
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| Error::Usage(format!("--cert/--key: {e}")))?
            }
            _ => {
                return Err(Error::Usage(
                    "--cert and --key go together (a client certificate and its key)".into(),
                ))
            }
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| Error::Usage(format!("{}: not a PEM certificate: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::Usage(format!("{}: holds no CERTIFICATE block", path.display())));
    }
    Ok(certs)
}

fn roots(path: &Path) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    for cert in certs(path)? {
        roots
            .add(cert)
            .map_err(|e| Error::Usage(format!("{}: not a CA certificate: {e}", path.display())))?;
    }
    Ok(roots)
}

/// Why a TLS connection failed, in words, when `e` (or one of its
/// sources) is a rustls error.
pub fn reason(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(describe(r));
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(describe(r));
            }
        }
        cur = err.source();
    }
    None
}

fn describe(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the agent's certificate has expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the agent's certificate is not valid yet".into()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "the agent's certificate is not valid for this host name or address".into()
            }
            CertificateError::UnknownIssuer => {
                "the agent's certificate is not signed by the CA given (--ca / ca_file)".into()
            }
            other => format!("the agent's certificate was refused: {other:?}"),
        },
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired) => {
            "the agent requires a client certificate (--cert and --key)".into()
        }
        rustls::Error::AlertReceived(
            AlertDescription::BadCertificate | AlertDescription::UnknownCA | AlertDescription::AccessDenied,
        ) => "the agent refused our client certificate (not signed by its client_ca)".into(),
        rustls::Error::AlertReceived(a) => format!("the agent ended the TLS handshake: {a:?}"),
        other => format!("TLS: {other}"),
    }
}
