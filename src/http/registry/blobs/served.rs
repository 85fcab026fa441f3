//! What a blob GET sent, counted as it goes.

use crate::events::Events;
use std::sync::Arc;

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
