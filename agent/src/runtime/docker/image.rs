//! Images: present or pulled as the pull policy says, with the registry's
//! credentials ([`super::auth`]) and the pull's progress reported line by
//! line; after that the repo digest the image resolved to, which the
//! revision records and every one of its replicas runs.

use super::auth::{credentials_for, registry_of};
use super::{is_status, DockerRuntime, PULL_TIMEOUT};
use crate::api::repository_of;
use crate::runtime::{Progress, PullPolicy, RuntimeError};
use bollard::query_parameters::CreateImageOptions;
use futures_util::StreamExt;
use std::time::{Duration, Instant};

/// Least time between two byte-progress lines of one pull (download and
/// extraction), so a large image does not flood the event stream.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

impl DockerRuntime {
    /// Make sure `image` is present, following `pull`; a pull reports its
    /// progress through `progress`.
    pub(super) async fn ensure_image(
        &self,
        image: &str,
        pull: PullPolicy,
        progress: Option<Progress<'_>>,
    ) -> Result<(), RuntimeError> {
        let present = self.image_present(image).await?;
        match (pull, present) {
            (PullPolicy::Never, false) => Err(RuntimeError::Image {
                image: image.to_string(),
                message: "is not present locally and pull = \"never\"; build or load it first".into(),
            }),
            (PullPolicy::Never, true) | (PullPolicy::Missing, true) => Ok(()),
            (PullPolicy::Always, _) | (PullPolicy::Missing, false) => self.pull(image, progress).await,
        }
    }

    async fn image_present(&self, image: &str) -> Result<bool, RuntimeError> {
        let docker = self.client().await?;
        match docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) if is_status(&e, 404) => Ok(false),
            Err(e) => Err(self.err(&format!("inspecting image {image}"), e)),
        }
    }

    async fn pull(&self, image: &str, progress: Option<Progress<'_>>) -> Result<(), RuntimeError> {
        let registry = registry_of(image);
        let credentials = credentials_for(self.auth_file.as_deref(), &registry)
            .await
            .map_err(|e| RuntimeError::Image { image: image.to_string(), message: e.to_string() })?;
        let login = match credentials.as_ref().and_then(|c| c.username.as_deref()) {
            Some(user) => format!(" as {user:?}"),
            None if credentials.is_some() => " with a token".to_string(),
            None => " without credentials".to_string(),
        };
        // A pull streams for as long as the image takes to arrive.
        let docker = self.client().await?.clone().with_timeout(PULL_TIMEOUT);
        tracing::info!(%image, %registry, "pulling image{login}");
        let say = |line: String| {
            if let Some(p) = progress {
                p(line);
            }
        };
        say(format!("pulling {image} from {registry}{login}"));
        let options = CreateImageOptions { from_image: Some(image.to_string()), ..Default::default() };
        let mut stream = docker.create_image(Some(options), None, credentials);
        let mut last_bytes_line = Instant::now() - PROGRESS_EVERY;
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    let status = info.status.unwrap_or_default();
                    let id = info.id.map(|i| format!("{i}: ")).unwrap_or_default();
                    let bytes_line = matches!(status.as_str(), "Downloading" | "Extracting");
                    if bytes_line {
                        if last_bytes_line.elapsed() < PROGRESS_EVERY {
                            continue;
                        }
                        last_bytes_line = Instant::now();
                    }
                    let detail = match info.progress_detail.filter(|_| bytes_line) {
                        Some(d) => match (d.current, d.total) {
                            (Some(c), Some(t)) if t > 0 => {
                                format!(" {:.1}/{:.1} MB", c as f64 / 1e6, t as f64 / 1e6)
                            }
                            _ => String::new(),
                        },
                        None => String::new(),
                    };
                    if !status.is_empty() {
                        say(format!("pull {image}: {id}{status}{detail}"));
                    }
                }
                Err(e) => {
                    let why = match e {
                        bollard::errors::Error::DockerResponseServerError { message, .. } => message,
                        bollard::errors::Error::DockerStreamError { error } => error,
                        other => other.to_string(),
                    };
                    return Err(RuntimeError::Image {
                        image: image.to_string(),
                        message: format!(
                            "pull from registry {registry}{login} failed: {}; check the name, the registry's credentials in the auth_file, and that the registry is reachable",
                            why.trim()
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// The repo digest (`sha256:...`) of the local `image` for its own
    /// repository; `None` for an image that was built here and never
    /// pushed or pulled.
    pub(super) async fn repo_digest(&self, image: &str) -> Result<Option<String>, RuntimeError> {
        if let Some((_, digest)) = image.split_once('@') {
            return Ok(Some(digest.to_string()));
        }
        let docker = self.client().await?;
        let inspected = docker
            .inspect_image(image)
            .await
            .map_err(|e| self.err(&format!("inspecting image {image}"), e))?;
        let repository = repository_of(image);
        Ok(inspected.repo_digests.unwrap_or_default().iter().find_map(|d| {
            let (repo, digest) = d.split_once('@')?;
            (repo == repository
                || repo == format!("docker.io/{repository}")
                || repo == format!("docker.io/library/{repository}"))
            .then(|| digest.to_string())
        }))
    }
}
