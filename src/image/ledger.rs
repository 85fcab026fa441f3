//! What this registry has advertised, in memory (moka) and in the state dir:
//! layer key -> digest, digest -> layer source, and the config and manifest
//! JSON by digest. A restarted server or a second replica sharing the state
//! dir answers for any digest it served before without rebuilding.
//!
//! On disk: `layers.jsonl` (append-only; `{"drop":digest}` lines retract a
//! digest whose bytes no longer match) and `json/<hex>` (written atomically).

use crate::image::layer::compress::Codec;
use crate::image::layer::{LayerKey, LayerSource};
use crate::image::manifest::{JsonBlob, LayerDigest, OCI_CONFIG};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Enough for every layer of thousands of images; an entry is a few hundred bytes.
const MAX_LAYERS: u64 = 1_000_000;

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Line {
    Layer {
        key: LayerKey,
        digest: String,
        size: u64,
        source: LayerSource,
        /// Present for a compressed blob: the uncompressed tar's digest.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        diff_id: Option<String>,
        /// Present for a blob that came compressed (an archive member).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        packed: Option<Codec>,
    },
    Drop {
        drop: String,
    },
}

/// What a layer digest stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedLayer {
    pub key: LayerKey,
    pub source: LayerSource,
    pub size: u64,
    /// `Some` for a compressed blob (the uncompressed tar's digest).
    pub diff_id: Option<String>,
    /// `Some` for a blob that came compressed and is served as it is.
    pub packed: Option<Codec>,
}

pub struct DigestIndex {
    by_key: moka::sync::Cache<LayerKey, LayerDigest>,
    by_digest: moka::sync::Cache<String, IndexedLayer>,
    json: moka::sync::Cache<String, Arc<JsonBlob>>,
    log: Mutex<std::fs::File>,
    log_path: PathBuf,
    json_dir: PathBuf,
    /// JSON files (and GC roots) whose mtime was set to "served now"
    /// within the hour: retention reads mtimes, and once an hour is enough.
    touched: moka::sync::Cache<PathBuf, ()>,
}

/// How often a served file's mtime is brought up to date at most.
const TOUCH_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);
/// Bytes of JSON documents held in memory (they are on disk too).
const JSON_CACHE_BYTES: u64 = 64 * 1024 * 1024;

