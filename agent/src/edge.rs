//! The shared edge listeners (`[proxy] http` and `https`): the host table
//! built from every service with `hosts`, the certificates of those with
//! `tls = { cert, key }` (watched and reloaded), and the listeners, opened
//! at start and served on the agent's task tracker.

use crate::config::{Config, TlsSetting};
use crate::daemon::AgentError;
use bg_proxy::tls::{CertResolver, CertSource, CertWatcher};
use bg_proxy::{HostRoute, HostRouter, Proxy, ProxyConfig};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often certificate files are looked at for changes.
const CERT_POLL: Duration = Duration::from_secs(1);

/// What the metrics read of the edge: certificate expiry (Unix seconds of
/// `notAfter`) by host, as the watcher last loaded it, and the answers per
/// claimed host.
#[derive(Debug, Clone)]
pub struct EdgeView {
    certs: watch::Receiver<BTreeMap<String, i64>>,
    router: Arc<HostRouter>,
}

impl EdgeView {
    /// Certificate expiry by host.
    pub fn certs(&self) -> BTreeMap<String, i64> {
        self.certs.borrow().clone()
    }

    /// Answers per service and host.
    pub fn hosts(&self) -> Vec<bg_proxy::HostStats> {
        self.router.stats()
    }
}

/// The edge, ready to serve once its listeners are opened.
pub struct Edge {
    router: Arc<HostRouter>,
    tls: Option<Arc<rustls::ServerConfig>>,
    watcher: Option<CertWatcher>,
    /// The listeners' own settings and connection count.
    proxy: Proxy,
    listeners: Vec<(tokio::net::TcpListener, bool)>,
    view: EdgeView,
    acme: Option<crate::acme::Acme>,
}

impl std::fmt::Debug for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edge").field("listeners", &self.listeners.len()).finish_non_exhaustive()
    }
}

impl Edge {
    /// The host table and certificates of `config`, each service routed to
    /// its proxy in `proxies`. Certificates are loaded (and checked) now.
    pub fn new(
        config: &Config,
        proxies: &BTreeMap<String, Proxy>,
        events: &crate::events::EventHub,
    ) -> Result<Edge, AgentError> {
        let mut routes = Vec::new();
        let mut sources = Vec::new();
        let mut jobs = Vec::new();
        for (name, svc) in &config.services {
            let (Some(edge), Some(proxy)) = (&svc.edge, proxies.get(name)) else { continue };
            routes.push(HostRoute {
                service: name.clone(),
                hosts: edge.hosts.clone(),
                path_prefix: edge.path_prefix.clone(),
                strip_prefix: edge.strip_prefix,
                max_request_body: edge.max_request_body,
                redirect_https: edge.redirect_https,
                proxy: proxy.clone(),
            });
            let hosts: Vec<String> = edge.hosts.iter().map(ToString::to_string).collect();
            match &edge.tls {
                TlsSetting::Off => {}
                TlsSetting::Files { cert, key } => {
                    sources.push(CertSource { cert: cert.clone(), key: key.clone(), hosts, required: true });
                }
                TlsSetting::Acme => {
                    let (cert, key) = crate::acme::paths(&config.agent.state_dir, name);
                    sources.push(CertSource {
                        cert: cert.clone(),
                        key: key.clone(),
                        hosts: hosts.clone(),
                        required: false,
                    });
                    jobs.push(crate::acme::AcmeJob { service: name.clone(), hosts, cert, key });
                }
            }
        }
        let router = Arc::new(HostRouter::new());
        router.set(routes);
        let (tx, expiry) = watch::channel(BTreeMap::new());
        let resolver = (!config.proxy.https.is_empty()).then(|| Arc::new(CertResolver::default()));
        let acme = match (&config.proxy.acme, jobs.is_empty()) {
            (Some(settings), false) => Some(crate::acme::Acme::new(
                settings.clone(),
                &config.agent.state_dir,
                jobs,
                crate::acme::Answerers {
                    http01: (!config.proxy.http.is_empty()).then(|| router.clone()),
                    tls_alpn01: resolver.clone(),
                },
                events.clone(),
            )),
            _ => None,
        };
        let (tls, watcher) = match resolver {
            None => (None, None),
            Some(resolver) => {
                let on_load = Box::new(move |s: &CertSource, c: &bg_proxy::tls::LoadedCert| {
                    let not_after = c.not_after;
                    tx.send_modify(|m| {
                        for h in &s.hosts {
                            m.insert(h.clone(), not_after);
                        }
                    });
                });
                let watcher = CertWatcher::new(sources, resolver.clone(), on_load)
                    .map_err(|e| AgentError::Tls(e.to_string()))?;
                (Some(bg_proxy::tls::server_config(resolver)), Some(watcher))
            }
        };
        Ok(Edge {
            router: router.clone(),
            tls,
            watcher,
            proxy: Proxy::new(ProxyConfig::default()),
            listeners: Vec::new(),
            view: EdgeView { certs: expiry, router: router.clone() },
            acme,
        })
    }

    /// Add an opened listener; `tls` for an https one.
    pub fn add_listener(&mut self, listener: tokio::net::TcpListener, tls: bool) {
        if tls {
            if let Ok(addr) = listener.local_addr() {
                self.router.set_https_port(Some(addr.port()));
            }
        }
        self.listeners.push((listener, tls));
    }

    /// What the metrics read.
    pub fn view(&self) -> EdgeView {
        self.view.clone()
    }

    /// Serve every listener and watch the certificates until `shutdown`.
    pub fn serve(self, tracker: &TaskTracker, shutdown: &CancellationToken) {
        for (listener, tls) in self.listeners {
            let tls = if tls { self.tls.clone() } else { None };
            tracker.spawn(self.proxy.clone().serve_edge(
                listener,
                self.router.clone(),
                tls,
                shutdown.clone(),
            ));
        }
        if let Some(watcher) = self.watcher {
            tracker.spawn(watcher.run(CERT_POLL, shutdown.clone()));
        }
        if let Some(acme) = self.acme {
            tracker.spawn(acme.run(shutdown.clone()));
        }
    }
}
