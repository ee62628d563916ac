//! A Debian bookworm container booted with `systemd-nspawn -b`: real
//! systemd as PID 1, for tests of the units and the package as users run
//! them. The root filesystem comes from `tests/scripts/nspawn-rootfs.sh`
//! (debootstrap, cached); each [`Container`] boots a private copy of it.
//!
//! The container shares the host's network (no `--private-network`), so
//! its `127.0.0.1` listeners are reachable from the test. Commands run
//! inside through `nsenter` into its mount, UTS, IPC and PID namespaces
//! (there is no machined here to ask). It runs without registering with a
//! host systemd (`--register=no --keep-unit`), which this sandbox lacks.
//!
//! Gated like Docker: with `BG_DOCKER_TESTS=1` missing tools or a boot
//! failure fail the test; otherwise [`available`] says why and the test
//! returns.

use crate::bins::workspace_root;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The programs the host needs.
const TOOLS: &[&str] = &["debootstrap", "systemd-nspawn", "nsenter", "cargo-deb", "flock"];

/// Whether container tests can run here: root and every tool in
/// [`TOOLS`]. Panics when they are required (`BG_DOCKER_TESTS=1`) and
/// something is missing.
pub fn available(test: &str) -> bool {
    let required = std::env::var("BG_DOCKER_TESTS").is_ok_and(|v| v == "1");
    let mut missing: Vec<String> = TOOLS.iter().filter(|t| !on_path(t)).map(|t| t.to_string()).collect();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root".into());
    }
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "missing {} (apt-get install debootstrap systemd-container util-linux; cargo install cargo-deb --locked)",
        missing.join(", ")
    );
    assert!(!required, "{test}: BG_DOCKER_TESTS=1 but the container test cannot run: {why}");
    eprintln!("{test}: not run: {why}, and BG_DOCKER_TESTS is not 1");
    false
}

fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|d| d.join(program).is_file())
}

/// The cached root filesystem (built on first use, a minute or two).
pub fn rootfs() -> PathBuf {
    let out = Command::new(workspace_root().join("tests/scripts/nspawn-rootfs.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("running tests/scripts/nspawn-rootfs.sh");
    assert!(out.status.success(), "tests/scripts/nspawn-rootfs.sh failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// The bluegreen `.deb`, built by `packaging/build-deb.sh` (debug binaries
/// unless `BG_DEB_PROFILE=release`), or the one `BG_TEST_DEB` names.
pub fn deb() -> PathBuf {
    if let Some(path) = std::env::var_os("BG_TEST_DEB") {
        return PathBuf::from(path);
    }
    let profile = std::env::var("BG_DEB_PROFILE").unwrap_or_else(|_| "dev".into());
    let out = Command::new(workspace_root().join("packaging/build-deb.sh"))
        .env("BG_DEB_PROFILE", profile)
        .stderr(Stdio::inherit())
        .output()
        .expect("running packaging/build-deb.sh");
    assert!(out.status.success(), "packaging/build-deb.sh failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// A booted container. Dropping it powers it off (and kills what is left).
pub struct Container {
    nspawn: Child,
    leader: u32,
    root: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Container {
    /// Copy `rootfs`, let `prepare` write into the copy, then boot it and
    /// wait until systemd reports the system running.
    pub fn boot(rootfs: &Path, prepare: impl FnOnce(&Path)) -> Container {
        let dir = tempfile::Builder::new().prefix("bg-nspawn-").tempdir_in("/var/tmp").unwrap();
        let root = dir.path().join("root");
        let status = Command::new("cp").arg("-a").arg(rootfs).arg(&root).status().unwrap();
        assert!(status.success(), "copying {} failed", rootfs.display());
        prepare(&root);
        let log = dir.path().join("console.log");
        let nspawn = Command::new("systemd-nspawn")
            .args(["--quiet", "--boot", "--register=no", "--keep-unit", "--console=pipe"])
            .arg(format!("--machine=bg-test-{}", std::process::id()))
            .arg("--directory")
            .arg(&root)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("nspawn.err")).unwrap())
            .spawn()
            .expect("starting systemd-nspawn");
        let mut container = Container { leader: 0, nspawn, root, log, _dir: dir };
        let started = Instant::now();
        container.leader = loop {
            if let Some(pid) = find_init(container.nspawn.id()) {
                break pid;
            }
            if let Ok(Some(status)) = container.nspawn.try_wait() {
                panic!("systemd-nspawn exited ({status}) before booting:\n{}", container.diagnostics());
            }
            assert!(started.elapsed() < Duration::from_secs(30), "no init in the container after 30 s");
            std::thread::sleep(Duration::from_millis(50));
        };
        // `is-system-running --wait` waits for the boot to finish; it may
        // run before systemd listens on its private socket.
        loop {
            let out = container.sh("systemctl is-system-running --wait");
            let state = out.trim();
            if state == "running" {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "the container did not boot to `running` ({state}):\n{}\n{}",
                container
                    .sh("systemctl --failed --no-pager; journalctl -b -p warning --no-pager | tail -n 50"),
                container.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        container
    }

    /// The container's root directory, seen from the host.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Run `script` with `sh -c` inside the container (clean environment,
    /// at most 180 s); its stdout and stderr, whatever its exit status.
    pub fn sh(&self, script: &str) -> String {
        let out = self.exec(script);
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        text
    }

    /// [`Container::sh`], panicking when the script fails.
    pub fn ok(&self, script: &str) -> String {
        let out = self.exec(script);
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "in the container, `{script}` failed ({}):\n{text}", out.status);
        text
    }

    fn exec(&self, script: &str) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.leader.to_string(), "-m", "-u", "-i", "-p", "--"])
            .args(["/usr/bin/env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
            .args([
                "LANG=C.UTF-8",
                "SYSTEMD_PAGER=",
                "TERM=dumb",
                "/usr/bin/timeout",
                "180",
                "/bin/sh",
                "-c",
                script,
            ])
            .stdin(Stdio::null())
            .output()
            .expect("running nsenter")
    }

    /// The console output and nspawn's own messages, for failure messages.
    pub fn diagnostics(&self) -> String {
        let console = std::fs::read_to_string(&self.log).unwrap_or_default();
        let err = std::fs::read_to_string(self.log.with_file_name("nspawn.err")).unwrap_or_default();
        let tail: Vec<&str> = console.lines().rev().take(40).collect();
        format!(
            "nspawn stderr:\n{err}\nconsole (last lines):\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // systemd-nspawn turns SIGTERM into an orderly poweroff of the
        // container; killing its init takes the whole PID namespace down.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.nspawn.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.leader as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}

/// The container's init: the first process called `systemd` below
/// `nspawn` in the process tree.
fn find_init(nspawn: u32) -> Option<u32> {
    let mut queue = vec![nspawn];
    while let Some(pid) = queue.pop() {
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        for child in children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()) {
            let comm = std::fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
            if comm.trim() == "systemd" {
                return Some(child);
            }
            queue.push(child);
        }
    }
    None
}
