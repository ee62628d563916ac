//! The command line: clap types for every command and flag, and the value
//! parsers that validate input locally (a bad `K=V`, duration, weight or
//! rate is refused here with exit code 2, before any agent is contacted).

use crate::client::AgentAddr;
use bg_api::{ApiDuration, FailureAction, RollingOrder};
use clap::{Args, Parser, Subcommand, ValueEnum};

/// The socket `bg-agent` listens on by default.
pub const DEFAULT_AGENT: &str = "unix:///run/bg-agent/agent.sock";

/// Drive bluegreen agents: blue/green deploys, canaries, rolling updates and
/// rollbacks without downtime.
///
/// Exit codes: 0 done; 1 the operation failed (unhealthy, rolled back,
/// aborted, paused); 2 usage or input error (also an unknown service);
/// 3 agent unreachable or unauthorized; 4 conflict (another operation is
/// running on the service). With several agents, the worst (highest) code.
#[derive(Debug, Parser)]
#[command(name = "bgctl", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    /// Agent to talk to: `unix:///path/to/agent.sock`, `http://host:port`
    /// or `https://host:port` (with --ca, and --cert/--key for mutual TLS).
    /// Repeat to act on a fleet: every command then runs on every agent.
    /// Defaults to $BG_AGENT, else unix:///run/bg-agent/agent.sock.
    #[arg(long = "agent", value_name = "ADDR", global = true, value_parser = AgentAddr::parse)]
    pub agents: Vec<AgentAddr>,

    /// Bearer token for agents reached over TCP (sent as
    /// `Authorization: Bearer TOKEN`). Defaults to $BG_TOKEN.
    #[arg(long, value_name = "TOKEN", global = true, env = "BG_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// A fleet file naming every host, its agent, tags and token (see
    /// README "Fleets"). Every command acts on its hosts, like several
    /// --agent. Defaults to $BG_FLEET; --agent, when given, wins.
    #[arg(long, value_name = "FILE", global = true, env = "BG_FLEET")]
    pub fleet: Option<std::path::PathBuf>,

    /// Only these hosts of the fleet file (comma-separated names).
    #[arg(long, value_name = "A,B", global = true, value_delimiter = ',', requires = "fleet")]
    pub hosts: Option<Vec<String>>,

    /// Only the hosts of the fleet file with this tag.
    #[arg(long, value_name = "TAG", global = true, requires = "fleet")]
    pub tag: Option<String>,

    /// How long a host may take to answer one request, and be unreachable
    /// while an operation is followed, before it is given up. A slow link
    /// answers within it; a dead one does not.
    #[arg(long, value_name = "D", global = true, env = "BG_HOST_TIMEOUT", value_parser = parse_duration, default_value = "30s")]
    pub host_timeout: ApiDuration,

    /// CA certificate (PEM) that signed the agents' certificates, for
    /// `https://` agents. Defaults to $BG_CA.
    #[arg(long, value_name = "FILE", global = true, env = "BG_CA")]
    pub ca: Option<std::path::PathBuf>,

    /// Client certificate (PEM) for agents that require one (mutual TLS).
    /// Defaults to $BG_CERT.
    #[arg(long, value_name = "FILE", global = true, env = "BG_CERT")]
    pub cert: Option<std::path::PathBuf>,

    /// The client certificate's private key (PEM). Defaults to $BG_KEY.
    #[arg(long, value_name = "FILE", global = true, env = "BG_KEY")]
    pub key: Option<std::path::PathBuf>,

    /// Output format on stdout. `json` prints exactly one JSON document for
    /// every command, errors included (`events --follow` prints one JSON
    /// object per line instead). Progress always goes to stderr.
    #[arg(long, value_enum, global = true, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The format of what bgctl prints on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Tables and lines for people.
    Text,
    /// One JSON document for scripts.
    Json,
}

