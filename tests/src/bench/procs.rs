//! Child processes of the benchmark: pinned to a core with `taskset` when
//! it exists, started until they print (or accept on) their address,
//! killed on drop, and their memory read from `/proc`: the peak since
//! start (`VmHWM`), and the peak while a load runs, sampled.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

/// Whether `program` is found on `PATH`.
pub fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file())
}

/// `program args` pinned to `core` (through `taskset -c`, when present).
pub fn pinned(core: usize, program: &Path) -> Command {
    match on_path("taskset") {
        Some(taskset) => {
            let mut c = Command::new(taskset);
            c.arg("-c").arg(core.to_string()).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// A free port on 127.0.0.1 (bound, read, released).
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr")
}

/// A child process that is killed when dropped.
pub struct Proc {
    /// What it is, for messages.
    pub name: String,
    /// The address it was started for.
    pub addr: SocketAddr,
    child: Child,
    /// Whether its children are part of it (nginx workers: measured with
    /// it, killed with it) or not (bg-agent's replicas, which outlive the
    /// agent and are the upstream, not the proxy).
    owns_children: bool,
}

impl Proc {
    /// Start `cmd` (output to `log`, or discarded) and wait until `addr`
    /// accepts connections, at most 10 s.
    pub fn start(name: &str, mut cmd: Command, addr: SocketAddr, log: Option<&Path>) -> Proc {
        let out = match log {
            Some(p) => Stdio::from(std::fs::File::create(p).expect("create log file")),
            None => Stdio::null(),
        };
        let err = match log {
            Some(p) => Stdio::from(std::fs::OpenOptions::new().append(true).open(p).expect("open log file")),
            None => Stdio::null(),
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let mut proc = Proc { name: name.into(), addr, child, owns_children: true };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = proc.child.try_wait() {
                let log = log.map(|p| std::fs::read_to_string(p).unwrap_or_default()).unwrap_or_default();
                panic!("{name} exited at start ({status}):\n{log}");
            }
            assert!(Instant::now() < deadline, "{name} did not listen on {addr} within 10s");
            std::thread::sleep(Duration::from_millis(10));
        }
        proc
    }

    /// Its children are not part of it: not measured, left running.
    pub fn keep_children(mut self) -> Proc {
        self.owns_children = false;
        self
    }

    /// Its pid (the pinned program itself: `taskset` execs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory in KiB of it and its children (nginx workers)
    /// since they started (start-up included), from `VmHWM`.
    pub fn lifetime_peak_rss_kib(&self) -> u64 {
        self.pids().iter().map(|p| status_kib(*p, "VmHWM:")).sum()
    }

    /// Start sampling the resident memory of it and its children (every
    /// 20 ms, until [`RssWatch::stop`]), for the peak while a load runs.
    pub fn watch_rss(&self) -> RssWatch {
        RssWatch::start(self.pids())
    }

    /// CPU time it and its children used so far, (user, system), in
    /// clock ticks (1/100 s on Linux).
    pub fn cpu_ticks(&self) -> (u64, u64) {
        self.pids().iter().map(|p| cpu_ticks(*p)).fold((0, 0), |a, t| (a.0 + t.0, a.1 + t.1))
    }

    /// It and the children that are part of it.
    fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.pid()];
        if self.owns_children {
            pids.extend(children(self.pid()));
        }
        pids
    }

    /// Send a signal to it.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let kids = if self.owns_children { children(self.pid()) } else { Vec::new() };
        let _ = self.child.kill();
        let _ = self.child.wait();
        for k in kids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(k as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The highest resident memory sampled while a load ran.
pub struct RssWatch {
    stop: std::sync::mpsc::Sender<()>,
    sampler: std::thread::JoinHandle<u64>,
}

impl RssWatch {
    /// Start sampling the sum of `pids`' resident memory every 20 ms.
    pub fn start(pids: Vec<u32>) -> RssWatch {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let sampler = std::thread::spawn(move || {
            let mut peak = 0;
            loop {
                peak = peak.max(pids.iter().map(|p| status_kib(*p, "VmRSS:")).sum::<u64>());
                if stopped.recv_timeout(Duration::from_millis(20)) != Err(RecvTimeoutError::Timeout) {
                    return peak;
                }
            }
        });
        RssWatch { stop, sampler }
    }

    /// Stop sampling (after one last sample); the peak in KiB.
    pub fn stop(self) -> u64 {
        let _ = self.stop.send(());
        self.sampler.join().unwrap_or(0)
    }
}

/// A `KEY: N kB` field of `/proc/PID/status` (0 when gone).
fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn cpu_ticks(pid: u32) -> (u64, u64) {
    super::cpu::process_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default())
}

/// Direct children of `pid` (scanning `/proc/*/stat`).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return vec![] };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            // Fields after the command name: state, ppid, ...
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                .is_some_and(|ppid| ppid == pid)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watch_sees_memory_touched_while_it_runs() {
        let watch = RssWatch::start(vec![std::process::id()]);
        let before = status_kib(std::process::id(), "VmRSS:");
        let mut block = vec![0u8; 64 << 20];
        for page in block.chunks_mut(4096) {
            page[0] = 1;
        }
        std::hint::black_box(&mut block);
        std::thread::sleep(Duration::from_millis(60));
        let peak = watch.stop();
        drop(block);
        assert!(peak >= before + (60 << 10), "peak {peak} KiB, {before} KiB before touching 64 MiB");
    }
}
