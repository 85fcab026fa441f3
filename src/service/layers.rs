//! The layer store: what is known of every layer served (the digest
//! ledger, scans, digest passes in flight, the compressed cache), and the
//! one trust API every blob GET calls. A layer is trusted once a full GET
//! (or its digest pass) hashed its bytes to its digest, for as long as its
//! files keep the [`Identity`] they had then: a GET streams it without
//! hashing again, and a small one from memory. Any write to a file the
//! layer reads changes the identity, and the next GET verifies.

use crate::events::Events;
use crate::image::compressed::CompressedCache;
use crate::image::kept::KeptFiles;
use crate::image::layer::compress::Codec;
use crate::image::layer::{Identity, LayerDigest, LayerKey, LayerTar};
use crate::image::ledger::DigestIndex;
use crate::image::members::MemberCache;
use crate::image::vouched::Vouches;
use bytes::Bytes;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// Layers up to this size are kept in memory once verified...
pub const HOT_MAX_LAYER: u64 = 16 * 1024 * 1024;
/// ... if they hold at least this many files: one open and read per file
/// is what a GET of them costs, while a layer of a few large files streams
/// from the page cache at about the machine's speed anyway.
pub const HOT_MIN_FILES: usize = 32;

/// The scans kept for blob GETs, in members. A member takes about 1.7 KiB
/// (its rendered headers, path and metadata; measured: 340 MiB for the two
/// layers of 101,003 members of the bench's files100k), so this keeps the
/// cache near 80 MiB whatever the layers hold. A larger scan is never
/// kept: see [`LayerStore::keep_scan`].
pub const SCANNED_MEMBERS: usize = 50_000;

pub struct LayerStore {
    pub(super) index: DigestIndex,
    /// Coalesces digest passes of one layer wanted by several images at once.
    pub(super) digesting: moka::future::Cache<LayerKey, LayerDigest>,
    /// Scanned layers (member lists with rendered headers) for blob GETs.
    pub(super) scanned: moka::future::Cache<String, Arc<LayerTar>>,
    /// Digest passes run on blocking threads, one per core.
    pub(super) digest_slots: Semaphore,
    /// With `--compression gzip|zstd`: the codec and where its blobs are kept.
    pub(super) compressed: Option<Arc<CompressedCache>>,
    /// Members of gzip and zstd image archives, kept decompressed.
    pub(super) members: Arc<MemberCache>,
    /// The files of both, under one budget.
    pub(super) kept: Arc<KeptFiles>,
    pub(super) trust: TrustedLayers,
    /// What the snapshotter may make from the store (see [`Vouches`]).
    pub(super) vouches: Vouches,
    pub(super) events: Arc<Events>,
    /// Scans too large to keep, while they may still be in use.
    pub(super) released: LargeScans,
}

/// Scans too large for the cache, watched until they are dropped: see
/// [`LayerStore::give_back_released`].
#[derive(Clone, Default)]
pub struct LargeScans(Arc<Mutex<Vec<std::sync::Weak<LayerTar>>>>);

impl LargeScans {
    /// Watch `tar` if it is too large to keep.
    pub fn watch(&self, tar: &Arc<LayerTar>) {
        if tar.entry_count() > SCANNED_MEMBERS {
            let mut watched = self.0.lock().unwrap_or_else(|e| e.into_inner());
            watched.push(Arc::downgrade(tar));
        }
    }
}

impl LayerStore {
    /// `codec`: `--compression`; `hot_bytes`: the memory the bytes of
    /// small verified layers may take.
    pub fn new(
        index: DigestIndex,
        kept: Arc<KeptFiles>,
        codec: Option<Codec>,
        hot_bytes: u64,
        vouches: Vouches,
        events: Arc<Events>,
    ) -> LayerStore {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        LayerStore {
            digesting: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(std::time::Duration::from_secs(60))
                .build(),
            scanned: moka::future::Cache::builder()
                .weigher(|_, tar: &Arc<LayerTar>| {
                    u32::try_from(tar.entry_count()).unwrap_or(u32::MAX)
                })
                .max_capacity(SCANNED_MEMBERS as u64)
                .build(),
            digest_slots: Semaphore::new(cores),
            compressed: codec.map(|c| Arc::new(CompressedCache::new(c, kept.clone()))),
            members: Arc::new(MemberCache::new(kept.clone())),
            kept,
            trust: TrustedLayers::new(hot_bytes),
            released: LargeScans::default(),
            index,
            vouches,
            events,
        }
    }
}

