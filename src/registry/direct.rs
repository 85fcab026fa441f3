//! Large verified layers over `sendfile(2)` (`--direct-listen`).
//!
//! hyper writes a body from buffers, so every byte of a layer streamed on
//! the registry's port is copied from the page cache into this process and
//! out again; the reference registry has the kernel send its files
//! (`sendfile`), which on a 2-core machine made a warm 128 MiB GET about
//! 1.5x its time. So a full GET of a large layer that was verified before
//! answers `307` to a URL on a second listener, as registries redirect to
//! their storage or CDN: the URL names the digest and an expiry and is
//! signed with a key this process made at start, so it needs no other
//! credential and is good for [`VALID_FOR`]. That listener speaks just
//! enough HTTP/1.1 for a blob (GET and HEAD, one `Range`, keep-alive) and
//! writes the tar's generated parts itself and its files' ranges with
//! `sendfile`.
//!
//! The integrity guarantee is the registry port's: bytes go out only while
//! the layer's files have the identity they had when the layer was last
//! hashed to its digest, checked before the body and again before its last
//! 64 KiB, and a layer not verified yet is hashed first.

use super::blobs::{range_of, read_failed, stream_slot, Served, CHUNK};
use crate::error::{RegistryError, Result};
use crate::images::{Blob, Images};
use crate::layer::{LayerTar, Piece};
use axum::response::IntoResponse;
use hmac::{KeyInit, Mac};
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};

/// How long a signed URL is good for: a client follows a redirect at once,
/// and retries a failed download by asking the registry again.
pub const VALID_FOR: Duration = Duration::from_secs(300);
/// Layers from this size on are redirected; a smaller one costs the
/// redirect's round trip more than the copy it saves.
pub const MIN_SIZE: u64 = 1024 * 1024;
/// A request head larger than this closes the connection.
const MAX_HEAD: usize = 16 * 1024;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The second listener's port and the key its URLs are signed with.
pub struct Direct {
    key: [u8; 32],
    port: u16,
}

impl Direct {
    pub fn new(port: u16) -> io::Result<Direct> {
        let mut key = [0u8; 32];
        io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut key)?;
        Ok(Direct { key, port })
    }

    fn signature(&self, digest: &str, until: u64) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any size");
        mac.update(digest.as_bytes());
        mac.update(b"\n");
        mac.update(until.to_string().as_bytes());
        mac
    }

    /// Where a client that reached this server as `host` (the Host header)
    /// gets `digest` with `sendfile`: the same host name, the direct port.
    pub fn location(&self, host: &str, digest: &str) -> String {
        let name = match host.strip_prefix('[') {
            Some(v6) => format!("[{}]", v6.split(']').next().unwrap_or_default()),
            None => host.split(':').next().unwrap_or_default().to_string(),
        };
        let until = now_secs() + VALID_FOR.as_secs();
        let sig = hex::encode(self.signature(digest, until).finalize().into_bytes());
        format!(
            "http://{name}:{}/blobs/{digest}?until={until}&sig={sig}",
            self.port
        )
    }

    /// The digest a request target names, if this server signed it and it
    /// is still good.
    fn admit(&self, target: &str) -> Result<String> {
        let denied = |reason: &str| RegistryError::LinkDenied {
            reason: reason.into(),
        };
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let digest = path
            .strip_prefix("/blobs/")
            .ok_or_else(|| RegistryError::NoSuchEndpoint { path: path.into() })?;
        let digest = super::route::valid_digest(digest)?;
        let (mut until, mut sig) = (None, None);
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("until", v)) => until = v.parse::<u64>().ok(),
                Some(("sig", v)) => sig = hex::decode(v).ok(),
                _ => {}
            }
        }
        let (Some(until), Some(sig)) = (until, sig) else {
            return Err(denied("the link has no valid until= and sig="));
        };
        self.signature(&digest, until)
            .verify_slice(&sig)
            .map_err(|_| denied("the signature is not this server's"))?;
        if until < now_secs() {
            return Err(denied("the link has expired; pull again"));
        }
        Ok(digest)
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether a layer is worth redirecting: large, and mostly file ranges the
/// kernel can send (not a gzipped archive's member, not thousands of small
/// files).
pub fn worth_it(tar: &LayerTar) -> bool {
    let size = tar.size();
    if size < MIN_SIZE {
        return false;
    }
    let in_files: u64 = tar
        .pieces(0, size)
        .iter()
        .map(|p| match p {
            Piece::File { len, .. } => *len,
            Piece::Generated { .. } => 0,
        })
        .sum();
    in_files >= size / 10 * 9
}