/// Every bgctl command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show services: active color, weights, revision, running operation and
    /// every replica; with --watch, again every second until Ctrl-C.
    Status {
        /// Only this service (default: all services).
        service: Option<String>,
        /// Show it again every second until Ctrl-C: redrawn in place on a
        /// terminal, plain snapshots separated by a blank line otherwise
        /// (one JSON document per line with --output json).
        #[arg(long, short = 'w')]
        watch: bool,
    },
    /// Start the idle color with the service's spec plus these overrides and
    /// wait until it is healthy (traffic does not move unless --promote).
    Deploy(DeployArgs),
    /// Switch all traffic to the new color, drain and stop the old one.
    Promote(PromoteArgs),
    /// Go back to the previous color and its exact previous spec.
    Rollback {
        /// The service.
        service: String,
    },
    /// Stop the running operation and remove the new color; traffic stays
    /// where it is.
    Abort {
        /// The service.
        service: String,
    },
    /// Send part of the traffic to the new color: a fixed weight, or stepped
    /// with automatic abort when the new color misbehaves.
    Canary(CanaryArgs),
    /// Replace the active color's replicas in batches (Swarm-style rolling
    /// update).
    Rolling(RollingArgs),
    /// Act on one replica by hand: drain, update, enable, or list them.
    Replica {
        /// The replica action.
        #[command(subcommand)]
        action: ReplicaCommand,
    },
    /// Print the agent's events (retained ones, then new ones with --follow).
    Events {
        /// Only this service's events (default: every service).
        service: Option<String>,
        /// Keep printing new events until interrupted.
        #[arg(long, short)]
        follow: bool,
        /// Start at this event sequence number (default: every retained event).
        #[arg(long, value_name = "SEQ")]
        since: Option<u64>,
    },
    /// Print the past operations of a service, oldest first.
    History {
        /// The service.
        service: String,
    },
    /// Hold the service's new requests (they wait, then go on in the order
    /// they came at `resume`; one held longer than --max gets 503), e.g.
    /// around a database switch. Not persisted: a restarted agent serves.
    Pause {
        /// The service.
        service: String,
        /// The longest one request is held.
        #[arg(long, value_name = "D", value_parser = parse_duration)]
        max: Option<ApiDuration>,
    },
    /// Let held and new requests go on (ends `pause`).
    Resume {
        /// The service.
        service: String,
    },
    /// Answer every request with 503, this message and `Retry-After` until
    /// `live`; replicas keep running and deploys work meanwhile. Kept
    /// across agent restarts.
    Maintenance {
        /// The service.
        service: String,
        /// The text requests get (default: a short notice).
        #[arg(long, value_name = "TEXT")]
        message: Option<String>,
    },
    /// End maintenance: requests go on to the replicas again.
    Live {
        /// The service.
        service: String,
    },
    /// Re-read the agent's config: checked first and refused whole if it
    /// fails (exit 2, with the check's message); else a new agent process
    /// takes over without a gap, starting added services, applying changed
    /// settings and stopping removed services once their connections are
    /// done. Refused while an operation runs (exit 4). Same as SIGHUP.
    Reload,
    /// Run the service's spec once with another command, e.g. migrations:
    /// `bgctl run web -- bin/migrate up`. Runs the candidate's spec (deployed,
    /// not yet promoted), else the active one, else the configured one; its
    /// output is printed as it comes and bgctl exits with its exit code
    /// (which may overlap with bgctl's own codes 1-4: with `--output json`
    /// the document tells them apart). Acts on one agent.
    Run(RunArgs),
    /// Print a shell completion script, e.g.
    /// `bgctl completions bash > /etc/bash_completion.d/bgctl`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// `--host-parallelism`: a count of hosts or a share of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostParallelism {
    /// This many hosts per batch.
    Hosts(usize),
    /// This percentage of the hosts per batch (at least one).
    Percent(u8),
}

impl HostParallelism {
    /// Hosts per batch out of `total`.
    pub fn batch(self, total: usize) -> usize {
        match self {
            HostParallelism::Hosts(n) => n,
            HostParallelism::Percent(p) => (total * usize::from(p)).div_ceil(100),
        }
        .clamp(1, total.max(1))
    }
}

/// `3` or `25%`.
pub fn parse_parallelism(s: &str) -> Result<HostParallelism, String> {
    let bad = || format!("{s:?} is not a number of hosts (e.g. 2) or a percentage (e.g. 25%)");
    match s.strip_suffix('%') {
        Some(p) => match p.trim().parse::<u8>() {
            Ok(p) if (1..=100).contains(&p) => Ok(HostParallelism::Percent(p)),
            _ => Err(bad()),
        },
        None => match s.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(HostParallelism::Hosts(n)),
            _ => Err(bad()),
        },
    }
}

/// `bgctl run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The service.
    pub service: String,
    /// Image to run instead of the spec's (docker runtime).
    #[arg(long, value_name = "IMG")]
    pub image: Option<String>,
    /// The program and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Spec overrides shared by `deploy`, `rolling` and `replica update`.
#[derive(Debug, Args, Clone, Default)]
pub struct OverrideArgs {
    /// Image to run instead of the configured one (docker runtime).
    #[arg(long, value_name = "IMG")]
    pub image: Option<String>,
    /// Add or replace an environment variable for this deploy only. Repeat
    /// for several.
    #[arg(long = "env", value_name = "K=V", value_parser = parse_env_pair)]
    pub env: Vec<(String, String)>,
}

