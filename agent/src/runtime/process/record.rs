//! The record the process runtime keeps per replica under
//! `<state_dir>/processes/<name>.json`, written atomically (temp file,
//! fsync, rename, fsync of the directory) so a crash never leaves half a
//! record. After an agent restart these records are how running processes
//! are adopted.

use crate::api::Color;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

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
    /// Process id.
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
}

impl Record {
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
