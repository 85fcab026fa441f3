//! Reading a layer's bytes: the readers behind [`LayerTar::reader`], one
//! per kind of layer, and reads of what the page cache holds.

use super::*;

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
pub(super) struct ZstdReader<R: io::BufRead>(pub(super) zstd::stream::read::Decoder<'static, R>);

impl<R: io::BufRead + Send> Read for ZstdReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R: io::BufRead + Send> LayerRead for ZstdReader<R> {}

/// `pread` of what the page cache holds at `offset`, or `WouldBlock`.
/// A kernel or filesystem without `RWF_NOWAIT` says `EOPNOTSUPP`: that is
/// `WouldBlock` too, so every read takes the blocking path.
pub(super) fn pread_cached(file: &std::fs::File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
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
pub(super) struct GeneratedReader {
    pub(super) tar: Arc<LayerTar>,
    pub(super) pos: u64,
    pub(super) end: u64,
    /// The large file being read: its entry's index and the open file.
    pub(super) open: Option<(usize, std::fs::File)>,
}

impl GeneratedReader {
    /// The large file whose bytes `pos` falls in: its entry's index, its
    /// scanned size, the offset in it, and how many of `want` bytes it has
    /// left; `None` in a header, padding or a small file.
    pub(super) fn large_file_at(&self, want: usize) -> Option<(usize, u64, u64, usize)> {
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
    pub(super) fn source(&self, at: usize) -> &Path {
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
    pub(super) fn read_in_file(&mut self, buf: &mut [u8]) -> Option<io::Result<usize>> {
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
    pub(super) fn advance(&mut self, got: usize, at: usize) -> io::Result<usize> {
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
pub(super) struct ExactReader<R, P> {
    pub(super) inner: R,
    pub(super) left: u64,
    pub(super) path: P,
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
    pub(super) fn took(&mut self, got: usize) -> io::Result<usize> {
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
pub(super) struct PositionedReader {
    pub(super) file: std::fs::File,
    pub(super) pos: u64,
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
