//! The members of a compressed image archive, copied out in one pass of
//! its decompressor. A gzip or zstd stream has no index: without a copy,
//! every read of a member decompresses the archive from its first byte
//! up to it. What keeps the copies, and under which budget, is
//! `image/members.rs`'s; this only reads the archive and hashes.

use super::*;

/// One regular member of an archive: where its bytes start in the
/// decompressed stream (as [`LayerSource::ArchiveMember`] counts), and
/// how many there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberSpan {
    pub offset: u64,
    pub size: u64,
}

/// Where the members of an archive go.
pub trait MemberShelf {
    type Out: Write;
    /// A place for this member's bytes, or `None` to pass it by.
    fn place(&mut self, span: MemberSpan) -> io::Result<Option<Self::Out>>;
    /// Every byte of the member went to `out`, and they hash to `digest`.
    fn shelve(&mut self, span: MemberSpan, out: Self::Out, digest: String) -> io::Result<()>;
}

/// Why a pass over an archive stopped.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The archive ends early or does not decompress (the message names
    /// it), or cannot be opened.
    #[error("{0}")]
    Archive(io::Error),
    /// The shelf could not take a member (a full disk).
    #[error("{0}")]
    Shelf(io::Error),
}

/// Decompresses `archive` once, start to end, giving each regular member
/// to `shelf`. What `shelf` was given before an error stands.
pub fn unpack_members(
    archive: &Path,
    packing: Packing,
    shelf: &mut impl MemberShelf,
) -> Result<(), UnpackError> {
    unpack(archive, packing, shelf).map_err(|e| match e {
        Failed::Reading(e) => UnpackError::Archive(e),
        Failed::Shelving(e) => UnpackError::Shelf(e),
    })
}

/// Which side of the pass failed.
enum Failed {
    Reading(io::Error),
    Shelving(io::Error),
}

fn unpack(archive: &Path, packing: Packing, shelf: &mut impl MemberShelf) -> Result<(), Failed> {
    let shelving = Failed::Shelving;
    let named = |e: io::Error| {
        Failed::Reading(io::Error::new(
            e.kind(),
            format!("{} is truncated or damaged: {e}", archive.display()),
        ))
    };
    let file = std::fs::File::open(archive).map_err(Failed::Reading)?;
    let file = io::BufReader::with_capacity(1 << 20, file);
    let stream: Box<dyn Read> = match packing {
        Packing::Plain => Box::new(file),
        Packing::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
        Packing::Zstd => Box::new(zstd_decoder(file).map_err(named)?),
    };
    let mut tar = ::tar::Archive::new(stream);
    for entry in tar.entries().map_err(named)? {
        let mut entry = entry.map_err(named)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let span = MemberSpan {
            offset: entry.raw_file_position(),
            size: entry.size(),
        };
        let Some(out) = shelf.place(span).map_err(shelving)? else {
            continue;
        };
        let mut tee = Tee {
            out,
            hash: HashingWriter::default(),
        };
        // An error writing is the shelf's, reading the archive's.
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let n = entry.read(&mut buf).map_err(named)?;
            if n == 0 {
                break;
            }
            tee.write_all(&buf[..n]).map_err(shelving)?;
        }
        if tee.hash.written != span.size {
            return Err(named(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the member at {} ends after {} of its {} bytes",
                    span.offset, tee.hash.written, span.size
                ),
            )));
        }
        shelf
            .shelve(span, tee.out, tee.hash.finish())
            .map_err(shelving)?;
    }
    // The tar ends before the compressed stream does (record padding, the
    // gzip trailer): read that too, so that gzip's CRC and zstd's checksum
    // are checked. Damage that still inflates is then the archive's error,
    // and not only a member that hashes wrong.
    io::copy(&mut tar.into_inner(), &mut io::sink()).map_err(named)?;
    Ok(())
}

/// Writes to `out` and hashes what it wrote.
struct Tee<W> {
    out: W,
    hash: HashingWriter,
}

