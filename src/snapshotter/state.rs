//! The snapshots containerd asked for, as containerd's own overlayfs
//! snapshotter keeps them: key -> kind, parent, labels, times, and a
//! directory `snapshots/<id>/` with `fs` (the layer's tree, or the upper
//! dir of an active snapshot) and `work` (overlayfs's work dir). Kept in
//! `metadata.json` under the root, replaced atomically after every change,
//! so a restarted snapshotter knows every snapshot containerd knows.

use crate::image::layer::tree::TreeCost;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    View,
    Active,
    Committed,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: u64,
    pub kind: Kind,
    /// The parent's key, empty for none.
    #[serde(default)]
    pub parent: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Seconds and nanoseconds since the epoch.
    pub created: (i64, i32),
    pub updated: (i64, i32),
    /// A committed snapshot's disk use, measured when it was committed.
    #[serde(default)]
    pub usage: Option<(i64, i64)>,
    /// A snapshot made from the store: the layer's diff ID and what its
    /// tree cost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub made: Option<Made>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Made {
    pub diff_id: String,
    pub cost: TreeCost,
}

#[derive(Default, Serialize, Deserialize)]
pub struct State {
    next_id: u64,
    pub snapshots: BTreeMap<String, Snapshot>,
}

pub fn now() -> (i64, i32) {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() as i64, d.subsec_nanos() as i32)
}

impl State {
    pub fn load(root: &Path) -> std::io::Result<State> {
        match std::fs::read(root.join("metadata.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::other(format!("{}/metadata.json: {e}", root.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(e),
        }
    }

    /// Written to a temporary file, synced, renamed over the old one.
    pub fn save(&self, root: &Path) -> std::io::Result<()> {
        let mut tmp = tempfile::NamedTempFile::new_in(root)?;
        serde_json::to_writer(&mut tmp, self).map_err(std::io::Error::other)?;
        tmp.flush()?;
        tmp.as_file().sync_all()?;
        tmp.persist(root.join("metadata.json"))
            .map_err(|e| e.error)?;
        Ok(())
    }

    pub fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// The keys from `key`'s parent down to the bottom layer.
    pub fn parents(&self, key: &str) -> Vec<&Snapshot> {
        let mut out = Vec::new();
        let mut at = self.snapshots.get(key).map(|s| s.parent.as_str());
        while let Some(p) = at.filter(|p| !p.is_empty()) {
            match self.snapshots.get(p) {
                Some(s) => {
                    out.push(s);
                    at = Some(s.parent.as_str());
                }
                None => break,
            }
        }
        out
    }

    pub fn has_children(&self, key: &str) -> bool {
        self.snapshots.values().any(|s| s.parent == key)
    }
}

pub fn dir_of(root: &Path, id: u64) -> PathBuf {
    root.join("snapshots").join(id.to_string())
}

/// Disk a directory tree takes: blocks of each inode counted once.
pub fn disk_usage(dir: &Path) -> (i64, i64) {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let (mut bytes, mut inodes) = (0i64, 0i64);
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                todo.push(e.path());
            }
            if seen.insert((m.dev(), m.ino())) {
                bytes += (m.blocks() * 512) as i64;
                inodes += 1;
            }
        }
    }
    (bytes, inodes)
}
