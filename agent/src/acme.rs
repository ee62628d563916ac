//! Automatic certificates through ACME (instant-acme): one account under
//! `state_dir/acme/account.json`, and per service with `tls = "acme"` a
//! certificate and key under `state_dir/acme/` (mode 0600), obtained with
//! HTTP-01 (answered on the http edge listeners through the host router),
//! or TLS-ALPN-01 on the https ones when there is no http listener, and
//! renewed `acme_renew_before` ahead of expiry. The files are served
//! by the edge's certificate watcher like any PEM pair, so the old
//! certificate is served until the new one is written. Failures are logged
//! and sent as events with the ACME server's error, and retried with
//! backoff.

use crate::api::EventKind;
use crate::config::AcmeSettings;
use crate::events::EventHub;
use bg_proxy::tls::CertResolver;
use bg_proxy::HostRouter;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder,
    OrderStatus, RetryPolicy,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// First wait after a failure; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(5);
/// Longest wait between two tries after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// Shortest time between two certificates for the same service (so that a
/// renewal window longer than the certificate's life does not loop).
const MIN_RENEW_GAP: Duration = Duration::from_secs(5);
/// Longest sleep between two looks at the certificates.
const MAX_SLEEP: Duration = Duration::from_secs(3600);
/// How long the config check waits for the ACME directory to answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why obtaining a certificate failed.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The ACME server refused or could not be reached (its problem
    /// document is in the message).
    #[error("ACME: {0}")]
    Acme(#[from] instant_acme::Error),
    /// A file under `state_dir/acme/` could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The account file is not what this agent wrote.
    #[error("{path}: not an ACME account file: {source}")]
    Account {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The order did not become ready or valid.
    #[error("the order for {names} ended {status}")]
    Order {
        /// The names ordered.
        names: String,
        /// How it ended, with the server's error if it gave one.
        status: String,
    },
    /// The TLS-ALPN-01 answer could not be made.
    #[error("making the TLS-ALPN-01 answer failed: {0}")]
    Alpn(#[from] rcgen::Error),
    /// The certificate the server issued does not load.
    #[error("the issued certificate does not load: {0}")]
    Issued(#[from] bg_proxy::tls::TlsError),
    /// The directory did not answer the config check.
    #[error("proxy.acme_directory {url}: {reason}")]
    Directory {
        /// The directory URL.
        url: String,
        /// What went wrong: the server's error, or that it timed out.
        reason: String,
    },
}

/// Refuses `config` when a service gets its certificate through ACME and
/// the directory does not answer: fetched and parsed once (no account is
/// made), within [`PROBE_TIMEOUT`]. The config check and reload call this,
/// so a mistyped or unreachable server is refused up front; at start the
/// agent does not wait for it (an outage must not keep the other services
/// down), and failures are then reported and retried by [`Acme::run`].
pub async fn check_directory(config: &crate::config::Config) -> Result<(), AcmeError> {
    let uses_acme = config
        .services
        .values()
        .any(|s| s.edge.as_ref().is_some_and(|e| matches!(e.tls, crate::config::TlsSetting::Acme)));
    let Some(settings) = config.proxy.acme.as_ref().filter(|_| uses_acme) else { return Ok(()) };
    let fail = |reason: String| AcmeError::Directory { url: settings.directory.clone(), reason };
    let builder = match &settings.ca {
        Some(ca) => Account::builder_with_root(ca),
        None => Account::builder(),
    }
    .map_err(|e| fail(e.to_string()))?;
    // A throwaway key: `from_parts` only reads the directory.
    let (_, key) = instant_acme::Key::generate_pkcs8().map_err(|e| fail(e.to_string()))?;
    let probe = builder.from_parts("probe".into(), key, settings.directory.clone());
    match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
            Err(fail(format!("does not answer as an ACME directory: {}", crate::logging::error_chain(&e))))
        }
        Err(_) => Err(fail(format!("did not answer within {}s", PROBE_TIMEOUT.as_secs()))),
    }
}

/// One service's certificate.
#[derive(Debug, Clone)]
pub struct AcmeJob {
    /// The service.
    pub service: String,
    /// Its hosts (exact names; ACME HTTP-01 cannot validate wildcards).
    pub hosts: Vec<String>,
    /// Where its chain goes.
    pub cert: PathBuf,
    /// Where its key goes.
    pub key: PathBuf,
}

/// Where a service's ACME certificate and key live.
pub fn paths(state_dir: &Path, service: &str) -> (PathBuf, PathBuf) {
    let dir = state_dir.join("acme");
    (dir.join(format!("{service}.pem")), dir.join(format!("{service}.key")))
}

/// Where challenges are answered: HTTP-01 on the http listeners (through
/// the host router), preferred when there are any, else TLS-ALPN-01 on
/// the https ones (through the certificate resolver).
#[derive(Debug, Clone)]
pub struct Answerers {
    /// The host router of the http listeners, if there are any.
    pub http01: Option<Arc<HostRouter>>,
    /// The certificate resolver of the https listeners, if there are any.
    pub tls_alpn01: Option<Arc<CertResolver>>,
}

/// The ACME client of the agent: obtains and renews every job's
/// certificate until shutdown.
pub struct Acme {
    settings: AcmeSettings,
    dir: PathBuf,
    jobs: Vec<AcmeJob>,
    answerers: Answerers,
    events: EventHub,
}

impl std::fmt::Debug for Acme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acme").field("jobs", &self.jobs).finish_non_exhaustive()
    }
}

