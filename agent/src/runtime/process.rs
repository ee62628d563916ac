//! The process runtime: each replica is a local program (`spec.command`)
//! running in its own process group, told to listen on `PORT`, a free
//! loopback port the runtime picks. Processes outlive the agent: each has a
//! record under `<state_dir>/processes/` and its output goes to a file
//! there, so a restarted agent adopts them ([`Runtime::list`]) and can still
//! stop them and read their logs.
//!
//! Our own children are reaped by a task that publishes their exit code;
//! adopted processes (started by an earlier agent) are watched through
//! `/proc/<pid>` and their recorded start time.
//!
//! Under systemd each process is started in a transient scope of its own
//! ([`super::scope`]), so that it lives outside the agent's cgroup.
//!
//! A crash never leaves a process that no record names: the record is saved
//! (provisional, without a pid) before the spawn, and the process carries
//! the record's token in its environment, so the next agent can find it in
//! `/proc` even when its pid never reached the disk.

mod files;
mod logfile;
mod procfs;
mod record;
#[cfg(test)]
mod tests;

use super::child::{self, exit_code, Ended};
use super::scope::{Placement, SERVICE_ENV};
use super::signal::parse_signal;
use super::sources::Sources;
use super::{
    labels, BoxFuture, OneOff, Output, Progress, PullPolicy, ReplicaHandle, ReplicaSpec, RunState, Runtime,
    RuntimeError, StopReport,
};
use crate::api::{Spec, User};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use record::{Record, TOKEN_ENV};
use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often an adopted process is polled while waiting for it to exit.
const ADOPTED_POLL: Duration = Duration::from_millis(50);
/// Longest wait for a process to disappear after SIGKILL (10 seconds; it
/// only takes longer when the process is stuck in the kernel).
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Runs replicas as local child processes. Cheap to share behind an `Arc`.
pub struct ProcessRuntime {
    /// `<state_dir>/processes`.
    dir: PathBuf,
    /// Every process this runtime knows, by replica name.
    procs: Mutex<HashMap<String, Proc>>,
    /// Which cgroup new processes go to.
    placement: Placement,
    /// Where the reapers (one task per started process) run, and when they
    /// stop waiting: at shutdown the processes run on for the next agent.
    tasks: TaskTracker,
    shutdown: CancellationToken,
    /// Contents of secrets, files and env files read by deploys.
    sources: Sources,
    /// Where replicas' secrets and files directories go ([`files::base`]).
    files_dir: PathBuf,
}

/// One known process.
#[derive(Clone)]
struct Proc {
    record: Record,
    /// Our child: the reaper publishes `Some(exit code)` here. `None` for
    /// adopted processes, which are watched through `/proc`.
    exit: Option<watch::Receiver<Option<i64>>>,
}

impl Proc {
    fn handle(&self) -> ReplicaHandle {
        ReplicaHandle {
            runtime_id: format!("pid:{}", self.record.pid),
            name: self.record.name.clone(),
            service: self.record.service.clone(),
            color: self.record.color,
            revision: self.record.revision,
            replica: self.record.replica,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, self.record.port)),
        }
    }

    /// `Some(code)` once it exited (code unknown for adopted processes: -1).
    fn exited(&self) -> Option<i64> {
        match &self.exit {
            Some(rx) => *rx.borrow(),
            None => (!procfs::is_alive(self.record.pid, self.record.start_time)).then_some(-1),
        }
    }
}

impl std::fmt::Debug for ProcessRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessRuntime").field("dir", &self.dir).field("placement", &self.placement).finish()
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let context = context.into();
    move |source| RuntimeError::Io { context, source }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Send `sig` to the process group; a group that is already gone is fine.
fn signal_group(pgid: u32, sig: Signal) -> Result<(), RuntimeError> {
    match killpg(Pid::from_raw(pgid as i32), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(RuntimeError::Io {
            context: format!("sending {sig} to process group {pgid}"),
            source: e.into(),
        }),
    }
}