impl DigestIndex {
    pub fn open(state_dir: &Path) -> std::io::Result<DigestIndex> {
        let json_dir = state_dir.join("json");
        std::fs::create_dir_all(&json_dir)?;
        let log_path = state_dir.join("layers.jsonl");
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&log_path)?;
        // Finish a line torn by a crash, so the next record starts clean.
        let len = log.metadata()?.len();
        if len > 0 {
            use std::io::{Read, Seek, SeekFrom};
            let mut last = [0u8];
            log.seek(SeekFrom::Start(len - 1))?;
            log.read_exact(&mut last)?;
            if last[0] != b'\n' {
                log.write_all(b"\n")?;
            }
        }
        let index = DigestIndex {
            by_key: moka::sync::Cache::new(MAX_LAYERS),
            by_digest: moka::sync::Cache::new(MAX_LAYERS),
            json: moka::sync::Cache::builder()
                .weigher(|_, b: &Arc<JsonBlob>| {
                    u32::try_from(b.bytes.len() + 200).unwrap_or(u32::MAX)
                })
                .max_capacity(JSON_CACHE_BYTES)
                .build(),
            log: Mutex::new(log),
            log_path: log_path.clone(),
            json_dir,
            touched: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(TOUCH_EVERY)
                .build(),
        };
        let mut loaded = 0usize;
        for line in std::io::BufReader::new(std::fs::File::open(&log_path)?).lines() {
            // A torn last line (crash mid-write) is skipped, not fatal.
            match serde_json::from_str::<Line>(&line?) {
                Ok(Line::Layer {
                    key,
                    digest,
                    size,
                    source,
                    diff_id,
                    packed,
                }) => {
                    let d = LayerDigest {
                        digest: digest.clone(),
                        size,
                        diff_id: diff_id.clone(),
                        packed,
                    };
                    index.by_key.insert(key.clone(), d);
                    index.by_digest.insert(
                        digest,
                        IndexedLayer {
                            key,
                            source,
                            size,
                            diff_id,
                            packed,
                        },
                    );
                    loaded += 1;
                }
                Ok(Line::Drop { drop }) => {
                    index.remove(&drop);
                }
                Err(e) => tracing::warn!(error = %e, "skipping unreadable line in layers.jsonl"),
            }
        }
        tracing::info!(layers = loaded, "digest index loaded");
        Ok(index)
    }

    pub fn layer_digest(&self, key: &LayerKey) -> Option<LayerDigest> {
        self.by_key.get(key)
    }

    pub fn layer(&self, digest: &str) -> Option<IndexedLayer> {
        self.by_digest.get(digest)
    }

    /// `key` is the source's key, or its codec's key for a compressed blob.
    pub fn record_layer(
        &self,
        key: LayerKey,
        source: &LayerSource,
        d: &LayerDigest,
    ) -> std::io::Result<()> {
        self.by_key.insert(key.clone(), d.clone());
        let indexed = IndexedLayer {
            key: key.clone(),
            source: source.clone(),
            size: d.size,
            diff_id: d.diff_id.clone(),
            packed: d.packed,
        };
        self.by_digest.insert(d.digest.clone(), indexed);
        let line = Line::Layer {
            key,
            digest: d.digest.clone(),
            size: d.size,
            source: source.clone(),
            diff_id: d.diff_id.clone(),
            packed: d.packed,
        };
        self.append(&line)
    }

    /// The bytes behind `digest` changed (the store was altered): never
    /// advertise it again until a new digest pass vouches for it.
    /// Returns the key the digest was recorded under, if any.
    pub fn forget_layer(&self, digest: &str) -> Option<LayerKey> {
        let key = self.remove(digest);
        let drop = Line::Drop {
            drop: digest.to_string(),
        };
        if let Err(e) = self.append(&drop) {
            tracing::error!(error = %e, "cannot record a dropped digest");
        }
        key
    }

    fn remove(&self, digest: &str) -> Option<LayerKey> {
        let layer = self.by_digest.remove(digest)?;
        self.by_key.invalidate(&layer.key);
        Some(layer.key)
    }

    fn append(&self, line: &Line) -> std::io::Result<()> {
        let mut bytes = serde_json::to_vec(line).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        // One write per line: O_APPEND keeps lines whole between replicas.
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let _shared = FileLock::take(&self.log_path)?;
        self.follow_compaction(&mut log)?;
        log.write_all(&bytes)
    }

    /// Another replica (or this one) may have replaced the file by a
    /// compacted copy: append to the file at the path, not to the old one.
    fn follow_compaction(&self, log: &mut std::fs::File) -> std::io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let at_path = std::fs::metadata(&self.log_path)?;
        let ours = log.metadata()?;
        if (at_path.dev(), at_path.ino()) != (ours.dev(), ours.ino()) {
            *log = std::fs::OpenOptions::new()
                .append(true)
                .open(&self.log_path)?;
        }
        Ok(())
    }

    pub fn put_json(&self, blob: &JsonBlob) -> std::io::Result<()> {
        let path = self.json_path(&blob.digest);
        if !path.exists() {
            let mut tmp = tempfile::NamedTempFile::new_in(&self.json_dir)?;
            tmp.write_all(&blob.bytes)?;
            tmp.persist(&path).map_err(|e| e.error)?;
        }
        self.json
            .insert(blob.digest.clone(), Arc::new(blob.clone()));
        Ok(())
    }

    /// A manifest or config by digest; marks it (and the GC root of its
    /// image) served now, for retention.
    pub fn get_json(&self, digest: &str) -> Option<Arc<JsonBlob>> {
        if let Some(b) = self.json.get(digest) {
            self.served(digest);
            return Some(b);
        }
        let bytes = std::fs::read(self.json_path(digest)).ok()?;
        // Manifests carry their own mediaType; a config blob does not.
        let media_type = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| {
                v.get("mediaType")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| OCI_CONFIG.to_string());
        let blob = Arc::new(JsonBlob {
            digest: digest.to_string(),
            media_type,
            bytes: Bytes::from(bytes),
        });
        self.json.insert(digest.to_string(), blob.clone());
        self.served(digest);
        Some(blob)
    }

    /// Remember which GC root keeps the image of these documents alive, so
    /// that a pull by digest keeps that root too.
    pub fn link_root(&self, digests: &[&str], root: &Path) -> std::io::Result<()> {
        for d in digests {
            let path = self.json_path(d).with_extension("root");
            let mut tmp = tempfile::NamedTempFile::new_in(&self.json_dir)?;
            tmp.write_all(root.as_os_str().as_encoded_bytes())?;
            tmp.persist(&path).map_err(|e| e.error)?;
        }
        Ok(())
    }

    /// Set the mtime of a document, its `.root` note and the GC root it
    /// names to now (at most once an hour each): what `--keep-roots` reads.
    pub fn served(&self, digest: &str) {
        let path = self.json_path(digest);
        if self.touched.contains_key(&path) {
            return;
        }
        self.touched.insert(path.clone(), ());
        let note = path.with_extension("root");
        let root = std::fs::read(&note)
            .ok()
            .map(|b| PathBuf::from(std::ffi::OsString::from_vec(b)));
        let family = root.as_deref().map(root_family).unwrap_or_default();
        for p in [path, note].into_iter().chain(family) {
            touch(&p);
        }
    }

    /// Forget a document whose file retention removed.
    pub fn forget_json(&self, digest: &str) {
        self.json.invalidate(digest);
    }

    pub fn json_dir(&self) -> &Path {
        &self.json_dir
    }

    /// Rewrite `layers.jsonl` with only what is live: one line per key
    /// whose digest was not dropped and whose store paths still exist (a
    /// GC took the others; their digests could not be served anyway).
    /// Read from the file, not from memory, under a lock that appends take
    /// too: replicas sharing the state dir append lines this process has
    /// never seen. Returns (lines kept, digests dropped here).
    pub fn compact(&self) -> std::io::Result<(usize, usize)> {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let _exclusive = FileLock::take(&self.log_path)?;
        let mut by_key: std::collections::BTreeMap<String, (String, String)> = Default::default();
        let text = std::fs::read_to_string(&self.log_path)?;
        for raw in text.lines() {
            match serde_json::from_str::<Line>(raw) {
                Ok(Line::Layer { key, digest, .. }) => {
                    by_key.insert(key.0.clone(), (digest, raw.to_string()));
                }
                Ok(Line::Drop { drop }) => by_key.retain(|_, (d, _)| *d != drop),
                Err(_) => {} // a torn line
            }
        }
        let mut kept = Vec::new();
        let mut gone = Vec::new();
        for (digest, raw) in by_key.into_values() {
            let live = match serde_json::from_str::<Line>(&raw) {
                Ok(Line::Layer { source, .. }) => {
                    source.reads().iter().all(|p| p.symlink_metadata().is_ok())
                }
                _ => false,
            };
            if live {
                kept.push(raw);
            } else {
                gone.push(digest);
            }
        }
        let dir = self.log_path.parent().unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        {
            let mut out = std::io::BufWriter::new(tmp.as_file_mut());
            for raw in &kept {
                out.write_all(raw.as_bytes())?;
                out.write_all(b"\n")?;
            }
            out.flush()?;
        }
        tmp.as_file().sync_all()?;
        tmp.persist(&self.log_path).map_err(|e| e.error)?;
        self.follow_compaction(&mut log)?;
        drop(log);
        gone.sort();
        gone.dedup();
        let mut dropped = 0;
        for d in &gone {
            if self.remove(d).is_some() {
                dropped += 1;
            }
        }
        Ok((kept.len(), dropped))
    }

    fn json_path(&self, digest: &str) -> PathBuf {
        self.json_dir.join(digest.trim_start_matches("sha256:"))
    }
}

