//! The body of a stream that hashes its bytes or keeps them: chunks read
//! on a borrowed blocking thread into a bounded channel.

use super::stream::Stream;
use super::{CHUNK, REFILL_ROOM};
use crate::image::layer::LayerRead;
use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use std::io::{self, Read};
use tokio::sync::mpsc;

impl Stream {
    /// For a stream that hashes its bytes or keeps them (else see
    /// [`Stream::pulled`]). Hashing stays off the runtime's threads, which
    /// serve every other connection: a large layer's first GET hashes for
    /// tens of milliseconds. Chunks are read (and hashed) on a borrowed
    /// blocking thread for as long as the channel has room: a client that
    /// keeps up is fed by one thread without a hand-off per chunk. Once the
    /// channel is full the thread is given back and the stream waits for
    /// room without one, so a client that stops reading holds no thread,
    /// and at most [`CHANNEL_DEPTH`](super::CHANNEL_DEPTH) chunks plus the one hyper is writing.
    /// The last chunk goes only once the digest matches.
    pub(super) async fn produce(
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
