//! GET/HEAD `/v2/<name>/blobs/<digest>`: layers are regenerated from the
//! store on every request and streamed through a bounded channel, so memory
//! does not grow with layer size. A full-body stream is hashed as it goes and
//! its last chunk is held back until the digest matches; on a mismatch the
//! client gets a short body (its download fails) and the digest is dropped.

use crate::error::{RegistryError, Result};
use crate::images::{Blob, Images};
use crate::layer::HashingWriter;
use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use std::io::{self, Write};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Chunk size sent to the client; with [`CHANNEL_DEPTH`] it bounds the
/// memory one stream holds.
const CHUNK: usize = 256 * 1024;
const CHANNEL_DEPTH: usize = 4;

pub async fn get(
    images: &Arc<Images>,
    digest: &str,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response> {
    let blob = images.blob(digest).await?;
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
            Blob::Json(j) => Body::from(j.bytes.slice(start as usize..end as usize)),
            Blob::Layer { digest, tar } => {
                let verify = range.is_none();
                let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(CHANNEL_DEPTH);
                let images = images.clone();
                tokio::spawn(async move {
                    let sender = tx.clone();
                    let produced = tokio::task::spawn_blocking(move || {
                        let mut w = ChannelWriter {
                            tx: sender,
                            buf: BytesMut::with_capacity(CHUNK),
                            hasher: verify.then(Hasher::start),
                        };
                        tar.write_range(start, end, &mut w)?;
                        let last = w.buf.freeze();
                        let got = w.hasher.map(|h| h.finish(last.clone())).transpose()?;
                        Ok::<_, io::Error>((last, got))
                    })
                    .await;
                    let outcome = match produced {
                        Ok(Ok((_, Some(got)))) if got != digest => {
                            tracing::error!(%digest, %got, "served bytes do not match the digest; dropping it");
                            images.layer_is_corrupt(&digest).await;
                            Err(io::Error::other(
                                "layer bytes changed since they were digested",
                            ))
                        }
                        Ok(Ok((last, _))) => Ok(last),
                        Ok(Err(e)) if e.kind() == io::ErrorKind::BrokenPipe => return, // client went away
                        Ok(Err(e)) => {
                            // The store changed under us (a file resized or
                            // vanished): what was digested cannot be served.
                            tracing::error!(%digest, error = %e, "layer stream failed; dropping the digest");
                            images.layer_is_corrupt(&digest).await;
                            Err(e)
                        }
                        Err(e) => Err(io::Error::other(e.to_string())),
                    };
                    let _ = tx.send(outcome).await;
                });
                Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            }
        }
    };
    resp.body(body).map_err(RegistryError::internal)
}

/// A single `bytes=` range, end exclusive. Multiple or malformed ranges get
/// the whole blob (RFC 9110 lets a server ignore Range); a range that starts
/// past the end is 416.
fn requested_range(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>> {
    let Some(spec) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
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

/// Sync side of the stream: fills a chunk, hands it to the async side.
/// The last partial chunk stays in `buf` for the caller.
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: BytesMut,
    hasher: Option<Hasher>,
}

/// sha256 on a thread of its own, fed the same refcounted chunks the client
/// gets: hashing (about 1.6 GiB/s with SHA-NI) runs beside reading and
/// sending instead of after them.
struct Hasher {
    chunks: std::sync::mpsc::SyncSender<Bytes>,
    thread: std::thread::JoinHandle<String>,
}

impl Hasher {
    fn start() -> Hasher {
        let (chunks, rx) = std::sync::mpsc::sync_channel::<Bytes>(CHANNEL_DEPTH);
        let thread = std::thread::spawn(move || {
            let mut h = HashingWriter::default();
            for chunk in rx {
                h.write_all(&chunk).expect("hashing cannot fail");
            }
            h.finish()
        });
        Hasher { chunks, thread }
    }

    fn feed(&self, chunk: Bytes) -> io::Result<()> {
        self.chunks
            .send(chunk)
            .map_err(|_| io::Error::other("hasher thread stopped"))
    }

    /// Hash the last chunk too and return the digest of everything.
    fn finish(self, last: Bytes) -> io::Result<String> {
        self.feed(last)?;
        drop(self.chunks);
        self.thread
            .join()
            .map_err(|_| io::Error::other("hasher thread panicked"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut rest = data;
        while !rest.is_empty() {
            let n = rest.len().min(CHUNK - self.buf.len());
            self.buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if self.buf.len() == CHUNK {
                let chunk =
                    std::mem::replace(&mut self.buf, BytesMut::with_capacity(CHUNK)).freeze();
                if let Some(h) = &self.hasher {
                    h.feed(chunk.clone())?;
                }
                self.tx
                    .blocking_send(Ok(chunk))
                    .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
            }
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(v: &str, size: u64) -> Result<Option<(u64, u64)>> {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, v.parse().unwrap());
        requested_range(&h, size)
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
