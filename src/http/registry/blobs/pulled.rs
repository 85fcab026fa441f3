//! The body of a stream with nothing to hash or keep (a trusted full
//! body, a range): it reads its own chunks as hyper asks for them.

use super::stream::Stream;
use super::PULL_CHUNK;
use crate::image::layer::LayerRead;
use axum::body::Body;
use bytes::{Bytes, BytesMut};
use std::io;

impl Stream {
    /// A body that reads its own chunks as hyper asks for them, for a
    /// stream with nothing to hash or keep (a trusted full body, a range).
    /// Bytes the page cache holds are read right there, on the thread that
    /// then writes them to the socket; only a read that would wait (for the
    /// disk, or to open the next file) borrows a blocking thread. No
    /// channel, no hand-off per chunk: a warm 128 MiB GET was 1.5x the
    /// reference registry's time through the channel (see the README). A
    /// client that stops reading holds one open file and the chunk hyper
    /// is writing, and no thread.
    pub(super) fn pulled(self, reader: Box<dyn LayerRead>, first: Bytes) -> Body {
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
}
