//! Header rewriting at the proxy's two edges: hop-by-hop headers removed in
//! both directions, `X-Forwarded-*` added, HTTP/2 requests turned into
//! HTTP/1.1 ones (Host from `:authority`, origin-form target), and the
//! cookie lookups the backend choice needs.

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, COOKIE, HOST, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::{Request, Uri, Version};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Whether the request asks to switch protocols (`Connection: upgrade` and
/// an `Upgrade` header).
pub(crate) fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.headers().contains_key(UPGRADE) && connection_has(req.headers(), "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(CONNECTION).iter().any(|v| {
        v.to_str().map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))).unwrap_or(false)
    })
}

/// Remove the headers that only concern one hop. With `upgrading`, the
/// `Upgrade` header is kept and `Connection: upgrade` set again.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrading: bool) {
    if headers.contains_key(CONNECTION) {
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
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(TE);
    headers.remove(TRAILER);
    headers.remove(TRANSFER_ENCODING);
    if upgrading {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
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
    *req.version_mut() = Version::HTTP_11;

    let headers = req.headers_mut();
    strip_hop_by_hop(headers, upgrading);

    let forwarded_for = match headers.get(&X_FORWARDED_FOR) {
        None => client_ip.clone(),
        Some(_) => {
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
        }
    };
    headers.insert(X_FORWARDED_FOR.clone(), forwarded_for);
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    if let Some(host) = headers.get(HOST).cloned() {
        headers.insert(X_FORWARDED_HOST.clone(), host);
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
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1; bg-color=green"));
        h.append(COOKIE, HeaderValue::from_static("bg-preview = blue"));
        assert_eq!(cookie(&h, "bg-color"), Some("green"));
        assert_eq!(cookie(&h, "bg-preview"), Some("blue"));
        assert_eq!(cookie(&h, "bg"), None);
    }
}
