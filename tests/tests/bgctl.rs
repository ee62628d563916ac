//! The real `bgctl` against real agents (process runtime): every command's
//! happy path and failure exit code, JSON output, a two-agent fleet, and
//! the scripted canary cut-over.

use bg_tests::agent::{bgctl, Agent, RunningAgent, Svc};
use bg_tests::bins::{cargo_bin, workspace_root};
use bg_tests::load::Load;
use std::process::Command;
use std::time::Duration;

async fn live_agent(svc: Svc) -> RunningAgent {
    let agent = Agent::process().service(svc).start().await;
    agent.bgctl(&["deploy", "web"]).assert_exit_code(0);
    agent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_commands_and_their_exit_codes() {
    let agent = live_agent(Svc::new("web").replicas(2)).await;

    // status: text table and the exact JSON object.
    let text = agent.bgctl(&["status"]);
    text.assert_exit_code(0);
    assert!(text.stdout.contains("web") && text.stdout.contains("blue"), "{}", text.stdout);
    let one = agent.bgctl(&["status", "web", "--output", "json"]);
    let v = one.assert_exit_code(0).stdout_json();
    assert_eq!(v["name"], "web");
    assert_eq!(v["active"], "blue");
    assert_eq!(v["colors"]["blue"]["replicas"].as_array().unwrap().len(), 2);
    let all = agent.bgctl(&["--output", "json", "status"]).assert_exit_code(0).stdout_json();
    assert_eq!(all["services"][0]["name"], "web");

    // deploy without promote, then promote (JSON outcome), under load.
    let load = Load::keepalive(8).target(agent.listen("web")).start();
    let out = agent.bgctl(&["deploy", "web", "--env", "VERSION=v2", "--output", "json"]);
    let d = out.assert_exit_code(0).stdout_json();
    assert!(d.to_string().contains("succeeded"), "{d}");
    let st = agent.status("web").await;
    assert_eq!(st["active"], "blue", "deploy alone does not switch");
    assert_eq!(st["colors"]["green"]["replicas"].as_array().unwrap().len(), 2);
    agent.bgctl(&["promote", "web"]).assert_exit_code(0);
    assert_eq!(agent.status("web").await["active"], "green");

    // Nothing to promote now: an input error, exit 2; unknown service too.
    agent.bgctl(&["promote", "web"]).assert_exit_code(2);
    let unknown = agent.bgctl(&["status", "nope"]);
    unknown.assert_exit_code(2);
    assert!(unknown.stderr.contains("nope"), "{}", unknown.stderr);

    // A bad release: exit 1, traffic stays on green.
    let bad = agent.bgctl(&["deploy", "web", "--env", "VERSION=v3", "--env", "UNHEALTHY=1", "--promote"]);
    bad.assert_exit_code(1);
    assert_eq!(agent.status("web").await["active"], "green");

    // Rollback returns to the previous spec (v1) by redeploying it.
    agent.bgctl(&["rollback", "web"]).assert_exit_code(0);
    let st = agent.status("web").await;
    assert_eq!(st["active"], "blue");
    assert_eq!(st["colors"]["blue"]["spec"]["env"]["VERSION"], "v1");

    // Conflict: a deploy that returns at once, then a second one: exit 4.
    agent.bgctl(&["deploy", "web", "--env", "VERSION=v4", "--no-wait"]).assert_exit_code(0);
    agent.bgctl(&["deploy", "web", "--env", "VERSION=v5"]).assert_exit_code(4);
    agent.wait_idle("web", Duration::from_secs(30)).await;

    // Canary by weight, then abort: the candidate is removed.
    agent.bgctl(&["canary", "web", "--weight", "10"]).assert_exit_code(0);
    assert_eq!(agent.status("web").await["weights"]["green"], 10);
    agent.bgctl(&["abort", "web"]).assert_exit_code(0);
    let st = agent.status("web").await;
    assert_eq!(st["weights"]["blue"], 100);
    assert!(st["colors"]["green"]["replicas"].as_array().unwrap().is_empty());
    agent.bgctl(&["abort", "web"]).assert_exit_code(2);

    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{:?}", report.errors);

    // history and events.
    let h = agent.bgctl(&["history", "web", "--output", "json"]).assert_exit_code(0).stdout_json();
    assert!(h.to_string().contains("rolled back by redeploy") || h.to_string().contains("rollback"), "{h}");
    let e = agent.bgctl(&["events", "web", "--output", "json"]).assert_exit_code(0).stdout_json();
    assert!(e.as_array().is_some_and(|a| a.iter().any(|e| e["type"] == "switched")), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_and_replica_commands() {
    let agent = live_agent(Svc::new("web").replicas(2)).await;
    let load = Load::keepalive(8).target(agent.listen("web")).start();
    agent
        .bgctl(&["rolling", "web", "--env", "VERSION=v2", "--parallelism", "1", "--order", "start-first"])
        .assert_exit_code(0);
    let st = agent.status("web").await;
    assert!(st["colors"]["blue"]["replicas"].as_array().unwrap().iter().all(|r| r["revision"] == 2), "{st}");

    let ids: Vec<String> = st["colors"]["blue"]["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    let id = ids[0].as_str();
    agent.bgctl(&["replica", "drain", "web", id]).assert_exit_code(0);
    agent.bgctl(&["replica", "update", "web", id, "--env", "VERSION=v3"]).assert_exit_code(0);
    let list = agent.bgctl(&["replica", "list", "web"]);
    list.assert_exit_code(0);
    assert!(list.stdout.contains("out"), "{}", list.stdout);
    agent.bgctl(&["replica", "enable", "web", id]).assert_exit_code(0);
    agent.bgctl(&["replica", "drain", "web", "99"]).assert_exit_code(2);
    let bad = agent.bgctl(&["rolling", "web", "--order", "sideways"]);
    bad.assert_exit_code(2);
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert!(report.version("v2") > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_agents_and_bad_tokens_exit_3() {
    let agent =
        Agent::process().service(Svc::new("web")).tcp_token("correct-horse-battery-staple").start().await;
    let addr = format!("http://{}", agent.control_addr().unwrap());
    let ok = bgctl(&[
        "--agent".into(),
        addr.clone(),
        "--token".into(),
        "correct-horse-battery-staple".into(),
        "status".into(),
    ]);
    ok.assert_exit_code(0);
    let wrong = bgctl(&[
        "--agent".into(),
        addr.clone(),
        "--token".into(),
        "wrong-token-wrong-token".into(),
        "status".into(),
    ]);
    wrong.assert_exit_code(3);
    assert!(!wrong.stderr.contains("correct-horse"), "no token in messages");
    let missing = bgctl(&["--agent".into(), "unix:///nonexistent/agent.sock".into(), "status".into()]);
    missing.assert_exit_code(3);
    assert_eq!(missing.stderr.trim().lines().count(), 1, "one clear line: {}", missing.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_deploy_where_one_host_is_bad_aborts_on_every_host() {
    let good = live_agent(Svc::new("web").replicas(1)).await;
    // The second host's configured spec is bad (UNHEALTHY=1); its first
    // deploy overrides that, the fleet deploy does not.
    let svc = Svc::new("web").env("UNHEALTHY", "1").set("health", "deadline", "\"3s\"");
    let bad = Agent::process().service(svc).start().await;
    bad.bgctl(&["deploy", "web", "--env", "UNHEALTHY=0"]).assert_exit_code(0);

    let fleet = |args: &[&str]| {
        let mut all = vec!["--agent".to_string(), good.agent_arg(), "--agent".into(), bad.agent_arg()];
        all.extend(args.iter().map(|s| s.to_string()));
        bgctl(&all)
    };
    let out = fleet(&["deploy", "web", "--env", "VERSION=v2", "--promote", "--output", "json"]);
    out.assert_exit_code(1);
    let json = out.stdout_json();
    assert!(json.to_string().contains("abort"), "{json}");
    for agent in [&good, &bad] {
        let st = agent.wait_idle("web", Duration::from_secs(30)).await;
        assert_eq!(st["active"], "blue", "{st}");
        assert!(st["colors"]["green"]["replicas"].as_array().unwrap().is_empty(), "aborted everywhere: {st}");
    }

    // A good fleet deploy with a canary host promotes both.
    let bad_spec_fixed = ["--env", "VERSION=v2", "--env", "UNHEALTHY=0"];
    let mut args = vec!["deploy", "web", "--promote", "--canary-host"];
    let canary = good.agent_arg();
    args.push(&canary);
    args.extend(bad_spec_fixed);
    fleet(&args).assert_exit_code(0);
    for agent in [&good, &bad] {
        assert_eq!(agent.status("web").await["active"], "green");
    }
}

fn canary_script(agent: &RunningAgent, version: &str) -> std::process::Output {
    Command::new("bash")
        .arg(workspace_root().join("examples/scripts/canary-cutover.sh"))
        .env("BGCTL", cargo_bin("bgctl", "bgctl"))
        .env("BG_AGENT", agent.agent_arg())
        .env("SERVICE_URL", format!("http://{}/", agent.listen("web")))
        .env("VERSION", version)
        .env("SETTLE", "0")
        .env("REQUESTS", "30")
        .output()
        .expect("run canary-cutover.sh")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canary_cutover_script_promotes_a_good_release() {
    let agent = live_agent(Svc::new("web").replicas(2)).await;
    let out = canary_script(&agent, "v2");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let st = agent.status("web").await;
    assert_eq!(st["active"], "green");
    assert_eq!(st["colors"]["green"]["spec"]["env"]["VERSION"], "v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canary_cutover_script_aborts_a_release_that_errors() {
    // The configured spec answers 500 to everything; the first deploy
    // overrides that, the script's deploy does not.
    let agent = Agent::process().service(Svc::new("web").replicas(2).env("ERROR_RATE", "1")).start().await;
    agent.bgctl(&["deploy", "web", "--env", "ERROR_RATE=0"]).assert_exit_code(0);
    let out = canary_script(&agent, "v2");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("aborting"), "{stderr}");
    let st = agent.wait_idle("web", Duration::from_secs(30)).await;
    assert_eq!(st["active"], "blue", "traffic stays on the good release: {st}");
    assert_eq!(st["weights"]["blue"], 100);
    assert!(st["colors"]["green"]["replicas"].as_array().unwrap().is_empty(), "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_live_on_a_terminal_and_plain_timestamped_lines_otherwise() {
    let agent = live_agent(Svc::new("web").replicas(2)).await;
    // A real pseudo-terminal through util-linux `script`.
    let cmd = format!(
        "{} --agent {} deploy web --env VERSION=v2 --promote",
        cargo_bin("bgctl", "bgctl").display(),
        agent.agent_arg()
    );
    let tty = Command::new("script").args(["-qec", &cmd, "/dev/null"]).output().expect("run script(1)");
    let screen = String::from_utf8_lossy(&tty.stdout);
    assert!(tty.status.success(), "{screen}");
    assert!(screen.contains('\r') || screen.contains("\x1b["), "the display redraws in place: {screen:?}");
    assert!(screen.contains("succeeded"), "{screen}");

    // Not a terminal: one timestamped line per step on stderr.
    let plain = agent.bgctl(&["deploy", "web", "--env", "VERSION=v3", "--promote"]);
    plain.assert_exit_code(0);
    assert!(!plain.stderr.contains("\x1b["), "no escape codes off a terminal");
    let phases: Vec<&str> = plain.stderr.lines().filter(|l| l.contains("phase")).collect();
    assert!(phases.len() >= 3, "{}", plain.stderr);
    assert!(phases.iter().all(|l| l.starts_with("20") && l.contains('T')), "timestamped: {phases:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_follow_streams_new_events_as_they_happen() {
    use std::io::{BufRead, BufReader};
    let agent = live_agent(Svc::new("web")).await;
    let mut child = Command::new(cargo_bin("bgctl", "bgctl"))
        .args(["--agent", &agent.agent_arg(), "events", "web", "--follow", "--output", "json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("bgctl events --follow");
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let v: serde_json::Value = serde_json::from_str(&line).expect("NDJSON line");
            let done = v["type"] == "operation_finished" && v["result"]["revision"] == 2;
            seen.push(v);
            if done {
                break;
            }
        }
        seen
    });
    agent.bgctl(&["deploy", "web", "--env", "VERSION=v2", "--promote"]).assert_exit_code(0);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !reader.is_finished() {
        assert!(std::time::Instant::now() < deadline, "events --follow never showed the deploy's end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let seen = reader.join().unwrap();
    assert!(seen.iter().any(|e| e["type"] == "switched" && e["active"] == "green"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_host_that_fails_its_monitor_stops_the_fleet_rollout() {
    // The canary host's configured spec errors on half the requests; its
    // first deploy overrides that, the fleet deploy does not. Its monitor
    // window catches the error rate and rolls back.
    let canary_svc = Svc::new("web")
        .env("ERROR_RATE", "0.5")
        .set("deploy", "monitor", "\"3s\"")
        .set("deploy", "failure_action", "\"rollback\"")
        .set("deploy", "max_error_rate", "0.05");
    let canary = Agent::process().service(canary_svc).start().await;
    canary.bgctl(&["deploy", "web", "--env", "ERROR_RATE=0"]).assert_exit_code(0);
    let other = live_agent(Svc::new("web")).await;

    let load = Load::keepalive(4).target(canary.listen("web")).max_duration(Duration::from_secs(60)).start();
    let args: Vec<String> = [
        "--agent",
        &canary.agent_arg(),
        "--agent",
        &other.agent_arg(),
        "deploy",
        "web",
        "--env",
        "VERSION=v2",
        "--promote",
        "--canary-host",
        &canary.agent_arg(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = bgctl(&args);
    load.stop().await;
    out.assert_exit_code(1);
    for agent in [&canary, &other] {
        let st = agent.wait_idle("web", Duration::from_secs(30)).await;
        assert_eq!(st["active"], "blue", "{st}");
        assert!(st["colors"]["green"]["replicas"].as_array().unwrap().is_empty(), "{st}");
    }
    let canary_outcome = canary.status("web").await["last_outcome"]["outcome"].clone();
    assert_eq!(canary_outcome, "rolled-back");
    let other_outcome = other.status("web").await["last_outcome"]["kind"].clone();
    assert_eq!(other_outcome, "abort", "the other host's candidate was removed, never promoted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bgctl_drives_a_docker_agent() {
    if !bg_tests::docker::docker_with_images("bgctl_drives_a_docker_agent", &["v1", "v2"]) {
        return;
    }
    let name = bg_tests::agent::unique_service("ctl");
    let agent = Agent::docker().service(Svc::new(&name)).start().await;
    agent.bgctl(&["deploy", &name]).assert_exit_code(0);
    let load = Load::keepalive(8).target(agent.listen(&name)).start();
    agent
        .bgctl(&["deploy", &name, "--image", "websample:v2", "--env", "VERSION=v2", "--promote"])
        .assert_exit_code(0);
    let bad = agent.bgctl(&["deploy", &name, "--image", "websample:v1", "--env", "UNHEALTHY=1", "--promote"]);
    let report = load.stop().await;
    bad.assert_exit_code(1);
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    let st = agent.bgctl(&["status", &name, "--output", "json"]).assert_exit_code(0).stdout_json();
    assert_eq!(st["active"], "green");
    assert_eq!(st["colors"]["green"]["spec"]["image"], "websample:v2");
    agent.bgctl(&["deploy", &name, "--image", "websample:missing-tag"]).assert_exit_code(1);
}
