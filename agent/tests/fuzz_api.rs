//! Fuzzing the control API's request decoding (`bg_agent::decode`, the
//! path every POST body takes) and the image reference check with
//! proptest: arbitrary bytes, arbitrary JSON shaped like the requests, and
//! mutated good bodies never panic; a refusal is a message; whatever is
//! accepted holds the invariants the controller relies on.

use bg_agent::api::{ApiDuration, CanaryRequest, DeployRequest, RollingRequest, SpecOverrides};
use bg_agent::config::MAX_DURATION;
use bg_agent::decode::{decode, decode_empty, DecodeError};
use bg_agent::image_ref;
use proptest::prelude::*;
use serde_json::Value;
use std::collections::BTreeMap;

fn duration_ok(d: &Option<ApiDuration>) -> bool {
    d.is_none_or(|d| d.0 <= MAX_DURATION)
}

fn spec_ok(image: &Option<String>, command: &Option<Vec<String>>, env: &BTreeMap<String, String>) -> bool {
    image.as_deref().is_none_or(|i| image_ref::validate(i).is_ok())
        && command.as_ref().is_none_or(|c| c.first().is_some_and(|p| !p.trim().is_empty()))
        && env.keys().all(|k| !k.is_empty() && !k.contains('=') && k != "PORT")
}

fn refusal(e: DecodeError) -> Result<(), TestCaseError> {
    let shown = e.to_string();
    prop_assert!(!shown.trim().is_empty(), "an empty message");
    prop_assert!(shown.len() < 4096, "a message of {} bytes", shown.len());
    Ok(())
}

/// Decode `bytes` as every request type; check each outcome.
fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
    match decode::<DeployRequest>(bytes) {
        Ok(r) => prop_assert!(spec_ok(&r.image, &r.command, &r.env), "accepted {r:?}"),
        Err(e) => refusal(e)?,
    }
    match decode::<SpecOverrides>(bytes) {
        Ok(r) => prop_assert!(spec_ok(&r.image, &r.command, &r.env), "accepted {r:?}"),
        Err(e) => refusal(e)?,
    }
    match decode::<CanaryRequest>(bytes) {
        Ok(r) => prop_assert!(
            r.weight.is_none_or(|w| w <= 100)
                && r.steps.iter().all(|s| (1..=100).contains(s))
                && duration_ok(&r.interval)
                && duration_ok(&r.max_p99)
                && r.max_error_rate.is_none_or(|x| (0.0..=1.0).contains(&x)),
            "accepted {r:?}"
        ),
        Err(e) => refusal(e)?,
    }
    match decode::<RollingRequest>(bytes) {
        Ok(r) => prop_assert!(
            spec_ok(&r.image, &r.command, &r.env)
                && r.parallelism != Some(0)
                && duration_ok(&r.delay)
                && duration_ok(&r.monitor)
                && r.max_failure_ratio.is_none_or(|x| (0.0..=1.0).contains(&x)),
            "accepted {r:?}"
        ),
        Err(e) => refusal(e)?,
    }
    match decode_empty(bytes) {
        Ok(()) => {
            let v: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
                Value::Object(Default::default())
            } else {
                serde_json::from_slice(bytes).unwrap()
            };
            prop_assert_eq!(v, Value::Object(Default::default()));
        }
        Err(e) => refusal(e)?,
    }
    Ok(())
}

/// Field names of every request, and some near misses.
const KEYS: &[&str] = &[
    "image",
    "command",
    "env",
    "promote",
    "weight",
    "steps",
    "interval",
    "max_error_rate",
    "max_p99",
    "min_requests",
    "parallelism",
    "delay",
    "order",
    "failure_action",
    "monitor",
    "max_failure_ratio",
    "resume",
    "PORT",
    "A",
    "",
    "imgae",
    "Image",
    "image ",
];

