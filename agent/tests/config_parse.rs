//! The config parser: the example files parse to the documented defaults,
//! every refused config names its line and key, and no input panics.

use bg_agent::config::{
    Config, ConfigError, FailureAction, HealthCheckKind, RollingOrder, RuntimeKind, DEFAULT_QUEUE_TIMEOUT,
    DEFAULT_STOP_GRACE,
};
use bg_agent::runtime::PullPolicy;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/config")
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("test.toml"))
}

/// A minimal valid docker service, to build bad configs from.
const BASE: &str = r#"[services.web]
listen = ["127.0.0.1:8080"]
image = "websample:v1"
"#;

#[test]
fn docker_example_parses_with_documented_values() {
    let cfg = Config::load(&examples().join("agent.toml")).unwrap();
    assert_eq!(cfg.runtime.kind, RuntimeKind::Docker);
    assert_eq!(cfg.runtime.docker_host, None);
    let web = &cfg.services["web"];
    assert_eq!(web.spec.image.as_deref(), Some("websample:v1"));
    assert_eq!(web.spec.env["VERSION"], "v1");
    assert_eq!(web.pull, PullPolicy::Missing);
    assert_eq!(web.port, 5000);
    assert_eq!(web.stop_grace, DEFAULT_STOP_GRACE);
    assert_eq!(web.queue_timeout, DEFAULT_QUEUE_TIMEOUT);
    assert_eq!(web.health.check, HealthCheckKind::Http { path: "/healthz".into() });
    assert_eq!(web.deploy.failure_action, FailureAction::Rollback);
    assert_eq!(web.rolling.failure_action, FailureAction::Pause);
    assert_eq!(web.rolling.order, RollingOrder::StopFirst);
}

#[test]
fn process_example_parses() {
    let cfg = Config::load(&examples().join("agent-process.toml")).unwrap();
    assert_eq!(cfg.runtime.kind, RuntimeKind::Process);
    let web = &cfg.services["web"];
    assert_eq!(web.spec.command.as_deref(), Some(&["/usr/local/bin/websample".to_string()][..]));
    assert_eq!(web.spec.image, None);
}

#[test]
fn example_files_spell_out_every_default() {
    // Parsing the minimal config must give the same values as the fully
    // commented examples: the examples document the real defaults.
    let full = Config::load(&examples().join("agent.toml")).unwrap();
    let minimal = parse(&format!("{BASE}env = {{ VERSION = \"v1\" }}\n")).unwrap();
    assert_eq!(full.agent, minimal.agent);
    assert_eq!(full.runtime, minimal.runtime);
    let (a, b) = (&full.services["web"], &minimal.services["web"]);
    assert_eq!(a.health, b.health);
    assert_eq!(a.deploy, b.deploy);
    assert_eq!(a.rolling, b.rolling);
    assert_eq!(
        (a.pull, a.port, a.replicas, &a.stop_signal, a.stop_grace, a.queue_timeout),
        (b.pull, b.port, b.replicas, &b.stop_signal, b.stop_grace, b.queue_timeout)
    );
}

#[test]
fn durations_accept_humantime() {
    let cfg = parse(&format!(
        "{BASE}stop_grace = \"1m 30s\"\n[services.web.health]\ninterval = \"500ms\"\nkind = \"tcp\"\n"
    ))
    .unwrap();
    let web = &cfg.services["web"];
    assert_eq!(web.stop_grace, Duration::from_secs(90));
    assert_eq!(web.health.interval, Duration::from_millis(500));
    assert_eq!(web.health.check, HealthCheckKind::Tcp);
}

#[test]
fn stop_signal_is_canonicalised() {
    let cfg = parse(&format!("{BASE}stop_signal = \"quit\"\n")).unwrap();
    assert_eq!(cfg.services["web"].stop_signal, "SIGQUIT");
}

#[test]
fn control_listen_with_token_file_is_accepted() {
    let cfg =
        parse(&format!("[agent]\ncontrol_listen = \"127.0.0.1:7070\"\ntoken_file = \"/etc/t\"\n{BASE}"))
            .unwrap();
    assert_eq!(cfg.agent.control_listen, Some("127.0.0.1:7070".parse().unwrap()));
}

