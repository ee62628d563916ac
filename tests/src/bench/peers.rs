//! The proxies under test and how to start and switch each: bg-proxy (its
//! bench server binary) or bg-agent (the product, see `agent_peer`), nginx
//! and HAProxy from generated configs in a temporary directory, each on
//! one pinned core or as users run them ([`Setting`]); and "direct", the
//! client straight to the upstream.
//!
//! Every proxy does the same work per request: besides removing hop-by-hop
//! headers, nginx and HAProxy are configured, as an operator would, to send
//! the forwarding headers bg-proxy always adds: `X-Forwarded-For`
//! (appended to an existing one), `X-Forwarded-Proto: http` and
//! `X-Forwarded-Host` (a copy of Host).
//!
//! For the TLS cells each proxy also listens for https with the one
//! certificate of [`BenchCert`] (TLS 1.2 and 1.3, ALPN h2 and http/1.1, as
//! bg-agent's edge offers), each with its own defaults for session tickets
//! and caches: the clients never resume, so each connection is a full
//! handshake whatever the server offers.

use super::agent_peer::AgentHome;
use super::procs::{free_addr, on_path, pinned, Proc};
use super::tls::BenchCert;
use super::Setting;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The core every proxy is pinned to (the load generator gets core 0).
pub const PROXY_CORE: usize = 1;

/// One column of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Peer {
    /// No proxy: the client straight to the upstream.
    Direct,
    /// bg-proxy in its own process, one thread.
    BgProxy,
    /// The `bg-agent` binary, as users run it.
    BgAgent,
    /// nginx, one worker.
    Nginx,
    /// HAProxy, one thread.
    Haproxy,
}

impl Peer {
    /// Every peer, in the order of the report.
    pub const ALL: [Peer; 5] = [Peer::Direct, Peer::BgProxy, Peer::BgAgent, Peer::Nginx, Peer::Haproxy];

    /// The peers of one setting (those installed are kept by the caller).
    pub fn of(setting: Setting) -> Vec<Peer> {
        match setting {
            Setting::Pinned => vec![Peer::Direct, Peer::BgProxy, Peer::Nginx, Peer::Haproxy],
            Setting::Product => vec![Peer::Direct, Peer::BgAgent, Peer::Nginx, Peer::Haproxy],
        }
    }

    /// Whether it is ours (compared with the others, pair by pair).
    pub fn ours(self) -> bool {
        matches!(self, Peer::BgProxy | Peer::BgAgent)
    }

    /// Its name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Peer::Direct => "direct",
            Peer::BgProxy => "bg-proxy",
            Peer::BgAgent => "bg-agent",
            Peer::Nginx => "nginx",
            Peer::Haproxy => "haproxy",
        }
    }
}

/// Where the programs are.
#[derive(Debug, Clone)]
pub struct Tools {
    /// `bg-proxy-bench-server`.
    pub bg_proxy: PathBuf,
    /// The release `bg-agent`.
    pub bg_agent: PathBuf,
    /// `bench-upstream`.
    pub upstream: PathBuf,
    /// The release `websample`.
    pub websample: PathBuf,
    /// nginx, when installed.
    pub nginx: Option<PathBuf>,
    /// haproxy, when installed.
    pub haproxy: Option<PathBuf>,
    /// wrk, when installed: the external load generator.
    pub wrk: Option<PathBuf>,
    /// h2load (nghttp2-client), when installed: the h2c cells' generator.
    pub h2load: Option<PathBuf>,
}

impl Tools {
    /// Find everything next to the running binary and on `PATH`.
    pub fn find(bin_dir: &Path) -> Tools {
        Tools {
            bg_proxy: bin_dir.join("bg-proxy-bench-server"),
            bg_agent: bin_dir.join("bg-agent"),
            upstream: bin_dir.join("bench-upstream"),
            websample: bin_dir.join("websample"),
            nginx: on_path("nginx").or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| p.exists())),
            haproxy: on_path("haproxy")
                .or_else(|| Some(PathBuf::from("/usr/sbin/haproxy")).filter(|p| p.exists())),
            wrk: on_path("wrk"),
            h2load: on_path("h2load"),
        }
    }

    /// Whether `peer` can run here.
    pub fn has(&self, peer: Peer) -> bool {
        match peer {
            Peer::Direct | Peer::BgProxy | Peer::BgAgent => true,
            Peer::Nginx => self.nginx.is_some(),
            Peer::Haproxy => self.haproxy.is_some(),
        }
    }

    /// `nginx -v` / `haproxy -v`, first line.
    pub fn version(&self, peer: Peer) -> Option<String> {
        let (path, arg) = match peer {
            Peer::Nginx => (self.nginx.as_ref()?, "-v"),
            Peer::Haproxy => (self.haproxy.as_ref()?, "-v"),
            _ => return None,
        };
        let out = Command::new(path).arg(arg).output().ok()?;
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        text.lines().next().map(|l| l.trim().to_string())
    }
}

