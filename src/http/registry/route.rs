//! Hand-written parser for `/v2/<name>/<endpoint>`: names have any number of
//! segments, so the endpoint is found from the right.

use crate::error::{RegistryError, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    Digest(String),
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reference::Tag(t) | Reference::Digest(t) => f.write_str(t),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`
    Base,
    Manifest {
        name: String,
        reference: Reference,
    },
    Blob {
        name: String,
        digest: String,
    },
    /// `/v2/<name>/blobs/uploads/...`: push, always refused.
    Upload,
    Tags {
        name: String,
    },
    /// `/v2/<name>/referrers/<digest>`
    Referrers {
        name: String,
        digest: String,
    },
    /// `/v2/_catalog`
    Catalog,
}

/// Parse the path below `/v2/` (without the leading `/v2/`).
pub fn parse(rest: &str) -> Result<Route> {
    if rest.is_empty() {
        return Ok(Route::Base);
    }
    let no_endpoint = || RegistryError::NoSuchEndpoint {
        path: format!("/v2/{rest}"),
    };
    if rest == "_catalog" {
        return Ok(Route::Catalog);
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Ok(Route::Tags {
            name: valid_name(name)?,
        });
    }
    if let Some(i) = rest.find("/blobs/uploads") {
        valid_name(&rest[..i])?;
        return Ok(Route::Upload);
    }
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        let name = valid_name(name)?;
        let reference = if reference.contains(':') {
            Reference::Digest(valid_digest(reference)?)
        } else {
            Reference::Tag(valid_tag(reference)?)
        };
        return Ok(Route::Manifest { name, reference });
    }
    if let Some((name, digest)) = rest.rsplit_once("/referrers/") {
        return Ok(Route::Referrers {
            name: valid_name(name)?,
            digest: valid_digest(digest)?,
        });
    }
    if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
        let name = valid_name(name)?;
        return Ok(Route::Blob {
            name,
            digest: valid_digest(digest)?,
        });
    }
    Err(no_endpoint())
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

/// `sha256-<hex>` (the referrers tag schema) and `sha256-<hex>.sig`
/// (cosign's signature tag): the manifest digest they name, and whether it
/// is the signature.
pub fn digest_tag(tag: &str) -> Option<(String, bool)> {
    let (hex, sig) = match tag.strip_suffix(".sig") {
        Some(h) => (h, true),
        None => (tag, false),
    };
    let hex = hex.strip_prefix("sha256-")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then(|| (format!("sha256:{hex}"), sig))
}

/// Repository names as the distribution spec defines them:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
pub fn valid_name(name: &str) -> Result<String> {
    let bad = |rule| {
        Err(RegistryError::NameInvalid {
            name: name.to_string(),
            rule,
        })
    };
    if name.is_empty() {
        return bad("the name is empty");
    }
    if name.len() > 255 {
        return bad("names are at most 255 characters");
    }
    for seg in name.split('/') {
        if seg.is_empty() {
            return bad("path segments must not be empty");
        }
        if !seg
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        {
            return bad("only lowercase letters, digits and the separators . _ - / are allowed");
        }
        let bytes = seg.as_bytes();
        if !bytes[0].is_ascii_alphanumeric() || !bytes[bytes.len() - 1].is_ascii_alphanumeric() {
            return bad("each path segment must start and end with a letter or digit");
        }
        // Separators between components: '.', '_', '__' or a run of '-'.
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i].is_ascii_alphanumeric() {
                i += 1;
                continue;
            }
            let start = i;
            while i < bytes.len() && !bytes[i].is_ascii_alphanumeric() {
                i += 1;
            }
            let sep = &seg[start..i];
            let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
            if !ok {
                return bad(
                    "separators are '.', '_', '__' or a run of '-', never mixed or repeated",
                );
            }
        }
    }
    Ok(name.to_string())
}

/// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`
pub fn valid_tag(tag: &str) -> Result<String> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && (tag.as_bytes()[0].is_ascii_alphanumeric() || tag.as_bytes()[0] == b'_')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(tag.to_string())
    } else {
        Err(RegistryError::TagInvalid {
            tag: tag.to_string(),
        })
    }
}