/// Strings worth putting in any field.
const STRINGS: &[&str] = &[
    "",
    " ",
    "30s",
    "1m 30s",
    "0s",
    "-1s",
    "soon",
    "18446744073709551615s",
    "365days",
    "366days",
    "websample:v1",
    "Websample:v1",
    "registry.local:5000/team/app@sha256:0123456789abcdef0123456789abcdef",
    "app@sha256:zz",
    ":v1",
    "a//b",
    "start-first",
    "stop-first",
    "pause",
    "rollback",
    "continue",
    "x\0y",
    "é🌍",
    "\u{200b}",
    "\\",
    "\"",
    "{}",
    "PORT",
    "A=B",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (0u64..300).prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        proptest::sample::select(STRINGS).prop_map(Value::from),
        "\\PC{0,16}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![proptest::sample::select(KEYS).prop_map(String::from), "\\PC{0,8}"],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An object with request field names, a value of any shape for each.
fn request_like() -> impl Strategy<Value = Value> {
    proptest::collection::btree_map(proptest::sample::select(KEYS).prop_map(String::from), json_value(), 0..5)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// Good bodies from the corpus, to mutate.
fn good_bodies() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/api");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("ok-"))
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// Path components that are valid by the reference grammar.
fn component() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,6}((\\.|_|__|-{1,3})[a-z0-9]{1,6}){0,2}"
}

/// References built from the grammar: always valid.
fn valid_reference() -> impl Strategy<Value = String> {
    (
        proptest::option::of(prop_oneof![
            Just("localhost".to_string()),
            "[a-z0-9]{1,8}\\.[a-z]{2,4}",
            "[a-z0-9]{1,8}(\\.[a-z]{2,4})?:[0-9]{1,5}",
        ]),
        // Without a host, a first component with a dot would be read as
        // one (Docker's rule), so it gets none.
        "[a-z0-9]{1,6}((_|__|-{1,3})[a-z0-9]{1,6}){0,2}",
        proptest::collection::vec(component(), 0..3),
        proptest::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"),
        proptest::option::of("[a-f0-9]{32,64}"),
    )
        .prop_map(|(host, first, rest, tag, digest)| {
            let mut s = host.map(|h| format!("{h}/")).unwrap_or_default();
            s.push_str(&first);
            for part in rest {
                s.push('/');
                s.push_str(&part);
            }
            if let Some(t) = tag {
                s.push(':');
                s.push_str(&t);
            }
            if let Some(d) = digest {
                s.push_str("@sha256:");
                s.push_str(&d);
            }
            s
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        check(&bytes)?;
    }

    #[test]
    fn arbitrary_json_never_panics(v in json_value()) {
        check(&serde_json::to_vec(&v).unwrap())?;
    }

    #[test]
    fn request_shaped_json_is_accepted_only_when_sound(v in request_like()) {
        check(&serde_json::to_vec(&v).unwrap())?;
    }

    #[test]
    fn mutated_good_bodies_never_panic(
        pick in any::<prop::sample::Index>(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
    ) {
        let bodies = good_bodies();
        let mut body = bodies[pick.index(bodies.len())].clone();
        for (at, byte, how) in edits {
            let i = at.index(body.len().max(1));
            match how {
                0 if i < body.len() => body[i] = byte,
                1 => body.insert(i.min(body.len()), byte),
                _ if i < body.len() => { body.remove(i); }
                _ => {}
            }
        }
        check(&body)?;
    }

    #[test]
    fn image_references_from_the_grammar_are_accepted(image in valid_reference()) {
        prop_assert_eq!(image_ref::validate(&image), Ok(()), "{}", image);
    }

    #[test]
    fn arbitrary_image_strings_never_panic_and_accepted_ones_are_plain(image in "\\PC{0,40}|[a-zA-Z0-9:@/._\\-\\[\\]]{0,40}") {
        match image_ref::validate(&image) {
            Ok(()) => prop_assert!(
                !image.is_empty() && image.is_ascii() && !image.contains(char::is_whitespace),
                "accepted {:?}", image
            ),
            Err(e) => prop_assert!(e.to_string().contains(&format!("{image:?}")), "{}", e),
        }
    }
}
