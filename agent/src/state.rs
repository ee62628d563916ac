//! Persistence: what the agent must remember across restarts (active color,
//! specs, revisions, weights, replicas, the operation in progress, history),
//! written atomically to `state_dir/state.json`. The previous good copy is
//! kept beside it as `state.prev.json`; a corrupt file stops the agent
//! instead of being guessed at.

use crate::api::{Color, HistoryEntry, OperationKind, ReplicaState, Spec, Weights};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Format version written in every state file.
pub const STATE_VERSION: u32 = 1;
/// History entries kept per service.
pub const HISTORY_LIMIT: usize = 200;

/// Everything persisted, for all services.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistedState {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// Per service.
    pub services: BTreeMap<String, ServiceRecord>,
    /// The highest operation id issued so far, across services; ids keep
    /// growing across restarts.
    #[serde(default)]
    pub last_operation: u64,
}

/// One service's persisted state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRecord {
    /// The highest revision issued so far.
    pub revision: u64,
    /// The color at rest.
    pub active: Option<Color>,
    /// The split.
    pub weights: Weights,
    /// Both colors.
    pub colors: BTreeMap<Color, ColorRecord>,
    /// The spec a rollback returns to when the old color is gone.
    pub previous: Option<RevisionSpec>,
    /// The operation that was running when this was written.
    pub operation: Option<OperationRecord>,
    /// Past operations, oldest first, at most [`HISTORY_LIMIT`].
    pub history: Vec<HistoryEntry>,
    /// An operation that stopped half-way on purpose and waits for the
    /// operator (`failure_action = "pause"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<PausedRecord>,
    /// `bgctl maintenance`, kept across restarts until `bgctl live`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<MaintenanceRecord>,
}

/// A service in maintenance, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceRecord {
    /// When it began, RFC 3339.
    pub since: String,
    /// The text every request gets.
    pub message: String,
}

/// A paused operation, as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
// One per service at most, written to a file: the size of the rolling
// variant (two full specs) costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum PausedRecord {
    /// A promote whose monitor window failed: traffic is on the active
    /// color and `old` still runs, out of rotation. `promote` finishes it,
    /// `abort` or `rollback` switches back.
    Promote {
        /// The color traffic came from.
        old: Color,
    },
    /// A rolling update stopped after a failed batch. `rolling --resume`
    /// goes on, `abort` brings every replica back to `previous`.
    Rolling {
        /// The revision it rolls out.
        target: RevisionSpec,
        /// The revision it replaces.
        previous: RevisionSpec,
        /// Replicas per batch.
        parallelism: u32,
        /// Pause between batches, milliseconds.
        delay_ms: u64,
        /// Start-first or stop-first.
        order: crate::config::RollingOrder,
        /// What a failed batch does.
        failure_action: crate::config::FailureAction,
        /// Watch after each batch, milliseconds.
        monitor_ms: u64,
        /// Failed batches tolerated, as a fraction.
        max_failure_ratio: f64,
    },
}

/// A spec and the revision it was deployed as.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevisionSpec {
    /// Revision.
    pub revision: u64,
    /// Spec.
    pub spec: Spec,
}

/// One color's persisted state.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColorRecord {
    /// The spec it runs.
    pub spec: Option<RevisionSpec>,
    /// Its replicas.
    pub replicas: Vec<ReplicaRecord>,
    /// Unix seconds until which an out-of-rotation color is kept warm.
    pub warm_until: Option<u64>,
}

/// One replica's persisted state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaRecord {
    /// Replica number in its color.
    pub number: u32,
    /// The runtime's id.
    pub runtime_id: String,
    /// Its name.
    pub name: String,
    /// Its address.
    pub addr: String,
    /// The revision it runs.
    pub revision: u64,
    /// Its spec when it differs from the color's (rolling updates).
    pub spec: Option<Spec>,
    /// Whether it was in rotation.
    pub state: ReplicaState,
}

/// The operation in progress when the state was written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperationRecord {
    /// Its id.
    pub id: u64,
    /// Its kind.
    pub kind: OperationKind,
    /// The revision it works on.
    pub revision: u64,
    /// The color it deploys to or promotes.
    pub target: Option<Color>,
    /// When it started, RFC 3339.
    pub started_at: String,
}

/// Errors reading or writing the state file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The state directory or file could not be read or written.
    #[error("{context} {path}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file exists but is not a state file this agent can trust.
    #[error("state file {path} is corrupt or truncated ({message}); refusing to guess. {hint}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
        /// What the operator can do.
        hint: String,
    },
}

