//! The container keys of `[services.NAME]` (a real application's spec):
//! networks, volumes, limits, user, secrets and files. Each value is parsed
//! into its typed `bg_api` form here; sources of secrets, files and env
//! files must be readable now (their content is read again when a deploy
//! starts). Keys that mean nothing to the process runtime are refused
//! there, naming the key and the runtime.

use super::validate::Ctx;
use super::{RawFileRef, RawService, SpannedList};
use crate::api::{
    ByteSize, Cpus, EnvFile, FileMode, FileRef, Spec, User, Volume, FILE_MODE, SECRETS_DIR, SECRET_MODE,
};
use crate::config::{ConfigError, RuntimeKind};
use crate::runtime::sources::parse_env_file;
use std::collections::BTreeMap;
use std::path::{Component, Path};
use toml::Spanned;

/// Smallest memory limit the engine accepts (6 MiB).
const MIN_MEMORY: u64 = 6 << 20;

/// Validate the container keys of one service into `spec`.
pub(super) fn container(
    cx: &Ctx<'_>,
    prefix: &str,
    raw: &RawService,
    kind: RuntimeKind,
    spec: &mut Spec,
) -> Result<(), ConfigError> {
    let key = |k: &str| format!("{prefix}.{k}");
    if kind == RuntimeKind::Process {
        refuse_docker_only(cx, prefix, raw)?;
    }

    spec.networks = list(cx, &raw.networks, &key("networks"), |s| {
        docker_name(s)
            .then(|| s.to_string())
            .ok_or_else(|| format!("{s:?} is not a network name: expected letters, digits, '_', '.' and '-'"))
    })?;
    spec.network_aliases = list(cx, &raw.network_aliases, &key("network_aliases"), |s| {
        dns_name(s).then(|| s.to_string()).ok_or_else(|| format!("{s:?} is not a DNS name"))
    })?;
    if let (Some(a), true) = (&raw.network_aliases, spec.networks.is_empty()) {
        return Err(cx.err(
            a.span(),
            &key("network_aliases"),
            "apply on user-defined networks: set networks = [\"NAME\"] too",
        ));
    }
    spec.volumes = list(cx, &raw.volumes, &key("volumes"), |s| s.parse::<Volume>())?;
    spec.tmpfs = list(cx, &raw.tmpfs, &key("tmpfs"), |s| {
        let path = s.split_once(':').map_or(s, |(p, _)| p);
        absolute(path).map(|()| s.to_string())
    })?;
    spec.env_file = list(cx, &raw.env_file, &key("env_file"), |s| {
        let text = readable(s)?;
        parse_env_file(&text).map_err(|e| format!("{s}: {e}"))?;
        Ok(EnvFile { path: s.to_string(), sha256: None })
    })?;
    if let Some(labels) = &raw.labels {
        for (k, v) in labels.get_ref() {
            if k.starts_with("bg.") {
                return Err(cx.err(
                    v.span(),
                    &key(&format!("labels.{k}")),
                    "bg.* labels are the agent's own (bg.service, bg.color, ...): choose another prefix",
                ));
            }
            spec.labels.insert(k.clone(), v.get_ref().clone());
        }
    }
    spec.user = match &raw.user {
        None => None,
        Some(u) => {
            let user: User = u.get_ref().parse().map_err(|e: String| cx.err(u.span(), &key("user"), e))?;
            if kind == RuntimeKind::Process {
                host_user(&user).map_err(|e| cx.err(u.span(), &key("user"), e))?;
            }
            Some(user)
        }
    };
    spec.workdir = match &raw.workdir {
        None => None,
        Some(w) => {
            absolute(w.get_ref()).map_err(|e| cx.err(w.span(), &key("workdir"), e))?;
            Some(w.get_ref().clone())
        }
    };
    spec.entrypoint = match &raw.entrypoint {
        Some(e) if e.get_ref().is_empty() || e.get_ref()[0].trim().is_empty() => {
            return Err(cx.err(
                e.span(),
                &key("entrypoint"),
                "must not be empty: expected [\"/path/to/program\", \"arg\", ...], or leave it out",
            ))
        }
        Some(e) => Some(e.get_ref().clone()),
        None => None,
    };
    spec.read_only = raw.read_only.as_ref().is_some_and(|b| *b.get_ref());
    spec.init = raw.init.as_ref().is_some_and(|b| *b.get_ref());
    spec.memory = size(cx, &raw.memory, &key("memory"))?;
    spec.memory_reservation = size(cx, &raw.memory_reservation, &key("memory_reservation"))?;
    if let (Some(limit), Some(reservation), Some(r)) =
        (spec.memory, spec.memory_reservation, &raw.memory_reservation)
    {
        if reservation > limit {
            return Err(cx.err(
                r.span(),
                &key("memory_reservation"),
                format!("{reservation} is above memory = {limit}: the soft limit must be below the hard one"),
            ));
        }
    }
    spec.cpus = match &raw.cpus {
        None => None,
        Some(c) => Some(Cpus::from_cpus(*c.get_ref()).map_err(|e| cx.err(c.span(), &key("cpus"), e))?),
    };
    spec.pids_limit = match &raw.pids_limit {
        None => None,
        Some(_) => Some(cx.count(&raw.pids_limit, &key("pids_limit"), 0, 1)?),
    };
    spec.cap_drop = list(cx, &raw.cap_drop, &key("cap_drop"), capability)?;
    spec.cap_add = list(cx, &raw.cap_add, &key("cap_add"), capability)?;
    spec.extra_hosts = list(cx, &raw.extra_hosts, &key("extra_hosts"), |s| {
        let bad = || format!("{s:?} is not HOST:IP, e.g. \"db.internal:192.0.2.10\"");
        let (host, ip) = s.split_once(':').ok_or_else(bad)?;
        let ip_ok = ip.parse::<std::net::IpAddr>().is_ok() || ip == "host-gateway";
        (dns_name(host) && ip_ok).then(|| s.to_string()).ok_or_else(bad)
    })?;
    spec.log_driver = match &raw.log_driver {
        Some(d) if !docker_name(d.get_ref()) => {
            return Err(cx.err(
                d.span(),
                &key("log_driver"),
                format!("{:?} is not a log driver name", d.get_ref()),
            ))
        }
        Some(d) => Some(d.get_ref().clone()),
        None => None,
    };
    if let Some(opts) = &raw.log_opts {
        spec.log_opts = opts.get_ref().iter().map(|(k, v)| (k.clone(), v.get_ref().clone())).collect();
    }
    swarm_keys(cx, prefix, raw, kind, spec)?;

    spec.secrets = file_refs(cx, &raw.secrets, &key("secrets"), SECRET_MODE, |name| {
        let ok = !name.is_empty()
            && name != "."
            && name != ".."
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        ok.then_some(()).ok_or_else(|| {
            format!("{name:?} is not a secret name: expected letters, digits, '_', '-' and '.' (it becomes a file name)")
        })
    })?;
    spec.files = file_refs(cx, &raw.files, &key("files"), FILE_MODE, |target| {
        absolute(target)?;
        if Path::new(target).starts_with(SECRETS_DIR) {
            return Err(format!(
                "{target:?} is under {SECRETS_DIR}, where secrets land: use [secrets] for it"
            ));
        }
        Ok(())
    })?;
    // A file under a tmpfs would be hidden by it when the replica starts.
    for (target, f) in spec.container_files() {
        if let Some(t) = spec
            .tmpfs
            .iter()
            .map(|t| t.split(':').next().unwrap_or(""))
            .find(|t| Path::new(&target).starts_with(t))
        {
            let span = raw.tmpfs.as_ref().map_or(0..0, |t| t.span());
            return Err(cx.err(
                span,
                &key("tmpfs"),
                format!(
                    "{t} would hide {target} (from {}): a tmpfs is empty when the replica starts",
                    f.source
                ),
            ));
        }
    }
    Ok(())
}

