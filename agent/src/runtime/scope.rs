//! Where process-runtime replicas live in the cgroup tree.
//!
//! Under systemd the agent's service owns a cgroup, and everything the
//! agent forks lands in it unless moved. Replicas must not stay there:
//! systemd would kill them when the agent stops (or, with
//! `KillMode=process`, warn on every start about "left-over processes" and
//! still kill them on some stop paths). With [`Placement::SystemdScope`]
//! each replica is started through `systemd-run --scope`, which asks
//! systemd (`StartTransientUnit`) for a transient scope of its own,
//! `bluegreen.slice/bg-<service>-<color>-<replica>-<id>.scope`, moves
//! itself there and then `exec`s the replica's program: same pid, same
//! process group, same environment, so the process runtime's records and
//! `/proc` adoption work unchanged.
//!
//! The placement is chosen by the unit, not guessed: `bg-agent.service`
//! sets `BG_REPLICA_SCOPE=systemd` ([`SCOPE_ENV`]). Unset (or `none`),
//! replicas inherit the agent's cgroup, as they do outside systemd (tests,
//! the quickstart).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The environment variable that selects the placement: `systemd` or
/// `none` (the default).
pub const SCOPE_ENV: &str = "BG_REPLICA_SCOPE";

/// The slice every replica scope is created in.
pub const SLICE: &str = "bluegreen.slice";

/// Longest wait for a replica to show up in its scope: `systemd-run`
/// waits for systemd's job, which takes milliseconds unless systemd is
/// very busy.
pub const PLACE_TIMEOUT: Duration = Duration::from_secs(10);

/// What systemd sets in a service's environment for the service itself
/// (notifications, watchdog, socket activation, invocation): meant for the
/// agent, never for the programs it runs.
pub const SERVICE_ENV: &[&str] = &[
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "INVOCATION_ID",
    "JOURNAL_STREAM",
    SCOPE_ENV,
];

/// Why replicas cannot be placed as asked.
#[derive(Debug, thiserror::Error)]
pub enum ScopeError {
    /// [`SCOPE_ENV`] holds something else than `systemd` or `none`.
    #[error("{SCOPE_ENV}={0:?}: expected \"systemd\" or \"none\"")]
    BadSetting(String),
    /// Scopes were asked for, but systemd does not run this host.
    #[error("{SCOPE_ENV}=systemd, but systemd is not running here (no /run/systemd/system)")]
    NoSystemd,
    /// Scopes were asked for, but there is no `systemd-run`.
    #[error("{SCOPE_ENV}=systemd, but systemd-run is not installed (searched PATH, /usr/bin and /bin)")]
    NoSystemdRun,
    /// The process ended before it reached its scope: `systemd-run` could
    /// not create it (its error is in the replica's log), or the program
    /// exited at once.
    #[error("{unit}: the process exited before it was placed in its scope (systemd-run's error, if any, is in the replica's log)")]
    Exited {
        /// The scope unit.
        unit: String,
    },
    /// An adopted process could not be moved into a scope.
    #[error("{unit}: moving adopted process {pid} into its scope failed: {message}")]
    Move {
        /// The scope unit.
        unit: String,
        /// The process.
        pid: u32,
        /// What busctl or the wait said.
        message: String,
    },
    /// The process did not reach its scope in time.
    #[error("{unit}: the process was not placed in its scope within {waited:?}")]
    Timeout {
        /// The scope unit.
        unit: String,
        /// How long we waited.
        waited: Duration,
    },
}

/// Where new replicas go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// In the agent's own cgroup (outside systemd).
    Inherit,
    /// Each in a transient scope of its own, through `systemd-run --scope`.
    SystemdScope {
        /// The `systemd-run` program.
        systemd_run: PathBuf,
    },
}

/// How a replica is started: the program and its arguments, and the user
/// and group the spawner switches to before running it (`None` when it
/// runs as the agent or the program switches itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// `(uid, gid)` to set on the spawned process.
    pub owner: Option<(u32, u32)>,
}

