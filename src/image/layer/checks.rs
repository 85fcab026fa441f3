//! Rules every reader follows: which errors are transient, a file
//! that changed since its scan, exact copies, the window of a range.

use super::*;

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
pub(super) fn shorter_than_scanned(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("{} is shorter than when it was scanned", path.display()),
    )
}

pub fn check_unchanged(path: &Path, now: u64, scanned: u64) -> io::Result<()> {
    if now != scanned {
        return Err(io::Error::other(format!(
            "{} changed size since the layer was scanned ({scanned} -> {now} bytes)",
            path.display()
        )));
    }
    Ok(())
}

pub(super) fn copy_exact(r: impl Read, n: u64, out: &mut dyn Write, path: &Path) -> io::Result<()> {
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
pub(super) struct Window<'a> {
    pub(super) out: &'a mut dyn Write,
    pub(super) pos: u64,
    pub(super) start: u64,
    pub(super) end: u64,
    /// Reused for whole small files.
    pub(super) small: Vec<u8>,
}

/// Files up to this size are read whole, in one `read` of size + 1 bytes.
pub(super) const SMALL_FILE: u64 = 64 * 1024;

impl Window<'_> {
    /// The part of `pos..pos+len` inside the window, relative to `pos`.
    pub(super) fn clip(&self, len: u64) -> (u64, u64) {
        let from = self.start.saturating_sub(self.pos).min(len);
        let to = self.end.saturating_sub(self.pos).min(len);
        (from, to.max(from))
    }

    pub(super) fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        let (from, to) = self.clip(bytes.len() as u64);
        self.out.write_all(&bytes[from as usize..to as usize])?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    pub(super) fn zeros(&mut self, len: u64) -> io::Result<()> {
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

    pub(super) fn file(&mut self, source: &Path, size: u64) -> io::Result<()> {
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
