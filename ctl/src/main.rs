//! `bgctl`: the command-line client of bluegreen agents. This file is only
//! wiring: parse the command line, run the command on a tokio runtime,
//! print the report or the error (with its source chain), exit with the
//! documented code.
//!
//! Output contract: with `--output json` stdout carries exactly one JSON
//! document (compact, one line) for every command, errors included:
//! `{"error": {"code": "...", "message": "..."}, "exit_code": N}`. The one
//! exception is `events --follow`, which prints one JSON object per event
//! (NDJSON). Errors are also written as one line to stderr, in both formats.
#![forbid(unsafe_code)]

mod cli;
mod client;
mod commands;
mod error;
mod fleet;
mod fleetfile;
mod follow;
mod ops;
mod render;
mod run;
mod tls;
mod watch;

use clap::Parser;
use cli::{Cli, OutputFormat};
use error::{Error, EXIT_USAGE};
use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

/// The exit code after Ctrl-C (128 + SIGINT), as shells expect.
const EXIT_INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => return usage_error(e, wants_json(&args)),
    };
    let format = cli.output;
    let watching = matches!(cli.command, cli::Command::Status { watch: true, .. });
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&Error::Io(e), format),
    };
    let result = runtime.block_on(async {
        tokio::select! {
            r = commands::run(cli) => Some(r),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    match result {
        // Ctrl-C is how a watch ends.
        None if watching => ExitCode::SUCCESS,
        None => {
            eprintln!(
                "bgctl: interrupted; an operation the agent already accepted goes on (see bgctl status, stop it with bgctl abort SERVICE)"
            );
            ExitCode::from(EXIT_INTERRUPTED)
        }
        Some(Err(e)) => fail(&e, format),
        Some(Ok(report)) => {
            let written = match (format, &report.json) {
                (OutputFormat::Json, Some(doc)) => out(&format!("{doc}\n")),
                (OutputFormat::Json, None) => Ok(()),
                (OutputFormat::Text, _) => out(&report.text),
            };
            match written {
                // A closed pipe (`bgctl events | head`) is not an error.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::from(report.exit_code),
                Err(e) => fail(&Error::Io(e), format),
                Ok(()) => ExitCode::from(report.exit_code),
            }
        }
    }
}

fn out(text: &str) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()
}

/// Prints an error: one line on stderr, and the JSON document on stdout in
/// JSON mode.
fn fail(e: &Error, format: OutputFormat) -> ExitCode {
    eprintln!("bgctl: {}", e.one_line());
    if format == OutputFormat::Json {
        let _ = out(&format!("{}\n", e.to_json()));
    }
    ExitCode::from(e.exit_code())
}

/// clap's errors: help and version go to stdout with exit 0; usage errors
/// exit 2, with the JSON document too when `--output json` was asked for.
fn usage_error(e: clap::Error, json: bool) -> ExitCode {
    if !e.use_stderr() || !json {
        e.exit();
    }
    let _ = e.print();
    let rendered = e.render().to_string();
    let message = rendered.lines().next().unwrap_or("usage error").trim_start_matches("error: ").to_string();
    let doc = serde_json::json!({
        "error": {"code": "usage", "message": message},
        "exit_code": EXIT_USAGE,
    });
    let _ = out(&format!("{doc}\n"));
    ExitCode::from(EXIT_USAGE)
}

/// Whether `--output json` is on the command line, for errors found before
/// it is parsed. The last `--output` wins, like clap's.
fn wants_json(args: &[OsString]) -> bool {
    let mut json = false;
    let mut iter = args.iter().skip(1).map(|a| a.to_string_lossy());
    while let Some(arg) = iter.next() {
        if arg == "--" {
            break;
        }
        if arg == "--output" {
            json = iter.next().is_some_and(|v| v == "json");
        } else if let Some(v) = arg.strip_prefix("--output=") {
            json = v == "json";
        }
    }
    json
}
