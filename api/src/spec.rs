//! What a color runs: the [`Spec`], with the container keys of a real
//! application (networks, volumes, limits, user, secrets and files). Every
//! value is typed here, parsed once where a config or a state file is read;
//! on the wire each reads like the config key it came from (`"512MiB"`,
//! `"uploads:/app/uploads:ro"`, `"0400"`).
//!
//! Secrets, files and env files appear by source path and sha256 only: the
//! runtime reads their content when a deploy starts and holds it itself, so
//! no status, history, event or state file ever carries it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// What a color runs: image (docker) or command (process), environment,
/// and the container keys of `[services.NAME]`. Every field is part of the
/// revision: recorded, shown by `status` and restored by `rollback`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Spec {
    /// Container image, for the docker runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The repo digest (`sha256:...`) `image` resolved to when the deploy
    /// pulled or inspected it; every replica of the revision runs
    /// `repository@digest`, even after the tag moved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Command and arguments; the process runtime's program, or the
    /// container's command override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Environment added to the app's (`PORT` is always set by the runtime).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `KEY=VALUE` files read when the deploy starts; `env` wins over them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_file: Vec<EnvFile>,
    /// User-defined networks to join (docker); they must exist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<String>,
    /// DNS names of the replica on those networks (docker).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_aliases: Vec<String>,
    /// Named volumes and bind mounts (docker).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// tmpfs mounts, `PATH` or `PATH:OPTIONS` (docker).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tmpfs: Vec<String>,
    /// Container labels; the `bg.*` labels stay the agent's own (docker).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The user the app runs as, and owner of its secrets and files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<User>,
    /// The app's working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// The container's entrypoint override (docker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// A read-only root filesystem (docker).
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
    /// An init process as PID 1 that reaps zombies (docker).
    #[serde(default, skip_serializing_if = "is_false")]
    pub init: bool,
    /// Hard memory limit (docker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<ByteSize>,
    /// Soft memory limit (docker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_reservation: Option<ByteSize>,
    /// CPU limit in CPUs (docker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Cpus>,
    /// Most processes and threads at once (docker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<u32>,
    /// Capabilities dropped (docker), e.g. `ALL`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    /// Capabilities added (docker).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    /// `HOST:IP` lines added to `/etc/hosts` (docker).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<String>,
    /// The container's log driver (docker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_driver: Option<String>,
    /// Options of the log driver (docker).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub log_opts: BTreeMap<String, String>,
    /// Swarm placement constraints, e.g. `node.role==worker` (swarm).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placement: Vec<String>,
    /// Most tasks of a color on one node (swarm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas_per_node: Option<u32>,
    /// Secrets by name; each lands at `/run/secrets/NAME` (docker) or
    /// `$BG_SECRETS_DIR/NAME` (process).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, FileRef>,
    /// Files by absolute target path (docker) or by that path below
    /// `$BG_FILES_DIR` (process).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, FileRef>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Where secrets land in a container.
pub const SECRETS_DIR: &str = "/run/secrets";

impl Spec {
    /// Every content source of the spec (secrets, files, env files), each
    /// with the sha256 recorded for it, if one is yet.
    pub fn sources(&self) -> impl Iterator<Item = (&str, &Option<String>)> {
        let secrets = self.secrets.values().map(|f| (f.source.as_str(), &f.sha256));
        let files = self.files.values().map(|f| (f.source.as_str(), &f.sha256));
        let env = self.env_file.iter().map(|f| (f.path.as_str(), &f.sha256));
        secrets.chain(files).chain(env)
    }

    /// The spec as configured: without the digest and content sha256s a
    /// deploy pinned. Two deploys of the same configuration compare equal
    /// this way.
    pub fn unpinned(&self) -> Spec {
        let mut spec = self.clone();
        spec.digest = None;
        for (_, sha) in spec.sources_mut() {
            *sha = None;
        }
        spec
    }

    /// Every content source with a mutable place for its sha256.
    pub fn sources_mut(&mut self) -> impl Iterator<Item = (&str, &mut Option<String>)> {
        let secrets = self.secrets.values_mut().map(|f| (f.source.as_str(), &mut f.sha256));
        let files = self.files.values_mut().map(|f| (f.source.as_str(), &mut f.sha256));
        let env = self.env_file.iter_mut().map(|f| (f.path.as_str(), &mut f.sha256));
        secrets.chain(files).chain(env)
    }

    /// Where each secret and file lands in a container: target path, and
    /// the reference to its content.
    pub fn container_files(&self) -> impl Iterator<Item = (String, &FileRef)> {
        let secrets = self.secrets.iter().map(|(name, f)| (format!("{SECRETS_DIR}/{name}"), f));
        secrets.chain(self.files.iter().map(|(path, f)| (path.clone(), f)))
    }

