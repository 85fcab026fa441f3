//! Members of gzip and zstd image archives, kept decompressed in the
//! state dir (see [`KeptFiles`]): a GET reads one by offset, as it reads
//! a plain archive's, instead of decompressing the archive from its first
//! byte up to the member on every request.
//!
//! One pass of the decompressor keeps the member asked for and every other
//! member a layer digest names (a pull asks for them next), as far as the
//! budget goes. Each is hashed as it is written, and kept only if its
//! bytes hash to its digest. Whoever serves a kept copy hashes it again
//! whenever its file is not as it was when it last hashed right (after a
//! restart, or a write to it), and discards it if it does not.

use crate::image::kept::{KeptFiles, Shelf};
use crate::image::layer::{
    unpack_members, LayerTar, MemberShelf, MemberSpan, Packing, UnpackError,
};
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub struct MemberCache {
    kept: Arc<KeptFiles>,
    /// One pass over an archive at a time: GETs of its other members wait
    /// for it, and then find theirs kept.
    passes: Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>,
}

/// What a pass over an archive gave for the member asked for.
pub enum Filled {
    /// Its copy, opened: nothing can evict it from under the stream.
    Kept(LayerTar),
    /// It is larger than the budget leaves, or the state dir could not
    /// take it (a full disk): served from the archive.
    NotKept,
}

impl MemberCache {
    pub fn new(kept: Arc<KeptFiles>) -> MemberCache {
        MemberCache {
            kept,
            passes: Mutex::default(),
        }
    }

    /// The kept copy of `digest`, a member of `size` bytes, opened and
    /// marked used. A copy of another size is no copy of it: it goes.
    pub fn open(&self, digest: &str, size: u64) -> Option<LayerTar> {
        let file = self.kept.open_kept(Shelf::Members, digest)?;
        match LayerTar::opened(file, self.kept.path(Shelf::Members, digest)) {
            Ok(tar) if tar.size() == size => Some(tar),
            _ => {
                tracing::warn!(
                    digest,
                    "a kept archive member has the wrong size; discarded"
                );
                self.discard(digest);
                None
            }
        }
    }

    /// A kept copy whose bytes do not hash to its digest.
    pub fn discard(&self, digest: &str) {
        self.kept.discard(Shelf::Members, digest);
    }

    /// Decompresses the archive of `member` (a [`LayerTar::Member`] of a
    /// gzip or zstd archive) once, keeping it as `digest` and every other
    /// member whose digest `known` names. Blocking. An archive that is
    /// short, damaged or changed, or whose member does not hash to
    /// `digest`, is an error and nothing of that member is kept.
    pub fn fill(
        &self,
        digest: &str,
        member: &LayerTar,
        known: &dyn Fn(&str) -> bool,
    ) -> io::Result<Filled> {
        let LayerTar::Member {
            archive,
            offset,
            size,
            packing,
            archive_len,
        } = member
        else {
            return Err(io::Error::other("not an archive member"));
        };
        if *packing == Packing::Plain {
            return Err(io::Error::other(
                "a plain archive's member is read in place",
            ));
        }
        if *size > self.kept.limit() {
            return Ok(Filled::NotKept);
        }
        let pass = self.pass(archive);
        let _one_at_a_time = pass.lock().unwrap_or_else(|p| p.into_inner());
        // The pass another GET just made may have kept it.
        if let Some(tar) = self.open(digest, *size) {
            return Ok(Filled::Kept(tar));
        }
        let now = std::fs::metadata(archive)?.len();
        crate::image::layer::check_unchanged(archive, now, *archive_len)?;
        let started = std::time::Instant::now();
        let asked = MemberSpan {
            offset: *offset,
            size: *size,
        };
        let mut shelf = Pass {
            kept: &self.kept,
            asked,
            digest,
            known,
            room: self.kept.limit().saturating_sub(*size),
            got: None,
            hashed_to: None,
            others: (0, 0),
        };
        let read = unpack_members(archive, *packing, &mut shelf);
        let (others, other_bytes) = shelf.others;
        let file = match (shelf.got, shelf.hashed_to, read) {
            (Some(file), _, Ok(())) => file,
            // Its bytes hashed right before the damage: it is served, and
            // the members after it get the error when asked for.
            (Some(file), _, Err(e)) => {
                tracing::warn!(digest, error = %e, "kept an archive member, then the pass stopped");
                file
            }
            (None, _, Err(UnpackError::Shelf(e))) => {
                tracing::warn!(digest, error = %e, "cannot keep archive members in the state dir; decompressing per GET");
                return Ok(Filled::NotKept);
            }
            (None, _, Err(UnpackError::Archive(e))) => return Err(e),
            (None, Some(other), Ok(())) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the member at {offset} of {} hashes to {other}, not {digest}",
                        archive.display()
                    ),
                ))
            }
            (None, None, Ok(())) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "{} has no member of {size} bytes at {offset}",
                        archive.display()
                    ),
                ))
            }
        };
        tracing::info!(
            archive = %archive.display(),
            digest,
            size,
            others,
            other_bytes,
            ms = started.elapsed().as_millis() as u64,
            "archive members decompressed and kept"
        );
        Ok(Filled::Kept(LayerTar::opened(
            file,
            self.kept.path(Shelf::Members, digest),
        )?))
    }

    fn pass(&self, archive: &Path) -> Arc<Mutex<()>> {
        let mut passes = self.passes.lock().unwrap_or_else(|p| p.into_inner());
        // Passes nobody waits for any more go.
        passes.retain(|_, p| Arc::strong_count(p) > 1);
        passes.entry(archive.to_path_buf()).or_default().clone()
    }
}

/// Where one pass puts the members it keeps.
struct Pass<'a> {
    kept: &'a KeptFiles,
    asked: MemberSpan,
    digest: &'a str,
    known: &'a dyn Fn(&str) -> bool,
    /// What the budget leaves for other members in this pass: none of
    /// them evicts the one asked for.
    room: u64,
    /// The member asked for, kept and opened.
    got: Option<File>,
    /// What it hashed to instead.
    hashed_to: Option<String>,
    /// Other members kept, and their bytes.
    others: (usize, u64),
}

impl MemberShelf for Pass<'_> {
    type Out = BufWriter<tempfile::NamedTempFile>;

    fn place(&mut self, span: MemberSpan) -> io::Result<Option<Self::Out>> {
        if span != self.asked {
            if span.size > self.room {
                return Ok(None);
            }
            self.room -= span.size;
        }
        Ok(Some(BufWriter::with_capacity(
            1 << 20,
            self.kept.temp(Shelf::Members)?,
        )))
    }

    fn shelve(&mut self, span: MemberSpan, out: Self::Out, digest: String) -> io::Result<()> {
        let written = out.into_inner().map_err(|e| e.into_error())?;
        if span == self.asked {
            if digest == self.digest {
                self.got = Some(
                    self.kept
                        .keep(Shelf::Members, &digest, written, span.size)?,
                );
            } else {
                self.hashed_to = Some(digest);
            }
        } else if (self.known)(&digest) && self.kept.open_kept(Shelf::Members, &digest).is_none() {
            self.kept
                .keep(Shelf::Members, &digest, written, span.size)?;
            self.others.0 += 1;
            self.others.1 += span.size;
        }
        // A temporary file not kept is removed as it drops.
        Ok(())
    }
}
