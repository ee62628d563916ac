//! The control API across hosts: HTTPS with a certificate from a test CA
//! (rcgen), mutual TLS with client certificates, the bearer token on top,
//! failed authentications limited per address, and the config checks
//! that keep the token out of plain text. Driven with the real bgctl and
//! curl.

use bg_tests::agent::{bg_agent_run, bgctl, free_addr, Agent, CtlOutput, RunningAgent, Svc};
use bg_tests::certs::{TestCa, Usage};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const TOKEN: &str = "control-token-0123456789";

struct Pki {
    dir: tempfile::TempDir,
    ca: TestCa,
    other: TestCa,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new(dir.path(), "ca");
        let other = TestCa::new(dir.path(), "other-ca");
        Pki { dir, ca, other }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// An agent whose control API speaks mutual TLS with `server` (cert, key).
async fn tls_agent(pki: &Pki, server: &(PathBuf, PathBuf)) -> RunningAgent {
    Agent::process()
        .tcp_token(TOKEN)
        .control_tls(&server.0, &server.1, Some(&pki.ca.ca_file()))
        .service(Svc::new("web"))
        .start()
        .await
}

/// What is wrong, the TLS flags, the host connected to, and the message.
type Case<'a> = (&'a str, Vec<(&'a str, &'a Path)>, &'a str, &'a str);