/// The Swarm-only keys (`placement`, `max_replicas_per_node`), and what
/// the swarm runtime cannot apply of the rest (a tmpfs with options: a
/// Swarm tmpfs mount takes only a size and a mode, typed).
fn swarm_keys(
    cx: &Ctx<'_>,
    prefix: &str,
    raw: &RawService,
    kind: RuntimeKind,
    spec: &mut Spec,
) -> Result<(), ConfigError> {
    let key = |k: &str| format!("{prefix}.{k}");
    let only_swarm = |k: &str, span| {
        Err(cx.err(
            span,
            &key(k),
            format!(
                "only applies to the swarm runtime; the {} runtime cannot apply it: remove it or use [runtime] kind = \"swarm\"",
                kind.as_str()
            ),
        ))
    };
    if kind != RuntimeKind::Swarm {
        if let Some(p) = &raw.placement {
            return only_swarm("placement", p.span());
        }
        if let Some(m) = &raw.max_replicas_per_node {
            return only_swarm("max_replicas_per_node", m.span());
        }
        return Ok(());
    }
    spec.placement = list(cx, &raw.placement, &key("placement"), |s| {
        let ok = ["==", "!="]
            .iter()
            .any(|op| s.split_once(op).is_some_and(|(l, r)| !l.trim().is_empty() && !r.trim().is_empty()));
        ok.then(|| s.to_string()).ok_or_else(|| {
            format!("{s:?} is not a placement constraint: expected e.g. \"node.role==worker\"")
        })
    })?;
    spec.max_replicas_per_node = match &raw.max_replicas_per_node {
        None => None,
        Some(_) => Some(cx.count(&raw.max_replicas_per_node, &key("max_replicas_per_node"), 0, 1)?),
    };
    if let (Some(t), Some(i)) = (&raw.tmpfs, spec.tmpfs.iter().position(|t| t.contains(':'))) {
        let span = t.get_ref().get(i).map_or(t.span(), Spanned::span);
        return Err(cx.err(
            span,
            &format!("{}[{i}]", key("tmpfs")),
            "the swarm runtime cannot apply tmpfs options (a Swarm tmpfs mount takes no option string): give the path only",
        ));
    }
    Ok(())
}

