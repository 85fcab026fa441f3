//! The layer engine: turns a [`LayerSource`] into a deterministic tar stream.
//!
//! Nothing here knows about HTTP or Nix. A layer is first *scanned* (lstat
//! only, no file contents read) into a [`LayerTar`], which knows its exact
//! byte size; the bytes are then produced on demand, whole or as a range, as
//! often as needed. Two generations from the same store are byte-identical.
//!
//! Format v1 (bump [`FORMAT_VERSION`] whenever a byte could change):
//! - ustar headers, with a PAX `x` record block in front only when a field
//!   does not fit (long or non-ASCII names, large ids or sizes);
//! - `/nix/` and `/nix/store/` (0755) first in store layers, then each store
//!   path and its descendants in component-by-component byte order;
//! - one mtime for every entry, owner from the layer's owner or perms rules;
//! - mode = `st_mode & 0o7777`, symlinks kept, hard links never emitted;
//!   in a root tree directories are 0755 (the store strips write bits, and a
//!   root filesystem nobody can write to breaks programs), unless perms say
//!   otherwise;
//! - two zero blocks, then zero padding to a multiple of 10240 bytes.

pub mod compress;
mod tar;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use self::tar::BLOCK;

/// Version of the byte layout. Part of every [`LayerKey`], so a change to the
/// layout can never be served under a digest computed by an older version.
pub const FORMAT_VERSION: u32 = 1;

/// How much of a file is read at once while streaming.
const READ_CHUNK: usize = 256 * 1024;

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
    fn below<'p>(&self, archive_path: &'p [u8]) -> Option<&'p [u8]> {
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
struct CompiledRule<'a> {
    rule: &'a PermRule,
    regex: Option<regex::bytes::Regex>,
}

