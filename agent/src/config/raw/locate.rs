//! Turn byte offsets into what a user can find in their editor: a 1-based
//! line number and the dotted key whose key or value covers the offset.

use toml::de::{DeTable, DeValue};

/// The 1-based line of byte `offset` in `text`.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    // A span may start inside a multi-byte character only in broken input;
    // count bytes, which is all a newline count needs.
    text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

/// The dotted path (`services.web.health.interval`) of the innermost key
/// whose key or value span contains `offset`; empty at the top level.
pub(super) fn key_at(table: &DeTable<'_>, offset: usize) -> String {
    let mut path = Vec::new();
    walk_table(table, offset, &mut path);
    path.join(".")
}

fn walk_table(table: &DeTable<'_>, offset: usize, path: &mut Vec<String>) {
    for (key, value) in table {
        let in_key = key.span().contains(&offset);
        let in_value = value.span().contains(&offset);
        if in_key || in_value {
            path.push(key.get_ref().to_string());
            if !in_key {
                walk_value(value.get_ref(), offset, path);
            }
            return;
        }
    }
    // Tables opened by a `[header]` have no value span that covers their
    // body, so look inside every sub-table for a match.
    for (key, value) in table {
        if let DeValue::Table(sub) = value.get_ref() {
            let before = path.len();
            path.push(key.get_ref().to_string());
            walk_table(sub, offset, path);
            if path.len() > before + 1 {
                return;
            }
            path.truncate(before);
        }
    }
}

/// Longest key text quoted from a line that does not parse: a broken file
/// may hold anything, and the message should stay one readable line.
const MAX_GUESSED_KEY: usize = 80;

/// The dotted key a TOML *syntax* error on 1-based `line` is most likely
/// about, for a file that cannot be parsed into a table: the last `[table]`
/// header above the line, joined with the key left of `=` on the line (or
/// the header on the line itself). A best guess read from the text; `None`
/// when the line names no key.
pub(super) fn key_near_line(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let here = lines.get(line.checked_sub(1)?)?;
    if let Some(header) = header_of(here) {
        return Some(header);
    }
    let table = lines[..line - 1].iter().rev().find_map(|l| header_of(l));
    let key = here.split_once('=').map(|(k, _)| clean_key(k)).filter(|k| !k.is_empty());
    match (table, key) {
        (Some(t), Some(k)) => Some(shorten(format!("{t}.{k}"))),
        (None, Some(k)) => Some(shorten(k)),
        (Some(t), None) => Some(t),
        (None, None) => None,
    }
}

/// The table a `[header]` or `[[header]]` line opens, also when its closing
/// bracket is missing.
fn header_of(line: &str) -> Option<String> {
    let body = line.trim_start().strip_prefix('[')?;
    let body = body.strip_prefix('[').unwrap_or(body);
    let body = body.split('#').next().unwrap_or("");
    let name = clean_key(body.split(']').next().unwrap_or(""));
    (!name.is_empty()).then(|| shorten(name))
}

/// A key as written, without quotes around its parts or spaces around dots.
fn clean_key(raw: &str) -> String {
    raw.split('.')
        .map(|part| part.trim().trim_matches(|c| c == '"' || c == '\'').trim())
        .collect::<Vec<_>>()
        .join(".")
        .trim_matches('.')
        .to_string()
}

fn shorten(mut key: String) -> String {
    if key.chars().count() > MAX_GUESSED_KEY {
        key = key.chars().take(MAX_GUESSED_KEY).collect::<String>() + "...";
    }
    key
}

fn walk_value(value: &DeValue<'_>, offset: usize, path: &mut Vec<String>) {
    match value {
        DeValue::Table(t) => walk_table(t, offset, path),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                if item.span().contains(&offset) {
                    if let Some(last) = path.last_mut() {
                        last.push_str(&format!("[{i}]"));
                    }
                    walk_value(item.get_ref(), offset, path);
                    return;
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_one_based() {
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 4), 3);
        assert_eq!(line_of("a", 99), 1);
    }

    #[test]
    fn finds_keys_under_headers_and_inline_tables() {
        let text = "[services.web]\nlisten = [\"a\", \"b\"]\n[services.web.health]\ninterval = \"x\"\nenv = { A = \"1\" }\n";
        let doc = DeTable::parse(text).unwrap();
        let at = |needle: &str| key_at(doc.get_ref(), text.find(needle).unwrap());
        assert_eq!(at("interval"), "services.web.health.interval");
        assert_eq!(at("\"x\""), "services.web.health.interval");
        assert_eq!(at("\"b\""), "services.web.listen[1]");
        assert_eq!(at("A ="), "services.web.health.env.A");
    }

    #[test]
    fn guesses_the_key_of_a_line_that_does_not_parse() {
        let text = "[agent]\nstate_dir = \"a\"\n[services.web.health]\ninterval = 1s\n[services.x\nnope\n";
        assert_eq!(key_near_line(text, 2).as_deref(), Some("agent.state_dir"));
        assert_eq!(key_near_line(text, 4).as_deref(), Some("services.web.health.interval"));
        assert_eq!(key_near_line(text, 5).as_deref(), Some("services.x"));
        assert_eq!(key_near_line(text, 6).as_deref(), Some("services.x"));
        assert_eq!(key_near_line("\"a b\" . c = [\n", 1).as_deref(), Some("a b.c"));
        assert_eq!(key_near_line("garbage\n", 1), None);
        assert_eq!(key_near_line("x", 0), None);
        assert_eq!(key_near_line("x", 9), None);
        let long = format!("{} = ?", "k".repeat(500));
        assert!(key_near_line(&long, 1).unwrap().len() < 100);
    }
}
