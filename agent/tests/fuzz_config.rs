//! Fuzzing the config parser with proptest: good config files, mutated
//! (bytes deleted, nasty tokens inserted, lines replaced, duplicated or
//! swapped), must never panic. A refusal is a message with a line and a
//! key; an acceptance is a config that holds its invariants.

use bg_agent::config::{Config, ConfigError, MAX_DURATION};
use proptest::prelude::*;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

/// Valid configs to start from: the examples and every `ok-*.toml` of the
/// corpus.
fn seeds() -> &'static [String] {
    static SEEDS: OnceLock<Vec<String>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut seeds = vec![
            std::fs::read_to_string(root.join("../examples/config/agent.toml")).unwrap(),
            std::fs::read_to_string(root.join("../examples/config/agent-process.toml")).unwrap(),
        ];
        let mut corpus: Vec<_> = std::fs::read_dir(root.join("tests/corpus/config"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("ok-"))
            .collect();
        corpus.sort();
        seeds.extend(corpus.iter().map(|p| std::fs::read_to_string(p).unwrap()));
        for s in &seeds {
            Config::parse(s, Path::new("seed.toml")).expect("every seed is valid");
        }
        seeds
    })
}

/// Tokens that break parsers.
const NASTY: &[&str] = &[
    "\"",
    "'",
    "'''",
    "\"\"\"",
    "[",
    "]",
    "[[",
    "]]",
    "{",
    "}",
    "=",
    ",",
    ".",
    "#",
    "\n",
    "\r",
    "\r\n",
    "\t",
    "\0",
    "\u{feff}",
    "\u{200b}",
    "é",
    "🌍",
    "\\",
    "\\u",
    "\\uD800",
    "18446744073709551615",
    "-1",
    "0",
    "nan",
    "-inf",
    "1e999",
    "0x1F",
    "1979-05-27T07:32:00Z",
    "true",
    "\"0s\"",
    "\"18446744073709551615s\"",
    "\"-5s\"",
    "[services.web]",
    "[services.x]",
    "[agent]",
    "[runtime]",
    "[services.web.health]",
    "listen = []",
    "listen = [\"127.0.0.1:1\"]",
    "image = \"\"",
    "command = []",
    "kind = \"process\"",
    "kind = \"docker\"",
    "control_listen = \"127.0.0.1:7070\"",
    "env = { PORT = \"1\" }",
    "env = { \"\" = \"x\" }",
    "replicas = 0",
    "port = 70000",
    "interval = \"0s\"",
];

#[derive(Debug, Clone)]
enum Mutation {
    Delete { at: usize, len: usize },
    Insert { at: usize, text: String },
    ReplaceLine { line: usize, text: String },
    DuplicateLine { line: usize },
    SwapLines { a: usize, b: usize },
    SetByte { at: usize, byte: u8 },
}

fn insertion() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(NASTY).prop_map(String::from),
        1 => "\\PC{0,12}",
        1 => "[a-z_.]{1,16} = (\"[ -~]{0,12}\"|-?[0-9]{1,20}|\\[\\]|\\{\\}|true)",
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = any::<prop::sample::Index>();
    prop_oneof![
        (at.clone(), 1usize..40).prop_map(|(i, len)| Mutation::Delete { at: i.index(usize::MAX), len }),
        (at.clone(), insertion()).prop_map(|(i, text)| Mutation::Insert { at: i.index(usize::MAX), text }),
        (at.clone(), insertion())
            .prop_map(|(i, text)| Mutation::ReplaceLine { line: i.index(usize::MAX), text }),
        at.clone().prop_map(|i| Mutation::DuplicateLine { line: i.index(usize::MAX) }),
        (at.clone(), at.clone())
            .prop_map(|(a, b)| Mutation::SwapLines { a: a.index(usize::MAX), b: b.index(usize::MAX) }),
        (at, any::<u8>()).prop_map(|(i, byte)| Mutation::SetByte { at: i.index(usize::MAX), byte }),
    ]
}