/// An https listener of a peer and the certificate it serves.
#[derive(Clone, Copy)]
pub struct TlsListen<'a> {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it serves.
    pub cert: &'a BenchCert,
}

/// A running peer: where to send, and the process to measure.
pub struct RunningPeer {
    /// The peer.
    pub peer: Peer,
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Where TLS clients connect (none for direct and bg-proxy, or when
    /// started without a certificate).
    pub tls_addr: Option<SocketAddr>,
    /// Where h2c (prior knowledge) clients connect: the one listener of
    /// bg-agent and bg-proxy, an h2-only one of nginx and HAProxy, none
    /// for direct.
    pub h2c_addr: Option<SocketAddr>,
    /// The proxy process (none for direct).
    pub proc: Option<Proc>,
    dir: tempfile::TempDir,
    upstreams: Vec<SocketAddr>,
    nginx: Option<PathBuf>,
    active: usize,
}

impl RunningPeer {
    /// Start `peer` in front of `upstreams` (the first takes the traffic;
    /// a second one is where [`RunningPeer::switch`] sends it), in
    /// `setting`. bg-agent runs on `agent`, whose replica is `upstreams[0]`
    /// (and whose https listener, if any, serves `cert`). With `cert`,
    /// nginx and HAProxy listen for https too.
    pub fn start(
        tools: &Tools,
        setting: Setting,
        agent: Option<&AgentHome>,
        peer: Peer,
        upstreams: &[SocketAddr],
        cert: Option<&BenchCert>,
    ) -> RunningPeer {
        let tls = cert.map(|cert| TlsListen { addr: free_addr(), cert });
        let dir = tempfile::Builder::new().prefix("bg-bench-").tempdir().expect("temp dir");
        let log = dir.path().join("out.log");
        let launch = |program: &Path| match setting {
            Setting::Pinned => pinned(PROXY_CORE, program),
            Setting::Product => Command::new(program),
        };
        let mut tls_addr = tls.map(|t| t.addr);
        let mut h2c_addr = None;
        let (addr, proc) = match peer {
            Peer::Direct => {
                tls_addr = None;
                (upstreams[0], None)
            }
            Peer::BgAgent => {
                let agent = agent.expect("the product setting prepares bg-agent");
                tls_addr = agent.https.filter(|_| cert.is_some());
                h2c_addr = Some(agent.listen);
                (agent.listen, Some(agent.start(tools)))
            }
            Peer::BgProxy => {
                let addr = free_addr();
                let mut cmd = launch(&tools.bg_proxy);
                cmd.arg(addr.to_string()).args(upstreams.iter().map(|u| u.to_string()));
                tls_addr = None;
                h2c_addr = Some(addr);
                (addr, Some(Proc::start("bg-proxy", cmd, addr, Some(&log))))
            }
            Peer::Nginx => {
                let addr = free_addr();
                h2c_addr = Some(free_addr());
                let conf = write_nginx(dir.path(), addr, h2c_addr, upstreams[0], setting, tls);
                let mut cmd = launch(tools.nginx.as_ref().expect("nginx is installed"));
                cmd.arg("-p")
                    .arg(dir.path())
                    .arg("-c")
                    .arg(&conf)
                    .arg("-e")
                    .arg(dir.path().join("error.log"));
                (addr, Some(Proc::start("nginx", cmd, addr, Some(&log))))
            }
            Peer::Haproxy => {
                let addr = free_addr();
                h2c_addr = Some(free_addr());
                let conf = write_haproxy(dir.path(), addr, h2c_addr, upstreams, setting, tls);
                let mut cmd = launch(tools.haproxy.as_ref().expect("haproxy is installed"));
                cmd.arg("-db").arg("-f").arg(&conf);
                (addr, Some(Proc::start("haproxy", cmd, addr, Some(&log))))
            }
        };
        RunningPeer {
            peer,
            addr,
            tls_addr,
            h2c_addr,
            proc,
            dir,
            upstreams: upstreams.to_vec(),
            nginx: tools.nginx.clone(),
            active: 0,
        }
    }

