//! One function per command: turn the parsed command line into requests to
//! every agent and the [`Report`] to print. Validation that needs more than
//! one flag at a time (the canary host, `--no-wait` in a fleet) lives here.

use crate::cli::{
    self, CanaryArgs, Cli, Command, DeployArgs, OutputFormat, PromoteArgs, ReplicaCommand, RollingArgs,
};
use crate::client::{encode, AgentAddr, Client};
use crate::error::{Error, EXIT_OK};
use crate::fleet;
use crate::follow::{self, Progress};
use crate::ops::{self, Op, Report};
use crate::render;
use crate::tls::TlsFiles;
use bg_api::{
    CanaryRequest, DeployRequest, History, RollingRequest, ServiceList, ServiceStatus, SpecOverrides,
};
use clap::CommandFactory;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;

/// The agents to talk to: `--agent` values, else `$BG_AGENT`, else the
/// default socket. Duplicates are dropped.
pub fn agents(cli: &Cli) -> Result<Vec<AgentAddr>, Error> {
    let mut agents = cli.agents.clone();
    if agents.is_empty() {
        match std::env::var("BG_AGENT") {
            Ok(v) if !v.trim().is_empty() => {
                agents.push(AgentAddr::parse(&v).map_err(|e| Error::Usage(format!("$BG_AGENT: {e}")))?)
            }
            _ => agents.push(AgentAddr::parse(cli::DEFAULT_AGENT).map_err(Error::Usage)?),
        }
    }
    let mut unique = Vec::new();
    for a in agents {
        if !unique.contains(&a) {
            unique.push(a);
        }
    }
    Ok(unique)
}

/// The clients to act through: the fleet file's chosen hosts (each with
/// its own token, else --token), or the agents of [`agents`].
pub fn clients(cli: &Cli) -> Result<Vec<Client>, Error> {
    let timeout = cli.host_timeout.0;
    let flags = TlsFiles { ca: cli.ca.clone(), cert: cli.cert.clone(), key: cli.key.clone() };
    match &cli.fleet {
        Some(path) if cli.agents.is_empty() => {
            let hosts = crate::fleetfile::load(path).map_err(Error::Usage)?;
            let hosts = crate::fleetfile::select(hosts, cli.hosts.as_deref(), cli.tag.as_deref())
                .map_err(Error::Usage)?;
            hosts
                .into_iter()
                .map(|h| {
                    let token = h.token.or_else(|| cli.token.clone());
                    let client = Client::new(h.agent, token).named(h.name).with_timeout(timeout);
                    with_tls(client, &h.tls.or(&flags))
                })
                .collect()
        }
        _ => agents(cli)?
            .into_iter()
            .map(|a| with_tls(Client::new(a, cli.token.clone()).with_timeout(timeout), &flags))
            .collect(),
    }
}

/// `client` with TLS from `files` when its agent is `https://`.
fn with_tls(client: Client, files: &TlsFiles) -> Result<Client, Error> {
    match client.addr() {
        AgentAddr::Https { .. } => {
            let config = files.client_config()?;
            Ok(client.with_tls(config))
        }
        _ => Ok(client),
    }
}

