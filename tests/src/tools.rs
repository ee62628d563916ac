//! Gate for tests that need an installed program (chromium, prometheus):
//! with `BG_DOCKER_TESTS=1` a missing one fails the test, otherwise the
//! test is skipped with a printed reason.

use std::path::{Path, PathBuf};

/// `path` when it exists; `None` (the test should return) when it does not
/// and it is not required. Panics when required (`BG_DOCKER_TESTS=1`) and
/// missing.
pub fn required_tool(test: &str, path: &str) -> Option<PathBuf> {
    if Path::new(path).exists() {
        return Some(PathBuf::from(path));
    }
    let required = std::env::var("BG_DOCKER_TESTS").is_ok_and(|v| v == "1");
    assert!(!required, "{test}: BG_DOCKER_TESTS=1 but {path} is not installed");
    eprintln!("{test}: not run: {path} is not installed and BG_DOCKER_TESTS is not 1");
    None
}

/// Percent-encode a query parameter value (RFC 3986 unreserved kept).
pub fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
