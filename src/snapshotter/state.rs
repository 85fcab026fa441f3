//! The snapshots containerd asked for, as containerd's own overlayfs
//! snapshotter keeps them: key -> kind, parent, labels, times, and a
//! directory `snapshots/<id>/` with `fs` (the layer's tree, or the upper
//! dir of an active snapshot) and `work` (overlayfs's work dir).
//!
//! On disk under the root, so a restarted snapshotter knows every snapshot
//! containerd knows: `metadata.json`, the whole state, replaced atomically,
//! and `journal.jsonl`, one synced line per change since. A change costs
//! one short append whatever the number of snapshots: rewriting the whole
//! state at each change made a 100-layer image's layers cost more the
//! higher they sat (0.6 to 5.8 ms a save, measured). The journal is folded
//! into `metadata.json` at start and once it outgrows it.

use crate::image::layer::tree::TreeCost;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
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

/// One line of the journal: the snapshots a change touched, each as it is
/// now (`None`: removed), and the id counter.
#[derive(Serialize, Deserialize)]
struct Change {
    next_id: u64,
    set: BTreeMap<String, Option<Snapshot>>,
}

/// The state and where it is kept. Dereferences to the state; after
/// changing it, `record` the keys changed.
pub struct Metadata {
    root: PathBuf,
    state: State,
    journal: std::fs::File,
    journal_bytes: u64,
    base_bytes: u64,
    /// `JOURNAL_MIN_FOLD`, smaller in tests.
    min_fold: u64,
}

const BASE: &str = "metadata.json";
const JOURNAL: &str = "journal.jsonl";
/// The journal is folded in once it is longer than the state and than this.
const JOURNAL_MIN_FOLD: u64 = 1 << 20;

