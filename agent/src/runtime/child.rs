//! Run a short-lived program to its end and hand each line it prints to the
//! caller: host hooks, `pre_stop = { exec }` beside a process replica, and
//! one-off runs (`bgctl run`) on the process runtime. The program gets its
//! own process group, so a cancellation kills everything it started.

use super::Output;
use super::OutputStream;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

/// How a program ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It exited with this code (`128 + signo` when a signal ended it).
    Exited(i64),
    /// `cancel` fired first; its process group was killed.
    Cancelled,
}

/// `code`, or `128 + signo` when killed by a signal (the shell convention,
/// and what Docker reports).
pub fn exit_code(status: ExitStatus) -> i64 {
    match (status.code(), status.signal()) {
        (Some(code), _) => i64::from(code),
        (None, Some(sig)) => 128 + i64::from(sig),
        (None, None) => -1,
    }
}

/// Spawn `cmd` (stdin closed, stdout and stderr piped, its own process
/// group), pass every line it prints to `output`, and wait for its exit or
/// `cancel`. On cancel the whole group gets SIGKILL and is reaped before
/// this returns.
pub async fn run(
    mut cmd: tokio::process::Command,
    output: Output<'_>,
    cancel: &CancellationToken,
) -> std::io::Result<Ended> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let pgid = child.id();
    let (out, err) = (child.stdout.take(), child.stderr.take());
    let mut out = out.map(|o| BufReader::new(o).lines());
    let mut err = err.map(|e| BufReader::new(e).lines());
    let read = async {
        loop {
            tokio::select! {
                l = async { out.as_mut()?.next_line().await.ok().flatten() }, if out.is_some() => match l {
                    Some(line) => output(OutputStream::Stdout, line),
                    None => out = None,
                },
                l = async { err.as_mut()?.next_line().await.ok().flatten() }, if err.is_some() => match l {
                    Some(line) => output(OutputStream::Stderr, line),
                    None => err = None,
                },
                else => break,
            }
        }
    };
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = read => {
            tokio::select! {
                _ = cancel.cancelled() => {}
                status = child.wait() => return status.map(|s| Ended::Exited(exit_code(s))),
            }
        }
    }
    if let Some(pgid) = pgid {
        let _ = killpg(Pid::from_raw(pgid as i32), Signal::SIGKILL);
    }
    let _ = child.wait().await;
    Ok(Ended::Cancelled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn lines_of_both_streams_and_the_exit_code_come_back() {
        let lines = Mutex::new(Vec::new());
        let mut cmd = tokio::process::Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 7"]);
        let ended = run(cmd, &|s, l| lines.lock().unwrap().push((s, l)), &CancellationToken::new()).await;
        assert_eq!(ended.unwrap(), Ended::Exited(7));
        let mut lines = lines.into_inner().unwrap();
        lines.sort();
        assert_eq!(
            lines,
            vec![(OutputStream::Stdout, "out".to_string()), (OutputStream::Stderr, "err".to_string())]
        );
    }

    #[tokio::test]
    async fn a_cancel_kills_the_group_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let mut cmd = tokio::process::Command::new("sh");
        cmd.args(["-c", &format!("sleep 60 & echo $! > {}; wait", pidfile.display())]);
        let cancel = CancellationToken::new();
        let c2 = cancel.clone();
        let p2 = pidfile.clone();
        tokio::spawn(async move {
            while !p2.exists() {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            c2.cancel();
        });
        let started = std::time::Instant::now();
        assert_eq!(run(cmd, &|_, _| {}, &cancel).await.unwrap(), Ended::Cancelled);
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        // The grandchild got SIGKILL with its group; give the kernel a moment
        // to reap it (its parent, sh, is gone, so init does).
        let gone = (0..100).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.is_empty() || stat.split(' ').nth(2) == Some("Z")
        });
        assert!(gone, "the sleep started by the program outlived the cancel");
    }
}