impl CompiledRule<'_> {
    fn matches(&self, archive_path: &[u8]) -> bool {
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
    fn key_in_format(&self, version: u32) -> LayerKey {
        let mut h = Sha256::new();
        h.update(format!("flakeport-layer-v{version}\n"));
        // serde_json of this enum is deterministic: structs and Vecs only.
        h.update(serde_json::to_vec(self).expect("layer source serialises"));
        LayerKey(hex::encode(h.finalize()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum EntryKind {
    Dir,
    File { source: PathBuf, size: u64 },
    Symlink { target: Vec<u8> },
}

/// One archive member; its metadata lives in the rendered header.
#[derive(Debug, Clone)]
pub struct Entry {
    kind: EntryKind,
    /// Header blocks (PAX + ustar) rendered once during the scan.
    header: Vec<u8>,
}

impl Entry {
    fn content_size(&self) -> u64 {
        match &self.kind {
            EntryKind::File { size, .. } => *size,
            _ => 0,
        }
    }
    fn span(&self) -> u64 {
        self.header.len() as u64 + tar::padded(self.content_size())
    }
}

/// The files a layer reads, as the filesystem describes them: device,
/// inode, size, mtime and ctime of each, hashed together. Any write to a
/// file moves its ctime (which no call can set back, unlike mtime), and a
/// file replaced by another is another inode: while a layer's identity is
/// the one it had when its bytes were last read and hashed, they are the
/// same bytes. A blob GET uses it to skip hashing a layer it already
/// verified. A generated layer's identity also names its scan: headers,
/// directory modes and symlink targets come from the scan, not from any
/// file's stat, so a layer scanned again (after its scan left the cache)
/// is hashed again before it is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity([u8; 32]);

/// Digest and size of one layer, from the digest pass.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerDigest {
    pub digest: String,
    pub size: u64,
    /// For a compressed blob: the digest of the uncompressed tar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff_id: Option<String>,
    /// For a blob that came compressed (a member of an image archive),
    /// served as it is: its codec, whatever `--compression` says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packed: Option<compress::Codec>,
}

/// A scanned layer: its exact size is known, its bytes can be generated.
#[derive(Debug)]
pub enum LayerTar {
    Generated {
        entries: Vec<Entry>,
        /// Offset of each entry's header: a range starts at its first entry
        /// by binary search, so reading a layer chunk by chunk stays linear.
        starts: Vec<u64>,
        size: u64,
        /// This scan, among all made by the process (see [`Identity`]).
        scan: u64,
    },
    File {
        path: PathBuf,
        size: u64,
    },
    /// A member of an image archive (see [`LayerSource::ArchiveMember`]).
    Member {
        archive: PathBuf,
        offset: u64,
        size: u64,
        packing: Packing,
        /// The archive's length when it was scanned: a store path never
        /// changes, so a different length means it was replaced or damaged.
        archive_len: u64,
    },
    /// A file opened up front: the stream reads it even if it is unlinked
    /// meanwhile (a compressed layer evicted from its cache).
    Opened {
        file: std::fs::File,
        path: PathBuf,
        size: u64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is not a regular file, directory or symlink")]
    Unsupported { path: PathBuf },
}

impl LayerTar {
    /// A tar of these entries, with end blocks and record padding.
    fn generated(entries: Vec<Entry>) -> LayerTar {
        let mut starts = Vec::with_capacity(entries.len());
        let mut body = 0u64;
        for e in &entries {
            starts.push(body);
            body += e.span();
        }
        static SCANS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        LayerTar::Generated {
            size: tar::archive_size(body),
            starts,
            entries,
            scan: SCANS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Walk the source with lstat only and compute the layout.
    pub fn scan(source: &LayerSource) -> Result<LayerTar, ScanError> {
        match source {
            LayerSource::TarFile { path } => {
                let meta = std::fs::metadata(path).map_err(|e| ScanError::Io {
                    path: path.clone(),
                    source: e,
                })?;
                Ok(LayerTar::File {
                    path: path.clone(),
                    size: meta.len(),
                })
            }
            LayerSource::Parts { parts } => {
                let mut all = Vec::new();
                for part in parts {
                    match LayerTar::scan(part)? {
                        LayerTar::Generated { entries, .. } => all.extend(entries),
                        _ => {
                            return Err(ScanError::Unsupported {
                                path: PathBuf::from("a layer part that is not generated"),
                            })
                        }
                    }
                }
                Ok(LayerTar::generated(all))
            }
            LayerSource::ArchiveMember {
                archive,
                offset,
                size,
                gzip,
                zstd,
            } => {
                let packing = match (gzip, zstd) {
                    (true, _) => Packing::Gzip,
                    (false, true) => Packing::Zstd,
                    (false, false) => Packing::Plain,
                };
                let meta = std::fs::metadata(archive).map_err(|e| ScanError::Io {
                    path: archive.clone(),
                    source: e,
                })?;
                if packing == Packing::Plain && offset + size > meta.len() {
                    return Err(ScanError::Io {
                        path: archive.clone(),
                        source: io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the archive is shorter than the member",
                        ),
                    });
                }
                Ok(LayerTar::Member {
                    archive: archive.clone(),
                    offset: *offset,
                    size: *size,
                    packing,
                    archive_len: meta.len(),
                })
            }
            LayerSource::StorePaths {
                paths,
                mtime,
                owner,
                perms,
            } => {
                let mut s = Scanner::new(*mtime, owner, perms);
                s.push(b"/nix/".to_vec(), EntryKind::Dir, 0o755);
                s.push(b"/nix/store/".to_vec(), EntryKind::Dir, 0o755);
                for p in paths {
                    s.walk(p, p.as_os_str().as_bytes().to_vec())?;
                }
                Ok(s.finish())
            }
            LayerSource::Links {
                entries,
                mtime,
                owner,
                perms,
            } => {
                let mut s = Scanner::new(*mtime, owner, perms);
                for e in entries {
                    match &e.target {
                        None => s.push(format!("{}/", e.path).into_bytes(), EntryKind::Dir, 0o755),
                        Some(t) => s.push(
                            e.path.clone().into_bytes(),
                            EntryKind::Symlink {
                                target: t.clone().into_bytes(),
                            },
                            0o777,
                        ),
                    }
                }
                Ok(s.finish())
            }
            LayerSource::RootTree {
                dir,
                mtime,
                owner,
                perms,
            } => {
                let mut s = Scanner::new(*mtime, owner, perms);
                s.dir_mode = Some(0o755);
                for (name, child) in sorted_children(dir)? {
                    let mut archive = b"/".to_vec();
                    archive.extend_from_slice(&name);
                    s.walk(&child, archive)?;
                }
                Ok(s.finish())
            }
        }
    }

    /// Archive members held in memory (for cache weights).
    pub fn entry_count(&self) -> usize {
        match self {
            LayerTar::Generated { entries, .. } => entries.len(),
            LayerTar::File { .. } | LayerTar::Opened { .. } | LayerTar::Member { .. } => 1,
        }
    }

    /// Exact number of bytes the tar stream has.
    pub fn size(&self) -> u64 {
        match self {
            LayerTar::Generated { size, .. }
            | LayerTar::File { size, .. }
            | LayerTar::Member { size, .. }
            | LayerTar::Opened { size, .. } => *size,
        }
    }

    /// Write bytes `start..end` of the layer to `out`. Entries wholly outside
    /// the range are skipped without reading their files, so a Range request
    /// near the end of a large layer costs no reads of what comes before.
    pub fn write_range(&self, start: u64, end: u64, out: &mut dyn Write) -> io::Result<()> {
        let end = end.min(self.size());
        if start >= end {
            return Ok(());
        }
        if let Some((mut source, path)) = self.open_at(start)? {
            return copy_exact(&mut source, end - start, out, path);
        }
        match self {
            LayerTar::Generated {
                entries,
                starts,
                size,
                ..
            } => {
                // The last entry that starts at or before `start`.
                let first = starts.partition_point(|&s| s <= start).saturating_sub(1);
                let mut w = Window {
                    out,
                    pos: starts.get(first).copied().unwrap_or(0),
                    start,
                    end,
                    small: Vec::new(),
                };
                for e in &entries[first.min(entries.len())..] {
                    let span = e.span();
                    if w.pos + span <= start {
                        w.pos += span;
                        continue;
                    }
                    if w.pos >= end {
                        return Ok(());
                    }
                    w.put(&e.header)?;
                    if let EntryKind::File { source, size } = &e.kind {
                        w.file(source, *size)?;
                        w.zeros(tar::padded(*size) - size)?;
                    }
                }
                w.zeros(size - w.pos)
            }
            LayerTar::File { .. } | LayerTar::Member { .. } | LayerTar::Opened { .. } => {
                unreachable!("opened above")
            }
        }
    }

    /// A file-backed layer's bytes from `start` on, opened and checked
    /// against its scanned size (with the path its errors name); `None`
    /// for a generated layer, which has no single source.
    fn open_at(&self, start: u64) -> io::Result<Option<(Box<dyn LayerRead>, &Path)>> {
        Ok(Some(match self {
            LayerTar::File { path, size } => {
                let file = std::fs::File::open(path)?;
                check_unchanged(path, file.metadata()?.len(), *size)?;
                (Box::new(PositionedReader { file, pos: start }), path)
            }
            LayerTar::Member {
                archive,
                offset,
                packing,
                archive_len,
                ..
            } => {
                let f = std::fs::File::open(archive)?;
                check_unchanged(archive, f.metadata()?.len(), *archive_len)?;
                // No index into a compressed stream: decompress up to the member.
                let mut plain: Box<dyn LayerRead> = match packing {
                    Packing::Plain => {
                        let file = PositionedReader {
                            file: f,
                            pos: offset + start,
                        };
                        return Ok(Some((Box::new(file), archive)));
                    }
                    Packing::Gzip => {
                        Box::new(flate2::read::MultiGzDecoder::new(io::BufReader::new(f)))
                    }
                    Packing::Zstd => Box::new(ZstdReader(zstd_decoder(io::BufReader::new(f))?)),
                };
                let skip = offset + start;
                let skipped = io::copy(&mut (&mut plain).take(skip), &mut io::sink())?;
                if skipped != skip {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{} ends before its member", archive.display()),
                    ));
                }
                (plain, archive)
            }
            LayerTar::Opened { file, path, size } => {
                check_unchanged(path, file.metadata()?.len(), *size)?;
                // Positional reads: one opened file serves any range, no seek state.
                let file = PositionedReader {
                    file: file.try_clone()?,
                    pos: start,
                };
                (Box::new(file), path)
            }
            LayerTar::Generated { .. } => return Ok(None),
        }))
    }

    /// Bytes `start..end` as a reader that reads only when asked, so a
    /// stream can produce one chunk at a time (on a borrowed thread, or
    /// from the page cache without one: [`LayerRead::read_cached`]) and
    /// hold none while its client is slow. A source that turns out shorter
    /// than scanned is an `UnexpectedEof` error, never a short read.
    pub fn reader(self: Arc<Self>, start: u64, end: u64) -> io::Result<Box<dyn LayerRead>> {
        let end = end.min(self.size());
        if let Some((inner, path)) = self.open_at(start)? {
            return Ok(Box::new(ExactReader {
                inner,
                left: end.saturating_sub(start),
                path: path.to_path_buf(),
            }));
        }
        Ok(Box::new(GeneratedReader {
            tar: self,
            pos: start,
            end,
            open: None,
        }))
    }

    /// What the files this layer reads are now, as the filesystem says
    /// (see [`Identity`]). One `stat` per file; nothing is read.
    pub fn identity(&self) -> io::Result<Identity> {
        let mut h = Sha256::new();
        if let LayerTar::Generated { scan, .. } = self {
            h.update(scan.to_le_bytes());
        }
        let mut add = |m: std::fs::Metadata| {
            for v in [
                m.dev(),
                m.ino(),
                m.size(),
                m.mtime() as u64,
                m.mtime_nsec() as u64,
                m.ctime() as u64,
                m.ctime_nsec() as u64,
            ] {
                h.update(v.to_le_bytes());
            }
        };
        match self {
            LayerTar::Generated { entries, .. } => {
                for e in entries {
                    if let EntryKind::File { source, .. } = &e.kind {
                        add(std::fs::metadata(source)?);
                    }
                }
            }
            LayerTar::File { path, .. } => add(std::fs::metadata(path)?),
            LayerTar::Member { archive, .. } => add(std::fs::metadata(archive)?),
            LayerTar::Opened { file, .. } => add(file.metadata()?),
        }
        Ok(Identity(h.finalize().into()))
    }

    /// The layer's digest, and whether its files still have the identity
    /// `before` that was taken before this call: if so, the bytes hashed
    /// are the ones that identity names, and the layer can be trusted
    /// while it holds.
    pub fn digest_since(&self, before: Identity) -> io::Result<(String, bool)> {
        let digest = self.digest()?;
        Ok((digest, self.identity()? == before))
    }

    /// Stream the whole layer through sha256. Returns `sha256:<hex>`.
    pub fn digest(&self) -> io::Result<String> {
        let mut h = HashingWriter::default();
        self.write_range(0, self.size(), &mut h)?;
        if h.written != self.size() {
            return Err(io::Error::other(format!(
                "layer produced {} bytes, expected {}",
                h.written,
                self.size()
            )));
        }
        Ok(h.finish())
    }
}

/// A layer's bytes in order, as [`LayerTar::reader`] gives them.
pub trait LayerRead: Read + Send {
    /// Reads only what is ready without waiting: bytes of an open file
    /// that are in the page cache (`preadv2` with `RWF_NOWAIT`).
    /// `WouldBlock` when the next bytes would need the disk, a file
    /// opened or a decompressor; `read` then gets them, on a thread that
    /// may block. May read fewer bytes than asked (part of a range cached).
    fn read_cached(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

/// A gzipped archive's member is decompressed on a thread that may block.
impl<R: Read + Send> LayerRead for flate2::read::MultiGzDecoder<R> {}

/// How an image archive is packed (see [`LayerSource::ArchiveMember`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    Plain,
    Gzip,
    Zstd,
}

/// A zstd decoder that takes any window the format allows (`zstd --long`
/// or `--ultra` archives need more than the default 128 MiB).
pub fn zstd_decoder<R: io::BufRead>(r: R) -> io::Result<zstd::stream::read::Decoder<'static, R>> {
    let mut d = zstd::stream::read::Decoder::with_buffer(r)?;
    d.window_log_max(31)?;
    Ok(d)
}

/// A zstd-compressed archive's member, decompressed like a gzipped one.
struct ZstdReader<R: io::BufRead>(zstd::stream::read::Decoder<'static, R>);

impl<R: io::BufRead + Send> Read for ZstdReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R: io::BufRead + Send> LayerRead for ZstdReader<R> {}

/// `pread` of what the page cache holds at `offset`, or `WouldBlock`.
/// A kernel or filesystem without `RWF_NOWAIT` says `EOPNOTSUPP`: that is
/// `WouldBlock` too, so every read takes the blocking path.
fn pread_cached(file: &std::fs::File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let offset = libc::off_t::try_from(offset).map_err(io::Error::other)?;
    // SAFETY: one iovec over `buf`, which outlives the call; the fd is open.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
    if n >= 0 {
        return Ok(n as usize);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN | libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL) => {
            Err(io::ErrorKind::WouldBlock.into())
        }
        _ => Err(e),
    }
}

/// A generated layer read a window at a time through [`LayerTar::write_range`],
/// except inside a large file's bytes: those are read straight into the
/// caller's buffer from a file kept open across reads. One `pread` per
/// chunk instead of open, stat, seek, read into a buffer of its own, copy
/// and close: at 64 streams of 128 MiB files, fewer syscalls and no
/// allocation per chunk.
struct GeneratedReader {
    tar: Arc<LayerTar>,
    pos: u64,
    end: u64,
    /// The large file being read: its entry's index and the open file.
    open: Option<(usize, std::fs::File)>,
}

impl GeneratedReader {
    /// The large file whose bytes `pos` falls in: its entry's index, its
    /// scanned size, the offset in it, and how many of `want` bytes it has
    /// left; `None` in a header, padding or a small file.
    fn large_file_at(&self, want: usize) -> Option<(usize, u64, u64, usize)> {
        let LayerTar::Generated {
            entries, starts, ..
        } = &*self.tar
        else {
            return None;
        };
        let at = starts.partition_point(|&s| s <= self.pos).checked_sub(1)?;
        let entry = &entries[at];
        let EntryKind::File { size, .. } = &entry.kind else {
            return None;
        };
        let data = starts[at] + entry.header.len() as u64;
        if *size <= SMALL_FILE || self.pos < data || self.pos >= data + size {
            return None;
        }
        let n = (want as u64)
            .min(data + size - self.pos)
            .min(self.end - self.pos) as usize;
        Some((at, *size, self.pos - data, n))
    }

    /// The file of entry `at`.
    fn source(&self, at: usize) -> &Path {
        match &*self.tar {
            LayerTar::Generated { entries, .. } => match &entries[at].kind {
                EntryKind::File { source, .. } => source,
                _ => unreachable!("large_file_at gives file entries"),
            },
            _ => unreachable!("a GeneratedReader reads a generated layer"),
        }
    }

    /// Reads into `buf` from the large file whose bytes `pos` falls in;
    /// `None` when `pos` is in a header, padding or a small file.
    fn read_in_file(&mut self, buf: &mut [u8]) -> Option<io::Result<usize>> {
        let (at, size, offset, n) = self.large_file_at(buf.len())?;
        Some((|| {
            if self.open.as_ref().map(|(i, _)| *i) != Some(at) {
                let source = self.source(at);
                let f = std::fs::File::open(source)?;
                check_unchanged(source, f.metadata()?.len(), size)?;
                self.open = Some((at, f));
            }
            let (_, f) = self.open.as_ref().expect("opened above");
            let got = std::os::unix::fs::FileExt::read_at(f, &mut buf[..n], offset)?;
            self.advance(got, at)
        })())
    }

    /// `got` bytes of entry `at`'s file were read; none at all means it
    /// shrank.
    fn advance(&mut self, got: usize, at: usize) -> io::Result<usize> {
        if got == 0 {
            return Err(shorter_than_scanned(self.source(at)));
        }
        self.pos += got as u64;
        Ok(got)
    }
}

impl LayerRead for GeneratedReader {
    /// Only inside the large file already open: opening one, or making
    /// headers and small files (which reads them), is `WouldBlock`.
    fn read_cached(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.end || buf.is_empty() {
            return Ok(0);
        }
        let Some((at, _, offset, n)) = self.large_file_at(buf.len()) else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let Some((_, f)) = self.open.as_ref().filter(|(i, _)| *i == at) else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let got = pread_cached(f, &mut buf[..n], offset)?;
        self.advance(got, at)
    }
}

impl Read for GeneratedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.end - self.pos);
        if n == 0 {
            return Ok(0);
        }
        if let Some(direct) = self.read_in_file(buf) {
            return direct;
        }
        let mut out = io::Cursor::new(&mut buf[..n as usize]);
        self.tar.write_range(self.pos, self.pos + n, &mut out)?;
        if out.position() != n {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "layer produced fewer bytes than scanned",
            ));
        }
        self.pos += n;
        Ok(n as usize)
    }
}

