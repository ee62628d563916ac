//! Text rendering for people: aligned tables for status, replicas and
//! history, one line per event, one line per outcome. No color codes, so the
//! output reads the same in a terminal, a pipe or a CI log.

use bg_api::{
    Color, EventKind, History, OperationKind, Outcome, OutcomeKind, ReplicaState, ServiceStatus, Spec,
};

/// A plain text table: a header row and rows, columns separated by two
/// spaces and left-aligned, trailing spaces trimmed.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new<S: AsRef<str>>(header: &[S]) -> Table {
        Table { rows: vec![header.iter().map(|s| s.as_ref().to_string()).collect()] }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The lines of the table, each prefixed by `indent`.
    pub fn lines(&self, indent: &str) -> Vec<String> {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..cols)
            .map(|c| self.rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
            .collect();
        self.rows
            .iter()
            .map(|r| {
                let mut line = indent.to_string();
                for (c, cell) in r.iter().enumerate() {
                    if c > 0 {
                        line.push_str("  ");
                    }
                    line.push_str(cell);
                    let pad = widths[c].saturating_sub(cell.chars().count());
                    line.push_str(&" ".repeat(pad));
                }
                line.trim_end().to_string()
            })
            .collect()
    }
}

/// The wire name of an operation kind, e.g. `rolling`.
pub fn kind_name(kind: OperationKind) -> &'static str {
    match kind {
        OperationKind::Deploy => "deploy",
        OperationKind::Promote => "promote",
        OperationKind::Canary => "canary",
        OperationKind::Rollback => "rollback",
        OperationKind::Abort => "abort",
        OperationKind::Rolling => "rolling",
        OperationKind::Replica => "replica",
    }
}

/// The wire name of an outcome, e.g. `rolled-back`.
pub fn outcome_name(outcome: OutcomeKind) -> &'static str {
    match outcome {
        OutcomeKind::Succeeded => "succeeded",
        OutcomeKind::Failed => "failed",
        OutcomeKind::RolledBack => "rolled-back",
        OutcomeKind::Aborted => "aborted",
        OutcomeKind::Paused => "paused",
    }
}

fn health_name(h: bg_api::Health) -> &'static str {
    match h {
        bg_api::Health::Starting => "starting",
        bg_api::Health::Healthy => "healthy",
        bg_api::Health::Unhealthy => "unhealthy",
    }
}

fn state_name(s: ReplicaState) -> &'static str {
    match s {
        ReplicaState::Serving => "serving",
        ReplicaState::Draining => "draining",
        ReplicaState::Out => "out",
        ReplicaState::Stopped => "stopped",
    }
}

/// A spec in a few words: the image or the command, and the env keys.
pub fn spec_summary(spec: &Spec) -> String {
    let mut parts = Vec::new();
    if let Some(image) = &spec.image {
        parts.push(image.clone());
    }
    if let Some(command) = &spec.command {
        parts.push(command.join(" "));
    }
    if !spec.env.is_empty() {
        let env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        parts.push(format!("env {}", env.join(" ")));
    }
    if parts.is_empty() {
        "configured spec".to_string()
    } else {
        parts.join(", ")
    }
}