/// Reads and writes the state file of one agent.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    /// A store in `dir`, created with mode 0700 if missing and made 0700
    /// if it exists: the state file holds the services' env, secrets
    /// included, whatever the umask.
    pub fn open(dir: &Path) -> Result<StateStore, StateError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let io = |context: &'static str| {
            let path = dir.to_path_buf();
            move |source| StateError::Io { context, path, source }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io("cannot create state directory"))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("cannot make the state directory private (mode 0700)"))?;
        Ok(StateStore { dir: dir.to_path_buf() })
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The state file.
    pub fn path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// The previous good copy.
    pub fn previous_path(&self) -> PathBuf {
        self.dir.join("state.prev.json")
    }

    /// Read the state; `None` when there is none yet.
    pub fn load(&self) -> Result<Option<PersistedState>, StateError> {
        let path = self.path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Io { context: "cannot read state file", path, source }),
        };
        let corrupt = |message: String| {
            let prev = self.previous_path();
            let hint = if prev.exists() {
                format!(
                    "The previous good copy is {}: check it and copy it over {} to resume from it, \
                     or move {} away to start empty (running replicas are then found by label and removed).",
                    prev.display(),
                    path.display(),
                    path.display()
                )
            } else {
                format!(
                    "No previous copy exists. Move {} away to start empty (running replicas are then found by label and removed).",
                    path.display()
                )
            };
            StateError::Corrupt { path: path.clone(), message, hint }
        };
        let state: PersistedState = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if state.version != STATE_VERSION {
            return Err(corrupt(format!("version {} is not {STATE_VERSION}", state.version)));
        }
        Ok(Some(state))
    }

    /// Write the state atomically: temp file, fsync, keep the current file
    /// as the previous good copy, rename, fsync the directory.
    pub fn save(&self, state: &PersistedState) -> Result<(), StateError> {
        let path = self.path();
        let tmp = self.dir.join("state.json.tmp");
        let io = |context: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| StateError::Io { context, path, source }
        };
        let bytes = serde_json::to_vec_pretty(state).expect("state serializes");
        {
            let mut f = create_private(&tmp).map_err(io("cannot create", &tmp))?;
            f.write_all(&bytes).map_err(io("cannot write", &tmp))?;
            f.sync_all().map_err(io("cannot sync", &tmp))?;
        }
        if path.exists() {
            // Only a file that parses becomes the previous good copy.
            if self.load().is_ok() {
                let prev = self.previous_path();
                std::fs::copy(&path, &prev).map_err(io("cannot keep previous copy as", &prev))?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&prev, std::fs::Permissions::from_mode(0o600))
                    .map_err(io("cannot make private", &prev))?;
            }
        }
        std::fs::rename(&tmp, &path).map_err(io("cannot rename into", &path))?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// Create (or truncate) `path` with mode 0600, whatever the umask.
pub(crate) fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    // An existing file keeps its mode through open(2): set it.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PersistedState {
        let mut s = PersistedState { version: STATE_VERSION, services: BTreeMap::new(), last_operation: 0 };
        s.services.insert(
            "web".into(),
            ServiceRecord {
                revision: 3,
                active: Some(Color::Green),
                weights: Weights::all_to(Color::Green),
                colors: BTreeMap::new(),
                previous: None,
                operation: None,
                history: vec![],
                paused: None,
                maintenance: Some(MaintenanceRecord {
                    since: "2026-12-03T00:00:00Z".into(),
                    message: "back soon".into(),
                }),
            },
        );
        s
    }

    #[test]
    fn save_then_load_round_trips_and_keeps_previous() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.load().unwrap(), None);
        let mut s = sample();
        store.save(&s).unwrap();
        s.services.get_mut("web").unwrap().revision = 4;
        store.save(&s).unwrap();
        assert_eq!(store.load().unwrap().unwrap().services["web"].revision, 4);
        let prev: PersistedState =
            serde_json::from_slice(&std::fs::read(store.previous_path()).unwrap()).unwrap();
        assert_eq!(prev.services["web"].revision, 3);
    }

    #[test]
    fn truncated_file_is_refused_and_previous_copy_survives() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        store.save(&sample()).unwrap();
        store.save(&sample()).unwrap();
        let text = std::fs::read(store.path()).unwrap();
        std::fs::write(store.path(), &text[..text.len() / 2]).unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(err.contains("corrupt or truncated"), "{err}");
        assert!(err.contains("state.prev.json"), "{err}");
        // A save over a corrupt file must not overwrite the good copy.
        let before = std::fs::read(store.previous_path()).unwrap();
        store.save(&sample()).unwrap();
        assert_eq!(std::fs::read(store.previous_path()).unwrap(), before);
    }

    #[test]
    fn state_dir_and_files_are_private_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        std::fs::create_dir(&state_dir).unwrap();
        std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let store = StateStore::open(&state_dir).unwrap();
        store.save(&sample()).unwrap();
        store.save(&sample()).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state_dir), 0o700);
        assert_eq!(mode(&store.path()), 0o600);
        assert_eq!(mode(&store.previous_path()), 0o600);
    }

    #[test]
    fn files_without_last_operation_still_load() {
        let old = r#"{"version": 1, "services": {}}"#;
        let s: PersistedState = serde_json::from_str(old).unwrap();
        assert_eq!(s.last_operation, 0);
    }
}
