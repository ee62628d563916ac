//! The fleet file (`--fleet FILE`, `$BG_FLEET`): the hosts of a fleet by
//! name, with their agent address, tags and token, read once and checked
//! whole (unknown keys, a host without `agent`, a duplicate name, an
//! unreadable token file: an error naming the file and line, exit 2).
//!
//! ```toml
//! token_file = "~/.config/bgctl/token"     # default for every host
//! [hosts.web-1]
//! agent = "http://192.0.2.11:7070"
//! tags = ["eu", "canary"]
//! [hosts.web-2]
//! agent = "http://192.0.2.12:7070"
//! tags = ["eu"]
//! token_file = "/etc/bgctl/web-2.token"   # this host's own
//! ```
//!
//! `ca_file`, `cert_file` and `key_file` (TLS to `https://` agents) go at
//! the top (every host) or in a host's table (that host).

use crate::client::AgentAddr;
use crate::tls::TlsFiles;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// One host of the fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    /// Its name (the table key).
    pub name: String,
    /// Where its agent listens.
    pub agent: AgentAddr,
    /// Its tags, for `--tag`.
    pub tags: Vec<String>,
    /// Its bearer token: its own `token_file`, else the file's default.
    pub token: Option<String>,
    /// Its TLS files: its own `ca_file`, `cert_file`, `key_file`, each
    /// else the file's default.
    pub tls: TlsFiles,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFleet {
    token_file: Option<Spanned<String>>,
    ca_file: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    #[serde(default)]
    hosts: BTreeMap<String, Spanned<RawHost>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    agent: Option<Spanned<String>>,
    #[serde(default)]
    tags: Vec<String>,
    token_file: Option<Spanned<String>>,
    ca_file: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
}

/// Read and check the fleet file at `path`. Err is the whole message.
pub fn load(path: &Path) -> Result<Vec<Host>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("fleet file {}: {e}", path.display()))?;
    parse(path, &text)
}

fn parse(path: &Path, text: &str) -> Result<Vec<Host>, String> {
    let at = |span: std::ops::Range<usize>| {
        let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
        format!("{}:{line}", path.display())
    };
    let raw: RawFleet = toml::from_str(text).map_err(|e| match e.span() {
        Some(span) => format!("{}: {}", at(span), e.message()),
        None => format!("{}: {}", path.display(), e.message()),
    })?;
    let token = |file: &Spanned<String>| -> Result<String, String> {
        let resolved = expand_home(file.get_ref());
        let token = std::fs::read_to_string(&resolved)
            .map_err(|e| format!("{}: token_file {}: {e}", at(file.span()), resolved.display()))?;
        let token = token.trim().to_string();
        if token.is_empty() {
            return Err(format!("{}: token_file {} is empty", at(file.span()), resolved.display()));
        }
        Ok(token)
    };
    let default_token = raw.token_file.as_ref().map(token).transpose()?;
    let files = |ca: &Option<String>, cert: &Option<String>, key: &Option<String>| TlsFiles {
        ca: ca.as_deref().map(expand_home),
        cert: cert.as_deref().map(expand_home),
        key: key.as_deref().map(expand_home),
    };
    let default_tls = files(&raw.ca_file, &raw.cert_file, &raw.key_file);
    if raw.hosts.is_empty() {
        return Err(format!("{}: no [hosts.NAME] tables: a fleet needs at least one host", path.display()));
    }
    let mut hosts = Vec::new();
    for (name, host) in &raw.hosts {
        let span = host.span();
        let host = host.get_ref();
        let Some(agent) = &host.agent else {
            return Err(format!(
                "{}: host {name:?} has no agent, e.g. agent = \"http://192.0.2.11:7070\"",
                at(span)
            ));
        };
        let addr = AgentAddr::parse(agent.get_ref())
            .map_err(|e| format!("{}: host {name:?}: agent {e}", at(agent.span())))?;
        let own = host.token_file.as_ref().map(token).transpose()?;
        hosts.push(Host {
            name: name.clone(),
            agent: addr,
            tags: host.tags.clone(),
            token: own.or_else(|| default_token.clone()),
            tls: files(&host.ca_file, &host.cert_file, &host.key_file).or(&default_tls),
        });
    }
    Ok(hosts)
}