/// The container keys of a spec, one `key value` line each (secrets,
/// files and env files by source and sha256, never content).
pub fn spec_details(spec: &Spec) -> Vec<String> {
    let mut out = Vec::new();
    let mut line = |key: &str, value: String| out.push(format!("{key} {value}"));
    let join = |v: &[String]| v.join(" ");
    if let Some(d) = &spec.digest {
        line("digest", d.clone());
    }
    let sha =
        |s: &Option<String>| s.as_deref().map_or("(not read yet)".to_string(), |s| format!("sha256:{s}"));
    for f in &spec.env_file {
        line("env_file", format!("{} {}", f.path, sha(&f.sha256)));
    }
    for (k, v) in [
        ("networks", &spec.networks),
        ("network_aliases", &spec.network_aliases),
        ("tmpfs", &spec.tmpfs),
        ("cap_drop", &spec.cap_drop),
        ("cap_add", &spec.cap_add),
        ("extra_hosts", &spec.extra_hosts),
    ] {
        if !v.is_empty() {
            line(k, join(v));
        }
    }
    if !spec.volumes.is_empty() {
        line("volumes", spec.volumes.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(" "));
    }
    let map = |m: &std::collections::BTreeMap<String, String>| {
        m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
    };
    if !spec.labels.is_empty() {
        line("labels", map(&spec.labels));
    }
    for (k, v) in [
        ("user", spec.user.as_ref().map(|u| u.to_string())),
        ("workdir", spec.workdir.clone()),
        ("entrypoint", spec.entrypoint.as_ref().map(|e| e.join(" "))),
        ("read_only", spec.read_only.then(|| "true".to_string())),
        ("init", spec.init.then(|| "true".to_string())),
        ("memory", spec.memory.map(|m| m.to_string())),
        ("memory_reservation", spec.memory_reservation.map(|m| m.to_string())),
        ("cpus", spec.cpus.map(|c| c.to_string())),
        ("pids_limit", spec.pids_limit.map(|p| p.to_string())),
        ("log_driver", spec.log_driver.clone()),
    ] {
        if let Some(v) = v {
            line(k, v);
        }
    }
    if !spec.log_opts.is_empty() {
        line("log_opts", map(&spec.log_opts));
    }
    for (name, f) in &spec.secrets {
        line("secret", format!("{name} from {} mode {} {}", f.source, f.mode, sha(&f.sha256)));
    }
    for (target, f) in &spec.files {
        line("file", format!("{target} from {} mode {} {}", f.source, f.mode, sha(&f.sha256)));
    }
    out
}

/// The weights as `blue 90 / green 10`.
pub fn weights_text(s: &ServiceStatus) -> String {
    format!("blue {} / green {}", s.weights.blue, s.weights.green)
}

/// The running operation as `deploy #12 health: 1/2 healthy`, or `-`.
fn operation_text(s: &ServiceStatus) -> String {
    match &s.operation {
        None => "-".to_string(),
        Some(op) => {
            let mut t = format!("{} #{} {}", kind_name(op.kind), op.id, op.phase);
            if !op.detail.is_empty() {
                t.push_str(": ");
                t.push_str(&op.detail);
            }
            t
        }
    }
}

/// A fleet's status as one table: a row per host and service (a host that
/// could not be asked gets one row saying why).
pub fn fleet_status(hosts: &[(String, Result<Vec<ServiceStatus>, String>)]) -> String {
    let mut t = Table::new(&["HOST", "SERVICE", "ACTIVE", "REVISION", "WEIGHTS", "HEALTHY", "OPERATION"]);
    for (host, services) in hosts {
        match services {
            Err(e) => t.row(vec![
                host.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                e.clone(),
            ]),
            Ok(list) => {
                for s in list {
                    let serving: Vec<_> = s
                        .active
                        .and_then(|a| s.colors.get(&a))
                        .map(|c| c.replicas.iter().collect())
                        .unwrap_or_default();
                    let healthy = serving.iter().filter(|r| r.health == bg_api::Health::Healthy).count();
                    let mut operation = operation_text(s);
                    if let Some(line) = traffic_line(&s.traffic) {
                        operation = format!("{operation} ({})", line.split(':').next().unwrap_or_default());
                    }
                    t.row(vec![
                        host.clone(),
                        s.name.clone(),
                        s.active.map_or("-", Color::as_str).to_string(),
                        s.revision.to_string(),
                        weights_text(s),
                        format!("{healthy}/{}", serving.len()),
                        operation,
                    ]);
                }
            }
        }
    }
    t.lines("").join("\n") + "\n"
}

/// The status of services as text: a summary table, then per service and
/// color the replicas.
pub fn services(list: &[ServiceStatus]) -> String {
    let mut out = Vec::new();
    let mut summary = Table::new(&["SERVICE", "ACTIVE", "WEIGHTS", "REVISION", "OPERATION"]);
    for s in list {
        summary.row(vec![
            s.name.clone(),
            s.active.map_or("-", Color::as_str).to_string(),
            weights_text(s),
            s.revision.to_string(),
            operation_text(s),
        ]);
    }
    out.extend(summary.lines(""));
    for s in list {
        out.push(String::new());
        out.extend(service_detail(s));
    }
    out.join("\n") + "\n"
}

