//! The listener: accepts connections (TCP, or TLS with [`crate::http::tls`]) and
//! serves the registry on each with HTTP/1.1, under the limits that make it
//! safe to expose: a deadline for request headers (which also ends idle
//! keep-alive connections), a deadline for a write that makes no progress,
//! a cap on open connections, and a graceful drain at shutdown.
//!
//! A client that stops reading costs its socket and the body chunks already
//! queued for it, never a thread: the blob producer waits on an async
//! channel, and this module's [`IdleWriteTimeout`] closes the connection
//! once the client has taken nothing for `idle_write`.

use crate::http::tls::TlsAcceptor;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// The client's address, which the listener puts on every request (the
/// terminal's pull lines group requests by it).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::IpAddr);

/// See `max_buf_size` in [`serve`].
pub const WRITE_BUFFER: usize = 64 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// From the start of waiting for a request (on a new or kept-alive
    /// connection, and for the TLS handshake) to its last header byte.
    pub header_read: Duration,
    /// A write that the client lets make no progress for this long closes
    /// the connection.
    pub idle_write: Duration,
    /// Open connections; further ones wait in the kernel's backlog.
    pub max_connections: usize,
}

/// Serve `app` on `listener` until `shutdown` resolves, then stop
/// accepting, ask every connection to close after its current response,
/// and return once all have (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        // hyper queues body chunks until this many bytes wait for the
        // socket (about 400 KiB by default): with a client that stopped
        // reading, that is what a stream holds. One chunk is enough to
        // keep the socket busy; the bound on request headers it also sets
        // is far above what registry clients send.
        .max_buf_size(WRITE_BUFFER)
        .keep_alive(true);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("semaphore is never closed"),
            _ = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = accept(&listener) => accepted,
            _ = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        // Every request carries the client's address (for the pull lines).
        let service = TowerToHyperService::new(tower::util::MapRequest::new(
            app.clone(),
            move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(Peer(peer.ip()));
                req
            },
        ));
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let io = IdleWriteTimeout::new(tcp, limits.idle_write);
            let result = match tls {
                None => {
                    let conn = builder.serve_connection(TokioIo::new(io), service);
                    watcher.watch(conn).await
                }
                Some(tls) => {
                    let io = match tokio::time::timeout(limits.header_read, tls.accept(io)).await {
                        Ok(Ok(io)) => io,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let conn = builder.serve_connection(TokioIo::new(io), service);
                    watcher.watch(conn).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// The next connection; a failed accept (EMFILE and friends) backs off
/// instead of spinning.
async fn accept(listener: &TcpListener) -> (tokio::net::TcpStream, std::net::SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(c) => return c,
            Err(e) => {
                tracing::warn!(listener = ?listener.local_addr().ok(), error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Raise the soft open-files limit to the hard one: every connection, and
/// every file a layer stream has open, is a descriptor.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(lim.rlim_cur)
}

/// A transport whose writes fail with `TimedOut` once one has been pending
/// (the client's receive window full) for longer than the limit.
pub struct IdleWriteTimeout<T> {
    inner: T,
    limit: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> IdleWriteTimeout<T> {
    pub fn new(inner: T, limit: Duration) -> Self {
        IdleWriteTimeout {
            inner,
            limit,
            stalled: None,
        }
    }

    /// A write's outcome: progress resets the clock; no progress for
    /// `limit` in a row turns into `TimedOut`.
    fn timed<R>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let limit = self.limit;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "client took no bytes within the idle write timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleWriteTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleWriteTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.timed(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.timed(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.timed(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_write_nobody_reads_times_out_and_one_that_progresses_does_not() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut w = IdleWriteTimeout::new(a, Duration::from_secs(5));
        // Progress every 4 s keeps it alive past the 5 s limit.
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 1024];
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_secs(4)).await;
                b.read_exact(&mut buf).await.unwrap();
            }
            b // held, never read again
        });
        w.write_all(&vec![7u8; 5 * 1024]).await.unwrap();
        let err = w.write_all(&vec![7u8; 2048]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        drop(reader.await.unwrap());
    }
}