/// The uid and gid a replica of `user` runs as: `Some` when the agent is
/// root and switches to them, `None` when the agent already is that user.
/// Anyone else cannot switch users: refused, naming the user.
fn run_as(user: &User) -> Result<Option<(u32, u32)>, RuntimeError> {
    let unknown =
        |what: &str| RuntimeError::InvalidSpec(format!("user {user}: {what} does not exist on this host"));
    let entry = match user.uid() {
        Some(uid) => nix::unistd::User::from_uid(uid.into()).ok().flatten(),
        None => {
            Some(nix::unistd::User::from_name(&user.user).ok().flatten().ok_or_else(|| unknown("the user"))?)
        }
    };
    let uid = user.uid().or(entry.as_ref().map(|e| e.uid.as_raw())).ok_or_else(|| unknown("the user"))?;
    let gid = match &user.group {
        Some(_) if user.gid().is_some() => user.gid().unwrap_or(uid),
        Some(g) => {
            nix::unistd::Group::from_name(g).ok().flatten().ok_or_else(|| unknown("the group"))?.gid.as_raw()
        }
        None => entry.map_or(uid, |e| e.gid.as_raw()),
    };
    let me = nix::unistd::geteuid().as_raw();
    if me == 0 {
        return Ok(Some((uid, gid)));
    }
    if me == uid && user.group.is_none() {
        return Ok(None);
    }
    Err(RuntimeError::InvalidSpec(format!(
        "user {user} needs the agent to run as root to switch to it (it runs as uid {me})"
    )))
}

/// Ask the kernel for a free loopback port. Another program could take it
/// before the app binds it; the health check would then fail, and the
/// deploy with it, which is the safe outcome.
fn free_port() -> Result<u16, RuntimeError> {
    let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(io_err("picking a free loopback port"))?;
    Ok(l.local_addr().map_err(io_err("picking a free loopback port"))?.port())
}

/// What became of the process a provisional `record` was saved for, given
/// every process carrying [`TOKEN_ENV`] (`found`, pid and value): the record
/// completed with the pid of the live process carrying its token, or `None`
/// when there is none (the agent died before the spawn, or the process has
/// exited since). Several carriers mean the process started children; the
/// first started is ours (ties go to the one leading its own group), and
/// its group is the one to signal.
fn resolve_provisional(record: &Record, found: &[(u32, String)]) -> Option<Record> {
    if record.token.is_empty() {
        return None;
    }
    let (pid, stat) = found
        .iter()
        .filter(|(_, token)| *token == record.token)
        .filter_map(|(pid, _)| procfs::stat(*pid).map(|s| (*pid, s)))
        .filter(|(pid, s)| procfs::is_alive(*pid, s.start_time))
        .min_by_key(|(pid, s)| (s.start_time, s.pgrp != *pid, *pid))?;
    Some(Record { pid, pgid: stat.pgrp, start_time: stat.start_time, ..record.clone() })
}

impl ProcessRuntime {
    /// A runtime keeping its records under `<state_dir>/processes`. Records
    /// of processes that still run are adopted; the others are deleted.
    /// Provisional records (an agent died while starting a process) are
    /// resolved through `/proc`: the process is adopted if it runs. New
    /// processes are placed as `BG_REPLICA_SCOPE` says
    /// ([`Placement::from_env`]).
    pub fn new(state_dir: &Path) -> Result<Self, RuntimeError> {
        let placement = Placement::from_env()?;
        if let Placement::SystemdScope { .. } = placement {
            tracing::info!(
                slice = super::scope::SLICE,
                "replicas run in transient systemd scopes of their own"
            );
        }
        Self::with_placement(state_dir, placement)
    }

    /// Run the reapers on the agent's `tasks`, and stop them at `shutdown`.
    pub fn tracked(self, tasks: TaskTracker, shutdown: CancellationToken) -> Self {
        ProcessRuntime { tasks, shutdown, ..self }
    }

