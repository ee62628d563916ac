//! Access to the agent end to end: the control socket's mode and group,
//! the TCP API's bearer token (refused to start without one, 401 that
//! tells nothing), and tokens never reaching the log.

use bg_tests::agent::{bg_agent_run, free_addr, Agent, RunningAgent, Svc};
use bg_tests::api::{raw, RawResponse, Target};
use serde_json::json;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::time::Duration;

const TOKEN: &str = "Zq7rXv9KpL2mWn4TbY8cHd3FsJ6gE1uA";
const WRONG: &str = "Zq7rXv9KpL2mWn4TbY8cHd3FsJ6gE1uB";
const OP: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_socket_is_mode_0660() {
    let agent = Agent::process().service(Svc::new("web")).start().await;
    let meta = std::fs::metadata(agent.socket()).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660, "mode {:o}", meta.permissions().mode());
}

/// A group other than our primary one that this process may give a file
/// to: any group for root, else one of our supplementary groups.
fn another_group() -> Option<nix::unistd::Group> {
    let primary = nix::unistd::getgid();
    let candidates: Vec<nix::unistd::Gid> = if nix::unistd::geteuid().is_root() {
        (1..1000).map(nix::unistd::Gid::from_raw).collect()
    } else {
        nix::unistd::getgroups().unwrap_or_default()
    };
    candidates
        .into_iter()
        .filter(|g| *g != primary)
        .find_map(|g| nix::unistd::Group::from_gid(g).ok().flatten())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_socket_group_is_configurable() {
    let primary = nix::unistd::Group::from_gid(nix::unistd::getgid())
        .unwrap()
        .expect("the primary group of this process has a name");
    let agent = Agent::process().socket_group(&primary.name).service(Svc::new("web")).start().await;
    let meta = std::fs::metadata(agent.socket()).unwrap();
    assert_eq!(
        meta.gid(),
        primary.gid.as_raw(),
        "socket group with control_socket_group = {:?}",
        primary.name
    );
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
    drop(agent);

    // With our primary group the socket would get it anyway; a second
    // group proves the agent really sets it.
    let other = another_group().expect(
        "this test needs a second group it may chown to (run as root, or with a supplementary group)",
    );
    let agent = Agent::process().socket_group(&other.name).service(Svc::new("web")).start().await;
    let meta = std::fs::metadata(agent.socket()).unwrap();
    assert_eq!(meta.gid(), other.gid.as_raw(), "socket group with control_socket_group = {:?}", other.name);
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
}

/// Start an agent whose TCP API reads `token_file`; it must refuse.
fn refused_start(token_file: Option<&str>) -> (String, std::net::SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let control = free_addr();
    let token_line =
        token_file.map(|t| format!("token_file = {:?}\n", dir.path().join(t))).unwrap_or_default();
    let config = dir.path().join("agent.toml");
    for (name, text) in [("short", "abc123\n"), ("empty", "\n\n")] {
        std::fs::write(dir.path().join(name), text).unwrap();
        std::fs::set_permissions(dir.path().join(name), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    std::fs::write(
        &config,
        format!(
            "[agent]\nstate_dir = {:?}\ncontrol_socket = {:?}\ncontrol_listen = \"{control}\"\n{token_line}\n\
             [runtime]\nkind = \"process\"\n\n[services.web]\nlisten = [\"{}\"]\ncommand = [\"/bin/true\"]\n",
            dir.path().join("state"),
            dir.path().join("agent.sock"),
            free_addr(),
        ),
    )
    .unwrap();
    let out = bg_agent_run(&["--config", config.to_str().unwrap()], &[], Duration::from_secs(60));
    assert_ne!(out.code, 0, "the agent started without a usable token: {}", out.stderr);
    assert!(std::net::TcpStream::connect(control).is_err(), "the TCP control API listens anyway");
    (out.stderr, control)
}

#[test]
fn the_tcp_api_refuses_to_start_without_a_token() {
    let (stderr, _) = refused_start(None);
    assert!(stderr.contains("agent.control_listen") && stderr.contains("token_file"), "{stderr}");

    let (stderr, _) = refused_start(Some("missing"));
    assert!(stderr.contains("token file") && stderr.contains("missing"), "{stderr}");

    let (stderr, _) = refused_start(Some("empty"));
    assert!(stderr.contains("token file") && stderr.contains("at least 16"), "{stderr}");

    let (stderr, _) = refused_start(Some("short"));
    assert!(stderr.contains("token file") && stderr.contains("at least 16"), "{stderr}");
    assert!(!stderr.contains("abc123"), "the refused token is quoted: {stderr}");
}

async fn tcp(agent: &RunningAgent, method: &str, path: &str, auth: Option<&str>, body: &str) -> RawResponse {
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", *a)).collect();
    raw(Target::Tcp(agent.control_addr().unwrap()), method, path, &headers, body.to_string())
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// Every `Authorization` value that must be refused, and why.
fn wrong_auth() -> Vec<(&'static str, Option<String>)> {
    vec![
        ("no header", None),
        ("wrong token", Some(format!("Bearer {WRONG}"))),
        ("a prefix of the token", Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]))),
        ("the token and more", Some(format!("Bearer {TOKEN}x"))),
        ("another scheme", Some(format!("Basic {TOKEN}"))),
        ("no scheme", Some(TOKEN.to_string())),
        ("empty bearer", Some("Bearer ".to_string())),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_gets_401_that_tells_nothing_and_changes_nothing() {
    let agent = Agent::process().tcp_token(TOKEN).service(Svc::new("web")).start().await;
    let bearer = format!("Bearer {TOKEN}");
    let ok = tcp(&agent, "GET", "/v1/services/web", Some(&bearer), "").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let lower = format!("bearer {TOKEN}");
    assert_eq!(
        tcp(&agent, "GET", "/v1/health", Some(&lower), "").await.status,
        200,
        "the scheme is case-insensitive"
    );
    let before = agent.status("web").await;

    let mut bodies = Vec::new();
    let mut limited = Vec::new();
    let mut failures = 0;
    for (what, auth) in wrong_auth() {
        for (method, path, body) in [
            ("GET", "/v1/services", String::new()),
            ("GET", "/v1/services/no-such-service", String::new()),
            ("POST", "/v1/services/web/deploy", json!({"env": {"VERSION": "v9"}}).to_string()),
            ("POST", "/v1/services/web/deploy", "x".repeat(1 << 20)),
        ] {
            let resp = tcp(&agent, method, path, auth.as_deref(), &body).await;
            failures += 1;
            if failures > bg_agent::auth_limit::MAX_FAILURES {
                // Past the limit per address: 429 before the token is read.
                assert_eq!(resp.status, 429, "{what}: {method} {path}: {}", resp.text());
                assert!(resp.header("retry-after").is_some_and(|v| v.parse::<u64>().is_ok()), "{what}");
                limited.push(resp.json()["error"]["code"].to_string());
                continue;
            }
            assert_eq!(resp.status, 401, "{what}: {method} {path}: {}", resp.text());
            assert_eq!(resp.header("www-authenticate"), Some("Bearer"), "{what}");
            let v = resp.json();
            assert_eq!(v["error"]["code"], "unauthorized", "{what}: {v}");
            let message = v["error"]["message"].as_str().unwrap_or_default();
            assert!(!message.is_empty(), "{what}: an empty message");
            let text = resp.text();
            for window in TOKEN.as_bytes().windows(4) {
                let piece = std::str::from_utf8(window).unwrap();
                assert!(!text.contains(piece), "{what}: the answer holds {piece:?} of the token: {text}");
            }
            assert!(
                !text.contains(&TOKEN.len().to_string()),
                "{what}: the answer hints at the token length: {text}"
            );
            bodies.push(text);
        }
    }
    bodies.dedup();
    assert_eq!(bodies.len(), 1, "every refusal must be the same answer, or it tells something: {bodies:?}");
    limited.dedup();
    assert!(limited.len() <= 1, "the limited answers differ: {limited:?}");
    let after = agent.status("web").await;
    assert_eq!(before, after, "a refused request changed the service");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_appear_in_the_log_even_at_trace() {
    let mut agent =
        Agent::process().tcp_token(TOKEN).rust_log("trace").service(Svc::new("web")).start().await;
    assert_eq!(agent.token().as_deref(), Some(TOKEN));
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(tcp(&agent, "GET", "/v1/services", Some(&bearer), "").await.status, 200);
    let deploy = tcp(&agent, "POST", "/v1/services/web/deploy", Some(&bearer), "{}").await;
    assert_eq!(deploy.status, 202, "{}", deploy.text());
    agent.wait_idle("web", OP).await;
    let events = tcp(&agent, "GET", "/v1/events?service=web", Some(&bearer), "").await;
    assert_eq!(events.status, 200);
    let refused = wrong_auth();
    for (_, auth) in &refused {
        assert_eq!(tcp(&agent, "GET", "/v1/services", auth.as_deref(), "").await.status, 401);
    }
    assert!(agent.stop().success());

    let log = agent.log();
    assert!(log.contains("control API request"), "requests are logged (or this test proves nothing):\n{log}");
    let refusals = log.matches("request refused").count();
    assert!(refusals >= refused.len(), "{refusals} refusals logged, {} sent:\n{log}", refused.len());
    assert!(!log.contains(TOKEN), "the token is in the log:\n{log}");
    assert!(!log.contains(WRONG), "a presented token is in the log:\n{log}");
    assert!(!log.to_lowercase().contains("bearer zq7r"), "an Authorization header is in the log:\n{log}");
}
