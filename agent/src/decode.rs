//! Decoding control API request bodies: bytes → a request type of
//! [`crate::api`], every field checked on its own (image reference syntax,
//! ranges; durations and choices are typed, so serde reads them) before a
//! controller sees it. What
//! depends on the service's state (is there anything to promote?) is the
//! controller's to check. Pure functions on bytes, so they can be fuzzed
//! without a server.

use crate::api::{
    CanaryRequest, DeployRequest, MaintenanceRequest, PauseRequest, RollingRequest, RunRequest, SpecOverrides,
};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;

/// Why a request body was refused. Both variants are a 400.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not JSON, or not the request's shape (unknown field, wrong type).
    /// The message names the field where it can.
    #[error("invalid JSON body: {0}")]
    Json(String),
    /// Well-formed, but a field's value is not allowed.
    #[error("{field}: {message}")]
    Field {
        /// The field, dotted (`env.PORT`, `command[0]`).
        field: String,
        /// What is wrong and what is expected.
        message: String,
    },
}

impl DecodeError {
    fn field(field: impl Into<String>, message: impl Into<String>) -> DecodeError {
        DecodeError::Field { field: field.into(), message: message.into() }
    }
}

/// A request body type with checks of its own fields.
pub trait Checked: DeserializeOwned {
    /// Refuse values no state of the service could make right.
    fn check(&self) -> Result<(), DecodeError>;
}

/// Decode a body: empty or blank means `{}`, unknown fields are refused,
/// and a wrong field is named by its path.
pub fn decode<T: Checked>(bytes: &[u8]) -> Result<T, DecodeError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}" } else { bytes };
    // serde would also fill a struct from an array, by position; a request
    // is an object.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(DecodeError::Json("the body must be a JSON object, e.g. {\"image\": \"app:v2\"}".into()));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match (path.as_str(), inner.classify()) {
            ("." | "", _) => DecodeError::Json(inner.to_string()),
            // Well-formed JSON whose value does not fit the field: a wrong
            // type, an unknown choice, text that is not a duration.
            (_, serde_json::error::Category::Data) => DecodeError::field(path, inner.to_string()),
            _ => DecodeError::Json(format!("{path}: {inner}")),
        }
    })?;
    de.end().map_err(|e| DecodeError::Json(e.to_string()))?;
    value.check()?;
    Ok(value)
}

/// Decode the body of an operation that takes no parameters: nothing, or
/// `{}`.
pub fn decode_empty(bytes: &[u8]) -> Result<(), DecodeError> {
    let map: BTreeMap<String, serde_json::Value> = decode(bytes)?;
    match map.keys().next() {
        None => Ok(()),
        Some(first) => Err(DecodeError::field(
            first.clone(),
            format!("this operation takes no parameters, got {:?}", map.keys().collect::<Vec<_>>()),
        )),
    }
}

impl Checked for BTreeMap<String, serde_json::Value> {
    fn check(&self) -> Result<(), DecodeError> {
        Ok(())
    }
}

impl Checked for SpecOverrides {
    fn check(&self) -> Result<(), DecodeError> {
        check_spec_fields(self.image.as_deref(), self.command.as_deref(), &self.env)
    }
}

impl Checked for DeployRequest {
    fn check(&self) -> Result<(), DecodeError> {
        check_spec_fields(self.image.as_deref(), self.command.as_deref(), &self.env)
    }
}

impl Checked for RunRequest {
    fn check(&self) -> Result<(), DecodeError> {
        check_spec_fields(self.image.as_deref(), Some(&self.command), &BTreeMap::new())
    }
}

impl Checked for PauseRequest {
    fn check(&self) -> Result<(), DecodeError> {
        match self.max {
            Some(d) if d.0.is_zero() => Err(DecodeError::field("max", "must be above zero, e.g. \"30s\"")),
            _ => Ok(()),
        }
    }
}

impl Checked for MaintenanceRequest {
    fn check(&self) -> Result<(), DecodeError> {
        match &self.message {
            Some(m) if m.len() > 4096 => Err(DecodeError::field("message", "is longer than 4096 bytes")),
            _ => Ok(()),
        }
    }
}

impl Checked for CanaryRequest {
    fn check(&self) -> Result<(), DecodeError> {
        if let Some(w) = self.weight {
            if w > 100 {
                return Err(DecodeError::field("weight", format!("{w} is above 100 (percent)")));
            }
        }
        for (i, step) in self.steps.iter().enumerate() {
            if *step == 0 || *step > 100 {
                return Err(DecodeError::field(
                    format!("steps[{i}]"),
                    format!("{step} is not 1..100 (percent)"),
                ));
            }
        }
        fraction("max_error_rate", self.max_error_rate)
    }
}

