//! The host router of the shared edge listeners: a table from (host, path
//! prefix) to a service's [`Proxy`], swapped atomically like a route table.
//! The most specific host wins (exact before `*.` wildcard), then the
//! longest path prefix; a request no entry takes gets the proxy's own 404.
//! Per entry: the prefix stripped before forwarding, a body limit (413),
//! and a 308 to https for plain-HTTP requests.

use crate::body::ProxyBody;
use crate::forward::{self, ConnCtx};
use crate::Proxy;
use arc_swap::ArcSwap;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, LOCATION};
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

/// A host a service claims: an exact name or a one-level wildcard.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    /// `example.com` (stored lower case).
    Exact(String),
    /// `*.example.org`, stored as `example.org`: one label in front.
    Wildcard(String),
}

/// Why a host name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{name:?} is not a host name: {why}")]
pub struct HostError {
    /// What was given.
    pub name: String,
    /// What is wrong.
    pub why: &'static str,
}

impl HostPattern {
    /// Parse `example.com` or `*.example.org` (letters, digits, `-`, labels
    /// of 1 to 63 characters, 253 at most; no port, no trailing dot).
    pub fn parse(name: &str) -> Result<HostPattern, HostError> {
        let err = |why| HostError { name: name.to_string(), why };
        let lower = name.to_ascii_lowercase();
        let (wildcard, rest) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        if rest.is_empty() {
            return Err(err("it is empty"));
        }
        if rest.len() > 253 {
            return Err(err("longer than 253 characters"));
        }
        for label in rest.split('.') {
            if label.is_empty() {
                return Err(err("it has an empty label (two dots, or a dot at an end)"));
            }
            if label.len() > 63 {
                return Err(err("a label is longer than 63 characters"));
            }
            if label.contains('*') {
                return Err(err("a wildcard may only be the whole first label (`*.example.org`)"));
            }
            if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(err("only letters, digits, `-` and dots are allowed (no port, no scheme)"));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(err("a label may not start or end with `-`"));
            }
        }
        if wildcard && !rest.contains('.') {
            return Err(err("a wildcard needs at least two labels after `*.`"));
        }
        Ok(if wildcard {
            HostPattern::Wildcard(rest.to_string())
        } else {
            HostPattern::Exact(rest.to_string())
        })
    }

    /// Whether `host` (lower case, no port) is one this pattern takes.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Wildcard(suffix) => {
                host.split_once('.').is_some_and(|(label, rest)| !label.is_empty() && rest == suffix)
            }
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

/// Normalize a path prefix: `""` and `"/"` take every path, others start
/// with `/` and lose a trailing `/`.
pub fn normalize_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else if trimmed.starts_with('/') {
        trimmed.to_string()
    } else {
        format!("/{trimmed}")
    }
}

/// Whether `path` lies under `prefix` (normalized): `/app` takes `/app`
/// and `/app/x`, not `/apple`.
fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'))
}

/// One service's claim on the shared listeners.
#[derive(Debug, Clone)]
pub struct HostRoute {
    /// The service's name (for logs).
    pub service: String,
    /// The hosts it takes.
    pub hosts: Vec<HostPattern>,
    /// Path prefix ("" for every path).
    pub path_prefix: String,
    /// Remove the prefix before forwarding.
    pub strip_prefix: bool,
    /// Largest request body accepted; larger gets 413.
    pub max_request_body: Option<u64>,
    /// Plain-HTTP requests get a 308 to https.
    pub redirect_https: bool,
    /// The service's proxy: its route table, drains and counters.
    pub proxy: Proxy,
}

#[derive(Debug, Clone)]
struct Entry {
    prefix: String,
    route: Arc<HostRoute>,
    /// Answers for this host and prefix, by status class (1xx..5xx).
    counts: Arc<HostCounts>,
}

/// Answers counted per host claim, by status class.
#[derive(Debug, Default)]
struct HostCounts {
    host: String,
    classes: [std::sync::atomic::AtomicU64; 5],
}

impl HostCounts {
    /// Count `resp` in its class and pass it on.
    fn count<B>(&self, resp: Response<B>) -> Response<B> {
        let class = (resp.status().as_u16() / 100).clamp(1, 5) as usize - 1;
        self.classes[class].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        resp
    }
}

