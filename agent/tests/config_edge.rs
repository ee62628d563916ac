//! The edge keys of the config: `[proxy]` listeners, a service's hosts,
//! prefixes and certificates. Certificates are made here with rcgen; every
//! refusal names the line, the key and the file or host at fault.

use bg_agent::config::{Config, ConfigError, TlsSetting};
use bg_proxy::HostPattern;
use rcgen::{CertificateParams, KeyPair};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("test.toml"))
}

/// A self-signed certificate for `names` in `dir`, key mode `mode`;
/// `days` from now until it expires (negative: expired).
fn cert(dir: &Path, stem: &str, names: &[&str], days: i64, mode: u32) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let now = time_now();
    params.not_before = now - time::Duration::days(30);
    params.not_after = now + time::Duration::days(days);
    let cert = params.self_signed(&key).unwrap();
    let (c, k) = (dir.join(format!("{stem}.pem")), dir.join(format!("{stem}.key")));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    std::fs::set_permissions(&k, std::fs::Permissions::from_mode(mode)).unwrap();
    (c, k)
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

const PROXY: &str = "[proxy]\nhttp = [\"127.0.0.1:0\"]\nhttps = [\"127.0.0.1:0\"]\n\n";

fn service(name: &str, body: &str) -> String {
    format!("[services.{name}]\nimage = \"websample:v1\"\n{body}\n")
}

#[test]
fn hosts_prefix_and_tls_files_parse() {
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = cert(dir.path(), "a", &["example.com", "*.example.org"], 90, 0o600);
    let text = format!(
        "{PROXY}{}{}",
        service(
            "web",
            &format!(
                "hosts = [\"Example.com\", \"*.example.org\"]\npath_prefix = \"/app/\"\ntls = {{ cert = {c:?}, key = {k:?} }}\nredirect_https = true\nmax_request_body = \"1MiB\""
            )
        ),
        service("api", "hosts = [\"api.example.net\"]\nstrip_prefix = false\nlisten = [\"127.0.0.1:0\"]")
    );
    let cfg = parse(&text).unwrap();
    let web = cfg.services["web"].edge.as_ref().unwrap();
    assert_eq!(
        web.hosts,
        [HostPattern::Exact("example.com".into()), HostPattern::Wildcard("example.org".into())]
    );
    assert_eq!(web.path_prefix, "/app");
    assert!(web.strip_prefix && web.redirect_https);
    assert_eq!(web.tls, TlsSetting::Files { cert: c, key: k });
    assert_eq!(web.max_request_body, Some(1 << 20));
    assert!(cfg.services["web"].listen.is_empty());
    let api = cfg.services["api"].edge.as_ref().unwrap();
    assert!(!api.strip_prefix);
    assert_eq!(api.tls, TlsSetting::Off);
    assert_eq!(cfg.proxy.https.len(), 1);
}

#[test]
fn the_same_host_with_another_prefix_is_not_a_conflict() {
    let text = format!(
        "{PROXY}{}{}",
        service("web", "hosts = [\"example.com\"]"),
        service("api", "hosts = [\"example.com\"]\npath_prefix = \"/api\"")
    );
    parse(&text).unwrap();
}

