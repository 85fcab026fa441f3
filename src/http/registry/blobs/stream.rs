//! What a layer stream carries after the handler returned, and how its
//! end is checked: the digest of what was hashed, the identity of the
//! files it read. Its two bodies are in `produced.rs` and `pulled.rs`.

use super::{read_failed, Served};
use crate::service::ImageService;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::io;
use std::sync::Arc;

/// What a layer stream needs after the handler has returned.
pub(super) struct Stream {
    pub(super) images: Arc<ImageService>,
    pub(super) digest: String,
    /// A full-body stream is hashed and its last chunk held back until the
    /// digest matches; a range cannot be checked.
    pub(super) verify: bool,
    /// A full body's files as they were before it was read: equal after
    /// it, and hashed right, the layer is trusted; a trusted layer whose
    /// identity changed while it streamed is cut short.
    pub(super) identity: Option<crate::image::layer::Identity>,
    /// Keep the chunks, to serve this small layer from memory once verified.
    pub(super) keep: Option<crate::service::HotClaim>,
    pub(super) tar: Arc<crate::image::layer::LayerTar>,
    pub(super) len: u64,
    /// The stream ends at the blob's end (so a whole body completes a blob).
    pub(super) to_end: bool,
    pub(super) served: Served,
    /// Counts against `--max-streams` while the stream lives.
    pub(super) _slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Stream {
    /// Hash the last chunk; it goes only if the whole matches the digest.
    pub(super) async fn check(&self, mut h: Sha256, last: Bytes) -> io::Result<Bytes> {
        let (h, last) = tokio::task::spawn_blocking(move || {
            h.update(&last);
            (h, last)
        })
        .await
        .map_err(|e| io::Error::other(e.to_string()))?;
        let got = crate::vocab::Digest::from_hash(h.finalize().into());
        if got == self.digest {
            return Ok(last);
        }
        tracing::error!(digest = %self.digest, %got, "served bytes do not match the digest; dropping it");
        self.images.layer_is_corrupt(&self.digest).await;
        Err(io::Error::other(
            "layer bytes changed since they were digested",
        ))
    }

    /// A full body that hashed right (or was trusted): its files must be
    /// as they were before it was read. Then the layer is trusted (and kept
    /// in memory if small); if they changed, a trusted stream is cut short
    /// and the next GET hashes the layer again.
    pub(super) async fn unchanged(
        &mut self,
        last: Bytes,
        kept: Option<Vec<Bytes>>,
    ) -> io::Result<Bytes> {
        let Some(before) = self.identity else {
            return Ok(last);
        };
        let tar = self.tar.clone();
        // A GET that hashed its bytes vouches for them to the snapshotter.
        let vouch = self
            .verify
            .then(|| (self.images.layers.clone(), self.digest.clone()));
        let after = tokio::task::spawn_blocking(move || {
            let after = tar.identity();
            if let (Some((layers, digest)), Ok(now)) = (vouch, &after) {
                if *now == before {
                    layers.vouch(&digest, &tar);
                }
            }
            after
        })
        .await
        .map_err(|e| io::Error::other(e.to_string()))?;
        if after.as_ref().ok() != Some(&before) {
            self.images.layers.distrust_layer(&self.digest);
            if !self.verify {
                tracing::warn!(digest = %self.digest, "layer files changed while streaming; cut short, the next GET verifies");
                return Err(io::Error::other("layer files changed while they were sent"));
            }
            return Ok(last);
        }
        self.images.layers.layer_verified(&self.digest, before);
        if let (Some(mut chunks), Some(claim)) = (kept, self.keep.take()) {
            chunks.push(last.clone());
            self.images.layers.keep_hot(claim, chunks);
        }
        Ok(last)
    }

    pub(super) async fn failed(&self, e: io::Error) -> io::Result<Bytes> {
        read_failed(&self.images, &self.digest, &e).await;
        Err(e)
    }
}