/// Exactly `left` bytes of `inner`: its end before then is an error that
/// names `path`.
struct ExactReader<R, P> {
    inner: R,
    left: u64,
    path: P,
}

impl<R: Read, P: AsRef<Path>> Read for ExactReader<R, P> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (buf.len() as u64).min(self.left) as usize;
        if want == 0 {
            return Ok(0);
        }
        let got = self.inner.read(&mut buf[..want])?;
        self.took(got)
    }
}

impl<R, P: AsRef<Path>> ExactReader<R, P> {
    /// `got` bytes were read of the `left` wanted; none means the source
    /// ended early.
    fn took(&mut self, got: usize) -> io::Result<usize> {
        if got == 0 {
            return Err(shorter_than_scanned(self.path.as_ref()));
        }
        self.left -= got as u64;
        Ok(got)
    }
}

impl<P: AsRef<Path> + Send> LayerRead for ExactReader<Box<dyn LayerRead>, P> {
    fn read_cached(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (buf.len() as u64).min(self.left) as usize;
        if want == 0 {
            return Ok(0);
        }
        let got = self.inner.read_cached(&mut buf[..want])?;
        self.took(got)
    }
}

/// Reads at a position of its own (`pread`), so a file shared by several
/// streams needs no seek state.
struct PositionedReader {
    file: std::fs::File,
    pos: u64,
}