/// Removes the challenge answers it set, also when an order fails.
struct Answers<'a> {
    answerers: &'a Answerers,
    tokens: Vec<String>,
    alpn_hosts: Vec<String>,
}

impl Drop for Answers<'_> {
    fn drop(&mut self) {
        if let Some(router) = &self.answerers.http01 {
            for t in &self.tokens {
                router.remove_challenge(t);
            }
        }
        if let Some(resolver) = &self.answerers.tls_alpn01 {
            for h in &self.alpn_hosts {
                resolver.remove_alpn_challenge(h);
            }
        }
    }
}

/// The TLS-ALPN-01 answer for `host`: a self-signed certificate for it
/// carrying the key authorization's digest (RFC 8737).
fn alpn_answer(host: &str, digest: &[u8]) -> Result<Arc<rustls::sign::CertifiedKey>, AcmeError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![host.to_string()])?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key)?;
    Ok(bg_proxy::tls::certified_key_from_pem(&cert.pem(), &key.serialize_pem())?)
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AcmeError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| AcmeError::Io { path: path.to_path_buf(), source };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

impl Acme {
    /// The client for `jobs`, keeping its files in `state_dir/acme/`.
    pub fn new(
        settings: AcmeSettings,
        state_dir: &Path,
        jobs: Vec<AcmeJob>,
        answerers: Answerers,
        events: EventHub,
    ) -> Acme {
        Acme { settings, dir: state_dir.join("acme"), jobs, answerers, events }
    }

    /// When `job`'s certificate is due: now when there is none (or it
    /// does not load), else `acme_renew_before` ahead of its expiry.
    fn due(&self, job: &AcmeJob) -> Instant {
        match bg_proxy::tls::load_cert(&job.cert, &job.key, &job.hosts) {
            Ok(c) => self.renew_at(c.not_after),
            Err(_) => Instant::now(),
        }
    }

    fn renew_at(&self, not_after: i64) -> Instant {
        let at = not_after - self.settings.renew_before.as_secs() as i64;
        Instant::now() + Duration::from_secs(at.saturating_sub(unix_now()).max(0) as u64)
    }