/// `~/x` → `$HOME/x`.
fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(path),
    }
}

/// The hosts `names` and `tag` pick (both: hosts in both); all when
/// neither is given. Err names an unknown host or a tag nothing has.
pub fn select(hosts: Vec<Host>, names: Option<&[String]>, tag: Option<&str>) -> Result<Vec<Host>, String> {
    if let Some(names) = names {
        for n in names {
            if !hosts.iter().any(|h| &h.name == n) {
                let known: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
                return Err(format!(
                    "--hosts: no host {n:?} in the fleet file (it has {})",
                    known.join(", ")
                ));
            }
        }
    }
    let picked: Vec<Host> = hosts
        .into_iter()
        .filter(|h| names.is_none_or(|n| n.contains(&h.name)))
        .filter(|h| tag.is_none_or(|t| h.tags.iter().any(|x| x == t)))
        .collect();
    if picked.is_empty() {
        return Err(match tag {
            Some(t) => format!("--tag {t:?}: no host of the fleet file has it (among those chosen)"),
            None => "no host chosen".into(),
        });
    }
    Ok(picked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Result<Vec<Host>, String> {
        parse(Path::new("fleet.toml"), text)
    }

    #[test]
    fn hosts_parse_with_tags_and_the_default_token() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret\n").unwrap();
        let text = format!(
            "token_file = {:?}\n[hosts.web-1]\nagent = \"http://10.0.0.1:7070\"\ntags = [\"eu\", \"canary\"]\n[hosts.web-2]\nagent = \"http://10.0.0.2:7070\"\n",
            token.display().to_string()
        );
        let hosts = parsed(&text).unwrap();
        assert_eq!(hosts.len(), 2);
        assert_eq!(hosts[0].name, "web-1");
        assert_eq!(hosts[0].token.as_deref(), Some("s3cret"));
        assert_eq!(hosts[1].tags, Vec::<String>::new());
        let eu = select(hosts.clone(), None, Some("eu")).unwrap();
        assert_eq!(eu.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(), ["web-1"]);
        assert!(select(hosts.clone(), Some(&["web-9".into()]), None).unwrap_err().contains("web-9"));
        assert!(select(hosts, None, Some("us")).unwrap_err().contains("\"us\""));
    }

    #[test]
    fn bad_files_are_refused_with_file_and_line() {
        let no_agent = parsed("[hosts.a]\nagent = \"http://h:1\"\n[hosts.b]\ntags = []\n").unwrap_err();
        assert!(
            no_agent.starts_with("fleet.toml:3:") && no_agent.contains("\"b\" has no agent"),
            "{no_agent}"
        );
        let unknown = parsed("[hosts.a]\nagent = \"http://h:1\"\nagnet = 1\n").unwrap_err();
        assert!(unknown.starts_with("fleet.toml:3:") && unknown.contains("agnet"), "{unknown}");
        let dup =
            parsed("[hosts.a]\nagent = \"http://h:1\"\n[hosts.a]\nagent = \"http://h:2\"\n").unwrap_err();
        assert!(dup.starts_with("fleet.toml:3:"), "{dup}");
        let bad_addr = parsed("[hosts.a]\nagent = \"h:1\"\n").unwrap_err();
        assert!(bad_addr.starts_with("fleet.toml:2:"), "{bad_addr}");
        let token =
            parsed("token_file = \"/nonexistent/t\"\n[hosts.a]\nagent = \"http://h:1\"\n").unwrap_err();
        assert!(token.starts_with("fleet.toml:1:") && token.contains("/nonexistent/t"), "{token}");
        assert!(parsed("").unwrap_err().contains("no [hosts.NAME]"));
    }
}
