//! The docker runtime against a real engine and the `websample:v1` image.
//!
//! With `BG_DOCKER_TESTS=1` an unreachable engine fails the tests. Without
//! it, they print why they skip and pass, so `cargo test` works on machines
//! without Docker. The image is built by
//! `examples/scripts/build-websample-image.sh` when it is missing.

#[path = "runtime_support/mod.rs"]
mod support;

use bg_agent::api::{Color, Spec};
use bg_agent::runtime::docker::DockerRuntime;
use bg_agent::runtime::{PullPolicy, ReplicaSpec, RunState, Runtime, RuntimeError};
use std::sync::OnceLock;
use std::time::Duration;
use support::*;

const IMAGE: &str = "websample:v1";

/// The runtime, or `None` (after saying why) when the tests should skip.
async fn docker() -> Option<DockerRuntime> {
    let required = std::env::var("BG_DOCKER_TESTS").is_ok_and(|v| v == "1");
    let reachable = match DockerRuntime::connect(None) {
        Ok(rt) => match rt.ping().await {
            Ok(()) => Ok(rt),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    match reachable {
        Ok(rt) => {
            ensure_image();
            Some(rt)
        }
        Err(e) if required => panic!("BG_DOCKER_TESTS=1 but the Docker engine is unreachable: {e}"),
        Err(e) => {
            eprintln!("skipping docker runtime test: no Docker engine ({e}); set BG_DOCKER_TESTS=1 to make this a failure");
            None
        }
    }
}

/// Build `websample:v1` once if the engine does not have it.
fn ensure_image() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let present = std::process::Command::new("docker")
            .args(["image", "inspect", IMAGE])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !present {
            let script = workspace().join("examples/scripts/build-websample-image.sh");
            let status = std::process::Command::new("bash")
                .arg(&script)
                .arg("v1")
                .status()
                .expect("running build-websample-image.sh");
            assert!(status.success(), "{} failed", script.display());
        }
    });
}

/// Removes the containers of a test however it ends.
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", name])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

fn spec(service: &str, env: &[(&str, &str)]) -> ReplicaSpec {
    ReplicaSpec {
        service: service.to_string(),
        color: Color::Green,
        revision: 4,
        replica: 1,
        replicas: 1,
        spec: Spec {
            image: Some(IMAGE.into()),
            command: None,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        },
        app_port: 5000,
        pull: PullPolicy::Missing,
        stop_signal: "SIGTERM".into(),
        stop_grace: Duration::from_secs(10),
    }
}

#[tokio::test]
async fn round_trip_start_serve_list_logs_stop_remove() {
    let Some(rt) = docker().await else { return };
    let service = unique_service("dkr");
    let spec = spec(&service, &[("VERSION", "v5")]);
    let _cleanup = Cleanup(vec![spec.name()]);

    let h = rt.start(&spec).await.unwrap();
    assert_eq!(h.name, format!("bg-{service}-green-1"));
    assert_eq!((h.color, h.revision, h.replica), (Color::Green, 4, 1));
    assert!(h.addr.ip().is_loopback() && h.addr.port() != 0, "{h:?}");

    let (status, body) = get_eventually(h.addr, "/", Duration::from_secs(20)).await;
    assert_eq!((status, body.as_str()), (200, "v5\n"));
    assert_eq!(rt.list(Some(&service)).await.unwrap(), vec![h.clone()]);
    assert!(rt.list(None).await.unwrap().contains(&h));
    assert_eq!(rt.state(&h).await.unwrap(), RunState::Running { native_health: None });
    let logs = rt.logs(&h, 10).await.unwrap();
    assert!(logs.contains("listening"), "{logs}");

    let report = rt.stop(&h, "SIGTERM", Duration::from_secs(10)).await.unwrap();
    assert!(!report.killed, "{report:?}");
    assert!(report.elapsed < Duration::from_secs(5), "{report:?}");
    assert_eq!(report.exit_code, Some(0), "{report:?}");
    assert_eq!(rt.state(&h).await.unwrap(), RunState::Exited { code: 0 });
    // Stopped containers are still listed (port 0: nothing is published).
    let listed = rt.list(Some(&service)).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].runtime_id, h.runtime_id);

    rt.remove(&h).await.unwrap();
    rt.remove(&h).await.unwrap(); // gone already: fine
    assert!(rt.list(Some(&service)).await.unwrap().is_empty());
    assert_eq!(rt.state(&h).await.unwrap(), RunState::Gone);
}