/// Answers of the shared listeners for one claimed host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostStats {
    /// The service.
    pub service: String,
    /// The host as claimed (`*.example.org` for a wildcard).
    pub host: String,
    /// Answers by status class, 1xx to 5xx.
    pub responses: [u64; 5],
}

/// The compiled table: entries per exact host and per wildcard suffix,
/// longest prefix first.
#[derive(Debug, Default)]
struct HostTable {
    exact: HashMap<String, Vec<Entry>>,
    wildcard: HashMap<String, Vec<Entry>>,
}

impl HostTable {
    fn new(routes: Vec<HostRoute>) -> HostTable {
        let mut table = HostTable::default();
        for route in routes {
            let route = Arc::new(route);
            let prefix = normalize_prefix(&route.path_prefix);
            for host in &route.hosts {
                let (map, key) = match host {
                    HostPattern::Exact(h) => (&mut table.exact, h),
                    HostPattern::Wildcard(s) => (&mut table.wildcard, s),
                };
                let counts = Arc::new(HostCounts { host: host.to_string(), ..HostCounts::default() });
                map.entry(key.clone()).or_default().push(Entry {
                    prefix: prefix.clone(),
                    route: route.clone(),
                    counts,
                });
            }
        }
        for list in table.exact.values_mut().chain(table.wildcard.values_mut()) {
            list.sort_by_key(|e| std::cmp::Reverse(e.prefix.len()));
        }
        table
    }

    /// The entry for `host` (lower case, no port) and `path`.
    fn lookup(&self, host: &str, path: &str) -> Option<&Entry> {
        longest(self.exact.get(host), path).or_else(|| {
            let (label, rest) = host.split_once('.')?;
            if label.is_empty() {
                return None;
            }
            longest(self.wildcard.get(rest), path)
        })
    }
}

/// The first (longest) entry of `list` whose prefix takes `path`.
fn longest<'a>(list: Option<&'a Vec<Entry>>, path: &str) -> Option<&'a Entry> {
    list?.iter().find(|e| under(path, &e.prefix))
}

/// The host table of the shared listeners; cheap to share, swapped in one
/// store by [`HostRouter::set`].
#[derive(Debug, Default)]
pub struct HostRouter {
    table: ArcSwap<HostTable>,
    /// The port https redirects name (`None` for 443).
    https_port: ArcSwap<Option<u16>>,
    /// ACME HTTP-01 answers by token, served on plain listeners at
    /// `/.well-known/acme-challenge/TOKEN` before any claim is looked at.
    challenges: ArcSwap<HashMap<String, String>>,
}

/// A refused HTTP/1.1 body up to this size (by `Content-Length`) is read
/// and dropped before the 413, so the client's connection stays usable;
/// a larger one closes it.
const DRAIN_REFUSED: u64 = 64 * 1024;
/// Longest wait for such a body.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Where ACME HTTP-01 validation asks.
const ACME_CHALLENGE: &str = "/.well-known/acme-challenge/";

impl HostRouter {
    /// A router with no entries (every request 404).
    pub fn new() -> HostRouter {
        HostRouter::default()
    }

    /// Replace the table in one atomic store. Requests that start after it
    /// use the new table.
    pub fn set(&self, routes: Vec<HostRoute>) {
        for r in &routes {
            r.proxy.inner.start_reaper();
        }
        self.table.store(Arc::new(HostTable::new(routes)));
    }

    /// The port a `redirect_https` 308 points at (`None` or 443: none named).
    pub fn set_https_port(&self, port: Option<u16>) {
        self.https_port.store(Arc::new(port.filter(|&p| p != 443)));
    }