/// bgctl against `agent` over https with these TLS files.
fn ctl(agent: &RunningAgent, host: &str, tls: &[(&str, &Path)], token: &str, args: &[&str]) -> CtlOutput {
    let addr = agent.control_addr().unwrap();
    let mut all = vec![
        "--agent".to_string(),
        format!("https://{host}:{}", addr.port()),
        "--token".into(),
        token.into(),
    ];
    for (flag, path) in tls {
        all.push(format!("--{flag}"));
        all.push(path.display().to_string());
    }
    all.extend(args.iter().map(|a| a.to_string()));
    bgctl(&all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bgctl_over_mutual_tls_works_and_every_wrong_credential_is_refused_with_its_reason() {
    let pki = Pki::new();
    // Named "localhost" only: 127.0.0.1 is then the wrong name.
    let server = pki.ca.leaf("server", &["localhost"], Usage::Server, None);
    let client = pki.ca.leaf("client", &["bgctl"], Usage::Client, None);
    let stranger = pki.other.leaf("stranger", &["bgctl"], Usage::Client, None);
    let agent = tls_agent(&pki, &server).await;
    let ca = pki.ca.ca_file();
    let good = [("ca", ca.as_path()), ("cert", client.0.as_path()), ("key", client.1.as_path())];

    // Every command works, JSON included.
    let out = ctl(&agent, "localhost", &good, TOKEN, &["--output", "json", "deploy", "web", "--promote"]);
    out.assert_exit_code(0);
    assert_eq!(out.stdout_json()["outcome"], "succeeded", "{out:?}");
    let out = ctl(&agent, "localhost", &good, TOKEN, &["--output", "json", "status", "web"]);
    out.assert_exit_code(0);
    assert_eq!(out.stdout_json()["active"], "blue");
    ctl(&agent, "localhost", &good, TOKEN, &["history", "web"]).assert_exit_code(0);
    ctl(&agent, "localhost", &good, TOKEN, &["events", "web"]).assert_exit_code(0);
    let revision = agent.status("web").await["revision"].clone();

    // Each wrong credential: exit 3, its own message, nothing changed.
    let deploy = ["deploy", "web", "--env", "VERSION=v9", "--promote"];
    let other_ca = pki.other.ca_file();
    let cases: [Case; 4] = [
        ("no client certificate", vec![("ca", ca.as_path())], "localhost", "requires a client certificate"),
        (
            "a client certificate of another CA",
            vec![("ca", ca.as_path()), ("cert", stranger.0.as_path()), ("key", stranger.1.as_path())],
            "localhost",
            "refused our client certificate",
        ),
        ("the wrong host name", good.to_vec(), "127.0.0.1", "not valid for this host name"),
        (
            "an unknown CA",
            vec![("ca", other_ca.as_path()), ("cert", client.0.as_path()), ("key", client.1.as_path())],
            "localhost",
            "not signed by the CA given",
        ),
    ];
    for (what, tls, host, message) in &cases {
        let out = ctl(&agent, host, tls, TOKEN, &deploy);
        out.assert_exit_code(3);
        assert!(out.stderr.contains(message), "{what}: {out:?}");
    }
    let out = ctl(&agent, "localhost", &good, "wrong-token-0123456789", &deploy);
    out.assert_exit_code(3);
    assert!(out.stderr.contains("unauthorized"), "wrong token: {out:?}");
    assert_eq!(agent.status("web").await["revision"], revision, "a refused request changed state");
    assert!(!agent.log().contains("wrong-token"), "a token reached the log");

    // Plain HTTP to the TLS port fails at once, cleanly.
    let started = std::time::Instant::now();
    let port = agent.control_addr().unwrap().port();
    let out = bgctl(&[
        "--agent".into(),
        format!("http://127.0.0.1:{port}"),
        "--token".into(),
        TOKEN.into(),
        "status".into(),
    ]);
    out.assert_exit_code(3);
    assert!(started.elapsed() < Duration::from_secs(10), "plain HTTP hung for {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_certificate_files_are_served_and_an_expired_one_is_named() {
    let pki = Pki::new();
    let server = pki.ca.leaf("server", &["127.0.0.1"], Usage::Server, None);
    let client = pki.ca.leaf("client", &["bgctl"], Usage::Client, None);
    let agent = tls_agent(&pki, &server).await;
    let ca = pki.ca.ca_file();
    let good = [("ca", ca.as_path()), ("cert", client.0.as_path()), ("key", client.1.as_path())];
    ctl(&agent, "127.0.0.1", &good, TOKEN, &["status"]).assert_exit_code(0);
    // The same files now hold a certificate that expires in a few seconds:
    // once the agent has read it (it looks every second), it is the one
    // served, and when it expires bgctl says so.
    let expiry = time::OffsetDateTime::now_utc() + time::Duration::seconds(6);
    let replaced = pki.ca.leaf("server-next", &["127.0.0.1"], Usage::Server, Some(expiry));
    std::fs::rename(&replaced.1, &server.1).unwrap();
    std::fs::rename(&replaced.0, &server.0).unwrap();
    let left = expiry - time::OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_secs_f64(left.as_seconds_f64().max(0.0) + 1.5)).await;
    let out = ctl(&agent, "127.0.0.1", &good, TOKEN, &["status"]);
    out.assert_exit_code(3);
    assert!(out.stderr.contains("has expired"), "the replaced certificate is not served: {out:?}");
    assert!(agent.log().contains("control API certificate files reloaded"), "{}", agent.log());
}

/// `curl` to the agent's TLS control port from source address `from`
/// with `token`; the HTTP status and `Retry-After`.
fn curl(
    pki: &Pki,
    agent: &RunningAgent,
    client: &(PathBuf, PathBuf),
    from: &str,
    token: &str,
) -> (u16, String) {
    let port = agent.control_addr().unwrap().port();
    let headers = pki.path(&format!("headers-{from}"));
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--interface", from, "--cacert"])
        .arg(pki.ca.ca_file())
        .arg("--cert")
        .arg(&client.0)
        .arg("--key")
        .arg(&client.1)
        .arg("-D")
        .arg(&headers)
        .args([
            "-H",
            &format!("Authorization: Bearer {token}"),
            &format!("https://127.0.0.1:{port}/v1/services"),
        ])
        .output()
        .expect("curl must be installed (Debian package curl)");
    let code = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
    let retry = std::fs::read_to_string(&headers)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("retry-after:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    (code, retry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eleven_bad_tokens_in_a_minute_from_one_address_get_429_another_address_does_not() {
    let pki = Pki::new();
    let server = pki.ca.leaf("server", &["127.0.0.1"], Usage::Server, None);
    let client = pki.ca.leaf("client", &["bgctl"], Usage::Client, None);
    let agent = tls_agent(&pki, &server).await;
    for i in 0..10 {
        assert_eq!(curl(&pki, &agent, &client, "127.0.0.1", "bad-token").0, 401, "attempt {i}");
    }
    let (code, retry) = curl(&pki, &agent, &client, "127.0.0.1", "bad-token");
    assert_eq!(code, 429);
    assert!(retry.parse::<u64>().is_ok_and(|s| (1..=60).contains(&s)), "Retry-After {retry:?}");
    // Even the right token waits: the answer tells nothing about it.
    assert_eq!(curl(&pki, &agent, &client, "127.0.0.1", TOKEN).0, 429);
    assert_eq!(curl(&pki, &agent, &client, "127.0.0.2", TOKEN).0, 200, "another address is affected");
    let log = agent.log();
    assert!(log.contains("127.0.0.1") && log.contains("too many failed"), "not logged by address");
    assert!(!log.contains("bad-token") && !log.contains(TOKEN), "a token reached the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_file_with_tls_files_drives_two_agents_over_mutual_tls() {
    let pki = Pki::new();
    let server = pki.ca.leaf("server", &["127.0.0.1"], Usage::Server, None);
    let client = pki.ca.leaf("client", &["bgctl"], Usage::Client, None);
    let a = tls_agent(&pki, &server).await;
    let b = tls_agent(&pki, &server).await;
    let token = pki.path("token");
    std::fs::write(&token, TOKEN).unwrap();
    let q = |p: &Path| format!("{:?}", p.display().to_string());
    let fleet = format!(
        "token_file = {}\nca_file = {}\ncert_file = {}\nkey_file = {}\n[hosts.a]\nagent = \"https://127.0.0.1:{}\"\n[hosts.b]\nagent = \"https://127.0.0.1:{}\"\n",
        q(&token),
        q(&pki.ca.ca_file()),
        q(&client.0),
        q(&client.1),
        a.control_addr().unwrap().port(),
        b.control_addr().unwrap().port()
    );
    let file = pki.path("fleet.toml");
    std::fs::write(&file, fleet).unwrap();
    let out = bgctl(&[
        "--fleet".into(),
        file.display().to_string(),
        "deploy".into(),
        "web".into(),
        "--promote".into(),
    ]);
    out.assert_exit_code(0);
    let out = bgctl(&[
        "--fleet".into(),
        file.display().to_string(),
        "--output".into(),
        "json".into(),
        "status".into(),
    ]);
    out.assert_exit_code(0);
    let doc = out.stdout_json();
    for host in doc["agents"].as_array().unwrap() {
        assert_eq!(host["result"]["services"][0]["active"], "blue", "{doc}");
    }
    assert_eq!(doc["agents"].as_array().unwrap().len(), 2);
}

#[test]
fn the_config_check_keeps_the_token_out_of_plain_text() {
    let pki = Pki::new();
    let token = pki.path("token");
    std::fs::write(&token, TOKEN).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (cert, key) = pki.ca.leaf("server", &["127.0.0.1"], Usage::Server, None);
    let other = pki.other.leaf("mismatch", &["127.0.0.1"], Usage::Server, None);
    let check = |agent_lines: &str| {
        let config = pki.path("agent.toml");
        std::fs::write(
            &config,
            format!(
                "[agent]\nstate_dir = {:?}\ncontrol_socket = {:?}\ntoken_file = {:?}\n{agent_lines}\n[runtime]\nkind = \"process\"\n\n[services.web]\nlisten = [\"{}\"]\ncommand = [\"/bin/true\"]\n",
                pki.path("state"),
                pki.path("agent.sock"),
                token,
                free_addr()
            ),
        )
        .unwrap();
        bg_agent_run(&["--check-config", "--config", config.to_str().unwrap()], &[], Duration::from_secs(30))
    };
    let q = |p: &Path| format!("{:?}", p.display().to_string());
    let out = check("control_listen = \"0.0.0.0:7443\"");
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("agent.control_listen") && out.stderr.contains("allow_plaintext"), "{out:?}");
    assert_eq!(check("control_listen = \"0.0.0.0:7443\"\nallow_plaintext = true").code, 0);
    let tls = format!(
        "control_listen = \"0.0.0.0:7443\"\ncontrol_tls = {{ cert = {}, key = {} }}",
        q(&cert),
        q(&key)
    );
    assert_eq!(check(&tls).code, 0, "{:?}", check(&tls));
    // A certificate that does not match its key; a key readable by others;
    // a client_ca that is not a certificate: each named, exit 2.
    let mismatch = format!(
        "control_listen = \"0.0.0.0:7443\"\ncontrol_tls = {{ cert = {}, key = {} }}",
        q(&cert),
        q(&other.1)
    );
    let out = check(&mismatch);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("does not match"), "{out:?}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = check(&tls);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("readable by group or others"), "{out:?}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let not_ca = format!(
        "control_listen = \"0.0.0.0:7443\"\ncontrol_tls = {{ cert = {}, key = {}, client_ca = {} }}",
        q(&cert),
        q(&key),
        q(&token)
    );
    let out = check(&not_ca);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("CERTIFICATE") && out.stderr.contains("token"), "{out:?}");
    // A token file readable by others.
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = check("control_listen = \"127.0.0.1:7443\"");
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("agent.token_file") && out.stderr.contains("readable by others"), "{out:?}");
}