/// Runs the command.
pub async fn run(cli: Cli) -> Result<Report, Error> {
    if let Command::Completions { shell } = &cli.command {
        return Ok(completions(*shell));
    }
    let clients = clients(&cli)?;
    let progress = Progress::new(clients.len() > 1);
    let clients = &clients[..];
    let progress = &progress;
    match cli.command {
        Command::Completions { .. } => unreachable!("handled above"),
        Command::Status { service, watch: true } => {
            crate::watch::watch(clients, service.as_deref(), cli.output).await
        }
        Command::Status { service, watch: false } if clients.len() > 1 => {
            Ok(fleet::status(clients, service.as_deref()).await)
        }
        Command::Status { service, watch: false } => {
            let service = service.as_deref();
            fleet::combine(clients, fleet::each(clients, |c| status(c, service)).await)
        }
        Command::Deploy(args) => deploy(clients, args, progress).await,
        Command::Promote(args) => promote(clients, args, progress).await,
        Command::Rollback { service } if clients.len() > 1 => {
            Ok(fleet::converge_each(clients, &service, Op::Rollback, progress).await)
        }
        Command::Abort { service } if clients.len() > 1 => {
            Ok(fleet::converge_each(clients, &service, Op::Abort, progress).await)
        }
        Command::Rollback { service } => op(clients, &service, Op::Rollback, true, progress).await,
        Command::Abort { service } => op(clients, &service, Op::Abort, true, progress).await,
        Command::Canary(args) => {
            let (service, request) = canary_request(args);
            op(clients, &service, Op::Canary(request), true, progress).await
        }
        Command::Rolling(args) => {
            let (service, request) = rolling_request(args)?;
            op(clients, &service, Op::Rolling(request), true, progress).await
        }
        Command::Replica { action } => match action {
            ReplicaCommand::Drain { service, replica } => {
                op(clients, &service, Op::ReplicaDrain(replica), true, progress).await
            }
            ReplicaCommand::Enable { service, replica } => {
                op(clients, &service, Op::ReplicaEnable(replica), true, progress).await
            }
            ReplicaCommand::Update { service, replica, overrides } => {
                let overrides = SpecOverrides {
                    image: overrides.image,
                    command: None,
                    env: overrides.env.into_iter().collect(),
                };
                op(clients, &service, Op::ReplicaUpdate(replica, overrides), true, progress).await
            }
            ReplicaCommand::List { service } => {
                let service = &service;
                fleet::combine(clients, fleet::each(clients, |c| replica_list(c, service)).await)
            }
        },
        Command::Events { service, follow, since } => {
            let service = service.as_deref();
            if follow {
                events_follow(clients, service, since, cli.output).await
            } else {
                fleet::combine(clients, fleet::each(clients, |c| events_once(c, service, since)).await)
            }
        }
        Command::Run(args) => crate::run::run(clients, args, cli.output).await,
        Command::Reload => fleet::combine(clients, fleet::each(clients, reload).await),
        Command::Pause { service, max } => {
            let max = max.map(|d| humantime::format_duration(d.0).to_string());
            let body = match max {
                Some(max) => json!({ "max": max }),
                None => json!({}),
            };
            traffic_all(clients, &service, "pause", &body).await
        }
        Command::Resume { service } => traffic_all(clients, &service, "resume", &json!({})).await,
        Command::Maintenance { service, message } => {
            let body = match message {
                Some(message) => json!({ "message": message }),
                None => json!({}),
            };
            traffic_all(clients, &service, "maintenance", &body).await
        }
        Command::Live { service } => traffic_all(clients, &service, "live", &json!({})).await,
        Command::History { service } => {
            let service = &service;
            fleet::combine(clients, fleet::each(clients, |c| history(c, service)).await)
        }
    }
}

/// `completions SHELL`: the script as text, or `{"shell", "script"}`.
fn completions(shell: clap_complete::Shell) -> Report {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "bgctl", &mut script);
    let script = String::from_utf8_lossy(&script).into_owned();
    Report {
        json: Some(json!({"shell": shell.to_string(), "script": script})),
        text: script,
        exit_code: EXIT_OK,
    }
}

/// The same operation on every agent, each followed to its end unless
/// `wait` is false.
async fn op(
    clients: &[Client],
    service: &str,
    op: Op,
    wait: bool,
    progress: &Progress,
) -> Result<Report, Error> {
    let op = &op;
    let results = fleet::each(clients, |c| async move {
        ops::run(c, service, op, wait, progress).await.map(|done| done.report())
    })
    .await;
    fleet::combine(clients, results)
}

fn deploy_request(args: &DeployArgs) -> Result<DeployRequest, Error> {
    Ok(DeployRequest {
        image: args.overrides.image.clone(),
        command: cli::command_words(&args.command).map_err(Error::Usage)?,
        env: args.overrides.env.iter().cloned().collect::<BTreeMap<_, _>>(),
        promote: args.promote.then_some(true),
        converge: false,
    })
}

async fn deploy(clients: &[Client], args: DeployArgs, progress: &Progress) -> Result<Report, Error> {
    let request = deploy_request(&args)?;
    let canary = fleet::canary_index(clients, args.canary_host.as_ref())?;
    if clients.len() == 1 {
        // One agent runs deploy and promote as one operation.
        return op(clients, &args.service, Op::Deploy(request), !args.no_wait, progress).await;
    }
    if args.no_wait {
        if args.promote {
            return Err(Error::Usage(
                "--no-wait cannot be combined with --promote on several agents: the two-phase deploy must wait for every agent to be healthy before promoting".into(),
            ));
        }
        let mut request = request;
        request.promote = Some(false);
        return op(clients, &args.service, Op::Deploy(request), false, progress).await;
    }
    let batch = args.host_parallelism.map(|p| p.batch(clients.len()));
    Ok(fleet::deploy(clients, &args.service, request, args.promote, canary, batch, progress).await)
}

