//! What a request names, checked once where it enters: repository names,
//! tags and digests (the rules are [`crate::vocab`]'s; the replies are
//! [`crate::error`]'s), and the host the client reached us by.

use crate::error::{RegistryError, Result};
use crate::vocab::Digest;

/// A repository name (see [`crate::vocab::check_name`]).
pub fn valid_name(name: &str) -> Result<String> {
    crate::vocab::check_name(name)
        .map(|()| name.to_string())
        .map_err(|rule| RegistryError::NameInvalid {
            name: name.to_string(),
            rule: rule.0,
        })
}

/// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`
pub fn valid_tag(tag: &str) -> Result<String> {
    if crate::vocab::is_tag(tag) {
        Ok(tag.to_string())
    } else {
        Err(RegistryError::TagInvalid {
            tag: tag.to_string(),
        })
    }
}

/// Only sha256 is ever produced here, so only sha256 is accepted.
pub fn valid_digest(digest: &str) -> Result<Digest> {
    Digest::parse(digest).map_err(|e| RegistryError::DigestInvalid { digest: e.0 })
}

/// The Host header, if it looks like a host (and port): what a client
/// reached this server by, for pull lines and signed references.
pub fn client_host(headers: &axum::http::HeaderMap) -> Option<&str> {
    let given = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())?;
    let plausible = !given.is_empty()
        && given.len() <= 255
        && given
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b));
    plausible.then_some(given)
}