    /// Peak RSS of the proxy process(es) in KiB since start (0 for direct).
    pub fn lifetime_peak_rss_kib(&self) -> u64 {
        self.proc.as_ref().map_or(0, Proc::lifetime_peak_rss_kib)
    }

    /// Sample the proxy's RSS while a load runs (`None` for direct).
    pub fn watch_rss(&self) -> Option<super::procs::RssWatch> {
        self.proc.as_ref().map(Proc::watch_rss)
    }

    /// Send all new traffic to the other upstream, the way an operator of
    /// this proxy would: SIGUSR1 to bg-proxy (an atomic route swap), the
    /// runtime API of HAProxy, an upstream edit plus `nginx -s reload`.
    pub fn switch(&mut self) -> Result<(), String> {
        let next = (self.active + 1) % self.upstreams.len();
        match self.peer {
            Peer::Direct => return Err("direct has nothing to switch".into()),
            Peer::BgAgent => return Err("bg-agent switches by promote (the end-to-end tests)".into()),
            Peer::BgProxy => {
                self.proc.as_ref().expect("bg-proxy runs").signal(nix::sys::signal::Signal::SIGUSR1)
            }
            Peer::Haproxy => {
                let (to, from) = (format!("s{}", next + 1), format!("s{}", self.active + 1));
                let answer = haproxy_command(
                    &self.dir.path().join("admin.sock"),
                    &format!("set server be/{to} state ready; set server be/{from} state drain"),
                )?;
                if !answer.trim().is_empty() {
                    return Err(format!("haproxy said: {answer}"));
                }
            }
            Peer::Nginx => {
                std::fs::write(self.dir.path().join("upstream.conf"), upstream_line(self.upstreams[next]))
                    .map_err(|e| e.to_string())?;
                let out = Command::new(self.nginx.as_ref().expect("nginx is installed"))
                    .arg("-p")
                    .arg(self.dir.path())
                    .arg("-c")
                    .arg(self.dir.path().join("nginx.conf"))
                    .arg("-e")
                    .arg(self.dir.path().join("error.log"))
                    .args(["-s", "reload"])
                    .output()
                    .map_err(|e| e.to_string())?;
                if !out.status.success() {
                    return Err(format!("nginx -s reload: {}", String::from_utf8_lossy(&out.stderr)));
                }
            }
        }
        self.active = next;
        Ok(())
    }
}

/// Write the config the benchmark starts `peer` with (nginx or HAProxy)
/// into `dir`, listening on `listen` in front of `upstreams`; its path.
/// `None` for the peers that take no config file.
pub fn write_config(peer: Peer, dir: &Path, listen: SocketAddr, upstreams: &[SocketAddr]) -> Option<PathBuf> {
    match peer {
        Peer::Nginx => Some(write_nginx(dir, listen, None, upstreams[0], Setting::Pinned, None)),
        Peer::Haproxy => Some(write_haproxy(dir, listen, None, upstreams, Setting::Pinned, None)),
        Peer::Direct | Peer::BgProxy | Peer::BgAgent => None,
    }
}

/// nginx's `upstream.conf`: the one server that takes the traffic.
fn upstream_line(addr: SocketAddr) -> String {
    format!("server {addr};\n")
}

/// nginx, one worker (pinned) or `auto` (product), keep-alive to the
/// upstream. The `proxy_set_header`
/// lines add the forwarding headers bg-proxy adds; a location that sets any
/// header inherits none from outside, so Host is set too, as the client
/// sent it, which is what bg-proxy passes on. `X-Forwarded-Host` is
/// `$http_host` rather than the usual `$host`, which drops the port and
/// falls back to the server name: bg-proxy and HAProxy copy Host verbatim.
/// With `h2c`, the plain server also listens there for HTTP/2 with prior
/// knowledge (nginx takes h2c only on a listener of its own). With `tls`,
/// a second server block listens for https (`$scheme` is then `https`),
/// nginx's session defaults kept (`ssl_session_cache none`, tickets on).
fn write_nginx(
    dir: &Path,
    listen: SocketAddr,
    h2c: Option<SocketAddr>,
    upstream: SocketAddr,
    setting: Setting,
    tls: Option<TlsListen>,
) -> PathBuf {
    let workers = match setting {
        Setting::Pinned => "1",
        Setting::Product => "auto",
    };
    std::fs::create_dir_all(dir.join("tmp")).expect("nginx temp dir");
    std::fs::write(dir.join("upstream.conf"), upstream_line(upstream)).expect("write upstream.conf");
    let d = dir.display();
    let location = "location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
        }";
    let https = tls.map_or(String::new(), |t| {
        format!(
            "
    server {{
        listen {} ssl http2;
        ssl_certificate {};
        ssl_certificate_key {};
        ssl_protocols TLSv1.2 TLSv1.3;
        {location}
    }}",
            t.addr,
            t.cert.cert.display(),
            t.cert.key.display()
        )
    });
    let h2c = h2c.map_or(String::new(), |a| format!("\n        listen {a} http2;"));
    let conf = format!(
        "worker_processes {workers};
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    keepalive_requests 1000000;
    upstream app {{
        include {d}/upstream.conf;
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen {listen};{h2c}
        {location}
    }}{https}
}}
"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).expect("write nginx.conf");
    path
}