impl Read for PositionedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = std::os::unix::fs::FileExt::read_at(&self.file, buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl LayerRead for PositionedReader {
    fn read_cached(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = pread_cached(&self.file, buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// sha256 over everything written to it.
#[derive(Default)]
pub struct HashingWriter {
    hasher: Sha256,
    pub written: u64,
}

impl HashingWriter {
    pub fn finish(self) -> String {
        crate::vocab::Digest::from_hash(self.hasher.finalize().into()).into()
    }
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hasher.update(buf);
        self.written += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Scanner<'a> {
    mtime: u64,
    /// Mode for every directory below the top, or `None` to keep the store's.
    dir_mode: Option<u32>,
    owner: Arc<Owner>,
    perms: Vec<CompiledRule<'a>>,
    entries: Vec<Entry>,
}

impl<'a> Scanner<'a> {
    fn new(mtime: u64, owner: &Owner, perms: &'a [PermRule]) -> Self {
        Scanner {
            mtime,
            dir_mode: None,
            owner: Arc::new(owner.clone()),
            perms: perms
                .iter()
                .map(|rule| CompiledRule {
                    rule,
                    regex: rule.regex.as_deref().and_then(|r| go_regex(r).ok()),
                })
                .collect(),
            entries: Vec::new(),
        }
    }

    fn push(&mut self, name: Vec<u8>, kind: EntryKind, mode: u32) {
        let bare = name.strip_suffix(b"/").unwrap_or(&name);
        let mut mode = mode & 0o7777;
        let mut owner = self.owner.clone();
        for rule in self
            .perms
            .iter()
            .filter(|r| r.matches(bare))
            .map(|r| r.rule)
        {
            if let Some(m) = rule.mode {
                mode = m & 0o7777;
            }
            if rule.uid.is_some()
                || rule.gid.is_some()
                || rule.uname.is_some()
                || rule.gname.is_some()
            {
                let o = Arc::make_mut(&mut owner);
                o.uid = rule.uid.unwrap_or(o.uid);
                o.gid = rule.gid.unwrap_or(o.gid);
                if let Some(u) = &rule.uname {
                    o.uname = u.clone();
                }
                if let Some(g) = &rule.gname {
                    o.gname = g.clone();
                }
            }
        }
        let header = tar::header_blocks(&tar::HeaderFields {
            name: &name,
            kind: match &kind {
                EntryKind::Dir => tar::TypeFlag::Dir,
                EntryKind::File { .. } => tar::TypeFlag::Regular,
                EntryKind::Symlink { .. } => tar::TypeFlag::Symlink,
            },
            mode,
            uid: owner.uid,
            gid: owner.gid,
            uname: owner.uname.as_bytes(),
            gname: owner.gname.as_bytes(),
            size: match &kind {
                EntryKind::File { size, .. } => *size,
                _ => 0,
            },
            mtime: self.mtime,
            linkname: match &kind {
                EntryKind::Symlink { target } => target,
                _ => b"",
            },
        });
        self.entries.push(Entry { kind, header });
    }

    /// Depth-first, children sorted by name bytes: this is exactly the
    /// component-by-component order (`a/b` before `a-b`).
    fn walk(&mut self, path: &Path, archive: Vec<u8>) -> Result<(), ScanError> {
        let io_err = |e| ScanError::Io {
            path: path.to_path_buf(),
            source: e,
        };
        let meta = std::fs::symlink_metadata(path).map_err(io_err)?;
        let ft = meta.file_type();
        let mode = meta.mode();
        if ft.is_symlink() {
            let target = std::fs::read_link(path).map_err(io_err)?;
            self.push(
                archive,
                EntryKind::Symlink {
                    target: target.as_os_str().as_bytes().to_vec(),
                },
                mode,
            );
        } else if ft.is_file() {
            // Hard links are written as regular files: store optimisation must
            // never change a layer's bytes.
            self.push(
                archive,
                EntryKind::File {
                    source: path.to_path_buf(),
                    size: meta.len(),
                },
                mode,
            );
        } else if ft.is_dir() {
            let mut dir_name = archive.clone();
            dir_name.push(b'/');
            self.push(dir_name, EntryKind::Dir, self.dir_mode.unwrap_or(mode));
            for (name, child) in sorted_children(path)? {
                let mut a = archive.clone();
                a.push(b'/');
                a.extend_from_slice(&name);
                self.walk(&child, a)?;
            }
        } else {
            return Err(ScanError::Unsupported {
                path: path.to_path_buf(),
            });
        }
        Ok(())
    }

    fn finish(self) -> LayerTar {
        LayerTar::generated(self.entries)
    }
}

fn sorted_children(dir: &Path) -> Result<Vec<(Vec<u8>, PathBuf)>, ScanError> {
    let io_err = |e| ScanError::Io {
        path: dir.to_path_buf(),
        source: e,
    };
    let mut children = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        children.push((entry.file_name().as_bytes().to_vec(), entry.path()));
    }
    children.sort();
    Ok(children)
}

/// An error that says the machine is short of something (descriptors,
/// memory, a disk that failed a read), not that the store changed: what was
/// digested is still right, so the digest is kept and the client asked to
/// retry.
pub fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EMFILE
                | libc::ENFILE
                | libc::ENOMEM
                | libc::EAGAIN
                | libc::EINTR
                | libc::EIO
                | libc::ENOBUFS
        )
    ) || matches!(
        e.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock | io::ErrorKind::OutOfMemory
    )
}

