//! One color as a Swarm service: a replica spec mapped onto bollard's
//! `ServiceSpec` (task template, resources, placement, networks, secrets
//! and configs, restart policy). Pure: no engine call, so the mapping is
//! unit-tested.

use super::labels as swarm_labels;
use crate::api::{Spec, VolumeSource};
use crate::runtime::{labels, ReplicaSpec};
use bollard::models::{
    Limit, Mount, MountType, NetworkAttachmentConfig, ResourceObject, ServiceSpec, ServiceSpecMode,
    ServiceSpecModeReplicated, TaskSpec, TaskSpecContainerSpec, TaskSpecContainerSpecConfigs,
    TaskSpecContainerSpecFile, TaskSpecContainerSpecFile1, TaskSpecContainerSpecSecrets, TaskSpecLogDriver,
    TaskSpecPlacement, TaskSpecResources, TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum,
};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Wait before Swarm replaces a task that exited (1 second): Swarm's
/// default of 5 s would leave a killed replica's slot empty longer than
/// the proxy needs to notice it.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// `bg-<service>-<color>`: the Swarm service of one color.
pub fn service_name(service: &str, color: crate::api::Color) -> String {
    format!("bg-{service}-{color}")
}

/// A Swarm secret or config the runtime created, as a task references it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ObjectRef {
    /// The object's id.
    pub id: String,
    /// Its name, `bg-<service>-<sha256 prefix>`.
    pub name: String,
    /// Where it lands: a secret's name below `/run/secrets`, a config's
    /// absolute path.
    pub target: String,
    /// Its file mode.
    pub mode: u32,
}

/// What a color's service is made of besides the replica spec.
pub(super) struct Parts<'a> {
    /// The image tasks run (pinned by digest where one is known).
    pub image: &'a str,
    /// Env files and env merged; `PORT` is set here.
    pub env: &'a BTreeMap<String, String>,
    /// The network the agent reaches tasks on; joined first.
    pub task_network: &'a str,
    /// The spec's secrets, created as Swarm secrets.
    pub secrets: &'a [ObjectRef],
    /// The spec's files, created as Swarm configs.
    pub configs: &'a [ObjectRef],
}