impl Checked for RollingRequest {
    fn check(&self) -> Result<(), DecodeError> {
        check_spec_fields(self.image.as_deref(), self.command.as_deref(), &self.env)?;
        if self.parallelism == Some(0) {
            return Err(DecodeError::field("parallelism", "must be at least 1"));
        }
        fraction("max_failure_ratio", self.max_failure_ratio)
    }
}

fn check_spec_fields(
    image: Option<&str>,
    command: Option<&[String]>,
    env: &BTreeMap<String, String>,
) -> Result<(), DecodeError> {
    if let Some(image) = image {
        crate::image_ref::validate(image).map_err(|e| DecodeError::field("image", e.to_string()))?;
    }
    if let Some(command) = command {
        if command.first().is_none_or(|p| p.trim().is_empty()) {
            return Err(DecodeError::field(
                "command",
                "must start with a program: [\"program\", \"arg\", ...]",
            ));
        }
        if let Some(i) = command.iter().position(|a| a.contains('\0')) {
            return Err(DecodeError::field(format!("command[{i}]"), "contains a NUL character"));
        }
    }
    for (key, value) in env {
        if key.is_empty() || key.contains(['=', '\0']) {
            return Err(DecodeError::field(
                "env",
                format!("env key {key:?} is not a valid variable name (empty, or holds '=' or NUL)"),
            ));
        }
        if key == "PORT" {
            return Err(DecodeError::field(
                "env.PORT",
                "is set by the runtime: the app must read PORT, and `port` sets it for docker",
            ));
        }
        if value.contains('\0') {
            return Err(DecodeError::field(format!("env.{key}"), "contains a NUL character"));
        }
    }
    Ok(())
}

fn fraction(field: &str, value: Option<f64>) -> Result<(), DecodeError> {
    match value {
        Some(v) if !(0.0..=1.0).contains(&v) => {
            Err(DecodeError::field(field, format!("{v} is not a fraction between 0 and 1 (0.01 = 1%)")))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err<T: Checked + std::fmt::Debug>(body: &str) -> String {
        decode::<T>(body.as_bytes()).expect_err(body).to_string()
    }

    #[test]
    fn blank_bodies_are_empty_requests() {
        assert_eq!(decode::<DeployRequest>(b"").unwrap(), DeployRequest::default());
        assert_eq!(decode::<DeployRequest>(b" \n").unwrap(), DeployRequest::default());
        assert_eq!(decode_empty(b""), Ok(()));
        assert_eq!(decode_empty(b"{}"), Ok(()));
    }

    #[test]
    fn errors_name_the_field() {
        assert!(err::<DeployRequest>(r#"{"imgae":"x"}"#).contains("imgae"));
        assert!(err::<DeployRequest>(r#"{"promote":"yes"}"#).starts_with("promote: invalid type"));
        assert!(err::<DeployRequest>(r#"{"env":{"A":1}}"#).contains("env.A"));
        assert!(err::<DeployRequest>(r#"{"image":"Web:v1"}"#).starts_with("image: image \"Web:v1\""));
        assert!(err::<DeployRequest>(r#"{"env":{"PORT":"1"}}"#).starts_with("env.PORT:"));
        assert!(err::<DeployRequest>(r#"{"command":[]}"#).starts_with("command:"));
        assert!(err::<DeployRequest>(r#"{} x"#).contains("trailing"));
        assert!(err::<CanaryRequest>(r#"{"interval":"soon"}"#)
            .starts_with("interval: \"soon\" is not a duration"));
        assert!(err::<CanaryRequest>(r#"{"weight":300}"#).contains("weight"));
        assert!(err::<CanaryRequest>(r#"{"weight":101}"#).starts_with("weight:"));
        assert!(err::<CanaryRequest>(r#"{"steps":[10,0]}"#).starts_with("steps[1]:"));
        assert!(err::<CanaryRequest>(r#"{"max_error_rate":2}"#).starts_with("max_error_rate:"));
        assert!(err::<CanaryRequest>(r#"{"max_p99":"18446744073709551615s"}"#).contains("longer than"));
        assert!(err::<RollingRequest>(r#"{"order":"random"}"#).starts_with("order:"));
        assert!(err::<RollingRequest>(r#"{"delay":"-1s"}"#).starts_with("delay:"));
        assert!(err::<RollingRequest>(r#"{"parallelism":0}"#).starts_with("parallelism:"));
        assert!(decode_empty(br#"{"force":true}"#).unwrap_err().to_string().contains("no parameters"));
        assert!(decode_empty(b"[]").unwrap_err().to_string().contains("must be a JSON object"));
        assert!(err::<DeployRequest>(r#"["web:v1"]"#).contains("must be a JSON object"));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(decode_empty(deep.as_bytes()).unwrap_err().to_string().contains("recursion limit"));
    }
}
