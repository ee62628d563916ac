//! What `/proc` says about a pid: whether it is still the process we
//! started (its start time, field 22 of `/proc/<pid>/stat`, guards against
//! pid reuse) and whether it has exited but is not reaped yet (a zombie).
//! Also which processes carry a given environment variable, which is how a
//! process whose pid was never recorded is found again.

use std::path::Path;

/// The fields of `/proc/<pid>/stat` the runtime needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// One-letter state: `R`, `S`, `D`, `Z` (zombie), `X` (dead)...
    pub state: char,
    /// Process group id (field 5).
    pub pgrp: u32,
    /// Start time after boot, in clock ticks (field 22).
    pub start_time: u64,
}

/// Parse a `/proc/<pid>/stat` line. The command name (field 2) is in
/// parentheses and may contain spaces or parentheses, so the fields are
/// counted from the last `)`.
pub(crate) fn parse_stat(line: &str) -> Option<ProcStat> {
    let rest = &line[line.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `fields[0]` is field 3 (state), field 5 is `fields[2]`, field 22 is
    // `fields[19]`.
    let state = fields.first()?.chars().next()?;
    let pgrp = fields.get(2)?.parse().ok()?;
    let start_time = fields.get(19)?.parse().ok()?;
    Some(ProcStat { state, pgrp, start_time })
}

/// Read `/proc/<pid>/stat`; `None` when the pid does not exist.
pub(crate) fn stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")).ok()?;
    parse_stat(&text)
}

/// Whether `pid` runs and is the process that started at `start_time`
/// (zombies count as exited).
pub(crate) fn is_alive(pid: u32, start_time: u64) -> bool {
    match stat(pid) {
        Some(s) => s.start_time == start_time && s.state != 'Z' && s.state != 'X',
        None => false,
    }
}

/// The value of `var` in a NUL-separated `/proc/<pid>/environ` dump.
pub(crate) fn env_value<'a>(environ: &'a [u8], var: &str) -> Option<&'a [u8]> {
    environ
        .split(|b| *b == 0)
        .find_map(|entry| entry.strip_prefix(var.as_bytes()).and_then(|rest| rest.strip_prefix(b"=")))
}

/// Every process (but this one) whose initial environment sets `var`, with
/// its value. Processes of other users are unreadable and skipped, which is
/// fine: the runtime only looks for its own children. The kernel shows the
/// environment block the program was started with: `setenv` and `unsetenv`
/// leave it alone, only a program that overwrites that memory (some do, to
/// change their process title) hides the variable.
pub(crate) fn with_env(var: &str) -> std::io::Result<Vec<(u32, String)>> {
    let me = std::process::id();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        // Gone since the listing, or not ours: either way not a match.
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else { continue };
        if let Some(value) = env_value(&environ, var) {
            out.push((pid, String::from_utf8_lossy(value).into_owned()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_spaces_and_parens() {
        let line =
            "1234 (my (odd) app) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 987654 1000 200";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.state, 'S');
        assert_eq!(s.pgrp, 1234);
        assert_eq!(s.start_time, 987654);
    }

    #[test]
    fn finds_a_variable_in_an_environ_dump() {
        let environ = b"PATH=/bin\0BG_X_TOKEN=no\0BG_X=abc\0EMPTY=\0";
        assert_eq!(env_value(environ, "BG_X"), Some(&b"abc"[..]));
        assert_eq!(env_value(environ, "EMPTY"), Some(&b""[..]));
        assert_eq!(env_value(environ, "BG"), None);
        assert_eq!(env_value(environ, "MISSING"), None);
    }

    #[test]
    fn finds_a_child_by_its_environment() {
        let token = format!("t{}", std::process::id());
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .env("BG_PROCFS_TEST_TOKEN", &token)
            .spawn()
            .unwrap();
        // spawn() returns once exec has begun, which can be a moment before
        // the kernel shows the new environment: look until it does.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let found = loop {
            let found = with_env("BG_PROCFS_TEST_TOKEN").unwrap();
            if found.iter().any(|(pid, _)| *pid == child.id()) || std::time::Instant::now() > deadline {
                break found;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.contains(&(child.id(), token)), "{found:?}");
    }

    #[test]
    fn our_own_process_is_alive() {
        let me = std::process::id();
        let s = stat(me).unwrap();
        assert!(is_alive(me, s.start_time));
        assert!(!is_alive(me, s.start_time + 1));
    }
}
