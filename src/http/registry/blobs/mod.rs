//! GET/HEAD `/v2/<name>/blobs/<digest>`: layers are regenerated from the
//! store on every request and streamed through a bounded channel, so memory
//! does not grow with layer size. A full-body stream is hashed as it goes and
//! its last chunk is held back until the digest matches; on a mismatch the
//! client gets a short body (its download fails) and the digest is dropped.
//! A read that fails because the machine is short of something (descriptors,
//! memory) keeps the digest: the client retries (503 before the body starts).
//!
//! `choose` decides, from what is known of a GET, which body it gets;
//! each body has a file: `memory`, `pulled`, `produced`.

mod choose;
mod memory;
mod produced;
mod pulled;
mod served;
mod stream;

use choose::{choose, Known, Strategy};
use served::Served;
use stream::Stream;

use crate::error::{RegistryError, Result};
use crate::service::{Blob, ImageService};
use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use std::io::{self, Read};
use std::sync::Arc;
use tokio::sync::{mpsc, Semaphore};

/// Chunk size sent to the client; with [`CHANNEL_DEPTH`] it bounds the
/// memory a stalled stream holds: the chunks in the channel and the one
/// hyper is writing (320 KiB). Measured on 2 cores, 12 MiB layer, 600
/// stalled clients: 64 KiB x 1 gave 468 MiB/s and 91 MiB; 64 KiB x 4 678
/// MiB/s and 229 MiB; 256 KiB x 1 730 MiB/s and 335 MiB.
pub(super) const CHUNK: usize = 64 * 1024;
const CHANNEL_DEPTH: usize = 4;
/// A stream that filled the channel borrows a thread again only once this
/// many chunks went out, not after each one: a thread hand-off per chunk
/// made a warm 128 MiB GET 70-76 ms; waiting for two, 44-61 ms (same
/// memory: the channel still holds at most [`CHANNEL_DEPTH`]).
const REFILL_ROOM: usize = CHANNEL_DEPTH / 2;

/// Chunk size of a body that reads its own chunks ([`Stream::pulled`]).
/// hyper takes one chunk and asks for the next only once less than
/// `server::WRITE_BUFFER` of it is left, so this is what such a stream
/// holds for a client that stopped reading: less than a channel-fed
/// stream's 320 KiB. Warm 128 MiB GET on 2 cores, as ratios to the
/// reference registry's time in paired rounds: 64 KiB chunks 1.13; 256 KiB
/// 0.86-1.08 over five runs (median 0.90); 512 KiB 0.94-1.12; 1 MiB 1.20.
const PULL_CHUNK: usize = 256 * 1024;

pub async fn get(
    images: &Arc<ImageService>,
    streams: &Arc<Semaphore>,
    digest: &str,
    headers: &HeaderMap,
    head: bool,
    client: Option<std::net::IpAddr>,
) -> Result<Response> {
    let blob = images.blob(digest, !head).await?;
    let slot = match (&blob, head) {
        (Blob::Layer { .. }, false) => Some(stream_slot(streams)?),
        _ => None,
    };
    let size = match &blob {
        Blob::Json(j) => j.bytes.len() as u64,
        Blob::Layer { tar, .. } => tar.size(),
    };
    let range = requested_range(headers, size)?;
    let (start, end) = range.unwrap_or((0, size));
    let mut resp = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, end - start)
        .header(header::ACCEPT_RANGES, "bytes")
        .header("Docker-Content-Digest", digest)
        .header(header::ETAG, format!("\"{digest}\""));
    if range.is_some() {
        resp = resp.status(StatusCode::PARTIAL_CONTENT).header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", end - 1),
        );
    }
    // What is known of the GET: only a whole body of a layer looks for its
    // bytes in memory, or takes its files' identity.
    let (json, layer) = match blob {
        Blob::Json(j) => (Some(j), None),
        Blob::Layer {
            digest,
            tar,
            compression,
        } => (None, Some((digest, tar, compression))),
    };
    let full = range.is_none();
    let whole_layer = layer.as_ref().filter(|_| full && !head);
    let hot = whole_layer.and_then(|(d, _, _)| images.layers.hot_layer(d));
    let (mut identity, mut trusted, mut collect) = (None, false, None);
    if let (Some((digest, tar, _)), None) = (whole_layer, &hot) {
        let t = tar.clone();
        let now = match tokio::task::spawn_blocking(move || t.identity())
            .await
            .map_err(RegistryError::internal)?
        {
            Ok(i) => i,
            Err(e) => return Err(unreadable(images, digest, e).await),
        };
        trusted = images.layers.layer_trusted(digest, now);
        images.events.metrics.cache("verified_layer", trusted);
        identity = Some(now);
        collect = images.layers.claim_hot(digest, size, tar.entry_count());
    }
    let strategy = choose(Known {
        head,
        json: json.is_some(),
        full,
        hot: hot.is_some(),
        trusted,
        collecting: collect.is_some(),
    });
    let body = match (strategy, json, layer) {
        (Strategy::Empty, ..) => Body::empty(),
        (Strategy::Json, Some(j), _) => {
            let mut served = Served::new(&images.events, client, digest, "json");
            served.sent(end - start, end == size);
            Body::from(j.bytes.slice(start as usize..end as usize))
        }
        (Strategy::FromMemory, _, Some((digest, tar, compression))) => {
            let bytes = hot.expect("chosen only with the bytes in memory");
            let served = Served::new(&images.events, client, &digest, compression);
            memory::from_memory(images.clone(), digest, tar, bytes, served, slot)
        }
        (Strategy::Pulled | Strategy::Produced { .. }, _, Some((digest, tar, compression))) => {
            // The first chunk is read before the status is sent: a layer
            // that cannot be read at all gets an error reply, not a cut body.
            let opened = {
                let (tar, want) = (tar.clone(), (end - start).min(CHUNK as u64) as usize);
                tokio::task::spawn_blocking(move || {
                    let mut reader = tar.reader(start, end)?;
                    let mut first = BytesMut::zeroed(want);
                    reader.read_exact(&mut first)?;
                    Ok::<_, io::Error>((reader, first.freeze()))
                })
                .await
                .map_err(RegistryError::internal)?
            };
            let (reader, first) = match opened {
                Ok(r) => r,
                Err(e) => return Err(unreadable(images, &digest, e).await),
            };
            let served = Served::new(&images.events, client, &digest, compression);
            let stream = Stream {
                images: images.clone(),
                digest,
                verify: matches!(strategy, Strategy::Produced { verify: true }),
                identity,
                keep: collect,
                tar,
                len: end - start,
                to_end: end == size,
                served,
                _slot: slot,
            };
            if let Strategy::Produced { .. } = strategy {
                let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(CHANNEL_DEPTH);
                tokio::spawn(stream.produce(reader, first, tx));
                Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            } else {
                stream.pulled(reader, first)
            }
        }
        (strategy, ..) => {
            return Err(RegistryError::internal(format!(
                "blob {digest}: {strategy:?} chosen for the wrong kind of blob"
            )))
        }
    };
    resp.body(body).map_err(RegistryError::internal)
}

