//! Stop-signal names. The config, the process runtime and the docker
//! runtime all accept the same spellings (`SIGTERM`, `TERM`, `sigterm`) and
//! agree on one canonical form (`SIGTERM`).

use nix::sys::signal::Signal;
use std::str::FromStr;

/// Parse a signal name: `SIGTERM`, `TERM`, `sigterm` and `term` are all
/// SIGTERM. Numbers are refused: names read better in configs and logs.
pub fn parse_signal(name: &str) -> Result<Signal, String> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    Signal::from_str(&full).map_err(|_| {
        format!(
            "unknown signal {name:?}: expected a signal name such as SIGTERM, SIGINT, SIGQUIT, SIGHUP or SIGUSR1"
        )
    })
}

/// The canonical spelling of a signal name (`term` → `SIGTERM`).
pub fn canonical_signal(name: &str) -> Result<String, String> {
    parse_signal(name).map(|s| s.as_str().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_usual_spellings() {
        for n in ["SIGTERM", "TERM", "sigterm", "term", " SIGTERM "] {
            assert_eq!(parse_signal(n).unwrap(), Signal::SIGTERM, "{n}");
        }
        assert_eq!(parse_signal("SIGUSR1").unwrap(), Signal::SIGUSR1);
        assert_eq!(canonical_signal("quit").unwrap(), "SIGQUIT");
    }

    #[test]
    fn refuses_unknown_names() {
        let err = parse_signal("SIGFOO").unwrap_err();
        assert!(err.contains("SIGFOO"), "{err}");
        assert!(parse_signal("15").is_err());
    }
}
