//! `bg-agent --check-config` end to end: the real binary on real files. A
//! good config prints ok and exits 0 without starting anything; every
//! refused config exits non-zero and names the file, the line and the key.

use bg_tests::agent::{bg_agent_run, CtlOutput};
use bg_tests::bins::workspace_root;
use std::path::{Path, PathBuf};
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(60);

fn check(config: &Path) -> CtlOutput {
    bg_agent_run(&["--check-config", "--config", config.to_str().unwrap()], &[], WITHIN)
}

/// A config file in `dir` whose `[agent]` paths stay inside `dir`.
fn write_config(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path
}

fn agent_section(dir: &Path) -> String {
    format!("[agent]\nstate_dir = {:?}\ncontrol_socket = {:?}\n", dir.join("state"), dir.join("agent.sock"))
}

#[test]
fn a_good_config_prints_ok_exits_0_and_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n[runtime]\nkind = \"process\"\n\n[services.web]\nlisten = [\"127.0.0.1:1\"]\ncommand = [\"/bin/true\"]\n",
        agent_section(dir.path())
    );
    let config = write_config(dir.path(), "agent.toml", &text);
    let out = check(&config);
    out.assert_exit_code(0);
    assert!(
        out.stdout.contains(&format!("{}: ok", config.display())),
        "stdout names the file and says ok: {:?}",
        out.stdout
    );
    assert!(out.stderr.is_empty(), "nothing on stderr: {:?}", out.stderr);
    assert!(!dir.path().join("state").exists(), "--check-config created the state dir");
    assert!(!dir.path().join("agent.sock").exists(), "--check-config bound the control socket");

    for example in ["agent.toml", "agent-process.toml", "real-app.toml"] {
        let path = workspace_root().join("examples/config").join(example);
        let out = check(&path);
        out.assert_exit_code(0);
        assert!(out.stdout.contains(": ok"), "{example}: {:?}", out.stdout);
    }
}

/// (what, file body, line, key)
fn bad_configs(dir: &Path) -> Vec<(&'static str, String, usize, &'static str)> {
    let agent = agent_section(dir);
    // The agent section is 3 lines; a blank line follows it.
    let service = "[services.web]\nlisten = [\"127.0.0.1:1\"]\nimage = \"websample:v1\"\n";
    vec![
        ("unknown key", format!("{agent}\n{service}imgae = \"x\"\n"), 8, "services.web.imgae"),
        (
            "bad duration",
            format!("{agent}\n{service}[services.web.health]\ninterval = \"1 fortnight-ish\"\n"),
            9,
            "services.web.health.interval",
        ),
        (
            "control_listen without token_file",
            format!("{agent}control_listen = \"127.0.0.1:7070\"\n\n{service}"),
            4,
            "agent.control_listen",
        ),
        (
            "docker service without image",
            format!("{agent}\n[runtime]\nkind = \"docker\"\n\n[services.web]\nlisten = [\"127.0.0.1:1\"]\n"),
            8,
            "services.web.image",
        ),
        (
            "TOML syntax error",
            format!("{agent}\n{service}[services.web.deploy]\ndrain_timeout = 30s\n"),
            9,
            "services.web.deploy.drain_timeout",
        ),
        ("unclosed table header", format!("{agent}\n[services.web\n"), 5, "services.web"),
        (
            "pre_stop with both http and exec",
            format!(
                "{agent}\n{service}[services.web.hooks]\npre_stop = {{ http = \"/q\", exec = [\"x\"] }}\n"
            ),
            9,
            "services.web.hooks.pre_stop",
        ),
        (
            "an empty pre_deploy command",
            format!("{agent}\n{service}[services.web.hooks]\npre_deploy = []\n"),
            9,
            "services.web.hooks.pre_deploy",
        ),
        ("zero worker threads", format!("{agent}worker_threads = 0\n\n{service}"), 4, "agent.worker_threads"),
        (
            "on_start that is neither deploy nor wait",
            format!("{agent}\n{service}[services.web.deploy]\non_start = \"later\"\n"),
            9,
            "services.web.deploy.on_start",
        ),
        (
            "two services on 0.0.0.0:P and 127.0.0.1:P (the second bind would fail)",
            format!(
                "{agent}\n[services.web]\nlisten = [\"0.0.0.0:18080\"]\nimage = \"websample:v1\"\n\n\
                 [services.api]\nlisten = [\"127.0.0.1:18080\"]\nimage = \"websample:v1\"\n"
            ),
            10,
            "services.api.listen[0]",
        ),
        (
            "a host that is not a name",
            format!(
                "{agent}\n[proxy]\nhttp = [\"127.0.0.1:18081\"]\n\n[services.web]\nhosts = [\"exa mple.com\"]\nimage = \"websample:v1\"\n"
            ),
            9,
            "services.web.hosts[0]",
        ),
        (
            "two services on the same host and prefix",
            format!(
                "{agent}\n[proxy]\nhttp = [\"127.0.0.1:18081\"]\n\n[services.web]\nhosts = [\"example.com\"]\nimage = \"websample:v1\"\n\n\
                 [services.api]\nhosts = [\"example.com\"]\nimage = \"websample:v1\"\n"
            ),
            13,
            "services.api.hosts",
        ),
        (
            "tls = \"acme\" without acme_directory",
            format!(
                "{agent}\n[proxy]\nhttps = [\"127.0.0.1:18443\"]\n\n[services.web]\nhosts = [\"example.com\"]\ntls = \"acme\"\nimage = \"websample:v1\"\n"
            ),
            10,
            "services.web.tls",
        ),
        (
            "control_socket_group that does not exist",
            format!("{agent}control_socket_group = \"bg-no-such-group\"\n\n{service}"),
            4,
            "agent.control_socket_group",
        ),
    ]
}

