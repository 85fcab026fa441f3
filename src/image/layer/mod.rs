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

mod checks;
pub mod compress;
mod members;
mod read;
mod scan;
mod source;
mod tar;
pub mod tree;

pub use checks::*;
pub use members::*;
pub use read::*;
use scan::*;
pub use source::*;

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

#[derive(Debug, Clone, PartialEq, Eq)]
enum EntryKind {
    Dir,
    File { source: PathBuf, size: u64 },
    Symlink { target: Vec<u8> },
}

/// One archive member. Its metadata lives in the rendered header, and
/// again in [`Meta`] for a tree made of the layer (see [`tree`]).
#[derive(Debug, Clone)]
pub struct Entry {
    kind: EntryKind,
    /// Header blocks (PAX + ustar) rendered once during the scan.
    header: Vec<u8>,
    meta: Meta,
}

/// What the header says of an entry, as a tree made of the layer must
/// show it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Meta {
    /// The member's name without its trailing slash (`/nix/store/...`).
    path: Box<[u8]>,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
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

    /// A file already open, as a layer of its bytes (see
    /// [`LayerTar::Opened`]).
    pub fn opened(file: std::fs::File, path: PathBuf) -> io::Result<LayerTar> {
        let size = file.metadata()?.len();
        Ok(LayerTar::Opened { file, path, size })
    }

    /// A member of a gzip or zstd archive: read from the archive, only by
    /// decompressing it from its start.
    pub fn is_compressed_member(&self) -> bool {
        matches!(self, LayerTar::Member { packing, .. } if *packing != Packing::Plain)
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
        let mut add = |m: std::fs::Metadata| hash_stat(&mut h, &m, true);
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

/// sha256 over everything written to it.
#[derive(Default)]
pub struct HashingWriter {
    hasher: Sha256,
    pub written: u64,
}

/// Device, inode, size and mtime of a file, hashed into `h`, and its
/// ctime too for an [`Identity`] (a [`tree::Fingerprint`] leaves it out:
/// a hard link moves it).
fn hash_stat(h: &mut Sha256, m: &std::fs::Metadata, ctime: bool) {
    for v in [
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime() as u64,
        m.mtime_nsec() as u64,
    ] {
        h.update(v.to_le_bytes());
    }
    if ctime {
        h.update((m.ctime() as u64).to_le_bytes());
        h.update((m.ctime_nsec() as u64).to_le_bytes());
    }
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

#[cfg(test)]
mod golden;
#[cfg(test)]
mod tests;