/// HAProxy, one thread (pinned) or one per core (product), connection
/// reuse to the backend; the first
/// upstream enabled, the others disabled until [`RunningPeer::switch`].
/// `option forwardfor` and the two `set-header` rules add the forwarding
/// headers bg-proxy adds (HAProxy's X-Forwarded-For is a line of its own
/// after any the client sent rather than one joined value: the same list).
/// With `h2c`, the plain frontend also binds there for HTTP/2 with prior
/// knowledge (`proto h2`). With `tls`, a second frontend binds for https
/// (`X-Forwarded-Proto: https`), HAProxy's session defaults kept (its
/// cache and tickets on).
fn write_haproxy(
    dir: &Path,
    listen: SocketAddr,
    h2c: Option<SocketAddr>,
    upstreams: &[SocketAddr],
    setting: Setting,
    tls: Option<TlsListen>,
) -> PathBuf {
    let threads = match setting {
        Setting::Pinned => 1,
        Setting::Product => std::thread::available_parallelism().map_or(1, usize::from),
    };
    let servers: String = upstreams
        .iter()
        .enumerate()
        .map(|(i, u)| format!("    server s{} {u}{}\n", i + 1, if i == 0 { "" } else { " disabled" }))
        .collect();
    let frontend = |name: &str, bind: String, proto: &str| {
        format!(
            "frontend {name}
    bind {bind}
    option forwardfor
    http-request set-header X-Forwarded-Proto {proto}
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    default_backend be
"
        )
    };
    let plain = match h2c {
        Some(a) => format!("{listen}\n    bind {a} proto h2"),
        None => listen.to_string(),
    };
    let mut frontends = frontend("fe", plain, "http");
    if let Some(t) = tls {
        let bind =
            format!("{} ssl crt {} ssl-min-ver TLSv1.2 alpn h2,http/1.1", t.addr, t.cert.combined.display());
        frontends.push_str(&frontend("fe_tls", bind, "https"));
    }
    let conf = format!(
        "global
    nbthread {threads}
    stats socket {sock} mode 600 level admin
defaults
    mode http
    timeout connect 3s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
    option http-keep-alive
    http-reuse always
{frontends}backend be
{servers}",
        sock = dir.join("admin.sock").display()
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, conf).expect("write haproxy.cfg");
    path
}

