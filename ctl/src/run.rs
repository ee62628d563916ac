//! `bgctl run SERVICE -- CMD...`: a one-off run of the service's spec on
//! one agent. Text mode prints the program's lines as they come (stdout to
//! stdout, stderr and the agent's progress to stderr); `--output json`
//! prints `{"exit_code": N, "output": [{"stream", "line"}...]}` at the end.
//! bgctl exits with the program's exit code.

use crate::cli::{OutputFormat, RunArgs};
use crate::client::{encode, Client};
use crate::error::{Error, EXIT_FAILED};
use crate::ops::Report;
use bg_api::{RunLine, RunRequest};
use serde_json::{json, Value};
use std::io::Write;

/// Runs `args` through `clients`, which must be exactly one agent.
pub async fn run(clients: &[Client], args: RunArgs, format: OutputFormat) -> Result<Report, Error> {
    let [client] = clients else {
        return Err(Error::Usage(format!(
            "run acts on one agent, {} were given: pick one with --agent",
            clients.len()
        )));
    };
    let path = format!("/v1/services/{}/run", encode(&args.service));
    let request = RunRequest { command: args.command, image: args.image };
    let mut lines = client.post_stream(&path, &request).await?;
    let mut output = Vec::new();
    let addr = client.label();
    while let Some(line) = lines.next_line().await? {
        let parsed: RunLine = serde_json::from_str(&line).map_err(|source| Error::Decode {
            addr: addr.clone(),
            what: "a line of the run's output".into(),
            source,
        })?;
        match parsed {
            RunLine::Output { stream, line } => {
                if format == OutputFormat::Json {
                    output.push(json!({"stream": stream, "line": line}));
                } else if stream == "stdout" {
                    writeln!(std::io::stdout().lock(), "{line}")?;
                } else {
                    writeln!(std::io::stderr().lock(), "{line}")?;
                }
            }
            RunLine::Exit { exit_code } => {
                let code = u8::try_from(exit_code).unwrap_or(EXIT_FAILED);
                let doc = json!({"exit_code": exit_code, "output": Value::Array(output)});
                return Ok(Report { json: Some(doc), text: String::new(), exit_code: code });
            }
            RunLine::Error { error } => return Err(Error::RunFailed { addr, message: error }),
        }
    }
    Err(Error::RunFailed { addr, message: "the agent ended the answer before the run ended".into() })
}