pub(super) struct TrustedLayers {
    identities: moka::sync::Cache<String, Identity>,
    /// The bytes of small verified layers, in one piece (one write to the
    /// socket rather than one per chunk).
    hot: Option<moka::sync::Cache<String, Bytes>>,
    hot_bytes: u64,
    /// Streams collecting a layer's bytes to keep: one per layer, within the
    /// hot budget. Without this, 16 clients pulling one new small layer at
    /// once each held a copy of it until verified (16 x 7 MiB measured).
    collecting: Arc<Mutex<Collecting>>,
}

#[derive(Default)]
struct Collecting {
    digests: HashSet<String>,
    bytes: u64,
}

/// One stream's right to collect a layer's bytes for memory; released when
/// dropped, whether or not the layer was kept.
pub struct HotClaim {
    collecting: Arc<Mutex<Collecting>>,
    digest: String,
    size: u64,
}

impl Drop for HotClaim {
    fn drop(&mut self) {
        let mut c = self.collecting.lock().unwrap_or_else(|e| e.into_inner());
        c.digests.remove(&self.digest);
        c.bytes -= self.size;
    }
}

impl TrustedLayers {
    /// `hot_bytes`: the memory the bytes of small layers may take (0: none).
    pub(super) fn new(hot_bytes: u64) -> TrustedLayers {
        TrustedLayers {
            identities: moka::sync::Cache::new(100_000),
            hot: (hot_bytes > 0).then(|| {
                moka::sync::Cache::builder()
                    // In KiB, so that the weight fits a u32.
                    .weigher(|_, bytes: &Bytes| {
                        u32::try_from(bytes.len() / 1024 + 1).unwrap_or(u32::MAX)
                    })
                    .max_capacity(hot_bytes / 1024)
                    .build()
            }),
            hot_bytes,
            collecting: Arc::default(),
        }
    }
}

impl TrustedLayers {
    /// For a small layer of many files not in memory yet, when no other
    /// stream collects it and the bytes being collected stay within the
    /// budget.
    fn claim(&self, digest: &str, size: u64, files: usize) -> Option<HotClaim> {
        if size > HOT_MAX_LAYER || files < HOT_MIN_FILES || self.hot.as_ref()?.contains_key(digest)
        {
            return None;
        }
        let mut c = self.collecting.lock().unwrap_or_else(|e| e.into_inner());
        if c.bytes + size > self.hot_bytes || !c.digests.insert(digest.to_string()) {
            return None;
        }
        c.bytes += size;
        Some(HotClaim {
            collecting: self.collecting.clone(),
            digest: digest.to_string(),
            size,
        })
    }
}

impl LayerStore {
    /// Whether `digest`'s files are as they were when its bytes last hashed
    /// to it.
    pub fn layer_trusted(&self, digest: &str, now: Identity) -> bool {
        self.trust.identities.get(digest) == Some(now)
    }

    /// A full GET hashed the layer to its digest, and its files had
    /// `identity` before and after.
    pub fn layer_verified(&self, digest: &str, identity: Identity) {
        self.trust.identities.insert(digest.to_string(), identity);
    }

    /// Bytes served for `digest` did not hash to it: every trace of it
    /// goes (trust, ledger entry, digest pass, scan), so the next pull
    /// digests it again. Manifests naming it are the image service's.
    pub async fn forget_corrupt(&self, digest: &str) {
        self.distrust_layer(digest);
        self.vouches.withdraw(digest);
        if let Some(key) = self.index.forget_layer(digest) {
            self.digesting.invalidate(&key).await;
        }
        self.scanned.invalidate(digest).await;
    }

    /// Keep a scan for the GETs to come, unless it alone is more than the
    /// cache holds. The cache would evict it anyway, but only when its
    /// housekeeping next runs, which an idle server may not do for long: a
    /// scan of 100,000 members held 170 MiB meanwhile. Also for a scan a
    /// GET's `try_get_with` put there itself: it goes at once.
    pub async fn keep_scan(&self, digest: &str, tar: Arc<LayerTar>) {
        if tar.entry_count() <= SCANNED_MEMBERS {
            self.scanned.insert(digest.to_string(), tar).await;
            return;
        }
        if self.scanned.contains_key(digest) {
            self.scanned.invalidate(digest).await;
            self.scanned.run_pending_tasks().await;
        }
        self.released.watch(&tar);
    }

    /// Once no GET serves a scan too large to keep, ask the allocator to
    /// give the freed memory back: glibc keeps freed small blocks for
    /// reuse, and a scan of 100,000 members is 300,000 of them (three per
    /// member). Measured on the bench's files100k
    /// (two such layers): 486 MiB of RSS after its manifest and GETs, 18
    /// MiB once given back. Called every few seconds; costs nothing when
    /// no such scan was made.
    pub fn give_back_released(&self) {
        let mut released = self.released.0.lock().unwrap_or_else(|e| e.into_inner());
        let before = released.len();
        released.retain(|w| w.strong_count() > 0);
        if released.len() < before {
            drop(released);
            give_back_freed_memory();
        }
    }

