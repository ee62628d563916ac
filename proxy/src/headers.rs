//! Header rewriting at the proxy's two edges: hop-by-hop headers removed in
//! both directions, `X-Forwarded-*` added, HTTP/2 requests turned into
//! HTTP/1.1 ones (Host from `:authority`, origin-form target, split
//! `Cookie` fields joined), and the cookie lookups the backend choice
//! needs.
//!
//! This runs twice per request, so the common case is kept cheap: one pass
//! over the map's names, without hashing, finds out which hop-by-hop
//! headers are present, and only those are removed. Each `HeaderMap`
//! lookup hashes the name, and removing all seven hop-by-hop names by
//! lookup, present or not, used to cost more than the rest of the
//! rewriting together.

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, COOKIE, HOST, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::{Request, Uri, Version};

/// The client chain; ours is appended to what earlier proxies wrote.
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// The scheme the client used: always `http`, the proxy has no TLS.
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// A copy of the client's Host.
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// Hop-by-hop (RFC 9110 section 7.6.1), not a standard name in `http`.
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
/// Hop-by-hop by custom, not a standard name in `http`.
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// How many headers `prepare_request` adds; room is reserved in one step
/// so a small map grows at most once (cheap when it already has room, as
/// hyper's recycled maps usually do).
const ADDED: usize = 3;

/// What one pass over a map's names found: a bit per hop-by-hop header
/// present (see the `HOP_*` constants) and whether there is an
/// `X-Forwarded-For` to append to.
#[derive(Debug, Clone, Copy, Default)]
struct Present {
    /// `HOP_*` bits of the hop-by-hop headers in the map.
    hop: u8,
    /// Whether `X-Forwarded-For` is in the map.
    forwarded_for: bool,
    /// Whether `Cookie` is in the map.
    cookie: bool,
}

/// `Connection` is present.
const HOP_CONNECTION: u8 = 1 << 0;
/// `Keep-Alive` is present.
const HOP_KEEP_ALIVE: u8 = 1 << 1;
/// `Proxy-Connection` is present.
const HOP_PROXY_CONNECTION: u8 = 1 << 2;
/// `TE` is present.
const HOP_TE: u8 = 1 << 3;
/// `Trailer` is present.
const HOP_TRAILER: u8 = 1 << 4;
/// `Transfer-Encoding` is present.
const HOP_TRANSFER_ENCODING: u8 = 1 << 5;
/// `Upgrade` is present.
const HOP_UPGRADE: u8 = 1 << 6;

impl Present {
    /// Look at every name once. `keys()` walks the map's entries in order
    /// without hashing, and matching on the (lower-case) name is a switch
    /// on its length plus at most two short comparisons.
    fn scan(headers: &HeaderMap) -> Present {
        let mut found = Present::default();
        for name in headers.keys() {
            found.hop |= match name.as_str() {
                "connection" => HOP_CONNECTION,
                "keep-alive" => HOP_KEEP_ALIVE,
                "proxy-connection" => HOP_PROXY_CONNECTION,
                "te" => HOP_TE,
                "trailer" => HOP_TRAILER,
                "transfer-encoding" => HOP_TRANSFER_ENCODING,
                "upgrade" => HOP_UPGRADE,
                "x-forwarded-for" => {
                    found.forwarded_for = true;
                    0
                }
                "cookie" => {
                    found.cookie = true;
                    0
                }
                _ => 0,
            };
        }
        found
    }

    /// Whether the hop-by-hop header with bit `bit` is present.
    fn has(self, bit: u8) -> bool {
        self.hop & bit != 0
    }
}

/// Whether the request asks to switch protocols (`Connection: upgrade` and
/// an `Upgrade` header).
pub(crate) fn is_upgrade<B>(req: &Request<B>) -> bool {
    // A walk over the names is cheaper than hashing `upgrade` for the few
    // headers a request has.
    req.headers().keys().any(|k| *k == UPGRADE) && connection_has(req.headers(), "upgrade")
}

/// Whether a `Connection` header lists `token`.
fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(CONNECTION).iter().any(|v| {
        v.to_str().map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))).unwrap_or(false)
    })
}

/// Remove the headers that only concern one hop. With `upgrading`, the
/// `Upgrade` header is kept and `Connection: upgrade` set again.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrading: bool) {
    let present = Present::scan(headers);
    strip_present(headers, present, upgrading);
}

