//! The record the process runtime keeps per replica under
//! `<state_dir>/processes/<name>.json`, written atomically (temp file,
//! fsync, rename, fsync of the directory) so a crash never leaves half a
//! record. After an agent restart these records are how running processes
//! are adopted.
//!
//! A record is first saved *provisional* (pid 0), before the process is
//! spawned, with a random token the process gets in its environment
//! ([`TOKEN_ENV`]); the full record replaces it once the pid is known. An
//! agent killed in between leaves a provisional record, and the next one
//! finds the process by its token, or learns that it never started.

use crate::api::Color;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The environment variable that carries a process's [`Record::token`].
pub(crate) const TOKEN_ENV: &str = "BG_PROCESS_TOKEN";

/// One managed process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    /// `bg-<service>-<color>-<replica>`.
    pub name: String,
    /// Service name.
    pub service: String,
    /// Color.
    pub color: Color,
    /// Revision of the spec it runs.
    pub revision: u64,
    /// Replica number.
    pub replica: u32,
    /// Process id; 0 while the record is provisional (saved before the
    /// spawn, see [`Record::is_provisional`]).
    pub pid: u32,
    /// Process group id (equal to `pid`: it leads its own group).
    pub pgid: u32,
    /// Loopback port it was told to listen on (`PORT`).
    pub port: u16,
    /// Start time in clock ticks after boot (`/proc/<pid>/stat` field 22),
    /// to tell the process from a later one that reuses its pid.
    pub start_time: u64,
    /// Wall-clock start, milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// The program and its arguments.
    pub command: Vec<String>,
    /// The same labels the docker runtime puts on containers.
    pub labels: BTreeMap<String, String>,
    /// Random, unique to this record, and in the process's environment as
    /// [`TOKEN_ENV`]: how the process is found when its pid was never
    /// recorded. Empty in records written by older agents, which did not
    /// have it.
    #[serde(default)]
    pub token: String,
}

impl Record {
    /// A fresh random token (128 bits, hex).
    pub fn new_token() -> String {
        format!("{:032x}", rand::random::<u128>())
    }

    /// Saved before the spawn, so the pid is not known yet.
    pub fn is_provisional(&self) -> bool {
        self.pid == 0
    }

    /// `<dir>/<name>.json`.
    pub fn path(dir: &Path, name: &str) -> PathBuf {
        dir.join(format!("{name}.json"))
    }

    /// Write atomically to `<dir>/<name>.json`.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let path = Record::path(dir, &self.name);
        let tmp = dir.join(format!(".{}.json.tmp", self.name));
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        // Make the rename itself durable.
        std::fs::File::open(dir)?.sync_all()
    }

    /// Every readable record in `dir`; unreadable ones are skipped with a
    /// warning (a half-written temp file never has the `.json` name).
    pub fn load_all(dir: &Path) -> std::io::Result<Vec<Record>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let is_record = path.extension().is_some_and(|e| e == "json")
                && !path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if !is_record {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Record>(&b).map_err(|e| e.to_string()))
            {
                Ok(r) => out.push(r),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping unreadable process record")
                }
            }
        }
        Ok(out)
    }

    /// Delete `<dir>/<name>.json`; a missing file is fine.
    pub fn delete(dir: &Path, name: &str) -> std::io::Result<()> {
        match std::fs::remove_file(Record::path(dir, name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_from_an_older_agent_loads_without_a_token() {
        let dir = tempfile::tempdir().unwrap();
        let old = r#"{
          "name": "bg-web-blue-1", "service": "web", "color": "blue", "revision": 3,
          "replica": 1, "pid": 4242, "pgid": 4242, "port": 40000, "start_time": 123,
          "started_at_ms": 1700000000000, "command": ["/opt/web"],
          "labels": {"bg.managed": "true"}
        }"#;
        std::fs::write(Record::path(dir.path(), "bg-web-blue-1"), old).unwrap();
        let all = Record::load_all(dir.path()).unwrap();
        assert_eq!(all.len(), 1, "{all:?}");
        assert_eq!((all[0].pid, all[0].token.as_str()), (4242, ""));
        assert!(!all[0].is_provisional());
    }

    #[test]
    fn tokens_are_fresh_and_survive_a_save() {
        let (a, b) = (Record::new_token(), Record::new_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        let dir = tempfile::tempdir().unwrap();
        let record = Record {
            name: "bg-web-green-2".into(),
            service: "web".into(),
            color: Color::Green,
            revision: 1,
            replica: 2,
            pid: 0,
            pgid: 0,
            port: 1,
            start_time: 0,
            started_at_ms: 0,
            command: vec!["x".into()],
            labels: BTreeMap::new(),
            token: a,
        };
        record.save(dir.path()).unwrap();
        assert_eq!(Record::load_all(dir.path()).unwrap(), vec![record]);
    }
}
