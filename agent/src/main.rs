//! `bg-agent`: parse arguments, load the config, run the daemon until
//! SIGTERM or SIGINT.

use bg_agent::config::{Config, DEFAULT_CONFIG_PATH};
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// The bluegreen host agent.
#[derive(Parser)]
#[command(version, about)]
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
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bg-agent: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        println!("{}: ok ({} service(s))", args.config.display(), config.services.len());
        return ExitCode::SUCCESS;
    }
    bg_agent::logging::init(&args.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bg-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(bg_agent::signal::cancel_on_shutdown_signal(shutdown.clone()));
        match bg_agent::daemon::run(config, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                let mut msg = format!("bg-agent: {e}");
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    msg.push_str(&format!(": {s}"));
                    source = s.source();
                }
                tracing::error!("{msg}");
                eprintln!("{msg}");
                ExitCode::FAILURE
            }
        }
    })
}
