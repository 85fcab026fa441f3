//! GET/HEAD `/v2/<name>/blobs/<digest>`: layers are regenerated from the
//! store on every request and streamed through a bounded channel, so memory
//! does not grow with layer size. A full-body stream is hashed as it goes and
//! its last chunk is held back until the digest matches; on a mismatch the
//! client gets a short body (its download fails) and the digest is dropped.
//! A read that fails because the machine is short of something (descriptors,
//! memory) keeps the digest: the client retries (503 before the body starts).

use crate::error::{RegistryError, Result};
use crate::events::Events;
use crate::image::layer::LayerRead;
use crate::service::{Blob, Images};
use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
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
    images: &Arc<Images>,
    streams: &Arc<Semaphore>,
    digest: &str,
    headers: &HeaderMap,
    head: bool,
    client: Option<std::net::IpAddr>,
) -> Result<Response> {
    let blob = images.blob(digest).await?;
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
    let body = if head {
        Body::empty()
    } else {
        match blob {
            Blob::Json(j) => {
                let mut served = Served::new(&images.events, client, digest, "json");
                served.sent(end - start, end == size);
                Body::from(j.bytes.slice(start as usize..end as usize))
            }
            Blob::Layer {
                digest,
                tar,
                compression,
            } => {
                // A full GET is checked against the digest: by hashing it,
                // or, if it was hashed before and its files are unchanged
                // since (same identity), by comparing the identity again at
                // its end. A small layer verified before comes from memory.
                let full = range.is_none();
                if full {
                    if let Some(bytes) = images.layers.hot_layer(&digest) {
                        let served = Served::new(&images.events, client, &digest, compression);
                        let body = from_memory(images.clone(), digest, tar, bytes, served, slot);
                        return resp.body(body).map_err(RegistryError::internal);
                    }
                }
                let identity = if full {
                    let t = tar.clone();
                    match tokio::task::spawn_blocking(move || t.identity())
                        .await
                        .map_err(RegistryError::internal)?
                    {
                        Ok(i) => Some(i),
                        Err(e) => return Err(unreadable(images, &digest, e).await),
                    }
                } else {
                    None
                };
                let trusted = identity.is_some_and(|i| images.layers.layer_trusted(&digest, i));
                if full {
                    images.events.metrics.cache("verified_layer", trusted);
                }
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
                let keep = if full {
                    images.layers.claim_hot(&digest, size, tar.entry_count())
                } else {
                    None
                };
                let stream = Stream {
                    images: images.clone(),
                    digest,
                    verify: full && !trusted,
                    identity,
                    keep,
                    tar,
                    len: end - start,
                    to_end: end == size,
                    served,
                    _slot: slot,
                };
                if stream.verify || stream.keep.is_some() {
                    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(CHANNEL_DEPTH);
                    tokio::spawn(stream.produce(reader, first, tx));
                    Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                } else {
                    stream.pulled(reader, first)
                }
            }
        }
    };
    resp.body(body).map_err(RegistryError::internal)
}

