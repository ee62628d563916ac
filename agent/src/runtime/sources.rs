//! The contents of secrets, files and env files. A deploy reads each source
//! once ([`Sources::resolve`]), records its sha256 in the spec and leaves
//! the content here, in memory, keyed by digest; every replica of that
//! revision (self-healing and rolling replacements too) gets exactly that
//! content. After an agent restart the memory is empty: a source is then
//! read again and must still hash to the recorded digest, else the start
//! fails and says to deploy again (as in Swarm, new content takes a new
//! deploy). Content never leaves this module except into a replica.

use super::RuntimeError;
use crate::api::Spec;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// Contents read by deploys, by hex sha256.
#[derive(Debug, Default)]
pub struct Sources {
    held: Mutex<HashMap<String, Arc<Vec<u8>>>>,
}

/// Hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

impl Sources {
    /// An empty store.
    pub fn new() -> Sources {
        Sources::default()
    }

    /// Read every source of `spec` and hold its content: the spec returned
    /// records each sha256. A source whose sha256 is already recorded (a
    /// rollback to an earlier revision) must still have that content.
    pub fn resolve(&self, spec: &Spec) -> Result<Spec, RuntimeError> {
        let mut out = spec.clone();
        for (path, sha) in out.sources_mut() {
            let content = self.content(path, sha.as_deref())?;
            *sha = Some(sha256_hex(&content));
        }
        // Env files must parse: a bad line fails the deploy before anything
        // starts.
        self.env_of(&out)?;
        Ok(out)
    }

    /// The content `sha256` names: held, or read again from `path` and
    /// checked. Without a recorded digest the file is read as it is now.
    pub fn content(&self, path: &str, sha256: Option<&str>) -> Result<Arc<Vec<u8>>, RuntimeError> {
        if let Some(sha) = sha256 {
            if let Some(held) = self.held.lock().expect("sources lock").get(sha) {
                return Ok(held.clone());
            }
        }
        let bytes = std::fs::read(path).map_err(|e| RuntimeError::Source {
            path: path.to_string(),
            message: format!("cannot be read: {e}"),
        })?;
        let actual = sha256_hex(&bytes);
        if let Some(sha) = sha256 {
            if sha != actual {
                return Err(RuntimeError::Source {
                    path: path.to_string(),
                    message: format!(
                        "changed since the deploy read it (sha256 {}… then, {}… now): deploy again to use the new content",
                        short(sha),
                        short(&actual)
                    ),
                });
            }
        }
        let bytes = Arc::new(bytes);
        self.held.lock().expect("sources lock").insert(actual, bytes.clone());
        Ok(bytes)
    }

    /// The environment a replica of `spec` gets: its env files in order,
    /// then `env` over them.
    pub fn env_of(&self, spec: &Spec) -> Result<BTreeMap<String, String>, RuntimeError> {
        let mut env = BTreeMap::new();
        for file in &spec.env_file {
            let content = self.content(&file.path, file.sha256.as_deref())?;
            let text = String::from_utf8_lossy(&content);
            let pairs = parse_env_file(&text)
                .map_err(|message| RuntimeError::Source { path: file.path.clone(), message })?;
            env.extend(pairs);
        }
        env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok(env)
    }
}

/// `KEY=VALUE` lines as `docker run --env-file` reads them: blank lines
/// and lines starting with `#` are skipped, the value is everything after
/// the first `=` (no quotes are removed). A line without `=` is refused,
/// naming its number (Docker would copy the agent's own variable; that is
/// not what a file on disk should mean).
pub fn parse_env_file(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {}: expected KEY=VALUE", i + 1));
        };
        if key.is_empty() || key.contains(char::is_whitespace) || key.contains('\0') || value.contains('\0') {
            return Err(format!("line {}: {key:?} is not a variable name", i + 1));
        }
        out.push((key.to_string(), value.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{EnvFile, FileRef, SECRET_MODE};

    #[test]
    fn env_files_parse_like_docker_and_refuse_bare_names() {
        let pairs = parse_env_file("# c\n\nA=1\nB=x=y\nC=\"q\"\n").unwrap();
        assert_eq!(
            pairs,
            vec![("A".into(), "1".into()), ("B".into(), "x=y".into()), ("C".into(), "\"q\"".into())]
        );
        assert!(parse_env_file("A=1\nNOPE\n").unwrap_err().contains("line 2"));
    }

    #[test]
    fn a_resolved_spec_holds_digests_and_later_reads_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("pw");
        let envf = dir.path().join("env");
        std::fs::write(&secret, "hunter2").unwrap();
        std::fs::write(&envf, "A=from-file\nB=b\n").unwrap();
        let mut spec = Spec::default();
        spec.secrets.insert(
            "pw".into(),
            FileRef { source: secret.display().to_string(), mode: SECRET_MODE, sha256: None },
        );
        spec.env_file.push(EnvFile { path: envf.display().to_string(), sha256: None });
        spec.env.insert("A".into(), "from-env".into());
        let sources = Sources::new();
        let resolved = sources.resolve(&spec).unwrap();
        let sha = resolved.secrets["pw"].sha256.clone().unwrap();
        assert_eq!(sha, sha256_hex(b"hunter2"));
        let env = sources.env_of(&resolved).unwrap();
        assert_eq!(env["A"], "from-env");
        assert_eq!(env["B"], "b");

        // Held: a changed source does not change a running revision.
        std::fs::write(&secret, "changed").unwrap();
        assert_eq!(
            sources.content(&secret.display().to_string(), Some(&sha)).unwrap().as_slice(),
            b"hunter2"
        );
        // A fresh agent reads it again and refuses the new content.
        let err = Sources::new().content(&secret.display().to_string(), Some(&sha)).unwrap_err();
        assert!(err.to_string().contains("deploy again"), "{err}");
        assert!(!err.to_string().contains("hunter2") && !err.to_string().contains("changed\""), "{err}");
    }
}
