//! `[proxy]` (the shared edge listeners) and a service's edge keys
//! (`hosts`, `path_prefix`, `strip_prefix`, `tls`, `redirect_https`,
//! `max_request_body`), checked into [`EdgeConfig`] and [`ServiceEdge`]:
//! host names, conflicting claims, certificate files (key mode, key match,
//! expiry, names covered).

use super::claims::Claims;
use super::validate::Ctx;
use super::{RawProxy, RawService, RawTls};
use crate::api::ByteSize;
use crate::config::{
    AcmeSettings, ConfigError, EdgeConfig, ServiceEdge, TlsSetting, DEFAULT_ACME_RENEW_BEFORE,
};
use bg_proxy::{normalize_prefix, HostPattern};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use toml::Spanned;

/// `[proxy]`, its listeners claimed in `taken`.
pub(super) fn proxy(cx: &Ctx<'_>, raw: &RawProxy, taken: &mut Claims) -> Result<EdgeConfig, ConfigError> {
    let acme = acme(cx, raw)?;
    let mut addrs = |list: &Option<super::SpannedList>, key: &str| -> Result<Vec<SocketAddr>, ConfigError> {
        let Some(list) = list else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for (i, v) in list.get_ref().iter().enumerate() {
            let item_key = format!("{key}[{i}]");
            let addr = cx.socket_addr(v, &item_key)?;
            if let Err((other, by)) = taken.claim(addr, item_key.clone()) {
                return Err(cx.err(
                    v.span(),
                    &item_key,
                    format!(
                        "{}: every listener needs its own address",
                        super::validate::clash_message(addr, other, &by)
                    ),
                ));
            }
            out.push(addr);
        }
        Ok(out)
    };
    let http = addrs(&raw.http, "proxy.http")?;
    let https = addrs(&raw.https, "proxy.https")?;
    let max_request_body = body_limit(cx, &raw.max_request_body, "proxy.max_request_body")?;
    Ok(EdgeConfig { http, https, max_request_body, acme })
}

fn acme(cx: &Ctx<'_>, raw: &RawProxy) -> Result<Option<AcmeSettings>, ConfigError> {
    let Some(dir) = &raw.acme_directory else {
        for (v, key) in [
            (&raw.acme_contact, "proxy.acme_contact"),
            (&raw.acme_ca, "proxy.acme_ca"),
            (&raw.acme_renew_before, "proxy.acme_renew_before"),
        ] {
            if let Some(v) = v {
                return Err(cx.err(
                    v.span(),
                    key,
                    "only applies with acme_directory: set it, or remove this key",
                ));
            }
        }
        return Ok(None);
    };
    let directory = dir.get_ref().trim().to_string();
    if !directory.starts_with("https://") {
        return Err(cx.err(
            dir.span(),
            "proxy.acme_directory",
            format!(
                "{directory:?} is not an https URL, e.g. \"https://acme-v02.api.letsencrypt.org/directory\""
            ),
        ));
    }
    let contact = raw.acme_contact.as_ref().map(|c| c.get_ref().trim().to_string());
    if let (Some(c), Some(v)) = (&contact, &raw.acme_contact) {
        if !c.starts_with("mailto:") {
            return Err(cx.err(v.span(), "proxy.acme_contact", format!("{c:?} must be a mailto: URL")));
        }
    }
    let ca = match &raw.acme_ca {
        None => None,
        Some(v) => {
            let p = PathBuf::from(v.get_ref());
            if let Err(e) = std::fs::read(&p) {
                return Err(cx.err(v.span(), "proxy.acme_ca", format!("cannot read {}: {e}", p.display())));
            }
            Some(p)
        }
    };
    let renew_before =
        cx.duration(&raw.acme_renew_before, "proxy.acme_renew_before", DEFAULT_ACME_RENEW_BEFORE)?;
    Ok(Some(AcmeSettings { directory, contact, ca, renew_before }))
}

fn body_limit(cx: &Ctx<'_>, v: &Option<Spanned<String>>, key: &str) -> Result<Option<u64>, ConfigError> {
    let Some(v) = v else { return Ok(None) };
    let size: ByteSize = v.get_ref().parse().map_err(|e: String| cx.err(v.span(), key, e))?;
    if size.0 == 0 {
        return Err(cx.err(v.span(), key, "must be above zero, e.g. \"100MiB\""));
    }
    Ok(Some(size.0))
}