impl ScanError {
    pub fn is_transient(&self) -> bool {
        match self {
            ScanError::Io { source, .. } => is_transient(source),
            ScanError::Unsupported { .. } => false,
        }
    }
}

/// A source that ended before the size its scan gave: an error, never a
/// short read (the stream would end early under a digest it does not match).
fn shorter_than_scanned(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("{} is shorter than when it was scanned", path.display()),
    )
}

fn check_unchanged(path: &Path, now: u64, scanned: u64) -> io::Result<()> {
    if now != scanned {
        return Err(io::Error::other(format!(
            "{} changed size since the layer was scanned ({scanned} -> {now} bytes)",
            path.display()
        )));
    }
    Ok(())
}

fn copy_exact(r: impl Read, n: u64, out: &mut dyn Write, path: &Path) -> io::Result<()> {
    let mut exact = ExactReader {
        inner: r,
        left: n,
        path,
    };
    let mut buf = vec![0u8; READ_CHUNK.min(n as usize).max(1)];
    loop {
        let got = exact.read(&mut buf)?;
        if got == 0 {
            return Ok(());
        }
        out.write_all(&buf[..got])?;
    }
}

/// Passes through only the bytes of the archive that fall in `start..end`.
struct Window<'a> {
    out: &'a mut dyn Write,
    pos: u64,
    start: u64,
    end: u64,
    /// Reused for whole small files.
    small: Vec<u8>,
}

