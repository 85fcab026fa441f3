//! Layers whose bytes a full GET has hashed to their digest, and what their
//! files were then ([`Identity`]): while the identity holds, a GET streams
//! them without hashing again, and the small ones from memory. Any write to
//! a file the layer reads changes the identity, and the next GET verifies.

use crate::layer::Identity;
use bytes::Bytes;

/// Layers up to this size are kept in memory once verified...
pub const HOT_MAX_LAYER: u64 = 16 * 1024 * 1024;
/// ... if they hold at least this many files: one open and read per file
/// is what a GET of them costs, while a layer of a few large files streams
/// from the page cache at about the machine's speed anyway.
pub const HOT_MIN_FILES: usize = 32;

pub(super) struct TrustedLayers {
    identities: moka::sync::Cache<String, Identity>,
    /// The bytes of small verified layers, in one piece (one write to the
    /// socket rather than one per chunk).
    hot: Option<moka::sync::Cache<String, Bytes>>,
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
        }
    }
}

impl super::Images {
    /// Whether `digest`'s files are as they were when its bytes last hashed
    /// to it.
    pub fn layer_trusted(&self, digest: &str, now: Identity) -> bool {
        self.trusted.identities.get(digest) == Some(now)
    }

    /// A full GET hashed the layer to its digest, and its files had
    /// `identity` before and after.
    pub fn layer_verified(&self, digest: &str, identity: Identity) {
        self.trusted.identities.insert(digest.to_string(), identity);
    }

    /// The layer's files changed: the next GET hashes it again.
    pub fn distrust_layer(&self, digest: &str) {
        self.trusted.identities.invalidate(digest);
        if let Some(hot) = &self.trusted.hot {
            hot.invalidate(digest);
        }
    }

    /// Whether a verified layer of `size` bytes and `files` files would be
    /// kept in memory.
    pub fn wants_hot(&self, digest: &str, size: u64, files: usize) -> bool {
        size <= HOT_MAX_LAYER
            && files >= HOT_MIN_FILES
            && self
                .trusted
                .hot
                .as_ref()
                .is_some_and(|h| !h.contains_key(digest))
    }

    pub fn keep_hot(&self, digest: &str, chunks: Vec<Bytes>) {
        if let Some(hot) = &self.trusted.hot {
            let mut whole = bytes::BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
            for c in &chunks {
                whole.extend_from_slice(c);
            }
            hot.insert(digest.to_string(), whole.freeze());
        }
    }

    /// Bytes of layers held in memory now.
    pub fn hot_layer_bytes(&self) -> u64 {
        self.trusted.hot.as_ref().map_or(0, |h| {
            h.run_pending_tasks();
            h.iter().map(|(_, b)| b.len() as u64).sum()
        })
    }

    /// The bytes of a small verified layer, if they are in memory.
    pub fn hot_layer(&self, digest: &str) -> Option<Bytes> {
        let hit = self.trusted.hot.as_ref()?.get(digest);
        self.events.metrics.cache("hot_layer", hit.is_some());
        hit
    }
}
