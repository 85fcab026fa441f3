//! Deterministic compression of a layer. Compressed bytes depend on the
//! encoder, not only on the input, so each codec is pinned: the library
//! (locked in Cargo.lock), level and threading are fixed, and the codec's
//! identity string is part of every compressed layer's key, so a change of
//! encoder can never be served under a digest computed by another.

use super::{HashingWriter, LayerKey, LayerSource, LayerTar};
use sha2::{Digest, Sha256};
use std::io::{self, Write};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// flate2's pure-Rust miniz_oxide backend, level 6, gzip header with
    /// mtime 0 and no file name.
    Gzip,
    /// libzstd 1.5.7 (zstd-sys, bundled), level 3, one thread, with a
    /// frame checksum.
    Zstd,
}

impl Codec {
    pub fn parse(name: &str) -> Option<Codec> {
        match name {
            "gzip" => Some(Codec::Gzip),
            "zstd" => Some(Codec::Zstd),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::Gzip => "gzip",
            Codec::Zstd => "zstd",
        }
    }

    fn identity(self) -> &'static str {
        match self {
            Codec::Gzip => "gzip-miniz_oxide-0.9-level6",
            Codec::Zstd => "zstd-1.5.7-level3-single-thread-checksum",
        }
    }

    /// Key of a layer's compressed blob: the encoder's identity and the layer's key.
    pub fn key(self, source: &LayerSource) -> LayerKey {
        let mut h = Sha256::new();
        h.update(self.identity());
        h.update(source.key().0);
        LayerKey(hex::encode(h.finalize()))
    }

    /// Decompress a whole blob (tests check every compressed byte against
    /// the tar it came from).
    #[cfg(test)]
    pub(crate) fn decompress(self, packed: &[u8]) -> Vec<u8> {
        use std::io::Read;
        let mut plain = Vec::new();
        match self {
            Codec::Gzip => flate2::read::GzDecoder::new(packed)
                .read_to_end(&mut plain)
                .unwrap(),
            Codec::Zstd => zstd::stream::read::Decoder::new(packed)
                .unwrap()
                .read_to_end(&mut plain)
                .unwrap(),
        };
        plain
    }

    /// Compress the whole layer into `out`, hashing both sides in one pass.
    pub fn compress(self, tar: &LayerTar, out: &mut dyn Write) -> io::Result<Compressed> {
        let packed_side = Tee(HashingWriter::default(), out);
        let (plain, packed) = match self {
            Codec::Gzip => {
                let encoder =
                    flate2::write::GzEncoder::new(packed_side, flate2::Compression::new(6));
                let mut both = Tee(HashingWriter::default(), encoder);
                tar.write_range(0, tar.size(), &mut both)?;
                let Tee(plain, encoder) = both;
                (plain, encoder.finish()?)
            }
            Codec::Zstd => {
                let mut encoder = zstd::stream::write::Encoder::new(packed_side, 3)?;
                encoder.include_checksum(true)?;
                let mut both = Tee(HashingWriter::default(), encoder);
                tar.write_range(0, tar.size(), &mut both)?;
                let Tee(plain, encoder) = both;
                (plain, encoder.finish()?)
            }
        };
        let Tee(packed, out) = packed;
        out.flush()?;
        let size = packed.written;
        Ok(Compressed {
            diff_id: plain.finish(),
            digest: packed.finish(),
            size,
        })
    }
}

/// Digests of one compression pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compressed {
    /// sha256 of the uncompressed tar: the image config's diff_id.
    pub diff_id: String,
    /// sha256 and size of the compressed stream: the blob.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::layer::{LayerSource, Owner};

    #[test]
    fn compression_is_deterministic_and_decompresses_to_the_tar() {
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
        let mut whole = Vec::new();
        tar.write_range(0, tar.size(), &mut whole).unwrap();
        for codec in [Codec::Gzip, Codec::Zstd] {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let ca = codec.compress(&tar, &mut a).unwrap();
            let cb = codec.compress(&tar, &mut b).unwrap();
            assert_eq!(a, b, "{codec:?} output is deterministic");
            assert_eq!(ca, cb);
            assert_eq!(ca.size, a.len() as u64);
            assert_eq!(ca.diff_id, tar.digest().unwrap());
            assert_eq!(codec.decompress(&a), whole);
            assert!(
                a.len() < whole.len() / 4,
                "{codec:?} compresses: {} of {}",
                a.len(),
                whole.len()
            );
        }
        assert_ne!(Codec::Gzip.key(&src), Codec::Zstd.key(&src));
    }
}
