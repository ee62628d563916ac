//! `bg-agent`: parse arguments, load the config, run the daemon until
//! SIGTERM or SIGINT.

use bg_agent::config::{Config, DEFAULT_CONFIG_PATH};
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// What `--help` says after the options: files, environment, signals.
const AFTER_HELP: &str = "\
Runs every service of the config: an embedded reverse proxy on its `listen`
addresses, its replicas (Docker containers or local processes), health
checks and deploys driven by bgctl over the control socket.

Files:
  /etc/bg-agent/agent.toml   the config (annotated examples in
                             /usr/share/doc/bluegreen/examples/)
  /var/lib/bg-agent          state (services, revisions, process records)
  /run/bg-agent/agent.sock   the control API, used by bgctl

Under systemd (bg-agent.socket + bg-agent.service, shipped by the package):
  systemctl enable --now bg-agent.socket bg-agent.service
The sockets come from systemd (LISTEN_FDS, matched by address), READY is
sent once every service's routes are healthy, the watchdog is pinged at half
WatchdogSec. `systemctl restart bg-agent` loses no request and keeps the
replicas running; the new agent adopts them.

Environment:
  BG_REPLICA_SCOPE=systemd   start process replicas in transient systemd
                             scopes of their own (bluegreen.slice), outside
                             the agent's cgroup; set by bg-agent.service
  RUST_LOG                   log filter, e.g. bg_agent=debug

Signals: SIGTERM or SIGINT stop the agent gracefully (replicas keep running);
SIGHUP reloads the config (like bgctl reload): checked first, refused whole
if it fails the check; a new agent process takes over without a gap.
Exit status: 0 stopped, 1 failed while running, 2 bad config or arguments.";

/// The bluegreen host agent.
#[derive(Parser)]
#[command(version, about, after_help = AFTER_HELP)]
struct Args {
    /// Config file.
    #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Validate the config file, print what is wrong, and exit.
    #[arg(long)]
    check_config: bool,
    /// Log format: `text` (human) or `json` (one object per line).
    #[arg(long, value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
    /// Set by the agent a reload replaces (`bgctl reload`, SIGHUP): its pid.
    #[arg(long, value_name = "PID", hide = true)]
    reload_from: Option<u32>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.check_config {
        // A human (or a deploy script) reads this: plain lines, no logger.
        return match Config::load(&args.config) {
            Ok(config) => match check_outside(&config) {
                Ok(()) => {
                    println!("{}: ok ({} service(s))", args.config.display(), config.services.len());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("bg-agent: {}: {e}", args.config.display());
                    ExitCode::from(2)
                }
            },
            Err(e) => {
                eprintln!("bg-agent: {}", bg_agent::logging::error_chain(&e));
                ExitCode::from(2)
            }
        };
    }
    // From here on everything goes through the logger, so that with
    // `--log-format json` every line on stderr is one JSON object.
    bg_agent::logging::init(&args.log_format);
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("bg-agent: {}", bg_agent::logging::error_chain(&e));
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.agent.worker_threads)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("bg-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        match bg_agent::daemon::run(config, shutdown, args.reload_from).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("bg-agent: {}", bg_agent::logging::error_chain(&e));
                ExitCode::FAILURE
            }
        }
    })
}

/// What the config check asks of the world outside the file: that the
/// ACME directory answers (see [`bg_agent::acme::check_directory`]).
fn check_outside(config: &Config) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(bg_agent::acme::check_directory(config)).map_err(|e| e.to_string())
}
