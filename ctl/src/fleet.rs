//! Several agents at once. Most commands simply run on every agent in
//! parallel and report per host ([`each`], [`combine`]); `deploy` is
//! two-phase (all healthy or all aborted) and `promote` can go to a canary
//! host first ([`deploy`], [`promote`]).
//!
//! Fleet JSON document (one agent prints its own document unwrapped):
//! `{"agents": [{"agent": ADDR, "exit_code": N, "result": DOC} |
//! {"agent": ADDR, "exit_code": N, "error": {"code", "message"}}], "exit_code": N}`
//! where the top `exit_code` is the worst (highest) of all. For a fleet
//! `deploy`/`promote` DOC is `{"deploy": ..., "abort": ..., "promote": ...}`
//! with one entry per step that ran on that agent.

use crate::client::encode;
use crate::client::Client;
use crate::error::{Error, EXIT_FAILED, EXIT_OK};
use crate::follow::Progress;
use crate::ops::{self, Op, OpDone, Report};
use bg_api::{DeployRequest, ServiceList, ServiceStatus};
use futures_util::future::join_all;
use serde_json::{json, Map, Value};
use std::future::Future;

/// Runs `f` on every agent in parallel.
pub async fn each<'a, F, Fut>(clients: &'a [Client], f: F) -> Vec<Result<Report, Error>>
where
    F: Fn(&'a Client) -> Fut,
    Fut: Future<Output = Result<Report, Error>>,
{
    join_all(clients.iter().map(f)).await
}

/// Puts per-agent results together: one agent's result as it is, several
/// as the fleet document.
pub fn combine(clients: &[Client], mut results: Vec<Result<Report, Error>>) -> Result<Report, Error> {
    if clients.len() == 1 && results.len() == 1 {
        return results.remove(0);
    }
    let mut agents = Vec::new();
    let mut text = String::new();
    let mut worst = EXIT_OK;
    for (client, result) in clients.iter().zip(results) {
        let addr = client.addr().to_string();
        let (host, label) = (client.name(), client.label());
        match result {
            Ok(r) => {
                worst = worst.max(r.exit_code);
                text.push_str(&format!("== {label} ==\n{}", r.text));
                if !r.text.is_empty() && !r.text.ends_with('\n') {
                    text.push('\n');
                }
                let mut entry = json!({"host": host, "agent": addr, "exit_code": r.exit_code});
                if let Some(doc) = r.json {
                    entry["result"] = doc;
                }
                agents.push(entry);
            }
            Err(e) => {
                worst = worst.max(e.exit_code());
                text.push_str(&format!("== {label} ==\nerror: {}\n", e.one_line()));
                let mut entry = agent_error(&addr, &e);
                entry["host"] = json!(host);
                agents.push(entry);
            }
        }
    }
    Ok(Report { json: Some(json!({"agents": agents, "exit_code": worst})), text, exit_code: worst })
}

/// `status` on a fleet: one table of every host's services; JSON as
/// [`combine`] makes it, each host's `result` what `status` prints for one
/// agent.
pub async fn status(clients: &[Client], service: Option<&str>) -> Report {
    let answers = join_all(clients.iter().map(|c| async move {
        let list: Result<Vec<ServiceStatus>, Error> = match service {
            Some(name) => c.get(&format!("/v1/services/{}", encode(name))).await.map(|s| vec![s]),
            None => c.get::<ServiceList>("/v1/services").await.map(|l| l.services),
        };
        list
    }))
    .await;
    let rows: Vec<(String, Result<Vec<ServiceStatus>, String>)> = clients
        .iter()
        .zip(&answers)
        .map(|(c, a)| {
            let row = match a {
                Ok(list) => Ok(list.clone()),
                Err(e) => Err(format!("error: {}", e.one_line())),
            };
            (c.name(), row)
        })
        .collect();
    let text = crate::render::fleet_status(&rows);
    let results = answers
        .into_iter()
        .map(|a| {
            // Each host's document is what `status` prints for one agent:
            // the service's object, or `{"services": [...]}`.
            a.map(|services| Report {
                json: Some(match (service, services.first()) {
                    (Some(_), Some(one)) => json!(one),
                    _ => json!({ "services": services }),
                }),
                text: String::new(),
                exit_code: EXIT_OK,
            })
        })
        .collect();
    match combine(clients, results) {
        Ok(mut report) => {
            report.text = text;
            report
        }
        Err(e) => Report { json: Some(e.to_json()), text, exit_code: e.exit_code() },
    }
}

fn agent_error(addr: &str, e: &Error) -> Value {
    json!({
        "agent": addr,
        "exit_code": e.exit_code(),
        "error": {"code": e.code(), "message": e.one_line()},
    })
}

/// The steps one agent went through in a two-phase command.
#[derive(Default)]
struct Steps {
    json: Map<String, Value>,
    text: Vec<String>,
    exit_code: u8,
    /// A step was refused as unauthorized (exit 3 whatever else happened).
    unauthorized: bool,
}

impl Steps {
    fn record(&mut self, step: &str, result: &Result<OpDone, Error>) {
        match result {
            Ok(done) => self.done(step, done),
            Err(e) => self.failed(step, e),
        }
    }

    fn record_promote(&mut self, result: &Result<Option<OpDone>, Error>) {
        match result {
            Ok(None) => {
                self.json
                    .insert("promote".into(), json!({"skipped": "nothing to promote: already switched"}));
                self.text.push("promote: nothing to promote (already switched): left alone".into());
            }
            Ok(Some(done)) => self.done("promote", done),
            Err(e) => self.failed("promote", e),
        }
    }

    fn done(&mut self, step: &str, done: &OpDone) {
        self.json.insert(step.into(), done.json());
        self.text.push(done.report().text.trim_end().to_string());
        self.exit_code = self.exit_code.max(done.exit_code());
    }

    fn failed(&mut self, step: &str, e: &Error) {
        self.unauthorized |= matches!(e, Error::Unauthorized { .. });
        self.json.insert(step.into(), json!({"error": {"code": e.code(), "message": e.one_line()}}));
        self.text.push(format!("{step}: error: {}", e.one_line()));
        self.exit_code = self.exit_code.max(e.exit_code());
    }

    fn skip(&mut self, step: &str, why: &str) {
        self.json.insert(step.into(), json!({"skipped": why}));
        self.text.push(format!("{step}: skipped ({why})"));
    }
}

fn steps_report(clients: &[Client], steps: Vec<Steps>, floor: u8) -> Report {
    let results = steps
        .into_iter()
        .map(|s| {
            Ok(Report {
                json: Some(Value::Object(s.json)),
                text: s.text.join("\n") + "\n",
                exit_code: s.exit_code,
            })
        })
        .collect();
    // `combine` only fails for a single agent's error, never here.
    let mut report = match combine(clients, results) {
        Ok(r) => r,
        Err(e) => Report { json: Some(e.to_json()), text: e.one_line(), exit_code: e.exit_code() },
    };
    if report.exit_code < floor {
        report.exit_code = floor;
        if let Some(doc) = report.json.as_mut() {
            doc["exit_code"] = json!(floor);
        }
    }
    report
}

fn ok(result: &Result<OpDone, Error>) -> bool {
    matches!(result, Ok(done) if done.ok())
}

/// Two-phase deploy on several agents: deploy without promote everywhere
/// and wait; if any agent failed, abort where the deploy succeeded and exit
/// 1; else, with `promote`, promote (canary host first when given; if its
/// promote fails, the candidate is aborted on the other agents). With
/// `batch`, hosts go through it that many at a time, each batch promoted
/// and healthy before the next; the first failing batch stops the rest.
///
/// Every step is safe to repeat: the deploy converges (a host that runs
/// the spec already is left alone), a host with nothing to promote is
/// skipped, and a host busy with an operation is waited for first.
pub async fn deploy(
    clients: &[Client],
    service: &str,
    mut request: DeployRequest,
    promote: bool,
    canary_host: Option<usize>,
    batch: Option<usize>,
    progress: &Progress,
) -> Report {
    // Never let an agent's `auto_promote` flip traffic before all are healthy.
    request.promote = Some(false);
    request.converge = true;
    let op = Op::Deploy(request);
    let mut steps: Vec<Steps> = clients.iter().map(|_| Steps::default()).collect();
    let all: Vec<usize> = (0..clients.len()).collect();
    let size = batch.unwrap_or(clients.len()).max(1);
    let mut floor = EXIT_OK;
    let mut batches = all.chunks(size).peekable();
    while let Some(hosts) = batches.next() {
        let canary = canary_host.filter(|c| hosts.contains(c));
        floor = two_phase(clients, hosts, service, &op, promote, canary, progress, &mut steps).await;
        if floor != EXIT_OK {
            // The release failed (1), wherever a host was unreachable; a
            // refused token stays 3.
            if !steps.iter().any(|s| s.unauthorized) {
                for s in &mut steps {
                    s.exit_code = s.exit_code.min(EXIT_FAILED);
                }
            }
            for rest in batches.flatten() {
                steps[*rest].skip("deploy", "an earlier batch of hosts failed");
            }
            break;
        }
        if batches.peek().is_some() {
            progress.note(&format!("batch of {} host(s) done; next batch", hosts.len()));
        }
    }
    steps_report(clients, steps, floor)
}

/// One two-phase step over the hosts `hosts` (indices into `clients`);
/// returns the floor of their exit codes (1 when it failed).
#[allow(clippy::too_many_arguments)]
async fn two_phase(
    clients: &[Client],
    hosts: &[usize],
    service: &str,
    op: &Op,
    promote: bool,
    canary_host: Option<usize>,
    progress: &Progress,
    steps: &mut [Steps],
) -> u8 {
    let deployed =
        join_all(hosts.iter().map(|&i| ops::run_when_free(&clients[i], service, op, progress))).await;
    for (&i, r) in hosts.iter().zip(&deployed) {
        steps[i].record("deploy", r);
    }
    if !deployed.iter().all(ok) {
        progress.note("deploy failed on some hosts: aborting it everywhere else");
        abort(
            clients,
            hosts.iter().zip(&deployed).filter(|(_, r)| ok(r)).map(|(i, _)| *i),
            service,
            progress,
            steps,
        )
        .await;
        return EXIT_FAILED;
    }
    if !promote {
        return EXIT_OK;
    }
    let floor = promote_steps(clients, hosts, service, canary_host, progress, steps).await;
    if floor != EXIT_OK {
        // The canary host failed and rolled back: this one command deployed
        // the candidate everywhere, so it takes it back everywhere too.
        progress.note("removing the candidate from the other hosts");
        abort(clients, hosts.iter().copied().filter(|&j| Some(j) != canary_host), service, progress, steps)
            .await;
    }
    floor
}

/// Abort on the hosts `which`, recording each.
async fn abort(
    clients: &[Client],
    which: impl Iterator<Item = usize>,
    service: &str,
    progress: &Progress,
    steps: &mut [Steps],
) {
    let which: Vec<usize> = which.collect();
    let aborts =
        join_all(which.iter().map(|&j| ops::run(&clients[j], service, &Op::Abort, true, progress))).await;
    for (j, a) in which.into_iter().zip(aborts) {
        match a {
            // A first deploy goes live at once: there is nothing to take back.
            Err(Error::Rejected { message, .. }) if message.starts_with("nothing to abort") => {
                steps[j].skip("abort", &message)
            }
            a => steps[j].record("abort", &a),
        }
    }
}

/// `rollback` or `abort` on every host, safe to repeat: a host whose last
/// operation was a successful rollback (and nothing ran since) is not
/// rolled back again, a host with nothing to abort is left alone, and a
/// host busy with an operation is waited for first.
pub async fn converge_each(clients: &[Client], service: &str, op: Op, progress: &Progress) -> Report {
    let name = match op {
        Op::Rollback => "rollback",
        _ => "abort",
    };
    let op = &op;
    let results = join_all(clients.iter().map(|c| async move {
        if matches!(op, Op::Rollback) {
            let status: ServiceStatus = c.get(&format!("/v1/services/{}", encode(service))).await?;
            let done = status.operation.is_none()
                && status.last_outcome.as_ref().is_some_and(|o| {
                    o.kind == bg_api::OperationKind::Rollback && o.outcome == bg_api::OutcomeKind::Succeeded
                });
            if done {
                return Ok(None);
            }
        }
        match ops::run_when_free(c, service, op, progress).await {
            Err(Error::Rejected { message, .. }) if message.starts_with("nothing to abort") => Ok(None),
            other => other.map(Some),
        }
    }))
    .await;
    let mut steps: Vec<Steps> = clients.iter().map(|_| Steps::default()).collect();
    for (s, r) in steps.iter_mut().zip(results) {
        match r {
            Ok(None) if name == "rollback" => s.skip(name, "already rolled back: left alone"),
            Ok(None) => s.skip(name, "nothing to abort: left alone"),
            Ok(Some(done)) => s.done(name, &done),
            Err(e) => s.failed(name, &e),
        }
    }
    steps_report(clients, steps, EXIT_OK)
}

/// Promote on several agents: all in parallel, or the canary host first and
/// the rest only if its promote (with its monitor window) succeeded. Hosts
/// with nothing to promote (already switched) are left alone.
pub async fn promote(
    clients: &[Client],
    service: &str,
    canary_host: Option<usize>,
    progress: &Progress,
) -> Report {
    let mut steps: Vec<Steps> = clients.iter().map(|_| Steps::default()).collect();
    let all: Vec<usize> = (0..clients.len()).collect();
    let floor = promote_steps(clients, &all, service, canary_host, progress, &mut steps).await;
    steps_report(clients, steps, floor)
}

async fn promote_steps(
    clients: &[Client],
    hosts: &[usize],
    service: &str,
    canary_host: Option<usize>,
    progress: &Progress,
    steps: &mut [Steps],
) -> u8 {
    if let Some(i) = canary_host {
        let first = promote_one(&clients[i], service, progress).await;
        steps[i].record_promote(&first);
        if !matches!(&first, Ok(None)) && !ok_promote(&first) {
            progress.note("promote failed on the canary host: the other hosts were not touched");
            for &j in hosts {
                if j != i {
                    steps[j].skip("promote", "canary host failed");
                }
            }
            return EXIT_FAILED;
        }
    }
    let rest: Vec<usize> = hosts.iter().copied().filter(|&j| Some(j) != canary_host).collect();
    let results = join_all(rest.iter().map(|&j| promote_one(&clients[j], service, progress))).await;
    for (j, r) in rest.into_iter().zip(results) {
        steps[j].record_promote(&r);
    }
    EXIT_OK
}

/// Promote one host unless it has nothing to promote (`Ok(None)`).
async fn promote_one(client: &Client, service: &str, progress: &Progress) -> Result<Option<OpDone>, Error> {
    let status: ServiceStatus = client.get(&format!("/v1/services/{}", encode(service))).await?;
    if status.operation.is_none() && !has_candidate(&status) {
        return Ok(None);
    }
    ops::run_when_free(client, service, &Op::Promote, progress).await.map(Some)
}

/// Whether the idle color holds a release newer than the active one.
fn has_candidate(s: &ServiceStatus) -> bool {
    let idle = s.active.map(bg_api::Color::other).unwrap_or(bg_api::Color::Blue);
    let active_revision = s.active.and_then(|a| s.colors.get(&a)).and_then(|c| c.revision);
    s.colors.get(&idle).is_some_and(|c| !c.replicas.is_empty() && c.revision > active_revision)
}

fn ok_promote(result: &Result<Option<OpDone>, Error>) -> bool {
    matches!(result, Ok(None)) || matches!(result, Ok(Some(done)) if done.ok())
}

/// The index of `--canary-host` (a host name, or an agent address) among
/// the agents, or a usage error.
pub fn canary_index(clients: &[Client], canary: Option<&String>) -> Result<Option<usize>, Error> {
    let Some(wanted) = canary else {
        return Ok(None);
    };
    let addr = crate::client::AgentAddr::parse(wanted).ok();
    clients
        .iter()
        .position(|c| c.name() == *wanted || Some(c.addr()) == addr.as_ref())
        .map(Some)
        .ok_or_else(|| Error::Usage(format!("--canary-host {wanted} is not one of the hosts acted on")))
}
