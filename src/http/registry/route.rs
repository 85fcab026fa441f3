//! Hand-written parser for `/v2/<name>/<endpoint>`: names have any number of
//! segments, so the endpoint is found from the right.

use crate::error::{RegistryError, Result};
pub use crate::http::request::{client_host, valid_digest, valid_name, valid_tag};

use crate::vocab::Digest;
pub use crate::vocab::{digest_tag, Reference};

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
        digest: Digest,
    },
    /// `/v2/<name>/blobs/uploads/...`: push, always refused.
    Upload,
    Tags {
        name: String,
    },
    /// `/v2/<name>/referrers/<digest>`
    Referrers {
        name: String,
        digest: Digest,
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
                reference: Reference::Digest(Digest::parse(D).unwrap())
            }
        );
        assert_eq!(
            parse(&format!("a/b/blobs/{D}")).unwrap(),
            Route::Blob {
                name: "a/b".into(),
                digest: Digest::parse(D).unwrap()
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
                digest: Digest::parse(D).unwrap()
            }
        );
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
