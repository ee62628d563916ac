//! Logging through tracing: human-readable text, or JSON lines for journald
//! and log shippers. `RUST_LOG` filters (default `info`).

use tracing_subscriber::EnvFilter;

/// Install the global subscriber; `format` is `text` or `json`.
pub fn init(format: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().flatten_event(true).init();
    } else {
        builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init();
    }
}

/// An error and its sources, `: `-separated (ripgrep's `err.chain()`). Many
/// errors here already quote their source in their message; a source whose
/// text is already there is not repeated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}