/// The gate in words, `None` while requests go on.
pub fn traffic_line(t: &bg_api::Traffic) -> Option<String> {
    match t {
        bg_api::Traffic::Open => None,
        bg_api::Traffic::Paused { since, max_ms } => Some(format!(
            "paused since {since}: requests are held, each up to {} (bgctl resume ends it)",
            humantime::format_duration(std::time::Duration::from_millis(*max_ms))
        )),
        bg_api::Traffic::Maintenance { since, message } => Some(format!(
            "maintenance since {since}: every request gets 503 {message:?} (bgctl live ends it)"
        )),
    }
}

/// What `pause`, `resume`, `maintenance` and `live` print.
pub fn traffic(s: &ServiceStatus) -> String {
    match traffic_line(&s.traffic) {
        Some(line) => format!("{}: {line}\n", s.name),
        None => format!("{}: live, requests go on to the replicas\n", s.name),
    }
}

/// One service's replicas per color, plus where it listens and how its last
/// operation ended.
fn service_detail(s: &ServiceStatus) -> Vec<String> {
    let mut out = Vec::new();
    let mut head = s.name.clone();
    if !s.listen.is_empty() {
        head.push_str(&format!(" (listening on {})", s.listen.join(", ")));
    }
    out.push(head);
    if let Some(line) = traffic_line(&s.traffic) {
        out.push(format!("  traffic: {line}"));
    }
    if let Some(o) = &s.last_outcome {
        out.push(format!("  last: {}", outcome_line(&s.name, o)));
    }
    for color in Color::ALL {
        let Some(c) = s.colors.get(&color) else {
            continue;
        };
        let mut title = format!("  {color}");
        if s.active == Some(color) {
            title.push_str(" (active)");
        }
        match &c.spec {
            None if c.replicas.is_empty() => {
                out.push(format!("{title}: empty"));
                continue;
            }
            None => out.push(format!("{title}:")),
            Some(spec) => {
                let rev = c.revision.map(|r| format!("revision {r}, ")).unwrap_or_default();
                out.push(format!("{title}: {rev}{}", spec_summary(spec)));
                out.extend(spec_details(spec).into_iter().map(|l| format!("    {l}")));
            }
        }
        if c.replicas.is_empty() {
            out.push("    no replicas".to_string());
            continue;
        }
        let mut t = Table::new(&["REPLICA", "HEALTH", "STATE", "INFLIGHT", "ADDRESS"]);
        for r in &c.replicas {
            let mut id = r.id.clone();
            if let Some(rev) = r.revision.filter(|rev| Some(*rev) != c.revision) {
                id.push_str(&format!(" (rev {rev})"));
            }
            t.row(vec![
                id,
                health_name(r.health).to_string(),
                state_name(r.state).to_string(),
                r.inflight.to_string(),
                r.addr.clone(),
            ]);
        }
        out.extend(t.lines("    "));
    }
    out
}

