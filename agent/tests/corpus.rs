//! Checked-in nasty inputs, each accepted or refused as its name says.
//!
//! `corpus/config/ok-*.toml` must load; `corpus/config/bad-*.toml` must be
//! refused, and the first line `# expect: FRAGMENT` of each names a piece of
//! the message. `corpus/api/{ok,bad}-KIND-*.json` are request bodies for
//! KIND (`deploy`, `canary`, `rolling`, `replica-update`, or `empty` for
//! the operations without parameters); `corpus/api/EXPECT` holds the
//! fragment each bad body's message must contain. Add a file to add a case.

use bg_agent::api::{CanaryRequest, DeployRequest, RollingRequest, SpecOverrides};
use bg_agent::config::{Config, ConfigError};
use bg_agent::decode::{decode, decode_empty, DecodeError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn corpus(dir: &str) -> Vec<(String, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(dir);
    let mut files: Vec<(String, PathBuf)> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), p))
        .collect();
    files.sort();
    files
}

/// The fragment on the first line `# expect: FRAGMENT` of a bad config.
fn expected_fragment(bytes: &[u8]) -> Option<String> {
    let first = bytes.split(|b| *b == b'\n').next()?;
    let first = std::str::from_utf8(first).ok()?;
    first.strip_prefix("# expect: ").map(|f| f.trim_end().to_string())
}

#[test]
fn config_corpus_files_load_or_fail_as_named() {
    let files = corpus("config");
    let (mut oks, mut bads, mut problems) = (0, 0, Vec::new());
    for (name, path) in &files {
        let result = Config::load(path);
        if name.starts_with("ok-") && name.ends_with(".toml") {
            oks += 1;
            if let Err(e) = result {
                problems.push(format!("{name}: should load, but: {e}"));
            }
        } else if name.starts_with("bad-") && name.ends_with(".toml") {
            bads += 1;
            let Some(fragment) = expected_fragment(&std::fs::read(path).unwrap()) else {
                problems.push(format!("{name}: the first line must be `# expect: FRAGMENT`"));
                continue;
            };
            match result {
                Ok(_) => problems.push(format!("{name}: should be refused, but it loads")),
                Err(e) => {
                    let shown = e.to_string();
                    if !shown.contains(&fragment) {
                        problems.push(format!("{name}: message lacks {fragment:?}: {shown}"));
                    }
                    if !shown.contains(&path.display().to_string()) {
                        problems.push(format!("{name}: message does not name the file: {shown}"));
                    }
                    if let ConfigError::Invalid { line, key, message, .. } = &e {
                        if *line == 0 || key.is_empty() || message.trim().is_empty() {
                            problems.push(format!("{name}: no line, key or message: {shown}"));
                        }
                    }
                }
            }
        } else {
            problems.push(format!("{name}: name it ok-*.toml or bad-*.toml"));
        }
    }
    assert!(oks >= 10 && bads >= 30, "the corpus shrank: {oks} ok, {bads} bad");
    assert!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n"));
}

/// Decode `bytes` as the request `kind` names.
fn decode_as(kind: &str, bytes: &[u8]) -> Option<Result<(), DecodeError>> {
    Some(match kind {
        "deploy" => decode::<DeployRequest>(bytes).map(drop),
        "canary" => decode::<CanaryRequest>(bytes).map(drop),
        "rolling" => decode::<RollingRequest>(bytes).map(drop),
        "replica-update" => decode::<SpecOverrides>(bytes).map(drop),
        "empty" => decode_empty(bytes),
        _ => return None,
    })
}

fn kind_of(rest: &str) -> Option<&'static str> {
    ["replica-update", "deploy", "canary", "rolling", "empty"]
        .into_iter()
        .find(|k| rest.starts_with(&format!("{k}-")))
}

#[test]
fn api_corpus_bodies_decode_or_fail_as_named() {
    let files = corpus("api");
    let expect: BTreeMap<String, String> = files
        .iter()
        .find(|(n, _)| n == "EXPECT")
        .map(|(_, p)| std::fs::read_to_string(p).unwrap())
        .expect("corpus/api/EXPECT")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (file, fragment) = l.split_once(" => ").unwrap_or_else(|| panic!("EXPECT line {l:?}"));
            (file.to_string(), fragment.to_string())
        })
        .collect();
    let (mut oks, mut bads, mut problems) = (0, 0, Vec::new());
    for (name, path) in files.iter().filter(|(n, _)| n != "EXPECT") {
        let bytes = std::fs::read(path).unwrap();
        let (ok, rest) = match (name.strip_prefix("ok-"), name.strip_prefix("bad-")) {
            (Some(rest), _) => (true, rest),
            (_, Some(rest)) => (false, rest),
            _ => {
                problems.push(format!("{name}: name it ok-KIND-*.json or bad-KIND-*.json"));
                continue;
            }
        };
        let Some(result) = kind_of(rest).and_then(|k| decode_as(k, &bytes)) else {
            problems.push(format!("{name}: unknown request kind"));
            continue;
        };
        match (ok, result) {
            (true, Ok(())) => oks += 1,
            (true, Err(e)) => problems.push(format!("{name}: should decode, but: {e}")),
            (false, Ok(())) => problems.push(format!("{name}: should be refused, but it decodes")),
            (false, Err(e)) => {
                bads += 1;
                let shown = e.to_string();
                match expect.get(name.as_str()) {
                    None => problems.push(format!("{name}: no line in EXPECT")),
                    Some(fragment) if !shown.contains(fragment.as_str()) => {
                        problems.push(format!("{name}: message lacks {fragment:?}: {shown}"))
                    }
                    Some(_) => {}
                }
            }
        }
    }
    for file in expect.keys() {
        if !files.iter().any(|(n, _)| n == file) {
            problems.push(format!("EXPECT names {file}, which does not exist"));
        }
    }
    assert!(oks >= 8 && bads >= 40, "the corpus shrank: {oks} ok, {bads} bad");
    assert!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n"));
}