/// `bgctl deploy`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The service.
    pub service: String,
    /// Spec overrides.
    #[command(flatten)]
    pub overrides: OverrideArgs,
    /// Command to run instead of the configured one. The value is split on
    /// whitespace (no shell quoting): `--command "/opt/web/server --fast"`.
    /// Repeat to append more words, e.g. an argument that itself starts
    /// with a dash: `--command /opt/web/server --command=--fast`.
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub command: Vec<String>,
    /// Promote as soon as the new color is healthy. With several agents:
    /// only after every agent's new color is healthy.
    #[arg(long)]
    pub promote: bool,
    /// With --promote and several agents: promote this agent first and the
    /// others only after its promote (including its monitor window)
    /// succeeded. One of the --agent values, or a host name of the fleet
    /// file.
    #[arg(long, value_name = "HOST", requires = "promote")]
    pub canary_host: Option<String>,
    /// With --promote on a fleet: deploy and promote this many hosts at a
    /// time (or this percentage of them, e.g. 25%), each batch healthy on
    /// the new version before the next starts; the first failure stops
    /// the rest. Default: all hosts in one two-phase batch.
    #[arg(long, value_name = "N|P%", value_parser = parse_parallelism, requires = "promote")]
    pub host_parallelism: Option<HostParallelism>,
    /// Return as soon as the agent accepted the deploy instead of waiting
    /// for it to finish.
    #[arg(long)]
    pub no_wait: bool,
}

/// `bgctl promote`.
#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// The service.
    pub service: String,
    /// With several agents: promote this agent first and the others only
    /// after its promote (including its monitor window) succeeded. Must be
    /// one of the --agent values (or a host name of the fleet file).
    #[arg(long, value_name = "HOST")]
    pub canary_host: Option<String>,
    /// Return as soon as the agent accepted the promote.
    #[arg(long)]
    pub no_wait: bool,
}

/// `bgctl canary`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["weight", "steps"])))]
pub struct CanaryArgs {
    /// The service.
    pub service: String,
    /// Send this percentage (0-100, `10` or `10%`) of new clients to the new
    /// color and return.
    #[arg(long, value_name = "PCT", value_parser = parse_percent)]
    pub weight: Option<u8>,
    /// Step through these percentages, e.g. `10,25,50`; each step is judged
    /// after --interval.
    #[arg(long, value_name = "PCTS", value_parser = parse_steps)]
    pub steps: Option<Steps>,
    /// How long to hold each step before judging it, e.g. `30s`, `2m`.
    #[arg(long, value_name = "D", value_parser = parse_duration, conflicts_with = "weight")]
    pub interval: Option<ApiDuration>,
    /// Abort when the new color's 5xx rate exceeds the stable color's over
    /// the same step by more than this: `1%` or `0.01` (default 1%).
    #[arg(long, value_name = "RATE", value_parser = parse_rate, conflicts_with = "weight")]
    pub max_error_rate: Option<f64>,
    /// Abort when the new color's p99 latency passes this, e.g. `300ms`.
    #[arg(long, value_name = "D", value_parser = parse_duration, conflicts_with = "weight")]
    pub max_p99: Option<ApiDuration>,
    /// A step that saw fewer requests than this waits longer (up to another
    /// interval) before it is judged.
    #[arg(long, value_name = "N", conflicts_with = "weight")]
    pub min_requests: Option<u64>,
    /// Promote after the last step passed.
    #[arg(long, conflicts_with = "weight")]
    pub promote: bool,
}

/// `bgctl rolling`.
#[derive(Debug, Args)]
pub struct RollingArgs {
    /// The service.
    pub service: String,
    /// Spec overrides.
    #[command(flatten)]
    pub overrides: OverrideArgs,
    /// Command to run instead of the configured one, split on whitespace
    /// like `deploy --command`.
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub command: Vec<String>,
    /// Replicas replaced at once (at least 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub parallelism: Option<u32>,
    /// Pause between batches, e.g. `10s`.
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub delay: Option<ApiDuration>,
    /// `start-first` starts the new replica before stopping the old one;
    /// `stop-first` drains and stops the old one first.
    #[arg(long, value_parser = wire_choice::<RollingOrder>(ORDERS))]
    pub order: Option<RollingOrder>,
    /// What to do when a batch fails: stop and wait (`pause`), go on
    /// (`continue`), or put every replica back (`rollback`).
    #[arg(long, value_parser = wire_choice::<FailureAction>(FAILURE_ACTIONS))]
    pub failure_action: Option<FailureAction>,
    /// Watch each batch this long after it is in, e.g. `30s`.
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub monitor: Option<ApiDuration>,
    /// Failed batches tolerated, as a fraction of all batches: `0.2` or
    /// `20%`.
    #[arg(long, value_name = "R", value_parser = parse_rate)]
    pub max_failure_ratio: Option<f64>,
    /// Continue a paused rolling update instead of starting a new one.
    #[arg(long)]
    pub resume: bool,
}

