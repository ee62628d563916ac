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
}