/// (config, expected line, expected key, a fragment of the message)
fn bad_configs() -> Vec<(String, usize, &'static str, &'static str)> {
    vec![
        // Syntax.
        ("[services.web\n".into(), 1, "services.web", "not valid TOML"),
        (format!("{BASE}[services.web.health]\ninterval = 1s\n"), 5, "services.web.health.interval", "TOML"),
        (format!("{BASE}stop_grace = \"30s\n"), 4, "services.web.stop_grace", "TOML"),
        ("= 1\n".into(), 1, "(toml syntax)", "TOML"),
        // Unknown keys, at every level.
        (format!("{BASE}imgae = \"x\"\n"), 4, "services.web.imgae", "unknown field"),
        ("[agnet]\n".into(), 1, "agnet", "unknown field"),
        (
            format!("{BASE}[services.web.health]\nintervall = \"1s\"\n"),
            5,
            "services.web.health.intervall",
            "unknown field",
        ),
        (
            format!("{BASE}[services.web.rolling]\n\nspeed = 2\n"),
            6,
            "services.web.rolling.speed",
            "unknown field",
        ),
        // Types.
        (format!("{BASE}replicas = \"two\"\n"), 4, "services.web.replicas", "integer"),
        // Durations.
        (format!("{BASE}stop_grace = \"30 parsecs\"\n"), 4, "services.web.stop_grace", "not a duration"),
        (
            format!("{BASE}[services.web.health]\ninterval = \"0s\"\n"),
            5,
            "services.web.health.interval",
            "greater than zero",
        ),
        (
            format!("{BASE}[services.web.health]\ndeadline = \"0s\"\n"),
            5,
            "services.web.health.deadline",
            "greater than zero",
        ),
        (format!("{BASE}queue_timeout = \"soon\"\n"), 4, "services.web.queue_timeout", "not a duration"),
        (
            format!("{BASE}stop_grace = \"18446744073709551615s\"\n"),
            4,
            "services.web.stop_grace",
            "longer than the maximum of 365 days",
        ),
        // Names, addresses.
        (
            "[services.Web]\nlisten = [\"127.0.0.1:1\"]\nimage = \"x\"\n".into(),
            1,
            "services.Web",
            "not a valid service name",
        ),
        (
            format!("[services.{}]\nlisten = [\"127.0.0.1:1\"]\nimage = \"x\"\n", "a".repeat(41)),
            1,
            "services.aaaa",
            "at most 40",
        ),
        ("[services.web]\nimage = \"x\"\n".into(), 1, "services.web.listen", "missing"),
        ("[services.web]\nlisten = []\nimage = \"x\"\n".into(), 2, "services.web.listen", "empty"),
        (
            "[services.web]\nlisten = [\"127.0.0.1:1\", \"nope\"]\nimage = \"x\"\n".into(),
            2,
            "services.web.listen[1]",
            "not a socket address",
        ),
        (
            format!("{BASE}[services.api]\nlisten = [\"127.0.0.1:8080\"]\nimage = \"x\"\n"),
            5,
            "services.api.listen[0]",
            "already used by services.web.listen[0]",
        ),
        // Runtime needs.
        ("[services.web]\nlisten = [\"127.0.0.1:1\"]\n".into(), 1, "services.web.image", "needs an image"),
        (
            "[runtime]\nkind = \"process\"\n[services.web]\nlisten = [\"127.0.0.1:1\"]\n".into(),
            3,
            "services.web.command",
            "needs a command",
        ),
        (
            "[runtime]\nkind = \"process\"\n[services.web]\nlisten = [\"127.0.0.1:1\"]\nimage = \"x\"\n"
                .into(),
            5,
            "services.web.command",
            "cannot run an image",
        ),
        ("[runtime]\nkind = \"podman\"\n".into(), 2, "runtime.kind", "\"docker\" or \"process\""),
        ("[runtime]\ndocker_host = \"/var/run/docker.sock\"\n".into(), 2, "runtime.docker_host", "unix://"),
        // Numbers.
        (format!("{BASE}replicas = 0\n"), 4, "services.web.replicas", ">= 1"),
        (format!("{BASE}port = 70000\n"), 4, "services.web.port", "1..65535"),
        (
            format!("{BASE}[services.web.health]\nhealthy_threshold = 0\n"),
            5,
            "services.web.health.healthy_threshold",
            ">= 1",
        ),
        (
            format!("{BASE}[services.web.health]\nunhealthy_threshold = -1\n"),
            5,
            "services.web.health.unhealthy_threshold",
            ">= 1",
        ),
        (
            format!("{BASE}[services.web.rolling]\nparallelism = 0\n"),
            5,
            "services.web.rolling.parallelism",
            ">= 1",
        ),
        (
            format!("{BASE}[services.web.deploy]\nmax_error_rate = 1.5\n"),
            5,
            "services.web.deploy.max_error_rate",
            "between 0 and 1",
        ),
        (
            format!("{BASE}[services.web.rolling]\nmax_failure_ratio = -0.1\n"),
            5,
            "services.web.rolling.max_failure_ratio",
            "between 0 and 1",
        ),
        // Enums.
        (
            format!("{BASE}pull = \"sometimes\"\n"),
            4,
            "services.web.pull",
            "\"missing\" or \"always\" or \"never\"",
        ),
        (format!("{BASE}stop_signal = \"SIGFOO\"\n"), 4, "services.web.stop_signal", "unknown signal"),
        (
            format!("{BASE}[services.web.deploy]\nfailure_action = \"panic\"\n"),
            5,
            "services.web.deploy.failure_action",
            "\"rollback\"",
        ),
        (
            format!("{BASE}[services.web.rolling]\nfailure_action = \"retry\"\n"),
            5,
            "services.web.rolling.failure_action",
            "\"pause\"",
        ),
        (
            format!("{BASE}[services.web.rolling]\norder = \"random\"\n"),
            5,
            "services.web.rolling.order",
            "\"start-first\"",
        ),
        (
            format!("{BASE}[services.web.health]\nkind = \"grpc\"\n"),
            5,
            "services.web.health.kind",
            "\"http\" or \"tcp\"",
        ),
        (
            format!("{BASE}[services.web.health]\npath = \"healthz\"\n"),
            5,
            "services.web.health.path",
            "start with '/'",
        ),
        (
            format!("{BASE}[services.web.health]\nkind = \"tcp\"\npath = \"/h\"\n"),
            6,
            "services.web.health.path",
            "only applies",
        ),
        // Contradictions.
        (
            "[agent]\ncontrol_listen = \"127.0.0.1:7070\"\n".into(),
            2,
            "agent.control_listen",
            "control_listen needs token_file: the TCP control API refuses to run without a bearer token",
        ),
        (
            "[agent]\nmetrics_listen = \"localhost\"\n".into(),
            2,
            "agent.metrics_listen",
            "not a socket address",
        ),
        (
            format!("[agent]\nmetrics_listen = \"127.0.0.1:8080\"\n{BASE}"),
            4,
            "services.web.listen[0]",
            "already used by agent.metrics_listen",
        ),
        ("[agent]\nui_listen = \"localhost\"\n".into(), 2, "agent.ui_listen", "not a socket address"),
        (
            "[agent]\nmetrics_listen = \"127.0.0.1:9200\"\nui_listen = \"127.0.0.1:9200\"\n".into(),
            3,
            "agent.ui_listen",
            "already used by agent.metrics_listen",
        ),
        (
            format!("[agent]\nui_listen = \"127.0.0.1:8080\"\n{BASE}"),
            4,
            "services.web.listen[0]",
            "already used by agent.ui_listen",
        ),
        (format!("{BASE}env = {{ PORT = \"1\" }}\n"), 4, "services.web.env.PORT", "set by the runtime"),
        (
            format!("[agent]\ncontrol_socket_group = \"no-such-group-bg\"\n{BASE}"),
            2,
            "agent.control_socket_group",
            "does not exist",
        ),
        (
            format!("{BASE}response_timeout = \"0s\"\n"),
            4,
            "services.web.response_timeout",
            "greater than zero",
        ),
        // The swarm runtime: its own keys elsewhere, what it lacks.
        (
            format!("{BASE}placement = [\"node.role==worker\"]\n"),
            4,
            "services.web.placement",
            "only applies to the swarm runtime",
        ),
        (
            format!("{BASE}max_replicas_per_node = 1\n"),
            4,
            "services.web.max_replicas_per_node",
            "the docker runtime cannot",
        ),
        (
            format!("[runtime]\ntask_network = \"t\"\n{BASE}"),
            2,
            "runtime.task_network",
            "only applies to kind = \"swarm\"",
        ),
        (
            format!("[runtime]\nswarm_ack_timeout = \"10s\"\n{BASE}"),
            2,
            "runtime.swarm_ack_timeout",
            "only applies to kind = \"swarm\"",
        ),
        (format!("{SWARM}swarm_ack_timeout = \"0s\"\n{BASE}"), 4, "runtime.swarm_ack_timeout", "above zero"),
        (format!("{SWARM}swarm_ack_timeout = \"soon\"\n{BASE}"), 4, "runtime.swarm_ack_timeout", "duration"),
        (
            format!("{SWARM}{BASE}placement = [\"worker\"]\n"),
            7,
            "services.web.placement[0]",
            "not a placement constraint",
        ),
        (
            format!("{SWARM}{BASE}tmpfs = [\"/tmp:size=64m\"]\n"),
            7,
            "services.web.tmpfs[0]",
            "cannot apply tmpfs options",
        ),
        (
            format!("{SWARM}{BASE}[services.web.rolling]\nparallelism = 2\n"),
            8,
            "services.web.rolling.parallelism",
            "no rolling updates",
        ),
        (
            format!("{SWARM}{BASE}[services.web.hooks]\npre_stop = {{ exec = [\"/bin/true\"] }}\n"),
            8,
            "services.web.hooks.pre_stop.exec",
            "cannot exec beside a task",
        ),
        (
            format!("{SWARM}[services.web]\nlisten = [\"127.0.0.1:8080\"]\n"),
            4,
            "services.web.image",
            "the swarm runtime needs an image",
        ),
    ]
}

