//! Raw deserialization of the config file (to be written).
use super::{Config, ConfigError};
use std::path::Path;

pub(super) fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let _ = (text, path);
    todo!()
}
