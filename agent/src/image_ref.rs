//! Docker image references, `[host[:port]/]path[:tag][@digest]`, checked
//! against the grammar of the distribution project's `reference` package,
//! which the Docker engine applies. A bad name is refused at the control
//! API with the part that is wrong, instead of failing later in the engine
//! with a less helpful message. Written by hand: the grammar is small, and
//! the crates that parse it bring a registry client along.

/// Longest repository name (host and path, without tag or digest).
pub const MAX_NAME_LEN: usize = 255;
/// Longest tag.
pub const MAX_TAG_LEN: usize = 128;
/// Fewest hex digits of a digest (128 bits).
const MIN_DIGEST_HEX: usize = 32;

/// Why an image reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("image {image:?} is not a valid image reference: {reason}")]
pub struct ImageRefError {
    /// The reference as given.
    pub image: String,
    /// What is wrong with it, and what is expected.
    pub reason: String,
}

/// Check `image` against the reference grammar.
///
/// ```
/// use bg_agent::image_ref::validate;
/// assert!(validate("websample:v1").is_ok());
/// assert!(validate("registry.local:5000/team/app@sha256:0123456789abcdef0123456789abcdef").is_ok());
/// let err = validate("Websample:v1").unwrap_err();
/// assert!(err.reason.contains("lowercase"), "{err}");
/// ```
pub fn validate(image: &str) -> Result<(), ImageRefError> {
    check(image).map_err(|reason| ImageRefError { image: image.to_string(), reason })
}

fn check(image: &str) -> Result<(), String> {
    if image.is_empty() {
        return Err("it is empty; expected e.g. \"websample:v1\"".into());
    }
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("it contains whitespace or control characters".into());
    }
    let (name_tag, digest) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (image, None),
    };
    if let Some(digest) = digest {
        check_digest(digest)?;
    }
    let last_slash = name_tag.rfind('/').map(|i| i + 1).unwrap_or(0);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => (&name_tag[..last_slash + i], Some(&name_tag[last_slash + i + 1..])),
        None => (name_tag, None),
    };
    if let Some(tag) = tag {
        check_tag(tag)?;
    }
    if name.is_empty() {
        return Err("the repository name is missing before the tag or digest".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("the repository name is longer than {MAX_NAME_LEN} characters"));
    }
    let mut parts = name.split('/').collect::<Vec<_>>();
    if parts.len() > 1 && looks_like_host(parts[0]) {
        check_host(parts.remove(0))?;
    }
    for part in parts {
        check_path_component(part)?;
    }
    Ok(())
}

/// Docker's rule: the first of several components is a registry host when
/// it has a dot or a port, is `localhost`, or has capitals (which a path
/// never has).
fn looks_like_host(first: &str) -> bool {
    first.contains(['.', ':']) || first == "localhost" || first.chars().any(|c| c.is_ascii_uppercase())
}

fn check_host(host: &str) -> Result<(), String> {
    let bad = || {
        format!("registry host {host:?} is not HOST or HOST:PORT (letters, digits, '-' and '.', or [IPv6])")
    };
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or_else(bad)?;
        v6.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        match after {
            "" => return Ok(()),
            p => ("", Some(p.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else {
        match host.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("registry port {port:?} is not a number"));
        }
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !name.is_empty() && !name.split('.').all(label_ok) {
        return Err(bad());
    }
    Ok(())
}

/// `[a-z0-9]+` runs joined by one separator: `.`, `_`, `__` or `-`+.
fn check_path_component(part: &str) -> Result<(), String> {
    if part.is_empty() {
        return Err("it has an empty path component (a leading, trailing or double '/')".into());
    }
    if part.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!("repository names must be lowercase, {part:?} is not"));
    }
    let bytes = part.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    loop {
        let start = i;
        while i < bytes.len() && alnum(bytes[i]) {
            i += 1;
        }
        if i == start {
            break;
        }
        if i == bytes.len() {
            return Ok(());
        }
        let sep = i;
        match bytes[i] {
            b'.' => i += 1,
            b'_' => i += if bytes.get(i + 1) == Some(&b'_') { 2 } else { 1 },
            b'-' => {
                while i < bytes.len() && bytes[i] == b'-' {
                    i += 1;
                }
            }
            _ => break,
        }
        if i == bytes.len() || !alnum(bytes[i]) {
            i = sep;
            break;
        }
    }
    let at = part[i..].chars().next().map(|c| format!(" at {c:?}")).unwrap_or_default();
    Err(format!(
        "path component {part:?} is not valid{at}: use lowercase letters and digits, joined by '.', '_', '__' or '-'"
    ))
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn check_tag(tag: &str) -> Result<(), String> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let ok = tag.len() <= MAX_TAG_LEN
        && tag.chars().next().is_some_and(word)
        && tag.chars().all(|c| word(c) || c == '.' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag {tag:?} must be 1 to {MAX_TAG_LEN} letters, digits, '_', '.' or '-', not starting with '.' or '-'"
        ))
    }
}