/// [`strip_hop_by_hop`] once the names present are known: only those are
/// removed, so a map without hop-by-hop headers is not touched (unless
/// `upgrading`, which sets `Connection: upgrade`).
fn strip_present(headers: &mut HeaderMap, present: Present, upgrading: bool) {
    if present.hop == 0 && !upgrading {
        return;
    }
    if present.has(HOP_CONNECTION) {
        // Headers named in Connection are hop-by-hop too. Values are cloned
        // (cheap, reference counted) so the map can be changed meanwhile.
        let named: Vec<HeaderValue> = headers.get_all(CONNECTION).iter().cloned().collect();
        for value in &named {
            if let Ok(s) = value.to_str() {
                for token in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    if upgrading && token.eq_ignore_ascii_case("upgrade") {
                        continue;
                    }
                    headers.remove(token);
                }
            }
        }
        headers.remove(CONNECTION);
    }
    // Removing a name that a Connection token already removed is harmless;
    // names that were never there are skipped without a lookup.
    if present.has(HOP_KEEP_ALIVE) {
        headers.remove(&KEEP_ALIVE);
    }
    if present.has(HOP_PROXY_CONNECTION) {
        headers.remove(&PROXY_CONNECTION);
    }
    if present.has(HOP_TE) {
        headers.remove(TE);
    }
    if present.has(HOP_TRAILER) {
        headers.remove(TRAILER);
    }
    if present.has(HOP_TRANSFER_ENCODING) {
        headers.remove(TRANSFER_ENCODING);
    }
    if upgrading {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else if present.has(HOP_UPGRADE) {
        headers.remove(UPGRADE);
    }
}

/// Turn a client's request into the one sent upstream over HTTP/1.1.
/// `client_ip` is the client's address, formatted once per connection.
pub(crate) fn prepare_request<B>(req: &mut Request<B>, client_ip: &HeaderValue, upgrading: bool) {
    // HTTP/2 (and absolute-form HTTP/1.1) carry the host in the target.
    if let Some(authority) = req.uri().authority() {
        if !req.headers().contains_key(HOST) {
            if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
                req.headers_mut().insert(HOST, v);
            }
        }
        let origin = req
            .uri()
            .path_and_query()
            .map(|pq| Uri::from(pq.clone()))
            .unwrap_or_else(|| Uri::from_static("/"));
        *req.uri_mut() = origin;
    }
    let h2 = req.version() == Version::HTTP_2;
    *req.version_mut() = Version::HTTP_11;

    let headers = req.headers_mut();
    let mut present = Present::scan(headers);
    if h2 && present.cookie {
        join_cookies(headers);
    }
    if present.hop != 0 || upgrading {
        strip_present(headers, present, upgrading);
        // Connection may have named X-Forwarded-For; look again.
        present.forwarded_for = present.forwarded_for && headers.contains_key(&X_FORWARDED_FOR);
    }
    headers.reserve(ADDED);

    let forwarded_for = if present.forwarded_for {
        // Rare path: append to what earlier proxies wrote.
        let mut joined = String::new();
        for v in headers.get_all(&X_FORWARDED_FOR) {
            if let Ok(s) = v.to_str() {
                joined.push_str(s);
                joined.push_str(", ");
            }
        }
        joined.push_str(client_ip.to_str().unwrap_or_default());
        HeaderValue::from_str(&joined).unwrap_or_else(|_| client_ip.clone())
    } else {
        client_ip.clone()
    };
    headers.insert(X_FORWARDED_FOR.clone(), forwarded_for);
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    if let Some(host) = headers.get(HOST).cloned() {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
}

/// HTTP/2 lets a client split its cookies into one field per cookie (RFC
/// 9113 §8.2.3, for better header compression); an HTTP/1.1 server expects
/// one `Cookie` line, so they are joined with `"; "` in their order.
fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(COOKIE).iter().nth(1).is_none() {
        return;
    }
    let mut joined: Vec<u8> = Vec::new();
    for v in headers.get_all(COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    // The parts were valid field values, and so is their join.
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(COOKIE, value);
    }
}

/// Turn a backend's response into the one sent to the client.
pub(crate) fn prepare_response(headers: &mut HeaderMap, upgrading: bool) {
    strip_hop_by_hop(headers, upgrading);
}