/// A service's edge keys; `None` when it has no `hosts` (and so none of
/// the others may be set).
pub(super) fn service(
    cx: &Ctx<'_>,
    prefix: &str,
    name_span: std::ops::Range<usize>,
    raw: &RawService,
    edge: &EdgeConfig,
) -> Result<Option<ServiceEdge>, ConfigError> {
    let key = |k: &str| format!("{prefix}.{k}");
    let Some(hosts_raw) = &raw.hosts else {
        let stray = [
            (raw.path_prefix.as_ref().map(|v| v.span()), "path_prefix"),
            (raw.strip_prefix.as_ref().map(|v| v.span()), "strip_prefix"),
            (raw.tls.as_ref().map(|v| v.span()), "tls"),
            (raw.redirect_https.as_ref().map(|v| v.span()), "redirect_https"),
            (raw.max_request_body.as_ref().map(|v| v.span()), "max_request_body"),
        ];
        if let Some((Some(span), k)) = stray.into_iter().find(|(s, _)| s.is_some()) {
            return Err(cx.err(
                span,
                &key(k),
                "only applies to a service with hosts: add hosts = [\"example.com\"]",
            ));
        }
        if raw.listen.is_none() {
            return Err(cx.err(
                name_span,
                &key("listen"),
                "is missing: a service needs listen = [\"0.0.0.0:8080\"], hosts = [\"example.com\"] on the [proxy] listeners, or both",
            ));
        }
        return Ok(None);
    };
    let hosts_key = key("hosts");
    if hosts_raw.get_ref().is_empty() {
        return Err(cx.err(
            hosts_raw.span(),
            &hosts_key,
            "is empty: expected at least one host, e.g. [\"example.com\"]",
        ));
    }
    if edge.http.is_empty() && edge.https.is_empty() {
        return Err(cx.err(
            hosts_raw.span(),
            &hosts_key,
            "needs a shared listener: set [proxy] http = [\"0.0.0.0:80\"] and/or https = [\"0.0.0.0:443\"]",
        ));
    }
    let mut hosts = Vec::new();
    for (i, h) in hosts_raw.get_ref().iter().enumerate() {
        let pattern = HostPattern::parse(h.get_ref().trim())
            .map_err(|e| cx.err(h.span(), &format!("{hosts_key}[{i}]"), e.to_string()))?;
        if hosts.contains(&pattern) {
            return Err(cx.err(h.span(), &format!("{hosts_key}[{i}]"), format!("{pattern} is listed twice")));
        }
        hosts.push(pattern);
    }
    let path_prefix = match &raw.path_prefix {
        None => String::new(),
        Some(p) => {
            let s = p.get_ref();
            if !s.starts_with('/') || s.contains(['?', '#', ' ']) || s.contains("//") {
                return Err(cx.err(
                    p.span(),
                    &key("path_prefix"),
                    format!("{s:?} is not a path prefix: expected e.g. \"/app\" (starting with /, no query)"),
                ));
            }
            normalize_prefix(s)
        }
    };
    let strip_prefix = raw.strip_prefix.as_ref().is_none_or(|v| *v.get_ref());
    let redirect_https = raw.redirect_https.as_ref().is_some_and(|v| *v.get_ref());
    let tls = match &raw.tls {
        None => TlsSetting::Off,
        Some(t) => match t.get_ref() {
            RawTls::Mode(m) if m == "off" => TlsSetting::Off,
            RawTls::Mode(m) if m == "acme" => {
                if edge.acme.is_none() {
                    return Err(cx.err(
                        t.span(),
                        &key("tls"),
                        "needs [proxy] acme_directory (e.g. \"https://acme-v02.api.letsencrypt.org/directory\"), or use tls = { cert, key }",
                    ));
                }
                if let Some(w) = hosts.iter().find(|h| matches!(h, HostPattern::Wildcard(_))) {
                    return Err(cx.err(
                        t.span(),
                        &key("tls"),
                        format!("{w}: ACME certificates are validated with HTTP-01 or TLS-ALPN-01, which cannot cover a wildcard; list the names, or use tls = {{ cert, key }}"),
                    ));
                }
                if edge.https.is_empty() {
                    return Err(cx.err(t.span(), &key("tls"), "needs an https listener: set [proxy] https = [\"0.0.0.0:443\"]"));
                }
                TlsSetting::Acme
            }
            RawTls::Mode(m) => {
                return Err(cx.err(
                    t.span(),
                    &key("tls"),
                    format!("{m:?} is not allowed: expected \"off\", \"acme\" or {{ cert = \"/path.pem\", key = \"/path.key\" }}"),
                ))
            }
            RawTls::Files { cert, key: key_path } => {
                let names: Vec<String> = hosts.iter().map(ToString::to_string).collect();
                let (cert, key_path) = (PathBuf::from(cert), PathBuf::from(key_path));
                for p in [&cert, &key_path] {
                    if !p.is_absolute() {
                        return Err(cx.err(
                            t.span(),
                            &key("tls"),
                            format!("{} must be an absolute path", p.display()),
                        ));
                    }
                }
                bg_proxy::tls::load_cert(&cert, &key_path, &names)
                    .map_err(|e| cx.err(t.span(), &key("tls"), e.to_string()))?;
                if edge.https.is_empty() {
                    return Err(cx.err(
                        t.span(),
                        &key("tls"),
                        "needs an https listener: set [proxy] https = [\"0.0.0.0:443\"]",
                    ));
                }
                TlsSetting::Files { cert, key: key_path }
            }
        },
    };
    if redirect_https && tls == TlsSetting::Off {
        let span = raw.redirect_https.as_ref().map(|v| v.span()).unwrap_or(0..0);
        return Err(cx.err(span, &key("redirect_https"), "needs tls: there is no https to redirect to"));
    }
    let max_request_body = match body_limit(cx, &raw.max_request_body, &key("max_request_body"))? {
        Some(n) => Some(n),
        None => edge.max_request_body,
    };
    Ok(Some(ServiceEdge { hosts, path_prefix, strip_prefix, tls, redirect_https, max_request_body }))
}

/// Refuse two services that claim the same host and path prefix; `spans`
/// gives each service's `hosts` span, for the line of the later one.
pub(super) fn conflicts(
    cx: &Ctx<'_>,
    services: &[(String, std::ops::Range<usize>, &ServiceEdge)],
) -> Result<(), ConfigError> {
    let mut seen: BTreeMap<(HostPattern, String), &str> = BTreeMap::new();
    for (name, span, edge) in services {
        for host in &edge.hosts {
            if let Some(other) = seen.insert((host.clone(), edge.path_prefix.clone()), name) {
                let at = if edge.path_prefix.is_empty() {
                    String::new()
                } else {
                    format!(" with path_prefix {:?}", edge.path_prefix)
                };
                return Err(cx.err(
                    span.clone(),
                    &format!("services.{name}.hosts"),
                    format!("{host}{at} is already claimed by service {other}: give one of them another host or path_prefix"),
                ));
            }
        }
    }
    Ok(())
}
