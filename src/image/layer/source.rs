//! What a layer is made of ([`LayerSource`]), its owner and perms rules,
//! and the key it is known by ([`LayerKey`]).

use super::*;

/// Owner written into tar headers.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Owner {
    pub uid: u64,
    pub gid: u64,
    pub uname: String,
    pub gname: String,
}

impl Default for Owner {
    fn default() -> Self {
        Owner {
            uid: 0,
            gid: 0,
            uname: "root".into(),
            gname: "root".into(),
        }
    }
}

/// Ownership and mode applied to one archive path (or a whole subtree) while
/// streaming: how an image gets a non-root user or a 1777 `/tmp` without
/// fakeroot. Later rules win over earlier ones.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PermRule {
    /// Absolute path inside the image, without a trailing slash.
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gname: Option<String>,
    /// Also apply to everything below `path`.
    #[serde(default)]
    pub recursive: bool,
    /// nix2container's per-file rule: only the entries under `path` whose
    /// path in the store (`source`, then what follows `path`) matches this
    /// regex, unanchored, as its Go `regexp` matches (the `regex` crate
    /// reads the same RE2 syntax).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// The store path that `path` stands for (itself for a store path; the
    /// tree's store path for one moved to `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl PermRule {
    /// Whether the rule covers `archive_path` by place (`path` and, if
    /// recursive, below it): the part of `archive_path` after `path`.
    pub(super) fn below<'p>(&self, archive_path: &'p [u8]) -> Option<&'p [u8]> {
        let rule = self.path.trim_end_matches('/').as_bytes();
        if archive_path == rule {
            return Some(&[]);
        }
        (self.recursive
            && archive_path.len() > rule.len()
            && archive_path.starts_with(rule)
            && archive_path[rule.len()] == b'/')
            .then(|| &archive_path[rule.len()..])
    }
}

/// A regex as Go's `regexp` reads it (nix2container's perms): the same
/// RE2 syntax, with ASCII classes (`\d`, `\w`, `\s`, `\b`), over bytes.
pub fn go_regex(re: &str) -> Result<regex::bytes::Regex, regex::Error> {
    regex::bytes::RegexBuilder::new(re).unicode(false).build()
}

/// A rule with its regex compiled once per scan.
pub(super) struct CompiledRule<'a> {
    pub(super) rule: &'a PermRule,
    pub(super) regex: Option<regex::bytes::Regex>,
}

impl CompiledRule<'_> {
    pub(super) fn matches(&self, archive_path: &[u8]) -> bool {
        let Some(rest) = self.rule.below(archive_path) else {
            return false;
        };
        match (&self.regex, &self.rule.regex) {
            (None, None) => true,
            // A regex that does not compile (refused when planned) matches nothing.
            (None, Some(_)) => false,
            (Some(re), _) => {
                let mut source = self.rule.source.clone().unwrap_or_default().into_bytes();
                source.extend_from_slice(rest);
                re.is_match(&source)
            }
        }
    }
}

/// What a layer is made of. Serialised into the state dir's index, so a
/// restarted server can regenerate a blob it advertised before.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LayerSource {
    /// Store paths, each placed at its own path under `/nix/store`.
    StorePaths {
        paths: Vec<PathBuf>,
        mtime: u64,
        owner: Owner,
        perms: Vec<PermRule>,
    },
    /// A directory whose contents become the image's `/` (the root or
    /// customisation layer of a flakeport conf).
    RootTree {
        dir: PathBuf,
        mtime: u64,
        owner: Owner,
        perms: Vec<PermRule>,
    },
    /// A finished file served byte for byte: nixpkgs' customisation layer,
    /// a blob of an OCI layout directory, a nix2container `layer-path`.
    TarFile { path: PathBuf },
    /// Bytes `offset..offset + size` of an image archive (docker-archive or
    /// OCI layout as a tar), served as they are, never unpacked. With
    /// `gzip` or `zstd` (nixpkgs' `compressor = "zstd"`), the archive is
    /// compressed and `offset` counts bytes of the decompressed stream:
    /// every read decompresses up to the member. (Two flags, not one
    /// enum, so that the keys of plain and gzip members stay as they were.)
    ArchiveMember {
        archive: PathBuf,
        offset: u64,
        size: u64,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        gzip: bool,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        zstd: bool,
    },
    /// Several generated sources in one archive, in order (nix2container
    /// layers hold store paths and a tree moved to `/` together). Each part
    /// must be generated (store paths, root tree or links).
    Parts { parts: Vec<LayerSource> },
    /// Directories and symlinks computed by the planner, in archive order:
    /// the root layer of a package-path image (`/bin/curl -> /nix/store/...`).
    Links {
        entries: Vec<LinkEntry>,
        mtime: u64,
        owner: Owner,
        perms: Vec<PermRule>,
    },
}

/// One entry of a [`LayerSource::Links`] layer.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LinkEntry {
    /// Absolute path in the image, no trailing slash.
    pub path: String,
    /// Symlink target; `None` for a directory (0755).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// Identity of a layer's bytes: hash of the format version and the source.
/// Equal keys mean equal bytes, so images that share a key share a blob.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LayerKey(pub String);

impl LayerSource {
    /// The files and directories this layer reads (not what symlinks in
    /// them point to): what must lie inside an output's closure, by name.
    pub fn reads(&self) -> Vec<&Path> {
        match self {
            LayerSource::StorePaths { paths, .. } => paths.iter().map(PathBuf::as_path).collect(),
            LayerSource::RootTree { dir, .. } => vec![dir],
            LayerSource::TarFile { path } => vec![path],
            LayerSource::ArchiveMember { archive, .. } => vec![archive],
            LayerSource::Parts { parts } => parts.iter().flat_map(LayerSource::reads).collect(),
            LayerSource::Links { .. } => vec![],
        }
    }

    /// The store paths this layer holds as store paths (under `/nix/store`
    /// in the image): not trees copied to `/`, not archives unpacked.
    pub fn store_paths(&self) -> Vec<&Path> {
        match self {
            LayerSource::StorePaths { paths, .. } => paths.iter().map(PathBuf::as_path).collect(),
            LayerSource::Parts { parts } => {
                parts.iter().flat_map(LayerSource::store_paths).collect()
            }
            LayerSource::RootTree { .. }
            | LayerSource::TarFile { .. }
            | LayerSource::ArchiveMember { .. }
            | LayerSource::Links { .. } => vec![],
        }
    }

    /// What this layer opens through symlinks (a tar, an archive, a tree's
    /// top): each must really lie inside the closure, not just by name.
    pub fn opens(&self) -> Vec<&Path> {
        match self {
            LayerSource::RootTree { dir, .. } => vec![dir],
            LayerSource::TarFile { path } => vec![path],
            LayerSource::ArchiveMember { archive, .. } => vec![archive],
            LayerSource::Parts { parts } => parts.iter().flat_map(LayerSource::opens).collect(),
            LayerSource::StorePaths { .. } | LayerSource::Links { .. } => vec![],
        }
    }

    pub fn key(&self) -> LayerKey {
        self.key_in_format(FORMAT_VERSION)
    }

    /// The key this source has under a given format version (a test shows
    /// that a bump moves every key).
    pub(super) fn key_in_format(&self, version: u32) -> LayerKey {
        let mut h = Sha256::new();
        h.update(format!("flakeport-layer-v{version}\n"));
        // serde_json of this enum is deterministic: structs and Vecs only.
        h.update(serde_json::to_vec(self).expect("layer source serialises"));
        LayerKey(hex::encode(h.finalize()))
    }
}