/// Every replica of a service in one table.
pub fn replicas(s: &ServiceStatus) -> String {
    let mut t =
        Table::new(&["COLOR", "REPLICA", "HEALTH", "STATE", "INFLIGHT", "ADDRESS", "REVISION", "RUNTIME"]);
    for color in Color::ALL {
        let Some(c) = s.colors.get(&color) else {
            continue;
        };
        for r in &c.replicas {
            t.row(vec![
                color.to_string(),
                r.id.clone(),
                health_name(r.health).to_string(),
                state_name(r.state).to_string(),
                r.inflight.to_string(),
                r.addr.clone(),
                r.revision.or(c.revision).map_or("-".into(), |r| r.to_string()),
                r.runtime_id.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
    }
    t.lines("").join("\n") + "\n"
}

/// Past operations, oldest first.
pub fn history(h: &History) -> String {
    if h.entries.is_empty() {
        return format!("{}: no operations yet\n", h.service);
    }
    let mut t = Table::new(&["OP", "KIND", "OUTCOME", "REVISION", "STARTED", "ENDED", "SPEC", "MESSAGE"]);
    for e in &h.entries {
        let o = &e.outcome;
        t.row(vec![
            format!("#{}", o.operation),
            kind_name(o.kind).to_string(),
            outcome_name(o.outcome).to_string(),
            o.revision.to_string(),
            e.started_at.clone(),
            o.at.clone(),
            e.spec.as_ref().map_or("-".into(), spec_summary),
            o.message.clone(),
        ]);
    }
    t.lines("").join("\n") + "\n"
}

/// An outcome as `web: deploy #12 succeeded (revision 8): message`.
pub fn outcome_line(service: &str, o: &Outcome) -> String {
    let mut line = format!(
        "{service}: {} #{} {} (revision {})",
        kind_name(o.kind),
        o.operation,
        outcome_name(o.outcome),
        o.revision
    );
    if !o.message.is_empty() {
        line.push_str(": ");
        line.push_str(&o.message);
    }
    line
}

/// What to do next after an operation paused, for people.
pub fn paused_hint(service: &str, o: &Outcome) -> String {
    match o.kind {
        OperationKind::Rolling => format!(
            "paused: resume with `bgctl rolling {service} --resume`, or stop with `bgctl abort {service}`"
        ),
        _ => format!("paused: finish with `bgctl promote {service}`, or stop with `bgctl abort {service}`"),
    }
}

/// An event's type name and a short description of its details.
pub fn event_details(kind: &EventKind) -> (&'static str, String) {
    match kind {
        EventKind::OperationStarted { kind, revision } => {
            ("operation_started", format!("{} revision {revision}", kind_name(*kind)))
        }
        EventKind::Phase { phase, detail } if detail.is_empty() => ("phase", phase.to_string()),
        EventKind::Phase { phase, detail } => ("phase", format!("{phase}: {detail}")),
        EventKind::Progress { healthy, wanted, inflight } => {
            ("progress", format!("{healthy}/{wanted} healthy, {inflight} in flight"))
        }
        EventKind::Replica { color, replica, health, state, reason } => {
            let mut d = format!("{color} {replica} {} {}", health_name(*health), state_name(*state));
            if let Some(r) = reason {
                d.push_str(&format!(" ({r})"));
            }
            ("replica", d)
        }
        EventKind::Switched { active, weights } => (
            "switched",
            format!(
                "active {}, blue {} / green {}",
                active.map_or("-", Color::as_str),
                weights.blue,
                weights.green
            ),
        ),
        EventKind::Drained { color, finished, cut, elapsed_ms } => {
            ("drained", format!("{color}: {finished} finished, {cut} cut, in {elapsed_ms}ms"))
        }
        EventKind::OperationFinished { result: o } => {
            let mut d = format!("{} {}", kind_name(o.kind), outcome_name(o.outcome));
            if !o.message.is_empty() {
                d.push_str(&format!(": {}", o.message));
            }
            ("operation_finished", d)
        }
        EventKind::Message { level, message } => ("message", format!("{level}: {message}")),
    }
}

/// One event on one line: time, service, operation, type, details.
pub fn event_line(e: &bg_api::Event) -> String {
    let (ty, details) = event_details(&e.kind);
    let op = e.operation.map_or("-".to_string(), |id| format!("#{id}"));
    format!("{}  {}  {}  {}  {}", e.at, e.service, op, ty, details)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bg_api::{ColorStatus, Health, OperationStatus, ReplicaStatus, Weights};
    use std::collections::BTreeMap;

    fn replica(id: &str, addr: &str, health: Health, state: ReplicaState, inflight: u64) -> ReplicaStatus {
        ReplicaStatus {
            id: id.into(),
            addr: addr.into(),
            health,
            state,
            inflight,
            runtime_id: Some(format!("bg-web-blue-{id}")),
            revision: None,
            spec: None,
        }
    }

    fn fixture() -> ServiceStatus {
        let mut colors = BTreeMap::new();
        colors.insert(
            Color::Blue,
            ColorStatus {
                spec: Some(Spec {
                    image: Some("websample:v1".into()),
                    command: None,
                    env: BTreeMap::from([("VERSION".into(), "v1".into())]),
                    ..Default::default()
                }),
                revision: Some(7),
                replicas: vec![
                    replica("1", "127.0.0.1:32768", Health::Healthy, ReplicaState::Serving, 3),
                    replica("2", "127.0.0.1:32769", Health::Healthy, ReplicaState::Serving, 12),
                ],
            },
        );
        colors.insert(
            Color::Green,
            ColorStatus {
                spec: Some(Spec { image: Some("websample:v2".into()), ..Default::default() }),
                revision: Some(8),
                replicas: vec![replica("1", "127.0.0.1:32770", Health::Starting, ReplicaState::Out, 0)],
            },
        );
        ServiceStatus {
            name: "web".into(),
            revision: 7,
            active: Some(Color::Blue),
            weights: Weights::all_to(Color::Blue),
            operation: Some(OperationStatus {
                id: 12,
                kind: OperationKind::Deploy,
                phase: bg_api::Phase::Health,
                revision: 8,
                started_at: "2026-01-01T00:00:00Z".into(),
                detail: "0/1 healthy".into(),
            }),
            colors,
            listen: vec!["0.0.0.0:8080".into()],
            last_outcome: None,
            traffic: bg_api::Traffic::Open,
        }
    }

    #[test]
    fn status_table_reads_at_a_glance() {
        let text = services(&[fixture()]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[..2],
            [
                "SERVICE  ACTIVE  WEIGHTS             REVISION  OPERATION",
                "web      blue    blue 100 / green 0  7         deploy #12 health: 0/1 healthy",
            ]
        );
        assert_eq!(lines[2], "");
        assert_eq!(lines[3], "web (listening on 0.0.0.0:8080)");
        assert_eq!(lines[4], "  blue (active): revision 7, websample:v1, env VERSION=v1");
        assert_eq!(lines[5], "    REPLICA  HEALTH   STATE    INFLIGHT  ADDRESS");
        assert_eq!(lines[6], "    1        healthy  serving  3         127.0.0.1:32768");
        assert_eq!(lines[7], "    2        healthy  serving  12        127.0.0.1:32769");
        assert_eq!(lines[8], "  green: revision 8, websample:v2");
        assert_eq!(lines[10], "    1        starting  out    0         127.0.0.1:32770");
        assert!(!text.contains('\x1b'), "no color codes");
    }

    #[test]
    fn empty_color_says_so() {
        let mut s = fixture();
        s.colors.insert(Color::Green, ColorStatus::default());
        s.operation = None;
        let text = services(&[s]);
        assert!(text.lines().any(|l| l == "  green: empty"), "{text}");
        assert!(text.lines().nth(1).unwrap().ends_with("  -"), "{text}");
    }

    #[test]
    fn replica_list_has_one_row_per_replica() {
        let text = replicas(&fixture());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("COLOR  REPLICA  HEALTH"));
        assert!(lines[3].starts_with("green  1        starting"), "{text}");
        assert!(lines[3].contains(" 8 "), "{text}");
    }

    #[test]
    fn outcomes_and_events_are_one_line() {
        let o = Outcome {
            operation: 12,
            kind: OperationKind::Deploy,
            outcome: OutcomeKind::RolledBack,
            message: "green unhealthy".into(),
            revision: 8,
            at: "2026-01-01T00:01:00Z".into(),
        };
        assert_eq!(outcome_line("web", &o), "web: deploy #12 rolled-back (revision 8): green unhealthy");
        let e = bg_api::Event {
            seq: 4,
            at: "2026-01-01T00:01:00Z".into(),
            service: "web".into(),
            operation: Some(12),
            kind: EventKind::OperationFinished { result: o },
        };
        assert_eq!(
            event_line(&e),
            "2026-01-01T00:01:00Z  web  #12  operation_finished  deploy rolled-back: green unhealthy"
        );
    }
}