impl Metadata {
    /// The state as last recorded: `metadata.json` with the journal's
    /// changes applied. A last line cut short (a crash while appending) is
    /// a change never acknowledged, and is dropped; any other bad line is
    /// an error. The journal is then folded in.
    pub fn open(root: &Path) -> std::io::Result<Metadata> {
        let named = |e: &dyn std::fmt::Display, file: &str| {
            std::io::Error::other(format!("{}/{file}: {e}", root.display()))
        };
        let mut state = match std::fs::read(root.join(BASE)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| named(&e, BASE))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(e),
        };
        let mut replayed = 0;
        match std::fs::File::open(root.join(JOURNAL)) {
            Ok(f) => {
                let lines: Vec<String> = std::io::BufReader::new(f)
                    .lines()
                    .collect::<Result<_, _>>()?;
                for (n, line) in lines.iter().enumerate() {
                    match serde_json::from_str::<Change>(line) {
                        Ok(change) => {
                            state.apply(change);
                            replayed += 1;
                        }
                        Err(_) if n + 1 == lines.len() => {
                            tracing::warn!(
                                root = %root.display(),
                                "the journal's last line was cut short (a crash while it was written); that change was never acknowledged and is dropped"
                            );
                        }
                        Err(e) => return Err(named(&format!("line {}: {e}", n + 1), JOURNAL)),
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let journal = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(root.join(JOURNAL))?;
        let mut m = Metadata {
            root: root.to_path_buf(),
            state,
            journal,
            journal_bytes: 0,
            base_bytes: 0,
            min_fold: JOURNAL_MIN_FOLD,
        };
        m.fold()?;
        tracing::debug!(replayed, "snapshotter journal folded in");
        Ok(m)
    }

    /// Make the changes to `keys` durable: one line, appended and synced.
    /// On an error the line is cut off again, and the caller undoes the
    /// change in memory.
    pub fn record(&mut self, keys: &[&str]) -> std::io::Result<()> {
        let change = Change {
            next_id: self.state.next_id,
            set: keys
                .iter()
                .map(|k| (k.to_string(), self.state.snapshots.get(*k).cloned()))
                .collect(),
        };
        let mut line = serde_json::to_vec(&change).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let appended = self
            .journal
            .write_all(&line)
            .and_then(|()| self.journal.sync_data());
        if let Err(e) = appended {
            let _ = self.journal.set_len(self.journal_bytes);
            return Err(e);
        }
        self.journal_bytes += line.len() as u64;
        if self.journal_bytes > self.base_bytes.max(self.min_fold) {
            // The change is durable already: a fold that fails is not a
            // failed change (containerd would be told it failed, and find
            // it after a restart). The next change tries again.
            if let Err(e) = self.fold() {
                tracing::warn!(error = %e, root = %self.root.display(), "cannot fold the snapshotter's journal into metadata.json; the next change tries again");
            }
        }
        Ok(())
    }

    /// Write the whole state to `metadata.json` (a temporary file, synced,
    /// renamed over the old one), then empty the journal. A crash between
    /// the two replays the journal over a state that already holds it:
    /// each line sets whole snapshots, so replaying it again changes
    /// nothing.
    fn fold(&mut self) -> std::io::Result<()> {
        let mut tmp = tempfile::NamedTempFile::new_in(&self.root)?;
        serde_json::to_writer(&mut tmp, &self.state).map_err(std::io::Error::other)?;
        tmp.flush()?;
        tmp.as_file().sync_all()?;
        let base_bytes = tmp.as_file().metadata()?.len();
        tmp.persist(self.root.join(BASE)).map_err(|e| e.error)?;
        self.journal.set_len(0)?;
        self.journal.sync_all()?;
        self.base_bytes = base_bytes;
        self.journal_bytes = 0;
        Ok(())
    }
}

impl std::ops::Deref for Metadata {
    type Target = State;
    fn deref(&self) -> &State {
        &self.state
    }
}

impl std::ops::DerefMut for Metadata {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.state
    }
}

impl State {
    fn apply(&mut self, change: Change) {
        self.next_id = self.next_id.max(change.next_id);
        for (key, snapshot) in change.set {
            match snapshot {
                Some(s) => self.snapshots.insert(key, s),
                None => self.snapshots.remove(&key),
            };
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(id: u64, kind: Kind, parent: &str) -> Snapshot {
        Snapshot {
            id,
            kind,
            parent: parent.into(),
            labels: [(
                "containerd.io/snapshot.ref".to_string(),
                format!("chain{id}"),
            )]
            .into(),
            created: (1, 2),
            updated: (3, 4),
            usage: Some((4096, 1)),
            made: None,
        }
    }

    /// The state as JSON, to compare two states.
    fn json(m: &State) -> String {
        serde_json::to_string(m).unwrap()
    }

    /// Prepare, commit (two keys in one change), update, remove: as
    /// containerd drives a layer's unpacking.
    fn drive(m: &mut Metadata, layers: u64) {
        for _ in 0..layers {
            let id = m.new_id();
            let (active, name) = (format!("ns/{id}/extract"), format!("ns/{id}/chain"));
            let parent = if id == 1 {
                String::new()
            } else {
                format!("ns/{}/chain", id - 1)
            };
            m.snapshots
                .insert(active.clone(), snapshot(id, Kind::Active, &parent));
            m.record(&[&active]).unwrap();
            let s = m.snapshots.remove(&active).unwrap();
            m.snapshots.insert(
                name.clone(),
                Snapshot {
                    kind: Kind::Committed,
                    ..s
                },
            );
            m.record(&[&active, &name]).unwrap();
        }
    }

    #[test]
    fn a_reopened_root_has_every_recorded_change() {
        let root = tempfile::tempdir().unwrap();
        let mut m = Metadata::open(root.path()).unwrap();
        drive(&mut m, 5);
        let top = "ns/5/chain";
        m.snapshots
            .get_mut(top)
            .unwrap()
            .labels
            .insert("x".into(), "y".into());
        m.record(&[top]).unwrap();
        // The newest snapshot removed: its id is still never given again.
        m.snapshots.remove(top);
        m.record(&[top]).unwrap();
        let before = json(&m);
        assert_eq!(m.snapshots.len(), 4);
        drop(m);
        let journal = std::fs::read_to_string(root.path().join(JOURNAL)).unwrap();
        assert_eq!(
            journal.lines().count(),
            12,
            "one line per change: {journal}"
        );
        let mut again = Metadata::open(root.path()).unwrap();
        assert_eq!(json(&again), before);
        // Folded in at start: the journal is empty, the state whole.
        assert_eq!(
            std::fs::metadata(root.path().join(JOURNAL)).unwrap().len(),
            0
        );
        let base: State =
            serde_json::from_slice(&std::fs::read(root.path().join(BASE)).unwrap()).unwrap();
        assert_eq!(json(&base), before);
        assert_eq!(again.new_id(), 6);
    }

    #[test]
    fn a_line_cut_short_at_the_end_is_dropped_and_one_in_the_middle_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let mut m = Metadata::open(root.path()).unwrap();
        drive(&mut m, 2);
        let two = json(&m);
        drive(&mut m, 1);
        drop(m);
        let path = root.path().join(JOURNAL);
        let journal = std::fs::read(&path).unwrap();
        // The third layer's commit, cut halfway: its prepare stands.
        let last_line = journal[..journal.len() - 1]
            .iter()
            .rposition(|&b| b == b'\n')
            .unwrap()
            + 1;
        let cut = last_line + (journal.len() - last_line) / 2;
        std::fs::write(&path, &journal[..cut]).unwrap();
        let m = Metadata::open(root.path()).unwrap();
        assert!(m.snapshots.contains_key("ns/3/extract"));
        assert!(!m.snapshots.contains_key("ns/3/chain"));
        let mut want: State = serde_json::from_str(&two).unwrap();
        want.next_id = 3;
        want.snapshots.insert(
            "ns/3/extract".into(),
            snapshot(3, Kind::Active, "ns/2/chain"),
        );
        assert_eq!(json(&m), json(&want));
        drop(m);

        let mut damaged = journal[..last_line].to_vec();
        damaged.extend_from_slice(b"{not json}\n");
        damaged.extend_from_slice(&journal[last_line..]);
        std::fs::write(&path, damaged).unwrap();
        let e = Metadata::open(root.path())
            .err()
            .expect("a bad line before the last");
        let e = e.to_string();
        assert!(e.contains("journal.jsonl: line 6"), "{e}");
    }

    #[test]
    fn the_journal_is_folded_in_once_it_outgrows_the_state() {
        let root = tempfile::tempdir().unwrap();
        let mut m = Metadata::open(root.path()).unwrap();
        m.min_fold = 2048;
        drive(&mut m, 40);
        let journal = std::fs::metadata(root.path().join(JOURNAL)).unwrap().len();
        let base = std::fs::metadata(root.path().join(BASE)).unwrap().len();
        assert!(base > 2048, "folded: the state is {base} bytes");
        assert!(
            journal <= base.max(2048),
            "journal {journal} bytes, state {base}"
        );
        let before = json(&m);
        drop(m);
        assert_eq!(json(&Metadata::open(root.path()).unwrap()), before);
    }

    #[test]
    fn a_fold_that_fails_fails_no_change() {
        let root = tempfile::tempdir().unwrap();
        let mut m = Metadata::open(root.path()).unwrap();
        m.min_fold = 1;
        // metadata.json cannot be replaced: a directory is in its way.
        std::fs::remove_file(root.path().join(BASE)).unwrap();
        std::fs::create_dir_all(root.path().join(BASE).join("x")).unwrap();
        drive(&mut m, 3);
        let before = json(&m);
        drop(m);
        std::fs::remove_dir_all(root.path().join(BASE)).unwrap();
        assert_eq!(json(&Metadata::open(root.path()).unwrap()), before);
    }

    /// A crash after `metadata.json` was replaced but before the journal
    /// was emptied: the journal is replayed over a state that holds it.
    #[test]
    fn a_journal_replayed_over_its_own_fold_changes_nothing() {
        let root = tempfile::tempdir().unwrap();
        let mut m = Metadata::open(root.path()).unwrap();
        drive(&mut m, 3);
        m.snapshots.remove("ns/3/chain");
        m.record(&["ns/3/chain"]).unwrap();
        let journal = std::fs::read(root.path().join(JOURNAL)).unwrap();
        let before = json(&m);
        m.fold().unwrap();
        drop(m);
        std::fs::write(root.path().join(JOURNAL), journal).unwrap();
        assert_eq!(json(&Metadata::open(root.path()).unwrap()), before);
    }
}
