//! TLS for the shared edge listeners: certificates loaded from PEM files
//! and checked (key matches, not expired, names covered), an SNI resolver
//! whose map is swapped atomically, and a watcher that reloads changed
//! files without touching open connections. TLS 1.2 and 1.3 only, ALPN
//! `h2` and `http/1.1`, ring as the crypto provider.

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// Why a certificate pair was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The private key file may be read by group or others.
    #[error("{path}: the private key is readable by group or others (mode {mode:o}); chmod 600 it")]
    KeyMode {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A file holds no usable PEM item.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The certificate does not belong to the key.
    #[error("{cert}: the certificate does not match the private key {key}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The certificate is no longer (or not yet) valid.
    #[error("{path}: the certificate {what}")]
    Validity {
        /// The certificate file.
        path: PathBuf,
        /// Expired when, or valid from when.
        what: String,
    },
    /// The certificate does not name a host it is used for.
    #[error("{path}: the certificate does not cover host {host} (it names {names})")]
    NotCovered {
        /// The certificate file.
        path: PathBuf,
        /// The host left out.
        host: String,
        /// The names it holds.
        names: String,
    },
}

/// A checked certificate and key, ready to serve.
#[derive(Debug, Clone)]
pub struct LoadedCert {
    /// What rustls serves.
    pub key: Arc<CertifiedKey>,
    /// End of validity, seconds since the epoch.
    pub not_after: i64,
    /// DNS names of the subject alternative names (or the CN without any).
    pub names: Vec<String>,
    /// The leaf's serial number, hex.
    pub serial: String,
}

/// One certificate pair and the hosts it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSource {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1), mode 0600 or stricter.
    pub key: PathBuf,
    /// The hosts (exact or `*.` wildcard) this pair answers SNI for.
    pub hosts: Vec<String>,
    /// Whether the files must load at start. A pair that is not required
    /// (one ACME has not written yet) serves nothing until it loads.
    pub required: bool,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })
}

/// Load and check one pair: key mode, PEM items, key match, validity now,
/// and that every name in `hosts` is covered.
pub fn load_cert(cert: &Path, key: &Path, hosts: &[String]) -> Result<LoadedCert, TlsError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(key).map_err(|source| TlsError::Read { path: key.to_path_buf(), source })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TlsError::KeyMode { path: key.to_path_buf(), mode });
    }
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&cert_pem).collect::<Result<_, _>>().map_err(|e| TlsError::Pem {
            path: cert.to_path_buf(),
            what: format!("not a PEM certificate: {e}"),
        })?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::Pem { path: cert.to_path_buf(), what: "holds no CERTIFICATE block".into() });
    };
    let private = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| TlsError::Pem { path: key.to_path_buf(), what: format!("no private key: {e}") })?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(chain.clone(), private, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            TlsError::Mismatch { cert: cert.to_path_buf(), key: key.to_path_buf() }
        }
        other => TlsError::Pem { path: key.to_path_buf(), what: format!("unusable private key: {other}") },
    })?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| TlsError::Pem {
        path: cert.to_path_buf(),
        what: format!("not an X.509 certificate: {e}"),
    })?;
    let validity = parsed.validity();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let not_after = validity.not_after.timestamp();
    if not_after <= now {
        return Err(TlsError::Validity {
            path: cert.to_path_buf(),
            what: format!("expired at {}", validity.not_after),
        });
    }
    if validity.not_before.timestamp() > now {
        return Err(TlsError::Validity {
            path: cert.to_path_buf(),
            what: format!("is not valid before {}", validity.not_before),
        });
    }
    let mut names: Vec<String> = parsed
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        names.extend(
            parsed
                .subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    for host in hosts {
        if !covers(&names, host) {
            return Err(TlsError::NotCovered {
                path: cert.to_path_buf(),
                host: host.clone(),
                names: if names.is_empty() { "none".into() } else { names.join(", ") },
            });
        }
    }
    let serial = parsed.raw_serial_as_string().replace(':', "");
    Ok(LoadedCert { key: Arc::new(certified), not_after, names, serial })
}

/// Whether a certificate's `names` cover `host` (exact, or a `*.` name of
/// the certificate covering one label; a wildcard host needs the same
/// wildcard).
fn covers(names: &[String], host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    names.iter().any(|n| {
        n == &host
            || n.strip_prefix("*.").is_some_and(|suffix| {
                host.split_once('.')
                    .is_some_and(|(label, rest)| label != "*" && !label.is_empty() && rest == suffix)
            })
    })
}

