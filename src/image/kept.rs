//! Files of layer bytes kept in the state dir (never in the Nix store)
//! under one byte budget, least recently used first out: compressed
//! layers (`gzip/`, `zstd/`) and decompressed members of compressed image
//! archives (`members/`). Each file is named by the digest of its bytes
//! and made from the store again when asked for after it went, so every
//! one can go at any time. A file is written under a temporary name and
//! renamed whole: a name is never half written.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Which kind of file, and the directory it is kept in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shelf {
    Gzip,
    Zstd,
    /// Members of gzip or zstd image archives, decompressed.
    Members,
}

impl Shelf {
    const ALL: [Shelf; 3] = [Shelf::Gzip, Shelf::Zstd, Shelf::Members];

    fn dir(self) -> &'static str {
        match self {
            Shelf::Gzip => "gzip",
            Shelf::Zstd => "zstd",
            Shelf::Members => "members",
        }
    }
}

pub struct KeptFiles {
    state_dir: PathBuf,
    /// `--compressed-cache-mib`.
    max_bytes: u64,
    /// With `--max-state-mib`: what the rest of the state dir leaves these
    /// files, as the last sweep measured it.
    room: AtomicU64,
    /// (shelf, digest) -> (size, last use)
    entries: Mutex<HashMap<(Shelf, String), (u64, Instant)>>,
}

impl KeptFiles {
    /// The files already kept (a file's mtime counts as its last use),
    /// without what a crash left half written.
    pub fn open(state_dir: &Path, max_bytes: u64) -> io::Result<KeptFiles> {
        let mut entries = HashMap::new();
        let now = Instant::now();
        for shelf in Shelf::ALL {
            let dir = state_dir.join(shelf.dir());
            std::fs::create_dir_all(&dir)?;
            for e in std::fs::read_dir(&dir)? {
                let e = e?;
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(digest) = crate::vocab::Digest::from_hex(&name) else {
                    let _ = std::fs::remove_file(e.path()); // a temp file from a crash
                    continue;
                };
                let meta = e.metadata()?;
                let age = meta.modified()?.elapsed().unwrap_or_default();
                entries.insert(
                    (shelf, digest.into()),
                    (meta.len(), now.checked_sub(age).unwrap_or(now)),
                );
            }
        }
        let kept = KeptFiles {
            state_dir: state_dir.to_path_buf(),
            max_bytes,
            room: AtomicU64::new(u64::MAX),
            entries: Mutex::new(entries),
        };
        kept.evict(None);
        Ok(kept)
    }

    pub fn path(&self, shelf: Shelf, digest: &str) -> PathBuf {
        self.state_dir
            .join(shelf.dir())
            .join(digest.trim_start_matches("sha256:"))
    }

    /// Bytes the files may take now: the budget, or less if the state dir
    /// leaves them less.
    pub fn limit(&self) -> u64 {
        self.max_bytes.min(self.room.load(Ordering::Relaxed))
    }

    /// A file to write one into, renamed by [`KeptFiles::keep`] once whole.
    pub fn temp(&self, shelf: Shelf) -> io::Result<tempfile::NamedTempFile> {
        tempfile::NamedTempFile::new_in(self.state_dir.join(shelf.dir()))
    }

    /// The kept file, opened, marking it used. Opened under the lock that
    /// eviction takes: once open, an eviction cannot cut a stream short.
    pub fn open_kept(&self, shelf: Shelf, digest: &str) -> Option<File> {
        let mut entries = self.lock();
        let e = entries.get_mut(&(shelf, digest.to_string()))?;
        e.1 = Instant::now();
        File::open(self.path(shelf, digest)).ok()
    }

    /// `written` holds `digest`'s `size` bytes: it takes that name, and the
    /// least recently used others go to fit. Returns it opened, before
    /// anything could evict it.
    pub fn keep(
        &self,
        shelf: Shelf,
        digest: &str,
        written: tempfile::NamedTempFile,
        size: u64,
    ) -> io::Result<File> {
        let path = self.path(shelf, digest);
        written.persist(&path).map_err(|e| e.error)?;
        let file = File::open(&path)?;
        let key = (shelf, digest.to_string());
        self.lock().insert(key.clone(), (size, Instant::now()));
        self.evict(Some(&key));
        Ok(file)
    }