/// The service of `replica`'s color, with `replica.replicas` tasks.
pub(super) fn service_spec(replica: &ReplicaSpec, parts: &Parts<'_>) -> ServiceSpec {
    let spec = &replica.spec;
    let mut service_labels = HashMap::from([
        (labels::MANAGED.to_string(), "true".to_string()),
        (labels::SERVICE.to_string(), replica.service.clone()),
        (labels::COLOR.to_string(), replica.color.to_string()),
        (labels::REVISION.to_string(), replica.revision.to_string()),
        (swarm_labels::APP_PORT.to_string(), replica.app_port.to_string()),
    ]);
    // The container labels name the service too (for `docker ps`), but
    // never `bg.managed`: a task's container is no docker-runtime replica.
    let mut container_labels: HashMap<String, String> = spec
        .labels
        .iter()
        .filter(|(k, _)| !k.starts_with("bg."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    container_labels.insert(labels::SERVICE.to_string(), replica.service.clone());
    container_labels.insert(labels::COLOR.to_string(), replica.color.to_string());
    service_labels.extend(
        spec.labels.iter().filter(|(k, _)| !k.starts_with("bg.")).map(|(k, v)| (k.clone(), v.clone())),
    );

    let mut env: Vec<String> =
        parts.env.iter().filter(|(k, _)| k.as_str() != "PORT").map(|(k, v)| format!("{k}={v}")).collect();
    env.push(format!("PORT={}", replica.app_port));
    let (uid, gid) = owner(spec);
    let container_spec = TaskSpecContainerSpec {
        image: Some(parts.image.to_string()),
        labels: Some(container_labels),
        // Swarm's `Command` is the image's entrypoint, `Args` its command.
        command: spec.entrypoint.clone(),
        args: spec.command.clone(),
        env: Some(env),
        dir: spec.workdir.clone(),
        user: spec.user.as_ref().map(|u| u.to_string()),
        read_only: spec.read_only.then_some(true),
        init: spec.init.then_some(true),
        mounts: Some(mounts(spec)).filter(|m| !m.is_empty()),
        stop_signal: Some(replica.stop_signal.clone()),
        stop_grace_period: Some(nanos(replica.stop_grace)),
        // Docker's `HOST:IP` becomes the hosts file's `IP HOST`.
        hosts: Some(
            spec.extra_hosts
                .iter()
                .filter_map(|h| h.split_once(':').map(|(host, ip)| format!("{ip} {host}")))
                .collect::<Vec<_>>(),
        )
        .filter(|h| !h.is_empty()),
        secrets: Some(
            parts
                .secrets
                .iter()
                .map(|s| TaskSpecContainerSpecSecrets {
                    file: Some(TaskSpecContainerSpecFile {
                        name: Some(s.target.clone()),
                        uid: Some(uid.clone()),
                        gid: Some(gid.clone()),
                        mode: Some(s.mode),
                    }),
                    secret_id: Some(s.id.clone()),
                    secret_name: Some(s.name.clone()),
                })
                .collect::<Vec<_>>(),
        )
        .filter(|s| !s.is_empty()),
        configs: Some(
            parts
                .configs
                .iter()
                .map(|c| TaskSpecContainerSpecConfigs {
                    file: Some(TaskSpecContainerSpecFile1 {
                        name: Some(c.target.clone()),
                        uid: Some(uid.clone()),
                        gid: Some(gid.clone()),
                        mode: Some(c.mode),
                    }),
                    config_id: Some(c.id.clone()),
                    config_name: Some(c.name.clone()),
                    ..Default::default()
                })
                .collect::<Vec<_>>(),
        )
        .filter(|c| !c.is_empty()),
        capability_add: Some(spec.cap_add.clone()).filter(|c| !c.is_empty()),
        capability_drop: Some(spec.cap_drop.clone()).filter(|c| !c.is_empty()),
        ..Default::default()
    };
    let limits = (spec.memory.is_some() || spec.cpus.is_some() || spec.pids_limit.is_some()).then(|| Limit {
        nano_cpus: spec.cpus.map(|c| c.0 as i64),
        memory_bytes: spec.memory.map(|m| m.0 as i64),
        pids: spec.pids_limit.map(i64::from),
    });
    let reservations = spec
        .memory_reservation
        .map(|m| ResourceObject { memory_bytes: Some(m.0 as i64), ..Default::default() });
    let mut networks =
        vec![NetworkAttachmentConfig { target: Some(parts.task_network.to_string()), ..Default::default() }];
    networks.extend(spec.networks.iter().filter(|n| n.as_str() != parts.task_network).map(|n| {
        NetworkAttachmentConfig {
            target: Some(n.clone()),
            aliases: Some(spec.network_aliases.clone()).filter(|a| !a.is_empty()),
            ..Default::default()
        }
    }));
    let task = TaskSpec {
        container_spec: Some(container_spec),
        resources: (limits.is_some() || reservations.is_some()).then(|| TaskSpecResources {
            limits,
            reservations,
            ..Default::default()
        }),
        restart_policy: Some(TaskSpecRestartPolicy {
            condition: Some(TaskSpecRestartPolicyConditionEnum::ANY),
            delay: Some(nanos(RESTART_DELAY)),
            ..Default::default()
        }),
        placement: (!spec.placement.is_empty() || spec.max_replicas_per_node.is_some()).then(|| {
            TaskSpecPlacement {
                constraints: Some(spec.placement.clone()).filter(|p| !p.is_empty()),
                max_replicas: spec.max_replicas_per_node.map(i64::from),
                ..Default::default()
            }
        }),
        networks: Some(networks),
        log_driver: (spec.log_driver.is_some() || !spec.log_opts.is_empty()).then(|| TaskSpecLogDriver {
            name: Some(spec.log_driver.clone().unwrap_or_else(|| "json-file".into())),
            options: Some(spec.log_opts.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
        }),
        ..Default::default()
    };
    ServiceSpec {
        name: Some(service_name(&replica.service, replica.color)),
        labels: Some(service_labels),
        task_template: Some(task),
        mode: Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated { replicas: Some(i64::from(replica.replicas)) }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Volumes and tmpfs mounts.
fn mounts(spec: &Spec) -> Vec<Mount> {
    let volumes = spec.volumes.iter().map(|v| {
        let (typ, source) = match &v.source {
            VolumeSource::Named(n) => (MountType::VOLUME, n.clone()),
            VolumeSource::Host(p) => (MountType::BIND, p.clone()),
        };
        Mount {
            target: Some(v.target.clone()),
            source: Some(source),
            typ: Some(typ),
            read_only: v.read_only.then_some(true),
            ..Default::default()
        }
    });
    // Paths only: the config check refuses tmpfs options for swarm.
    let tmpfs = spec.tmpfs.iter().map(|t| Mount {
        target: Some(t.split(':').next().unwrap_or(t).to_string()),
        typ: Some(MountType::TMPFS),
        ..Default::default()
    });
    volumes.chain(tmpfs).collect()
}

/// The owner of secrets and configs in the task: the spec's numeric user
/// and group, else root (Swarm takes numbers only).
fn owner(spec: &Spec) -> (String, String) {
    let uid = spec.user.as_ref().and_then(|u| u.uid()).unwrap_or(0);
    let gid = spec.user.as_ref().and_then(|u| u.gid()).unwrap_or(uid);
    (uid.to_string(), gid.to_string())
}

/// Nanoseconds, as Swarm takes durations.
fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// The replica count a service asks for, 0 when it says none.
pub(super) fn replicas_of(spec: &ServiceSpec) -> u32 {
    spec.mode
        .as_ref()
        .and_then(|m| m.replicated.as_ref())
        .and_then(|r| r.replicas)
        .and_then(|r| u32::try_from(r).ok())
        .unwrap_or(0)
}

/// Set the replica count of a service's spec.
pub(super) fn set_replicas(spec: &mut ServiceSpec, replicas: u32) {
    spec.mode = Some(ServiceSpecMode {
        replicated: Some(ServiceSpecModeReplicated { replicas: Some(i64::from(replicas)) }),
        ..Default::default()
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ByteSize, Color, Cpus, Spec, User};
    use crate::runtime::PullPolicy;

    fn replica(spec: Spec) -> ReplicaSpec {
        ReplicaSpec {
            service: "web".into(),
            color: Color::Green,
            revision: 3,
            replica: 1,
            replicas: 2,
            spec,
            app_port: 5000,
            pull: PullPolicy::Missing,
            stop_signal: "SIGTERM".into(),
            stop_grace: Duration::from_secs(2),
        }
    }

    #[test]
    fn a_color_is_one_replicated_service_on_the_task_network() {
        let spec = Spec {
            image: Some("websample:v1".into()),
            entrypoint: Some(vec!["/app/server".into()]),
            command: Some(vec!["--fast".into()]),
            networks: vec!["backend".into()],
            network_aliases: vec!["web".into()],
            placement: vec!["node.role==worker".into()],
            max_replicas_per_node: Some(1),
            memory: Some(ByteSize(64 << 20)),
            cpus: Some(Cpus::from_cpus(0.5).unwrap()),
            extra_hosts: vec!["db.internal:192.0.2.10".into()],
            user: Some("1000:2000".parse::<User>().unwrap()),
            ..Default::default()
        };
        let env = BTreeMap::from([("VERSION".to_string(), "v1".to_string())]);
        let secrets =
            [ObjectRef { id: "s1".into(), name: "bg-web-ab".into(), target: "db".into(), mode: 0o400 }];
        let parts = Parts {
            image: "websample:v1",
            env: &env,
            task_network: "bg-tasks",
            secrets: &secrets,
            configs: &[],
        };
        let s = service_spec(&replica(spec), &parts);
        assert_eq!(s.name.as_deref(), Some("bg-web-green"));
        assert_eq!(replicas_of(&s), 2);
        let labels = s.labels.as_ref().unwrap();
        assert_eq!(labels["bg.revision"], "3");
        assert_eq!(labels["bg.color"], "green");
        let task = s.task_template.unwrap();
        let c = task.container_spec.unwrap();
        assert_eq!(c.command, Some(vec!["/app/server".to_string()]));
        assert_eq!(c.args, Some(vec!["--fast".to_string()]));
        assert!(c.env.unwrap().contains(&"PORT=5000".to_string()));
        assert_eq!(c.hosts, Some(vec!["192.0.2.10 db.internal".to_string()]));
        assert!(!c.labels.unwrap().contains_key("bg.managed"));
        let secret = &c.secrets.unwrap()[0];
        let file = secret.file.as_ref().unwrap();
        assert_eq!(
            (file.uid.as_deref(), file.gid.as_deref(), file.mode),
            (Some("1000"), Some("2000"), Some(0o400))
        );
        let nets: Vec<_> =
            task.networks.unwrap().into_iter().map(|n| (n.target.unwrap(), n.aliases)).collect();
        assert_eq!(nets[0], ("bg-tasks".to_string(), None));
        assert_eq!(nets[1], ("backend".to_string(), Some(vec!["web".to_string()])));
        let placement = task.placement.unwrap();
        assert_eq!(placement.max_replicas, Some(1));
        assert_eq!(placement.constraints, Some(vec!["node.role==worker".to_string()]));
        let limits = task.resources.unwrap().limits.unwrap();
        assert_eq!(limits.nano_cpus, Some(500_000_000));
        assert_eq!(limits.memory_bytes, Some(64 << 20));
    }

    #[test]
    fn replica_counts_round_trip() {
        let mut s = ServiceSpec::default();
        assert_eq!(replicas_of(&s), 0);
        set_replicas(&mut s, 3);
        assert_eq!(replicas_of(&s), 3);
    }
}
