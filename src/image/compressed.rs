//! Compressed layers, computed once and kept in the state dir (never in the
//! Nix store) under a size bound, least recently used first out. An evicted
//! blob is compressed again on its next request: the encoder is pinned, so
//! the bytes (and digest) come out the same.

use crate::image::layer::compress::{Codec, Compressed};
use crate::image::layer::LayerTar;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

pub struct CompressedCache {
    pub codec: Codec,
    dir: PathBuf,
    max_bytes: u64,
    /// digest -> (size, last use)
    entries: Mutex<HashMap<String, (u64, Instant)>>,
}

impl CompressedCache {
    pub fn open(state_dir: &Path, codec: Codec, max_bytes: u64) -> io::Result<CompressedCache> {
        let dir = state_dir.join(codec.name());
        std::fs::create_dir_all(&dir)?;
        let mut entries = HashMap::new();
        let now = Instant::now();
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(digest) = crate::vocab::Digest::from_hex(&name) {
                // Older files count as used longer ago.
                let age = e.metadata()?.modified()?.elapsed().unwrap_or_default();
                entries.insert(
                    digest.into(),
                    (e.metadata()?.len(), now.checked_sub(age).unwrap_or(now)),
                );
            } else {
                let _ = std::fs::remove_file(e.path()); // a temp file from a crash
            }
        }
        let cache = CompressedCache {
            codec,
            dir,
            max_bytes,
            entries: Mutex::new(entries),
        };
        cache.evict(None);
        Ok(cache)
    }

    pub fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(digest.trim_start_matches("sha256:"))
    }

    /// The cached blob, opened, marking it used. Opened under the lock that
    /// eviction takes: once open, an eviction cannot cut a stream short.
    pub fn open_blob(&self, digest: &str) -> Option<File> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let e = entries.get_mut(digest)?;
        e.1 = Instant::now();
        File::open(self.path(digest)).ok()
    }

    /// Compress the layer into the cache (blocking); returns its digests and
    /// the blob, opened before anything could evict it.
    pub fn insert(&self, tar: &LayerTar) -> io::Result<(Compressed, File)> {
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        let c = {
            let mut out = io::BufWriter::with_capacity(256 * 1024, tmp.as_file_mut());
            let c = self.codec.compress(tar, &mut out)?;
            out.flush()?;
            c
        };
        let path = self.path(&c.digest);
        tmp.persist(&path).map_err(|e| e.error)?;
        let file = File::open(&path)?;
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(c.digest.clone(), (c.size, Instant::now()));
        self.evict(Some(&c.digest));
        Ok((c, file))
    }

    /// Bytes of compressed blobs kept now.
    pub fn bytes(&self) -> u64 {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.values().map(|(s, _)| s).sum()
    }

    /// Evict least recently used blobs down to `limit` bytes (below the
    /// configured bound: the state dir as a whole is over its cap).
    pub fn shrink_to(&self, limit: u64) {
        self.evict_to(limit.min(self.max_bytes), None)
    }

    /// Evict down to the bound; `keep` (just written, about to be served) stays.
    fn evict(&self, keep: Option<&str>) {
        self.evict_to(self.max_bytes, keep)
    }

    fn evict_to(&self, limit: u64, keep: Option<&str>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut total: u64 = entries.values().map(|(s, _)| s).sum();
        if total <= limit {
            return;
        }
        let mut by_age: Vec<(Instant, String, u64)> = entries
            .iter()
            .map(|(d, (s, t))| (*t, d.clone(), *s))
            .collect();
        by_age.sort();
        for (_, digest, size) in by_age {
            if Some(digest.as_str()) == keep {
                continue;
            }
            if total <= limit {
                break;
            }
            let _ = std::fs::remove_file(self.path(&digest));
            entries.remove(&digest);
            total -= size;
            tracing::info!(%digest, size, "evicted a compressed layer");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::layer::{LayerSource, Owner};

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
        let cache = CompressedCache::open(t.path(), Codec::Gzip, cap).unwrap();
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
        let cache = CompressedCache::open(t.path(), Codec::Zstd, 1).unwrap();
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
        let reopened = CompressedCache::open(t.path(), Codec::Zstd, u64::MAX).unwrap();
        assert!(reopened.open_blob(&ca.digest).is_some());
    }
}
