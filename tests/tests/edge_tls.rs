//! The shared edge listeners end to end: a real agent on the process
//! runtime with websample, services routed by host name (and path prefix)
//! on one `https` and one `http` listener, each host with its own
//! certificate from a test CA made here with rcgen. Checked with real
//! clients: curl (`--resolve`, `--cacert`, h2 and HTTP/1.1), h2load under
//! load, openssl s_client for the served certificate, and the project's
//! load generator on the plain listener.

use bg_tests::agent::{bg_agent_run, free_addr, Agent, RunningAgent, Svc};
use bg_tests::certs::TestCa;
use bg_tests::load::Load;
use bg_tests::wait::eventually;
use serde_json::json;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

const OP: Duration = Duration::from_secs(60);

fn toml_list(items: &[&str]) -> String {
    format!("[{}]", items.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", "))
}

/// The scene: web-a on a.test (TLS, redirect, 1 KiB body limit), web-b on
/// b.test (TLS), web-p on b.test under /api (stripped); all deployed.
struct Scene {
    agent: RunningAgent,
    ca: TestCa,
    http: SocketAddr,
    https: SocketAddr,
    _dir: tempfile::TempDir,
}

async fn scene() -> Scene {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ca");
    let (ac, ak) = ca.server_leaf_serial("a", &["a.test"], 1);
    let (bc, bk) = ca.server_leaf_serial("b", &["b.test"], 2);
    let (http, https) = (free_addr(), free_addr());
    let tls = |c: &Path, k: &Path| format!("{{ cert = {c:?}, key = {k:?} }}");
    let agent = Agent::process()
        .metrics()
        .proxy_key("http", &toml_list(&[&http.to_string()]))
        .proxy_key("https", &toml_list(&[&https.to_string()]))
        .service(
            Svc::new("web-a")
                .env("VERSION", "a1")
                .set("", "hosts", "[\"a.test\"]")
                .set("", "tls", &tls(&ac, &ak))
                .set("", "redirect_https", "true")
                .set("", "max_request_body", "\"1KiB\""),
        )
        .service(Svc::new("web-b").env("VERSION", "b1").set("", "hosts", "[\"b.test\"]").set(
            "",
            "tls",
            &tls(&bc, &bk),
        ))
        .service(
            Svc::new("web-p")
                .env("VERSION", "p1")
                .set("", "hosts", "[\"b.test\"]")
                .set("", "path_prefix", "\"/api\"")
                .set("", "tls", &tls(&bc, &bk)),
        )
        .start()
        .await;
    for s in ["web-a", "web-b", "web-p"] {
        agent.op(s, "deploy", json!({}), OP).await;
    }
    Scene { agent, ca, http, https, _dir: dir }
}

fn run(program: &str, args: &[String]) -> (Output, Duration) {
    let started = Instant::now();
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program} must be installed to run this test: {e}"));
    (out, started.elapsed())
}

impl Scene {
    /// curl over https to `host` at the https listener; extra `args`
    /// first. Prints `status version x-version` then the body.
    fn curl(&self, host: &str, path: &str, args: &[&str]) -> (Output, Duration) {
        let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        a.extend(
            [
                "-sS",
                "--max-time",
                "10",
                "--resolve",
                &format!("{host}:{}:127.0.0.1", self.https.port()),
                "--cacert",
                self.ca.ca_file().to_str().unwrap(),
                "-w",
                "\n%{http_code} %{http_version} %header{x-version}",
                &format!("https://{host}:{}{path}", self.https.port()),
            ]
            .map(String::from),
        );
        run("curl", &a)
    }

    /// The last line of a curl run: `status version x-version`.
    fn summary(out: &Output) -> String {
        assert!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().trim().to_string()
    }