/// An exclusive `flock` on `PATH.lock`, held while the index file is
/// appended to or replaced, by any process sharing the state dir.
struct FileLock(std::fs::File);

impl FileLock {
    fn take(log_path: &Path) -> std::io::Result<FileLock> {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(log_path.with_extension("lock"))?;
        // SAFETY: flock(2) on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(FileLock(f))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: as above; closing would release it too.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

pub use crate::nix::root_family;

/// Set a path's mtime to now, not following a symlink (a GC root's own
/// mtime is what counts).
pub fn touch(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: a valid C string and a null times pointer (= now).
    unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            std::ptr::null(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
}

/// The ledger as another process reads it (the containerd snapshotter):
/// which source stands for each uncompressed layer digest (a diff ID). It
/// reads only what was appended since it last looked, and starts over when
/// the file was replaced by a compacted copy.
pub struct LedgerReader {
    path: PathBuf,
    /// Device and inode of the file read so far.
    file: Option<(u64, u64)>,
    offset: u64,
    by_diff: std::collections::HashMap<String, LayerSource>,
    /// Blob digest -> diff ID, to apply `drop` lines.
    diff_of: std::collections::HashMap<String, String>,
}

impl LedgerReader {
    pub fn new(state_dir: &Path) -> LedgerReader {
        LedgerReader {
            path: state_dir.join("layers.jsonl"),
            file: None,
            offset: 0,
            by_diff: Default::default(),
            diff_of: Default::default(),
        }
    }

    /// Read what was appended since the last call (none yet: no ledger).
    pub fn refresh(&mut self) -> std::io::Result<()> {
        use std::io::{Read, Seek, SeekFrom};
        use std::os::unix::fs::MetadataExt;
        let mut f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let meta = f.metadata()?;
        let id = (meta.dev(), meta.ino());
        if self.file != Some(id) || meta.len() < self.offset {
            self.file = Some(id);
            self.offset = 0;
            self.by_diff.clear();
            self.diff_of.clear();
        }
        f.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        // A line still being written waits for the next call.
        let whole = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        for line in buf[..whole].split(|&b| b == b'\n') {
            match serde_json::from_slice::<Line>(line) {
                Ok(Line::Layer {
                    digest,
                    source,
                    diff_id,
                    packed: None,
                    ..
                }) => {
                    let diff = diff_id.unwrap_or_else(|| digest.clone());
                    self.by_diff.insert(diff.clone(), source);
                    self.diff_of.insert(digest, diff);
                }
                Ok(Line::Drop { drop }) => {
                    if let Some(diff) = self.diff_of.remove(&drop) {
                        self.by_diff.remove(&diff);
                    }
                }
                // Archive members (served as they came), torn or foreign lines.
                Ok(Line::Layer { .. }) | Err(_) => {}
            }
        }
        self.offset += whole as u64;
        Ok(())
    }

    pub fn diff_ids(&self) -> impl Iterator<Item = &str> {
        self.by_diff.keys().map(String::as_str)
    }

    pub fn source(&self, diff_id: &str) -> Option<&LayerSource> {
        self.by_diff.get(diff_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::layer::Owner;

    #[test]
    fn survives_a_restart_and_remembers_drops() {
        let dir = tempfile::tempdir().unwrap();
        let src = |p: &str| LayerSource::StorePaths {
            paths: vec![p.into()],
            mtime: 1,
            owner: Owner::default(),
            perms: vec![],
        };
        let d1 = LayerDigest {
            digest: format!("sha256:{}", "1".repeat(64)),
            size: 10240,
            diff_id: None,
            packed: None,
        };
        // A compressed blob: its diff_id survives the restart too.
        let d2 = LayerDigest {
            digest: format!("sha256:{}", "2".repeat(64)),
            size: 20480,
            diff_id: None,
            packed: None,
        };
        let d3 = LayerDigest {
            digest: format!("sha256:{}", "3".repeat(64)),
            size: 300,
            diff_id: Some(format!("sha256:{}", "4".repeat(64))),
            packed: None,
        };
        {
            let idx = DigestIndex::open(dir.path()).unwrap();
            idx.record_layer(src("/nix/store/a").key(), &src("/nix/store/a"), &d1)
                .unwrap();
            idx.record_layer(src("/nix/store/b").key(), &src("/nix/store/b"), &d2)
                .unwrap();
            idx.record_layer(
                crate::image::layer::compress::Codec::Gzip.key(&src("/nix/store/a")),
                &src("/nix/store/a"),
                &d3,
            )
            .unwrap();
            idx.forget_layer(&d2.digest);
            idx.put_json(&JsonBlob::new(
                "application/vnd.oci.image.manifest.v1+json",
                &serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json"}),
            ))
            .unwrap();
        }
        // A torn line from a crash must not stop the server from starting.
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("layers.jsonl"))
            .unwrap()
            .write_all(b"{\"key\":")
            .unwrap();
        let idx = DigestIndex::open(dir.path()).unwrap();
        assert_eq!(
            idx.layer_digest(&src("/nix/store/a").key()),
            Some(d1.clone())
        );
        assert_eq!(idx.layer(&d1.digest).unwrap().source, src("/nix/store/a"));
        assert!(idx.layer(&d2.digest).is_none());
        assert_eq!(
            idx.layer_digest(&crate::image::layer::compress::Codec::Gzip.key(&src("/nix/store/a"))),
            Some(d3.clone())
        );
        assert_eq!(idx.layer(&d3.digest).unwrap().diff_id, d3.diff_id);
        assert!(idx.layer_digest(&src("/nix/store/b").key()).is_none());
        let m = JsonBlob::new(
            "application/vnd.oci.image.manifest.v1+json",
            &serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json"}),
        );
        let got = idx.get_json(&m.digest).unwrap();
        assert_eq!(
            (got.bytes.clone(), got.media_type.as_str()),
            (m.bytes, "application/vnd.oci.image.manifest.v1+json")
        );
    }

    /// Two replicas share a state dir: one compacts while the other keeps
    /// appending; no line of either is lost, and lines of paths that are
    /// gone are dropped whichever replica wrote them.
    #[test]
    fn compaction_by_one_replica_keeps_the_others_appends() {
        let dir = tempfile::tempdir().unwrap();
        let store = tempfile::tempdir().unwrap();
        let path = |n: &str| {
            let p = store.path().join(n);
            std::fs::write(&p, n).unwrap();
            p
        };
        let src = |p: PathBuf| LayerSource::StorePaths {
            paths: vec![p],
            mtime: 1,
            owner: Owner::default(),
            perms: vec![],
        };
        let d = |c: char| LayerDigest {
            digest: format!("sha256:{}", c.to_string().repeat(64)),
            size: 1024,
            diff_id: None,
            packed: None,
        };
        let a = DigestIndex::open(dir.path()).unwrap();
        let b = DigestIndex::open(dir.path()).unwrap();
        let (p1, p2, p3) = (path("one"), path("two"), path("three"));
        a.record_layer(src(p1.clone()).key(), &src(p1), &d('1'))
            .unwrap();
        a.record_layer(src(p2.clone()).key(), &src(p2.clone()), &d('2'))
            .unwrap();
        std::fs::remove_file(&p2).unwrap();
        // b never saw a's lines in memory; it compacts from the file.
        assert_eq!(b.compact().unwrap(), (1, 0));
        a.record_layer(src(p3.clone()).key(), &src(p3), &d('3'))
            .unwrap();
        let c = DigestIndex::open(dir.path()).unwrap();
        assert!(c.layer(&d('1').digest).is_some());
        assert!(c.layer(&d('2').digest).is_none(), "its path is gone");
        assert!(
            c.layer(&d('3').digest).is_some(),
            "appended after the compaction"
        );
    }
}