/// What a connection needs.
pub struct Shared {
    pub images: Arc<Images>,
    /// The registry's `--max-streams` slots: a stream here takes one too.
    pub streams: Arc<Semaphore>,
    pub direct: Arc<Direct>,
    pub limits: crate::server::Limits,
    /// Set at shutdown: no new connections, none kept alive.
    closing: AtomicBool,
    /// Responses being written, and a wake-up when one ends.
    responding: AtomicUsize,
    changed: Notify,
}

impl Shared {
    pub fn new(
        images: Arc<Images>,
        streams: Arc<Semaphore>,
        direct: Arc<Direct>,
        limits: crate::server::Limits,
    ) -> Shared {
        Shared {
            images,
            streams,
            direct,
            limits,
            closing: AtomicBool::new(false),
            responding: AtomicUsize::new(0),
            changed: Notify::new(),
        }
    }

    /// No new connections, and none kept alive after its response.
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Stop accepting, and return once the responses being written are
    /// (the caller bounds the wait, as for the registry's port).
    pub async fn drain(&self) {
        self.close();
        loop {
            let changed = self.changed.notified();
            if self.responding.load(Ordering::SeqCst) == 0 {
                return;
            }
            changed.await;
        }
    }
}

/// Accept connections until [`Shared::drain`].
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(shared.limits.max_connections.max(1)));
    loop {
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore is never closed");
        let closing = shared.changed.notified();
        if shared.closing.load(Ordering::SeqCst) {
            return;
        }
        let (tcp, peer) = tokio::select! {
            accepted = crate::server::accept(&listener) => accepted,
            _ = closing => continue,
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = connection(tcp, peer, &shared).await {
                tracing::debug!(%peer, error = %e, "direct connection ended");
            }
        });
    }
}

/// Requests one after another on one connection, until the client closes
/// it, asks to, or a response could not be completed.
async fn connection(mut tcp: TcpStream, peer: SocketAddr, shared: &Shared) -> io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let Some(head_len) =
            tokio::time::timeout(shared.limits.header_read, read_head(&mut tcp, &mut buf))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request head"))??
        else {
            return Ok(());
        };
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        let request = match req.parse(&buf[..head_len]) {
            Ok(httparse::Status::Complete(_)) => Request {
                head: req.method == Some("HEAD"),
                method: req.method.unwrap_or_default().to_string(),
                target: req.path.unwrap_or_default().to_string(),
                range: header(req.headers, "range"),
                // A method other than GET and HEAD may carry a body this
                // listener does not read: the connection ends with its reply.
                close: req.version == Some(0)
                    || !matches!(req.method, Some("GET" | "HEAD"))
                    || header(req.headers, "connection")
                        .is_some_and(|c| c.eq_ignore_ascii_case("close")),
            },
            _ => {
                let e = RegistryError::NoSuchEndpoint {
                    path: "(a request that is not HTTP/1.1)".into(),
                };
                write_error(&mut tcp, e, true, shared).await?;
                return Ok(());
            }
        };
        buf.drain(..head_len);
        let close = request.close || shared.closing.load(Ordering::SeqCst);
        shared.responding.fetch_add(1, Ordering::SeqCst);
        let responded = async {
            match respond(&mut tcp, peer, &request, shared).await {
                Ok(done) => Ok(done),
                Err(e) => write_error(&mut tcp, e, close, shared).await.map(|()| true),
            }
        }
        .await;
        shared.responding.fetch_sub(1, Ordering::SeqCst);
        shared.changed.notify_waiters();
        if close || !responded? || shared.closing.load(Ordering::SeqCst) {
            return Ok(());
        }
    }
}

struct Request {
    head: bool,
    method: String,
    target: String,
    range: Option<String>,
    close: bool,
}

fn header(headers: &[httparse::Header<'_>], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .map(|v| v.trim().to_string())
}

/// Reads until `buf` holds a whole request head; its length, or `None` if
/// the client closed the connection between requests.
async fn read_head(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(Some(end + 4));
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
        if tcp.read_buf(buf).await? == 0 {
            return match buf.is_empty() {
                true => Ok(None),
                false => Err(io::ErrorKind::UnexpectedEof.into()),
            };
        }
    }
}

/// The error as the registry's port sends it (status and JSON body).
async fn write_error(
    tcp: &mut TcpStream,
    e: RegistryError,
    close: bool,
    shared: &Shared,
) -> io::Result<()> {
    let resp = e.into_response();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
        if close { "Connection: close\r\n" } else { "" },
    );
    let idle = shared.limits.idle_write;
    write_all(tcp, head.as_bytes(), idle).await?;
    write_all(tcp, &body, idle).await
}