/// Files up to this size are read whole, in one `read` of size + 1 bytes.
const SMALL_FILE: u64 = 64 * 1024;

impl Window<'_> {
    /// The part of `pos..pos+len` inside the window, relative to `pos`.
    fn clip(&self, len: u64) -> (u64, u64) {
        let from = self.start.saturating_sub(self.pos).min(len);
        let to = self.end.saturating_sub(self.pos).min(len);
        (from, to.max(from))
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        let (from, to) = self.clip(bytes.len() as u64);
        self.out.write_all(&bytes[from as usize..to as usize])?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn zeros(&mut self, len: u64) -> io::Result<()> {
        let (from, to) = self.clip(len);
        let zero = [0u8; BLOCK as usize * 2];
        let mut left = to - from;
        while left > 0 {
            let n = left.min(zero.len() as u64) as usize;
            self.out.write_all(&zero[..n])?;
            left -= n as u64;
        }
        self.pos += len;
        Ok(())
    }

    fn file(&mut self, source: &Path, size: u64) -> io::Result<()> {
        let (from, to) = self.clip(size);
        if from == 0 && to == size && size <= SMALL_FILE {
            // One read of size + 1 bytes both reads the file and proves it
            // did not grow, without a stat: a quarter of the syscalls of a
            // layer of many small files.
            let mut f = std::fs::File::open(source)?;
            self.small.resize(size as usize + 1, 0);
            let mut got = 0;
            loop {
                let want = self.small.len() - got;
                let n = f.read(&mut self.small[got..])?;
                got += n;
                // A regular file's read comes up short only at its end.
                if n == 0 || n < want || got > size as usize {
                    break;
                }
            }
            check_unchanged(source, got as u64, size)?;
            self.out.write_all(&self.small[..got])?;
        } else if to > from {
            let mut f = std::fs::File::open(source)?;
            check_unchanged(source, f.metadata()?.len(), size)?;
            if from > 0 {
                f.seek(SeekFrom::Start(from))?;
            }
            copy_exact(&mut f, to - from, self.out, source)?;
        }
        self.pos += size;
        Ok(())
    }
}

#[cfg(test)]
mod golden;
#[cfg(test)]
mod tests;
