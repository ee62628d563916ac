//! Swarm secrets (the spec's `secrets`) and configs (its `files`). Each is
//! named after its service and content, `bg-<service>-<sha256 prefix>`, so
//! a revision's tasks always mount exactly the content its deploy read,
//! and creating one that exists is a no-op. They are removed with the last
//! service that uses them.

use super::service::ObjectRef;
use super::SwarmRuntime;
use crate::api::{FileRef, Spec, SECRETS_DIR};
use crate::runtime::{docker::is_status, labels, RuntimeError};
use base64::Engine;
use bollard::models::{ConfigSpec, SecretSpec};
use bollard::query_parameters::{ListConfigsOptions, ListSecretsOptions};
use std::collections::HashMap;

/// Secret or config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Secret,
    Config,
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Kind::Secret => "secret",
            Kind::Config => "config",
        }
    }
}

/// `bg-<service>-<first 24 hex digits of the sha256>`: Swarm names hold at
/// most 64 characters.
fn object_name(service: &str, sha: &str) -> String {
    format!("bg-{service}-{}", &sha[..sha.len().min(24)])
}

impl SwarmRuntime {
    /// Create (or find) the secrets and configs of `spec`.
    pub(super) async fn objects(
        &self,
        service: &str,
        spec: &Spec,
    ) -> Result<(Vec<ObjectRef>, Vec<ObjectRef>), RuntimeError> {
        let mut secrets = Vec::new();
        for (name, f) in &spec.secrets {
            let target = name.clone();
            secrets.push(self.object(Kind::Secret, service, f, target).await?);
        }
        let mut configs = Vec::new();
        for (path, f) in &spec.files {
            configs.push(self.object(Kind::Config, service, f, path.clone()).await?);
        }
        debug_assert!(spec.secrets.keys().all(|k| !k.contains('/')), "secrets land in {SECRETS_DIR}");
        Ok((secrets, configs))
    }

    async fn object(
        &self,
        kind: Kind,
        service: &str,
        f: &FileRef,
        target: String,
    ) -> Result<ObjectRef, RuntimeError> {
        let content = self.docker.sources().content(&f.source, f.sha256.as_deref())?;
        let sha = crate::runtime::sources::sha256_hex(&content);
        let name = object_name(service, &sha);
        let docker = self.docker.client().await?;
        let object_labels = HashMap::from([
            (labels::MANAGED.to_string(), "true".to_string()),
            (labels::SERVICE.to_string(), service.to_string()),
        ]);
        let data = base64::engine::general_purpose::STANDARD.encode(content.as_slice());
        // Two replicas of a color start at once and need the same objects:
        // the one whose create lost the race (409) takes the other's.
        for _ in 0..2 {
            if let Some(id) = self.find_object(kind, &name).await? {
                return Ok(ObjectRef { id, name, target, mode: f.mode.0 });
            }
            let created = match kind {
                Kind::Secret => {
                    let spec = SecretSpec {
                        name: Some(name.clone()),
                        labels: Some(object_labels.clone()),
                        data: Some(data.clone()),
                        ..Default::default()
                    };
                    docker.create_secret(spec).await
                }
                Kind::Config => {
                    let spec = ConfigSpec {
                        name: Some(name.clone()),
                        labels: Some(object_labels.clone()),
                        data: Some(data.clone()),
                        ..Default::default()
                    };
                    docker.create_config(spec).await
                }
            };
            match created {
                Ok(created) => return Ok(ObjectRef { id: created.id, name, target, mode: f.mode.0 }),
                Err(e) if is_status(&e, 409) => continue,
                Err(e) => return Err(self.docker.err(&format!("creating {} {name}", kind.noun()), e)),
            }
        }
        Err(RuntimeError::Docker {
            message: format!("{} {name} was created and removed meanwhile; try again", kind.noun()),
            source: None,
        })
    }

    /// The id of the secret or config named `name`, if there is one.
    async fn find_object(&self, kind: Kind, name: &str) -> Result<Option<String>, RuntimeError> {
        let docker = self.docker.client().await?;
        let filters = Some(HashMap::from([("name".to_string(), vec![name.to_string()])]));
        // The name filter matches prefixes: only the exact name counts.
        Ok(match kind {
            Kind::Secret => docker
                .list_secrets(Some(ListSecretsOptions { filters }))
                .await
                .map_err(|e| self.docker.err("listing secrets", e))?
                .into_iter()
                .find(|s| s.spec.as_ref().and_then(|s| s.name.as_deref()) == Some(name))
                .and_then(|s| s.id),
            Kind::Config => docker
                .list_configs(Some(ListConfigsOptions { filters }))
                .await
                .map_err(|e| self.docker.err("listing configs", e))?
                .into_iter()
                .find(|c| c.spec.as_ref().and_then(|s| s.name.as_deref()) == Some(name))
                .and_then(|c| c.id),
        })
    }

    /// Remove the secrets and configs of `service` that no service uses
    /// any more; the engine refuses to remove one in use, which is fine.
    pub(super) async fn prune_objects(&self, service: &str) -> Result<(), RuntimeError> {
        let docker = self.docker.client().await?;
        let filters = Some(HashMap::from([(
            "label".to_string(),
            vec![format!("{}=true", labels::MANAGED), format!("{}={service}", labels::SERVICE)],
        )]));
        let secrets = docker
            .list_secrets(Some(ListSecretsOptions { filters: filters.clone() }))
            .await
            .map_err(|e| self.docker.err("listing secrets", e))?;
        for id in secrets.into_iter().filter_map(|s| s.id) {
            match docker.delete_secret(&id).await {
                Err(e) if !is_status(&e, 404) && !is_status(&e, 400) => {
                    tracing::debug!(secret = %id, error = %e, "secret kept (in use?)");
                }
                _ => {}
            }
        }
        let configs = docker
            .list_configs(Some(ListConfigsOptions { filters }))
            .await
            .map_err(|e| self.docker.err("listing configs", e))?;
        for id in configs.into_iter().filter_map(|c| c.id) {
            match docker.delete_config(&id).await {
                Err(e) if !is_status(&e, 404) && !is_status(&e, 400) => {
                    tracing::debug!(config = %id, error = %e, "config kept (in use?)");
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_swarm_and_follow_the_content() {
        let sha = "a".repeat(64);
        let name = object_name("web", &sha);
        assert_eq!(name, format!("bg-web-{}", "a".repeat(24)));
        assert!(name.len() <= 64);
    }
}
