//! Output of managed processes. A process writes straight into
//! `<state_dir>/processes/<name>.log` (stdout and stderr, append mode), not
//! into a pipe to the agent: a pipe would break (EPIPE) when the agent
//! restarts, and processes must outlive the agent. The file is bounded by
//! copy-and-truncate rotation, which is safe because the writer appends.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// A log file is rotated once it is larger than this (8 MiB).
pub(crate) const MAX_LOG_BYTES: u64 = 8 * 1024 * 1024;
/// At most this much of the end of a log is read to find the last lines
/// (1 MiB).
const MAX_TAIL_BYTES: u64 = 1024 * 1024;

/// `<dir>/<name>.log`.
pub(crate) fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.log"))
}

/// Open (create, append) the log for a new process.
pub(crate) fn open(dir: &Path, name: &str) -> std::io::Result<File> {
    std::fs::OpenOptions::new().create(true).append(true).open(path(dir, name))
}

/// The last `lines` lines of the log; empty when there is none.
pub(crate) fn tail(dir: &Path, name: &str, lines: usize) -> std::io::Result<String> {
    let mut f = match File::open(path(dir, name)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let start = len.saturating_sub(MAX_TAIL_BYTES);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    let mut out = all[from..].join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    Ok(out)
}

/// Keep the log bounded: when it passes [`MAX_LOG_BYTES`], copy it to
/// `<name>.log.1` and truncate it. The process keeps appending to the same
/// open file, now from offset 0.
pub(crate) fn rotate_if_large(dir: &Path, name: &str) -> std::io::Result<()> {
    let p = path(dir, name);
    match std::fs::metadata(&p) {
        Ok(m) if m.len() > MAX_LOG_BYTES => {
            std::fs::copy(&p, dir.join(format!("{name}.log.1")))?;
            std::fs::OpenOptions::new().write(true).open(&p)?.set_len(0)
        }
        _ => Ok(()),
    }
}

/// Delete the log and its rotated copy.
pub(crate) fn delete(dir: &Path, name: &str) {
    let _ = std::fs::remove_file(path(dir, name));
    let _ = std::fs::remove_file(dir.join(format!("{name}.log.1")));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn tail_returns_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = open(dir.path(), "x").unwrap();
        for i in 0..10 {
            writeln!(f, "line {i}").unwrap();
        }
        assert_eq!(tail(dir.path(), "x", 2).unwrap(), "line 8\nline 9\n");
        assert_eq!(tail(dir.path(), "missing", 2).unwrap(), "");
    }
}