fn apply(text: &str, mutations: &[Mutation]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for m in mutations {
        let n = bytes.len().max(1);
        match m {
            Mutation::Delete { at, len } => {
                let at = at % n;
                let end = (at + len).min(bytes.len());
                if at < end {
                    bytes.drain(at..end);
                }
            }
            Mutation::Insert { at, text } => {
                let at = (at % n).min(bytes.len());
                bytes.splice(at..at, text.bytes());
            }
            Mutation::SetByte { at, byte } => {
                if !bytes.is_empty() {
                    bytes[at % n] = *byte;
                }
            }
            Mutation::ReplaceLine { line, text: new } => {
                let mut lines: Vec<Vec<u8>> = bytes.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
                let i = line % lines.len();
                lines[i] = new.as_bytes().to_vec();
                bytes = lines.join(&b'\n');
            }
            Mutation::DuplicateLine { line } => {
                let mut lines: Vec<Vec<u8>> = bytes.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
                let i = line % lines.len();
                let copy = lines[i].clone();
                lines.insert(i, copy);
                bytes = lines.join(&b'\n');
            }
            Mutation::SwapLines { a, b } => {
                let mut lines: Vec<Vec<u8>> = bytes.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
                let len = lines.len();
                lines.swap(a % len, b % len);
                bytes = lines.join(&b'\n');
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// What every outcome of parsing `text` must satisfy.
fn check(text: &str) -> Result<(), TestCaseError> {
    match Config::parse(text, Path::new("fuzz.toml")) {
        Ok(cfg) => {
            for (name, svc) in &cfg.services {
                prop_assert!(!svc.listen.is_empty(), "{name}: accepted without listen");
                prop_assert!(svc.replicas >= 1 && svc.port >= 1, "{name}: replicas/port");
                prop_assert!(
                    svc.spec.image.is_some() || svc.spec.command.is_some(),
                    "{name}: nothing to run"
                );
                prop_assert!(!svc.spec.env.contains_key("PORT"), "{name}: env.PORT accepted");
                prop_assert!(
                    svc.spec.env.keys().all(|k| !k.is_empty() && !k.contains('=')),
                    "{name}: env key"
                );
                for d in [
                    svc.stop_grace,
                    svc.queue_timeout,
                    svc.health.interval,
                    svc.health.timeout,
                    svc.health.deadline,
                    svc.deploy.drain_timeout,
                    svc.deploy.keep_old,
                    svc.deploy.monitor,
                    svc.rolling.delay,
                    svc.rolling.monitor,
                ] {
                    prop_assert!(d <= MAX_DURATION, "{name}: duration {d:?} over the maximum");
                }
                prop_assert!(svc.health.interval > Duration::ZERO && svc.health.deadline > Duration::ZERO);
                prop_assert!((0.0..=1.0).contains(&svc.deploy.max_error_rate));
                prop_assert!((0.0..=1.0).contains(&svc.rolling.max_failure_ratio));
            }
            if cfg.agent.control_listen.is_some() {
                prop_assert!(cfg.agent.token_file.is_some(), "control_listen accepted without token_file");
            }
        }
        Err(ConfigError::Invalid { line, key, message, .. }) => {
            prop_assert!(!message.trim().is_empty(), "an empty message");
            prop_assert!(!key.is_empty(), "no key: {message}");
            prop_assert!(line <= text.split('\n').count() + 1, "line {line} is past the end: {message}");
        }
        Err(e) => prop_assert!(false, "parse gave {e:?}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(384))]

    #[test]
    fn mutated_configs_never_panic_and_refusals_name_a_line_and_key(
        seed in any::<prop::sample::Index>(),
        mutations in proptest::collection::vec(mutation(), 1..6),
    ) {
        let seeds = seeds();
        let text = apply(&seeds[seed.index(seeds.len())], &mutations);
        check(&text)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        check(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn lines_of_nasty_tokens_never_panic(
        lines in proptest::collection::vec(proptest::collection::vec(insertion(), 1..4), 0..16),
    ) {
        let text: Vec<String> = lines.iter().map(|l| l.concat()).collect();
        check(&text.join("\n"))?;
    }
}

#[test]
fn the_seeds_are_valid_and_varied() {
    assert!(seeds().len() >= 10, "{} seeds", seeds().len());
}
