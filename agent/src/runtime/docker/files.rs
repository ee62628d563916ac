//! Secrets and files into a created container, before it starts: a tar
//! archive uploaded through the engine's archive API, each entry with its
//! mode and, for a numeric `user`, its uid and gid in the header (a named
//! user is resolved by the engine against the image's `/etc/passwd`,
//! `copyUIDGID`). The content goes to the engine's own storage for the
//! container and nowhere else: never into the container's environment, a
//! label or a log.
//!
//! A `read_only` root filesystem refuses uploads, so there each directory
//! that receives a secret or a file is an anonymous volume of the container
//! (created with it, seeded with the image's content at that path, removed
//! with it); the upload lands in those volumes.

use super::DockerRuntime;
use crate::api::Spec;
use crate::runtime::sources::Sources;
use crate::runtime::RuntimeError;
use bollard::query_parameters::UploadToContainerOptions;
use std::collections::BTreeMap;
use std::path::Path;

/// One file to place: where, with which mode, and its bytes.
struct Placed {
    target: String,
    mode: u32,
    content: std::sync::Arc<Vec<u8>>,
}

/// The directories that receive a secret or a file; with `read_only` each
/// becomes an anonymous volume.
pub(super) fn upload_dirs(spec: &Spec) -> Vec<String> {
    let mut dirs: Vec<String> = spec
        .container_files()
        .filter_map(|(target, _)| Path::new(&target).parent().map(|p| p.display().to_string()))
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

/// The archive of `files`, paths relative to `base`.
fn archive(files: &[&Placed], base: &str, uid: u64, gid: u64) -> Result<Vec<u8>, std::io::Error> {
    let mut builder = tar::Builder::new(Vec::new());
    for f in files {
        let relative = Path::new(&f.target).strip_prefix(base).unwrap_or(Path::new(&f.target));
        let mut header = tar::Header::new_gnu();
        header.set_size(f.content.len() as u64);
        header.set_mode(f.mode);
        header.set_uid(uid);
        header.set_gid(gid);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, relative, f.content.as_slice())?;
    }
    builder.into_inner()
}

impl DockerRuntime {
    /// Upload the secrets and files of `spec` into the created container
    /// `id` (named `name` in errors).
    pub(super) async fn place_files(
        &self,
        id: &str,
        name: &str,
        spec: &Spec,
        sources: &Sources,
    ) -> Result<(), RuntimeError> {
        let mut placed = Vec::new();
        for (target, f) in spec.container_files() {
            let content = sources.content(&f.source, f.sha256.as_deref())?;
            placed.push(Placed { target, mode: f.mode.0, content });
        }
        if placed.is_empty() {
            return Ok(());
        }
        let user = spec.user.as_ref();
        let numeric = user.is_none_or(|u| u.uid().is_some() && (u.group.is_none() || u.gid().is_some()));
        let uid = user.and_then(|u| u.uid()).unwrap_or(0);
        // Docker's rule for `--user 1000`: the group is the user's, or 0.
        let gid = user.and_then(|u| u.gid()).unwrap_or(0);
        // Upload per directory on a read-only root (into its volume), else
        // once at the root.
        let mut batches: BTreeMap<String, Vec<&Placed>> = BTreeMap::new();
        for p in &placed {
            let base = if spec.read_only {
                Path::new(&p.target).parent().map_or("/".to_string(), |d| d.display().to_string())
            } else {
                "/".to_string()
            };
            batches.entry(base).or_default().push(p);
        }
        let docker = self.client().await?;
        for (base, files) in batches {
            let body = archive(&files, &base, u64::from(uid), u64::from(gid)).map_err(|source| {
                RuntimeError::Io { context: format!("building the archive of files for {name}"), source }
            })?;
            let options = UploadToContainerOptions {
                path: base.clone(),
                copy_uidgid: (!numeric).then(|| "true".to_string()),
                ..Default::default()
            };
            docker.upload_to_container(id, Some(options), bollard::body_full(body.into())).await.map_err(
                |e| self.err(&format!("placing secrets and files under {base} in container {name}"), e),
            )?;
        }
        Ok(())
    }
}
