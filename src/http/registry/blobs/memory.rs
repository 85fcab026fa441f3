//! The body of a small layer verified before: its bytes from memory.

use super::{read_failed, Served, CHUNK};
use crate::service::ImageService;
use axum::body::Body;
use bytes::Bytes;
use std::io;
use std::sync::Arc;
use tokio::sync::mpsc;

/// A small layer verified before, from memory. Its files' identity is
/// taken while the bytes go out, and the last chunk waits for it: taken
/// first, the 3000 stats of a layer of 3000 files cost as much as sending
/// its 7 MiB. If the files changed, the store's bytes are hashed at once:
/// when they no longer match, the body is cut short and the digest dropped,
/// as a streamed layer's would be; when they still match (only touched),
/// the body completes, the next GET verifies afresh, and the snapshotter
/// may make the layer from the store again (vouched for by that hash).
pub(super) fn from_memory(
    images: Arc<ImageService>,
    digest: String,
    tar: Arc<crate::image::layer::LayerTar>,
    bytes: Bytes,
    mut served: Served,
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Body {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(2);
    let mut head = bytes;
    let tail = head.split_off(head.len().saturating_sub(CHUNK));
    tokio::spawn(async move {
        let _slot = slot;
        let checked = {
            let tar = tar.clone();
            tokio::task::spawn_blocking(move || tar.identity())
        };
        let head_len = head.len() as u64;
        if head_len > 0 {
            if tx.send(Ok(head)).await.is_err() {
                return;
            }
            served.sent(head_len, false);
        }
        let now = checked.await.map_err(|e| io::Error::other(e.to_string()));
        let trusted = matches!(&now, Ok(Ok(i)) if images.layers.layer_trusted(&digest, *i));
        images.events.metrics.cache("verified_layer", trusted);
        let last = if trusted {
            Ok(tail)
        } else {
            images.layers.distrust_layer(&digest);
            // Hashed from files that held still meanwhile, the layer is
            // vouched for to the snapshotter again.
            let before = now.ok().and_then(Result::ok);
            let (layers, d) = (images.layers.clone(), digest.clone());
            let hashed = tokio::task::spawn_blocking(move || {
                let got = tar.digest()?;
                if got == d && before.is_some() && tar.identity().ok() == before {
                    layers.vouch(&d, &tar);
                }
                Ok::<_, io::Error>(got)
            });
            match hashed.await {
                Ok(Ok(d)) if d == digest => Ok(tail),
                Ok(Ok(d)) => {
                    tracing::error!(%digest, got = %d, "a layer in memory no longer matches the store; dropping its digest");
                    images.layer_is_corrupt(&digest).await;
                    Err(io::Error::other(
                        "layer bytes changed since they were digested",
                    ))
                }
                Ok(Err(e)) => {
                    read_failed(&images, &digest, &e).await;
                    Err(e)
                }
                Err(e) => Err(io::Error::other(e.to_string())),
            }
        };
        let len = last.as_ref().map_or(0, |b| b.len() as u64);
        let whole = last.is_ok();
        if tx.send(last).await.is_ok() && whole {
            served.sent(len, true);
        }
    });
    Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
}
