//! Hooks through the real agent (process runtime): a failing `pre_deploy`
//! leaves nothing started; `pre_stop` runs after the old replica's drain
//! and before its stop signal; `post_switch` runs after traffic moved;
//! their output is in the event stream.

use bg_tests::agent::{Agent, Svc};
use bg_tests::status::{outcome, replicas};
use serde_json::{json, Value};
use std::time::Duration;

const OP: Duration = Duration::from_secs(60);

/// The `seq` and `at` of the first event that `f` picks.
fn first(events: &[Value], what: &str, f: impl Fn(&Value) -> bool) -> (u64, String) {
    let e = events.iter().find(|e| f(e)).unwrap_or_else(|| panic!("no {what} event in {events:#?}"));
    (e["seq"].as_u64().unwrap(), e["at"].as_str().unwrap().to_string())
}

fn message_starting(events: &[Value], prefix: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "message")
        .filter_map(|e| e["message"].as_str())
        .filter(|m| m.starts_with(prefix))
        .map(String::from)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_pre_deploy_starts_nothing_and_says_why() {
    let agent = Agent::process()
        .service(Svc::new("web").set(
            "hooks",
            "pre_deploy",
            r#"["sh", "-c", "echo migrating $BG_SERVICE r$BG_REVISION to $BG_COLOR; test $BG_REVISION != 2 || { echo schema locked >&2; exit 3; }"]"#,
        ))
        .start()
        .await;
    let s = agent.op("web", "deploy", json!({}), OP).await;
    assert_eq!(outcome(&s).0, "succeeded", "{s}");
    let s = agent.op("web", "deploy", json!({"env": {"VERSION": "v2"}, "promote": true}), OP).await;
    let (result, message) = outcome(&s);
    assert_eq!(result, "failed", "{s}");
    assert!(message.contains("pre_deploy hook") && message.contains("exited with 3"), "{message}");
    assert!(message.contains("schema locked") && message.contains("nothing was started"), "{message}");
    assert!(replicas(&s, "green").is_empty(), "a replica started after a failed pre_deploy: {s}");
    assert_eq!(s["active"], "blue", "{s}");
    let events = agent.events("web").await;
    let lines = message_starting(&events, "pre_deploy: ");
    assert!(lines.contains(&"pre_deploy: migrating web r1 to blue".to_string()), "{lines:?}");
    assert!(lines.contains(&"pre_deploy: schema locked".to_string()), "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_stop_runs_after_the_drain_and_before_the_stop_signal() {
    let agent = Agent::process()
        .service(
            Svc::new("web")
                .set("hooks", "pre_stop", r#"{ exec = ["sh", "-c", "echo quiescing $BG_REPLICA of $BG_COLOR at $BG_REPLICA_ADDR"] }"#)
                .set("hooks", "post_switch", r#"["sh", "-c", "echo switched to $BG_COLOR r$BG_REVISION"]"#),
        )
        .start()
        .await;
    agent.op("web", "deploy", json!({}), OP).await;
    let s = agent.op("web", "deploy", json!({"env": {"VERSION": "v2"}, "promote": true}), OP).await;
    assert_eq!(outcome(&s).0, "succeeded", "{s}");
    let events = agent.events("web").await;
    let drained = first(&events, "drained", |e| e["type"] == "drained" && e["color"] == "blue");
    let hook = first(&events, "pre_stop", |e| {
        e["type"] == "message"
            && e["message"].as_str().is_some_and(|m| m.starts_with("pre_stop: quiescing 1 of blue"))
    });
    let stopped = first(&events, "replica stopped", |e| {
        e["type"] == "replica" && e["color"] == "blue" && e["state"] == "stopped"
    });
    assert!(
        drained.0 < hook.0 && hook.0 < stopped.0,
        "order: drained {drained:?}, pre_stop {hook:?}, stopped {stopped:?}"
    );
    assert!(drained.1 <= hook.1 && hook.1 <= stopped.1, "times: {drained:?} {hook:?} {stopped:?}");
    let switched = first(&events, "switched", |e| e["type"] == "switched" && e["active"] == "green");
    // post_switch runs beside the drain: wait for its line.
    let mut lines = Vec::new();
    for _ in 0..100 {
        lines = message_starting(&agent.events("web").await, "post_switch: ");
        if !lines.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(lines, ["post_switch: switched to green r2"], "after the switch at {switched:?}");
}

/// `bgctl run` on the process runtime: the configured spec before any
/// deploy, the candidate's after one; output passed through and the exit
/// code returned, in text and JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bgctl_run_passes_output_and_exit_code_through() {
    let agent = Agent::process().service(Svc::new("web")).start().await;
    let script = "echo version $VERSION; echo careful >&2; exit 7";
    let out = agent.bgctl(&["run", "web", "--", "sh", "-c", script]);
    out.assert_exit_code(7);
    assert_eq!(out.stdout.trim(), "version v1", "{out:?}");
    assert!(out.stderr.contains("careful"), "{out:?}");

    // A candidate (deployed, not promoted): its spec is the one run.
    agent.op("web", "deploy", json!({}), OP).await;
    agent.op("web", "deploy", json!({"env": {"VERSION": "v2"}}), OP).await;
    let out = agent.bgctl(&["--output", "json", "run", "web", "--", "sh", "-c", "echo $VERSION; echo e >&2"]);
    out.assert_exit_code(0);
    let doc = out.stdout_json();
    assert_eq!(doc["exit_code"], 0, "{doc}");
    let output = doc["output"].as_array().unwrap();
    assert!(output.contains(&json!({"stream": "stdout", "line": "v2"})), "{doc}");
    assert!(output.contains(&json!({"stream": "stderr", "line": "e"})), "{doc}");

    // The run is in the event stream; it is no replica and moved nothing.
    let events = agent.events("web").await;
    let runs = message_starting(&events, "run: ");
    assert!(runs.iter().any(|m| m.ends_with("exited with 7")), "{runs:?}");
    let s = agent.status("web").await;
    assert_eq!((s["active"].as_str(), replicas(&s, "green").len()), (Some("blue"), 1), "{s}");

    // Refusals: unknown service (exit 2), a program that does not exist
    // (exit 1, named), and several agents (exit 2).
    let out = agent.bgctl(&["run", "nope", "--", "true"]);
    out.assert_exit_code(2);
    assert!(out.stderr.contains("unknown service"), "{out:?}");
    let out = agent.bgctl(&["run", "web", "--", "/no/such/program"]);
    out.assert_exit_code(1);
    assert!(out.stderr.contains("/no/such/program"), "{out:?}");
    let agent_arg = agent.agent_arg();
    let out =
        agent.bgctl(&["--agent", &agent_arg, "--agent", "http://127.0.0.1:9", "run", "web", "--", "true"]);
    out.assert_exit_code(2);
    assert!(out.stderr.contains("one agent"), "{out:?}");
}
