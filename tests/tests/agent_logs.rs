//! The agent's logs end to end: `--log-format json` writes one JSON object
//! per line, from start to shutdown and on a failed start too, and every
//! operation is logged with its service, revision and outcome.

use bg_tests::agent::{bg_agent_run, free_addr, Agent, Svc};
use bg_tests::status::outcome;
use serde_json::{json, Value};
use std::time::Duration;

const OP: Duration = Duration::from_secs(60);

/// Every line of `log` parsed as one JSON object; panics on the first line
/// that is not.
fn json_lines(log: &str) -> Vec<Value> {
    assert!(!log.trim().is_empty(), "the log is empty");
    log.lines()
        .enumerate()
        .map(|(i, line)| {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("log line {} is not JSON ({e}): {line:?}\nlog:\n{log}", i + 1));
            assert!(v.is_object(), "log line {} is not an object: {line}", i + 1);
            for key in ["timestamp", "level", "target"] {
                assert!(v.get(key).is_some(), "log line {} has no {key:?}: {line}", i + 1);
            }
            v
        })
        .collect()
}

fn text(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_and_name_each_operations_service_revision_and_outcome() {
    let mut agent = Agent::process().log_format("json").service(Svc::new("web")).start().await;
    let first = agent.op("web", "deploy", json!({}), OP).await;
    assert_eq!(outcome(&first).0, "succeeded", "{first}");
    let second = agent.op("web", "deploy", json!({"env": {"VERSION": "v2"}}), OP).await;
    assert_eq!(outcome(&second).0, "succeeded", "{second}");
    let promoted = agent.op("web", "promote", json!({}), OP).await;
    assert_eq!(outcome(&promoted).0, "succeeded", "{promoted}");
    let failed = agent.op("web", "rollback", json!({}), OP).await;
    let failed_outcome = outcome(&failed).0.to_string();
    assert!(agent.stop().success(), "the agent stops cleanly");

    let lines = json_lines(&agent.log());
    let ended = |kind: &str, revision: u64, result: &str| {
        lines.iter().any(|l| {
            text(l, "service") == "web"
                && l["revision"] == revision
                && text(l, "kind") == kind
                && text(l, "outcome") == result
                && !text(l, "message").is_empty()
        })
    };
    let log = agent.log();
    assert!(ended("deploy", 1, "succeeded"), "no line for deploy #1 with its outcome:\n{log}");
    assert!(ended("deploy", 2, "succeeded"), "no line for deploy #2 with its outcome:\n{log}");
    assert!(ended("promote", 2, "succeeded"), "no line for the promote with its outcome:\n{log}");
    let rollback_revision = failed["last_outcome"]["revision"].as_u64().unwrap();
    assert!(
        ended("rollback", rollback_revision, &failed_outcome),
        "no line for the rollback ({failed_outcome}, revision {rollback_revision}):\n{log}"
    );
    assert!(
        lines.iter().any(|l| text(l, "message").contains("shutting down")),
        "the shutdown is logged as JSON too:\n{log}"
    );
}

#[test]
fn a_failed_start_is_logged_as_json_too() {
    // The metrics port is taken: the agent must fail to start, and say so
    // in the format it was asked for.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nstate_dir = {:?}\ncontrol_socket = {:?}\nmetrics_listen = \"{addr}\"\n\n\
             [runtime]\nkind = \"process\"\n\n[services.web]\nlisten = [\"{}\"]\ncommand = [\"/bin/true\"]\n",
            dir.path().join("state"),
            dir.path().join("agent.sock"),
            free_addr()
        ),
    )
    .unwrap();
    let out = bg_agent_run(
        &["--config", config.to_str().unwrap(), "--log-format", "json"],
        &[("RUST_LOG", "debug")],
        Duration::from_secs(60),
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stdout.is_empty(), "stdout: {:?}", out.stdout);
    let lines = json_lines(&out.stderr);
    let error = lines.iter().find(|l| text(l, "level") == "ERROR").expect("an error line");
    let message = error["message"].as_str().unwrap_or("").to_lowercase();
    assert!(message.contains(&addr.to_string()) && message.contains("cannot listen"), "{message}");
    assert_eq!(message.matches("address already in use").count(), 1, "the cause once: {message}");

    // A config error, too.
    std::fs::write(&config, "[agent]\nbogus = 1\n").unwrap();
    let out = bg_agent_run(
        &["--config", config.to_str().unwrap(), "--log-format", "json"],
        &[],
        Duration::from_secs(60),
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    let lines = json_lines(&out.stderr);
    let message = lines[0]["message"].as_str().unwrap_or("");
    assert!(message.contains(&format!("{}:2: agent.bogus", config.display())), "{message}");
}
