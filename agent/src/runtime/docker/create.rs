//! The engine's create request for one replica: its spec's keys mapped
//! onto bollard's `ContainerCreateBody` (env, labels, user, mounts,
//! limits, capabilities, logging, the first network), with the app port
//! published on `127.0.0.1`. Pure: no engine call, so the mapping is
//! unit-tested.

use super::files::upload_dirs;
use super::grace_secs;
use crate::api::Spec;
use crate::runtime::{labels, OneOff, ReplicaSpec};
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, HostConfigLogConfig, NetworkingConfig, PortBinding,
};
use std::collections::{BTreeMap, HashMap};

/// The app port's key in the engine's port maps, `5000/tcp`.
pub(super) fn port_key(spec: &ReplicaSpec) -> String {
    format!("{}/tcp", spec.app_port)
}

/// The endpoint a replica has on `network`: the spec's aliases.
pub(super) fn endpoint(spec: &Spec) -> EndpointSettings {
    EndpointSettings {
        aliases: (!spec.network_aliases.is_empty()).then(|| spec.network_aliases.clone()),
        ..Default::default()
    }
}

/// The create request for `replica`, running `image`, with `env` (env
/// files and env merged; `PORT` is set here).
pub(super) fn create_body(
    replica: &ReplicaSpec,
    image: &str,
    stop_signal: String,
    env: &BTreeMap<String, String>,
) -> ContainerCreateBody {
    let port_key = port_key(replica);
    let mut body = spec_body(&replica.spec, image, env, replica.app_port);
    let labels = body.labels.get_or_insert_with(HashMap::new);
    for (k, v) in [
        (labels::MANAGED, "true".to_string()),
        (labels::SERVICE, replica.service.clone()),
        (labels::COLOR, replica.color.to_string()),
        (labels::REVISION, replica.revision.to_string()),
        (labels::REPLICA, replica.replica.to_string()),
    ] {
        labels.insert(k.to_string(), v);
    }
    let host_config = body.host_config.get_or_insert_with(HostConfig::default);
    host_config.port_bindings = Some(HashMap::from([(
        port_key.clone(),
        Some(vec![PortBinding { host_ip: Some("127.0.0.1".into()), host_port: Some(String::new()) }]),
    )]));
    body.exposed_ports = Some(vec![port_key]);
    body.stop_signal = Some(stop_signal);
    body.stop_timeout = Some(grace_secs(replica.stop_grace));
    body
}

/// The create request for a one-off run (`bgctl run`): the spec with
/// `job.argv` as its command, no published port, labelled
/// `bg.oneoff=<service>` (never `bg.managed`, so it is no replica), its
/// output attached.
pub(super) fn oneoff_body(job: &OneOff, image: &str, env: &BTreeMap<String, String>) -> ContainerCreateBody {
    let mut body = spec_body(&job.spec, image, env, job.app_port);
    let labels = body.labels.get_or_insert_with(HashMap::new);
    labels.insert(labels::ONEOFF.to_string(), job.service.clone());
    labels.insert(labels::REVISION.to_string(), job.revision.to_string());
    body.cmd = Some(job.argv.clone());
    body.attach_stdout = Some(true);
    body.attach_stderr = Some(true);
    body
}