/// One command over HAProxy's stats socket; its answer.
fn haproxy_command(socket: &Path, command: &str) -> Result<String, String> {
    let mut s =
        std::os::unix::net::UnixStream::connect(socket).map_err(|e| format!("haproxy socket: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    s.write_all(format!("{command}\n").as_bytes()).map_err(|e| e.to_string())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_and_haproxy_send_the_forwarding_headers_bg_proxy_sends() {
        let dir = tempfile::tempdir().unwrap();
        let (listen, up): (SocketAddr, SocketAddr) =
            ("127.0.0.1:18402".parse().unwrap(), "127.0.0.1:18403".parse().unwrap());
        let nginx =
            std::fs::read_to_string(write_nginx(dir.path(), listen, None, up, Setting::Product, None))
                .unwrap();
        assert!(nginx.contains("worker_processes auto;"), "{nginx}");
        for line in [
            "proxy_set_header Connection \"\";",
            "proxy_set_header Host $http_host;",
            "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
            "proxy_set_header X-Forwarded-Proto $scheme;",
            "proxy_set_header X-Forwarded-Host $http_host;",
        ] {
            assert!(nginx.contains(line), "nginx.conf lacks {line}:\n{nginx}");
        }
        let haproxy =
            std::fs::read_to_string(write_haproxy(dir.path(), listen, None, &[up], Setting::Pinned, None))
                .unwrap();
        assert!(haproxy.contains("nbthread 1\n"), "{haproxy}");
        for line in [
            "option forwardfor",
            "http-request set-header X-Forwarded-Proto http",
            "http-request set-header X-Forwarded-Host %[req.hdr(host)]",
        ] {
            assert!(haproxy.contains(line), "haproxy.cfg lacks {line}:\n{haproxy}");
        }
    }

    #[test]
    fn with_a_certificate_nginx_and_haproxy_also_serve_https_with_the_same_work() {
        let dir = tempfile::tempdir().unwrap();
        let cert = BenchCert::new();
        let (listen, up, https): (SocketAddr, SocketAddr, SocketAddr) = (
            "127.0.0.1:18402".parse().unwrap(),
            "127.0.0.1:18403".parse().unwrap(),
            "127.0.0.1:18404".parse().unwrap(),
        );
        let tls = Some(TlsListen { addr: https, cert: &cert });
        let nginx = std::fs::read_to_string(write_nginx(dir.path(), listen, None, up, Setting::Product, tls))
            .unwrap();
        for line in [
            "listen 127.0.0.1:18402;".to_string(),
            "listen 127.0.0.1:18404 ssl http2;".to_string(),
            format!("ssl_certificate {};", cert.cert.display()),
            format!("ssl_certificate_key {};", cert.key.display()),
            "ssl_protocols TLSv1.2 TLSv1.3;".to_string(),
        ] {
            assert!(nginx.contains(&line), "nginx.conf lacks {line}:\n{nginx}");
        }
        // Both server blocks proxy the same way.
        assert_eq!(nginx.matches("proxy_set_header X-Forwarded-Proto $scheme;").count(), 2, "{nginx}");
        assert_eq!(nginx.matches("proxy_pass http://app;").count(), 2, "{nginx}");
        let plain =
            std::fs::read_to_string(write_nginx(dir.path(), listen, None, up, Setting::Product, None))
                .unwrap();
        assert!(!plain.contains("ssl"), "no https without a certificate:\n{plain}");

        let haproxy =
            std::fs::read_to_string(write_haproxy(dir.path(), listen, None, &[up], Setting::Product, tls))
                .unwrap();
        let bind = format!(
            "bind 127.0.0.1:18404 ssl crt {} ssl-min-ver TLSv1.2 alpn h2,http/1.1\n",
            cert.combined.display()
        );
        assert!(haproxy.contains(&bind), "haproxy.cfg lacks {bind}:\n{haproxy}");
        let tls_frontend = haproxy.split("frontend fe_tls\n").nth(1).expect("a TLS frontend");
        for line in [
            "option forwardfor",
            "http-request set-header X-Forwarded-Proto https",
            "http-request set-header X-Forwarded-Host %[req.hdr(host)]",
            "default_backend be",
        ] {
            assert!(tls_frontend.contains(line), "the TLS frontend lacks {line}:\n{haproxy}");
        }
        assert!(haproxy.contains("frontend fe\n    bind 127.0.0.1:18402\n"), "{haproxy}");
        assert!(haproxy.contains("X-Forwarded-Proto http\n"), "{haproxy}");
    }

    #[test]
    fn with_an_h2c_address_nginx_and_haproxy_take_prior_knowledge_h2_there() {
        let dir = tempfile::tempdir().unwrap();
        let (listen, h2c, up): (SocketAddr, SocketAddr, SocketAddr) = (
            "127.0.0.1:18402".parse().unwrap(),
            "127.0.0.1:18405".parse().unwrap(),
            "127.0.0.1:18403".parse().unwrap(),
        );
        let nginx =
            std::fs::read_to_string(write_nginx(dir.path(), listen, Some(h2c), up, Setting::Product, None))
                .unwrap();
        assert!(
            nginx.contains("listen 127.0.0.1:18402;\n        listen 127.0.0.1:18405 http2;\n"),
            "{nginx}"
        );
        assert_eq!(nginx.matches("proxy_pass http://app;").count(), 1, "one server block: {nginx}");
        let haproxy = std::fs::read_to_string(write_haproxy(
            dir.path(),
            listen,
            Some(h2c),
            &[up],
            Setting::Product,
            None,
        ))
        .unwrap();
        assert!(
            haproxy.contains("frontend fe\n    bind 127.0.0.1:18402\n    bind 127.0.0.1:18405 proto h2\n"),
            "{haproxy}"
        );
    }
}
