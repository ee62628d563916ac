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

use crate::client::Client;
use crate::error::{Error, EXIT_FAILED, EXIT_OK};
use crate::follow::Progress;
use crate::ops::{self, Op, OpDone, Report};
use bg_api::DeployRequest;
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
        match result {
            Ok(r) => {
                worst = worst.max(r.exit_code);
                text.push_str(&format!("== {addr} ==\n{}", r.text));
                if !r.text.is_empty() && !r.text.ends_with('\n') {
                    text.push('\n');
                }
                let mut entry = json!({"agent": addr, "exit_code": r.exit_code});
                if let Some(doc) = r.json {
                    entry["result"] = doc;
                }
                agents.push(entry);
            }
            Err(e) => {
                worst = worst.max(e.exit_code());
                text.push_str(&format!("== {addr} ==\nerror: {}\n", e.one_line()));
                agents.push(agent_error(&addr, &e));
            }
        }
    }
    Ok(Report { json: Some(json!({"agents": agents, "exit_code": worst})), text, exit_code: worst })
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
}

impl Steps {
    fn record(&mut self, step: &str, result: &Result<OpDone, Error>) {
        match result {
            Ok(done) => {
                self.json.insert(step.into(), done.json());
                self.text.push(done.report().text.trim_end().to_string());
                self.exit_code = self.exit_code.max(done.exit_code());
            }
            Err(e) => {
                self.json.insert(step.into(), json!({"error": {"code": e.code(), "message": e.one_line()}}));
                self.text.push(format!("{step}: error: {}", e.one_line()));
                self.exit_code = self.exit_code.max(e.exit_code());
            }
        }
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
/// promote fails, the candidate is aborted on the other agents).
pub async fn deploy(
    clients: &[Client],
    service: &str,
    mut request: DeployRequest,
    promote: bool,
    canary_host: Option<usize>,
    progress: &Progress,
) -> Report {
    // Never let an agent's `auto_promote` flip traffic before all are healthy.
    request.promote = Some(false);
    let op = Op::Deploy(request);
    let deployed = join_all(clients.iter().map(|c| ops::run(c, service, &op, true, progress))).await;
    let mut steps: Vec<Steps> = clients.iter().map(|_| Steps::default()).collect();
    for (s, r) in steps.iter_mut().zip(&deployed) {
        s.record("deploy", r);
    }
    if !deployed.iter().all(ok) {
        progress.note("deploy failed on some agents: aborting it everywhere else");
        let aborts = join_all(clients.iter().zip(&deployed).map(|(c, r)| async move {
            if ok(r) {
                Some(ops::run(c, service, &Op::Abort, true, progress).await)
            } else {
                None
            }
        }))
        .await;
        for (s, a) in steps.iter_mut().zip(aborts) {
            if let Some(a) = a {
                s.record("abort", &a);
            }
        }
        return steps_report(clients, steps, EXIT_FAILED);
    }
    if !promote {
        return steps_report(clients, steps, EXIT_OK);
    }
    let floor = promote_steps(clients, service, canary_host, progress, &mut steps).await;
    if floor != EXIT_OK {
        // The canary host failed and rolled back: this one command deployed
        // the candidate everywhere, so it takes it back everywhere too.
        progress.note("removing the candidate from the other agents");
        let aborts = join_all(clients.iter().enumerate().map(|(j, c)| async move {
            if Some(j) == canary_host {
                None
            } else {
                Some(ops::run(c, service, &Op::Abort, true, progress).await)
            }
        }))
        .await;
        for (s, a) in steps.iter_mut().zip(aborts) {
            if let Some(a) = a {
                s.record("abort", &a);
            }
        }
    }
    steps_report(clients, steps, floor)
}

/// Promote on several agents: all in parallel, or the canary host first and
/// the rest only if its promote (with its monitor window) succeeded.
pub async fn promote(
    clients: &[Client],
    service: &str,
    canary_host: Option<usize>,
    progress: &Progress,
) -> Report {
    let mut steps: Vec<Steps> = clients.iter().map(|_| Steps::default()).collect();
    let floor = promote_steps(clients, service, canary_host, progress, &mut steps).await;
    steps_report(clients, steps, floor)
}

async fn promote_steps(
    clients: &[Client],
    service: &str,
    canary_host: Option<usize>,
    progress: &Progress,
    steps: &mut [Steps],
) -> u8 {
    if let Some(i) = canary_host {
        let first = ops::run(&clients[i], service, &Op::Promote, true, progress).await;
        steps[i].record("promote", &first);
        if !ok(&first) {
            progress.note("promote failed on the canary host: the other agents were not touched");
            for (j, s) in steps.iter_mut().enumerate() {
                if j != i {
                    s.skip("promote", "canary host failed");
                }
            }
            return EXIT_FAILED;
        }
    }
    let rest = join_all(clients.iter().enumerate().map(|(j, c)| async move {
        if Some(j) == canary_host {
            None
        } else {
            Some(ops::run(c, service, &Op::Promote, true, progress).await)
        }
    }))
    .await;
    for (s, r) in steps.iter_mut().zip(rest) {
        if let Some(r) = r {
            s.record("promote", &r);
        }
    }
    EXIT_OK
}

/// The index of `--canary-host` among the agents, or a usage error.
pub fn canary_index(
    clients: &[Client],
    canary: Option<&crate::client::AgentAddr>,
) -> Result<Option<usize>, Error> {
    let Some(addr) = canary else {
        return Ok(None);
    };
    clients
        .iter()
        .position(|c| c.addr() == addr)
        .map(Some)
        .ok_or_else(|| Error::Usage(format!("--canary-host {addr} is not one of the --agent addresses")))
}