    /// Answer ACME HTTP-01 validation for `token` with `key_authorization`.
    pub fn set_challenge(&self, token: &str, key_authorization: &str) {
        self.challenges.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(token.to_string(), key_authorization.to_string());
            m
        });
    }

    /// Stop answering for `token`.
    pub fn remove_challenge(&self, token: &str) {
        self.challenges.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.remove(token);
            m
        });
    }

    /// Answers so far per service and claimed host (summed over prefixes).
    pub fn stats(&self) -> Vec<HostStats> {
        use std::sync::atomic::Ordering::Relaxed;
        let table = self.table.load();
        let mut out: Vec<HostStats> = Vec::new();
        for e in table.exact.values().chain(table.wildcard.values()).flatten() {
            let responses = std::array::from_fn(|i| e.counts.classes[i].load(Relaxed));
            match out.iter_mut().find(|s| s.service == e.route.service && s.host == e.counts.host) {
                Some(s) => s.responses.iter_mut().zip(responses).for_each(|(a, b)| *a += b),
                None => out.push(HostStats {
                    service: e.route.service.clone(),
                    host: e.counts.host.clone(),
                    responses,
                }),
            }
        }
        out.sort_by(|a, b| (&a.service, &a.host).cmp(&(&b.service, &b.host)));
        out
    }

    /// The service that would take `host` and `path`, by name.
    pub fn service_for(&self, host: &str, path: &str) -> Option<String> {
        self.table.load().lookup(&host.to_ascii_lowercase(), path).map(|e| e.route.service.clone())
    }
}

/// The request's host, lower case, without port or trailing dot.
fn request_host<B>(req: &Request<B>) -> Option<String> {
    let raw = req.uri().host().map(str::to_string).or_else(|| {
        let h = req.headers().get(HOST)?.to_str().ok()?;
        let uri: Uri = format!("http://{h}/").parse().ok()?;
        uri.host().map(str::to_string)
    })?;
    Some(raw.trim_end_matches('.').to_ascii_lowercase())
}

