//! `bgctl status --watch`: the status of every agent again every second.
//! On a terminal each snapshot replaces the last (cursor home, clear
//! screen); otherwise snapshots are appended, each followed by a blank
//! line (one JSON document per line with `--output json`). An agent that
//! does not answer shows its error in the snapshot and the watch goes on.
//! It ends on Ctrl-C (handled in `main`) or when stdout is closed.

use crate::cli::OutputFormat;
use crate::client::Client;
use crate::error::{Error, EXIT_OK};
use crate::fleet;
use crate::ops::Report;
use std::io::{IsTerminal, Write};
use std::time::Duration;

/// Time between snapshots.
const INTERVAL: Duration = Duration::from_secs(1);
/// ANSI: cursor to the top left, clear the screen.
const CLEAR: &str = "\x1b[H\x1b[2J";

/// One snapshot as printed.
fn snapshot(result: Result<Report, Error>, format: OutputFormat) -> String {
    match (result, format) {
        (Ok(r), OutputFormat::Json) => format!("{}\n", r.json.unwrap_or_default()),
        (Ok(r), OutputFormat::Text) => r.text,
        (Err(e), OutputFormat::Json) => format!("{}\n", e.to_json()),
        (Err(e), OutputFormat::Text) => format!("bgctl: {}\n", e.one_line()),
    }
}

/// What goes on stdout for one snapshot: on a terminal a redraw with a
/// heading, else the snapshot and its separator.
fn frame(body: &str, tty: bool, format: OutputFormat, now: &str) -> String {
    match (tty, format) {
        (true, _) => format!("{CLEAR}bgctl status --watch  {now}  (Ctrl-C to stop)\n\n{body}"),
        (false, OutputFormat::Json) => body.to_string(),
        (false, OutputFormat::Text) => format!("{body}\n"),
    }
}

/// Print the status every second until stdout closes.
pub async fn watch(clients: &[Client], service: Option<&str>, format: OutputFormat) -> Result<Report, Error> {
    let tty = std::io::stdout().is_terminal();
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result =
            fleet::combine(clients, fleet::each(clients, |c| crate::commands::status(c, service)).await);
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let text = frame(&snapshot(result, format), tty, format, &now);
        let mut stdout = std::io::stdout().lock();
        match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
            // `bgctl status --watch | head` closed the pipe: done.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                return Ok(Report { json: None, text: String::new(), exit_code: EXIT_OK })
            }
            Err(e) => return Err(Error::Io(e)),
            Ok(()) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_terminal_gets_a_redraw_and_a_pipe_gets_separated_snapshots() {
        let t = frame("web  blue\n", true, OutputFormat::Text, "2026-01-01T00:00:00Z");
        assert!(t.starts_with(CLEAR), "{t:?}");
        assert!(t.ends_with("web  blue\n"));
        assert_eq!(frame("web  blue\n", false, OutputFormat::Text, "x"), "web  blue\n\n");
        assert_eq!(frame("{}\n", false, OutputFormat::Json, "x"), "{}\n", "one JSON document a line");
    }
}
