//! Registry credentials, found as the docker CLI finds them: Docker's
//! `config.json` (`[runtime] auth_file`, default `$DOCKER_CONFIG/config.json`,
//! else `~/.docker/config.json`), first `credHelpers[registry]`, then
//! `credsStore`, both through `docker-credential-NAME get`, then the
//! `auths` entry (base64 `auth`, or `username`/`password`, or
//! `identitytoken`). The file is read at each pull, so a `docker login`
//! takes effect without a restart. Credentials are never logged.

use base64::Engine;
use bollard::auth::DockerCredentials;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// The name Docker Hub's credentials are stored under.
const HUB_KEY: &str = "https://index.docker.io/v1/";
/// The longest a credential helper may take.
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// Why credentials could not be found.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The auth file exists but cannot be read or parsed.
    #[error("auth file {path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A credential helper failed.
    #[error("credential helper docker-credential-{helper} for {registry}: {message}")]
    Helper {
        /// The helper's name.
        helper: String,
        /// The registry asked for.
        registry: String,
        /// What went wrong.
        message: String,
    },
}

/// `config.json`, the parts that hold credentials.
#[derive(Debug, Default, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// What `docker-credential-NAME get` prints.
#[derive(Debug, Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

/// The registry host of `image`: its first path component when that looks
/// like a host (a dot, a port, or `localhost`), else Docker Hub.
pub fn registry_of(image: &str) -> String {
    let name = crate::api::repository_of(image);
    match name.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first.to_string(),
        _ => "docker.io".to_string(),
    }
}

/// The default auth file: `$DOCKER_CONFIG/config.json`, else
/// `~/.docker/config.json`.
pub fn default_auth_file() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(Path::new(&dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker/config.json"))
}

/// A config key (`https://host:5000/v1/`, `host:5000`) as a bare host.
fn key_host(key: &str) -> &str {
    let key = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

fn is_hub(host: &str) -> bool {
    matches!(host, "docker.io" | "index.docker.io" | "registry-1.docker.io")
}

/// Credentials for `registry` from `auth_file` (the default one when
/// `None`); `Ok(None)` when there are none, or no file.
pub async fn credentials_for(
    auth_file: Option<&Path>,
    registry: &str,
) -> Result<Option<DockerCredentials>, AuthError> {
    let Some(path) = auth_file.map(Path::to_path_buf).or_else(default_auth_file) else {
        return Ok(None);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        // The default file need not exist; an explicit one must.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && auth_file.is_none() => return Ok(None),
        Err(e) => return Err(AuthError::File { path, message: format!("cannot be read: {e}") }),
    };
    let config: ConfigFile = serde_json::from_str(&text).map_err(|e| AuthError::File {
        path: path.clone(),
        message: format!("is not Docker's config.json format: {e}"),
    })?;
    let server = if is_hub(registry) { HUB_KEY.to_string() } else { registry.to_string() };
    let helper = config
        .cred_helpers
        .iter()
        .find(|(k, _)| key_host(k) == registry || (is_hub(registry) && is_hub(key_host(k))))
        .map(|(_, v)| v.clone())
        .or(config.creds_store.clone());
    if let Some(helper) = helper {
        let program = format!("docker-credential-{helper}");
        if let Some(creds) = from_helper(&program, &helper, registry, &server).await? {
            return Ok(Some(creds));
        }
    }
    let entry = config
        .auths
        .iter()
        .find(|(k, _)| key_host(k) == registry || (is_hub(registry) && is_hub(key_host(k))))
        .map(|(_, e)| e);
    let Some(entry) = entry else { return Ok(None) };
    let (mut username, mut password) = (entry.username.clone(), entry.password.clone());
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| AuthError::File {
                path: path.clone(),
                message: format!("auths.{registry}.auth is not base64 of USER:PASSWORD"),
            })?;
        let (u, p) = decoded.split_once(':').ok_or_else(|| AuthError::File {
            path: path.clone(),
            message: format!("auths.{registry}.auth does not decode to USER:PASSWORD"),
        })?;
        username = Some(u.to_string());
        password = Some(p.to_string());
    }
    if username.is_none() && entry.identitytoken.is_none() {
        return Ok(None);
    }
    Ok(Some(DockerCredentials {
        username,
        password,
        identitytoken: entry.identitytoken.clone(),
        serveraddress: Some(server),
        ..Default::default()
    }))
}

