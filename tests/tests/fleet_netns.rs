//! Fleets for real: three hosts, each a network namespace with its own
//! address (iproute2, veth pairs on a bridge the test makes), each running
//! an agent with its TCP control API and a token, the process runtime and
//! websample; `bgctl --fleet` from the test's namespace. Hosts are cut off
//! by setting their link down and slowed with `tc netem`; the namespaces go
//! away when the test ends, also when it fails.

use bg_tests::agent::{Agent, CtlOutput, RunningAgent, Svc};
use bg_tests::bins::cargo_bin;
use bg_tests::load::Load;
use bg_tests::netns::{self, Net};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "fleet-token-0123456789";

struct Fleet {
    net: Net,
    agents: Vec<RunningAgent>,
    file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Fleet {
    /// Three hosts, `web-1` (tags canary, eu), `web-2` and `web-3` (eu),
    /// each with service `web`, set up by `svc`.
    async fn new(svc: impl Fn() -> Svc) -> Fleet {
        let net = Net::create(3);
        let mut agents = Vec::new();
        for h in &net.hosts {
            agents
                .push(Agent::process().in_netns(&h.ns, h.addr).tcp_token(TOKEN).service(svc()).start().await);
        }
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, TOKEN).unwrap();
        let mut text = format!("token_file = {:?}\n", token.display().to_string());
        for (i, h) in net.hosts.iter().enumerate() {
            let tags = if i == 0 { r#"["canary", "eu"]"# } else { r#"["eu"]"# };
            text.push_str(&format!(
                "[hosts.web-{}]\nagent = \"http://{}:7070\"\ntags = {tags}\n",
                i + 1,
                h.addr
            ));
        }
        let file = dir.path().join("fleet.toml");
        std::fs::write(&file, text).unwrap();
        Fleet { net, agents, file, _dir: dir }
    }

    fn web(&self, i: usize) -> SocketAddr {
        SocketAddr::from((self.net.hosts[i].addr, 8080))
    }

    /// `bgctl --fleet FILE ARGS...` to its end.
    fn ctl(&self, args: &[&str]) -> CtlOutput {
        let mut all = vec!["--fleet".to_string(), self.file.display().to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        bg_tests::agent::bgctl(&all)
    }

    /// The same, as a child process (to kill it, or to act meanwhile).
    fn spawn_ctl(&self, args: &[&str]) -> std::process::Child {
        Command::new(cargo_bin("bgctl", "bgctl"))
            .arg("--fleet")
            .arg(&self.file)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn bgctl")
    }

    /// What each host's proxy answers `GET /` with (`x-version`).
    async fn versions(&self) -> Vec<String> {
        let mut out = Vec::new();
        for i in 0..self.agents.len() {
            let r = bg_tests::api::raw(bg_tests::api::Target::Tcp(self.web(i)), "GET", "/", &[], "")
                .await
                .unwrap_or_else(|e| panic!("GET / on host {i}: {e}"));
            out.push(r.header("x-version").unwrap_or("-").to_string());
        }
        out
    }
}

fn output(child: std::process::Child) -> CtlOutput {
    let out = child.wait_with_output().expect("bgctl output");
    CtlOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        args: vec!["(spawned)".into()],
    }
}

/// A service whose new replicas take about `secs` to count as healthy.
fn slow_health(secs: u32) -> impl Fn() -> Svc {
    move || Svc::new("web").set("health", "healthy_threshold", &(secs * 10).to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_host_deploy_and_promote_under_load_loses_nothing() {
    if !netns::available("fleet_three_hosts") {
        return;
    }
    let f = Fleet::new(|| Svc::new("web")).await;
    f.ctl(&["deploy", "web", "--promote"]).assert_exit_code(0);
    assert_eq!(f.versions().await, ["v1", "v1", "v1"]);

    let loads: Vec<_> = (0..3).map(|i| Load::keepalive(4).target(f.web(i)).start()).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = f.ctl(&["--output", "json", "deploy", "web", "--env", "VERSION=v2", "--promote"]);
    out.assert_exit_code(0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (i, load) in loads.into_iter().enumerate() {
        let report = load.stop().await;
        assert_eq!(report.failed, 0, "host {i}: {:?}", report.errors);
        assert!(report.by_version.contains_key("v2"), "host {i} never answered v2: {:?}", report.by_version);
    }
    assert_eq!(f.versions().await, ["v2", "v2", "v2"]);
    let doc = out.stdout_json();
    let hosts: Vec<&str> =
        doc["agents"].as_array().unwrap().iter().map(|a| a["host"].as_str().unwrap()).collect();
    assert_eq!(hosts, ["web-1", "web-2", "web-3"], "{doc}");

    // The same command again: every host already runs it, nothing happens.
    let again = f.ctl(&["deploy", "web", "--env", "VERSION=v2", "--promote"]);
    again.assert_exit_code(0);
    assert!(again.stdout.matches("nothing to do").count() == 3, "{}", again.stdout);

    // A rollback, then the same command again: the second leaves every
    // host where the first put it.
    f.ctl(&["rollback", "web"]).assert_exit_code(0);
    assert_eq!(f.versions().await, ["v1", "v1", "v1"]);
    let again = f.ctl(&["rollback", "web"]);
    again.assert_exit_code(0);
    assert_eq!(again.stdout.matches("already rolled back").count(), 3, "{}", again.stdout);
    assert_eq!(f.versions().await, ["v1", "v1", "v1"]);
    let out = f.ctl(&["abort", "web"]);
    out.assert_exit_code(0);
    assert_eq!(out.stdout.matches("nothing to abort").count(), 3, "{}", out.stdout);
    f.ctl(&["deploy", "web", "--env", "VERSION=v2", "--promote"]).assert_exit_code(0);

    // One table for the fleet; subsets by name and tag.
    let status = f.ctl(&["status"]);
    status.assert_exit_code(0);
    let rows: Vec<&str> = status.stdout.lines().filter(|l| l.starts_with("web-")).collect();
    assert_eq!(rows.len(), 3, "{}", status.stdout);
    assert!(rows.iter().all(|r| r.contains("1/1")), "{}", status.stdout);
    let two = f.ctl(&["--hosts", "web-1,web-3", "status"]);
    assert_eq!(two.stdout.lines().filter(|l| l.starts_with("web-")).count(), 2, "{}", two.stdout);
    let canary = f.ctl(&["--tag", "canary", "--output", "json", "status"]);
    assert_eq!(canary.stdout_json()["services"][0]["name"], "web", "{}", canary.stdout);

    // Bad input: exit 2 naming it; a host refusing the token: exit 3 naming it.
    let out = f.ctl(&["--hosts", "web-9", "status"]);
    out.assert_exit_code(2);
    assert!(out.stderr.contains("web-9"), "{out:?}");
    let out = f.ctl(&["--tag", "us", "status"]);
    out.assert_exit_code(2);
    assert!(out.stderr.contains("\"us\""), "{out:?}");
    let bad = f.file.with_file_name("bad.toml");
    std::fs::write(&bad, "[hosts.a]\nagent = \"http://10.0.0.1:7070\"\n[hosts.b]\ntags = []\n").unwrap();
    let out = bg_tests::agent::bgctl(&["--fleet".into(), bad.display().to_string(), "status".into()]);
    out.assert_exit_code(2);
    assert!(out.stderr.contains("bad.toml:3") && out.stderr.contains("no agent"), "{out:?}");
    let wrong = wrong_token_fleet(&f.file);
    let out = bg_tests::agent::bgctl(&["--fleet".into(), wrong.display().to_string(), "status".into()]);
    out.assert_exit_code(3);
    assert!(out.stdout.contains("web-2") && out.stdout.contains("unauthorized"), "{out:?}");
}

/// The fleet file with `web-2` given a wrong token of its own.
fn wrong_token_fleet(file: &Path) -> PathBuf {
    let wrong = file.with_file_name("wrong-token");
    std::fs::write(&wrong, "not-the-token").unwrap();
    let text = std::fs::read_to_string(file).unwrap().replace(
        "[hosts.web-2]\n",
        &format!("[hosts.web-2]\ntoken_file = {:?}\n", wrong.display().to_string()),
    );
    let path = file.with_file_name("wrong.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_cut_off_during_the_deploy_aborts_the_rest_and_the_same_command_then_succeeds() {
    if !netns::available("fleet_cut_deploy") {
        return;
    }
    let f = Fleet::new(slow_health(3)).await;
    f.ctl(&["deploy", "web", "--promote"]).assert_exit_code(0);
    let args = ["--host-timeout", "3s", "deploy", "web", "--env", "VERSION=v2", "--promote"];
    let child = f.spawn_ctl(&args);
    tokio::time::sleep(Duration::from_secs(1)).await;
    f.net.cut(2);
    let out = output(child);
    out.assert_exit_code(1);
    assert!(out.stdout.contains("web-3") && out.stdout.contains("abort"), "{out:?}");
    f.net.restore(2);
    let s1 = f.agents[0].status("web").await;
    assert_eq!(s1["active"], "blue", "traffic moved on web-1: {s1}");
    assert!(s1["colors"]["green"]["replicas"].as_array().unwrap().is_empty(), "web-1 kept the candidate");
    assert_eq!(f.versions().await, ["v1", "v1", "v1"]);

    let out = f.ctl(&args[2..]);
    out.assert_exit_code(0);
    assert_eq!(f.versions().await, ["v2", "v2", "v2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_cut_off_during_the_promote_is_named_and_the_same_command_converges() {
    if !netns::available("fleet_cut_promote") {
        return;
    }
    let f = Fleet::new(|| Svc::new("web").set("deploy", "monitor", "\"3s\"")).await;
    f.ctl(&["deploy", "web", "--promote"]).assert_exit_code(0);
    f.ctl(&["deploy", "web", "--env", "VERSION=v2"]).assert_exit_code(0);
    let child = f.spawn_ctl(&["--host-timeout", "3s", "promote", "web"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    f.net.cut(2);
    let out = output(child);
    assert_ne!(out.code, 0, "{out:?}");
    let (web1, web3) = (out.stdout.find("== web-1").unwrap(), out.stdout.find("== web-3").unwrap());
    assert!(out.stdout[web1..web3].contains("succeeded"), "web-1 switched: {out:?}");
    assert!(out.stdout[web3..].contains("error"), "web-3 is named as failed: {out:?}");
    f.net.restore(2);
    let out = f.ctl(&["promote", "web"]);
    out.assert_exit_code(0);
    assert!(out.stdout.contains("nothing to promote"), "{out:?}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(f.versions().await, ["v2", "v2", "v2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bgctl_killed_mid_deploy_then_run_again_converges() {
    if !netns::available("fleet_killed") {
        return;
    }
    let f = Fleet::new(slow_health(3)).await;
    f.ctl(&["deploy", "web", "--promote"]).assert_exit_code(0);
    let args = ["deploy", "web", "--env", "VERSION=v2", "--promote"];
    let mut child = f.spawn_ctl(&args);
    tokio::time::sleep(Duration::from_secs(1)).await;
    child.kill().unwrap();
    let _ = child.wait();
    let out = f.ctl(&args);
    out.assert_exit_code(0);
    assert!(out.stderr.contains("waiting for it to end first"), "{out:?}");
    assert_eq!(f.versions().await, ["v2", "v2", "v2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_behind_300ms_of_latency_completes_normally() {
    if !netns::available("fleet_latency") {
        return;
    }
    let f = Fleet::new(|| Svc::new("web")).await;
    let relay = f.net.delay(1, 7070, 300).await;
    if let Some(relay) = &relay {
        let text = std::fs::read_to_string(&f.file).unwrap();
        let text =
            text.replace(&format!("http://{}:7070", f.net.hosts[1].addr), &format!("http://{}", relay.addr));
        std::fs::write(&f.file, text).unwrap();
    }
    let started = Instant::now();
    f.ctl(&["--hosts", "web-2", "status"]).assert_exit_code(0);
    assert!(started.elapsed() >= Duration::from_millis(300), "no latency was added: {:?}", started.elapsed());
    f.ctl(&["deploy", "web", "--promote"]).assert_exit_code(0);
    f.ctl(&["deploy", "web", "--env", "VERSION=v2", "--promote"]).assert_exit_code(0);
    assert_eq!(f.versions().await, ["v2", "v2", "v2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_host_by_name_then_a_rolling_release_stopped_by_the_first_host() {
    if !netns::available("fleet_canary_rolling") {
        return;
    }
    let f = Fleet::new(|| Svc::new("web")).await;
    f.ctl(&["deploy", "web", "--promote"]).assert_exit_code(0);
    let out = f.ctl(&[
        "--output",
        "json",
        "deploy",
        "web",
        "--env",
        "VERSION=v2",
        "--promote",
        "--canary-host",
        "web-2",
    ]);
    out.assert_exit_code(0);
    assert_eq!(f.versions().await, ["v2", "v2", "v2"]);
    let out = f.ctl(&["deploy", "web", "--promote", "--canary-host", "web-9"]);
    out.assert_exit_code(2);

    // A bad release, one host at a time: the first fails, the rest are
    // left alone and every host still serves v2.
    let out = f.ctl(&[
        "--output",
        "json",
        "deploy",
        "web",
        "--env",
        "VERSION=v3",
        "--env",
        "UNHEALTHY=1",
        "--promote",
        "--host-parallelism",
        "1",
    ]);
    out.assert_exit_code(1);
    let doc: Value = out.stdout_json();
    let agents = doc["agents"].as_array().unwrap();
    assert_ne!(agents[0]["result"]["deploy"]["outcome"], "succeeded", "{doc}");
    for a in &agents[1..] {
        assert_eq!(a["result"]["deploy"]["skipped"], "an earlier batch of hosts failed", "{doc}");
    }
    assert_eq!(f.versions().await, ["v2", "v2", "v2"]);
}
