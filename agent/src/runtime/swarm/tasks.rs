//! Reading Swarm tasks: which task holds a replica's slot now, what its
//! state means to the controller, why one failed, and where a task on
//! another node is reached. Pure, over bollard's `Task` and the verbose
//! view of a network.

use crate::runtime::RunState;
use bollard::models::{ServiceInfo, Task, TaskState};
use std::collections::HashMap;
use std::net::IpAddr;

/// Whether Swarm wants the task running and it runs.
pub fn is_running(task: &Task) -> bool {
    task.desired_state == Some(TaskState::RUNNING)
        && task.status.as_ref().and_then(|s| s.state) == Some(TaskState::RUNNING)
}

/// The slot (replica number) of a task, from 1.
pub fn slot_of(task: &Task) -> Option<u32> {
    task.slot.and_then(|s| u32::try_from(s).ok()).filter(|s| *s > 0)
}

/// The running task of `slot`, the newest if Swarm briefly runs two.
pub fn running_in_slot(tasks: &[Task], slot: u32) -> Option<&Task> {
    tasks
        .iter()
        .filter(|t| slot_of(t) == Some(slot) && is_running(t))
        .max_by_key(|t| t.created_at.as_ref().map(|d| d.to_string()))
}

/// The container a task runs in, once Swarm started one.
pub fn container_of(task: &Task) -> Option<&str> {
    task.status.as_ref()?.container_status.as_ref()?.container_id.as_deref().filter(|c| !c.is_empty())
}

/// What a task's state means to the controller: running, or ended with
/// its container's exit code (`-1` when it never ran: rejected, removed).
pub fn run_state(task: &Task) -> RunState {
    let state = task.status.as_ref().and_then(|s| s.state);
    match state {
        Some(TaskState::RUNNING) if task.desired_state == Some(TaskState::RUNNING) => {
            RunState::Running { native_health: None }
        }
        // Still on its way to running: it counts as running (not passing
        // health checks yet) unless Swarm gave up on it.
        Some(
            TaskState::NEW
            | TaskState::ALLOCATED
            | TaskState::PENDING
            | TaskState::ASSIGNED
            | TaskState::ACCEPTED
            | TaskState::PREPARING
            | TaskState::READY
            | TaskState::STARTING,
        ) if task.desired_state == Some(TaskState::RUNNING) => {
            RunState::Running { native_health: Some(false) }
        }
        _ => RunState::Exited { code: exit_code(task).unwrap_or(-1) },
    }
}

/// Whether Swarm itself shut the task down (a lower task count, an
/// update), as opposed to the task failing or exiting on its own.
pub fn shut_down_by_swarm(task: &Task) -> bool {
    task.desired_state != Some(TaskState::RUNNING)
        && matches!(task.status.as_ref().and_then(|s| s.state), Some(TaskState::SHUTDOWN | TaskState::REMOVE))
}

/// The exit code of the task's container, where it exited.
pub fn exit_code(task: &Task) -> Option<i64> {
    task.status.as_ref()?.container_status.as_ref()?.exit_code
}

/// Why the newest failed task of `slot` failed, for an error message.
pub fn failure_in_slot(tasks: &[Task], slot: u32) -> Option<String> {
    tasks
        .iter()
        .filter(|t| slot_of(t) == Some(slot))
        .filter(|t| {
            matches!(t.status.as_ref().and_then(|s| s.state), Some(TaskState::FAILED | TaskState::REJECTED))
        })
        .max_by_key(|t| t.created_at.as_ref().map(|d| d.to_string()))
        .and_then(|t| t.status.as_ref())
        .map(|s| {
            let err = s.err.clone().unwrap_or_default();
            let msg = s.message.clone().unwrap_or_default();
            match (err.is_empty(), msg.is_empty()) {
                (false, false) => format!("{msg}: {err}"),
                (false, true) => err,
                _ => msg,
            }
        })
        .filter(|m| !m.is_empty())
}

