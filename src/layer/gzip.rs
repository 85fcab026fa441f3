//! Deterministic gzip of a layer. The bytes depend on the encoder, so it is
//! pinned: flate2's pure-Rust miniz_oxide backend (locked in Cargo.lock),
//! level 6, single-threaded, a header with mtime 0 and no file name. The
//! identity string is part of every compressed layer's key: a change of
//! encoder can never be served under a digest computed by another.

use super::{HashingWriter, LayerKey, LayerSource, LayerTar};
use flate2::write::GzEncoder;
use flate2::Compression;
use sha2::{Digest, Sha256};
use std::io::{self, Write};

pub const GZIP_ENCODER: &str = "gzip-miniz_oxide-0.9-level6";

/// Key of a layer's gzip blob: the encoder's identity and the layer's key.
pub fn gzip_key(source: &LayerSource) -> LayerKey {
    let mut h = Sha256::new();
    h.update(GZIP_ENCODER);
    h.update(source.key().0);
    LayerKey(hex::encode(h.finalize()))
}

/// Digests of one compression pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compressed {
    /// sha256 of the uncompressed tar: the image config's diff_id.
    pub diff_id: String,
    /// sha256 and size of the gzip stream: the blob.
    pub digest: String,
    pub size: u64,
}

/// Writes to two writers.
struct Tee<A, B>(A, B);

impl<A: Write, B: Write> Write for Tee<A, B> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_all(buf)?;
        self.1.write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()?;
        self.1.flush()
    }
}

/// Compress the whole layer into `out`, hashing both sides in the same pass.
pub fn gzip(tar: &LayerTar, out: &mut dyn Write) -> io::Result<Compressed> {
    let compressed_side = Tee(HashingWriter::default(), out);
    let encoder = GzEncoder::new(compressed_side, Compression::new(6));
    let mut both = Tee(HashingWriter::default(), encoder);
    tar.write_range(0, tar.size(), &mut both)?;
    let Tee(plain, encoder) = both;
    let Tee(packed, out) = encoder.finish()?;
    out.flush()?;
    let size = packed.written;
    Ok(Compressed {
        diff_id: plain.finish(),
        digest: packed.finish(),
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{LayerSource, Owner};
    use std::io::Read;

    #[test]
    fn gzip_is_deterministic_and_decompresses_to_the_tar() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("pkg");
        std::fs::create_dir(&p).unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 7 + i / 1000) as u8).collect();
        std::fs::write(p.join("data"), &data).unwrap();
        let src = LayerSource::StorePaths {
            paths: vec![p],
            mtime: 1,
            owner: Owner::default(),
            perms: vec![],
        };
        let tar = LayerTar::scan(&src).unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let ca = gzip(&tar, &mut a).unwrap();
        let cb = gzip(&tar, &mut b).unwrap();
        assert_eq!(a, b);
        assert_eq!(ca, cb);
        assert_eq!(ca.size, a.len() as u64);
        assert_eq!(ca.diff_id, tar.digest().unwrap());
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&a[..])
            .read_to_end(&mut plain)
            .unwrap();
        let mut whole = Vec::new();
        tar.write_range(0, tar.size(), &mut whole).unwrap();
        assert_eq!(plain, whole);
        assert!(
            a.len() < whole.len() / 4,
            "compresses: {} of {}",
            a.len(),
            whole.len()
        );
    }
}