    /// Obtain and renew until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        if let Err(source) = std::fs::create_dir_all(&self.dir) {
            tracing::error!(dir = %self.dir.display(), error = %source, "cannot create the ACME directory");
            return;
        }
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700));
        }
        let mut account: Option<Account> = None;
        let mut next: Vec<Instant> = self.jobs.iter().map(|j| self.due(j)).collect();
        let mut backoff = vec![FIRST_BACKOFF; self.jobs.len()];
        loop {
            let now = Instant::now();
            let soonest = next.iter().min().copied().unwrap_or(now + MAX_SLEEP).min(now + MAX_SLEEP);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(soonest.into()) => {}
            }
            for (i, job) in self.jobs.iter().enumerate() {
                if next[i] > Instant::now() {
                    continue;
                }
                // Looked at again: the files may have been renewed by hand.
                let due = self.due(job);
                if due > Instant::now() {
                    next[i] = due;
                    continue;
                }
                let result = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = self.obtain(&mut account, job) => r,
                };
                match result {
                    Ok(not_after) => {
                        let message = format!(
                            "certificate for {} obtained through ACME, valid until {}",
                            job.hosts.join(", "),
                            humantime::format_rfc3339_seconds(
                                UNIX_EPOCH + Duration::from_secs(not_after.max(0) as u64)
                            )
                        );
                        tracing::info!(service = %job.service, hosts = ?job.hosts, "{message}");
                        self.events.emit(
                            &job.service,
                            None,
                            EventKind::Message { level: "info".into(), message },
                        );
                        backoff[i] = FIRST_BACKOFF;
                        next[i] = self.renew_at(not_after).max(Instant::now() + MIN_RENEW_GAP);
                    }
                    Err(e) => {
                        let message = format!(
                            "obtaining a certificate for {} failed (next try in {}s): {e}",
                            job.hosts.join(", "),
                            backoff[i].as_secs()
                        );
                        tracing::warn!(service = %job.service, "{message}");
                        self.events.emit(
                            &job.service,
                            None,
                            EventKind::Message { level: "warn".into(), message },
                        );
                        next[i] = Instant::now() + backoff[i];
                        backoff[i] = (backoff[i] * 2).min(MAX_BACKOFF);
                    }
                }
            }
        }
    }

    /// The account: read from `account.json`, else created and written.
    async fn account(&self) -> Result<Account, AcmeError> {
        let builder = || match &self.settings.ca {
            Some(ca) => Account::builder_with_root(ca),
            None => Account::builder(),
        };
        let path = self.dir.join("account.json");
        match std::fs::read(&path) {
            Ok(bytes) => {
                let credentials: AccountCredentials = serde_json::from_slice(&bytes)
                    .map_err(|source| AcmeError::Account { path: path.clone(), source })?;
                Ok(builder()?.from_credentials(credentials).await?)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let contact: Vec<&str> = self.settings.contact.iter().map(String::as_str).collect();
                let (account, credentials) = builder()?
                    .create(
                        &NewAccount {
                            contact: &contact,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        self.settings.directory.clone(),
                        None,
                    )
                    .await?;
                let json = serde_json::to_vec_pretty(&credentials)
                    .map_err(|source| AcmeError::Account { path: path.clone(), source })?;
                write_private(&path, &json)?;
                tracing::info!(id = account.id(), "ACME account created");
                Ok(account)
            }
            Err(source) => Err(AcmeError::Io { path, source }),
        }
    }

    /// One order for `job`: HTTP-01 for each name, then the chain and key
    /// written (key first; the watcher loads the pair once both match).
    /// Returns the new certificate's expiry.
    async fn obtain(&self, account: &mut Option<Account>, job: &AcmeJob) -> Result<i64, AcmeError> {
        if account.is_none() {
            *account = Some(self.account().await?);
        }
        let Some(account) = account.as_ref() else { unreachable!("set above") };
        let names = job.hosts.join(", ");
        let identifiers: Vec<Identifier> = job.hosts.iter().cloned().map(Identifier::Dns).collect();
        let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
        let mut answers = Answers { answerers: &self.answerers, tokens: Vec::new(), alpn_hosts: Vec::new() };
        let kind =
            if self.answerers.http01.is_some() { ChallengeType::Http01 } else { ChallengeType::TlsAlpn01 };
        {
            let mut authorizations = order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz = authz?;
                match authz.status {
                    AuthorizationStatus::Pending => {}
                    AuthorizationStatus::Valid => continue,
                    other => {
                        return Err(AcmeError::Order {
                            names,
                            status: format!("with an authorization {other:?}"),
                        })
                    }
                }
                let Some(mut challenge) = authz.challenge(kind.clone()) else {
                    return Err(AcmeError::Order {
                        names,
                        status: format!("without a {kind:?} challenge to answer"),
                    });
                };
                let key_authorization = challenge.key_authorization();
                match (&self.answerers.http01, &self.answerers.tls_alpn01) {
                    (Some(router), _) => {
                        router.set_challenge(&challenge.token, key_authorization.as_str());
                        answers.tokens.push(challenge.token.clone());
                    }
                    (None, Some(resolver)) => {
                        let host = challenge.identifier().to_string();
                        resolver.set_alpn_challenge(
                            &host,
                            alpn_answer(&host, key_authorization.digest().as_ref())?,
                        );
                        answers.alpn_hosts.push(host);
                    }
                    (None, None) => {
                        return Err(AcmeError::Order {
                            names,
                            status: "with no listener to answer on".into(),
                        })
                    }
                }
                challenge.set_ready().await?;
            }
        }
        let status = order.poll_ready(&RetryPolicy::default()).await?;
        if status != OrderStatus::Ready {
            let state = order.state();
            let detail = state.error.as_ref().map(|p| format!(": {p}")).unwrap_or_default();
            return Err(AcmeError::Order { names, status: format!("{status:?}{detail}") });
        }
        drop(answers);
        let key_pem = order.finalize().await?;
        let chain = order.poll_certificate(&RetryPolicy::default()).await?;
        write_private(&job.key, key_pem.as_bytes())?;
        write_private(&job.cert, chain.as_bytes())?;
        let loaded = bg_proxy::tls::load_cert(&job.cert, &job.key, &job.hosts)?;
        Ok(loaded.not_after)
    }
}
