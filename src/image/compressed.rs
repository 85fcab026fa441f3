//! Compressed layers, computed once and kept in the state dir (see
//! [`KeptFiles`]). An evicted blob is compressed again on its next
//! request: the encoder is pinned, so the bytes (and digest) come out the
//! same.

use crate::image::kept::{KeptFiles, Shelf};
use crate::image::layer::compress::{Codec, Compressed};
use crate::image::layer::LayerTar;
use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;

pub struct CompressedCache {
    pub codec: Codec,
    kept: Arc<KeptFiles>,
}

impl CompressedCache {
    pub fn new(codec: Codec, kept: Arc<KeptFiles>) -> CompressedCache {
        CompressedCache { codec, kept }
    }

    fn shelf(&self) -> Shelf {
        match self.codec {
            Codec::Gzip => Shelf::Gzip,
            Codec::Zstd => Shelf::Zstd,
        }
    }

    pub fn path(&self, digest: &str) -> PathBuf {
        self.kept.path(self.shelf(), digest)
    }

    /// The cached blob, opened, marking it used; eviction cannot cut a
    /// stream of it short.
    pub fn open_blob(&self, digest: &str) -> Option<File> {
        self.kept.open_kept(self.shelf(), digest)
    }

    /// Compress the layer into the cache (blocking); returns its digests and
    /// the blob, opened before anything could evict it.
    pub fn insert(&self, tar: &LayerTar) -> io::Result<(Compressed, File)> {
        let mut tmp = self.kept.temp(self.shelf())?;
        let c = {
            let mut out = io::BufWriter::with_capacity(256 * 1024, tmp.as_file_mut());
            let c = self.codec.compress(tar, &mut out)?;
            out.flush()?;
            c
        };
        let file = self.kept.keep(self.shelf(), &c.digest, tmp, c.size)?;
        Ok((c, file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::layer::{LayerSource, Owner};
    use std::path::Path;

    fn open(dir: &Path, codec: Codec, max_bytes: u64) -> CompressedCache {
        CompressedCache::new(codec, Arc::new(KeptFiles::open(dir, max_bytes).unwrap()))
    }

    fn layer(dir: &Path, name: &str, bytes: usize) -> LayerTar {
        let p = dir.join(name);
        std::fs::create_dir(&p).unwrap();
        let data: Vec<u8> = (0..bytes).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(p.join("f"), data).unwrap();
        LayerTar::scan(&LayerSource::StorePaths {
            paths: vec![p],
            mtime: 1,
            owner: Owner::default(),
            perms: vec![],
        })
        .unwrap()
    }

    /// Room for two blobs: inserting a third evicts the one least recently
    /// *used*: a read moves a blob up. (A keep-the-newest or first-in,
    /// first-out policy would evict `a` here.)
    #[test]
    fn a_read_moves_a_blob_up_the_eviction_order() {
        let t = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        let layers = [
            layer(src.path(), "a", 100_000),
            layer(src.path(), "b", 100_000),
            layer(src.path(), "c", 100_000),
        ];
        let size = |l: &LayerTar| Codec::Gzip.compress(l, &mut io::sink()).unwrap().size;
        let sizes: Vec<u64> = layers.iter().map(size).collect();
        let cap = sizes.iter().sum::<u64>() - 1;
        let cache = open(t.path(), Codec::Gzip, cap);
        let (ca, _) = cache.insert(&layers[0]).unwrap();
        let (cb, _) = cache.insert(&layers[1]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(cache.open_blob(&ca.digest).is_some(), "a read of a");
        let (cc, _) = cache.insert(&layers[2]).unwrap();
        assert!(
            cache.open_blob(&cb.digest).is_none(),
            "b, least recently used, went"
        );
        assert!(
            cache.open_blob(&ca.digest).is_some(),
            "a, read after b was written, stayed"
        );
        assert!(cache.open_blob(&cc.digest).is_some());
        assert!(!cache.path(&cb.digest).exists(), "b's file is gone too");
    }

    #[test]
    fn least_recently_used_goes_first_and_comes_back_identical() {
        let t = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        let (a, b) = (
            layer(src.path(), "a", 100_000),
            layer(src.path(), "b", 100_000),
        );
        // Room for one blob only.
        let cache = open(t.path(), Codec::Zstd, 1);
        let (ca, mut opened_a) = cache.insert(&a).unwrap();
        let first = std::fs::read(cache.path(&ca.digest)).unwrap();
        let (cb, _) = cache.insert(&b).unwrap();
        assert!(cache.open_blob(&ca.digest).is_none(), "a was evicted");
        assert!(cache.open_blob(&cb.digest).is_some());
        // A blob opened before its eviction still reads whole.
        let mut read_back = Vec::new();
        std::io::Read::read_to_end(&mut opened_a, &mut read_back).unwrap();
        assert_eq!(read_back, first);
        // Recompressed after eviction: the same bytes and digest.
        assert_eq!(cache.insert(&a).unwrap().0, ca);
        assert_eq!(std::fs::read(cache.path(&ca.digest)).unwrap(), first);
        // A restart finds what is on disk.
        drop(cache);
        let reopened = open(t.path(), Codec::Zstd, u64::MAX);
        assert!(reopened.open_blob(&ca.digest).is_some());
    }
}