    /// The serial of the certificate served for `host` (openssl s_client).
    fn served_serial(&self, host: &str) -> String {
        let (out, _) = run(
            "sh",
            &[
                "-c".into(),
                format!(
                    "openssl s_client -connect 127.0.0.1:{} -servername {host} </dev/null 2>/dev/null | openssl x509 -noout -serial",
                    self.https.port()
                ),
            ],
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// h2load for `secs` seconds against `host` over TLS (h2).
    fn h2load(&self, host: &str, secs: u32) -> std::thread::JoinHandle<String> {
        let args: Vec<String> = vec![
            "-D".into(),
            secs.to_string(),
            "-c".into(),
            "4".into(),
            "-m".into(),
            "4".into(),
            format!("--connect-to=127.0.0.1:{}", self.https.port()),
            format!("https://{host}:{}/", self.https.port()),
        ];
        std::thread::spawn(move || {
            let (out, _) = run("h2load", &args);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(out.status.success(), "h2load failed: {text}{}", String::from_utf8_lossy(&out.stderr));
            text
        })
    }
}

/// h2load's request line: (succeeded, failed + errored + timeout).
fn h2load_counts(text: &str) -> (u64, u64) {
    let line = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .unwrap_or_else(|| panic!("no requests line: {text}"));
    let num = |word: &str| -> u64 {
        line.split(',')
            .find(|part| part.trim().ends_with(word))
            .and_then(|part| part.split_whitespace().find_map(|w| w.parse().ok()))
            .unwrap_or_else(|| panic!("no {word} in {line}"))
    };
    (num("succeeded"), num("failed") + num("errored") + num("timeout"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_on_one_https_listener_each_with_its_own_certificate_by_curl() {
    let s = scene().await;

    // Each host answers with its own service, verified against the test CA,
    // over h2 and HTTP/1.1.
    let (out, _) = s.curl("a.test", "/", &["--http2"]);
    assert_eq!(Scene::summary(&out), "200 2 a1");
    let (out, _) = s.curl("b.test", "/", &["--http1.1"]);
    assert_eq!(Scene::summary(&out), "200 1.1 b1");
    assert_eq!(s.served_serial("a.test"), "serial=01");
    assert_eq!(s.served_serial("b.test"), "serial=02");

    // The longest prefix wins and is stripped: b.test/api/ is web-p's "/".
    let (out, _) = s.curl("b.test", "/api/", &["--http2"]);
    assert_eq!(Scene::summary(&out), "200 2 p1");
    let (out, _) = s.curl("b.test", "/apiary", &["--http2"]);
    assert!(Scene::summary(&out).ends_with(" b1"), "/apiary is not under /api");

    // No service for the host: the proxy's 404 (plain listener, any Host).
    let (out, _) = run(
        "curl",
        &[
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Host: c.test",
            &format!("http://{}/", s.http),
        ]
        .map(String::from),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");

    // redirect_https: 308 to the same host, path and query on https.
    let (out, _) = run(
        "curl",
        &[
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
            "-H",
            "Host: a.test",
            &format!("http://{}/x/y?q=1", s.http),
        ]
        .map(String::from),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("308 https://a.test:{}/x/y?q=1", s.https.port())
    );
    // b.test has no redirect: served on plain HTTP too.
    let (out, _) = run(
        "curl",
        &[
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %header{x-version}",
            "-H",
            "Host: b.test",
            &format!("http://{}/", s.http),
        ]
        .map(String::from),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200 b1");

    // max_request_body = 1KiB on a.test: 413 for 2 KiB, 1 KiB passes.
    let big = "x".repeat(2048);
    let (out, _) = s.curl("a.test", "/", &["--http1.1", "--data-binary", &big]);
    assert!(Scene::summary(&out).starts_with("413 "), "{}", Scene::summary(&out));
    // Without a length (chunked): counted while it streams.
    let (out, _) =
        s.curl("a.test", "/", &["--http1.1", "-H", "Transfer-Encoding: chunked", "--data-binary", &big]);
    assert!(Scene::summary(&out).starts_with("413 "), "chunked: {}", Scene::summary(&out));
    // The connection that got the 413 carries the next request.
    let body_file = s._dir.path().join("2k");
    std::fs::write(&body_file, &big).unwrap();
    let url = format!("https://a.test:{}/", s.https.port());
    let resolve = format!("a.test:{}:127.0.0.1", s.https.port());
    let ca_file = s.ca.ca_file().to_str().unwrap().to_string();
    let common = ["-sS", "--http1.1", "--resolve", &resolve, "--cacert", &ca_file, "-w", "%{http_code}\n"];
    let mut args: Vec<String> = common.iter().map(|a| a.to_string()).collect();
    args.extend(["-v".into(), "--data-binary".into(), format!("@{}", body_file.display()), url.clone()]);
    args.push("--next".into());
    args.extend(common.iter().map(|a| a.to_string()));
    args.push(url);
    let (out, _) = run("curl", &args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(String::from_utf8_lossy(&out.stdout).contains("413"), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(err.contains("Re-using existing connection"), "the connection was not kept: {err}");
    let small = "x".repeat(1024);
    let (out, _) = s.curl("a.test", "/", &["--http2", "--data-binary", &small]);
    assert_eq!(Scene::summary(&out), "200 2 a1");

    // A client that offers only TLS 1.0/1.1 gets an alert, fast.
    let (out, took) =
        s.curl("a.test", "/", &["--tlsv1.0", "--tls-max", "1.1", "--ciphers", "DEFAULT@SECLEVEL=0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "TLS 1.1 was accepted");
    assert!(err.contains("alert") || err.contains("protocol version"), "no alert from the server: {err}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    // An SNI no service claims: a handshake alert, not a hang.
    let (out, took) = s.curl("c.test", "/", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("alert"), "unknown SNI: {err}");
    assert!(took < Duration::from_secs(3), "took {took:?}");

    // Answers are counted per claimed host.
    let m = s.agent.scrape().await;
    let count = |svc: &str, host: &str, class: &str| {
        m.one("bg_host_requests_total", &[("service", svc), ("host", host), ("class", class)])
    };
    // a.test: "/" twice and the 1 KiB post; b.test: "/" on https and on
    // plain HTTP, websample's 404 for /apiary; /api/ went to web-p.
    assert_eq!(count("web-a", "a.test", "2xx"), 3.0);
    assert_eq!(count("web-a", "a.test", "3xx"), 1.0, "the 308");
    assert_eq!(count("web-a", "a.test", "4xx"), 3.0, "the three 413");
    assert_eq!((count("web-b", "b.test", "2xx"), count("web-b", "b.test", "4xx")), (2.0, 1.0));
    assert_eq!(count("web-p", "b.test", "2xx"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_of_one_host_under_load_leaves_the_other_untouched() {
    let s = scene().await;
    let a = s.h2load("a.test", 8);
    let b = s.h2load("b.test", 8);
    let plain = Load::keepalive(4)
        .target(s.http)
        .header("host", "b.test")
        .max_duration(Duration::from_secs(30))
        .start();
    eventually("plain load flows", Duration::from_secs(5), || plain.completed() >= 100).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let promoted =
        s.agent.op("web-a", "deploy", json!({"env": {"VERSION": "a2"}, "promote": true}), OP).await;
    assert_eq!(promoted["active"], "green", "{promoted}");
    let a = tokio::task::spawn_blocking(move || a.join().unwrap()).await.unwrap();
    let b = tokio::task::spawn_blocking(move || b.join().unwrap()).await.unwrap();
    let report = plain.stop().await;

    let (a_ok, a_failed) = h2load_counts(&a);
    let (b_ok, b_failed) = h2load_counts(&b);
    eprintln!("h2load a.test {a_ok} ok, b.test {b_ok} ok; plain b.test {} ok", report.ok);
    assert_eq!((a_failed, b_failed), (0, 0), "a.test:\n{a}\nb.test:\n{b}");
    assert!(a_ok > 500 && b_ok > 500, "too few requests: a {a_ok}, b {b_ok}");
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert_eq!(report.by_version.keys().collect::<Vec<_>>(), ["b1"], "b.test only ever saw web-b");
    // web-b was never touched: still on its first color.
    assert_eq!(s.agent.status("web-b").await["active"], "blue");
    let (out, _) = s.curl("a.test", "/", &["--http2"]);
    assert_eq!(Scene::summary(&out), "200 2 a2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_pem_files_reach_new_handshakes_under_load_without_a_failure() {
    let s = scene().await;
    let load = s.h2load("a.test", 6);
    tokio::time::sleep(Duration::from_secs(2)).await;
    s.ca.server_leaf_serial("a", &["a.test"], 0x77);
    eventually_serial(&s, "a.test", "serial=77").await;
    let out = tokio::task::spawn_blocking(move || load.join().unwrap()).await.unwrap();
    let (ok, failed) = h2load_counts(&out);
    eprintln!("h2load a.test across the reload: {ok} ok, {failed} failed");
    assert_eq!(failed, 0, "{out}");
    assert!(ok > 300, "{out}");
    // curl verifies the new chain too; b.test kept its own.
    let (out, _) = s.curl("a.test", "/", &["--http1.1", "-v"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("a by ca #119"), "new subject served");
    assert_eq!(s.served_serial("b.test"), "serial=02");
    assert!(s.agent.log().contains("certificate reloaded"), "the reload is logged");
    // The expiry gauge names the host.
    let scrape = s.agent.scrape().await;
    assert!(scrape.one("bg_certificate_expiry_seconds", &[("host", "a.test")]) > 1.7e9);
    assert!(scrape.one("bg_certificate_expiry_seconds", &[("host", "b.test")]) > 1.7e9);
}

async fn eventually_serial(s: &Scene, host: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = s.served_serial(host);
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{host} still serves {got}, not {want}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A child process killed when the test ends, also on failure.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether `program` is on PATH; without it the test fails under
/// `BG_DOCKER_TESTS=1` (the real parts are required) and is skipped
/// otherwise, saying why.
fn have(program: &str, test: &str) -> bool {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("BG_DOCKER_TESTS").map_or(true, |v| v != "1"),
            "{test}: BG_DOCKER_TESTS=1 but {program} is not installed"
        );
        eprintln!("{test}: not run: {program} is not installed (apt-get install pebble)");
    }
    found
}

fn free_port() -> u16 {
    free_addr().port()
}

/// Pebble and pebble-challtestsrv on loopback, validating against
/// `http` and `https`; every name resolves to 127.0.0.1.
struct Pebble {
    directory: String,
    mgmt_port: u16,
    ca_file: String,
    _children: (Killed, Killed),
}

async fn pebble(dir: &Path, ca: &TestCa, http: SocketAddr, https: SocketAddr) -> Pebble {
    // Pebble's own HTTPS, trusted by the agent through acme_ca.
    let (pebble_cert, pebble_key) = ca.server_leaf_serial("pebble", &["127.0.0.1"], 9);
    let (acme_port, mgmt_port, dns_port, chall_mgmt) = (free_port(), free_port(), free_port(), free_port());
    let config = dir.join("pebble.json");
    std::fs::write(
        &config,
        json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{acme_port}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
            "certificate": pebble_cert, "privateKey": pebble_key,
            "httpPort": http.port(), "tlsPort": https.port(),
            "ocspResponderURL": "", "externalAccountBindingRequired": false,
            // Ten days: inside the renewal window below.
            "certificateValidityPeriod": 864000
        }})
        .to_string(),
    )
    .unwrap();
    // Every name resolves to 127.0.0.1: validation comes to our listeners.
    let dns = Killed(
        std::process::Command::new("pebble-challtestsrv")
            .args([
                "-dns01",
                &format!("127.0.0.1:{dns_port}"),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
            ])
            .args([
                "-management",
                &format!("127.0.0.1:{chall_mgmt}"),
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start pebble-challtestsrv"),
    );
    let server = Killed(
        std::process::Command::new("pebble")
            .args(["-config", config.to_str().unwrap(), "-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start pebble"),
    );
    let directory = format!("https://127.0.0.1:{acme_port}/dir");
    let ca_file = ca.ca_file().to_str().unwrap().to_string();
    eventually_ok("pebble answers", || {
        run("curl", &["-sSf", "--cacert", &ca_file, &directory].map(String::from)).0.status.success()
    })
    .await;

    Pebble { directory, mgmt_port, ca_file, _children: (dns, server) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_with_pebble_obtains_a_certificate_for_two_names_serves_it_and_renews() {
    let test = "acme_with_pebble";
    if !have("pebble", test) || !have("pebble-challtestsrv", test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ca");
    let (http, https) = (free_addr(), free_addr());
    let p = pebble(dir.path(), &ca, http, https).await;
    let (directory, mgmt_port, ca_file) = (p.directory.clone(), p.mgmt_port, p.ca_file.clone());
    let agent = Agent::process()
        .metrics()
        .proxy_key("http", &toml_list(&[&http.to_string()]))
        .proxy_key("https", &toml_list(&[&https.to_string()]))
        .proxy_key("acme_directory", &format!("{directory:?}"))
        .proxy_key("acme_ca", &format!("{ca_file:?}"))
        // Longer than Pebble's certificates live here: every look renews.
        .proxy_key("acme_renew_before", "\"30d\"")
        .service(
            Svc::new("web-m")
                .env("VERSION", "m1")
                .set("", "hosts", "[\"m1.test\", \"m2.test\"]")
                .set("", "tls", "\"acme\"")
                .set("", "redirect_https", "true"),
        )
        .start()
        .await;
    agent.op("web-m", "deploy", json!({}), OP).await;
    // The config check reads the real directory (trusting acme_ca).
    let config = agent.config_path().to_str().unwrap().to_string();
    bg_agent_run(&["--check-config", "--config", &config], &[], Duration::from_secs(20)).assert_exit_code(0);
    let s = Scene { agent, ca, http, https, _dir: dir };

    // Issued by Pebble (not our CA), for both names, and served.
    let issuer = |host: &str| {
        let (out, _) = run(
            "sh",
            &[
                "-c".into(),
                format!(
                    "openssl s_client -connect 127.0.0.1:{} -servername {host} </dev/null 2>/dev/null | openssl x509 -noout -issuer -ext subjectAltName",
                    s.https.port()
                ),
            ],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !issuer("m1.test").contains("Pebble") {
        assert!(Instant::now() < deadline, "no ACME certificate served:\n{}", s.agent.log());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let info = issuer("m2.test");
    assert!(info.contains("Pebble") && info.contains("m1.test") && info.contains("m2.test"), "{info}");
    let first = s.served_serial("m1.test");
    assert_eq!(s.served_serial("m2.test"), first, "one certificate for both names");

    // curl trusts Pebble's root and gets the app, over h2.
    let root = s._dir.path().join("pebble-root.pem");
    let (out, _) = run(
        "curl",
        &[
            "-sSf",
            "--cacert",
            &ca_file,
            "-o",
            root.to_str().unwrap(),
            &format!("https://127.0.0.1:{mgmt_port}/roots/0"),
        ]
        .map(String::from),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (out, _) = run(
        "curl",
        &[
            "-sS",
            "--http2",
            "--resolve",
            &format!("m2.test:{}:127.0.0.1", s.https.port()),
            "--cacert",
            root.to_str().unwrap(),
            "-w",
            "%{http_code} %{http_version}",
            "-o",
            "/dev/null",
            &format!("https://m2.test:{}/", s.https.port()),
        ]
        .map(String::from),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200 2", "{}", String::from_utf8_lossy(&out.stderr));

    // Renewed: a new certificate reaches new handshakes.
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.served_serial("m1.test") == first {
        assert!(Instant::now() < deadline, "not renewed:\n{}", s.agent.log());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Account and certificates under state_dir/acme/, mode 0600.
    for f in ["account.json", "web-m.key", "web-m.pem"] {
        let mode = std::fs::metadata(s.agent.state_dir().join("acme").join(f)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    let events = s.agent.events("web-m").await;
    let obtained = events
        .iter()
        .filter(|e| e["message"].as_str().is_some_and(|m| m.contains("obtained through ACME")))
        .count();
    assert!(obtained >= 2, "an event per certificate: {events:?}");
    let scrape = s.agent.scrape().await;
    assert!(scrape.one("bg_certificate_expiry_seconds", &[("host", "m1.test")]) > 1.7e9);
}

async fn eventually_ok(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within 20s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acme_server_that_does_not_answer_is_an_event_and_a_log_line_and_is_retried() {
    let (http, https) = (free_addr(), free_addr());
    // Nothing listens there.
    let directory = format!("https://127.0.0.1:{}/dir", free_port());
    let agent = Agent::process()
        .proxy_key("http", &toml_list(&[&http.to_string()]))
        .proxy_key("https", &toml_list(&[&https.to_string()]))
        .proxy_key("acme_directory", &format!("{directory:?}"))
        .service(Svc::new("web-m").set("", "hosts", "[\"m1.test\"]").set("", "tls", "\"acme\""))
        .start()
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let failures = loop {
        let events = agent.events("web-m").await;
        let failed: Vec<String> = events
            .iter()
            .filter_map(|e| e["message"].as_str())
            .filter(|m| m.contains("obtaining a certificate for m1.test failed"))
            .map(String::from)
            .collect();
        if failed.len() >= 2 {
            break failed;
        }
        assert!(Instant::now() < deadline, "no two failures reported: {events:?}\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(
        failures[0].contains("next try in 5s") && failures[1].contains("next try in 10s"),
        "{failures:?}"
    );
    assert!(agent.log().contains("obtaining a certificate for m1.test failed"), "logged too");
    // Meanwhile m1.test has no certificate: a handshake alert, and the
    // plain listener still answers.
    let (out, took) = run(
        "curl",
        &[
            "-sS",
            "--resolve",
            &format!("m1.test:{}:127.0.0.1", https.port()),
            &format!("https://m1.test:{}/", https.port()),
        ]
        .map(String::from),
    );
    assert!(!out.status.success() && took < Duration::from_secs(3), "{out:?}");
    // The config check asks the directory, and refuses, naming key and URL.
    let config = agent.config_path().to_str().unwrap().to_string();
    let out = bg_agent_run(&["--check-config", "--config", &config], &[], Duration::from_secs(20));
    out.assert_exit_code(2);
    assert!(out.stderr.contains(&format!("proxy.acme_directory {directory}")), "{out:?}");
    assert!(out.stderr.contains(&config), "names the file: {out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_to_an_acme_directory_that_does_not_answer_is_refused_whole() {
    let (http, https) = (free_addr(), free_addr());
    let agent = Agent::process()
        .proxy_key("http", &toml_list(&[&http.to_string()]))
        .proxy_key("https", &toml_list(&[&https.to_string()]))
        .service(Svc::new("web-m").env("VERSION", "m1").set("", "hosts", "[\"m1.test\"]"))
        .start()
        .await;
    agent.op("web-m", "deploy", json!({}), OP).await;
    let get = || async {
        bg_tests::api::raw(bg_tests::api::Target::Tcp(http), "GET", "/", &[("host", "m1.test")], "")
            .await
            .map(|r| (r.status, r.header("x-version").map(String::from)))
    };
    assert_eq!(get().await.unwrap(), (200, Some("m1".into())));
    let pid = agent.pid().unwrap();
    // The same service, now with an ACME certificate from a server that
    // does not answer (nothing listens there).
    let directory = format!("https://127.0.0.1:{}/dir", free_port());
    let path = agent.config_path().to_path_buf();
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replacen("[proxy]\n", &format!("[proxy]\nacme_directory = {directory:?}\n"), 1).replacen(
        "hosts = [\"m1.test\"]",
        "hosts = [\"m1.test\"]\ntls = \"acme\"",
        1,
    );
    assert!(text.contains("tls = \"acme\"") && text.contains("acme_directory"), "{text}");
    std::fs::write(&path, text).unwrap();
    let out = agent.bgctl(&["reload"]);
    out.assert_exit_code(2);
    assert!(out.stderr.contains(&format!("proxy.acme_directory {directory}")), "{out:?}");
    assert!(Path::new(&format!("/proc/{pid}")).exists(), "the running agent went away");
    assert_eq!(agent.pid(), Some(pid));
    assert_eq!(get().await.unwrap(), (200, Some("m1".into())), "the running config serves on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_with_pebble_validates_with_tls_alpn_01_when_there_is_no_http_listener() {
    let test = "acme_tls_alpn_01";
    if !have("pebble", test) || !have("pebble-challtestsrv", test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ca");
    // Pebble's http port points at nothing: only TLS-ALPN-01 can pass.
    let (unused_http, https) = (free_addr(), free_addr());
    let p = pebble(dir.path(), &ca, unused_http, https).await;
    let agent = Agent::process()
        .proxy_key("https", &toml_list(&[&https.to_string()]))
        .proxy_key("acme_directory", &format!("{:?}", p.directory))
        .proxy_key("acme_ca", &format!("{:?}", p.ca_file))
        .proxy_key("acme_renew_before", "\"1d\"")
        .service(
            Svc::new("web-t")
                .env("VERSION", "t1")
                .set("", "hosts", "[\"t1.test\", \"t2.test\"]")
                .set("", "tls", "\"acme\""),
        )
        .start()
        .await;
    agent.op("web-t", "deploy", json!({}), OP).await;
    let root = dir.path().join("pebble-root.pem");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let _ = run(
            "curl",
            &[
                "-sSf",
                "--cacert",
                &p.ca_file,
                "-o",
                root.to_str().unwrap(),
                &format!("https://127.0.0.1:{}/roots/0", p.mgmt_port),
            ]
            .map(String::from),
        );
        let (out, _) = run(
            "curl",
            &[
                "-sS",
                "--resolve",
                &format!("t2.test:{}:127.0.0.1", https.port()),
                "--cacert",
                root.to_str().unwrap(),
                "-w",
                "%{http_code} %{http_version} %header{x-version}",
                "-o",
                "/dev/null",
                &format!("https://t2.test:{}/", https.port()),
            ]
            .map(String::from),
        );
        if String::from_utf8_lossy(&out.stdout) == "200 2 t1" {
            break;
        }
        assert!(Instant::now() < deadline, "no ACME certificate served over TLS-ALPN-01:\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(agent.log().contains("obtained through ACME"), "{}", agent.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handovers_pass_the_edge_listeners_on_and_lose_no_request() {
    let mut s = scene().await;
    let bound = Duration::from_secs(120);
    let keepalive = Load::keepalive(4).target(s.http).header("host", "b.test").max_duration(bound).start();
    let fresh = Load::rate(50)
        .fresh_connections()
        .target(s.http)
        .header("host", "b.test")
        .max_duration(bound)
        .start();
    eventually("load flows", Duration::from_secs(10), || keepalive.completed() > 100).await;
    for round in 0..3 {
        s.agent.handover().await;
        let (k, f) = (keepalive.completed(), fresh.completed());
        eventually("requests flow after the handover", Duration::from_secs(20), || {
            keepalive.completed() > k + 100 && fresh.completed() > f + 10
        })
        .await;
        // TLS on the new agent: the certificates were loaded again.
        let (out, _) = s.curl("a.test", "/", &["--http2"]);
        assert_eq!(Scene::summary(&out), "200 2 a1", "round {round}");
    }
    let (keepalive, fresh) = (keepalive.stop().await, fresh.stop().await);
    eprintln!("handovers: keep-alive {} ok, fresh {} ok", keepalive.ok, fresh.ok);
    assert_eq!((keepalive.failed, fresh.failed), (0, 0), "{:?} {:?}", keepalive.errors, fresh.errors);
    assert_eq!(keepalive.by_version.keys().collect::<Vec<_>>(), ["b1"]);
}
