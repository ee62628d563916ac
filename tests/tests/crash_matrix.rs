//! Crash at every step: for each operation and each of its steps, the
//! agent is killed with SIGKILL the moment it reports that step (the test
//! follows the event stream and kills from the reading task), with load
//! running and the listeners held as systemd socket activation holds them,
//! and then started again. The service must converge: no replica lost, no
//! unpromoted candidate in rotation, the stable or the promoted version
//! serving, the state file in step with the status, and only requests that
//! were in flight on the killed agent's connections may fail.
//!
//! `docs/recovery.md` has the table of steps and what recovery does at each.

use bg_tests::agent::{Agent, RunningAgent, Svc};
use bg_tests::load::{Load, LoadHandle, LoadReport};
use bg_tests::status::replicas;
use bg_tests::wait::eventually;
use futures_util::StreamExt;
use http_body_util::BodyStream;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const OP: Duration = Duration::from_secs(60);
const KEEPALIVE_CLIENTS: usize = 4;
const REPLICAS: u32 = 2;

/// Which version serves once the service has converged.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Serves {
    /// The stable version (v1): the operation was undone.
    Old,
    /// The new version (v2): the operation was finished.
    New,
    /// Either, all replicas alike or a half-done rolling update; the kill
    /// races the step's one synchronous change (the switch itself).
    Either,
}

