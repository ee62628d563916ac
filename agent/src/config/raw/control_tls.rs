//! `[agent] control_tls`, checked by loading it as the agent will: the key
//! mode, the certificate against its key, its validity, and the client CA.

use super::validate::Ctx;
use super::RawControlTls;
use crate::config::{ConfigError, ControlTls};
use std::path::PathBuf;
use toml::Spanned;

/// The checked setting, or an error naming the file.
pub(super) fn check(cx: &Ctx<'_>, raw: &Spanned<RawControlTls>) -> Result<ControlTls, ConfigError> {
    let r = raw.get_ref();
    let tls = ControlTls {
        cert: PathBuf::from(&r.cert),
        key: PathBuf::from(&r.key),
        client_ca: r.client_ca.as_ref().map(PathBuf::from),
    };
    crate::control_tls::server_config(&tls).map_err(|e| cx.err(raw.span(), "agent.control_tls", e))?;
    Ok(tls)
}