/// Keys the process runtime cannot apply.
fn refuse_docker_only(cx: &Ctx<'_>, prefix: &str, raw: &RawService) -> Result<(), ConfigError> {
    use std::ops::Range;
    let span = |s: Option<Range<usize>>| s;
    let keys: [(&str, Option<Range<usize>>); 17] = [
        ("networks", span(raw.networks.as_ref().map(Spanned::span))),
        ("network_aliases", raw.network_aliases.as_ref().map(Spanned::span)),
        ("volumes", raw.volumes.as_ref().map(Spanned::span)),
        ("tmpfs", raw.tmpfs.as_ref().map(Spanned::span)),
        ("labels", raw.labels.as_ref().map(Spanned::span)),
        ("entrypoint", raw.entrypoint.as_ref().map(Spanned::span)),
        ("read_only", raw.read_only.as_ref().map(Spanned::span)),
        ("init", raw.init.as_ref().map(Spanned::span)),
        ("memory", raw.memory.as_ref().map(Spanned::span)),
        ("memory_reservation", raw.memory_reservation.as_ref().map(Spanned::span)),
        ("cpus", raw.cpus.as_ref().map(Spanned::span)),
        ("pids_limit", raw.pids_limit.as_ref().map(Spanned::span)),
        ("cap_drop", raw.cap_drop.as_ref().map(Spanned::span)),
        ("cap_add", raw.cap_add.as_ref().map(Spanned::span)),
        ("extra_hosts", raw.extra_hosts.as_ref().map(Spanned::span)),
        ("log_driver", raw.log_driver.as_ref().map(Spanned::span)),
        ("log_opts", raw.log_opts.as_ref().map(Spanned::span)),
    ];
    match keys.into_iter().find_map(|(k, s)| s.map(|s| (k, s))) {
        Some((k, span)) => Err(cx.err(
            span,
            &format!("{prefix}.{k}"),
            "only applies to the docker runtime; the process runtime cannot apply it: remove it or use [runtime] kind = \"docker\"",
        )),
        None => Ok(()),
    }
}