/// The certificates by host, as the resolver reads them.
#[derive(Debug, Default)]
struct CertMap {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.org` stored as `example.org`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl CertMap {
    fn get(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        let sni = sni.to_ascii_lowercase();
        self.exact
            .get(&sni)
            .or_else(|| sni.split_once('.').and_then(|(_, rest)| self.wildcard.get(rest)))
            .cloned()
    }
}

/// Picks the certificate by SNI; the map is swapped atomically on reload,
/// so handshakes in progress keep what they picked. An unknown or missing
/// SNI gets no certificate, which rustls answers with a handshake alert.
#[derive(Debug, Default)]
pub struct CertResolver {
    map: ArcSwap<CertMap>,
    /// ACME TLS-ALPN-01 certificates by host, served only to handshakes
    /// that offer ALPN `acme-tls/1`.
    challenges: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
}

/// The ALPN protocol of ACME TLS-ALPN-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

impl CertResolver {
    /// Install `certs` (each with the hosts it serves) in one store.
    pub fn install(&self, certs: &[(Vec<String>, Arc<CertifiedKey>)]) {
        let mut map = CertMap::default();
        for (hosts, key) in certs {
            for host in hosts {
                let host = host.to_ascii_lowercase();
                match host.strip_prefix("*.") {
                    Some(rest) => map.wildcard.insert(rest.to_string(), key.clone()),
                    None => map.exact.insert(host, key.clone()),
                };
            }
        }
        self.map.store(Arc::new(map));
    }

    /// Answer TLS-ALPN-01 validation for `host` with `key` (a certificate
    /// carrying the acmeIdentifier extension).
    pub fn set_alpn_challenge(&self, host: &str, key: Arc<CertifiedKey>) {
        self.challenges.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(host.to_ascii_lowercase(), key.clone());
            m
        });
    }

    /// Stop answering TLS-ALPN-01 for `host`.
    pub fn remove_alpn_challenge(&self, host: &str) {
        self.challenges.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.remove(&host.to_ascii_lowercase());
            m
        });
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name()?;
        if hello.alpn().is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN)) {
            return self.challenges.load().get(&sni.to_ascii_lowercase()).cloned();
        }
        self.map.load().get(sni)
    }
}

/// The server config of an https listener: TLS 1.2 and 1.3 only, ALPN h2
/// then http/1.1 (and `acme-tls/1` for validation), certificates from
/// `resolver`.
pub fn server_config(resolver: Arc<CertResolver>) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    Arc::new(config)
}

/// Told of every certificate a [`CertWatcher`] installs.
pub type OnLoad = Box<dyn Fn(&CertSource, &LoadedCert) + Send + Sync>;

/// Loads `sources`, installs them in `resolver`, and reloads them when
/// their files change (checked every `every`). A pair that fails to load
/// on reload keeps its previous certificate and is logged; `on_load` sees
/// every certificate installed (for expiry gauges).
pub struct CertWatcher {
    sources: Vec<CertSource>,
    resolver: Arc<CertResolver>,
    on_load: OnLoad,
    current: Vec<Option<(Vec<u8>, LoadedCert)>>,
}

impl std::fmt::Debug for CertWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertWatcher").field("sources", &self.sources).finish_non_exhaustive()
    }
}

impl CertWatcher {
    /// Load every pair now; the first failure is returned and nothing is
    /// installed.
    pub fn new(
        sources: Vec<CertSource>,
        resolver: Arc<CertResolver>,
        on_load: OnLoad,
    ) -> Result<CertWatcher, TlsError> {
        let mut current = Vec::with_capacity(sources.len());
        for s in &sources {
            match load_cert(&s.cert, &s.key, &s.hosts) {
                Ok(loaded) => current.push(Some((fingerprint(s), loaded))),
                Err(e) if s.required => return Err(e),
                Err(_) => current.push(None),
            }
        }
        let watcher = CertWatcher { sources, resolver, on_load, current };
        watcher.install();
        for (s, c) in watcher.sources.iter().zip(&watcher.current) {
            if let Some((_, loaded)) = c {
                (watcher.on_load)(s, loaded);
            }
        }
        Ok(watcher)
    }

    fn install(&self) {
        let certs: Vec<_> = self
            .sources
            .iter()
            .zip(&self.current)
            .filter_map(|(s, c)| c.as_ref().map(|(_, l)| (s.hosts.clone(), l.key.clone())))
            .collect();
        self.resolver.install(&certs);
    }

    /// Look at the files once; reload and install what changed.
    pub fn check(&mut self) {
        let mut changed = false;
        for (i, s) in self.sources.iter().enumerate() {
            let print = fingerprint(s);
            match &self.current[i] {
                Some((p, _)) if *p == print => continue,
                // Not there yet (ACME), and still not.
                None if !s.cert.exists() || !s.key.exists() => continue,
                _ => {}
            }
            match load_cert(&s.cert, &s.key, &s.hosts) {
                Ok(loaded) => {
                    tracing::info!(cert = %s.cert.display(), serial = %loaded.serial, "certificate reloaded");
                    (self.on_load)(s, &loaded);
                    self.current[i] = Some((print, loaded));
                    changed = true;
                }
                Err(e) => {
                    // Keep serving the old one; do not retry the same bytes.
                    tracing::warn!(error = %e, "certificate reload refused; the previous certificate stays");
                    if let Some((p, _)) = self.current[i].as_mut() {
                        *p = print;
                    }
                }
            }
        }
        if changed {
            self.install();
        }
    }

    /// Check every `every` until `stop` fires.
    pub async fn run(mut self, every: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => self.check(),
            }
        }
    }
}

/// What the files hold now (both files' bytes, hashed); unreadable files
/// hash as empty.
fn fingerprint(s: &CertSource) -> Vec<u8> {
    use std::hash::{DefaultHasher, Hasher};
    let mut h = DefaultHasher::new();
    for p in [&s.cert, &s.key] {
        h.write(&std::fs::read(p).unwrap_or_default());
        h.write_u8(0xff);
    }
    h.finish().to_le_bytes().to_vec()
}

/// A certificate and key from PEM text (no checks): for certificates made
/// here, such as ACME TLS-ALPN-01 answers.
pub fn certified_key_from_pem(cert_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, TlsError> {
    let pem = |what: &str, e: &dyn std::fmt::Display| TlsError::Pem {
        path: PathBuf::from("(made here)"),
        what: format!("{what}: {e}"),
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| pem("certificate", &e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| pem("key", &e))?;
    let key = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| pem("key", &e))?;
    Ok(Arc::new(CertifiedKey::new(chain, key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_names_cover_one_label() {
        let names = vec!["*.example.org".to_string(), "example.com".to_string()];
        assert!(covers(&names, "a.example.org"));
        assert!(!covers(&names, "a.b.example.org"));
        assert!(!covers(&names, "example.org"));
        assert!(covers(&names, "EXAMPLE.com"));
        assert!(!covers(&names, "*.example.com"));
    }
}