/// One of the `--max-streams` slots a layer stream holds while it lives,
/// or 429.
pub(super) fn stream_slot(streams: &Arc<Semaphore>) -> Result<tokio::sync::OwnedSemaphorePermit> {
    streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| RegistryError::TooManyRequests {
            what: "every layer stream slot (--max-streams) is in use".into(),
            retry_after_secs: 1,
        })
}

/// A single `bytes=` range, end exclusive. Multiple or malformed ranges get
/// the whole blob (RFC 9110 lets a server ignore Range); a range that starts
/// past the end is 416.
fn requested_range(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>> {
    range_of(
        headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
        size,
    )
}

/// [`requested_range`] of a Range header's value, if any.
pub(super) fn range_of(spec: Option<&str>, size: u64) -> Result<Option<(u64, u64)>> {
    let Some(spec) = spec else {
        return Ok(None);
    };
    let Some(spec) = spec.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let range = match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(s), Ok(e)) if s <= e => (s, e.saturating_add(1).min(size)),
        (Ok(s), Err(_)) if b.is_empty() => (s, size),
        (Err(_), Ok(n)) if a.is_empty() && n > 0 => (size.saturating_sub(n), size),
        (Err(_), Ok(0)) if a.is_empty() => return Err(RegistryError::RangeNotSatisfiable { size }),
        _ => return Ok(None),
    };
    if range.0 >= size {
        return Err(RegistryError::RangeNotSatisfiable { size });
    }
    Ok(Some(range))
}

/// A layer that cannot be opened at all: 503 if the machine is short of
/// something, else the store changed and the digest goes.
async fn unreadable(images: &Arc<ImageService>, digest: &str, e: io::Error) -> RegistryError {
    if read_failed(images, digest, &e).await {
        return RegistryError::layer_unreadable_for_now();
    }
    RegistryError::BlobUnknown {
        digest: digest.to_string(),
    }
}

/// A read of a layer failed, before or during its stream. If the machine
/// is short of something the digest is kept (true: the client may retry);
/// else the store changed under us (a file resized or vanished), what was
/// digested cannot be served, and the digest is dropped.
pub(super) async fn read_failed(images: &ImageService, digest: &str, e: &io::Error) -> bool {
    if crate::image::layer::is_transient(e) {
        tracing::warn!(digest, error = %e, "layer read failed for now; keeping the digest");
        return true;
    }
    tracing::error!(digest, error = %e, "layer read failed; dropping the digest");
    images.layer_is_corrupt(digest).await;
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(v: &str, size: u64) -> Result<Option<(u64, u64)>> {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, v.parse().unwrap());
        requested_range(&h, size)
    }

    proptest::proptest! {
        /// Any Range header, any size: the whole blob, 416, or a non-empty
        /// range inside the blob; never a panic.
        #[test]
        fn any_range_header(v in "(bytes=)?[0-9 ,-]{0,20}|[ -~]{0,40}", size in 0u64..5000) {
            let mut h = HeaderMap::new();
            if let Ok(value) = v.parse() {
                h.insert(header::RANGE, value);
            }
            match requested_range(&h, size) {
                Ok(None) | Err(RegistryError::RangeNotSatisfiable { .. }) => {}
                Ok(Some((s, e))) => proptest::prop_assert!(s < e && e <= size, "{s}..{e} of {size}"),
                Err(e) => proptest::prop_assert!(false, "{e}"),
            }
        }
    }

    #[test]
    fn ranges() {
        assert_eq!(range("bytes=0-99", 1000).unwrap(), Some((0, 100)));
        assert_eq!(range("bytes=900-", 1000).unwrap(), Some((900, 1000)));
        assert_eq!(range("bytes=-100", 1000).unwrap(), Some((900, 1000)));
        assert_eq!(range("bytes=990-5000", 1000).unwrap(), Some((990, 1000)));
        assert_eq!(range("bytes=0-1,5-6", 1000).unwrap(), None);
        assert_eq!(range("items=0-1", 1000).unwrap(), None);
        assert_eq!(range("bytes=5-1", 1000).unwrap(), None);
        assert!(matches!(
            range("bytes=1000-", 1000),
            Err(RegistryError::RangeNotSatisfiable { size: 1000 })
        ));
        assert!(matches!(
            range("bytes=-0", 1000),
            Err(RegistryError::RangeNotSatisfiable { .. })
        ));
    }
}