/// Answers one request. `Ok(false)`: the body was cut short (the
/// connection must close); an error is answered as an error.
async fn respond(
    tcp: &mut TcpStream,
    peer: SocketAddr,
    request: &Request,
    shared: &Shared,
) -> Result<bool> {
    if request.method != "GET" && request.method != "HEAD" {
        return Err(RegistryError::ReadOnly {
            method: request.method.clone(),
        });
    }
    let digest = shared.direct.admit(&request.target)?;
    let images = &shared.images;
    let Blob::Layer {
        digest,
        tar,
        compression,
    } = images.blob(&digest).await?
    else {
        return Err(RegistryError::BlobUnknown { digest });
    };
    let size = tar.size();
    let range = range_of(request.range.as_deref(), size)?;
    let (start, end) = range.unwrap_or((0, size));
    let _slot = match request.head {
        true => None,
        false => Some(stream_slot(&shared.streams)?),
    };
    let identity = verified_identity(images, &digest, &tar).await?;
    let mut head = format!(
        "HTTP/1.1 {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nDocker-Content-Digest: {digest}\r\nEtag: \"{digest}\"\r\n",
        if range.is_some() { "206 Partial Content" } else { "200 OK" },
        end - start,
    );
    if range.is_some() {
        head.push_str(&format!(
            "Content-Range: bytes {start}-{}/{size}\r\n",
            end - 1
        ));
    }
    if request.close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let idle = shared.limits.idle_write;
    let io = |e: io::Error| RegistryError::internal(e);
    write_all(tcp, head.as_bytes(), idle).await.map_err(io)?;
    if request.head {
        return Ok(true);
    }
    let mut served = Served::new(&images.events, Some(peer.ip()), &digest, compression);
    // All but the last 64 KiB, then the identity again: files changed
    // meanwhile cut the body short instead of completing it.
    let hold = (end - start).min(CHUNK as u64);
    if let Err(failed) = send(tcp, &tar, start, end - hold, idle).await {
        return cut_short(images, &digest, failed).await;
    }
    served.sent(end - hold - start, false);
    images.events.metrics.direct_bytes(end - hold - start);
    let t = tar.clone();
    let now = tokio::task::spawn_blocking(move || t.identity())
        .await
        .map_err(RegistryError::internal)?;
    if now.ok() != Some(identity) {
        images.distrust_layer(&digest);
        tracing::warn!(%digest, "layer files changed while sent directly; cut short, the next GET verifies");
        return Ok(false);
    }
    if let Err(failed) = send(tcp, &tar, end - hold, end, idle).await {
        return cut_short(images, &digest, failed).await;
    }
    served.sent(hold, end == size);
    images.events.metrics.direct_bytes(hold);
    Ok(true)
}

/// The layer's identity, once its bytes are known to match the digest: at
/// once if a GET verified it and its files are as they were then, else
/// after hashing it here (a mismatch drops the digest).
async fn verified_identity(
    images: &Arc<Images>,
    digest: &str,
    tar: &Arc<LayerTar>,
) -> Result<crate::layer::Identity> {
    let t = tar.clone();
    let identity = tokio::task::spawn_blocking(move || t.identity())
        .await
        .map_err(RegistryError::internal)?;
    let identity = match identity {
        Ok(i) => i,
        Err(e) => {
            read_failed(images, digest, &e).await;
            return Err(RegistryError::BlobUnknown {
                digest: digest.into(),
            });
        }
    };
    let trusted = images.layer_trusted(digest, identity);
    images.events.metrics.cache("verified_layer", trusted);
    if trusted {
        return Ok(identity);
    }
    let t = tar.clone();
    let hashed = tokio::task::spawn_blocking(move || t.digest_since(identity))
        .await
        .map_err(RegistryError::internal)?;
    match hashed {
        Ok((got, true)) if got == digest => {
            images.layer_verified(digest, identity);
            Ok(identity)
        }
        Ok((got, _)) if got == digest => Err(RegistryError::Unavailable {
            reason: "the layer's files changed while they were checked".into(),
            retry_after_secs: 1,
        }),
        Ok((got, _)) => {
            tracing::error!(%digest, %got, "layer bytes no longer match the digest; dropping it");
            images.layer_is_corrupt(digest).await;
            Err(RegistryError::BlobUnknown {
                digest: digest.into(),
            })
        }
        Err(e) => {
            let transient = read_failed(images, digest, &e).await;
            Err(match transient {
                true => RegistryError::layer_unreadable_for_now(),
                false => RegistryError::BlobUnknown {
                    digest: digest.into(),
                },
            })
        }
    }
}

/// Why a body was cut short: the store (a file gone, resized or shorter
/// than scanned), or the client (gone, too slow).
enum Failed {
    Store(io::Error),
    Client(io::Error),
}

