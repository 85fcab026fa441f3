//! One line per pull for the person running flakeport in a terminal:
//!
//! ```text
//! pulled app:v1 by 10.0.0.7: manifest in 2.31 s, 3 of 4 blobs, 12.4 MiB in 0.41 s
//! ```
//!
//! A pull is not one request: a client asks for a manifest (maybe an index
//! first), then the blobs it lacks, on several connections. A pull is the
//! requests of one client address for one name; it ends when every blob of
//! its manifests has been sent, or when the client has asked for nothing
//! more for [`QUIET`] (it had the other layers already).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A pull with no request for this long is over.
pub const QUIET: Duration = Duration::from_secs(2);
/// Open pulls kept at most; past it the oldest is reported early.
const MAX_OPEN: usize = 4096;

#[derive(Debug, Clone, PartialEq)]
pub struct Pull {
    pub name: String,
    /// The tag (or digest) of the first manifest asked for.
    pub reference: String,
    pub client: Option<IpAddr>,
    pub to_manifest: Duration,
    /// Blobs the manifests name, and how many were sent.
    pub blobs: usize,
    pub blobs_sent: usize,
    pub bytes: u64,
    /// From the first manifest request to the last byte sent.
    pub took: Duration,
}

impl std::fmt::Display for Pull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sep = if self.reference.starts_with("sha256:") {
            '@'
        } else {
            ':'
        };
        write!(f, "pulled {}{sep}{}", self.name, self.reference)?;
        if let Some(c) = self.client {
            write!(f, " by {c}")?;
        }
        write!(
            f,
            ": manifest in {}, {} of {} blobs, {} in {}",
            secs(self.to_manifest),
            self.blobs_sent,
            self.blobs,
            bytes(self.bytes),
            secs(self.took)
        )
    }
}

fn secs(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

struct Open {
    pull: Pull,
    started: Instant,
    last: Instant,
    wanted: HashSet<String>,
    /// Blob streams still sending.
    streaming: usize,
}

type Key = (Option<IpAddr>, String);

#[derive(Default)]
pub struct Pulls {
    open: Mutex<HashMap<Key, Open>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pulls {
    /// A manifest (or index) was sent; `blobs` are the digests it names
    /// (none for an index: its manifests come next, by digest).
    pub fn manifest(
        &self,
        client: Option<IpAddr>,
        name: &str,
        reference: &str,
        took: Duration,
        blobs: Vec<String>,
    ) -> Vec<Pull> {
        let now = Instant::now();
        let mut open = lock(&self.open);
        let mut done = Vec::new();
        if open.len() >= MAX_OPEN {
            let oldest = open
                .iter()
                .min_by_key(|(_, o)| o.last)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                done.extend(open.remove(&k).map(|o| o.pull));
            }
        }
        let entry = open
            .entry((client, name.to_string()))
            .or_insert_with(|| Open {
                pull: Pull {
                    name: name.to_string(),
                    reference: reference.to_string(),
                    client,
                    to_manifest: took,
                    blobs: 0,
                    blobs_sent: 0,
                    bytes: 0,
                    took: Duration::ZERO,
                },
                started: now - took,
                last: now,
                wanted: HashSet::new(),
                streaming: 0,
            });
        entry.last = now;
        for b in blobs {
            if entry.wanted.insert(b) {
                entry.pull.blobs += 1;
            }
        }
        done
    }

    /// A blob stream of `digest` started for `client`.
    pub fn blob_started(&self, client: Option<IpAddr>, digest: &str) {
        let mut open = lock(&self.open);
        if let Some(o) = open
            .iter_mut()
            .find(|((c, _), o)| *c == client && o.wanted.contains(digest))
            .map(|(_, o)| o)
        {
            o.streaming += 1;
            o.last = Instant::now();
        }
    }

    /// A blob stream ended, `sent` bytes of it sent (`complete` if all).
    /// Returns the pull it finished, if it did.
    pub fn blob_ended(
        &self,
        client: Option<IpAddr>,
        digest: &str,
        sent: u64,
        complete: bool,
    ) -> Option<Pull> {
        let mut open = lock(&self.open);
        let key = open
            .iter()
            .find(|((c, _), o)| *c == client && o.wanted.contains(digest))
            .map(|(k, _)| k.clone())?;
        let o = open.get_mut(&key)?;
        let now = Instant::now();
        o.streaming = o.streaming.saturating_sub(1);
        o.pull.bytes += sent;
        o.last = now;
        o.pull.took = now - o.started;
        if complete {
            o.wanted.remove(digest);
            o.pull.blobs_sent += 1;
        }
        if o.wanted.is_empty() && o.streaming == 0 {
            return open.remove(&key).map(|o| o.pull);
        }
        None
    }

    /// Pulls quiet for [`QUIET`] with no stream open: over.
    pub fn quiet(&self) -> Vec<Pull> {
        let now = Instant::now();
        let mut open = lock(&self.open);
        let over: Vec<Key> = open
            .iter()
            .filter(|(_, o)| o.streaming == 0 && now - o.last >= QUIET)
            .map(|(k, _)| k.clone())
            .collect();
        over.into_iter()
            .filter_map(|k| open.remove(&k))
            .map(|o| o.pull)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pull_ends_with_its_last_blob_and_an_index_joins_its_manifest() {
        let p = Pulls::default();
        let ip = Some("10.0.0.7".parse().unwrap());
        p.manifest(ip, "app", "v1", Duration::from_millis(20), vec![]);
        p.manifest(
            ip,
            "app",
            "sha256:aa",
            Duration::from_millis(1),
            vec!["c".into(), "l1".into()],
        );
        p.blob_started(ip, "c");
        assert_eq!(p.blob_ended(ip, "c", 100, true), None);
        // Another client's stream of the same blob is not this pull's.
        assert_eq!(p.blob_ended(None, "l1", 5, true), None);
        p.blob_started(ip, "l1");
        let pull = p.blob_ended(ip, "l1", 2048, true).expect("finished");
        assert_eq!(pull.reference, "v1");
        assert_eq!((pull.blobs, pull.blobs_sent, pull.bytes), (2, 2, 2148));
        let line = pull.to_string();
        assert!(
            line.starts_with(
                "pulled app:v1 by 10.0.0.7: manifest in 20 ms, 2 of 2 blobs, 2.1 KiB in "
            ),
            "{line}"
        );
        assert!(p.quiet().is_empty());
    }

    #[test]
    fn a_pull_of_a_client_that_had_the_layers_ends_when_quiet() {
        let p = Pulls::default();
        p.manifest(
            None,
            "app",
            "latest",
            Duration::ZERO,
            vec!["c".into(), "l".into()],
        );
        assert!(p.quiet().is_empty());
        {
            let mut open = lock(&p.open);
            for o in open.values_mut() {
                o.last -= QUIET;
            }
        }
        let over = p.quiet();
        assert_eq!(over.len(), 1);
        assert_eq!(over[0].blobs_sent, 0);
    }
}