/// `bgctl replica ...`.
#[derive(Debug, Subcommand)]
pub enum ReplicaCommand {
    /// Take a replica out of the proxy and wait until its in-flight
    /// requests finished.
    Drain {
        /// The service.
        service: String,
        /// The replica id (see `replica list`).
        replica: String,
    },
    /// Put a replica back into the proxy's rotation.
    Enable {
        /// The service.
        service: String,
        /// The replica id (see `replica list`).
        replica: String,
    },
    /// Replace one replica with a new spec (drain it first).
    Update {
        /// The service.
        service: String,
        /// The replica id (see `replica list`).
        replica: String,
        /// Spec overrides.
        #[command(flatten)]
        overrides: OverrideArgs,
    },
    /// List the replicas of both colors.
    List {
        /// The service.
        service: String,
    },
}

/// Canary steps in percent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Steps(pub Vec<u8>);

/// Parses `KEY=VALUE`; the key must be a non-empty environment variable name.
pub fn parse_env_pair(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} is not KEY=VALUE (no '=')"))?;
    if k.is_empty() {
        return Err(format!("{s:?} has an empty variable name"));
    }
    let valid = k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !k.starts_with(|c: char| c.is_ascii_digit());
    if !valid {
        return Err(format!(
            "{k:?} is not a valid variable name (letters, digits and '_', not starting with a digit)"
        ));
    }
    Ok((k.to_string(), v.to_string()))
}

/// Parses a humantime duration such as `30s`, `1m30s`, `300ms`: the
/// API's own type, read once here.
pub fn parse_duration(s: &str) -> Result<ApiDuration, String> {
    ApiDuration::parse(s)
}

/// A parser for one of the API's choice enums, offering exactly its wire
/// names (so `--help` and the completions list them).
fn wire_choice<T>(names: &'static [&'static str]) -> impl clap::builder::TypedValueParser<Value = T>
where
    T: serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
{
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(names).map(|s| {
        serde_json::from_value(serde_json::Value::String(s)).expect("every offered name is a wire name")
    })
}

/// The wire names of [`RollingOrder`].
pub const ORDERS: &[&str] = &["start-first", "stop-first"];
/// The wire names of [`FailureAction`].
pub const FAILURE_ACTIONS: &[&str] = &["pause", "continue", "rollback"];

/// Parses a percentage 0-100, with or without a trailing `%`.
pub fn parse_percent(s: &str) -> Result<u8, String> {
    let t = s.trim();
    let t = t.strip_suffix('%').unwrap_or(t).trim();
    let n: u64 = t.parse().map_err(|_| format!("{s:?} is not a whole percentage between 0 and 100"))?;
    if n > 100 {
        return Err(format!("{s:?} is more than 100%"));
    }
    Ok(n as u8)
}