/// A small layer verified before, from memory. Its files' identity is
/// taken while the bytes go out, and the last chunk waits for it: taken
/// first, the 3000 stats of a layer of 3000 files cost as much as sending
/// its 7 MiB. If the files changed, the store's bytes are hashed at once:
/// when they no longer match, the body is cut short and the digest dropped,
/// as a streamed layer's would be; when they still match (only touched),
/// the body completes and the next GET verifies afresh.
fn from_memory(
    images: Arc<Images>,
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
            match tokio::task::spawn_blocking(move || tar.digest()).await {
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

/// One of the `--max-streams` slots a layer stream holds while it lives
/// (on either listener), or 429.
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

/// What a layer stream needs after the handler has returned.
struct Stream {
    images: Arc<Images>,
    digest: String,
    /// A full-body stream is hashed and its last chunk held back until the
    /// digest matches; a range cannot be checked.
    verify: bool,
    /// A full body's files as they were before it was read: equal after
    /// it, and hashed right, the layer is trusted; a trusted layer whose
    /// identity changed while it streamed is cut short.
    identity: Option<crate::image::layer::Identity>,
    /// Keep the chunks, to serve this small layer from memory once verified.
    keep: Option<crate::service::HotClaim>,
    tar: Arc<crate::image::layer::LayerTar>,
    len: u64,
    /// The stream ends at the blob's end (so a whole body completes a blob).
    to_end: bool,
    served: Served,
    /// Counts against `--max-streams` while the stream lives.
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Stream {
    /// For a stream that hashes its bytes or keeps them (else see
    /// [`Stream::pulled`]). Hashing stays off the runtime's threads, which
    /// serve every other connection: a large layer's first GET hashes for
    /// tens of milliseconds. Chunks are read (and hashed) on a borrowed
    /// blocking thread for as long as the channel has room: a client that
    /// keeps up is fed by one thread without a hand-off per chunk. Once the
    /// channel is full the thread is given back and the stream waits for
    /// room without one, so a client that stops reading holds no thread,
    /// and at most [`CHANNEL_DEPTH`] chunks plus the one hyper is writing.
    /// The last chunk goes only once the digest matches.
    async fn produce(
        mut self,
        reader: Box<dyn LayerRead>,
        first: Bytes,
        tx: mpsc::Sender<io::Result<Bytes>>,
    ) {
        if self.len == 0 {
            self.served.sent(0, self.to_end);
            return; // an empty body: nothing to send or check
        }
        let mut fill = Fill {
            reader,
            left: self.len,
            next: Some(first),
            hasher: self.verify.then(Sha256::new),
            sent: 0,
            kept: self.keep.is_some().then(Vec::new),
        };
        let mut counted = 0;
        loop {
            // Wait for room without a thread.
            match tx.reserve_many(REFILL_ROOM).await {
                Ok(permit) => drop(permit),
                Err(_) => return, // the client went away
            }
            let sender = tx.clone();
            let (back, outcome) = match tokio::task::spawn_blocking(move || {
                let outcome = fill.run(&sender);
                (fill, outcome)
            })
            .await
            {
                Ok(done) => done,
                Err(e) => {
                    let _ = tx.send(Err(io::Error::other(e.to_string()))).await;
                    return;
                }
            };
            fill = back;
            self.served.sent(fill.sent - counted, false);
            counted = fill.sent;
            match outcome {
                Filled::Full => continue,
                Filled::Gone => return,
                Filled::Failed(e) => {
                    let _ = tx.send(self.failed(e).await).await;
                    return;
                }
                Filled::Last(last) => {
                    let len = last.len() as u64;
                    let kept = fill.kept.take();
                    let last = match fill.hasher.take() {
                        None => Ok(last),
                        Some(h) => self.check(h, last).await,
                    };
                    let last = match last {
                        Ok(last) => self.unchanged(last, kept).await,
                        Err(e) => Err(e),
                    };
                    let whole = last.is_ok();
                    // An error as the last item cuts the body short: the
                    // client's download fails instead of taking wrong bytes.
                    if tx.send(last).await.is_ok() && whole {
                        self.served.sent(len, self.to_end);
                    }
                    return;
                }
            }
        }
    }

    /// A body that reads its own chunks as hyper asks for them, for a
    /// stream with nothing to hash or keep (a trusted full body, a range).
    /// Bytes the page cache holds are read right there, on the thread that
    /// then writes them to the socket; only a read that would wait (for the
    /// disk, or to open the next file) borrows a blocking thread. No
    /// channel, no hand-off per chunk: a warm 128 MiB GET was 1.5x the
    /// reference registry's time through the channel (see the README). A
    /// client that stops reading holds one open file and the chunk hyper
    /// is writing, and no thread.
    fn pulled(self, reader: Box<dyn LayerRead>, first: Bytes) -> Body {
        struct Pull {
            stream: Stream,
            /// `None` while a blocking thread has it, and after the end.
            reader: Option<Box<dyn LayerRead>>,
            left: u64,
            next: Option<Bytes>,
            /// The last chunk or an error went out.
            ended: bool,
        }
        impl Pull {
            async fn chunk(&mut self) -> io::Result<Bytes> {
                if let Some(c) = self.next.take() {
                    return Ok(c);
                }
                let mut reader = self
                    .reader
                    .take()
                    .ok_or_else(|| io::Error::other("stream ended"))?;
                let mut buf = BytesMut::zeroed(self.left.min(PULL_CHUNK as u64) as usize);
                let mut filled = 0;
                while filled < buf.len() {
                    match reader.read_cached(&mut buf[filled..]) {
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
                if filled < buf.len() {
                    let (back, buf_back, read) = tokio::task::spawn_blocking(move || {
                        let read = reader.read_exact(&mut buf[filled..]);
                        (reader, buf, read)
                    })
                    .await
                    .map_err(|e| io::Error::other(e.to_string()))?;
                    read?;
                    (reader, buf) = (back, buf_back);
                }
                self.reader = Some(reader);
                Ok(buf.freeze())
            }
        }
        let pull = Pull {
            left: self.len,
            stream: self,
            reader: Some(reader),
            next: Some(first),
            ended: false,
        };
        let chunks = futures_util::stream::unfold(pull, |mut pull| async move {
            if pull.ended {
                return None;
            }
            if pull.left == 0 {
                pull.ended = true;
                pull.stream.served.sent(0, pull.stream.to_end);
                return None; // an empty body: nothing to send or check
            }
            let chunk = match pull.chunk().await {
                Ok(c) => c,
                Err(e) => {
                    pull.ended = true;
                    let failed = pull.stream.failed(e).await;
                    return Some((failed, pull));
                }
            };
            let len = chunk.len() as u64;
            pull.left -= len;
            if pull.left > 0 {
                pull.stream.served.sent(len, false);
                return Some((Ok(chunk), pull));
            }
            // The last chunk goes once the files are as they were; an
            // error in its place cuts the body short.
            pull.ended = true;
            pull.reader = None;
            let last = pull.stream.unchanged(chunk, None).await;
            if last.is_ok() {
                pull.stream.served.sent(len, pull.stream.to_end);
            }
            Some((last, pull))
        });
        Body::from_stream(chunks)
    }

    /// Hash the last chunk; it goes only if the whole matches the digest.
    async fn check(&self, mut h: Sha256, last: Bytes) -> io::Result<Bytes> {
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
    async fn unchanged(&mut self, last: Bytes, kept: Option<Vec<Bytes>>) -> io::Result<Bytes> {
        let Some(before) = self.identity else {
            return Ok(last);
        };
        let tar = self.tar.clone();
        let after = tokio::task::spawn_blocking(move || tar.identity())
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

    async fn failed(&self, e: io::Error) -> io::Result<Bytes> {
        read_failed(&self.images, &self.digest, &e).await;
        Err(e)
    }
}

/// What one blob GET sent, for `/metrics` (as it goes) and the pull it
/// belongs to (when it ends, however it ends).
pub(super) struct Served {
    events: Arc<Events>,
    client: Option<std::net::IpAddr>,
    digest: String,
    compression: &'static str,
    bytes: u64,
    complete: bool,
}

impl Served {
    pub(super) fn new(
        events: &Arc<Events>,
        client: Option<std::net::IpAddr>,
        digest: &str,
        compression: &'static str,
    ) -> Served {
        events.pulls.blob_started(client, digest);
        Served {
            events: events.clone(),
            client,
            digest: digest.to_string(),
            compression,
            bytes: 0,
            complete: false,
        }
    }

    /// `bytes` more went out; `complete` once the blob's last byte did.
    pub(super) fn sent(&mut self, bytes: u64, complete: bool) {
        self.bytes += bytes;
        self.complete |= complete;
        if bytes > 0 {
            self.events.metrics.blob_bytes(self.compression, bytes);
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let ended =
            self.events
                .pulls
                .blob_ended(self.client, &self.digest, self.bytes, self.complete);
        if let Some(pull) = ended {
            self.events.pulled(&pull);
        }
    }
}

/// The blocking side of a stream: where it is in the layer.
struct Fill {
    reader: Box<dyn LayerRead>,
    left: u64,
    /// A chunk read but not sent yet (the first, read before the reply).
    next: Option<Bytes>,
    hasher: Option<Sha256>,
    /// Bytes handed to the channel.
    sent: u64,
    /// The chunks sent, when the layer is to be kept in memory.
    kept: Option<Vec<Bytes>>,
}

enum Filled {
    /// The channel is full: wait for room, then run again.
    Full,
    /// The receiver is gone.
    Gone,
    Failed(io::Error),
    /// The last chunk, read and not yet hashed or sent.
    Last(Bytes),
}

impl Fill {
    /// Read, hash and send chunks while the channel has room for them.
    fn run(&mut self, tx: &mpsc::Sender<io::Result<Bytes>>) -> Filled {
        loop {
            // Room first, then the read: a stalled stream holds no chunk
            // beyond the channel's.
            let permit = match tx.try_reserve() {
                Ok(p) => p,
                Err(mpsc::error::TrySendError::Full(())) => return Filled::Full,
                Err(mpsc::error::TrySendError::Closed(())) => return Filled::Gone,
            };
            let chunk = match self.next.take() {
                Some(c) => c,
                None => {
                    let want = self.left.min(CHUNK as u64) as usize;
                    let mut buf = BytesMut::zeroed(want);
                    if let Err(e) = self.reader.read_exact(&mut buf) {
                        return Filled::Failed(e);
                    }
                    buf.freeze()
                }
            };
            self.left -= chunk.len() as u64;
            if self.left == 0 {
                return Filled::Last(chunk);
            }
            if let Some(h) = &mut self.hasher {
                h.update(&chunk);
            }
            self.sent += chunk.len() as u64;
            if let Some(kept) = &mut self.kept {
                kept.push(chunk.clone());
            }
            permit.send(Ok(chunk));
        }
    }
}

/// A layer that cannot be opened at all: 503 if the machine is short of
/// something, else the store changed and the digest goes.
async fn unreadable(images: &Arc<Images>, digest: &str, e: io::Error) -> RegistryError {
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
pub(super) async fn read_failed(images: &Images, digest: &str, e: &io::Error) -> bool {
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