    /// [`ProcessRuntime::new`] with an explicit placement.
    pub fn with_placement(state_dir: &Path, placement: Placement) -> Result<Self, RuntimeError> {
        let dir = state_dir.join("processes");
        std::fs::create_dir_all(&dir)
            .map_err(io_err(format!("creating {} (is the state_dir writable?)", dir.display())))?;
        let files_dir = files::base(&dir);
        let mut procs = HashMap::new();
        let (provisional, records): (Vec<Record>, Vec<Record>) = Record::load_all(&dir)
            .map_err(io_err(format!("reading {}", dir.display())))?
            .into_iter()
            .partition(Record::is_provisional);
        if !provisional.is_empty() {
            let found = procfs::with_env(TOKEN_ENV)
                .map_err(io_err("scanning /proc for processes an earlier agent was starting"))?;
            for record in provisional {
                match resolve_provisional(&record, &found) {
                    Some(adopted) => {
                        tracing::info!(
                            name = %adopted.name,
                            pid = adopted.pid,
                            "adopting a process the previous agent started but did not record"
                        );
                        if let Err(e) = adopted.save(&dir) {
                            // The provisional record stays: the next agent
                            // can still resolve it the same way.
                            tracing::warn!(name = %adopted.name, error = %e, "could not update the process record");
                        }
                        Self::move_adopted(&placement, &adopted);
                        procs.insert(adopted.name.clone(), Proc { record: adopted, exit: None });
                    }
                    None => {
                        tracing::info!(name = %record.name, "forgetting a process that never started");
                        let _ = Record::delete(&dir, &record.name);
                        logfile::delete(&dir, &record.name);
                        files::delete(&files_dir, &record.name);
                    }
                }
            }
        }
        for record in records {
            if procfs::is_alive(record.pid, record.start_time) {
                tracing::info!(name = %record.name, pid = record.pid, "adopting running process");
                Self::move_adopted(&placement, &record);
                procs.insert(record.name.clone(), Proc { record, exit: None });
            } else {
                tracing::info!(name = %record.name, pid = record.pid, "forgetting process that is gone");
                let _ = Record::delete(&dir, &record.name);
                logfile::delete(&dir, &record.name);
                files::delete(&files_dir, &record.name);
            }
        }
        Ok(ProcessRuntime {
            dir,
            procs: Mutex::new(procs),
            placement,
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            sources: Sources::new(),
            files_dir,
        })
    }

    /// Move an adopted process out of the agent's cgroup into a scope of
    /// its own, if an earlier agent left it there. A failure is logged: the
    /// process runs on where it is.
    fn move_adopted(placement: &Placement, record: &Record) {
        let id = if record.token.is_empty() { record.pid.to_string() } else { record.token.clone() };
        match placement.move_adopted(&record.name, &id, record.pid) {
            Ok(true) => {
                tracing::info!(name = %record.name, pid = record.pid, "moved an adopted process into a scope of its own")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(name = %record.name, error = %e, "adopted process stays in the agent's cgroup")
            }
        }
    }

    fn get(&self, name: &str) -> Option<Proc> {
        self.procs.lock().expect("process table lock").get(name).cloned()
    }

    /// Wait until `p` exited or `limit` passed; `Some(code)` if it exited.
    async fn wait_exit(p: &Proc, limit: Duration) -> Option<i64> {
        match &p.exit {
            Some(rx) => {
                let mut rx = rx.clone();
                tokio::time::timeout(limit, rx.wait_for(|c| c.is_some()))
                    .await
                    .ok()
                    .and_then(|r| r.ok().map(|c| c.unwrap_or(-1)))
                    // A closed channel means the reaper is gone: read the
                    // last value.
                    .or_else(|| *rx.borrow())
            }
            None => {
                let deadline = Instant::now() + limit;
                loop {
                    if !procfs::is_alive(p.record.pid, p.record.start_time) {
                        return Some(-1);
                    }
                    if Instant::now() >= deadline {
                        return None;
                    }
                    tokio::time::sleep(ADOPTED_POLL).await;
                }
            }
        }
    }

    async fn stop_proc(&self, p: &Proc, signal: &str, grace: Duration) -> Result<StopReport, RuntimeError> {
        let sig = parse_signal(signal).map_err(RuntimeError::InvalidSpec)?;
        let started = Instant::now();
        if let Some(code) = p.exited() {
            // Clean up anything left in its group.
            signal_group(p.record.pgid, Signal::SIGKILL)?;
            return Ok(StopReport {
                killed: false,
                elapsed: Duration::ZERO,
                exit_code: (code >= 0).then_some(code),
            });
        }
        signal_group(p.record.pgid, sig)?;
        let (code, killed) = match Self::wait_exit(p, grace).await {
            Some(code) => (code, false),
            None => {
                tracing::warn!(name = %p.record.name, ?grace, "still running after the grace period; sending SIGKILL");
                signal_group(p.record.pgid, Signal::SIGKILL)?;
                match Self::wait_exit(p, KILL_WAIT).await {
                    Some(code) => (code, true),
                    None => {
                        return Err(RuntimeError::Io {
                            context: format!(
                                "process {} (pid {}) survived SIGKILL for {KILL_WAIT:?}",
                                p.record.name, p.record.pid
                            ),
                            source: std::io::Error::from(std::io::ErrorKind::TimedOut),
                        })
                    }
                }
            }
        };
        let elapsed = started.elapsed();
        // The leader is gone; take down whatever it left in its group.
        signal_group(p.record.pgid, Signal::SIGKILL)?;
        Ok(StopReport { killed, elapsed, exit_code: (code >= 0).then_some(code) })
    }

