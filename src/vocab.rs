//! The words every floor shares, each checked once where it enters and
//! written one way: digests, repository names, tags, references, commits,
//! Nix systems and their OCI platforms, store paths, media types. This is
//! the bottom floor: it imports nothing of the crate.

use sha2::{Digest as _, Sha256};
use std::fmt;
use std::path::{Component, Path, PathBuf};

/// A content digest, `sha256:<64 lowercase hex>`: the only algorithm
/// flakeport produces, so the only one it accepts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

/// A string that is not `sha256:<64 lowercase hex>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid digest {0:?}: expected sha256:<64 lowercase hex digits>")]
pub struct InvalidDigest(pub String);

impl Digest {
    pub fn parse(s: &str) -> Result<Digest, InvalidDigest> {
        match s.strip_prefix("sha256:") {
            Some(hex) if is_sha256_hex(hex) => Ok(Digest(s.to_string())),
            _ => Err(InvalidDigest(s.to_string())),
        }
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_hash(Sha256::digest(bytes).into())
    }

    /// The digest whose hash is `hash` (a finished `Sha256`).
    pub fn from_hash(hash: [u8; 32]) -> Digest {
        Digest(format!("sha256:{}", hex::encode(hash)))
    }

    /// `sha256:` and the 64 hex digits of `hex` (checked).
    pub fn from_hex(hex: &str) -> Option<Digest> {
        is_sha256_hex(hex).then(|| Digest(format!("sha256:{hex}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// `sha256-<hex>`: the referrers tag schema's form.
    pub fn tag_form(&self) -> String {
        format!("sha256-{}", self.hex())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::ops::Deref for Digest {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Digest {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for Digest {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Digest {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for Digest {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// 64 lowercase hex digits: a sha256 as flakeport writes it.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// 40 hex digits: a git commit, as a tag names one (either case).
pub fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Why a repository name is invalid (a rule of the distribution spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameRule(pub &'static str);

/// Repository names as the distribution spec defines them:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
pub fn check_name(name: &str) -> Result<(), NameRule> {
    let bad = |rule| Err(NameRule(rule));
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
    Ok(())
}

/// A tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn is_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 128
        && (tag.as_bytes()[0].is_ascii_alphanumeric() || tag.as_bytes()[0] == b'_')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// What a manifest request names: a tag, or a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

/// `sha256-<hex>` (the referrers tag schema) and `sha256-<hex>.sig`
/// (cosign's signature tag): the manifest digest they name, and whether it
/// is the signature.
pub fn digest_tag(tag: &str) -> Option<(Digest, bool)> {
    let (hex, sig) = match tag.strip_suffix(".sig") {
        Some(h) => (h, true),
        None => (tag, false),
    };
    Some((Digest::from_hex(hex.strip_prefix("sha256-")?)?, sig))
}

/// Nix system (`x86_64-linux`) -> OCI architecture (`amd64`).
pub fn oci_arch(system: &str) -> &str {
    match system.split('-').next().unwrap_or(system) {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "i686" => "386",
        "armv7l" | "armv6l" => "arm",
        "riscv64" => "riscv64",
        "powerpc64le" => "ppc64le",
        "s390x" => "s390x",
        other => other,
    }
}

/// A Nix system: CPU and kernel, as in `x86_64-linux`.
pub fn parse_system(s: &str) -> Result<String, String> {
    let ok = |part: &str| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    match s.trim().split_once('-') {
        Some((cpu, os)) if ok(cpu) && ok(os) => Ok(s.trim().to_string()),
        _ => Err(format!(
            "{s:?} is not a Nix system (CPU-KERNEL, e.g. x86_64-linux or aarch64-linux)"
        )),
    }
}

/// `/nix/store/<name>` of a path at or inside it; `None` for any other
/// path, and for one with a `.` or `..` that could climb out.
pub fn store_path_of(path: &Path) -> Option<PathBuf> {
    let rest = path.strip_prefix("/nix/store").ok()?;
    if !rest.components().all(|c| matches!(c, Component::Normal(_))) {
        return None;
    }
    let name = rest.components().next()?;
    Some(Path::new("/nix/store").join(name))
}

/// The media types flakeport serves and reads.
pub mod media_type {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

    /// A manifest media type as a metric label: one of the four served,
    /// else "other".
    pub fn known(media_type: &str) -> &'static str {
        [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST]
            .into_iter()
            .find(|m| *m == media_type)
            .unwrap_or("other")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn digests_parse_once_and_print_one_way() {
        let d = Digest::parse(&format!("sha256:{HEX}")).unwrap();
        assert_eq!(d.hex(), HEX);
        assert_eq!(d.to_string(), format!("sha256:{HEX}"));
        assert_eq!(d.tag_form(), format!("sha256-{HEX}"));
        for bad in [
            HEX.to_string(),
            format!("sha256:{}", &HEX[1..]),
            format!("sha256:{}", HEX.to_uppercase()),
            format!("sha512:{HEX}"),
            format!("sha256:{HEX}0"),
        ] {
            assert!(Digest::parse(&bad).is_err(), "{bad}");
        }
        // The digest of nothing, as sha256sum prints it.
        assert_eq!(
            Digest::of(b"").hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        assert!(serde_json::from_str::<Digest>("\"sha256:12\"").is_err());
    }

    #[test]
    fn digest_tags_name_manifests() {
        let d = Digest::from_hex(HEX).unwrap();
        assert_eq!(digest_tag(&d.tag_form()), Some((d.clone(), false)));
        assert_eq!(
            digest_tag(&format!("{}.sig", d.tag_form())),
            Some((d, true))
        );
        assert_eq!(digest_tag("sha256-12"), None);
        assert_eq!(digest_tag("latest"), None);
    }

    #[test]
    fn store_paths_never_climb_out() {
        let p = |s: &str| store_path_of(Path::new(s));
        assert_eq!(
            p("/nix/store/abc-x/bin/sh"),
            Some(PathBuf::from("/nix/store/abc-x"))
        );
        assert_eq!(
            p("/nix/store/abc-x"),
            Some(PathBuf::from("/nix/store/abc-x"))
        );
        assert_eq!(p("/nix/store/abc-x/../../etc/passwd"), None);
        assert_eq!(p("/nix/store"), None);
        assert_eq!(p("/etc/passwd"), None);
    }

    #[test]
    fn commits_and_tags() {
        assert!(is_commit(&"a".repeat(40)));
        assert!(is_commit(&"A".repeat(40)));
        assert!(!is_commit(&"a".repeat(39)));
        assert!(is_tag("v1.2_x-y") && is_tag("_x"));
        assert!(!is_tag("-bad") && !is_tag(".x") && !is_tag("") && !is_tag(&"a".repeat(129)));
        assert_eq!(check_name("a/b.c__d--e"), Ok(()));
        assert!(check_name("Bad_Name").is_err() && check_name("a//b").is_err());
        assert_eq!(oci_arch("aarch64-linux"), "arm64");
        assert!(parse_system("x86_64-linux").is_ok() && parse_system("x86").is_err());
    }
}
