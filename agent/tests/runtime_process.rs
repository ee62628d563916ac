//! The process runtime against the real websample binary: start, serve,
//! list, logs, graceful stop, kill after grace, exit reaping, adoption by a
//! second runtime on the same state directory.

#[path = "runtime_support/mod.rs"]
mod support;

use bg_agent::runtime::process::ProcessRuntime;
use bg_agent::runtime::{ReplicaHandle, RunState, Runtime, RuntimeError};
use std::time::{Duration, Instant};
use support::*;

/// Kills the process group of a handle when a test ends, even on panic.
struct Guard(Vec<ReplicaHandle>);

impl Drop for Guard {
    fn drop(&mut self) {
        for h in &self.0 {
            if let Some(pid) = h.runtime_id.strip_prefix("pid:").and_then(|p| p.parse().ok()) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

async fn wait_state(rt: &dyn Runtime, h: &ReplicaHandle, want: impl Fn(&RunState) -> bool) -> RunState {
    let start = Instant::now();
    loop {
        let s = rt.state(h).await.unwrap();
        if want(&s) {
            return s;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "state stuck at {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn round_trip_start_serve_list_logs_stop_remove() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(dir.path()).unwrap();
    let service = unique_service("proc");
    let spec = websample_spec(&service, &[("VERSION", "v7")]);
    let h = rt.start(&spec).await.unwrap();
    let _guard = Guard(vec![h.clone()]);

    assert_eq!(h.name, format!("bg-{service}-blue-1"));
    assert!(h.runtime_id.starts_with("pid:"), "{h:?}");
    assert!(h.addr.ip().is_loopback());
    assert_eq!(rt.kind(), "process");

    let (status, body) = get_eventually(h.addr, "/", Duration::from_secs(10)).await;
    assert_eq!((status, body.as_str()), (200, "v7\n"));
    assert_eq!(rt.list(Some(&service)).await.unwrap(), vec![h.clone()]);
    assert!(rt.list(Some("other")).await.unwrap().is_empty());
    assert!(rt.list(None).await.unwrap().contains(&h));
    assert_eq!(rt.state(&h).await.unwrap(), RunState::Running { native_health: None });
    let logs = rt.logs(&h, 10).await.unwrap();
    assert!(logs.contains("listening"), "{logs}");

    let report = rt.stop(&h, "SIGTERM", Duration::from_secs(5)).await.unwrap();
    assert!(!report.killed, "{report:?}");
    assert!(report.elapsed < Duration::from_secs(3), "{report:?}");
    assert_eq!(report.exit_code, Some(0), "{report:?}");
    assert_eq!(rt.state(&h).await.unwrap(), RunState::Exited { code: 0 });
    assert!(rt.logs(&h, 50).await.unwrap().contains("sigterm"));
    // A stopped replica is still listed until it is removed.
    assert_eq!(rt.list(Some(&service)).await.unwrap().len(), 1);

    rt.remove(&h).await.unwrap();
    rt.remove(&h).await.unwrap(); // twice is fine
    assert!(rt.list(Some(&service)).await.unwrap().is_empty());
    assert_eq!(rt.state(&h).await.unwrap(), RunState::Gone);
}

#[tokio::test]
async fn ignoring_sigterm_gets_killed_after_grace() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(dir.path()).unwrap();
    let spec = websample_spec(&unique_service("proc"), &[("IGNORE_SIGTERM", "1")]);
    let h = rt.start(&spec).await.unwrap();
    let _guard = Guard(vec![h.clone()]);
    get_eventually(h.addr, "/", Duration::from_secs(10)).await;

    let report = rt.stop(&h, "TERM", Duration::from_secs(2)).await.unwrap();
    assert!(report.killed, "{report:?}");
    assert!(
        report.elapsed >= Duration::from_millis(1800) && report.elapsed < Duration::from_secs(10),
        "{report:?}"
    );
    assert_eq!(report.exit_code, Some(137), "{report:?}");
    assert_eq!(rt.state(&h).await.unwrap(), RunState::Exited { code: 137 });
    rt.remove(&h).await.unwrap();
}

#[tokio::test]
async fn exits_are_reaped_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(dir.path()).unwrap();
    let mut spec = websample_spec(&unique_service("proc"), &[]);
    spec.spec.command = Some(vec!["sh".into(), "-c".into(), "echo bye; exit 3".into()]);
    let h = rt.start(&spec).await.unwrap();
    let _guard = Guard(vec![h.clone()]);
    let s = wait_state(&rt, &h, |s| matches!(s, RunState::Exited { .. })).await;
    assert_eq!(s, RunState::Exited { code: 3 });
    assert_eq!(rt.logs(&h, 5).await.unwrap(), "bye\n");
    // Stopping what already exited reports its code without waiting.
    let report = rt.stop(&h, "SIGTERM", Duration::from_secs(5)).await.unwrap();
    assert_eq!((report.killed, report.exit_code), (false, Some(3)));

    spec.replica = 2;
    spec.spec.command = Some(vec!["sh".into(), "-c".into(), "kill -9 $$".into()]);
    let h2 = rt.start(&spec).await.unwrap();
    let s = wait_state(&rt, &h2, |s| matches!(s, RunState::Exited { .. })).await;
    assert_eq!(s, RunState::Exited { code: 137 });
    rt.remove(&h).await.unwrap();
    rt.remove(&h2).await.unwrap();
}

#[tokio::test]
async fn a_second_runtime_adopts_running_processes() {
    let dir = tempfile::tempdir().unwrap();
    let service = unique_service("proc");
    let first = ProcessRuntime::new(dir.path()).unwrap();
    let h = first.start(&websample_spec(&service, &[("VERSION", "v3")])).await.unwrap();
    let _guard = Guard(vec![h.clone()]);
    get_eventually(h.addr, "/", Duration::from_secs(10)).await;

    // What a restarted agent sees.
    let second = ProcessRuntime::new(dir.path()).unwrap();
    assert_eq!(second.list(Some(&service)).await.unwrap(), vec![h.clone()]);
    assert_eq!(second.state(&h).await.unwrap(), RunState::Running { native_health: None });
    assert!(second.logs(&h, 10).await.unwrap().contains("listening"));
    let (_, body) = http_get(h.addr, "/").await.unwrap();
    assert_eq!(body, "v3\n");

    let report = second.stop(&h, "SIGTERM", Duration::from_secs(5)).await.unwrap();
    assert!(!report.killed, "{report:?}");
    assert!(report.elapsed < Duration::from_secs(3), "{report:?}");
    assert_eq!(second.state(&h).await.unwrap(), RunState::Gone);
    second.remove(&h).await.unwrap();
    assert!(second.list(None).await.unwrap().is_empty());

    // A third runtime finds nothing left to adopt.
    let third = ProcessRuntime::new(dir.path()).unwrap();
    assert!(third.list(None).await.unwrap().is_empty());
}

#[tokio::test]
async fn starting_the_same_name_replaces_the_leftover() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(dir.path()).unwrap();
    let spec = websample_spec(&unique_service("proc"), &[("VERSION", "old")]);
    let old = rt.start(&spec).await.unwrap();
    let mut spec2 = spec.clone();
    spec2.spec.env.insert("VERSION".into(), "new".into());
    let new = rt.start(&spec2).await.unwrap();
    let _guard = Guard(vec![old.clone(), new.clone()]);
    assert_ne!(old.runtime_id, new.runtime_id);
    assert_eq!(rt.list(Some(&spec.service)).await.unwrap(), vec![new.clone()]);
    assert_eq!(rt.state(&old).await.unwrap(), RunState::Gone);
    let (_, body) = get_eventually(new.addr, "/", Duration::from_secs(10)).await;
    assert_eq!(body, "new\n");
    rt.stop(&new, "SIGTERM", Duration::from_secs(5)).await.unwrap();
    rt.remove(&new).await.unwrap();
}

#[tokio::test]
async fn bad_specs_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(dir.path()).unwrap();
    let mut spec = websample_spec(&unique_service("proc"), &[]);
    spec.spec.command = None;
    spec.spec.image = Some("websample:v1".into());
    let err = rt.start(&spec).await.unwrap_err();
    assert!(matches!(err, RuntimeError::InvalidSpec(_)), "{err}");
    assert!(err.to_string().contains("docker runtime"), "{err}");

    spec.spec.command = Some(vec!["/nonexistent/program".into()]);
    let err = rt.start(&spec).await.unwrap_err();
    assert!(matches!(err, RuntimeError::Spawn { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/program"), "{err}");
    assert!(rt.list(None).await.unwrap().is_empty());

    spec.spec.command = Some(vec!["sleep".into(), "30".into()]);
    let h = rt.start(&spec).await.unwrap();
    let _guard = Guard(vec![h.clone()]);
    let err = rt.stop(&h, "SIGBOGUS", Duration::from_secs(1)).await.unwrap_err();
    assert!(err.to_string().contains("SIGBOGUS"), "{err}");
    rt.remove(&h).await.unwrap();
}
