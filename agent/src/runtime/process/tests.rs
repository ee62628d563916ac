//! The crash window of `start_proc`, reproduced without timing luck: the
//! first half of a start (provisional record, spawn) runs, the agent "dies"
//! before the full record is saved, and a new runtime on the same directory
//! must adopt the process or, when there is none, forget the record.

use super::record::{Record, TOKEN_ENV};
use super::{logfile, procfs, ProcessRuntime};
use crate::api::{Color, Spec};
use crate::runtime::{PullPolicy, ReplicaSpec, RunState, Runtime};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::path::Path;
use std::time::Duration;

/// Kills a process group when a test ends, even on panic.
struct Guard(u32);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.0 as i32), Signal::SIGKILL);
    }
}

/// A spec for replica 1 of `service`, blue, running `command`.
fn spec(service: &str, command: &[&str]) -> ReplicaSpec {
    ReplicaSpec {
        service: service.into(),
        color: Color::Blue,
        revision: 4,
        replica: 1,
        replicas: 1,
        spec: Spec {
            image: None,
            command: Some(command.iter().map(|s| s.to_string()).collect()),
            env: Default::default(),
            ..Default::default()
        },
        app_port: 5000,
        pull: PullPolicy::Never,
        stop_signal: "SIGTERM".into(),
        stop_grace: Duration::from_secs(5),
    }
}

/// The names of the files in `dir`, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

/// The one record in `dir`.
fn only_record(dir: &Path) -> Record {
    let mut all = Record::load_all(dir).unwrap();
    assert_eq!(all.len(), 1, "{all:?}");
    all.remove(0)
}

#[tokio::test]
async fn a_process_spawned_but_not_recorded_is_adopted_by_the_next_runtime() {
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("processes");
    let first = ProcessRuntime::new(state.path()).unwrap();
    // A leader with a child of its own: both carry the token, the leader
    // must be the one adopted.
    let spec = spec("crash", &["sh", "-c", "sleep 30 & wait"]);
    let command = spec.spec.command.clone().unwrap();
    let (record, child) = first.spawn_provisional(&spec, command).unwrap();
    let pid = child.id().unwrap();
    let _guard = Guard(pid);
    assert!(record.is_provisional());
    assert_eq!(only_record(&dir), record, "saved before the spawn");
    // spawn() returns once exec has begun, a moment before the kernel
    // shows the new environment; the next agent starts much later.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let found = loop {
        let found = procfs::with_env(TOKEN_ENV).unwrap();
        if found.iter().any(|(p, _)| *p == pid) || std::time::Instant::now() > deadline {
            break found;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(found.contains(&(pid, record.token.clone())), "the child carries the token: {found:?}");
    // The agent dies here, before `complete` saved the pid.
    drop(child);
    drop(first);

    let second = ProcessRuntime::new(state.path()).unwrap();
    let listed = second.list(Some("crash")).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let h = &listed[0];
    assert_eq!((h.runtime_id.clone(), h.name.as_str()), (format!("pid:{pid}"), "bg-crash-blue-1"));
    assert_eq!((h.color, h.revision, h.replica, h.addr.port()), (Color::Blue, 4, 1, record.port));
    assert_eq!(second.state(h).await.unwrap(), RunState::Running { native_health: None });
    let saved = only_record(&dir);
    let start_time = procfs::stat(pid).unwrap().start_time;
    assert_eq!((saved.pid, saved.pgid, saved.start_time), (pid, pid, start_time), "{saved:?}");
    assert_eq!(saved.token, record.token);

    // A third runtime adopts it again from the now complete record.
    let third = ProcessRuntime::new(state.path()).unwrap();
    assert_eq!(third.list(None).await.unwrap(), listed);

    // And it can be stopped like any adopted process, children included.
    let report = third.stop(h, "SIGTERM", Duration::from_secs(5)).await.unwrap();
    assert!(!report.killed, "{report:?}");
    assert_eq!(third.state(h).await.unwrap(), RunState::Gone);
    assert!(procfs::with_env(TOKEN_ENV).unwrap().iter().all(|(_, t)| *t != record.token));
    third.remove(h).await.unwrap();
    assert_eq!(files(&dir), Vec::<String>::new());
}

#[tokio::test]
async fn a_provisional_record_without_a_process_is_forgotten() {
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("processes");
    let first = ProcessRuntime::new(state.path()).unwrap();

    // Died before the spawn: a provisional record (and a log) but no
    // process has the token.
    let never = Record {
        name: "bg-never-blue-1".into(),
        service: "never".into(),
        color: Color::Blue,
        revision: 1,
        replica: 1,
        pid: 0,
        pgid: 0,
        port: 1,
        start_time: 0,
        started_at_ms: 0,
        command: vec!["sleep".into(), "30".into()],
        labels: Default::default(),
        token: Record::new_token(),
    };
    never.save(&dir).unwrap();
    logfile::open(&dir, &never.name).unwrap();

    // Died after the spawn, but the process has exited since.
    let spec = spec("exited", &["true"]);
    let command = spec.spec.command.clone().unwrap();
    let (record, mut child) = first.spawn_provisional(&spec, command).unwrap();
    assert!(child.wait().await.unwrap().success());
    assert!(record.is_provisional());
    drop(first);
    assert_eq!(
        files(&dir),
        ["bg-exited-blue-1.json", "bg-exited-blue-1.log", "bg-never-blue-1.json", "bg-never-blue-1.log"]
    );

    let second = ProcessRuntime::new(state.path()).unwrap();
    assert!(second.list(None).await.unwrap().is_empty());
    assert_eq!(files(&dir), Vec::<String>::new(), "records and logs deleted");
}

#[tokio::test]
async fn a_failed_spawn_leaves_nothing_behind() {
    let state = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(state.path()).unwrap();
    let err = rt.start(&spec("fail", &["/nonexistent/program"])).await.unwrap_err();
    assert!(err.to_string().contains("/nonexistent/program"), "{err}");
    assert_eq!(files(&state.path().join("processes")), Vec::<String>::new());
}

/// A stand-in for `systemd-run` that fails the way it does when systemd
/// refuses the scope.
fn failing_systemd_run(dir: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("systemd-run");
    std::fs::write(
        &path,
        "#!/bin/sh\necho 'Failed to start transient scope unit: Access denied' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test]
async fn a_replica_that_cannot_get_its_scope_is_refused_and_leaves_nothing_behind() {
    let state = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    let placement = super::Placement::SystemdScope { systemd_run: failing_systemd_run(bin.path()) };
    let rt = ProcessRuntime::with_placement(state.path(), placement).unwrap();
    let err = rt.start(&spec("scoped", &["/bin/sleep", "30"])).await.unwrap_err();
    assert!(
        matches!(err, crate::runtime::RuntimeError::Scope(super::super::scope::ScopeError::Exited { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("bg-scoped-blue-1-"), "{err}");
    assert_eq!(files(&state.path().join("processes")), Vec::<String>::new());
    assert!(rt.list(None).await.unwrap().is_empty());
}