/// Each bad config: (text, line, key, fragment of the message).
fn refused(dir: &Path) -> Vec<(String, usize, &'static str, String)> {
    let (good_c, good_k) = cert(dir, "good", &["example.com"], 90, 0o600);
    let (_, open_k) = cert(dir, "open", &["example.com"], 90, 0o640);
    let (old_c, old_k) = cert(dir, "old", &["example.com"], -1, 0o600);
    let (other_c, _) = cert(dir, "other", &["example.com"], 90, 0o600);
    let (narrow_c, narrow_k) = cert(dir, "narrow", &["www.example.com"], 90, 0o600);
    let tls = |c: &Path, k: &Path| format!("tls = {{ cert = {c:?}, key = {k:?} }}");
    // PROXY is 4 lines; a service's keys start on line 7.
    vec![
        (
            format!("{PROXY}{}", service("web", "hosts = [\"exa mple.com\"]")),
            7,
            "services.web.hosts[0]",
            "not a host name".into(),
        ),
        (
            format!("{PROXY}{}", service("web", "hosts = [\"example.com:443\"]")),
            7,
            "services.web.hosts[0]",
            "no port".into(),
        ),
        (
            format!("{PROXY}{}", service("web", "hosts = [\"a.*.example.com\"]")),
            7,
            "services.web.hosts[0]",
            "wildcard".into(),
        ),
        (
            format!(
                "{PROXY}{}{}",
                service("web", "hosts = [\"example.com\"]"),
                service("api", "hosts = [\"EXAMPLE.com\"]")
            ),
            10,
            "services.api.hosts",
            "already claimed by service web".into(),
        ),
        (
            service("web", "hosts = [\"example.com\"]"),
            3,
            "services.web.hosts",
            "needs a shared listener".into(),
        ),
        ("[services.web]\nimage = \"websample:v1\"\n".into(), 1, "services.web.listen", "or both".into()),
        (
            format!("{PROXY}{}", service("web", "listen = [\"127.0.0.1:0\"]\npath_prefix = \"/a\"")),
            8,
            "services.web.path_prefix",
            "only applies".into(),
        ),
        (
            format!("{PROXY}{}", service("web", "hosts = [\"example.com\"]\npath_prefix = \"app\"")),
            8,
            "services.web.path_prefix",
            "not a path prefix".into(),
        ),
        (
            format!(
                "{PROXY}{}",
                service("web", &format!("hosts = [\"example.com\"]\n{}", tls(&good_c, &open_k)))
            ),
            8,
            "services.web.tls",
            "readable by group or others".into(),
        ),
        (
            format!(
                "{PROXY}{}",
                service("web", &format!("hosts = [\"example.com\"]\n{}", tls(&old_c, &old_k)))
            ),
            8,
            "services.web.tls",
            format!("{}: the certificate expired", old_c.display()),
        ),
        (
            format!(
                "{PROXY}{}",
                service("web", &format!("hosts = [\"example.com\"]\n{}", tls(&other_c, &good_k)))
            ),
            8,
            "services.web.tls",
            "does not match the private key".into(),
        ),
        (
            format!(
                "{PROXY}{}",
                service("web", &format!("hosts = [\"example.com\"]\n{}", tls(&narrow_c, &narrow_k)))
            ),
            8,
            "services.web.tls",
            "does not cover host example.com".into(),
        ),
        (
            format!("{PROXY}{}", service("web", "hosts = [\"example.com\"]\ntls = \"acme\"")),
            8,
            "services.web.tls",
            "needs [proxy] acme_directory".into(),
        ),
        (
            format!(
                "[proxy]\nhttp = [\"127.0.0.1:0\"]\nhttps = [\"127.0.0.1:0\"]\nacme_directory = \"https://acme.test/dir\"\n\n{}",
                service("web", "hosts = [\"*.example.org\"]\ntls = \"acme\"")
            ),
            9,
            "services.web.tls",
            "cannot cover a wildcard".into(),
        ),
        (
            "[proxy]\nacme_contact = \"mailto:ops@example.com\"\n".into(),
            2,
            "proxy.acme_contact",
            "only applies with acme_directory".into(),
        ),
        (
            "[proxy]\nacme_directory = \"http://acme.test/dir\"\n".into(),
            2,
            "proxy.acme_directory",
            "not an https URL".into(),
        ),
        (
            format!("{PROXY}{}", service("web", "hosts = [\"example.com\"]\nredirect_https = true")),
            8,
            "services.web.redirect_https",
            "needs tls".into(),
        ),
        (
            format!("{PROXY}{}", service("web", "hosts = [\"example.com\"]\nmax_request_body = \"lots\"")),
            8,
            "services.web.max_request_body",
            "".into(),
        ),
        (
            "[proxy]\nhttp = [\"127.0.0.1:8443\"]\nhttps = [\"127.0.0.1:8443\"]\n".into(),
            3,
            "proxy.https[0]",
            "already used by proxy.http[0]".into(),
        ),
    ]
}

#[test]
fn bad_edge_configs_name_line_key_and_cause() {
    let dir = tempfile::tempdir().unwrap();
    for (text, line, key, fragment) in refused(dir.path()) {
        match parse(&text) {
            Err(ConfigError::Invalid { line: l, key: k, message, .. }) => {
                assert_eq!((l, k.as_str()), (line, key), "{text}\n{message}");
                assert!(message.contains(&fragment), "{message:?} should say {fragment:?}");
            }
            other => panic!("{text}\nnot refused as expected: {other:?}"),
        }
    }
}