fn answer(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::text(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// Serve one request of a shared listener: pick the entry, answer what the
/// entry's rules answer (308, 413), strip the prefix, and hand the request
/// to the service's proxy.
pub(crate) async fn dispatch(
    router: Arc<HostRouter>,
    tls: bool,
    ctx: Arc<ConnCtx>,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    if !tls {
        if let Some(token) = req.uri().path().strip_prefix(ACME_CHALLENGE) {
            let value = router.challenges.load().get(token).cloned();
            return Ok(match value {
                Some(v) => {
                    let mut resp = Response::new(ProxyBody::Full { data: Some(bytes::Bytes::from(v)) });
                    resp.headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
                    resp
                }
                None => answer(StatusCode::NOT_FOUND, "no such ACME challenge\n"),
            });
        }
    }
    let table = router.table.load_full();
    let host = request_host(&req);
    let path = req.uri().path().to_string();
    let Some(entry) = host.as_deref().and_then(|h| table.lookup(h, &path)) else {
        return Ok(answer(StatusCode::NOT_FOUND, "no service for this host and path\n"));
    };
    let route = &entry.route;
    if !tls && route.redirect_https {
        let host = host.unwrap_or_default();
        let pq = req.uri().path_and_query().map_or("/", PathAndQuery::as_str);
        let location = match **router.https_port.load() {
            Some(port) => format!("https://{host}:{port}{pq}"),
            None => format!("https://{host}{pq}"),
        };
        let mut resp = answer(StatusCode::PERMANENT_REDIRECT, "moved to https\n");
        if let Ok(v) = HeaderValue::from_str(&location) {
            resp.headers_mut().insert(LOCATION, v);
        }
        return Ok(entry.counts.count(resp));
    }
    if let Some(max) = route.max_request_body {
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(n) = declared.filter(|&n| n > max) {
            if ctx.h1 && n <= DRAIN_REFUSED {
                // Read and dropped, so that the connection stays usable.
                let mut body = req.into_body();
                let drain = async { while let Some(Ok(_)) = body.frame().await {} };
                let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;
            }
            return Ok(entry.counts.count(answer(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n")));
        }
        // Without a length (chunked, h2): counted while it streams.
        req.extensions_mut().insert(forward::BodyLimit(max));
    }
    if route.strip_prefix && !entry.prefix.is_empty() {
        let pq = req.uri().path_and_query().map_or("/", PathAndQuery::as_str);
        let rest = &pq[entry.prefix.len()..];
        let stripped =
            if rest.is_empty() || rest.starts_with('?') { format!("/{rest}") } else { rest.to_string() };
        let mut parts = req.uri().clone().into_parts();
        if let Ok(pq) = PathAndQuery::try_from(stripped) {
            parts.path_and_query = Some(pq);
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
    }
    let inner = route.proxy.inner.clone();
    let counts = entry.counts.clone();
    drop(table);
    let Ok(resp) = forward::handle(inner, ctx, req).await;
    Ok(counts.count(resp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ProxyConfig;
    use proptest::prelude::*;

    fn route(service: &str, hosts: &[&str], prefix: &str) -> HostRoute {
        HostRoute {
            service: service.into(),
            hosts: hosts.iter().map(|h| HostPattern::parse(h).unwrap()).collect(),
            path_prefix: prefix.into(),
            strip_prefix: true,
            max_request_body: None,
            redirect_https: false,
            proxy: Proxy::new(ProxyConfig::default()),
        }
    }

    fn pick(table: &HostTable, host: &str, path: &str) -> Option<String> {
        table.lookup(host, path).map(|e| e.route.service.clone())
    }

    #[test]
    fn host_names_are_checked() {
        assert!(HostPattern::parse("example.com").is_ok());
        assert_eq!(HostPattern::parse("*.Example.org").unwrap(), HostPattern::Wildcard("example.org".into()));
        for bad in ["", "a..b", "example.com:443", "http://x", "a.*.b", "*.org", "-a.com", "a_b.com", "*"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn most_specific_host_then_longest_prefix() {
        let table = HostTable::new(vec![
            route("wild", &["*.example.org"], ""),
            route("exact", &["api.example.org"], "/"),
            route("app", &["api.example.org"], "/app"),
            route("deep", &["api.example.org"], "/app/v2/"),
        ]);
        assert_eq!(pick(&table, "www.example.org", "/app").as_deref(), Some("wild"));
        assert_eq!(pick(&table, "api.example.org", "/").as_deref(), Some("exact"));
        assert_eq!(pick(&table, "api.example.org", "/app").as_deref(), Some("app"));
        assert_eq!(pick(&table, "api.example.org", "/apple").as_deref(), Some("exact"));
        assert_eq!(pick(&table, "api.example.org", "/app/v2/x").as_deref(), Some("deep"));
        assert_eq!(pick(&table, "example.org", "/"), None);
        assert_eq!(pick(&table, "a.b.example.org", "/"), None);
    }

    #[test]
    fn an_exact_host_without_a_matching_prefix_falls_back_to_the_wildcard() {
        let table = HostTable::new(vec![
            route("wild", &["*.example.org"], ""),
            route("app", &["a.example.org"], "/app"),
        ]);
        assert_eq!(pick(&table, "a.example.org", "/other").as_deref(), Some("wild"));
        assert_eq!(pick(&table, "a.example.org", "/app/x").as_deref(), Some("app"));
    }

    fn label() -> impl Strategy<Value = String> {
        "[a-c]{1,2}"
    }

    fn prefix() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), "/[a-c]{1,2}", "/[a-c]{1,2}/[a-c]{1,2}"]
    }

    proptest! {
        /// The chosen entry is one that matches, and no matching entry is
        /// more specific: exact before wildcard, then the longest prefix.
        #[test]
        fn the_pick_is_the_most_specific_match(
            claims in proptest::collection::vec((any::<bool>(), label(), prefix()), 1..8),
            sub in label(),
            path in "(/[a-c]{1,2}){0,3}",
        ) {
            let path = if path.is_empty() { "/".to_string() } else { path };
            let routes: Vec<HostRoute> = claims.iter().enumerate().map(|(i, (wild, l, p))| {
                let host = if *wild { format!("*.{l}.test") } else { format!("{sub}.{l}.test") };
                route(&i.to_string(), &[&host], p)
            }).collect();
            let table = HostTable::new(routes.clone());
            for l in claims.iter().map(|c| c.1.clone()) {
                let host = format!("{sub}.{l}.test");
                let matching: Vec<(bool, usize, &HostRoute)> = routes.iter()
                    .filter(|r| r.hosts[0].matches(&host) && under(&path, &normalize_prefix(&r.path_prefix)))
                    .map(|r| (matches!(r.hosts[0], HostPattern::Exact(_)), normalize_prefix(&r.path_prefix).len(), r))
                    .collect();
                match table.lookup(&host, &path) {
                    None => prop_assert!(matching.is_empty()),
                    Some(e) => {
                        let best = matching.iter().map(|(x, n, _)| (*x, *n)).max().unwrap();
                        let got = matching.iter().find(|(_, _, r)| r.service == e.route.service).unwrap();
                        prop_assert_eq!((got.0, got.1), best);
                    }
                }
            }
        }
    }
}