    async fn start_proc(&self, spec: &ReplicaSpec) -> Result<ReplicaHandle, RuntimeError> {
        let command = match &spec.spec.command {
            Some(c) if !c.is_empty() && !c[0].is_empty() => c.clone(),
            _ => {
                return Err(RuntimeError::InvalidSpec(match &spec.spec.image {
                    Some(image) => format!(
                        "the process runtime runs `command`, not images (got image {image:?}): set a command, or use the docker runtime"
                    ),
                    None => "the process runtime needs a command, e.g. [\"/opt/web/server\"]".into(),
                }))
            }
        };
        let name = spec.name();
        if let Some(old) = self.get(&name) {
            tracing::info!(%name, pid = old.record.pid, "removing leftover process with the same name");
            self.remove_proc(&old).await?;
        }

        let (record, child) = self.spawn_provisional(spec, command)?;
        let token = record.token.clone();
        let handle = self.complete(record, child)?;
        if let Some(p) = self.get(&name) {
            if let Err(e) =
                self.placement.wait_placed(&name, &token, p.record.pid, || p.exited().is_none()).await
            {
                let log = logfile::tail(&self.dir, &name, 5).unwrap_or_default();
                tracing::warn!(%name, error = %e, output = %log.trim_end(), "replica not placed in its scope; removing it");
                let _ = self.remove_proc(&p).await;
                return Err(e.into());
            }
        }
        Ok(handle)
    }

    /// Save a provisional record for `spec`, then spawn the process with the
    /// record's token in its environment. An agent killed anywhere from
    /// here to the end of [`Self::complete`] leaves a record the next agent
    /// resolves (see [`resolve_provisional`]); on an error, nothing is left.
    fn spawn_provisional(
        &self,
        spec: &ReplicaSpec,
        command: Vec<String>,
    ) -> Result<(Record, tokio::process::Child), RuntimeError> {
        let name = spec.name();
        let port = free_port()?;
        let mut label_map = BTreeMap::new();
        label_map.insert(labels::MANAGED.to_string(), "true".to_string());
        label_map.insert(labels::SERVICE.to_string(), spec.service.clone());
        label_map.insert(labels::COLOR.to_string(), spec.color.to_string());
        label_map.insert(labels::REVISION.to_string(), spec.revision.to_string());
        label_map.insert(labels::REPLICA.to_string(), spec.replica.to_string());
        let record = Record {
            name: name.clone(),
            service: spec.service.clone(),
            color: spec.color,
            revision: spec.revision,
            replica: spec.replica,
            pid: 0,
            pgid: 0,
            port,
            start_time: 0,
            started_at_ms: now_ms(),
            command,
            labels: label_map,
            token: Record::new_token(),
        };
        let abandon = |e: RuntimeError| {
            let _ = Record::delete(&self.dir, &name);
            logfile::delete(&self.dir, &name);
            files::delete(&self.files_dir, &name);
            e
        };

        // The record first, so that even the log file is never left behind
        // unnamed.
        record
            .save(&self.dir)
            .map_err(io_err(format!("writing the record of {name} under {}", self.dir.display())))
            .map_err(abandon)?;
        let log = logfile::open(&self.dir, &name)
            .and_then(|log| Ok((log.try_clone()?, log)))
            .map_err(io_err(format!("opening the log of {name}")))
            .map_err(abandon)?;
        let (log, log2) = log;
        let owner = spec.spec.user.as_ref().map(run_as).transpose().map_err(abandon)?.flatten();
        let env = self.sources.env_of(&spec.spec).map_err(abandon)?;
        let dirs_env =
            files::write(&self.files_dir, &name, &spec.spec, &self.sources, owner).map_err(abandon)?;
        let launch = self.placement.wrap(&name, &record.token, &record.command, owner);
        let argv = launch.argv;
        let mut cmd = tokio::process::Command::new(&argv[0]);
        for var in SERVICE_ENV {
            // The agent's own systemd environment is not the app's.
            cmd.env_remove(var);
        }
        if let Some((uid, gid)) = launch.owner {
            cmd.uid(uid).gid(gid);
        }
        if let Some(workdir) = &spec.spec.workdir {
            cmd.current_dir(workdir);
        }
        cmd.args(&argv[1..])
            .envs(&env)
            .envs(dirs_env)
            .env("PORT", port.to_string())
            .env(TOKEN_ENV, &record.token)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            // Its own group: stop signals reach its children too, and a
            // Ctrl-C or SIGTERM aimed at the agent's group does not reach it.
            .process_group(0)
            .kill_on_drop(false);
        let child = cmd
            .spawn()
            .map_err(|source| RuntimeError::Spawn { program: argv[0].clone(), source })
            .map_err(abandon)?;
        Ok((record, child))
    }

