//! `bgctl reload` and SIGHUP through the real agent (process runtime,
//! websample), under load: a service added, one removed, one changed; the
//! services left alone lose nothing; a broken config is refused whole.

use bg_tests::agent::{free_addr, Agent, RunningAgent, Svc};
use bg_tests::api::{raw, RawResponse, Target};
use bg_tests::load::Load;
use bg_tests::status::outcome;
use bg_tests::wait::{eventually, eventually_async};
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;

const OP: Duration = Duration::from_secs(60);

async fn get(addr: SocketAddr) -> Result<RawResponse, String> {
    raw(Target::Tcp(addr), "GET", "/", &[], "").await.map_err(|e| e.to_string())
}

/// `text` without the `[services.NAME]` table and its sub-tables.
fn without_service(text: &str, name: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in text.lines() {
        if line.starts_with('[') {
            let head = format!("[services.{name}");
            skipping = line.starts_with(&format!("{head}]")) || line.starts_with(&format!("{head}."));
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// `text`'s `[services.from]` tables copied as service `to`, listening on
/// `addr`, deployed at start.
fn copy_service(text: &str, from: &str, to: &str, from_addr: SocketAddr, addr: SocketAddr) -> String {
    let mut block = String::new();
    let mut copying = false;
    for line in text.lines() {
        if line.starts_with('[') {
            let head = format!("[services.{from}");
            copying = line.starts_with(&format!("{head}]")) || line.starts_with(&format!("{head}."));
        }
        if copying {
            block.push_str(line);
            block.push('\n');
        }
    }
    let block = block
        .replace(&format!("[services.{from}"), &format!("[services.{to}"))
        .replace(&from_addr.to_string(), &addr.to_string())
        .replace("on_start = \"wait\"", "on_start = \"deploy\"");
    format!("{text}\n{block}")
}

fn reload(agent: &mut RunningAgent) -> i32 {
    let out = agent.bgctl(&["--output", "json", "reload"]);
    out.assert_exit_code(0);
    let pid = out.stdout_json()["pid"].as_i64().expect("the new agent's pid") as i32;
    agent.adopt(pid);
    pid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_adds_removes_and_changes_services_and_refuses_a_broken_config() {
    let mut agent = Agent::process()
        .service(Svc::new("web"))
        .service(Svc::new("api"))
        .service(Svc::new("gone").env("ROLE", "gone"))
        .start()
        .await;
    for s in ["web", "api", "gone"] {
        assert_eq!(outcome(&agent.op(s, "deploy", json!({}), OP).await).0, "succeeded");
    }
    let (web, api, gone) = (agent.listen("web"), agent.listen("api"), agent.listen("gone"));
    let loads = [Load::keepalive(4).target(web).start(), Load::keepalive(4).target(api).start()];
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The new config: gone removed, api changed, new added.
    let path = agent.config_path().to_path_buf();
    let before = std::fs::read_to_string(&path).unwrap();
    let new_addr = free_addr();
    let mut text = without_service(&before, "gone");
    text = copy_service(&text, "web", "new", web, new_addr);
    let changed = text.replacen(
        &format!("[services.api]\nlisten = [\"{api}\"]"),
        &format!("[services.api]\nlisten = [\"{api}\"]\nmax_queued = 77"),
        1,
    );
    assert_ne!(changed, text, "the harness config changed: update this test");
    std::fs::write(&path, &changed).unwrap();

    let first = agent.pid().unwrap() as i32;
    let pid = reload(&mut agent);
    assert_ne!(pid, first);
    eventually_async("the added service serves", OP, || async move {
        get(new_addr).await.is_ok_and(|r| r.status == 200)
    })
    .await;
    eventually("the removed service's replicas stop", OP, || agent.processes_with("ROLE=gone").is_empty())
        .await;
    assert!(get(gone).await.is_err(), "the removed service still answers");
    let (code, _) = agent.api_get("/v1/services/gone").await.unwrap();
    assert_eq!(code, 404);
    for (name, load) in ["web", "api"].into_iter().zip(loads) {
        let report = load.stop().await;
        assert_eq!(report.failed, 0, "{name}: {:?}", report.errors);
        assert!(report.ok > 50, "{name}: only {} answers", report.ok);
    }
    // A changed service takes its settings from the next operation on.
    let s = agent.op("api", "deploy", json!({"env": {"VERSION": "v5"}, "promote": true}), OP).await;
    assert_eq!(outcome(&s).0, "succeeded", "{s}");
    assert_eq!(get(api).await.unwrap().header("x-version"), Some("v5"));

    // A broken config is refused whole, naming file and line; nothing moves.
    std::fs::write(&path, format!("{changed}\n[services.web.health]\ninterval = \"soon\"\n")).unwrap();
    let out = agent.bgctl(&["reload"]);
    out.assert_exit_code(2);
    assert!(out.stderr.contains(&path.display().to_string()), "{out:?}");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "the running agent went away");
    assert_eq!(get(web).await.unwrap().status, 200);

    // SIGHUP reloads too.
    let hup_addr = free_addr();
    std::fs::write(&path, copy_service(&changed, "web", "hup", web, hup_addr)).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGHUP).unwrap();
    eventually_async("the service added by SIGHUP serves", OP, || async move {
        get(hup_addr).await.is_ok_and(|r| r.status == 200)
    })
    .await;
    let next = std::process::Command::new("pgrep")
        .args(["-f", "--", &format!("--reload-from {pid}")])
        .output()
        .unwrap();
    for p in String::from_utf8_lossy(&next.stdout).split_whitespace() {
        agent.adopt(p.parse().unwrap());
    }
}
