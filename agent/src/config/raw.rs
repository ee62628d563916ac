//! The config file as written: raw serde structs that refuse unknown keys
//! and keep the byte span of every value, so that [`validate`] can point at
//! the line of whatever it refuses. Parsing happens in three steps: TOML
//! syntax (`toml::de::DeTable`, also used to name the key an error is
//! about), serde into these structs, then validation into the typed
//! [`Config`](super::Config).

mod claims;
mod container;
mod control_tls;
mod edge;
mod locate;
mod validate;

use super::{Config, ConfigError};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use toml::Spanned;

pub(super) fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let doc = match toml::de::DeTable::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let line = e.span().map(|s| locate::line_of(text, s.start)).unwrap_or(0);
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                key: locate::key_near_line(text, line).unwrap_or_else(|| "(toml syntax)".into()),
                message: format!("{}: this is not valid TOML", e.message().trim_end()),
            });
        }
    };
    let raw: RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let (line, key) = match e.span() {
                Some(span) => (locate::line_of(text, span.start), locate::key_at(doc.get_ref(), span.start)),
                None => (0, String::new()),
            };
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                key: if key.is_empty() { "(top level)".into() } else { key },
                message: explain_serde(e.message()),
            });
        }
    };
    validate::validate(raw, text, path)
}

/// A file that is not UTF-8: name the line of the first bad byte.
pub(super) fn invalid_utf8(bytes: &[u8], error: &std::str::Utf8Error, path: &Path) -> ConfigError {
    let good = &bytes[..error.valid_up_to()];
    let line = good.iter().filter(|&&b| b == b'\n').count() + 1;
    let text = String::from_utf8_lossy(bytes);
    ConfigError::Invalid {
        path: path.to_path_buf(),
        line,
        key: locate::key_near_line(&text, line).unwrap_or_else(|| "(encoding)".into()),
        message: format!(
            "byte {} is not valid UTF-8: save the file as UTF-8",
            error.valid_up_to() - good.iter().rposition(|&b| b == b'\n').map(|i| i + 1).unwrap_or(0) + 1
        ),
    }
}

/// Make serde's messages read like advice.
fn explain_serde(message: &str) -> String {
    let message = message.trim_end();
    if message.starts_with("unknown field") {
        // A key that looks right but is refused often holds a character
        // that does not show: say so, escaped.
        let name = message.split('`').nth(1).unwrap_or("");
        if name.chars().any(|c| !c.is_ascii_graphic()) {
            return format!(
                "{message}; the name holds hidden or non-ASCII characters: \"{}\"",
                name.escape_default()
            );
        }
        return format!("{message}; remove it or fix its spelling");
    }
    // Serde speaks Rust; the reader of a config file speaks TOML.
    [
        ("expected i64", "expected a whole number (integer)"),
        ("expected f64", "expected a number"),
        ("expected a sequence", "expected an array"),
        ("expected a map", "expected a table"),
        ("expected a string", "expected a string in quotes"),
    ]
    .iter()
    .fold(message.to_string(), |m, (from, to)| m.replace(from, to))
}

/// The whole file.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub agent: RawAgent,
    #[serde(default)]
    pub runtime: RawRuntime,
    #[serde(default)]
    pub proxy: RawProxy,
    #[serde(default)]
    pub services: BTreeMap<Spanned<String>, RawService>,
}

/// `[agent]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgent {
    pub state_dir: Option<Spanned<String>>,
    pub control_socket: Option<Spanned<String>>,
    pub control_socket_group: Option<Spanned<String>>,
    pub control_listen: Option<Spanned<String>>,
    pub token_file: Option<Spanned<String>>,
    pub metrics_listen: Option<Spanned<String>>,
    pub ui_listen: Option<Spanned<String>>,
    pub worker_threads: Option<Spanned<i64>>,
    pub control_tls: Option<Spanned<RawControlTls>>,
    pub allow_plaintext: Option<bool>,
}

/// `[agent] control_tls = { cert, key, client_ca }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawControlTls {
    pub cert: String,
    pub key: String,
    pub client_ca: Option<String>,
}

/// `[proxy]`: the shared edge listeners.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProxy {
    pub http: Option<SpannedList>,
    pub https: Option<SpannedList>,
    pub max_request_body: Option<Spanned<String>>,
    pub acme_directory: Option<Spanned<String>>,
    pub acme_contact: Option<Spanned<String>>,
    pub acme_ca: Option<Spanned<String>>,
    pub acme_renew_before: Option<Spanned<String>>,
}

/// A service's `tls`: `"acme"`, `"off"` or `{ cert, key }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawTls {
    Mode(String),
    Files { cert: String, key: String },
}