/// One cell of the matrix.
struct Case {
    /// Service settings beyond the test defaults.
    svc: fn(Svc) -> Svc,
    /// Operations run (and finished) before the one that is cut.
    setup: Vec<(&'static str, Value)>,
    /// The operation that is cut: API path suffix and body.
    op: (&'static str, Value),
    /// The event on which the agent is killed.
    kill_on: fn(&Value) -> bool,
    /// What serves afterwards.
    serves: Serves,
    /// A request in flight on the old color while the operation runs, so
    /// that a drain has something to wait for.
    slow_request: bool,
    /// What the operator runs after the restart to finish what the cut
    /// operation left by design (a replica taken out by hand stays out).
    settle: Option<(&'static str, Value)>,
}

fn is_phase(e: &Value, name: &str) -> bool {
    e["type"] == "phase" && e["phase"] == name
}

fn replica_event(e: &Value, state: &str, health: &str) -> bool {
    e["type"] == "replica" && e["state"] == state && e["health"] == health
}

fn v2() -> Value {
    json!({"env": {"VERSION": "v2"}})
}

fn v2_promote() -> Value {
    json!({"env": {"VERSION": "v2"}, "promote": true})
}

fn plain(s: Svc) -> Svc {
    s
}

fn monitored(s: Svc) -> Svc {
    s.set("deploy", "monitor", "\"20s\"")
}

fn warm(s: Svc) -> Svc {
    s.set("deploy", "keep_old", "\"10m\"")
}

/// Follow the agent's event stream and SIGKILL it on the first event that
/// matches; returns that event.
async fn kill_on_event(agent: &RunningAgent, since: u64, matches: fn(&Value) -> bool) -> (Value, Instant) {
    let pid = agent.pid().expect("agent runs");
    let stream = tokio::net::UnixStream::connect(agent.socket()).await.expect("connect to agent");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(format!("/v1/events?service=web&since={since}&follow=true"))
        .header("host", "agent")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.expect("events");
    let mut body = BodyStream::new(resp.into_body());
    let mut buf = Vec::new();
    let found = tokio::time::timeout(OP, async {
        while let Some(frame) = body.next().await {
            let Ok(frame) = frame else { break };
            let Ok(data) = frame.into_data() else { continue };
            buf.extend_from_slice(&data);
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let Ok(event) = serde_json::from_slice::<Value>(&line) else { continue };
                if matches(&event) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    return Some((event, Instant::now()));
                }
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(found)) => found,
        _ => panic!("the step's event never came; log:\n{}", agent.log()),
    }
}

/// Wait for a bounded load to send all its requests; its report.
async fn finish(load: LoadHandle) -> LoadReport {
    eventually("the load to finish", Duration::from_secs(60), || load.finished()).await;
    load.stop().await
}

async fn run(name: &str, case: Case) {
    let svc = (case.svc)(Svc::new("web").replicas(REPLICAS).set("health", "deadline", "\"20s\""));
    let mut agent = Agent::process().socket_activated().service(svc).start().await;
    agent.op("web", "deploy", json!({}), OP).await;
    for (op, body) in &case.setup {
        agent.op("web", op, body.clone(), OP).await;
    }
    let bound = Duration::from_secs(120);
    let keepalive =
        Load::keepalive(KEEPALIVE_CLIENTS).target(agent.listen("web")).max_duration(bound).start();
    let fresh = Load::rate(50)
        .fresh_connections()
        .record_requests()
        .target(agent.listen("web"))
        .max_duration(bound)
        .start();
    eventually("load is flowing", Duration::from_secs(10), || keepalive.completed() > 100).await;
    let slow = case
        .slow_request
        .then(|| Load::keepalive(1).path("/sleep/2").target(agent.listen("web")).max_requests(1).start());

    let since = agent.events("web").await.iter().filter_map(|e| e["seq"].as_u64()).max().unwrap_or(0) + 1;
    let path = format!("/v1/services/web/{}", case.op.0);
    let ((kill, killed_at), accepted) =
        tokio::join!(kill_on_event(&agent, since, case.kill_on), agent.api_post(&path, case.op.1.clone()));
    assert!(matches!(accepted, Ok((202, _))), "{name}: {accepted:?}");
    agent.kill9();
    println!("{name}: killed on {kill}");

    agent.restart().await;
    if let Some((op, body)) = &case.settle {
        agent.wait_idle("web", OP).await;
        agent.op("web", op, body.clone(), OP).await;
    }
    let s = agent
        .wait_status("web", &format!("{name}: converged"), OP, |s| {
            let active = s["active"].as_str().unwrap_or("");
            let rs = replicas(s, active);
            s["operation"].is_null()
                && rs.len() == REPLICAS as usize
                && rs.iter().all(|r| r["health"] == "healthy" && r["state"] == "serving")
        })
        .await;
    let active = s["active"].as_str().unwrap().to_string();
    let idle = if active == "blue" { "green" } else { "blue" };
    assert_eq!(s["weights"][idle], 0, "{name}: an unpromoted color gets live traffic: {s}");
    // The idle color is empty, kept warm (out of rotation), or a candidate
    // that a finished deploy left (reached by preview only).
    let candidate =
        s["colors"][idle]["revision"].as_u64() > s["colors"][active.as_str()]["revision"].as_u64();
    for r in replicas(&s, idle) {
        assert!(r["state"] != "serving" || candidate, "{name}: an idle replica is in rotation: {s}");
    }

    // The state file says what the status says.
    let file: Value = serde_json::from_slice(&std::fs::read(agent.state_dir().join("state.json")).unwrap())
        .expect("the state file parses");
    let rec = &file["services"]["web"];
    assert_eq!(rec["active"], active.as_str(), "{name}: state file {rec}");
    assert!(
        rec["operation"].is_null(),
        "{name}: an operation is left in the state file: {}\n{s}",
        rec["operation"]
    );
    let recorded = rec["colors"][&active]["replicas"].as_array().map(Vec::len);
    assert_eq!(recorded, Some(REPLICAS as usize), "{name}: {rec}");

    // Only requests on the killed agent's connections failed: at most the
    // one each keep-alive client had on its connection, and no fresh
    // connection made after the kill (those wait in the listener's
    // backlog, which outlives the agent).
    let (keepalive, fresh) = (keepalive.stop().await, fresh.stop().await);
    assert!(
        keepalive.failed <= KEEPALIVE_CLIENTS as u64,
        "{name}: {} keep-alive requests failed: {:?}",
        keepalive.failed,
        keepalive.errors
    );
    let late: Vec<_> = fresh.records.iter().filter(|r| r.status.is_none() && r.started > killed_at).collect();
    assert!(
        late.is_empty(),
        "{name}: {} fresh connection(s) made after the kill failed: {:?}",
        late.len(),
        fresh.errors
    );
    let failed = keepalive.failed + fresh.failed;
    if let Some(slow) = slow {
        let _ = slow.stop().await;
    }

    // Afterwards everything answers, from one of the expected versions.
    let after = finish(
        Load::rate(200)
            .fresh_connections()
            .target(agent.listen("web"))
            .max_requests(100)
            .max_duration(Duration::from_secs(30))
            .start(),
    )
    .await;
    assert_eq!(after.failed, 0, "{name}: requests fail after recovery: {:?}", after.errors);
    let (old, new) = (after.version("v1"), after.version("v2"));
    match case.serves {
        Serves::Old => assert_eq!(old, 100, "{name}: the stable version serves: {:?}", after.by_version),
        Serves::New => assert_eq!(new, 100, "{name}: the promoted version serves: {:?}", after.by_version),
        Serves::Either => assert_eq!(old + new, 100, "{name}: {:?}", after.by_version),
    }
    println!(
        "{name}: converged on {active}, {failed} request(s) failed at the kill, served {:?}",
        after.by_version
    );

    // And the next operation runs as usual.
    let s = agent.op("web", "deploy", json!({"env": {"VERSION": "v3"}, "promote": true}), OP).await;
    assert_eq!(bg_tests::status::outcome(&s).0, "succeeded", "{name}: {s}");
}

macro_rules! crash_case {
    ($name:ident, $case:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            run(stringify!($name), $case).await;
        }
    };
}

crash_case!(
    deploy_starting,
    Case {
        svc: plain,
        setup: vec![],
        op: ("deploy", v2()),
        kill_on: |e| is_phase(e, "starting"),
        serves: Serves::Old,
        slow_request: false,
        settle: None,
    }
);

crash_case!(
    deploy_health,
    Case {
        svc: plain,
        setup: vec![],
        op: ("deploy", v2()),
        kill_on: |e| is_phase(e, "health"),
        serves: Serves::Old,
        slow_request: false,
        settle: None,
    }
);

crash_case!(
    deploy_promote_switching,
    Case {
        svc: plain,
        setup: vec![],
        op: ("deploy", v2_promote()),
        kill_on: |e| is_phase(e, "switching"),
        serves: Serves::Either,
        slow_request: false,
        settle: None,
    }
);

crash_case!(
    deploy_promote_draining,
    Case {
        svc: plain,
        setup: vec![],
        op: ("deploy", v2_promote()),
        kill_on: |e| is_phase(e, "draining"),
        serves: Serves::New,
        slow_request: true,
        settle: None,
    }
);

crash_case!(
    deploy_promote_monitor,
    Case {
        svc: monitored,
        setup: vec![],
        op: ("deploy", v2_promote()),
        kill_on: |e| is_phase(e, "monitor"),
        serves: Serves::New,
        slow_request: false,
        settle: None,
    }
);

crash_case!(
    deploy_promote_stopping,
    Case {
        svc: plain,
        setup: vec![],
        op: ("deploy", v2_promote()),
        kill_on: |e| is_phase(e, "stopping"),
        serves: Serves::New,
        slow_request: false,
        settle: None,
    }
);

crash_case!(
    promote_switching,
    Case {
        svc: plain,
        setup: vec![("deploy", v2())],
        op: ("promote", json!({})),
        kill_on: |e| is_phase(e, "switching"),
        serves: Serves::Either,
        slow_request: false,
        settle: None,
    }
);

crash_case!(
    promote_draining,
    Case {
        svc: plain,
        setup: vec![("deploy", v2())],
        op: ("promote", json!({})),
        kill_on: |e| is_phase(e, "draining"),
        serves: Serves::New,
        slow_request: true,
        settle: None,
    }
);

crash_case!(
    promote_monitor,
    Case {
        svc: monitored,
        setup: vec![("deploy", v2())],
        op: ("promote", json!({})),
        kill_on: |e| is_phase(e, "monitor"),
        serves: Serves::New,
        slow_request: false,
        settle: None,
    }
);

crash_case!(
    promote_stopping,
    Case {
        svc: plain,
        setup: vec![("deploy", v2())],
        op: ("promote", json!({})),
        kill_on: |e| is_phase(e, "stopping"),
        serves: Serves::New,
        slow_request: false,
        settle: None,
    }
);

crash_case!(
    promote_keep_warm,
    Case {
        svc: warm,
        setup: vec![("deploy", v2())],
        op: ("promote", json!({})),
        kill_on: |e| e["type"] == "drained",
        serves: Serves::New,
        slow_request: false,
        settle: None,
    }
);

crash_case!(
    canary_step,
    Case {
        svc: plain,
        setup: vec![("deploy", v2())],
        op: ("canary", json!({"steps": [10, 50], "interval": "5s"})),
        kill_on: |e| is_phase(e, "canary"),
        serves: Serves::Old,
        slow_request: false,
        settle: None,
    }
);

crash_case!(
    canary_second_step,
    Case {
        svc: plain,
        setup: vec![("deploy", v2())],
        op: ("canary", json!({"steps": [10, 50], "interval": "1s", "min_requests": 1})),
        kill_on: |e| is_phase(e, "canary") && e["detail"].as_str().is_some_and(|d| d.starts_with("step 2/")),
        serves: Serves::Old,
        slow_request: false,
        settle: None,
    }
);

crash_case!(
    rolling_stop_first_draining,
    Case {
        svc: plain,
        setup: vec![],
        op: ("rolling", json!({"env": {"VERSION": "v2"}, "order": "stop-first"})),
        kill_on: |e| replica_event(e, "draining", "healthy"),
        serves: Serves::Either,
        slow_request: false,
        settle: None,
    }
);

crash_case!(
    rolling_stop_first_between_stop_and_start,
    Case {
        svc: plain,
        setup: vec![],
        op: ("rolling", json!({"env": {"VERSION": "v2"}, "order": "stop-first"})),
        kill_on: |e| e["type"] == "drained",
        serves: Serves::Either,
        slow_request: false,
        settle: None,
    }
);

crash_case!(
    rolling_start_first_new_serving,
    Case {
        svc: plain,
        setup: vec![],
        op: ("rolling", json!({"env": {"VERSION": "v2"}, "order": "start-first"})),
        kill_on: |e| replica_event(e, "serving", "healthy"),
        serves: Serves::Either,
        slow_request: false,
        settle: None,
    }
);

crash_case!(
    replica_update_starting,
    Case {
        svc: plain,
        setup: vec![],
        op: ("replicas/2/update", json!({"env": {"VERSION": "v1"}})),
        kill_on: |e| is_phase(e, "starting"),
        serves: Serves::Old,
        slow_request: false,
        settle: Some(("replicas/2/enable", json!({}))),
    }
);

crash_case!(
    rollback_to_warm_color,
    Case {
        svc: warm,
        setup: vec![("deploy", v2_promote())],
        op: ("rollback", json!({})),
        kill_on: |e| is_phase(e, "switching"),
        serves: Serves::Either,
        slow_request: false,
        settle: None,
    }
);

crash_case!(
    abort_removing,
    Case {
        svc: plain,
        setup: vec![("deploy", v2())],
        op: ("abort", json!({})),
        kill_on: |e| is_phase(e, "removing"),
        serves: Serves::Old,
        slow_request: false,
        settle: None,
    }
);