    /// The image replicas are created from: `repository@digest` once the
    /// digest is known, else the image as configured.
    pub fn pinned_image(&self) -> Option<String> {
        let image = self.image.as_deref()?;
        Some(match &self.digest {
            Some(digest) => format!("{}@{digest}", repository_of(image)),
            None => image.to_string(),
        })
    }
}

/// `image` without its tag or digest: `host:5000/app:v1` → `host:5000/app`.
pub fn repository_of(image: &str) -> &str {
    let name = image.split_once('@').map_or(image, |(n, _)| n);
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    match name[last_slash..].rfind(':') {
        Some(i) => &name[..last_slash + i],
        None => name,
    }
}

/// One secret or file: its source on the agent's host, its mode, and the
/// sha256 of the content a deploy read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRef {
    /// The file on the agent's host it is read from.
    pub source: String,
    /// Its mode where it lands (secrets `0400`, files `0444` unless set).
    pub mode: FileMode,
    /// Hex sha256 of the content the deploy read; `None` before that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// One `env_file`, by path and the sha256 of what the deploy read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvFile {
    /// The file on the agent's host.
    pub path: String,
    /// Hex sha256 of the content the deploy read; `None` before that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// Implements `Serialize`/`Deserialize` through `Display`/`FromStr`, so a
/// value reads on the wire as it is written in the config.
macro_rules! string_serde {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// A file mode, written in octal (`"0400"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileMode(pub u32);

/// Mode of a secret unless set: readable by its owner only.
pub const SECRET_MODE: FileMode = FileMode(0o400);
/// Mode of a file unless set: readable by everyone.
pub const FILE_MODE: FileMode = FileMode(0o444);

impl fmt::Display for FileMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl std::str::FromStr for FileMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.strip_prefix("0o").unwrap_or(s);
        match u32::from_str_radix(digits, 8) {
            Ok(m) if m <= 0o777 && !digits.is_empty() => Ok(FileMode(m)),
            _ => Err(format!("{s:?} is not a file mode: expected octal digits up to 0777, e.g. \"0440\"")),
        }
    }
}
string_serde!(FileMode);

/// A size in bytes, written with a unit (`"512MiB"`, `"1g"`); units are
/// binary, as Docker reads them (`k` = 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if self.0 >= size && self.0 % size == 0 {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl std::str::FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let bad = || {
            format!("{s:?} is not a size: expected a number and a unit, e.g. \"512MiB\", \"2g\" or \"64k\"")
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        let shift = match unit.trim().to_ascii_lowercase().as_str() {
            "b" => 0,
            "k" | "kb" | "kib" => 10,
            "m" | "mb" | "mib" => 20,
            "g" | "gb" | "gib" => 30,
            "t" | "tb" | "tib" => 40,
            "" => return Err(format!("{s:?} has no unit: write e.g. \"{n}MiB\" (or \"{n}b\" for bytes)")),
            _ => return Err(bad()),
        };
        n.checked_mul(1u64 << shift).map(ByteSize).ok_or_else(|| format!("{s:?} is too large"))
    }
}
string_serde!(ByteSize);

/// A CPU limit, kept in billionths of a CPU (Docker's `NanoCpus`) so that
/// it compares exactly; written as a number of CPUs (`1.5`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cpus(pub u64);

/// Most CPUs a limit may name.
pub const MAX_CPUS: f64 = 1024.0;

impl Cpus {
    /// From a number of CPUs, above 0 and at most [`MAX_CPUS`].
    pub fn from_cpus(cpus: f64) -> Result<Cpus, String> {
        if !(cpus > 0.0 && cpus <= MAX_CPUS) {
            return Err(format!("{cpus} is out of range: expected a number of CPUs above 0, e.g. 0.5 or 2"));
        }
        Ok(Cpus((cpus * 1e9).round() as u64))
    }

    /// As a number of CPUs.
    pub fn as_cpus(self) -> f64 {
        self.0 as f64 / 1e9
    }
}

impl fmt::Display for Cpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_cpus())
    }
}

impl Serialize for Cpus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.as_cpus())
    }
}

impl<'de> Deserialize<'de> for Cpus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Cpus::from_cpus(f64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// `uid[:gid]` or `name[:group]`, as `docker run --user` takes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct User {
    /// A uid or a user name.
    pub user: String,
    /// A gid or a group name, if given.
    pub group: Option<String>,
}

impl User {
    /// The numeric uid, where the user is written as one.
    pub fn uid(&self) -> Option<u32> {
        self.user.parse().ok()
    }

    /// The numeric gid, where the group is written as one.
    pub fn gid(&self) -> Option<u32> {
        self.group.as_deref().and_then(|g| g.parse().ok())
    }
}

/// A user or group name as `useradd` accepts it, or a number.
fn valid_id(part: &str) -> bool {
    if part.chars().all(|c| c.is_ascii_digit()) {
        return !part.is_empty() && part.parse::<u32>().is_ok();
    }
    let mut chars = part.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && part.len() <= 32
}