/// `[runtime]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRuntime {
    pub kind: Option<Spanned<String>>,
    pub docker_host: Option<Spanned<String>>,
    pub call_timeout: Option<Spanned<String>>,
    pub auth_file: Option<Spanned<String>>,
    pub task_network: Option<Spanned<String>>,
    pub swarm_ack_timeout: Option<Spanned<String>>,
}

/// `[services.NAME]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub listen: Option<Spanned<Vec<Spanned<String>>>>,
    pub image: Option<Spanned<String>>,
    pub command: Option<Spanned<Vec<String>>>,
    pub pull: Option<Spanned<String>>,
    pub port: Option<Spanned<i64>>,
    pub replicas: Option<Spanned<i64>>,
    #[serde(default)]
    pub env: BTreeMap<String, Spanned<String>>,
    pub stop_signal: Option<Spanned<String>>,
    pub stop_grace: Option<Spanned<String>>,
    pub queue_timeout: Option<Spanned<String>>,
    pub write_timeout: Option<Spanned<String>>,
    pub response_timeout: Option<Spanned<String>>,
    pub max_queued: Option<Spanned<i64>>,
    // The edge keys, validated by `edge`.
    pub hosts: Option<SpannedList>,
    pub path_prefix: Option<Spanned<String>>,
    pub strip_prefix: Option<Spanned<bool>>,
    pub tls: Option<Spanned<RawTls>>,
    pub redirect_https: Option<Spanned<bool>>,
    pub max_request_body: Option<Spanned<String>>,
    // The container keys (a real application's spec), validated by
    // `container`.
    pub networks: Option<SpannedList>,
    pub network_aliases: Option<SpannedList>,
    pub volumes: Option<SpannedList>,
    pub tmpfs: Option<SpannedList>,
    pub env_file: Option<SpannedList>,
    pub labels: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    pub user: Option<Spanned<String>>,
    pub workdir: Option<Spanned<String>>,
    pub entrypoint: Option<Spanned<Vec<String>>>,
    pub read_only: Option<Spanned<bool>>,
    pub init: Option<Spanned<bool>>,
    pub memory: Option<Spanned<String>>,
    pub memory_reservation: Option<Spanned<String>>,
    pub cpus: Option<Spanned<f64>>,
    pub pids_limit: Option<Spanned<i64>>,
    pub cap_drop: Option<SpannedList>,
    pub cap_add: Option<SpannedList>,
    pub extra_hosts: Option<SpannedList>,
    pub log_driver: Option<Spanned<String>>,
    pub log_opts: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    pub placement: Option<SpannedList>,
    pub max_replicas_per_node: Option<Spanned<i64>>,
    pub secrets: Option<Spanned<BTreeMap<Spanned<String>, Spanned<RawFileRef>>>>,
    pub files: Option<Spanned<BTreeMap<Spanned<String>, Spanned<RawFileRef>>>>,
    #[serde(default)]
    pub health: RawHealth,
    #[serde(default)]
    pub deploy: RawDeploy,
    #[serde(default)]
    pub rolling: RawRolling,
    #[serde(default)]
    pub hooks: RawHooks,
}

/// `[services.NAME.hooks]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHooks {
    pub pre_deploy: Option<Spanned<Vec<String>>>,
    pub post_switch: Option<Spanned<Vec<String>>>,
    pub pre_stop: Option<Spanned<RawPreStop>>,
    pub hook_timeout: Option<Spanned<String>>,
}

/// `pre_stop = { http = "/path" }` or `{ exec = ["cmd", ...] }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPreStop {
    pub http: Option<String>,
    pub exec: Option<Vec<String>>,
}

/// A list whose items keep their own spans.
pub(super) type SpannedList = Spanned<Vec<Spanned<String>>>;

/// One entry of `[services.NAME.secrets]` or `[services.NAME.files]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFileRef {
    pub source: Spanned<String>,
    pub mode: Option<Spanned<String>>,
}

/// `[services.NAME.health]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub kind: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub healthy_threshold: Option<Spanned<i64>>,
    pub unhealthy_threshold: Option<Spanned<i64>>,
    pub deadline: Option<Spanned<String>>,
}

/// `[services.NAME.deploy]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDeploy {
    pub auto_promote: Option<bool>,
    pub drain_timeout: Option<Spanned<String>>,
    pub keep_old: Option<Spanned<String>>,
    pub monitor: Option<Spanned<String>>,
    pub failure_action: Option<Spanned<String>>,
    pub max_error_rate: Option<Spanned<f64>>,
    pub on_start: Option<Spanned<String>>,
}

/// `[services.NAME.rolling]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRolling {
    pub parallelism: Option<Spanned<i64>>,
    pub delay: Option<Spanned<String>>,
    pub order: Option<Spanned<String>>,
    pub failure_action: Option<Spanned<String>>,
    pub monitor: Option<Spanned<String>>,
    pub max_failure_ratio: Option<Spanned<f64>>,
}