/// `[runtime] kind = "swarm"`, to prefix [`BASE`] with.
const SWARM: &str = "[runtime]\nkind = \"swarm\"\n\n";

#[test]
fn swarm_keys_parse_into_the_spec() {
    let text = format!(
        "{SWARM}task_network = \"bg-web-tasks\"\n{BASE}replicas = 3\nplacement = [\"node.role==worker\"]\nmax_replicas_per_node = 2\ntmpfs = [\"/tmp\"]\n"
    );
    let cfg = parse(&text.replace("task_network", "swarm_ack_timeout = \"5s\"\ntask_network")).unwrap();
    assert_eq!(cfg.runtime.kind, RuntimeKind::Swarm);
    assert_eq!(cfg.runtime.task_network, "bg-web-tasks");
    assert_eq!(cfg.runtime.swarm_ack_timeout, std::time::Duration::from_secs(5));
    let web = &cfg.services["web"];
    assert_eq!(web.spec.placement, vec!["node.role==worker".to_string()]);
    assert_eq!(web.spec.max_replicas_per_node, Some(2));
    let default = parse(&format!("{SWARM}{BASE}")).unwrap();
    assert_eq!(default.runtime.task_network, bg_agent::config::DEFAULT_TASK_NETWORK);
    assert_eq!(default.runtime.swarm_ack_timeout, std::time::Duration::from_secs(30));
}

