//! What an image was made of and from, taken when it was produced: the
//! closure its layers read (store paths with their narHash, references and
//! deriver), the source it was built from, and the manifests it was served
//! as. Every provenance document is generated from this alone, so the same
//! closure gives the same bytes, and a restarted server (or a replica
//! sharing the state dir) answers for an image it did not build itself.

use serde::{Deserialize, Serialize};

/// One manifest the image was served as (OCI, Docker).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Described {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

/// Where an image came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    Flake {
        /// The served flake's URL, credentials removed.
        url: String,
        /// The reference Nix evaluated: locked to a commit for any tag but
        /// `latest`.
        evaluated: String,
        /// `packages.<system>.<attr>` (or `legacyPackages`).
        attribute: String,
        revision: Option<String>,
        /// The flake source's narHash as `nix flake metadata` locks it.
        nar_hash: Option<String>,
    },
    Packages {
        /// The package set, credentials removed.
        set: String,
        packages: Vec<String>,
        revision: Option<String>,
    },
}

/// One store path in the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    pub path: String,
    /// As `nix path-info` gives it (`sha256-<base64>` or `sha256:<nix32>`).
    pub nar_hash: String,
    pub nar_size: u64,
    /// Other store paths of the image this one refers to (not itself).
    pub references: Vec<String>,
    pub deriver: Option<String>,
    /// SPDX identifiers from `meta.license`, where the build could read them.
    #[serde(default)]
    pub licenses: Vec<String>,
}

impl Component {
    /// `<hash>-<name>` of `/nix/store/<hash>-<name>`.
    pub fn base_name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }

    /// The 32-character store hash.
    pub fn store_hash(&self) -> &str {
        self.base_name().split('-').next().unwrap_or("")
    }

    /// Name and version as Nix splits a derivation name
    /// (`builtins.parseDrvName`): the version starts after the first dash
    /// that is followed by something other than a letter.
    pub fn name_version(&self) -> (&str, Option<&str>) {
        let full = self
            .base_name()
            .split_once('-')
            .map_or("", |(_, name)| name);
        let bytes = full.as_bytes();
        for i in 0..bytes.len() {
            if bytes[i] == b'-' && bytes.get(i + 1).is_some_and(|c| !c.is_ascii_alphabetic()) {
                return (&full[..i], Some(&full[i + 1..]));
            }
        }
        (full, None)
    }

    /// The narHash as lowercase hex sha256, whichever way Nix printed it.
    pub fn nar_sha256_hex(&self) -> Option<String> {
        hash_hex(&self.nar_hash)
    }
}

/// `sha256-<base64>` (SRI), `sha256:<nix32>` or `sha256:<hex>` -> hex.
pub fn hash_hex(hash: &str) -> Option<String> {
    use base64::Engine;
    if let Some(b64) = hash.strip_prefix("sha256-") {
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
        return (bytes.len() == 32).then(|| hex::encode(bytes));
    }
    let rest = hash.strip_prefix("sha256:")?;
    if rest.len() == 64 && rest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Some(rest.to_ascii_lowercase());
    }
    nix32_decode(rest, 32).map(hex::encode)
}

/// Nix's base-32 (`0123456789abcdfghijklmnpqrsvwxyz`, least significant
/// digit last).
fn nix32_decode(s: &str, len: usize) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
    if s.len() != (len * 8).div_ceil(5) {
        return None;
    }
    let mut out = vec![0u8; len];
    for (n, c) in s.bytes().rev().enumerate() {
        let digit = ALPHABET.iter().position(|&a| a == c)? as u16;
        let (i, j) = (n * 5 / 8, n * 5 % 8);
        out[i] |= (digit << j) as u8;
        let carry = digit >> (8 - j);
        if i + 1 < len {
            out[i + 1] |= carry as u8;
        } else if carry != 0 {
            return None;
        }
    }
    Some(out)
}

/// Everything the provenance documents of one image say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The repository name it was pulled as.
    pub name: String,
    pub tag: String,
    pub system: String,
    /// `os/arch[/variant]`.
    pub platform: String,
    pub oci: Described,
    pub docker: Described,
    /// The image config's `created` (RFC 3339): the documents' date, so
    /// they are as reproducible as the image.
    pub created: String,
    pub source: Source,
    /// The build outputs the image was made from, and their derivations.
    pub outputs: Vec<String>,
    pub derivations: Vec<String>,
    /// Sorted by path.
    pub components: Vec<Component>,
}

impl Record {
    /// The manifest `digest` names, if it is one of this image's.
    pub fn described(&self, digest: &str) -> Option<&Described> {
        [&self.oci, &self.docker]
            .into_iter()
            .find(|d| d.digest == digest)
    }

    /// Components no other component refers to: what the image was asked
    /// to contain, the rest being their dependencies.
    pub fn roots(&self) -> Vec<&Component> {
        let referred: std::collections::HashSet<&str> = self
            .components
            .iter()
            .flat_map(|c| c.references.iter().map(String::as_str))
            .collect();
        self.components
            .iter()
            .filter(|c| !referred.contains(c.path.as_str()))
            .collect()
    }
}

pub use crate::vocab::store_path_of;

#[cfg(test)]
mod tests {
    use super::*;

    fn component(path: &str) -> Component {
        Component {
            path: path.into(),
            nar_hash: String::new(),
            nar_size: 0,
            references: vec![],
            deriver: None,
            licenses: vec![],
        }
    }

    #[test]
    fn names_split_as_nix_splits_them() {
        let h = "/nix/store/69fx9hqmha7fbnsyl9yh5y6riqc2ypk6-";
        for (name, want) in [
            ("busybox-1.35", ("busybox", Some("1.35"))),
            ("hello-2.12.1", ("hello", Some("2.12.1"))),
            (
                "python3.11-requests-2.31.0",
                ("python3.11-requests", Some("2.31.0")),
            ),
            ("xz-5.4.4-bin", ("xz", Some("5.4.4-bin"))),
            ("glibc-locales", ("glibc-locales", None)),
            ("layer.json", ("layer.json", None)),
            ("nix-2.8.0-man", ("nix", Some("2.8.0-man"))),
        ] {
            let c = component(&format!("{h}{name}"));
            assert_eq!(c.name_version(), want, "{name}");
            assert_eq!(c.store_hash(), "69fx9hqmha7fbnsyl9yh5y6riqc2ypk6");
        }
    }

    #[test]
    fn nar_hashes_read_in_every_form() {
        // The same hash as Nix 2.8 prints it in JSON (SRI), and as
        // `nix hash to-base32` / `to-base16` print it.
        let sri = "sha256-TfUVemy5YnKJ8k66oNBwgDucOxxlapCVEsYLkuRYji4=";
        let hex = "4df5157a6cb9627289f24ebaa0d070803b9c3b1c656a909512c60b92e4588e2e";
        assert_eq!(hash_hex(sri).as_deref(), Some(hex));
        assert_eq!(hash_hex(&format!("sha256:{hex}")).as_deref(), Some(hex));
        let nix32 = "0blfb3j942y62aar0sk53hxrqfw0f38a1fjfya4p4qmrdix1bxad";
        assert_eq!(hash_hex(&format!("sha256:{nix32}")).as_deref(), Some(hex));
        assert_eq!(hash_hex("sha256-short"), None);
        assert_eq!(hash_hex("md5:abc"), None);
    }
}
