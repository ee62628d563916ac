//! Drop the pages start-up left mapped, once the agent serves.
//!
//! Start-up (config, state, recovery, the first health checks, TLS set-up)
//! runs code and reads constants that serving never touches again, and the
//! kernel maps a file's pages in runs around every first touch, so after
//! start the agent's resident set holds most of what start-up read of its
//! own binary and of the shared libraries. [`release_startup_pages`] tells
//! the kernel that none of it is needed (`MADV_DONTNEED`); what serving
//! uses comes back on its next touch, a minor fault from the page cache,
//! and only that stays resident. The pages stay in the page cache: this
//! shrinks the process's resident set, not the host's cache.
//!
//! Only mappings of the agent's executable and of shared libraries, which
//! stay mapped for the life of the process, and only those whose every
//! page is the file's own: private, not writable, and holding no page of
//! the process's own (`Anonymous: 0 kB` in `smaps`). A mapping the loader
//! relocated (`.data.rel.ro`), or where a debugger or a uprobe wrote a
//! breakpoint, holds such pages and is left alone, because dropping them
//! would bring back the file's bytes in place of the process's.
#![allow(unsafe_code)]

use std::io;

/// A mapping that may be released: its address range and resident size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Clean {
    /// First address.
    start: usize,
    /// One past the last address.
    end: usize,
    /// Resident KiB before release.
    rss_kib: u64,
}

/// Release the clean mappings of this process's executable and shared
/// libraries (see the module doc). Returns the KiB that were resident in
/// them.
pub fn release_startup_pages() -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    // The executable's inode (`stat` follows the link even when an upgrade
    // replaced the file on disk).
    let exe = std::fs::metadata("/proc/self/exe")?.ino();
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut released = 0;
    for m in clean_mappings(&smaps, exe) {
        // SAFETY: `m` is a whole mapping of this process (from smaps), of a
        // file, private and not writable, with no anonymous page: every
        // page reads back from the file exactly as it is now, so discarding
        // the page-table entries changes no byte any thread can observe.
        // madvise takes no pointer into Rust-owned memory.
        let rc = unsafe { libc::madvise(m.start as *mut libc::c_void, m.end - m.start, libc::MADV_DONTNEED) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        released += m.rss_kib;
    }
    Ok(released)
}

/// The clean mappings of the executable (inode `exe`) and of shared
/// libraries in `smaps` (the text of `/proc/PID/smaps`).
fn clean_mappings(smaps: &str, exe: u64) -> Vec<Clean> {
    // Each mapping, and whether it may still be released.
    let mut all: Vec<(Clean, bool)> = Vec::new();
    for line in smaps.lines() {
        if let Some(((start, end), eligible)) = header(line, exe) {
            all.push((Clean { start, end, rss_kib: 0 }, eligible));
        } else if let (Some((key, kib)), Some((m, eligible))) = (field(line), all.last_mut()) {
            match key {
                "Rss" => m.rss_kib = kib,
                "Anonymous" if kib > 0 => *eligible = false,
                _ => {}
            }
        }
    }
    all.into_iter().filter_map(|(m, eligible)| eligible.then_some(m)).collect()
}

/// A mapping's header line: its range, and whether it is a private,
/// read-only mapping of the executable (inode `exe`) or of a shared
/// library. `None` for any other line.
fn header(line: &str, exe: u64) -> Option<((usize, usize), bool)> {
    let mut parts = line.split_ascii_whitespace();
    let (start, end) = parts.next()?.split_once('-')?;
    let range = (usize::from_str_radix(start, 16).ok()?, usize::from_str_radix(end, 16).ok()?);
    let perms = parts.next()?.as_bytes();
    let _offset = parts.next()?;
    let _device = parts.next()?;
    let inode: u64 = parts.next()?.parse().ok()?;
    let path = parts.next().unwrap_or("");
    if perms.len() != 4 {
        return None;
    }
    let file_name = path.rsplit('/').next().unwrap_or("");
    let object = inode == exe || file_name.ends_with(".so") || file_name.contains(".so.");
    let eligible = perms[0] == b'r' && perms[1] == b'-' && perms[3] == b'p' && inode != 0 && object;
    Some((range, eligible))
}

/// A `Key:   N kB` line.
fn field(line: &str) -> Option<(&str, u64)> {
    let (key, rest) = line.split_once(':')?;
    let kib = rest.trim().strip_suffix(" kB")?.trim().parse().ok()?;
    Some((key, kib))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
5583a0000000-5583a0100000 r--p 00000000 fd:01 1234                       /usr/bin/bg-agent
Size:               1024 kB
Rss:                 800 kB
Anonymous:             0 kB
VmFlags: rd mr mw me
5583a0100000-5583a0500000 r-xp 00100000 fd:01 1234                       /usr/bin/bg-agent
Size:               4096 kB
Rss:                3000 kB
Anonymous:             0 kB
5583a0500000-5583a0560000 r--p 00500000 fd:01 1234                       /usr/bin/bg-agent
Size:                384 kB
Rss:                 384 kB
Anonymous:           384 kB
5583a0560000-5583a0570000 rw-p 00560000 fd:01 1234                       /usr/bin/bg-agent
Rss:                  64 kB
Anonymous:            64 kB
5583a1000000-5583a1100000 rw-p 00000000 00:00 0                          [heap]
Rss:                 500 kB
Anonymous:           500 kB
7f0000000000-7f0000200000 r-xp 00028000 fd:01 99                         /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                1000 kB
Anonymous:             4 kB
7f0000200000-7f0000210000 r-xp 00000000 00:00 0
Rss:                  64 kB
Anonymous:             0 kB
7f0000300000-7f0000400000 r--p 00000000 fd:01 77                         /usr/lib/locale/locale-archive
Rss:                 100 kB
Anonymous:             0 kB
7f0000500000-7f0000600000 r--p 00000000 fd:01 98                         /usr/lib/x86_64-linux-gnu/libm.so.6
Rss:                 200 kB
Anonymous:             0 kB
7f0000600000-7f0000610000 r--p 00000000 fd:01 97                         /opt/lib/libfoo.so
Rss:                  64 kB
Anonymous:             0 kB
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0                          [vdso]
Rss:                   8 kB
Anonymous:             0 kB
";

    #[test]
    fn picks_clean_read_only_file_mappings() {
        let got = clean_mappings(SMAPS, 1234);
        assert_eq!(
            got,
            vec![
                Clean { start: 0x5583a0000000, end: 0x5583a0100000, rss_kib: 800 },
                Clean { start: 0x5583a0100000, end: 0x5583a0500000, rss_kib: 3000 },
                Clean { start: 0x7f0000500000, end: 0x7f0000600000, rss_kib: 200 },
                Clean { start: 0x7f0000600000, end: 0x7f0000610000, rss_kib: 64 },
            ],
            "relocated, writable, anonymous, breakpointed, vdso and data-file mappings are kept"
        );
        assert_eq!(clean_mappings(SMAPS, 1).len(), 2, "another executable's mappings are kept");
    }

    #[test]
    fn own_process_has_clean_text_and_survives_release() {
        use std::os::unix::fs::MetadataExt;
        let exe = std::fs::metadata("/proc/self/exe").unwrap().ino();
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        assert!(!clean_mappings(&smaps, exe).is_empty(), "the test binary's own code is a clean mapping");
        let released = release_startup_pages().unwrap();
        assert!(released > 0, "something was resident");
        // The code runs on after its pages were dropped.
        let again = std::fs::read_to_string("/proc/self/smaps").unwrap();
        assert!(!clean_mappings(&again, exe).is_empty());
    }
}
