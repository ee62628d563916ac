//! Bad input over the control API end to end: a real agent, real HTTP on
//! its unix socket. Every bad request gets a 4xx with a JSON error that
//! names what is wrong, the agent does not panic, and nothing changes.

use bg_tests::agent::{Agent, RunningAgent, Svc};
use bg_tests::api::{raw, RawResponse, Target};
use bg_tests::status::outcome;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const OP: Duration = Duration::from_secs(60);

/// Everything a refused request must leave as it was.
async fn snapshot(agent: &RunningAgent) -> (Value, Value, usize) {
    let status = agent.status("web").await;
    let (code, history) = agent.api_get("/v1/services/web/history").await.unwrap();
    assert_eq!(code, 200);
    (status, history, agent.events("web").await.len())
}

fn code_for(status: u16) -> &'static str {
    match status {
        400 => "bad_request",
        404 => "not_found",
        405 => "method_not_allowed",
        413 => "payload_too_large",
        other => panic!("no error code expected for {other}"),
    }
}

fn assert_error(what: &str, resp: &RawResponse, status: u16, needle: &str) {
    assert_eq!(resp.status, status, "{what}: {}", resp.text());
    assert_eq!(resp.header("content-type"), Some("application/json"), "{what}");
    let v = resp.json();
    let error = v["error"].as_object().unwrap_or_else(|| panic!("{what}: no error object: {v}"));
    assert_eq!(error.len(), 2, "{what}: error has exactly code and message: {v}");
    assert_eq!(v["error"]["code"], code_for(status), "{what}: {v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(needle), "{what}: message {message:?} does not name {needle:?}");
}

/// (what, method, path, body, status, a fragment the message must hold)
type Case = (&'static str, &'static str, &'static str, Vec<u8>, u16, &'static str);

fn cases() -> Vec<Case> {
    let j = |v: Value| v.to_string().into_bytes();
    let b = |s: &str| s.as_bytes().to_vec();
    let deploy = "/v1/services/web/deploy";
    let canary = "/v1/services/web/canary";
    let rolling = "/v1/services/web/rolling";
    let big = j(json!({"env": {"BIG": "x".repeat(2 << 20)}}));
    vec![
        // Malformed JSON.
        ("truncated JSON", "POST", deploy, b(r#"{"image": "#), 400, "invalid JSON body"),
        ("not an object", "POST", deploy, b("[1, 2]"), 400, "invalid JSON body"),
        ("not UTF-8", "POST", deploy, vec![0xff, 0xfe, b'{', b'}'], 400, "invalid JSON body"),
        ("trailing data", "POST", deploy, b("{} {}"), 400, "trailing"),
        ("NUL byte", "POST", deploy, b("{\"image\":\"a\0\"}"), 400, "invalid JSON body"),
        (
            "deep nesting",
            "POST",
            "/v1/services/web/promote",
            {
                let mut v = b(r#"{"a":"#);
                v.extend(std::iter::repeat_n(b'[', 50_000));
                v
            },
            400,
            "recursion limit",
        ),
        // Too big.
        ("a 2 MiB body", "POST", deploy, big, 413, "larger than the limit"),
        // Unknown things.
        (
            "unknown service",
            "POST",
            "/v1/services/nope/deploy",
            j(json!({})),
            404,
            "unknown service \"nope\"",
        ),
        ("unknown service status", "GET", "/v1/services/nope", vec![], 404, "unknown service"),
        ("unknown operation", "POST", "/v1/services/web/explode", j(json!({})), 404, "explode"),
        ("unknown replica", "POST", "/v1/services/web/replicas/99/drain", vec![], 404, "99"),
        ("unknown endpoint", "GET", "/v2/everything", vec![], 404, "/v2/everything"),
        ("wrong method", "DELETE", "/v1/services/web", vec![], 405, "DELETE"),
        // Image references.
        ("uppercase image", "POST", deploy, j(json!({"image": "Websample:v1"})), 400, "lowercase"),
        ("image with a space", "POST", deploy, j(json!({"image": "web sample"})), 400, "whitespace"),
        ("empty image", "POST", deploy, j(json!({"image": ""})), 400, "empty"),
        ("bad tag", "POST", deploy, j(json!({"image": "websample:-v2"})), 400, "tag \"-v2\""),
        ("bad digest", "POST", deploy, j(json!({"image": "websample@sha256:zz"})), 400, "digest"),
        ("double slash", "POST", deploy, j(json!({"image": "team//app"})), 400, "empty path component"),
        ("bad image in rolling", "POST", rolling, j(json!({"image": "A:B"})), 400, "image"),
        (
            "bad image in replica update",
            "POST",
            "/v1/services/web/replicas/1/update",
            j(json!({"image": "x:"})),
            400,
            "image",
        ),
        // Durations.
        (
            "bad interval",
            "POST",
            canary,
            j(json!({"steps": [10, 50], "interval": "5 parsecs"})),
            400,
            "interval",
        ),
        ("bad max_p99", "POST", canary, j(json!({"weight": 10, "max_p99": "fast"})), 400, "max_p99"),
        ("bad delay", "POST", rolling, j(json!({"delay": "later"})), 400, "delay"),
        ("endless monitor", "POST", rolling, j(json!({"monitor": "18446744073709551615s"})), 400, "monitor"),
        // Unknown fields.
        ("misspelt deploy field", "POST", deploy, j(json!({"imgae": "websample:v2"})), 400, "imgae"),
        ("misspelt canary field", "POST", canary, j(json!({"wieght": 10})), 400, "wieght"),
        ("misspelt rolling field", "POST", rolling, j(json!({"paralellism": 2})), 400, "paralellism"),
        (
            "parameters to promote",
            "POST",
            "/v1/services/web/promote",
            j(json!({"force": true})),
            400,
            "force",
        ),
        // Wrong types and ranges.
        ("string for a bool", "POST", deploy, j(json!({"promote": "yes"})), 400, "promote"),
        ("number for a string", "POST", deploy, j(json!({"env": {"A": 1}})), 400, "env.A"),
        ("string for a list", "POST", deploy, j(json!({"command": "ls"})), 400, "command"),
        ("weight over 255", "POST", canary, j(json!({"weight": 300})), 400, "weight"),
        ("weight over 100", "POST", canary, j(json!({"weight": 101})), 400, "weight"),
        ("negative weight", "POST", canary, j(json!({"weight": -1})), 400, "weight"),
        (
            "ratio over 1",
            "POST",
            canary,
            j(json!({"weight": 10, "max_error_rate": 5})),
            400,
            "max_error_rate",
        ),
        ("bad order", "POST", rolling, j(json!({"order": "random"})), 400, "order"),
        ("PORT in env", "POST", deploy, j(json!({"env": {"PORT": "1"}})), 400, "env.PORT"),
        ("empty env key", "POST", deploy, j(json!({"env": {"": "x"}})), 400, "env key"),
        ("empty command", "POST", deploy, j(json!({"command": []})), 400, "command"),
        ("bad since", "GET", "/v1/events?since=yesterday", vec![], 400, "since"),
    ]
}

/// POST a body with chunked transfer encoding (no length announced), so
/// the limit must be enforced while reading.
async fn chunked_post(agent: &RunningAgent, path: &str, total: usize) -> RawResponse {
    let mut stream = tokio::net::UnixStream::connect(agent.socket()).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: agent\r\nconnection: close\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b' '; 16 * 1024];
    let mut sent = 0;
    while sent < total {
        let frame = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
        if stream.write_all(&frame).await.is_err() {
            break; // The agent answered and closed: fine.
        }
        sent += chunk.len();
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut headers = http::HeaderMap::new();
    for line in head.lines().skip(1) {
        if let Some((k, v)) = line.split_once(": ") {
            headers.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
    }
    // A chunked answer body: take the JSON object out of it.
    let body = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(z)) => body[a..=z].to_string(),
        _ => body.to_string(),
    };
    RawResponse { status, headers, body: body.into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_named_4xx_and_change_nothing() {
    let agent = Agent::process().service(Svc::new("web").replicas(2)).start().await;
    let first = agent.op("web", "deploy", json!({}), OP).await;
    assert_eq!(outcome(&first).0, "succeeded", "{first}");
    let before = snapshot(&agent).await;

    for (what, method, path, body, status, needle) in cases() {
        let resp =
            raw(Target::Unix(agent.socket()), method, path, &[("content-type", "application/json")], body)
                .await
                .unwrap_or_else(|e| panic!("{what}: no answer ({e}); log:\n{}", agent.log()));
        assert_error(what, &resp, status, needle);
    }
    let resp = chunked_post(&agent, "/v1/services/web/deploy", 1 << 20).await;
    assert_error("a 1 MiB chunked body", &resp, 413, "larger than the limit");

    assert_eq!(snapshot(&agent).await, before, "a refused request changed the service");
    let log = agent.log();
    assert!(!log.contains("panicked"), "the agent panicked:\n{log}");

    // The agent is still fully usable.
    let ok = agent.op("web", "deploy", json!({"env": {"VERSION": "v2"}}), OP).await;
    assert_eq!(outcome(&ok).0, "succeeded", "a valid request after all that: {ok}");
}