/// Parses a comma-separated list of percentages, e.g. `10,25,50`.
pub fn parse_steps(s: &str) -> Result<Steps, String> {
    let steps = s
        .split(',')
        .map(|p| {
            let p = p.trim();
            if p.is_empty() {
                return Err(format!("{s:?} has an empty step"));
            }
            parse_percent(p).map_err(|e| format!("step {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if steps.contains(&0) {
        return Err(format!("{s:?}: a step of 0% sends no traffic to judge"));
    }
    Ok(Steps(steps))
}

/// Parses a fraction between 0 and 1, written `0.01` or `1%`.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let (num, scale) = match t.strip_suffix('%') {
        Some(n) => (n.trim(), 100.0),
        None => (t, 1.0),
    };
    let v: f64 = num.parse().map_err(|_| format!("{s:?} is not a rate like 1% or 0.01"))?;
    let v = v / scale;
    if !v.is_finite() || !(0.0..=1.0).contains(&v) {
        return Err(format!("{s:?} is not between 0 and 1 (write a percentage with '%', e.g. 5%)"));
    }
    Ok(v)
}

/// Splits `--command` values into words: each value on whitespace, values
/// appended in order. `None` when no `--command` was given.
pub fn command_words(values: &[String]) -> Result<Option<Vec<String>>, String> {
    if values.is_empty() {
        return Ok(None);
    }
    let words: Vec<String> = values.iter().flat_map(|v| v.split_whitespace()).map(str::to_string).collect();
    if words.is_empty() {
        return Err("--command is empty".to_string());
    }
    Ok(Some(words))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn env_pairs() {
        assert_eq!(parse_env_pair("VERSION=v2").unwrap(), ("VERSION".into(), "v2".into()));
        assert_eq!(parse_env_pair("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert_eq!(parse_env_pair("EMPTY=").unwrap(), ("EMPTY".into(), "".into()));
        assert!(parse_env_pair("NOEQUALS").unwrap_err().contains("NOEQUALS"));
        assert!(parse_env_pair("=v").is_err());
        assert!(parse_env_pair("1X=v").is_err());
        assert!(parse_env_pair("A-B=v").unwrap_err().contains("A-B"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap().0, std::time::Duration::from_secs(30));
        assert_eq!(parse_duration("300ms").unwrap().to_string(), "300ms");
        for name in ORDERS {
            assert!(serde_json::from_value::<RollingOrder>(serde_json::json!(name)).is_ok(), "{name}");
        }
        for name in FAILURE_ACTIONS {
            assert!(serde_json::from_value::<FailureAction>(serde_json::json!(name)).is_ok(), "{name}");
        }
        assert!(parse_duration("30 parsecs").unwrap_err().contains("30 parsecs"));
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn percents_and_steps() {
        assert_eq!(parse_percent("10").unwrap(), 10);
        assert_eq!(parse_percent("10%").unwrap(), 10);
        assert_eq!(parse_percent("100").unwrap(), 100);
        assert!(parse_percent("101").unwrap_err().contains("101"));
        assert!(parse_percent("-1").is_err());
        assert!(parse_percent("1.5").is_err());
        assert_eq!(parse_steps("10,25, 50").unwrap(), Steps(vec![10, 25, 50]));
        assert!(parse_steps("10,,50").is_err());
        assert!(parse_steps("10,200").unwrap_err().contains("200"));
        assert!(parse_steps("0,10").is_err());
    }

    #[test]
    fn rates_accept_percent_and_fraction() {
        assert_eq!(parse_rate("1%").unwrap(), 0.01);
        assert_eq!(parse_rate("0.01").unwrap(), 0.01);
        assert_eq!(parse_rate("0").unwrap(), 0.0);
        assert_eq!(parse_rate("100%").unwrap(), 1.0);
        assert!(parse_rate("5").unwrap_err().contains("5%"));
        assert!(parse_rate("abc").is_err());
        assert!(parse_rate("NaN").is_err());
    }

    #[test]
    fn command_words_split_and_append() {
        assert_eq!(command_words(&[]).unwrap(), None);
        assert_eq!(
            command_words(&["/bin/app  --a".into(), "--b".into()]).unwrap(),
            Some(vec!["/bin/app".into(), "--a".into(), "--b".into()])
        );
        assert!(command_words(&["  ".into()]).is_err());
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = Cli::try_parse_from([
            "bgctl",
            "status",
            "web",
            "--output",
            "json",
            "--agent",
            "http://127.0.0.1:7070",
            "--agent",
            "unix:///tmp/a.sock",
        ])
        .unwrap();
        assert_eq!(cli.output, OutputFormat::Json);
        assert_eq!(cli.agents.len(), 2);
    }

    #[test]
    fn canary_needs_weight_or_steps_but_not_both() {
        assert!(Cli::try_parse_from(["bgctl", "canary", "web"]).is_err());
        assert!(Cli::try_parse_from(["bgctl", "canary", "web", "--weight", "10", "--steps", "10"]).is_err());
        assert!(
            Cli::try_parse_from(["bgctl", "canary", "web", "--weight", "10", "--interval", "1s"]).is_err()
        );
        assert!(Cli::try_parse_from([
            "bgctl",
            "canary",
            "web",
            "--steps",
            "10,50",
            "--interval",
            "1s",
            "--max-error-rate",
            "1%"
        ])
        .is_ok());
    }

    #[test]
    fn command_values_may_start_with_a_dash_without_eating_flags() {
        let cli = Cli::try_parse_from([
            "bgctl",
            "deploy",
            "web",
            "--command",
            "/opt/web/server",
            "--command",
            "--fast",
            "--promote",
        ])
        .unwrap();
        let Command::Deploy(args) = cli.command else {
            panic!("deploy expected");
        };
        assert_eq!(args.command, ["/opt/web/server", "--fast"]);
        assert!(args.promote);
    }
}