    /// Fill the pid into the provisional `record` of the just spawned
    /// `child`, save it, and start watching the child.
    fn complete(
        &self,
        mut record: Record,
        mut child: tokio::process::Child,
    ) -> Result<ReplicaHandle, RuntimeError> {
        let name = record.name.clone();
        let Some(pid) = child.id() else {
            let _ = Record::delete(&self.dir, &name);
            return Err(RuntimeError::Io {
                context: format!("{name} exited before its pid could be read"),
                source: std::io::Error::other("no pid"),
            });
        };
        record.pid = pid;
        record.pgid = pid;
        record.start_time = procfs::stat(pid).map(|s| s.start_time).unwrap_or(0);

        let (tx, rx) = watch::channel(None);
        let reaper_name = name.clone();
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            // A stopping agent leaves its replicas running (the next one
            // adopts them by record); only a live agent waits for them.
            let status = tokio::select! {
                _ = shutdown.cancelled() => return,
                status = child.wait() => status,
            };
            let code = match status {
                Ok(status) => exit_code(status),
                Err(e) => {
                    tracing::warn!(name = %reaper_name, error = %e, "waiting for the process failed");
                    -1
                }
            };
            tracing::info!(name = %reaper_name, code, "process exited");
            let _ = tx.send(Some(code));
        });
        if let Err(e) = record.save(&self.dir) {
            // The provisional record would let a later agent adopt it, but
            // this agent could not record it: refuse to run it.
            let _ = signal_group(pid, Signal::SIGKILL);
            let _ = Record::delete(&self.dir, &name);
            return Err(RuntimeError::Io {
                context: format!("writing the record of {name} under {}", self.dir.display()),
                source: e,
            });
        }
        let proc = Proc { record, exit: Some(rx) };
        let handle = proc.handle();
        self.procs.lock().expect("process table lock").insert(name, proc);
        Ok(handle)
    }

    async fn remove_proc(&self, p: &Proc) -> Result<(), RuntimeError> {
        if p.exited().is_none() {
            signal_group(p.record.pgid, Signal::SIGKILL)?;
            let _ = Self::wait_exit(p, KILL_WAIT).await;
        }
        self.procs.lock().expect("process table lock").remove(&p.record.name);
        Record::delete(&self.dir, &p.record.name)
            .map_err(io_err(format!("deleting the record of {}", p.record.name)))?;
        logfile::delete(&self.dir, &p.record.name);
        files::delete(&self.files_dir, &p.record.name);
        Ok(())
    }

    /// `bgctl run` on this runtime: `job.argv` with the spec's
    /// environment, env files, user, workdir, secrets and files (in a
    /// directory of its own, removed afterwards), in its own process group.
    async fn run_job(
        &self,
        job: &OneOff,
        output: Output<'_>,
        cancel: &CancellationToken,
    ) -> Result<Option<i64>, RuntimeError> {
        let Some(program) = job.argv.first().filter(|p| !p.is_empty()) else {
            return Err(RuntimeError::InvalidSpec("a one-off run needs a command".into()));
        };
        let name = job.name();
        let owner = job.spec.user.as_ref().map(run_as).transpose()?.flatten();
        let env = self.sources.env_of(&job.spec)?;
        let dirs_env = files::write(&self.files_dir, &name, &job.spec, &self.sources, owner)?;
        let mut cmd = tokio::process::Command::new(program);
        for var in SERVICE_ENV {
            cmd.env_remove(var);
        }
        if let Some((uid, gid)) = owner {
            cmd.uid(uid).gid(gid);
        }
        if let Some(workdir) = &job.spec.workdir {
            cmd.current_dir(workdir);
        }
        cmd.args(&job.argv[1..]).envs(&env).envs(dirs_env).env("PORT", job.app_port.to_string());
        let ended = child::run(cmd, output, cancel).await;
        files::delete(&self.files_dir, &name);
        match ended.map_err(|source| RuntimeError::Spawn { program: program.clone(), source })? {
            Ended::Exited(code) => Ok(Some(code)),
            Ended::Cancelled => Ok(None),
        }
    }

    /// The known process behind `handle`, if its pid still matches.
    fn find(&self, handle: &ReplicaHandle) -> Option<Proc> {
        self.get(&handle.name).filter(|p| format!("pid:{}", p.record.pid) == handle.runtime_id)
    }
}