impl fmt::Display for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.group {
            Some(g) => write!(f, "{}:{g}", self.user),
            None => f.write_str(&self.user),
        }
    }
}

impl std::str::FromStr for User {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (user, group) = match s.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (s, None),
        };
        if !valid_id(user) || group.is_some_and(|g| !valid_id(g)) {
            return Err(format!(
                "{s:?} is not a user: expected uid[:gid] (e.g. \"1000:1000\") or a name[:group] (e.g. \"app\")"
            ));
        }
        Ok(User { user: user.to_string(), group: group.map(str::to_string) })
    }
}
string_serde!(User);

/// Where a volume's data comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum VolumeSource {
    /// A named Docker volume (created by the engine on first use).
    Named(String),
    /// A directory or file on the host, by absolute path.
    Host(String),
}

/// `SOURCE:TARGET[:ro|:rw]`: a named volume or an absolute host path,
/// mounted at an absolute path in the container.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Volume {
    /// Named volume or host path.
    pub source: VolumeSource,
    /// Absolute path in the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

impl fmt::Display for Volume {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match &self.source {
            VolumeSource::Named(n) => n,
            VolumeSource::Host(p) => p,
        };
        write!(f, "{source}:{}{}", self.target, if self.read_only { ":ro" } else { "" })
    }
}

/// A named volume's name as Docker accepts it.
fn valid_volume_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && name.len() >= 2
}

impl std::str::FromStr for Volume {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(':').collect();
        let (source, target, read_only) = match parts.as_slice() {
            [source, target] => (*source, *target, false),
            [source, target, "ro"] => (*source, *target, true),
            [source, target, "rw"] => (*source, *target, false),
            [_, _, other] => {
                return Err(format!("{s:?}: mode {other:?} is not allowed: expected \"ro\" or \"rw\""))
            }
            _ => {
                return Err(format!(
                    "{s:?} is not a volume: expected NAME:/path, /host/path:/path, optionally with :ro"
                ))
            }
        };
        if !target.starts_with('/') {
            return Err(format!("{s:?}: the target {target:?} must be an absolute path"));
        }
        let source = if source.starts_with('/') {
            VolumeSource::Host(source.to_string())
        } else if valid_volume_name(source) {
            VolumeSource::Named(source.to_string())
        } else {
            return Err(format!(
                "{s:?}: the source {source:?} is neither an absolute host path nor a volume name (letters, digits, '_', '.', '-')"
            ));
        };
        Ok(Volume { source, target: target.to_string(), read_only })
    }
}
string_serde!(Volume);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_values_round_trip_as_written() {
        for text in ["512MiB", "1GiB", "3KiB", "100B"] {
            let size: ByteSize = text.parse().unwrap();
            assert_eq!(size.to_string(), text);
        }
        assert_eq!("10m".parse::<ByteSize>().unwrap(), ByteSize(10 << 20));
        assert!("512".parse::<ByteSize>().unwrap_err().contains("no unit"));
        assert_eq!("0400".parse::<FileMode>().unwrap(), FileMode(0o400));
        assert!("0800".parse::<FileMode>().is_err());
        assert_eq!(FileMode(0o440).to_string(), "0440");
        let v: Volume = "uploads:/app/uploads:ro".parse().unwrap();
        assert_eq!(v.source, VolumeSource::Named("uploads".into()));
        assert_eq!(v.to_string(), "uploads:/app/uploads:ro");
        assert!("uploads".parse::<Volume>().is_err());
        assert!("up:relative".parse::<Volume>().is_err());
        let u: User = "1000:1000".parse().unwrap();
        assert_eq!((u.uid(), u.gid()), (Some(1000), Some(1000)));
        assert!("app".parse::<User>().is_ok());
        assert!("10 00".parse::<User>().is_err());
        assert!("1000:".parse::<User>().is_err());
        assert_eq!(Cpus::from_cpus(1.5).unwrap().as_cpus(), 1.5);
        assert!(Cpus::from_cpus(0.0).is_err());
    }

    #[test]
    fn specs_pin_the_digest_and_round_trip() {
        let spec = Spec {
            image: Some("127.0.0.1:5000/web:v1".into()),
            digest: Some("sha256:ab".into()),
            memory: Some(ByteSize(512 << 20)),
            cpus: Some(Cpus::from_cpus(0.5).unwrap()),
            ..Default::default()
        };
        assert_eq!(spec.pinned_image().unwrap(), "127.0.0.1:5000/web@sha256:ab");
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["memory"], "512MiB");
        assert_eq!(json["cpus"], 0.5);
        let back: Spec = serde_json::from_value(json).unwrap();
        assert_eq!(back, spec);
        assert_eq!(repository_of("web@sha256:00"), "web");
        assert_eq!(repository_of("localhost:5000/a/b"), "localhost:5000/a/b");
    }
}