impl Placement {
    /// The placement [`SCOPE_ENV`] asks for, checked against this host.
    pub fn from_env() -> Result<Placement, ScopeError> {
        let setting = std::env::var(SCOPE_ENV).ok();
        Placement::from_setting(setting.as_deref(), Path::new("/run/systemd/system"), find_systemd_run)
    }

    /// [`Placement::from_env`] with its inputs spelled out: the setting,
    /// the directory that exists when systemd runs the host (what
    /// `sd_booted()` checks) and how to find `systemd-run`.
    fn from_setting(
        setting: Option<&str>,
        booted: &Path,
        find: impl FnOnce() -> Option<PathBuf>,
    ) -> Result<Placement, ScopeError> {
        match setting.map(str::trim) {
            None | Some("") | Some("none") => Ok(Placement::Inherit),
            Some("systemd") => {
                if !booted.is_dir() {
                    return Err(ScopeError::NoSystemd);
                }
                let systemd_run = find().ok_or(ScopeError::NoSystemdRun)?;
                Ok(Placement::SystemdScope { systemd_run })
            }
            Some(other) => Err(ScopeError::BadSetting(other.to_string())),
        }
    }

    /// How to start `command` as replica `replica` (whose record carries
    /// `token`) with this placement, running as `owner` (uid, gid).
    pub fn wrap(&self, replica: &str, token: &str, command: &[String], owner: Option<(u32, u32)>) -> Launch {
        match self {
            Placement::Inherit => Launch { argv: command.to_vec(), owner },
            Placement::SystemdScope { systemd_run } => {
                let mut argv = vec![
                    systemd_run.to_string_lossy().into_owned(),
                    "--scope".into(),
                    "--quiet".into(),
                    "--collect".into(),
                    format!("--unit={}", unit_name(replica, token)),
                    format!("--slice={SLICE}"),
                    format!("--description=bluegreen replica {replica}"),
                ];
                // systemd-run must reach the bus as the agent: it switches
                // to the replica's user itself, after the scope exists.
                if let Some((uid, gid)) = owner {
                    argv.extend([format!("--uid={uid}"), format!("--gid={gid}")]);
                }
                argv.push("--".into());
                argv.extend(command.iter().cloned());
                Launch { argv, owner: None }
            }
        }
    }