#[test]
fn bad_configs_name_line_and_key() {
    for (text, line, key, fragment) in bad_configs() {
        let err = parse(&text).expect_err(&text);
        let shown = err.to_string();
        match &err {
            ConfigError::Invalid { line: l, key: k, message, path } => {
                assert_eq!(*l, line, "line for {text:?}: {shown}");
                assert!(k.starts_with(key), "key {k:?} should be {key:?} for {text:?}: {shown}");
                assert!(
                    message.contains(fragment),
                    "message for {text:?} should contain {fragment:?}: {shown}"
                );
                assert_eq!(path, Path::new("test.toml"));
                assert!(shown.starts_with(&format!("test.toml:{line}: ")), "{shown}");
            }
            other => panic!("unexpected error {other:?}"),
        }
    }
}

#[test]
fn a_missing_file_says_which() {
    let err = Config::load(Path::new("/nonexistent/agent.toml")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/agent.toml"), "{err}");
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = parse(&text);
        }

        #[test]
        fn toml_like_text_never_panics(
            lines in proptest::collection::vec(
                prop_oneof![
                    Just("[services.web]".to_string()),
                    Just("[services.web.health]".to_string()),
                    Just("[agent]".to_string()),
                    Just("[runtime]".to_string()),
                    "[a-z_]{1,12} = \"[ -~]{0,12}\"",
                    "[a-z_]{1,12} = -?[0-9]{1,12}",
                    "[a-z_]{1,12} = \\[\"[ -~]{0,10}\"\\]",
                    "listen = \\[\"[0-9.:]{0,20}\"\\]",
                    "[a-z_.]{0,20}",
                ],
                0..12,
            )
        ) {
            let _ = parse(&lines.join("\n"));
        }
    }
}