/// Layer bytes `start..end`: generated parts written, file ranges sent by
/// the kernel.
async fn send(
    tcp: &mut TcpStream,
    tar: &Arc<LayerTar>,
    start: u64,
    end: u64,
    idle: Duration,
) -> std::result::Result<(), Failed> {
    for piece in tar.pieces(start, end) {
        match piece {
            Piece::Generated { start, end } => {
                let mut at = start;
                while at < end {
                    let to = end.min(at + 4 * CHUNK as u64);
                    let t = tar.clone();
                    let bytes = tokio::task::spawn_blocking(move || {
                        let mut out = Vec::with_capacity((to - at) as usize);
                        t.write_range(at, to, &mut out).map(|()| out)
                    })
                    .await
                    .map_err(|e| Failed::Store(io::Error::other(e)))?
                    .map_err(Failed::Store)?;
                    write_all(tcp, &bytes, idle).await.map_err(Failed::Client)?;
                    at = to;
                }
            }
            Piece::File {
                path, offset, len, ..
            } => {
                let file = piece
                    .open()
                    .expect("a file piece opens")
                    .map_err(Failed::Store)?;
                send_file(tcp, &file, offset, len, idle)
                    .await
                    .map_err(|e| match e.kind() {
                        io::ErrorKind::UnexpectedEof => Failed::Store(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("{} is shorter than when it was scanned", path.display()),
                        )),
                        _ => Failed::Client(e),
                    })?;
            }
        }
    }
    Ok(())
}

/// A body cut short: if the store failed, as a failed read on the
/// registry's port (the digest goes unless the machine is only short of
/// something); a client that left changes nothing.
async fn cut_short(images: &Images, digest: &str, failed: Failed) -> Result<bool> {
    match failed {
        Failed::Store(e) => {
            read_failed(images, digest, &e).await;
        }
        Failed::Client(e) => {
            tracing::debug!(digest, error = %e, "direct stream ended by the client")
        }
    }
    Ok(false)
}

/// `len` bytes of `file` from `offset` with `sendfile(2)`, waiting for
/// room in the socket without a thread; a client that takes nothing for
/// `idle` is dropped.
async fn send_file(
    tcp: &TcpStream,
    file: &std::fs::File,
    mut offset: u64,
    mut len: u64,
    idle: Duration,
) -> io::Result<()> {
    while len > 0 {
        tokio::time::timeout(idle, tcp.writable())
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client took nothing"))??;
        let sent = tcp.try_io(Interest::WRITABLE, || {
            let mut off = offset as libc::off_t;
            // In 512 KiB calls: one call for all of a 128 MiB file was
            // 65-67 ms a GET here, 512 KiB 60-63 ms, 64 KiB 68-72 ms.
            let count = len.min(512 << 10) as usize;
            // SAFETY: both descriptors are open for the call's duration and
            // `off` is a valid pointer to a local.
            let n = unsafe { libc::sendfile(tcp.as_raw_fd(), file.as_raw_fd(), &mut off, count) };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as u64)
            }
        });
        match sent {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                offset += n;
                len -= n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn write_all(tcp: &mut TcpStream, bytes: &[u8], idle: Duration) -> io::Result<()> {
    tokio::time::timeout(idle, tcp.write_all(bytes))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client took nothing"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_admitted_only_as_signed_and_in_time() {
        let direct = Direct::new(5001).unwrap();
        let digest = format!("sha256:{}", "a".repeat(64));
        for host in ["localhost:5000", "localhost", "[::1]:5000"] {
            let url = direct.location(host, &digest);
            let name = if host.starts_with('[') {
                "[::1]"
            } else {
                "localhost"
            };
            let prefix = format!("http://{name}:5001/blobs/{digest}?until=");
            assert!(url.starts_with(&prefix), "{url}");
            let target = &url[url.find("/blobs/").unwrap()..];
            assert_eq!(direct.admit(target).unwrap(), digest);
        }
        let url = direct.location("localhost:5000", &digest);
        let target = &url[url.find("/blobs/").unwrap()..];
        let other = format!("sha256:{}", "b".repeat(64));
        let cases = [
            target.replace(&digest, &other),
            target.replace("sig=", "sig=00"),
            target.replace("until=", "until=1"),
            target.split("&sig").next().unwrap().to_string(),
        ];
        for bad in cases {
            assert!(
                matches!(direct.admit(&bad), Err(RegistryError::LinkDenied { .. })),
                "{bad}"
            );
        }
        // Signed by this key, but out of date.
        let until = now_secs() - 1;
        let sig = hex::encode(direct.signature(&digest, until).finalize().into_bytes());
        let stale = format!("/blobs/{digest}?until={until}&sig={sig}");
        let e = direct.admit(&stale).unwrap_err().to_string();
        assert!(e.contains("expired"), "{e}");
        // Another process's key.
        let other_key = Direct::new(5001).unwrap();
        assert!(other_key.admit(target).is_err());
        assert!(matches!(
            direct.admit("/v2/x/blobs/y"),
            Err(RegistryError::NoSuchEndpoint { .. })
        ));
    }
}