/// `algorithm:hex`, algorithm components `[A-Za-z][A-Za-z0-9]*` joined by
/// `+`, `.`, `_` or `-`, at least 32 hex digits.
fn check_digest(digest: &str) -> Result<(), String> {
    let bad = || format!("digest {digest:?} must be ALGORITHM:HEX, e.g. \"sha256:\" and 64 hex digits");
    let (algorithm, hex) = digest.split_once(':').ok_or_else(bad)?;
    let component_ok = |c: &str| {
        c.chars().next().is_some_and(|f| f.is_ascii_alphabetic())
            && c.chars().all(|ch| ch.is_ascii_alphanumeric())
    };
    if !algorithm.split(['+', '.', '_', '-']).all(component_ok)
        || hex.len() < MIN_DIGEST_HEX
        || !hex.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(bad());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn accepts_what_docker_accepts() {
        let digest = format!("app@{SHA}");
        let tagged_digest = format!("registry.example.com/team/app:v1@{SHA}");
        let long_tag = format!("app:{}", "t".repeat(MAX_TAG_LEN));
        let good = [
            "websample:v1",
            "nginx",
            "library/nginx:1.25.3-alpine",
            "localhost/app",
            "localhost:5000/foo/bar:tag",
            "my.registry:443/x",
            "[::1]:5000/app:v1",
            "[fe80::1]/app",
            "Registry.Example.com/app",
            "a__b/c_d/e.f/g--h---i",
            "0/1:_",
            &digest,
            &tagged_digest,
            &long_tag,
        ];
        for image in good {
            assert_eq!(validate(image), Ok(()), "{image}");
        }
    }

    #[test]
    fn refuses_the_rest_and_says_why() {
        let long_name = "a".repeat(MAX_NAME_LEN + 1);
        let long_tag = format!("app:{}", "t".repeat(MAX_TAG_LEN + 1));
        let bad = [
            ("", "empty"),
            (" app", "whitespace"),
            ("app\n", "whitespace"),
            ("web sample", "whitespace"),
            ("Websample:v1", "lowercase"),
            ("team/App", "lowercase"),
            ("app:", "tag \"\""),
            ("app:-v1", "tag"),
            ("app:.v1", "tag"),
            ("app:v/1", "registry port \"v\""),
            ("app:v1:v2", "path component \"app:v1\""),
            (":v1", "missing"),
            ("@sha256:00", "digest"),
            ("app@sha256:xyz", "digest"),
            ("app@sha256", "digest"),
            ("app@sha256:0123", "digest"),
            ("app@", "digest"),
            ("app//x", "empty path component"),
            ("/app", "empty path component"),
            ("app/", "empty path component"),
            ("-app", "path component"),
            ("app-", "path component"),
            ("a..b", "at '.'"),
            ("a___b", "path component"),
            ("a$b", "at '$'"),
            ("localhost:port/app", "port"),
            ("reg-.com/app", "registry host"),
            ("[::1/app", "registry host"),
            ("[nope]:1/app", "registry host"),
            (&long_name, "longer than"),
            (&long_tag, "tag"),
        ];
        for (image, why) in bad {
            let err = validate(image).expect_err(image);
            assert!(err.to_string().contains(why), "{image:?}: {err} lacks {why:?}");
            assert!(err.to_string().starts_with("image "), "{err}");
        }
    }
}