    /// A kept file whose bytes are wrong: it goes.
    pub fn discard(&self, shelf: Shelf, digest: &str) {
        self.lock().remove(&(shelf, digest.to_string()));
        let _ = std::fs::remove_file(self.path(shelf, digest));
    }

    /// Bytes of every file kept now.
    pub fn bytes(&self) -> u64 {
        self.lock().values().map(|(s, _)| s).sum()
    }

    /// The state dir leaves these files `room` bytes (`--max-state-mib`
    /// less the rest of it): they shrink to fit, and stay within it.
    pub fn shrink_to(&self, room: u64) {
        self.room.store(room, Ordering::Relaxed);
        self.evict(None);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(Shelf, String), (u64, Instant)>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Evict least recently used files down to the limit; `keep` (just
    /// written, about to be served) stays.
    fn evict(&self, keep: Option<&(Shelf, String)>) {
        let limit = self.limit();
        let mut entries = self.lock();
        let mut total: u64 = entries.values().map(|(s, _)| s).sum();
        if total <= limit {
            return;
        }
        let mut by_age: Vec<(Instant, (Shelf, String), u64)> = entries
            .iter()
            .map(|(k, (s, t))| (*t, k.clone(), *s))
            .collect();
        by_age.sort_by_key(|(t, _, _)| *t);
        for (_, key, size) in by_age {
            if total <= limit {
                break;
            }
            if Some(&key) == keep {
                continue;
            }
            let _ = std::fs::remove_file(self.path(key.0, &key.1));
            entries.remove(&key);
            total -= size;
            tracing::info!(digest = %key.1, size, kind = key.0.dir(), "evicted a kept layer file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn put(kept: &KeptFiles, shelf: Shelf, digest: &str, size: usize) -> File {
        let mut t = kept.temp(shelf).unwrap();
        t.write_all(&vec![1u8; size]).unwrap();
        kept.keep(shelf, digest, t, size as u64).unwrap()
    }

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    /// Compressed layers and archive members share one budget, least
    /// recently used out first whichever shelf it is on.
    #[test]
    fn shelves_share_one_budget_least_recently_used_first() {
        let t = tempfile::tempdir().unwrap();
        let kept = KeptFiles::open(t.path(), 250).unwrap();
        put(&kept, Shelf::Gzip, &d('a'), 100);
        std::thread::sleep(std::time::Duration::from_millis(2));
        put(&kept, Shelf::Members, &d('b'), 100);
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(kept.open_kept(Shelf::Gzip, &d('a')).is_some(), "a used");
        put(&kept, Shelf::Members, &d('c'), 100);
        assert!(kept.open_kept(Shelf::Members, &d('b')).is_none(), "b went");
        assert!(!kept.path(Shelf::Members, &d('b')).exists());
        assert!(kept.open_kept(Shelf::Gzip, &d('a')).is_some());
        assert_eq!(kept.bytes(), 200);
        // The state dir leaves them less: they shrink, and stay within it.
        kept.shrink_to(150);
        assert_eq!(kept.bytes(), 100);
        let mut opened = put(&kept, Shelf::Zstd, &d('e'), 120);
        assert_eq!(kept.bytes(), 120, "the one just written stays");
        // A file opened before it went reads whole.
        put(&kept, Shelf::Members, &d('f'), 40);
        assert!(kept.open_kept(Shelf::Zstd, &d('e')).is_none());
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut opened, &mut back).unwrap();
        assert_eq!(back.len(), 120);
    }

    /// A restart finds what is kept, and removes what a crash left half
    /// written: no name is ever half written.
    #[test]
    fn a_restart_keeps_whole_files_and_drops_temporary_ones() {
        let t = tempfile::tempdir().unwrap();
        let kept = KeptFiles::open(t.path(), u64::MAX).unwrap();
        put(&kept, Shelf::Members, &d('a'), 10);
        let half = kept.temp(Shelf::Members).unwrap();
        let (_, half) = half.keep().unwrap();
        drop(kept);
        let kept = KeptFiles::open(t.path(), u64::MAX).unwrap();
        assert!(kept.open_kept(Shelf::Members, &d('a')).is_some());
        assert!(!half.exists());
        assert_eq!(kept.bytes(), 10);
        kept.discard(Shelf::Members, &d('a'));
        assert_eq!(kept.bytes(), 0);
        assert!(!kept.path(Shelf::Members, &d('a')).exists());
    }
}