/// The address of task `task_id` of Swarm service `service` in a
/// network's verbose view (`Services` of `GET /networks/ID?verbose=true`
/// on a manager attached to it): Swarm's record of every task on that
/// network, whatever node it runs on. A task there is named
/// `<service>.<slot>.<task id>`.
pub fn addr_in_network_view(
    services: &HashMap<String, serde_json::Value>,
    service: &str,
    task_id: &str,
) -> Option<IpAddr> {
    let info: ServiceInfo = serde_json::from_value(services.get(service)?.clone()).ok()?;
    let suffix = format!(".{task_id}");
    info.tasks?
        .into_iter()
        .find(|t| t.name.as_deref().is_some_and(|n| n.ends_with(&suffix)))?
        .endpoint_ip?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerStatus, TaskStatus};

    fn task(id: &str, slot: i64, state: TaskState, desired: TaskState) -> Task {
        Task {
            id: Some(id.into()),
            slot: Some(slot),
            desired_state: Some(desired),
            status: Some(TaskStatus {
                state: Some(state),
                err: (state == TaskState::FAILED).then(|| "task: non-zero exit (137)".to_string()),
                container_status: Some(ContainerStatus {
                    container_id: Some(format!("c-{id}")),
                    exit_code: (state == TaskState::FAILED).then_some(137),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_killed_task_is_exited_and_its_replacement_holds_the_slot() {
        let killed = task("a", 1, TaskState::FAILED, TaskState::SHUTDOWN);
        let replacement = task("b", 1, TaskState::RUNNING, TaskState::RUNNING);
        let other = task("c", 2, TaskState::RUNNING, TaskState::RUNNING);
        assert_eq!(run_state(&killed), RunState::Exited { code: 137 });
        let tasks = vec![killed, replacement, other];
        assert_eq!(running_in_slot(&tasks, 1).and_then(|t| t.id.as_deref()), Some("b"));
        assert_eq!(container_of(running_in_slot(&tasks, 2).unwrap()), Some("c-c"));
        assert_eq!(failure_in_slot(&tasks, 1).as_deref(), Some("task: non-zero exit (137)"));
        assert_eq!(running_in_slot(&tasks, 3), None);
    }

    #[test]
    fn a_starting_task_runs_but_does_not_pass() {
        let t = task("a", 1, TaskState::PREPARING, TaskState::RUNNING);
        assert_eq!(run_state(&t), RunState::Running { native_health: Some(false) });
        let shutting = task("a", 1, TaskState::RUNNING, TaskState::SHUTDOWN);
        assert_eq!(run_state(&shutting), RunState::Exited { code: -1 });
        assert!(!shut_down_by_swarm(&shutting), "still running");
        let scaled_away = task("a", 2, TaskState::SHUTDOWN, TaskState::SHUTDOWN);
        assert!(shut_down_by_swarm(&scaled_away));
        let killed = task("a", 1, TaskState::FAILED, TaskState::SHUTDOWN);
        assert!(!shut_down_by_swarm(&killed));
    }

    #[test]
    fn a_task_on_another_node_is_found_in_the_networks_view() {
        // As a manager's engine answers `docker network inspect -v`.
        let view: HashMap<String, serde_json::Value> = serde_json::from_str(
            r#"{
                "bg-web-blue": {"VIP": "10.0.1.2", "Ports": [], "LocalLBIndex": 257, "Tasks": [
                    {"Name": "bg-web-blue.1.k2n5abc", "EndpointID": "e1", "EndpointIP": "10.0.1.3",
                     "Info": {"Host IP": "10.213.7.1"}},
                    {"Name": "bg-web-blue.2.q9x1def", "EndpointID": "e2", "EndpointIP": "10.0.1.4",
                     "Info": {"Host IP": "10.213.7.2"}}
                ]},
                "bg-web-green": {"VIP": "10.0.1.8", "Tasks": null}
            }"#,
        )
        .unwrap();
        assert_eq!(addr_in_network_view(&view, "bg-web-blue", "q9x1def"), Some("10.0.1.4".parse().unwrap()));
        assert_eq!(
            addr_in_network_view(&view, "bg-web-blue", "9x1def"),
            None,
            "a whole id, not a suffix of one"
        );
        assert_eq!(addr_in_network_view(&view, "bg-web-green", "q9x1def"), None);
        assert_eq!(addr_in_network_view(&view, "bg-api-blue", "q9x1def"), None);
    }
}
