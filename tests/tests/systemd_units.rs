//! The example systemd units are valid (`systemd-analyze verify`) and agree
//! with the example config: every proxy listener and the control socket are
//! socket-activated. `systemd-analyze` is gated like Docker: required with
//! `BG_DOCKER_TESTS=1` (CI installs it), otherwise a missing one is reported
//! and the verify step does not run.

use bg_tests::bins::{cargo_bin, workspace_root};
use std::process::Command;

#[test]
fn the_example_units_pass_systemd_analyze_verify() {
    let units = workspace_root().join("examples/systemd");
    let dir = tempfile::tempdir().unwrap();
    let agent = cargo_bin("bg-agent", "bg-agent");
    for name in ["bg-agent.service", "bg-agent.socket"] {
        let text = std::fs::read_to_string(units.join(name)).unwrap();
        // verify checks that ExecStart's program exists.
        let text = text.replace("/usr/bin/bg-agent", agent.to_str().unwrap());
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let out = match Command::new("systemd-analyze")
        .args(["verify", "--man=no", "./bg-agent.socket", "./bg-agent.service"])
        .current_dir(dir.path())
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            let required = std::env::var("BG_DOCKER_TESTS").is_ok_and(|v| v == "1");
            assert!(!required, "BG_DOCKER_TESTS=1 but systemd-analyze cannot run ({e}); install systemd");
            eprintln!("the_example_units_pass_systemd_analyze_verify: not run: systemd-analyze: {e}");
            return;
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaints: Vec<&str> = stderr.lines().filter(|l| l.contains("bg-agent.")).collect();
    assert!(out.status.success() && complaints.is_empty(), "systemd-analyze verify:\n{stderr}");
}

#[test]
fn the_service_is_notify_with_a_watchdog_and_spares_the_replicas() {
    let service =
        std::fs::read_to_string(workspace_root().join("examples/systemd/bg-agent.service")).unwrap();
    // Replicas go to scopes of their own (BG_REPLICA_SCOPE=systemd);
    // KillMode=process spares those an older agent left in the cgroup.
    for line in [
        "Type=notify",
        "KillMode=process",
        "Environment=BG_REPLICA_SCOPE=systemd",
        "Requires=bg-agent.socket",
        "NoNewPrivileges=yes",
        "ExecStart=/usr/bin/bg-agent --config /etc/bg-agent/agent.toml --log-format json",
    ] {
        assert!(service.lines().any(|l| l == line), "bg-agent.service lacks {line}");
    }
    assert!(service.lines().any(|l| l.starts_with("WatchdogSec=")), "no watchdog");
    assert!(service.contains("--check-config"), "the config is not checked before start");
    // Restarts on purpose must not trip the start limit (issue 22): more
    // than systemd's default of 5 starts in 10 s.
    let limit = |key: &str| service.lines().find_map(|l| l.strip_prefix(key)).map(str::to_string);
    let burst: u32 = limit("StartLimitBurst=").expect("StartLimitBurst=").parse().unwrap();
    let interval =
        humantime::parse_duration(&limit("StartLimitIntervalSec=").expect("StartLimitIntervalSec=")).unwrap();
    assert!(
        burst >= 20 && interval / burst <= std::time::Duration::from_secs(3),
        "{burst} starts in {interval:?}"
    );
    assert!(
        service.lines().any(|l| l == "ExecReload=/bin/kill -HUP $MAINPID"),
        "systemctl reload must send SIGHUP, which reloads the agent"
    );
}

#[test]
fn the_socket_unit_outlives_service_restarts_and_sets_no_tcp_option_on_the_unix_socket() {
    let socket = std::fs::read_to_string(workspace_root().join("examples/systemd/bg-agent.socket")).unwrap();
    let directives: Vec<&str> = socket.lines().filter(|l| !l.starts_with('#')).collect();
    // PartOf=bg-agent.service restarts the socket with the service, closing
    // the listeners; NoDelay= fails on the unix control socket.
    for bad in ["PartOf=", "BindsTo=", "NoDelay=", "KeepAlive=", "DeferAcceptSec="] {
        assert!(!directives.iter().any(|l| l.starts_with(bad)), "bg-agent.socket sets {bad}");
    }
}

#[test]
fn the_socket_unit_listens_where_the_example_config_does() {
    let socket = std::fs::read_to_string(workspace_root().join("examples/systemd/bg-agent.socket")).unwrap();
    let streams: Vec<&str> = socket.lines().filter_map(|l| l.strip_prefix("ListenStream=")).collect();
    let config: toml::Table = toml::from_str(
        &std::fs::read_to_string(workspace_root().join("examples/config/agent.toml")).unwrap(),
    )
    .unwrap();
    let mut wanted: Vec<String> = vec![config["agent"]["control_socket"].as_str().unwrap().to_string()];
    for service in config["services"].as_table().unwrap().values() {
        for addr in service["listen"].as_array().unwrap() {
            wanted.push(addr.as_str().unwrap().to_string());
        }
    }
    for w in &wanted {
        assert!(streams.contains(&w.as_str()), "bg-agent.socket has no ListenStream={w} ({streams:?})");
    }
    assert!(socket.lines().any(|l| l == "SocketMode=0660"), "control socket mode");
}