impl<W: Write> Write for Tee<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hash.write_all(&buf[..n])?;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Members kept in memory, with the digest each was given.
    #[derive(Default)]
    struct Kept(Vec<(MemberSpan, Vec<u8>, String)>);

    impl MemberShelf for Kept {
        type Out = Vec<u8>;
        fn place(&mut self, _: MemberSpan) -> io::Result<Option<Vec<u8>>> {
            Ok(Some(Vec::new()))
        }
        fn shelve(&mut self, span: MemberSpan, out: Vec<u8>, digest: String) -> io::Result<()> {
            self.0.push((span, out, digest));
            Ok(())
        }
    }

    /// A docker-archive-like tar: members of 0, 1, 511, 512 bytes and
    /// several read chunks, a long name (a PAX record before it), a
    /// directory and a symlink (passed by).
    fn archive() -> Vec<u8> {
        let mut b = ::tar::Builder::new(Vec::new());
        let sizes = [0usize, 1, 511, 512, 3 * READ_CHUNK + 7, 10_000];
        for (i, size) in sizes.iter().enumerate() {
            let data: Vec<u8> = (0..*size).map(|j| (j * 7 + i) as u8).collect();
            let mut h = ::tar::Header::new_gnu();
            h.set_size(*size as u64);
            h.set_mode(0o644);
            let name = if i == 4 {
                format!("{}/layer.tar", "d".repeat(150))
            } else {
                format!("m{i}/layer.tar")
            };
            b.append_data(&mut h, name, &data[..]).unwrap();
        }
        let mut h = ::tar::Header::new_gnu();
        h.set_entry_type(::tar::EntryType::Directory);
        h.set_size(0);
        b.append_data(&mut h, "dir/", io::empty()).unwrap();
        let mut h = ::tar::Header::new_gnu();
        h.set_entry_type(::tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "link", "m1/layer.tar").unwrap();
        b.into_inner().unwrap()
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        // Two gzip members, as `pigz` or a concatenation writes: both read.
        let mut out = Vec::new();
        for half in [&bytes[..bytes.len() / 2], &bytes[bytes.len() / 2..]] {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(half).unwrap();
            out.extend(e.finish().unwrap());
        }
        out
    }

    fn sha(bytes: &[u8]) -> String {
        let mut h = HashingWriter::default();
        h.write_all(bytes).unwrap();
        h.finish()
    }

    /// Every member's bytes, byte for byte as `offset..offset + size` of
    /// the decompressed archive, whatever the packing.
    #[test]
    fn members_of_gzip_and_zstd_archives_are_the_plain_archive_bytes() {
        let plain = archive();
        let dir = tempfile::tempdir().unwrap();
        let packed = [
            (Packing::Plain, plain.clone()),
            (Packing::Gzip, gzip(&plain)),
            (Packing::Zstd, zstd::encode_all(&plain[..], 3).unwrap()),
        ];
        for (packing, bytes) in packed {
            let path = dir.path().join(format!("{packing:?}"));
            std::fs::write(&path, bytes).unwrap();
            let mut kept = Kept::default();
            unpack_members(&path, packing, &mut kept).unwrap();
            assert_eq!(kept.0.len(), 6, "{packing:?}: the regular members");
            for (span, out, digest) in &kept.0 {
                let at = span.offset as usize;
                assert_eq!(out.len() as u64, span.size);
                assert_eq!(&plain[at..at + out.len()], &out[..], "{packing:?} at {at}");
                assert_eq!(digest, &sha(out));
            }
        }
    }

    /// A stream cut short or damaged is an error naming the archive, never
    /// a member short of bytes.
    #[test]
    fn a_truncated_or_damaged_archive_is_an_error() {
        let packed = gzip(&archive());
        let dir = tempfile::tempdir().unwrap();
        let cut = dir.path().join("cut.tar.gz");
        std::fs::write(&cut, &packed[..packed.len() / 3]).unwrap();
        let mut damaged_bytes = packed.clone();
        let middle = damaged_bytes.len() / 4;
        for b in &mut damaged_bytes[middle..middle + 64] {
            *b ^= 0x5a;
        }
        let damaged = dir.path().join("damaged.tar.gz");
        std::fs::write(&damaged, damaged_bytes).unwrap();
        for path in [cut, damaged] {
            let mut kept = Kept::default();
            let e = unpack_members(&path, Packing::Gzip, &mut kept).unwrap_err();
            assert!(matches!(e, UnpackError::Archive(_)), "{e:?}");
            assert!(
                e.to_string().contains(&path.display().to_string())
                    && e.to_string().contains("truncated or damaged"),
                "{e}"
            );
            for (span, out, _) in &kept.0 {
                assert_eq!(out.len() as u64, span.size, "only whole members shelved");
            }
        }
    }

    /// Damage that still inflates (here, the last gzip member's CRC): the
    /// members hash as they hash, and the pass ends in the archive's error.
    #[test]
    fn a_gzip_checksum_that_does_not_match_is_an_error() {
        let mut packed = gzip(&archive());
        let crc = packed.len() - 8;
        packed[crc] ^= 1;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crc.tar.gz");
        std::fs::write(&path, packed).unwrap();
        let mut kept = Kept::default();
        let e = unpack_members(&path, Packing::Gzip, &mut kept).unwrap_err();
        assert!(matches!(e, UnpackError::Archive(_)), "{e:?}");
        assert!(e.to_string().contains("truncated or damaged"), "{e}");
        assert_eq!(kept.0.len(), 6, "every member read before the trailer");
    }

    /// A shelf that cannot take a member (a full disk) stops the pass with
    /// its own error, not the archive's.
    #[test]
    fn a_shelf_that_cannot_write_is_not_a_damaged_archive() {
        struct Full;
        impl MemberShelf for Full {
            type Out = Full;
            fn place(&mut self, _: MemberSpan) -> io::Result<Option<Full>> {
                Ok(Some(Full))
            }
            fn shelve(&mut self, _: MemberSpan, _: Full, _: String) -> io::Result<()> {
                Ok(())
            }
        }
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from_raw_os_error(libc::ENOSPC))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tar.gz");
        std::fs::write(&path, gzip(&archive())).unwrap();
        let e = unpack_members(&path, Packing::Gzip, &mut Full).unwrap_err();
        assert!(matches!(e, UnpackError::Shelf(_)), "{e:?}");
    }
}
