//! Secrets and files of a process replica: written before the spawn into
//! `<base>/<name>.files/secrets` and `.../files` (each mode 0700, owned by
//! the replica's user when the agent runs as root), named to the app by
//! `$BG_SECRETS_DIR` and `$BG_FILES_DIR`. The base is the runtime's own
//! directory under the state dir, except for an agent running as root: its
//! state dir is 0700, which a replica running as another user could not
//! cross, so its base is `/run/bg-agent/replicas/<id of the state dir>`
//! (mode 0711, on the memory-backed `/run`). A file's target path is kept
//! below the files directory (`/etc/app/app.toml` →
//! `$BG_FILES_DIR/etc/app/app.toml`). Removed with the replica's record.

use crate::api::Spec;
use crate::runtime::sources::Sources;
use crate::runtime::RuntimeError;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The environment variable naming a replica's secrets directory.
pub const SECRETS_ENV: &str = "BG_SECRETS_DIR";
/// The environment variable naming a replica's files directory.
pub const FILES_ENV: &str = "BG_FILES_DIR";

/// Where a root agent keeps replica directories.
const ROOT_BASE: &str = "/run/bg-agent/replicas";

/// The base of the replica directories of the runtime whose own directory
/// is `dir` (see the module doc).
pub(super) fn base(dir: &Path) -> PathBuf {
    if !nix::unistd::geteuid().is_root() {
        return dir.to_path_buf();
    }
    let id = crate::runtime::sources::sha256_hex(dir.as_os_str().as_encoded_bytes());
    let base = Path::new(ROOT_BASE).join(&id[..16]);
    let made = std::fs::DirBuilder::new().recursive(true).mode(0o711).create(&base).and_then(|()| {
        for p in [Path::new(ROOT_BASE), base.as_path()] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o711))?;
        }
        Ok(())
    });
    match made {
        Ok(()) => base,
        Err(e) => {
            tracing::warn!(base = %base.display(), error = %e, "cannot use it for replica files; they go under the state dir");
            dir.to_path_buf()
        }
    }
}

/// The per-replica directory.
pub(super) fn root(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.files"))
}

/// Remove a replica's directory; one that is not there is fine.
pub(super) fn delete(dir: &Path, name: &str) {
    let _ = std::fs::remove_dir_all(root(dir, name));
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> RuntimeError {
    move |source| RuntimeError::Io { context, source }
}

/// Make a 0700 directory (and its parents) owned by `owner`.
fn private_dir(path: &Path, owner: Option<(u32, u32)>) -> Result<(), RuntimeError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io(format!("creating {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .map_err(io(format!("setting the mode of {}", path.display())))?;
    chown(path, owner)
}

fn chown(path: &Path, owner: Option<(u32, u32)>) -> Result<(), RuntimeError> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(io(format!("giving {} to uid {uid}", path.display())))?;
    }
    Ok(())
}

/// Write the secrets and files of `spec` for replica `name`; returns the
/// environment that names their directories (empty when there are none).
pub(super) fn write(
    dir: &Path,
    name: &str,
    spec: &Spec,
    sources: &Sources,
    owner: Option<(u32, u32)>,
) -> Result<Vec<(&'static str, String)>, RuntimeError> {
    let mut env = Vec::new();
    if spec.secrets.is_empty() && spec.files.is_empty() {
        return Ok(env);
    }
    let root = root(dir, name);
    delete(dir, name);
    private_dir(&root, owner)?;
    let write_one = |base: &Path, rel: &str, f: &crate::api::FileRef| -> Result<(), RuntimeError> {
        let content = sources.content(&f.source, f.sha256.as_deref())?;
        let path = base.join(rel.trim_start_matches('/'));
        if let Some(parent) = path.parent() {
            if parent != base {
                private_dir(parent, owner)?;
            }
        }
        std::fs::write(&path, content.as_slice()).map_err(io(format!("writing {}", path.display())))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(f.mode.0))
            .map_err(io(format!("setting the mode of {}", path.display())))?;
        chown(&path, owner)
    };
    for (key, var, entries) in [("secrets", SECRETS_ENV, &spec.secrets), ("files", FILES_ENV, &spec.files)] {
        if entries.is_empty() {
            continue;
        }
        let base = root.join(key);
        private_dir(&base, owner)?;
        for (rel, f) in entries {
            write_one(&base, rel, f)?;
        }
        env.push((var, base.display().to_string()));
    }
    Ok(env)
}