/// The value of cookie `name`, if the request carries it.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    for value in headers.get_all(COOKIE) {
        let Ok(s) = value.to_str() else { continue };
        for pair in s.split(';') {
            if let Some((k, v)) = pair.trim().split_once('=') {
                if k.trim() == name {
                    return Some(v.trim());
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_named_ones_too() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn upgrades_keep_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[UPGRADE], "websocket");
        assert_eq!(h[CONNECTION], "upgrade");
    }

    #[test]
    fn h2_request_becomes_http11_with_host_and_forwarded_headers() {
        let mut req = Request::builder()
            .version(Version::HTTP_2)
            .uri("http://example.test:8080/a/b?c=1")
            .header("x-forwarded-for", "10.0.0.1")
            .body(())
            .unwrap();
        prepare_request(&mut req, &HeaderValue::from_static("127.0.0.1"), false);
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.uri(), "/a/b?c=1");
        assert_eq!(req.headers()[HOST], "example.test:8080");
        assert_eq!(req.headers()["x-forwarded-host"], "example.test:8080");
        assert_eq!(req.headers()["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(req.headers()["x-forwarded-proto"], "http");
    }

    #[test]
    fn h2_cookie_fields_are_joined_for_http11_and_http11_ones_left_alone() {
        let mut req = Request::builder()
            .version(Version::HTTP_2)
            .uri("http://example.test/")
            .header(COOKIE, "a=1")
            .header("accept", "*/*")
            .header(COOKIE, "bg-color=green")
            .header(COOKIE, "b=2")
            .body(())
            .unwrap();
        prepare_request(&mut req, &HeaderValue::from_static("127.0.0.1"), false);
        let cookies: Vec<_> = req.headers().get_all(COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1; bg-color=green; b=2"]);

        let mut req = Request::builder()
            .version(Version::HTTP_2)
            .uri("http://example.test/")
            .header(COOKIE, "only=1")
            .body(())
            .unwrap();
        prepare_request(&mut req, &HeaderValue::from_static("127.0.0.1"), false);
        assert_eq!(req.headers().get_all(COOKIE).iter().collect::<Vec<_>>(), ["only=1"]);

        // Two Cookie lines from an HTTP/1.1 client are its own business.
        let mut req =
            Request::builder().uri("/").header(COOKIE, "a=1").header(COOKIE, "b=2").body(()).unwrap();
        prepare_request(&mut req, &HeaderValue::from_static("127.0.0.1"), false);
        assert_eq!(req.headers().get_all(COOKIE).iter().count(), 2);
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1; bg-color=green"));
        h.append(COOKIE, HeaderValue::from_static("bg-preview = blue"));
        assert_eq!(cookie(&h, "bg-color"), Some("green"));
        assert_eq!(cookie(&h, "bg-preview"), Some("blue"));
        assert_eq!(cookie(&h, "bg"), None);
    }

    /// The seven hop-by-hop names `strip_hop_by_hop` knows without being told.
    const HOP_NAMES: [&str; 7] =
        ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"];

    /// The rewriting as it was before the single pass over the names: every
    /// hop-by-hop name removed by lookup. The new code must agree with it.
    fn reference_strip(headers: &mut HeaderMap, upgrading: bool) {
        if headers.contains_key(CONNECTION) {
            let named: Vec<HeaderValue> = headers.get_all(CONNECTION).iter().cloned().collect();
            for value in &named {
                if let Ok(s) = value.to_str() {
                    for token in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                        if upgrading && token.eq_ignore_ascii_case("upgrade") {
                            continue;
                        }
                        headers.remove(token);
                    }
                }
            }
            headers.remove(CONNECTION);
        }
        for name in ["keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding"] {
            headers.remove(name);
        }
        if upgrading {
            headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        } else {
            headers.remove(UPGRADE);
        }
    }

    /// `prepare_request` as it was, on top of [`reference_strip`].
    fn reference_prepare<B>(req: &mut Request<B>, client_ip: &HeaderValue, upgrading: bool) {
        if let Some(authority) = req.uri().authority() {
            if !req.headers().contains_key(HOST) {
                if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
                    req.headers_mut().insert(HOST, v);
                }
            }
            let origin = req
                .uri()
                .path_and_query()
                .map(|pq| Uri::from(pq.clone()))
                .unwrap_or_else(|| Uri::from_static("/"));
            *req.uri_mut() = origin;
        }
        *req.version_mut() = Version::HTTP_11;
        let headers = req.headers_mut();
        reference_strip(headers, upgrading);
        let forwarded_for = match headers.get(&X_FORWARDED_FOR) {
            None => client_ip.clone(),
            Some(_) => {
                let mut joined = String::new();
                for v in headers.get_all(&X_FORWARDED_FOR) {
                    if let Ok(s) = v.to_str() {
                        joined.push_str(s);
                        joined.push_str(", ");
                    }
                }
                joined.push_str(client_ip.to_str().unwrap_or_default());
                HeaderValue::from_str(&joined).unwrap_or_else(|_| client_ip.clone())
            }
        };
        headers.insert(X_FORWARDED_FOR.clone(), forwarded_for);
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
        if let Some(host) = headers.get(HOST).cloned() {
            headers.insert(X_FORWARDED_HOST.clone(), host);
        }
    }

    /// A map from `(name, value)` pairs, appended in order.
    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    /// Names in the map's order, one per value.
    fn names(h: &HeaderMap) -> Vec<&str> {
        h.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[test]
    fn ordinary_request_takes_the_fast_path_and_gains_forwarded_headers() {
        let mut req = Request::builder()
            .uri("/index.html")
            .header(HOST, "app.test")
            .header("user-agent", "curl/8")
            .header("accept", "*/*")
            .header("cookie", "bg-color=blue")
            .body(())
            .unwrap();
        assert_eq!(Present::scan(req.headers()).hop, 0);
        prepare_request(&mut req, &HeaderValue::from_static("192.0.2.7"), false);
        assert_eq!(req.uri(), "/index.html");
        assert_eq!(
            names(req.headers()),
            [
                "host",
                "user-agent",
                "accept",
                "cookie",
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-forwarded-host"
            ]
        );
        assert_eq!(req.headers()["x-forwarded-for"], "192.0.2.7");
        assert_eq!(req.headers()["x-forwarded-proto"], "http");
        assert_eq!(req.headers()["x-forwarded-host"], "app.test");
        assert_eq!(req.headers()["user-agent"], "curl/8");
    }

    #[test]
    fn ordinary_response_is_left_alone() {
        let original = map(&[
            ("content-type", "text/plain"),
            ("content-length", "2"),
            ("date", "Mon, 01 Jan 2024 00:00:00 GMT"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
        ]);
        let mut h = original.clone();
        prepare_response(&mut h, false);
        assert_eq!(h, original);
        assert_eq!(names(&h), names(&original));
    }

    #[test]
    fn each_hop_by_hop_header_alone_is_removed() {
        for name in HOP_NAMES {
            let mut h = map(&[(name, "x"), ("x-kept", "1")]);
            strip_hop_by_hop(&mut h, false);
            assert_eq!(names(&h), ["x-kept"], "{name}");
        }
    }

    #[test]
    fn upgrading_without_hop_by_hop_headers_still_sets_connection() {
        let mut h = map(&[("x-kept", "1")]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[CONNECTION], "upgrade");
        assert_eq!(h["x-kept"], "1");
    }

    #[test]
    fn websocket_upgrade_keeps_upgrade_drops_named_and_appends_forwarded_for() {
        let mut req = Request::builder()
            .uri("/ws")
            .header(HOST, "app.test:8080")
            .header(CONNECTION, "keep-alive, Upgrade, X-Secret")
            .header(UPGRADE, "websocket")
            .header("x-secret", "1")
            .header("keep-alive", "timeout=5")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("x-forwarded-for", "203.0.113.1")
            .header("x-forwarded-for", "198.51.100.2")
            .header("x-forwarded-proto", "https")
            .body(())
            .unwrap();
        assert!(is_upgrade(&req));
        prepare_request(&mut req, &HeaderValue::from_static("127.0.0.1"), true);
        let h = req.headers();
        assert_eq!(h[UPGRADE], "websocket");
        assert_eq!(h[CONNECTION], "upgrade");
        assert_eq!(h.get_all(CONNECTION).iter().count(), 1);
        assert!(!h.contains_key("x-secret"));
        assert!(!h.contains_key("keep-alive"));
        assert_eq!(h["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(
            h.get_all("x-forwarded-for").iter().collect::<Vec<_>>(),
            ["203.0.113.1, 198.51.100.2, 127.0.0.1"]
        );
        // What the client claimed is replaced: this hop is plain HTTP.
        assert_eq!(h.get_all("x-forwarded-proto").iter().collect::<Vec<_>>(), ["http"]);
        assert_eq!(h["x-forwarded-host"], "app.test:8080");
    }

    #[test]
    fn not_upgrading_drops_upgrade_and_chunked_framing() {
        let mut req = Request::builder()
            .uri("/")
            .header(HOST, "app.test")
            .header(UPGRADE, "h2c")
            .header(CONNECTION, "Upgrade, HTTP2-Settings")
            .header("http2-settings", "AAMAAABkAAQAAP__")
            .header(TRANSFER_ENCODING, "chunked")
            .header(TE, "trailers")
            .header(TRAILER, "x-checksum")
            .header("proxy-connection", "keep-alive")
            .body(())
            .unwrap();
        prepare_request(&mut req, &HeaderValue::from_static("127.0.0.1"), false);
        assert_eq!(
            names(req.headers()),
            ["host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"]
        );
    }

    #[test]
    fn connection_naming_host_or_forwarded_for_removes_them_first() {
        let mut req = Request::builder()
            .uri("/")
            .header(HOST, "app.test")
            .header(CONNECTION, "host, x-forwarded-for")
            .header("x-forwarded-for", "203.0.113.1")
            .body(())
            .unwrap();
        prepare_request(&mut req, &HeaderValue::from_static("127.0.0.1"), false);
        let h = req.headers();
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert!(!h.contains_key(HOST));
        assert!(!h.contains_key("x-forwarded-host"));
    }

    #[test]
    fn absolute_form_request_becomes_origin_form_keeping_its_host() {
        let mut req =
            Request::builder().uri("http://other.test/p?q").header(HOST, "app.test").body(()).unwrap();
        prepare_request(&mut req, &HeaderValue::from_static("127.0.0.1"), false);
        assert_eq!(req.uri(), "/p?q");
        assert_eq!(req.headers().get_all(HOST).iter().collect::<Vec<_>>(), ["app.test"]);
        assert_eq!(req.headers()["x-forwarded-host"], "app.test");
    }

    #[test]
    fn h2_request_without_path_gets_slash_and_host_from_authority() {
        let mut req = Request::builder()
            .version(Version::HTTP_2)
            .uri("http://example.test")
            .header("accept", "*/*")
            .body(())
            .unwrap();
        prepare_request(&mut req, &HeaderValue::from_static("::1"), false);
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.uri(), "/");
        assert_eq!(req.headers()[HOST], "example.test");
        assert_eq!(req.headers()["x-forwarded-host"], "example.test");
        assert_eq!(req.headers()["x-forwarded-for"], "::1");
    }

    #[test]
    fn agrees_with_the_lookup_per_name_version_on_every_mix() {
        let connections = ["", "close", "Upgrade", "keep-alive, x-secret", "x-forwarded-for, Host", ", ,te"];
        for mask in 0u32..(1 << HOP_NAMES.len()) {
            for connection in connections {
                for upgrading in [false, true] {
                    for forwarded in [false, true] {
                        let mut pairs = vec![("host", "app.test"), ("x-secret", "s"), ("accept", "*/*")];
                        for (i, name) in HOP_NAMES.iter().enumerate() {
                            if mask & (1 << i) != 0 && *name != "connection" {
                                pairs.push((name, "v"));
                            }
                        }
                        if mask & 1 != 0 && !connection.is_empty() {
                            pairs.push(("connection", connection));
                        }
                        if forwarded {
                            pairs.push(("x-forwarded-for", "203.0.113.1"));
                        }
                        let headers = map(&pairs);
                        let case = format!("{pairs:?} upgrading={upgrading}");

                        let (mut ours, mut theirs) = (headers.clone(), headers.clone());
                        strip_hop_by_hop(&mut ours, upgrading);
                        reference_strip(&mut theirs, upgrading);
                        assert_eq!(ours, theirs, "strip: {case}");
                        assert_eq!(names(&ours), names(&theirs), "strip order: {case}");

                        let ip = HeaderValue::from_static("127.0.0.1");
                        let mut ours = Request::new(());
                        *ours.headers_mut() = headers.clone();
                        let mut theirs = Request::new(());
                        *theirs.headers_mut() = headers;
                        prepare_request(&mut ours, &ip, upgrading);
                        reference_prepare(&mut theirs, &ip, upgrading);
                        assert_eq!(ours.headers(), theirs.headers(), "prepare: {case}");
                        assert_eq!(names(ours.headers()), names(theirs.headers()), "prepare order: {case}");
                        assert_eq!(ours.uri(), theirs.uri());
                    }
                }
            }
        }
    }
}