#[test]
fn each_refused_config_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (what, text, line, key)) in bad_configs(dir.path()).into_iter().enumerate() {
        let config = write_config(dir.path(), &format!("bad-{i}.toml"), &text);
        let out = check(&config);
        assert_ne!(out.code, 0, "{what}: exit code 0\n{text}");
        assert_eq!(out.code, 2, "{what}: a config error exits 2: {}", out.stderr);
        let expected = format!("{}:{line}: {key}", config.display());
        assert!(
            out.stderr.contains(&expected),
            "{what}: stderr should contain {expected:?}, got:\n{}\nfile:\n{text}",
            out.stderr
        );
        assert!(!out.stdout.contains("ok"), "{what}: stdout says ok: {:?}", out.stdout);
        assert!(!dir.path().join("state").exists(), "{what}: a refused config created the state dir");
    }
}

#[test]
fn a_missing_config_file_is_named() {
    let out = check(Path::new("/nonexistent/bg-agent.toml"));
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("/nonexistent/bg-agent.toml"), "{}", out.stderr);
}

#[test]
fn the_agent_refuses_to_start_on_a_bad_config_and_binds_nothing() {
    // Without --check-config the same validation runs before anything
    // starts: the agent never half-starts.
    let dir = tempfile::tempdir().unwrap();
    let listen = bg_tests::agent::free_addr();
    let text = format!(
        "{}control_listen = \"127.0.0.1:7070\"\n\n[services.web]\nlisten = [\"{listen}\"]\nimage = \"x\"\n",
        agent_section(dir.path())
    );
    let config = write_config(dir.path(), "agent.toml", &text);
    let out = bg_agent_run(&["--config", config.to_str().unwrap()], &[], WITHIN);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("agent.control_listen") && out.stderr.contains("token_file"),
        "{}",
        out.stderr
    );
    assert!(!dir.path().join("agent.sock").exists());
    assert!(std::net::TcpListener::bind(listen).is_ok(), "the proxy address was left bound");
}