impl Runtime for ProcessRuntime {
    fn kind(&self) -> &'static str {
        "process"
    }

    fn prepare<'a>(
        &'a self,
        spec: &'a Spec,
        _pull: PullPolicy,
        _progress: Progress<'a>,
    ) -> BoxFuture<'a, Result<Spec, RuntimeError>> {
        Box::pin(async move { self.sources.resolve(spec) })
    }

    fn start<'a>(&'a self, spec: &'a ReplicaSpec) -> BoxFuture<'a, Result<ReplicaHandle, RuntimeError>> {
        Box::pin(self.start_proc(spec))
    }

    fn stop<'a>(
        &'a self,
        replica: &'a ReplicaHandle,
        signal: &'a str,
        grace: Duration,
    ) -> BoxFuture<'a, Result<StopReport, RuntimeError>> {
        Box::pin(async move {
            let p = self.find(replica).ok_or_else(|| RuntimeError::NotFound(replica.name.clone()))?;
            self.stop_proc(&p, signal, grace).await
        })
    }

    fn remove<'a>(&'a self, replica: &'a ReplicaHandle) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            match self.find(replica) {
                Some(p) => self.remove_proc(&p).await,
                None => Ok(()),
            }
        })
    }

    fn list<'a>(
        &'a self,
        service: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<ReplicaHandle>, RuntimeError>> {
        Box::pin(async move {
            let procs = self.procs.lock().expect("process table lock");
            let mut out: Vec<ReplicaHandle> = procs
                .values()
                .filter(|p| service.is_none_or(|s| p.record.service == s))
                .map(Proc::handle)
                .collect();
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
    }

    fn state<'a>(&'a self, replica: &'a ReplicaHandle) -> BoxFuture<'a, Result<RunState, RuntimeError>> {
        Box::pin(async move {
            let Some(p) = self.find(replica) else {
                return Ok(RunState::Gone);
            };
            // `state` is polled by the health checks: a good moment to keep
            // the log bounded.
            if let Err(e) = logfile::rotate_if_large(&self.dir, &p.record.name) {
                tracing::warn!(name = %p.record.name, error = %e, "could not rotate the process log");
            }
            Ok(match (p.exited(), &p.exit) {
                (None, _) => RunState::Running { native_health: None },
                // An adopted process is not our child: its code is unknown.
                (Some(_), None) => RunState::Gone,
                (Some(code), Some(_)) => RunState::Exited { code },
            })
        })
    }

    fn logs<'a>(
        &'a self,
        replica: &'a ReplicaHandle,
        lines: usize,
    ) -> BoxFuture<'a, Result<String, RuntimeError>> {
        Box::pin(async move {
            logfile::tail(&self.dir, &replica.name, lines)
                .map_err(io_err(format!("reading the log of {}", replica.name)))
        })
    }

    fn run_once<'a>(
        &'a self,
        job: &'a OneOff,
        output: Output<'a>,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Option<i64>, RuntimeError>> {
        Box::pin(self.run_job(job, output, cancel))
    }

    fn exec<'a>(
        &'a self,
        _replica: &'a ReplicaHandle,
        argv: &'a [String],
        env: &'a [(String, String)],
        output: Output<'a>,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Option<i64>, RuntimeError>> {
        Box::pin(async move {
            let Some(program) = argv.first() else {
                return Err(RuntimeError::InvalidSpec("the command is empty".into()));
            };
            let mut cmd = tokio::process::Command::new(program);
            for var in SERVICE_ENV {
                cmd.env_remove(var);
            }
            cmd.args(&argv[1..]).envs(env.iter().map(|(k, v)| (k, v)));
            match child::run(cmd, output, cancel)
                .await
                .map_err(|source| RuntimeError::Spawn { program: program.clone(), source })?
            {
                Ended::Exited(code) => Ok(Some(code)),
                Ended::Cancelled => Ok(None),
            }
        })
    }
}
