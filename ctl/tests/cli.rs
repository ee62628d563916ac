//! Drives the real `bgctl` binary: usage errors, unreachable agents, the
//! JSON error document, completions and global flags. Tests against a real
//! agent live in the `bg-tests` crate.

use std::path::PathBuf;
use std::process::{Command, Output};

/// A `bgctl` invocation, in the manner of ripgrep's `TestCommand`: the
/// environment is cleared of `BG_AGENT` and `BG_TOKEN` so the machine's
/// settings never leak into a test.
struct Bgctl {
    cmd: Command,
}

impl Bgctl {
    fn new() -> Bgctl {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bgctl"));
        cmd.env_remove("BG_AGENT").env_remove("BG_TOKEN");
        Bgctl { cmd }
    }

    fn args<I, S>(mut self, args: I) -> Bgctl
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cmd.args(args);
        self
    }

    fn env(mut self, key: &str, value: &str) -> Bgctl {
        self.cmd.env(key, value);
        self
    }

    fn output(mut self) -> Run {
        let output = self.cmd.output().expect("bgctl runs");
        Run { output }
    }
}

/// A finished `bgctl` run.
struct Run {
    output: Output,
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    #[track_caller]
    fn assert_exit_code(&self, want: i32) -> &Run {
        assert_eq!(
            self.output.status.code(),
            Some(want),
            "exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout(),
            self.stderr()
        );
        self
    }

    /// Stdout parsed as exactly one JSON document.
    #[track_caller]
    fn stdout_json(&self) -> serde_json::Value {
        let out = self.stdout();
        let mut docs = serde_json::Deserializer::from_str(&out).into_iter::<serde_json::Value>();
        let doc = docs
            .next()
            .unwrap_or_else(|| panic!("no JSON on stdout; stderr:\n{}", self.stderr()))
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{out}"));
        assert!(docs.next().is_none(), "more than one JSON document:\n{out}");
        doc
    }
}

/// A unix socket path in a fresh temporary directory that nothing listens on.
fn missing_socket() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path: PathBuf = dir.path().join("agent.sock");
    (dir, format!("unix://{}", path.display()))
}

/// A TCP address on loopback that was just free: bound, read back, closed.
fn closed_tcp_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

#[test]
fn usage_errors_exit_2_and_name_the_bad_value() {
    let cases: &[(&[&str], &str)] = &[
        (&["status", "--no-such-flag"], "--no-such-flag"),
        (&["deploy", "web", "--env", "NOEQUALS"], "NOEQUALS"),
        (&["deploy", "web", "--env", "=v"], "=v"),
        (&["canary", "web", "--weight", "101"], "101"),
        (&["canary", "web", "--steps", "10,250", "--interval", "1s"], "250"),
        (&["canary", "web", "--steps", "10", "--interval", "soon"], "soon"),
        (&["canary", "web", "--steps", "10", "--max-error-rate", "7"], "7"),
        (&["rolling", "web", "--delay", "3 fortnights"], "3 fortnights"),
        (&["rolling", "web", "--order", "sideways"], "sideways"),
        (&["rolling", "web", "--parallelism", "0"], "0"),
        (&["status", "--agent", "tcp://host:1"], "tcp://host:1"),
        (&["frobnicate"], "frobnicate"),
        (&["canary", "web"], "--weight"),
    ];
    for (args, bad) in cases {
        let run = Bgctl::new().args(*args).output();
        run.assert_exit_code(2);
        assert!(run.stderr().contains(bad), "bgctl {args:?}: stderr should name {bad:?}:\n{}", run.stderr());
    }
}

#[test]
fn bad_agent_env_is_a_usage_error() {
    let run = Bgctl::new().env("BG_AGENT", "nonsense").args(["status"]).output();
    run.assert_exit_code(2);
    assert!(run.stderr().contains("BG_AGENT"), "{}", run.stderr());
}

#[test]
fn missing_unix_socket_exits_3_with_one_line() {
    let (_dir, addr) = missing_socket();
    let run = Bgctl::new().args(["status", "--agent", &addr]).output();
    run.assert_exit_code(3);
    let stderr = run.stderr();
    assert_eq!(stderr.lines().count(), 1, "one line:\n{stderr}");
    assert!(stderr.contains(&format!("cannot reach agent at {addr}")), "{stderr}");
    assert!(stderr.contains("is bg-agent running?"), "{stderr}");
    assert!(run.stdout().is_empty());
}