/// What a replica and a one-off run share: the spec's keys (env, labels,
/// user, mounts, limits, capabilities, logging, the first network).
/// Labels under `bg.` are the agent's own and never taken from the spec.
fn spec_body(spec: &Spec, image: &str, env: &BTreeMap<String, String>, app_port: u16) -> ContainerCreateBody {
    let mut env: Vec<String> =
        env.iter().filter(|(k, _)| k.as_str() != "PORT").map(|(k, v)| format!("{k}={v}")).collect();
    env.push(format!("PORT={app_port}"));
    let container_labels: HashMap<String, String> = spec
        .labels
        .iter()
        .filter(|(k, _)| !k.starts_with("bg."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let non_empty = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    let log_config = (spec.log_driver.is_some() || !spec.log_opts.is_empty()).then(|| HostConfigLogConfig {
        typ: spec.log_driver.clone(),
        config: (!spec.log_opts.is_empty())
            .then(|| spec.log_opts.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
    });
    let tmpfs = (!spec.tmpfs.is_empty()).then(|| {
        spec.tmpfs
            .iter()
            .map(|t| match t.split_once(':') {
                Some((path, opts)) => (path.to_string(), opts.to_string()),
                None => (t.clone(), String::new()),
            })
            .collect()
    });
    let host_config = HostConfig {
        binds: (!spec.volumes.is_empty()).then(|| spec.volumes.iter().map(|v| v.to_string()).collect()),
        tmpfs,
        readonly_rootfs: spec.read_only.then_some(true),
        init: spec.init.then_some(true),
        memory: spec.memory.map(|m| m.0 as i64),
        memory_reservation: spec.memory_reservation.map(|m| m.0 as i64),
        nano_cpus: spec.cpus.map(|c| c.0 as i64),
        pids_limit: spec.pids_limit.map(i64::from),
        cap_drop: non_empty(&spec.cap_drop),
        cap_add: non_empty(&spec.cap_add),
        extra_hosts: non_empty(&spec.extra_hosts),
        log_config,
        // API 1.41 takes one network at create; the others are connected
        // before the start.
        network_mode: spec.networks.first().cloned(),
        ..Default::default()
    };
    let networking_config = spec.networks.first().map(|net| NetworkingConfig {
        endpoints_config: Some(HashMap::from([(net.clone(), endpoint(spec))])),
    });
    ContainerCreateBody {
        image: Some(image.to_string()),
        env: Some(env),
        cmd: spec.command.clone(),
        entrypoint: spec.entrypoint.clone(),
        user: spec.user.as_ref().map(|u| u.to_string()),
        working_dir: spec.workdir.clone(),
        labels: Some(container_labels),
        // Where secrets and files go on a read-only root: see `files`.
        volumes: (spec.read_only && !upload_dirs(spec).is_empty()).then(|| upload_dirs(spec)),
        host_config: Some(host_config),
        networking_config,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ByteSize, Color, Cpus, FileRef, SECRET_MODE};
    use crate::runtime::PullPolicy;
    use std::time::Duration;

    fn replica(spec: Spec) -> ReplicaSpec {
        ReplicaSpec {
            service: "web".into(),
            color: Color::Blue,
            revision: 3,
            replica: 1,
            replicas: 1,
            spec,
            app_port: 5000,
            pull: PullPolicy::Missing,
            stop_signal: "SIGTERM".into(),
            stop_grace: Duration::from_secs(2),
        }
    }

    #[test]
    fn every_key_reaches_the_create_request() {
        let mut spec = Spec {
            image: Some("websample:v1".into()),
            networks: vec!["backend".into(), "other".into()],
            network_aliases: vec!["web".into()],
            volumes: vec!["uploads:/app/uploads".parse().unwrap()],
            tmpfs: vec!["/tmp:size=1m".into()],
            user: Some("1000:1000".parse().unwrap()),
            workdir: Some("/app".into()),
            read_only: true,
            init: true,
            memory: Some(ByteSize(64 << 20)),
            cpus: Some(Cpus::from_cpus(0.5).unwrap()),
            pids_limit: Some(64),
            cap_drop: vec!["ALL".into()],
            log_driver: Some("json-file".into()),
            ..Default::default()
        };
        spec.labels.insert("bg.service".into(), "spoofed".into());
        spec.labels.insert("team".into(), "web".into());
        spec.log_opts.insert("max-size".into(), "1m".into());
        spec.secrets.insert(
            "pw".into(),
            FileRef { source: "/x".into(), mode: SECRET_MODE, sha256: Some("ab".into()) },
        );
        let mut env = BTreeMap::new();
        env.insert("PORT".to_string(), "1".to_string());
        env.insert("A".to_string(), "b".to_string());
        let body = create_body(&replica(spec), "websample:v1", "SIGTERM".into(), &env);
        let host = body.host_config.as_ref().unwrap();
        assert_eq!(body.env.as_ref().unwrap(), &vec!["A=b".to_string(), "PORT=5000".to_string()]);
        assert_eq!(body.labels.as_ref().unwrap()["bg.service"], "web");
        assert_eq!(body.labels.as_ref().unwrap()["team"], "web");
        assert_eq!(body.user.as_deref(), Some("1000:1000"));
        assert_eq!(host.network_mode.as_deref(), Some("backend"));
        assert_eq!(host.binds.as_ref().unwrap(), &vec!["uploads:/app/uploads".to_string()]);
        assert_eq!(host.tmpfs.as_ref().unwrap()["/tmp"], "size=1m");
        assert_eq!(
            (host.memory, host.nano_cpus, host.pids_limit),
            (Some(64 << 20), Some(500_000_000), Some(64))
        );
        assert_eq!(body.volumes.as_ref().unwrap(), &vec!["/run/secrets".to_string()]);
        assert_eq!(host.log_config.as_ref().unwrap().config.as_ref().unwrap()["max-size"], "1m");
        let endpoints = body.networking_config.unwrap().endpoints_config.unwrap();
        assert_eq!(endpoints["backend"].aliases.as_ref().unwrap(), &vec!["web".to_string()]);
    }
}
