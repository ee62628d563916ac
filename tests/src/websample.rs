//! websample for tests: the binary built once per test process, processes
//! started on free loopback ports and stopped on drop, and the
//! `websample:<tag>` images Docker tests need.
//!
//! ```no_run
//! # async fn f() {
//! use bg_tests::websample::Websample;
//! let v2 = Websample::new().version("v2").spawn().await;
//! println!("v2 listens on {}", v2.addr());
//! v2.terminate();
//! # }
//! ```

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a websample may take to listen after it was started.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

fn workspace_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The `websample` binary, built (debug) once per test process.
///
/// Panics with cargo's output when the build fails.
pub fn websample_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let workspace = workspace_dir();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = std::process::Command::new(cargo)
            .args(["build", "-q", "-p", "websample", "--manifest-path"])
            .arg(workspace.join("Cargo.toml"))
            .output()
            .expect("run cargo to build websample");
        assert!(out.status.success(), "building websample failed:\n{}", String::from_utf8_lossy(&out.stderr));
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .map(|p| if p.is_relative() { workspace.join(p) } else { p })
            .unwrap_or_else(|| workspace.join("target"));
        let bin = target.join("debug").join("websample");
        assert!(bin.exists(), "websample was built but {bin:?} is missing");
        bin
    })
    .clone()
}

/// A free port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind 127.0.0.1:0").port()
}

/// A websample process to start.
#[derive(Debug, Clone, Default)]
pub struct Websample {
    version: Option<String>,
    env: Vec<(String, String)>,
}

impl Websample {
    /// websample answering `v1`.
    pub fn new() -> Websample {
        Websample::default()
    }

    /// The version it reports (`VERSION`).
    pub fn version(mut self, version: &str) -> Websample {
        self.version = Some(version.to_owned());
        self
    }

    /// One more environment variable (`UNHEALTHY=1`, `IGNORE_SIGTERM=1`, ...).
    pub fn env(mut self, key: &str, value: &str) -> Websample {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Start it on a free loopback port and wait until it accepts
    /// connections. Panics (with its stderr) if it does not within
    /// [`START_TIMEOUT`].
    pub async fn spawn(self) -> RunningWebsample {
        let bin = websample_bin();
        let version = self.version.clone().unwrap_or_else(|| "v1".into());
        // The port is free now; another process could take it before
        // websample binds it, so a start that fails to bind is retried.
        for _ in 0..3 {
            let port = free_port();
            let mut cmd = Command::new(&bin);
            cmd.env("PORT", port.to_string())
                .env("BIND", "127.0.0.1")
                .env("VERSION", &version)
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            let mut child = cmd.spawn().expect("start websample");
            let lines = Arc::new(Mutex::new(Vec::new()));
            let stdout = child.stdout.take().expect("piped stdout");
            let sink = lines.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            });
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let deadline = tokio::time::Instant::now() + START_TIMEOUT;
            loop {
                if tokio::net::TcpStream::connect(addr).await.is_ok() {
                    return RunningWebsample { child, addr, version, lines };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // Exited: most likely the port was taken; retry.
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "websample did not listen on {addr} within {START_TIMEOUT:?}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let out = child.wait_with_output().await.expect("collect websample output");
            eprintln!("websample on port {port} exited at start: {}", String::from_utf8_lossy(&out.stderr));
        }
        panic!("websample failed to start three times");
    }
}

/// A running websample; killed when dropped.
#[derive(Debug)]
pub struct RunningWebsample {
    child: Child,
    addr: SocketAddr,
    version: String,
    lines: Arc<Mutex<Vec<String>>>,
}

impl RunningWebsample {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The version it reports.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Its stdout so far: lines `websample <epoch-ms> <event>`.
    pub fn log_lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether it logged an event starting with `event` (e.g. `sigterm`).
    pub fn logged(&self, event: &str) -> bool {
        self.log_lines().iter().any(|l| l.splitn(3, ' ').nth(2).is_some_and(|e| e.starts_with(event)))
    }

    /// Send it SIGTERM.
    pub fn terminate(&self) {
        if let Some(pid) = self.child.id() {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
    }

    /// Wait for it to exit, at most `timeout`; returns whether it did.
    pub async fn wait_exit(&mut self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.child.wait()).await.is_ok()
    }
}

impl Drop for RunningWebsample {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Make sure the Docker image `websample:<tag>` exists, building it with
/// `examples/scripts/build-websample-image.sh` when `docker image inspect`
/// does not find it.
pub fn ensure_image(tag: &str) -> Result<(), String> {
    static BUILD: Mutex<()> = Mutex::new(());
    let _one_at_a_time = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let image = format!("websample:{tag}");
    let inspect = std::process::Command::new("docker")
        .args(["image", "inspect", &image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run docker ({e}); is Docker installed?"))?;
    if inspect.success() {
        return Ok(());
    }
    let script = workspace_dir().join("examples/scripts/build-websample-image.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg(tag)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("building {image} failed:\n{}", String::from_utf8_lossy(&out.stderr)))
    }
}