async fn promote(clients: &[Client], args: PromoteArgs, progress: &Progress) -> Result<Report, Error> {
    let canary = fleet::canary_index(clients, args.canary_host.as_ref())?;
    if args.no_wait && canary.is_some() && clients.len() > 1 {
        return Err(Error::Usage(
            "--no-wait cannot be combined with --canary-host: the other agents are promoted only after the canary host's promote finished".into(),
        ));
    }
    if clients.len() == 1 || args.no_wait {
        return op(clients, &args.service, Op::Promote, !args.no_wait, progress).await;
    }
    Ok(fleet::promote(clients, &args.service, canary, progress).await)
}

fn canary_request(args: CanaryArgs) -> (String, CanaryRequest) {
    let request = CanaryRequest {
        weight: args.weight,
        steps: args.steps.map(|s| s.0).unwrap_or_default(),
        interval: args.interval,
        max_error_rate: args.max_error_rate,
        max_p99: args.max_p99,
        min_requests: args.min_requests,
        promote: args.promote,
    };
    (args.service, request)
}

fn rolling_request(args: RollingArgs) -> Result<(String, RollingRequest), Error> {
    let request = RollingRequest {
        image: args.overrides.image,
        command: cli::command_words(&args.command).map_err(Error::Usage)?,
        env: args.overrides.env.into_iter().collect(),
        parallelism: args.parallelism,
        delay: args.delay,
        order: args.order,
        failure_action: args.failure_action,
        monitor: args.monitor,
        max_failure_ratio: args.max_failure_ratio,
        resume: args.resume,
    };
    Ok((args.service, request))
}

fn decode<T: serde::de::DeserializeOwned>(client: &Client, value: &Value, what: &str) -> Result<T, Error> {
    serde_json::from_value(value.clone()).map_err(|source| Error::Decode {
        addr: client.label(),
        what: what.to_string(),
        source,
    })
}

/// `status [SERVICE]`: JSON exactly as the agent sent it.
pub(crate) async fn status(client: &Client, service: Option<&str>) -> Result<Report, Error> {
    match service {
        Some(name) => {
            let path = format!("/v1/services/{}", encode(name));
            let raw: Value = client.get(&path).await?;
            let status: ServiceStatus = decode(client, &raw, &path)?;
            Ok(Report { json: Some(raw), text: render::services(&[status]), exit_code: EXIT_OK })
        }
        None => {
            let raw: Value = client.get("/v1/services").await?;
            let list: ServiceList = decode(client, &raw, "/v1/services")?;
            let text = if list.services.is_empty() {
                "no services configured\n".to_string()
            } else {
                render::services(&list.services)
            };
            Ok(Report { json: Some(raw), text, exit_code: EXIT_OK })
        }
    }
}

/// `reload` on one agent: `{"reloaded": true, "pid": N}`. It answers once
/// the new agent has taken over, which waits for its routes to be healthy.
async fn reload(client: &Client) -> Result<Report, Error> {
    let waiting = client.clone().with_timeout(client.timeout().max(std::time::Duration::from_secs(200)));
    let raw: Value = waiting.post("/v1/reload", &json!({})).await?;
    let pid = raw["pid"].as_u64().unwrap_or(0);
    let text = format!("reloaded: the config passed the check and a new agent (pid {pid}) took over\n");
    Ok(Report { json: Some(raw), text, exit_code: EXIT_OK })
}

/// `pause`, `resume`, `maintenance`, `live` on every agent.
async fn traffic_all(clients: &[Client], service: &str, action: &str, body: &Value) -> Result<Report, Error> {
    fleet::combine(clients, fleet::each(clients, |c| traffic(c, service, action, body)).await)
}

/// One agent's `pause`, `resume`, `maintenance` or `live`: the status after.
async fn traffic(client: &Client, service: &str, action: &str, body: &Value) -> Result<Report, Error> {
    let path = format!("/v1/services/{}/{action}", encode(service));
    let raw: Value = client.post(&path, body).await?;
    let status: ServiceStatus = decode(client, &raw, &path)?;
    Ok(Report { json: Some(raw), text: render::traffic(&status), exit_code: EXIT_OK })
}