/// Ask `program` (`docker-credential-HELPER`) `get` for `server`; `None`
/// when it has nothing for it.
async fn from_helper(
    program: &str,
    helper: &str,
    registry: &str,
    server: &str,
) -> Result<Option<DockerCredentials>, AuthError> {
    let fail = |message: String| AuthError::Helper {
        helper: helper.to_string(),
        registry: registry.to_string(),
        message,
    };
    let mut child = tokio::process::Command::new(program)
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("cannot run {program}: {e} (is it installed and on PATH?)")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(server.as_bytes()).await.map_err(|e| fail(format!("writing to it: {e}")))?;
    }
    let out = tokio::time::timeout(HELPER_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| fail(format!("did not answer within {HELPER_TIMEOUT:?}")))?
        .map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        if said.contains("credentials not found") {
            return Ok(None);
        }
        return Err(fail(format!("exited with {}: {}", out.status, said.trim())));
    }
    let answer: HelperAnswer = serde_json::from_slice(&out.stdout)
        .map_err(|e| fail(format!("answered something that is not its JSON: {e}")))?;
    let creds = if answer.username == "<token>" {
        DockerCredentials { identitytoken: Some(answer.secret), ..Default::default() }
    } else {
        DockerCredentials {
            username: Some(answer.username),
            password: Some(answer.secret),
            ..Default::default()
        }
    };
    Ok(Some(DockerCredentials { serveraddress: Some(server.to_string()), ..creds }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_are_found_as_docker_finds_them() {
        assert_eq!(registry_of("websample:v1"), "docker.io");
        assert_eq!(registry_of("team/app"), "docker.io");
        assert_eq!(registry_of("127.0.0.1:5000/websample:v1"), "127.0.0.1:5000");
        assert_eq!(registry_of("localhost/app@sha256:00"), "localhost");
        assert_eq!(key_host("https://127.0.0.1:5000/v1/"), "127.0.0.1:5000");
    }

    #[tokio::test]
    async fn auths_entries_decode_and_helpers_are_asked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("u:p:w");
        std::fs::write(
            &file,
            format!(r#"{{"auths": {{"https://reg.example:5000": {{"auth": "{auth}"}}, "other:1": {{"username": "a", "password": "b"}}}}}}"#),
        )
        .unwrap();
        let c = credentials_for(Some(&file), "reg.example:5000").await.unwrap().unwrap();
        assert_eq!((c.username.as_deref(), c.password.as_deref()), (Some("u"), Some("p:w")));
        let c = credentials_for(Some(&file), "other:1").await.unwrap().unwrap();
        assert_eq!(c.password.as_deref(), Some("b"));
        assert!(credentials_for(Some(&file), "nowhere:2").await.unwrap().is_none());

        // A helper, asked as the docker CLI asks it: the server on stdin.
        let bin = dir.path().join("docker-credential-test");
        std::fs::write(
            &bin,
            "#!/bin/sh\nread s\nprintf '{\"ServerURL\":\"%s\",\"Username\":\"h\",\"Secret\":\"s3\"}' \"$s\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let c = from_helper(bin.to_str().unwrap(), "test", "reg:1", "reg:1").await.unwrap().unwrap();
        assert_eq!((c.username.as_deref(), c.password.as_deref()), (Some("h"), Some("s3")));
        let missing =
            from_helper("/nonexistent/docker-credential-x", "x", "reg:1", "reg:1").await.unwrap_err();
        assert!(missing.to_string().contains("reg:1"), "{missing}");
        assert!(credentials_for(Some(&dir.path().join("missing.json")), "x:1").await.is_err());
    }
}