#[tokio::test]
async fn pull_never_with_a_missing_image_says_what_to_do() {
    let Some(rt) = docker().await else { return };
    let service = unique_service("dkr");
    let mut spec = spec(&service, &[]);
    spec.spec.image = Some(format!("websample:missing-{}", std::process::id()));
    spec.pull = PullPolicy::Never;
    let _cleanup = Cleanup(vec![spec.name()]);
    let err = rt.start(&spec).await.unwrap_err();
    assert!(matches!(err, RuntimeError::Image { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("is not present locally and pull = \"never\"; build or load it first"), "{msg}");
    assert!(rt.list(Some(&service)).await.unwrap().is_empty());
}

#[tokio::test]
async fn ignoring_sigterm_is_killed_after_grace() {
    let Some(rt) = docker().await else { return };
    let service = unique_service("dkr");
    let mut spec = spec(&service, &[("IGNORE_SIGTERM", "1")]);
    spec.stop_grace = Duration::from_secs(2);
    let _cleanup = Cleanup(vec![spec.name()]);
    let h = rt.start(&spec).await.unwrap();
    get_eventually(h.addr, "/", Duration::from_secs(20)).await;

    let report = rt.stop(&h, "SIGTERM", Duration::from_secs(2)).await.unwrap();
    assert!(report.killed, "{report:?}");
    assert!(
        report.elapsed >= Duration::from_millis(1800) && report.elapsed < Duration::from_secs(10),
        "{report:?}"
    );
    assert_eq!(report.exit_code, Some(137), "{report:?}");
    let logs = rt.logs(&h, 20).await.unwrap();
    assert!(logs.contains("sigterm"), "{logs}");
    rt.remove(&h).await.unwrap();
}

#[tokio::test]
async fn a_graceful_app_exits_well_before_grace() {
    let Some(rt) = docker().await else { return };
    let service = unique_service("dkr");
    let mut spec = spec(&service, &[]);
    spec.stop_grace = Duration::from_secs(20);
    let _cleanup = Cleanup(vec![spec.name()]);
    let h = rt.start(&spec).await.unwrap();
    get_eventually(h.addr, "/", Duration::from_secs(20)).await;
    let report = rt.stop(&h, "SIGTERM", Duration::from_secs(20)).await.unwrap();
    assert!(!report.killed, "{report:?}");
    assert!(report.elapsed < Duration::from_secs(5), "{report:?}");
    rt.remove(&h).await.unwrap();
}

#[tokio::test]
async fn starting_the_same_name_replaces_the_leftover() {
    let Some(rt) = docker().await else { return };
    let service = unique_service("dkr");
    let spec = spec(&service, &[("VERSION", "old")]);
    let _cleanup = Cleanup(vec![spec.name()]);
    let old = rt.start(&spec).await.unwrap();
    let mut spec2 = spec.clone();
    spec2.spec.env.insert("VERSION".into(), "new".into());
    let new = rt.start(&spec2).await.unwrap();
    assert_ne!(old.runtime_id, new.runtime_id);
    assert_eq!(rt.state(&old).await.unwrap(), RunState::Gone);
    let (_, body) = get_eventually(new.addr, "/", Duration::from_secs(20)).await;
    assert_eq!(body, "new\n");
    rt.stop(&new, "SIGTERM", Duration::from_secs(10)).await.unwrap();
    rt.remove(&new).await.unwrap();
}

#[tokio::test]
async fn stopping_with_another_signal_than_configured_still_stops() {
    // API 1.41 cannot override the stop signal, so the runtime kills with
    // the requested signal itself and SIGKILLs after grace.
    let Some(rt) = docker().await else { return };
    let service = unique_service("dkr");
    let spec = spec(&service, &[("IGNORE_SIGTERM", "1")]);
    let _cleanup = Cleanup(vec![spec.name()]);
    let h = rt.start(&spec).await.unwrap();
    get_eventually(h.addr, "/", Duration::from_secs(20)).await;
    let report = rt.stop(&h, "SIGUSR2", Duration::from_secs(2)).await.unwrap();
    assert!(report.elapsed < Duration::from_secs(10), "{report:?}");
    assert!(matches!(rt.state(&h).await.unwrap(), RunState::Exited { .. }), "{report:?}");
    rt.remove(&h).await.unwrap();
}