/// `replica list SERVICE`: `{"service", "replicas": [{"color", ...replica}]}`.
async fn replica_list(client: &Client, service: &str) -> Result<Report, Error> {
    let path = format!("/v1/services/{}", encode(service));
    let status: ServiceStatus = client.get(&path).await?;
    let mut replicas = Vec::new();
    for (color, c) in &status.colors {
        for r in &c.replicas {
            let mut v = serde_json::to_value(r).unwrap_or_default();
            v["color"] = json!(color);
            replicas.push(v);
        }
    }
    Ok(Report {
        json: Some(json!({"service": status.name, "replicas": replicas})),
        text: render::replicas(&status),
        exit_code: EXIT_OK,
    })
}

/// `history SERVICE`: JSON exactly as the agent sent it.
async fn history(client: &Client, service: &str) -> Result<Report, Error> {
    let path = format!("/v1/services/{}/history", encode(service));
    let raw: Value = client.get(&path).await?;
    let history: History = decode(client, &raw, &path)?;
    Ok(Report { json: Some(raw), text: render::history(&history), exit_code: EXIT_OK })
}

fn events_path(service: Option<&str>, since: Option<u64>, follow: bool) -> String {
    let mut query = vec![format!("follow={follow}")];
    if let Some(s) = service {
        query.push(format!("service={}", encode(s)));
    }
    if let Some(s) = since {
        query.push(format!("since={s}"));
    }
    format!("/v1/events?{}", query.join("&"))
}

/// One event as text; a line this bgctl cannot decode is shown raw.
fn event_text(line: &str) -> String {
    match follow::decode_event(line) {
        Some(e) => render::event_line(&e),
        None => line.to_string(),
    }
}

/// `events` without `--follow`: the retained events, as a JSON array.
async fn events_once(client: &Client, service: Option<&str>, since: Option<u64>) -> Result<Report, Error> {
    let mut stream = client.stream(&events_path(service, since, false)).await?;
    let mut events = Vec::new();
    let mut text = String::new();
    while let Some(line) = stream.next_line().await? {
        text.push_str(&event_text(&line));
        text.push('\n');
        events.push(serde_json::from_str::<Value>(&line).unwrap_or(Value::String(line)));
    }
    Ok(Report { json: Some(Value::Array(events)), text, exit_code: EXIT_OK })
}

/// `events --follow`: prints as events come, NDJSON in JSON mode (with an
/// `agent` field when there are several agents).
async fn events_follow(
    clients: &[Client],
    service: Option<&str>,
    since: Option<u64>,
    format: OutputFormat,
) -> Result<Report, Error> {
    let fleet = clients.len() > 1;
    let path = events_path(service, since, true);
    let results = fleet::each(clients, |c| {
        let path = path.clone();
        async move {
            let mut stream = c.stream(&path).await?;
            while let Some(line) = stream.next_line().await? {
                let out = match format {
                    OutputFormat::Json if fleet => match serde_json::from_str::<Value>(&line) {
                        Ok(Value::Object(mut m)) => {
                            m.insert("agent".into(), json!(c.name()));
                            Value::Object(m).to_string()
                        }
                        _ => line,
                    },
                    OutputFormat::Json => line,
                    OutputFormat::Text if fleet => format!("[{}] {}", c.name(), event_text(&line)),
                    OutputFormat::Text => event_text(&line),
                };
                let mut stdout = std::io::stdout().lock();
                writeln!(stdout, "{out}")?;
                stdout.flush()?;
            }
            eprintln!("bgctl: agent at {} ended the event stream", c.label());
            Ok(Report { json: None, text: String::new(), exit_code: EXIT_OK })
        }
    })
    .await;
    if !fleet {
        return results.into_iter().next().unwrap_or_else(|| Err(Error::Usage("no agent".into())));
    }
    let mut worst = EXIT_OK;
    for (c, r) in clients.iter().zip(results) {
        if let Err(e) = r {
            eprintln!("bgctl: [{}] {}", c.name(), e.one_line());
            worst = worst.max(e.exit_code());
        }
    }
    Ok(Report { json: None, text: String::new(), exit_code: worst })
}