    /// A full GET hashed `tar`'s bytes to `digest`, its files unchanged:
    /// the snapshotter may make it from the store. Blocking.
    pub fn vouch(&self, digest: &str, tar: &LayerTar) {
        self.vouches.vouch_for(digest, tar);
    }

    /// The layer's files changed: the next GET hashes it again.
    pub fn distrust_layer(&self, digest: &str) {
        self.trust.identities.invalidate(digest);
        if let Some(hot) = &self.trust.hot {
            hot.invalidate(digest);
        }
    }

    /// A claim to collect the bytes of a layer of `size` bytes and `files`
    /// files as it streams, to keep them in memory once verified.
    pub fn claim_hot(&self, digest: &str, size: u64, files: usize) -> Option<HotClaim> {
        self.trust.claim(digest, size, files)
    }

    pub fn keep_hot(&self, claim: HotClaim, chunks: Vec<Bytes>) {
        let digest = &claim.digest;
        if let Some(hot) = &self.trust.hot {
            let mut whole = bytes::BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
            for c in &chunks {
                whole.extend_from_slice(c);
            }
            hot.insert(digest.to_string(), whole.freeze());
        }
    }

    /// Bytes of layers held in memory now.
    pub fn hot_layer_bytes(&self) -> u64 {
        self.trust.hot.as_ref().map_or(0, |h| {
            h.run_pending_tasks();
            h.iter().map(|(_, b)| b.len() as u64).sum()
        })
    }

    /// The bytes of a small verified layer, if they are in memory.
    pub fn hot_layer(&self, digest: &str) -> Option<Bytes> {
        let hit = self.trust.hot.as_ref()?.get(digest);
        self.events.metrics.cache("hot_layer", hit.is_some());
        hit
    }
}

/// Return the allocator's free memory to the system (see
/// [`LayerStore::give_back_released`]).
pub fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own arenas; any thread may
    // call it at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    /// A layer of `n` symlinks, scanned (no files read).
    fn links(n: usize) -> Arc<LayerTar> {
        use crate::image::layer::{LayerSource, LinkEntry};
        let entries = (0..n)
            .map(|i| LinkEntry {
                path: format!("/bin/l{i}"),
                target: Some("/nix/store/x".into()),
            })
            .collect();
        let source = LayerSource::Links {
            entries,
            mtime: 1,
            owner: Default::default(),
            perms: vec![],
        };
        Arc::new(LayerTar::scan(&source).unwrap())
    }

    #[tokio::test]
    async fn a_scan_larger_than_the_cache_is_not_kept_and_is_watched_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = LayerStore::new(
            DigestIndex::open(dir.path()).unwrap(),
            Arc::new(KeptFiles::open(dir.path(), 0).unwrap()),
            None,
            0,
            Vouches::open(dir.path()).unwrap(),
            Events::new(),
        );
        let watched = || store.released.0.lock().unwrap().len();
        store.keep_scan("small", links(3)).await;
        assert!(store.scanned.contains_key("small"));
        let big = links(SCANNED_MEMBERS + 1);
        assert_eq!(big.entry_count(), SCANNED_MEMBERS + 1);
        // As a GET's try_get_with puts it there.
        store.scanned.insert("big".into(), big.clone()).await;
        store.keep_scan("big", big.clone()).await;
        assert!(!store.scanned.contains_key("big"));
        assert!(store.scanned.contains_key("small"));
        assert_eq!(watched(), 1);
        store.give_back_released();
        assert_eq!(watched(), 1, "still served");
        drop(big);
        store.give_back_released();
        assert_eq!(watched(), 0);
    }

    #[test]
    fn one_stream_collects_a_layer_within_the_budget() {
        let t = TrustedLayers::new(10 * MIB);
        let a = t
            .claim("a", 6 * MIB, 100)
            .expect("small layer of many files");
        assert!(t.claim("a", 6 * MIB, 100).is_none(), "a second stream of a");
        assert!(t.claim("b", 6 * MIB, 100).is_none(), "over the budget");
        assert!(t.claim("c", MIB, 100).is_some(), "within it");
        drop(a);
        assert!(
            t.claim("a", 6 * MIB, 100).is_some(),
            "released when dropped"
        );
        assert!(t.claim("d", MIB, HOT_MIN_FILES - 1).is_none(), "few files");
        assert!(t.claim("e", HOT_MAX_LAYER + 1, 100).is_none(), "too large");
        assert!(
            TrustedLayers::new(0).claim("a", MIB, 100).is_none(),
            "no hot layers"
        );
    }
}