/// Only sha256 is ever produced here, so only sha256 is accepted.
pub fn valid_digest(digest: &str) -> Result<String> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(digest.to_string())
        }
        _ => Err(RegistryError::DigestInvalid {
            digest: digest.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn routes() {
        assert_eq!(parse("").unwrap(), Route::Base);
        assert_eq!(
            parse("org/team/app/manifests/v1.2").unwrap(),
            Route::Manifest {
                name: "org/team/app".into(),
                reference: Reference::Tag("v1.2".into())
            }
        );
        assert_eq!(
            parse(&format!("app/manifests/{D}")).unwrap(),
            Route::Manifest {
                name: "app".into(),
                reference: Reference::Digest(D.into())
            }
        );
        assert_eq!(
            parse(&format!("a/b/blobs/{D}")).unwrap(),
            Route::Blob {
                name: "a/b".into(),
                digest: D.into()
            }
        );
        assert_eq!(
            parse("a/tags/list").unwrap(),
            Route::Tags { name: "a".into() }
        );
        assert_eq!(
            parse(&format!("a/b/referrers/{D}")).unwrap(),
            Route::Referrers {
                name: "a/b".into(),
                digest: D.into()
            }
        );
        let h = "a".repeat(64);
        assert_eq!(
            digest_tag(&format!("sha256-{h}")),
            Some((format!("sha256:{h}"), false))
        );
        assert_eq!(
            digest_tag(&format!("sha256-{h}.sig")),
            Some((format!("sha256:{h}"), true))
        );
        assert_eq!(digest_tag("sha256-abc"), None);
        assert_eq!(digest_tag("v1.2"), None);
        assert_eq!(
            parse("a/tags/list").unwrap(),
            Route::Tags { name: "a".into() }
        );
        assert_eq!(parse("a/blobs/uploads/").unwrap(), Route::Upload);
        // A repository may itself be called "manifests" or "blobs".
        assert_eq!(
            parse("manifests/manifests/latest").unwrap(),
            Route::Manifest {
                name: "manifests".into(),
                reference: Reference::Tag("latest".into())
            }
        );
    }

    #[test]
    fn rejections_name_the_rule() {
        let code = |p: &str| parse(p).unwrap_err().status_and_code().1;
        assert_eq!(code("Upper/manifests/latest"), "NAME_INVALID");
        assert_eq!(code("a//b/manifests/latest"), "NAME_INVALID");
        assert_eq!(code("a..b/manifests/latest"), "NAME_INVALID");
        assert_eq!(code("-a/manifests/latest"), "NAME_INVALID");
        assert_eq!(code("a/manifests/.hidden"), "TAG_INVALID");
        assert_eq!(code("a/manifests/sha256:abc"), "DIGEST_INVALID");
        assert_eq!(code("a/referrers/sha256:abc"), "DIGEST_INVALID");
        assert_eq!(code("a/blobs/md5:abc"), "DIGEST_INVALID");
        assert_eq!(code("a/whatever"), "UNSUPPORTED");
        assert!(valid_name(&"a".repeat(256)).is_err());
        assert!(valid_name("a__b.c-d---e/f").is_ok());
        assert!(valid_tag(&"t".repeat(129)).is_err());
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,80}") {
            let _ = parse(&s);
        }

        #[test]
        fn accepted_names_match_the_spec_grammar(s in "[a-z0-9._/-]{1,40}") {
            let component = "[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*";
            let re = format!("^{component}(/{component})*$");
            prop_assert_eq!(valid_name(&s).is_ok(), regex_lite_match(&re, &s));
        }
    }

    /// Tiny backtracking check of the spec grammar, independent of the parser.
    fn regex_lite_match(_re: &str, s: &str) -> bool {
        fn component(s: &[u8]) -> bool {
            // [a-z0-9]+ ((\.|_|__|-+) [a-z0-9]+)*
            let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
            let mut i = 0;
            let mut need_alnum = true;
            while i < s.len() {
                if alnum(s[i]) {
                    need_alnum = false;
                    i += 1;
                } else if need_alnum {
                    return false;
                } else {
                    let start = i;
                    while i < s.len() && !alnum(s[i]) {
                        i += 1;
                    }
                    let sep = &s[start..i];
                    if !(sep == b"."
                        || sep == b"_"
                        || sep == b"__"
                        || sep.iter().all(|&b| b == b'-'))
                    {
                        return false;
                    }
                    need_alnum = true;
                }
            }
            !need_alnum
        }
        s.split('/').all(|c| component(c.as_bytes()))
    }
}