    /// Wait until process `pid`, just started with [`Placement::wrap`],
    /// runs in its scope (at once for [`Placement::Inherit`]). `alive`
    /// tells whether the process still runs.
    pub async fn wait_placed(
        &self,
        replica: &str,
        token: &str,
        pid: u32,
        alive: impl Fn() -> bool,
    ) -> Result<(), ScopeError> {
        if *self == Placement::Inherit {
            return Ok(());
        }
        let unit = unit_name(replica, token);
        let started = Instant::now();
        loop {
            let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            if in_unit(&cgroups, &unit) {
                return Ok(());
            }
            if !alive() {
                return Err(ScopeError::Exited { unit });
            }
            if started.elapsed() >= PLACE_TIMEOUT {
                return Err(ScopeError::Timeout { unit, waited: PLACE_TIMEOUT });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Placement {
    /// Move process `pid` of replica `replica` (record token `token`),
    /// adopted from an earlier agent, into a scope of its own when it still
    /// shares the agent's cgroup (an agent started without scopes put it
    /// there). `Ok(true)` when it was moved, `Ok(false)` when there was
    /// nothing to do. Asks systemd directly (`StartTransientUnit` with the
    /// pid, through `busctl`, which ships with `systemd-run`), since
    /// `systemd-run --scope` only places itself; then waits until
    /// `/proc/<pid>/cgroup` shows the scope. busctl goes through the system
    /// bus (dbus-daemon): systemd's private socket refuses busctl's
    /// `Hello`. Without a bus the move fails and the caller logs it; the
    /// process runs on where it is (`KillMode=process` spares it).
    pub fn move_adopted(&self, replica: &str, token: &str, pid: u32) -> Result<bool, ScopeError> {
        let Placement::SystemdScope { systemd_run } = self else { return Ok(false) };
        let ours = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let theirs = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if ours.is_empty() || ours != theirs {
            return Ok(false);
        }
        let unit = unit_name(replica, token);
        let failed = |message: String| ScopeError::Move { unit: unit.clone(), pid, message };
        let out = std::process::Command::new(systemd_run.with_file_name("busctl"))
            .args(move_call(&unit, replica, pid))
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| failed(format!("running busctl: {e}")))?;
        if !out.status.success() {
            return Err(failed(String::from_utf8_lossy(&out.stderr).trim().to_string()));
        }
        let started = Instant::now();
        while started.elapsed() < PLACE_TIMEOUT {
            let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            if in_unit(&cgroups, &unit) {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Err(failed(format!("not in the scope after {PLACE_TIMEOUT:?}")))
    }
}

/// busctl's arguments for `StartTransientUnit(unit, "fail", [Slice,
/// Description, PIDs], [])`.
fn move_call(unit: &str, replica: &str, pid: u32) -> Vec<String> {
    [
        "call",
        "org.freedesktop.systemd1",
        "/org/freedesktop/systemd1",
        "org.freedesktop.systemd1.Manager",
        "StartTransientUnit",
        "ssa(sv)a(sa(sv))",
        unit,
        "fail",
        "3",
        "Slice",
        "s",
        SLICE,
        "Description",
        "s",
        &format!("bluegreen replica {replica}"),
        "PIDs",
        "au",
        "1",
        &pid.to_string(),
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `systemd-run` on `PATH`, else in `/usr/bin` or `/bin`.
fn find_systemd_run() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/bin")])
        .map(|dir| dir.join("systemd-run"))
        .find(|p| p.is_file())
}

/// The scope unit of replica `replica` whose record carries `token`:
/// `<replica>-<first 8 characters of the token>.scope`, escaped the way
/// systemd escapes unit names. The token part keeps a replacement (same
/// replica name) from colliding with a scope that is still being torn
/// down.
pub fn unit_name(replica: &str, token: &str) -> String {
    let short: String = token.chars().take(8).collect();
    let mut name = String::with_capacity(replica.len() + 16);
    for (i, b) in replica.bytes().enumerate() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b':' | b'_' | b'-' => name.push(b as char),
            b'.' if i > 0 => name.push('.'),
            _ => name.push_str(&format!("\\x{b:02x}")),
        }
    }
    if !short.is_empty() {
        name.push('-');
        name.extend(short.chars().filter(char::is_ascii_alphanumeric));
    }
    name.push_str(".scope");
    name
}

/// Whether a `/proc/<pid>/cgroup` text puts the process in `unit`, on any
/// hierarchy (v2 `0::/...`, or v1's `name=systemd`).
pub fn in_unit(cgroups: &str, unit: &str) -> bool {
    cgroups.lines().filter_map(|l| l.splitn(3, ':').nth(2)).any(|path| path.rsplit('/').next() == Some(unit))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrapped() -> Placement {
        Placement::SystemdScope { systemd_run: PathBuf::from("/usr/bin/systemd-run") }
    }

    #[test]
    fn no_setting_or_none_keeps_the_agents_cgroup() {
        let never = || -> Option<PathBuf> { panic!("systemd-run looked up") };
        assert_eq!(
            Placement::from_setting(None, Path::new("/nonexistent"), never).unwrap(),
            Placement::Inherit
        );
        assert_eq!(
            Placement::from_setting(Some("none"), Path::new("/nonexistent"), never).unwrap(),
            Placement::Inherit
        );
        let launch = Placement::Inherit.wrap("bg-web-blue-1", "ab", &["/bin/app".into()], Some((7, 8)));
        assert_eq!(launch, Launch { argv: vec!["/bin/app".into()], owner: Some((7, 8)) });
    }

    #[test]
    fn systemd_needs_a_booted_systemd_and_systemd_run() {
        let dir = tempfile::tempdir().unwrap();
        let found = || Some(PathBuf::from("/usr/bin/systemd-run"));
        assert!(matches!(
            Placement::from_setting(Some("systemd"), &dir.path().join("missing"), found),
            Err(ScopeError::NoSystemd)
        ));
        assert!(matches!(
            Placement::from_setting(Some("systemd"), dir.path(), || None),
            Err(ScopeError::NoSystemdRun)
        ));
        assert_eq!(Placement::from_setting(Some("systemd"), dir.path(), found).unwrap(), wrapped());
        let err = Placement::from_setting(Some("yes"), dir.path(), found).unwrap_err();
        assert!(err.to_string().contains("expected"), "{err}");
    }

    #[test]
    fn a_wrapped_command_runs_in_its_own_scope_of_the_bluegreen_slice() {
        let launch =
            wrapped().wrap("bg-web-blue-1", "0123456789abcdef", &["/bin/app".into(), "--x".into()], None);
        assert_eq!(launch.owner, None);
        let as_user = wrapped().wrap("bg-web-blue-1", "0123456789abcdef", &["/bin/app".into()], Some((7, 8)));
        assert_eq!(as_user.owner, None, "systemd-run switches the user, not the spawner");
        assert!(as_user.argv.ends_with(&[
            "--uid=7".into(),
            "--gid=8".into(),
            "--".into(),
            "/bin/app".into()
        ]));
        assert_eq!(
            launch.argv,
            [
                "/usr/bin/systemd-run",
                "--scope",
                "--quiet",
                "--collect",
                "--unit=bg-web-blue-1-01234567.scope",
                "--slice=bluegreen.slice",
                "--description=bluegreen replica bg-web-blue-1",
                "--",
                "/bin/app",
                "--x",
            ]
        );
    }

    #[test]
    fn unit_names_are_escaped_like_systemd_does() {
        assert_eq!(unit_name("bg-web-blue-1", "ffff0000aaaa"), "bg-web-blue-1-ffff0000.scope");
        assert_eq!(unit_name("bg-a b/c-green-2", "12"), "bg-a\\x20b\\x2fc-green-2-12.scope");
        assert_eq!(unit_name(".x", ""), "\\x2ex.scope");
    }

    #[test]
    fn cgroup_files_of_both_hierarchies_are_understood() {
        let v1 = "9:name=systemd:/payload/bluegreen.slice/bg-web-blue-1-01234567.scope\n8:pids:/\n0::/payload/bluegreen.slice/bg-web-blue-1-01234567.scope\n";
        assert!(in_unit(v1, "bg-web-blue-1-01234567.scope"));
        let v2 = "0::/system.slice/bg-agent.service\n";
        assert!(!in_unit(v2, "bg-web-blue-1-01234567.scope"));
        assert!(in_unit(v2, "bg-agent.service"));
        assert!(!in_unit("", "x.scope"));
    }

    #[test]
    fn moving_an_adopted_process_is_one_start_transient_unit_call() {
        let call = move_call("bg-web-blue-1-ab.scope", "bg-web-blue-1", 42);
        assert_eq!(call[4], "StartTransientUnit");
        assert_eq!(call[5], "ssa(sv)a(sa(sv))");
        assert_eq!(
            &call[6..],
            [
                "bg-web-blue-1-ab.scope",
                "fail",
                "3",
                "Slice",
                "s",
                "bluegreen.slice",
                "Description",
                "s",
                "bluegreen replica bg-web-blue-1",
                "PIDs",
                "au",
                "1",
                "42",
                "0"
            ]
        );
        // A process in another cgroup than ours (here: none we can read,
        // or no systemd at all) is left where it is.
        assert!(!Placement::Inherit.move_adopted("bg-web-blue-1", "ab", std::process::id()).unwrap());
        assert!(!wrapped().move_adopted("bg-web-blue-1", "ab", u32::MAX).unwrap());
    }

    #[tokio::test]
    async fn a_process_that_never_reaches_its_scope_is_reported() {
        let me = std::process::id();
        // This test process is in no such scope, and "exits" at once.
        let err = wrapped().wait_placed("bg-web-blue-1", "abc", me, || false).await.unwrap_err();
        assert!(matches!(err, ScopeError::Exited { ref unit } if unit == "bg-web-blue-1-abc.scope"), "{err}");
        // Placement::Inherit never waits.
        Placement::Inherit.wait_placed("bg-web-blue-1", "abc", me, || false).await.unwrap();
    }
}