#[test]
fn closed_tcp_port_exits_3_with_one_line() {
    let addr = closed_tcp_port();
    let run = Bgctl::new().args(["--agent", &addr, "--token", "secret", "deploy", "web"]).output();
    run.assert_exit_code(3);
    let stderr = run.stderr();
    assert_eq!(stderr.lines().count(), 1, "one line:\n{stderr}");
    assert!(stderr.contains(&addr), "{stderr}");
}

#[test]
fn agent_from_environment_is_used() {
    let (_dir, addr) = missing_socket();
    let run = Bgctl::new().env("BG_AGENT", &addr).args(["status"]).output();
    run.assert_exit_code(3);
    assert!(run.stderr().contains(&addr), "{}", run.stderr());
}

#[test]
fn json_errors_are_one_document() {
    let (_dir, addr) = missing_socket();
    let run = Bgctl::new().args(["promote", "web", "--agent", &addr, "--output", "json"]).output();
    run.assert_exit_code(3);
    let doc = run.stdout_json();
    assert_eq!(doc["exit_code"], 3);
    assert_eq!(doc["error"]["code"], "unreachable");
    assert!(doc["error"]["message"].as_str().unwrap().contains(&addr));

    let run = Bgctl::new().args(["--output=json", "canary", "web", "--weight", "101"]).output();
    run.assert_exit_code(2);
    let doc = run.stdout_json();
    assert_eq!(doc["exit_code"], 2);
    assert_eq!(doc["error"]["code"], "usage");
    assert!(doc["error"]["message"].as_str().unwrap().contains("101"));
}

#[test]
fn fleet_reports_every_agent_with_the_worst_code() {
    let (_dir, a) = missing_socket();
    let b = closed_tcp_port();
    let run = Bgctl::new().args(["status", "--agent", &a, "--agent", &b, "--output", "json"]).output();
    run.assert_exit_code(3);
    let doc = run.stdout_json();
    assert_eq!(doc["exit_code"], 3);
    let agents = doc["agents"].as_array().expect("agents array");
    assert_eq!(agents.len(), 2);
    assert_eq!(agents[0]["agent"], a.as_str());
    assert_eq!(agents[1]["agent"], b.as_str());
    assert_eq!(agents[1]["error"]["code"], "unreachable");
}

#[test]
fn canary_host_must_be_one_of_the_agents() {
    let (_dir, a) = missing_socket();
    let b = closed_tcp_port();
    let run = Bgctl::new()
        .args(["promote", "web", "--agent", &a, "--agent", &b])
        .args(["--canary-host", "http://10.0.0.9:7070"])
        .output();
    run.assert_exit_code(2);
    assert!(run.stderr().contains("10.0.0.9"), "{}", run.stderr());
}

#[test]
fn completions_are_printed_for_every_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let run = Bgctl::new().args(["completions", shell]).output();
        run.assert_exit_code(0);
        let script = run.stdout();
        assert!(script.contains("bgctl"), "{shell}");
        assert!(script.contains("deploy") && script.contains("canary"), "{shell}");
    }
    Bgctl::new().args(["completions", "tcsh"]).output().assert_exit_code(2);
}

#[test]
fn global_flags_are_accepted_after_the_command() {
    let (_dir, addr) = missing_socket();
    let run = Bgctl::new()
        .args(["replica", "list", "web", "--output", "json", "--agent", &addr])
        .args(["--token", "t"])
        .output();
    run.assert_exit_code(3);
    assert_eq!(run.stdout_json()["exit_code"], 3);
}

#[test]
fn help_explains_flags_and_exits_0() {
    let run = Bgctl::new().args(["deploy", "--help"]).output();
    run.assert_exit_code(0);
    let help = run.stdout();
    for flag in ["--image", "--env", "--command", "--promote", "--no-wait", "--agent", "--output"] {
        assert!(help.contains(flag), "deploy --help mentions {flag}:\n{help}");
    }
}