/// Each item of a list through `parse`, errors naming `key[i]`.
fn list<T>(
    cx: &Ctx<'_>,
    v: &Option<SpannedList>,
    key: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, ConfigError> {
    let Some(v) = v else { return Ok(Vec::new()) };
    v.get_ref()
        .iter()
        .enumerate()
        .map(|(i, item)| parse(item.get_ref()).map_err(|e| cx.err(item.span(), &format!("{key}[{i}]"), e)))
        .collect()
}

fn size(cx: &Ctx<'_>, v: &Option<Spanned<String>>, key: &str) -> Result<Option<ByteSize>, ConfigError> {
    let Some(v) = v else { return Ok(None) };
    let size: ByteSize = v.get_ref().parse().map_err(|e: String| cx.err(v.span(), key, e))?;
    if size.0 < MIN_MEMORY {
        return Err(cx.err(v.span(), key, format!("{size} is below the engine's minimum of 6MiB")));
    }
    Ok(Some(size))
}

/// `[secrets]` or `[files]`: each entry's name checked by `name_ok`, its
/// source readable, its mode octal.
fn file_refs(
    cx: &Ctx<'_>,
    v: &Option<Spanned<BTreeMap<Spanned<String>, Spanned<RawFileRef>>>>,
    key: &str,
    default_mode: FileMode,
    name_ok: impl Fn(&str) -> Result<(), String>,
) -> Result<BTreeMap<String, FileRef>, ConfigError> {
    let Some(v) = v else { return Ok(BTreeMap::new()) };
    let mut out = BTreeMap::new();
    for (name, entry) in v.get_ref() {
        let entry_key = format!("{key}.{:?}", name.get_ref()).replace(['"'], "");
        name_ok(name.get_ref()).map_err(|e| cx.err(name.span(), &entry_key, e))?;
        let raw = entry.get_ref();
        let source = raw.source.get_ref();
        readable(source).map_err(|e| cx.err(raw.source.span(), &format!("{entry_key}.source"), e))?;
        let mode = match &raw.mode {
            None => default_mode,
            Some(m) => {
                m.get_ref().parse().map_err(|e: String| cx.err(m.span(), &format!("{entry_key}.mode"), e))?
            }
        };
        out.insert(name.get_ref().clone(), FileRef { source: source.clone(), mode, sha256: None });
    }
    Ok(out)
}

/// The content of `path`, or why it cannot be read; a path that is not
/// absolute is refused (the agent's working directory is not the file's).
fn readable(path: &str) -> Result<String, String> {
    absolute(path)?;
    let meta =
        std::fs::metadata(path).map_err(|e| format!("{path}: {e}: the source must exist and be readable"))?;
    if !meta.is_file() {
        return Err(format!("{path} is not a regular file"));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}: the agent must be able to read it"))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// An absolute, normalized path other than `/`.
fn absolute(path: &str) -> Result<(), String> {
    let p = Path::new(path);
    if !p.is_absolute() || path == "/" {
        return Err(format!("{path:?} must be an absolute path, e.g. \"/app/data\""));
    }
    if p.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)) || path.contains("//") {
        return Err(format!("{path:?} must not hold '.' or '..' components"));
    }
    Ok(())
}

/// A network, log driver or similar name as Docker takes it.
pub(super) fn docker_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A host name (labels of letters, digits and '-', dot-separated).
fn dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// `ALL` or a capability name (`NET_BIND_SERVICE`, `CAP_` optional).
fn capability(s: &str) -> Result<String, String> {
    let name = s.strip_prefix("CAP_").unwrap_or(s);
    if !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is not a capability: expected e.g. \"NET_BIND_SERVICE\" or \"ALL\" (upper case)"))
    }
}

/// For the process runtime: a named user or group must exist on this host.
fn host_user(user: &User) -> Result<(), String> {
    if user.uid().is_none() && !matches!(nix::unistd::User::from_name(&user.user), Ok(Some(_))) {
        return Err(format!("user {:?} does not exist on this host", user.user));
    }
    if let Some(g) = &user.group {
        if user.gid().is_none() && !matches!(nix::unistd::Group::from_name(g), Ok(Some(_))) {
            return Err(format!("group {g:?} does not exist on this host"));
        }
    }
    Ok(())
}
