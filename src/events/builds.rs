//! Builds as a person watching the registry sees them: the ones running,
//! each with its log so far (and a way to wait for more), the ones that
//! finished, with their outcome, and the images they made, by name.
//!
//! Everything is bounded: a log keeps its last [`LOG_LINES`] lines of at
//! most [`LINE_BYTES`] each, [`FINISHED`] finished builds are kept, and
//! [`IMAGES`] (name, tag, system) entries.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

pub const LOG_LINES: usize = 2000;
pub const LINE_BYTES: usize = 2048;
pub const FINISHED: usize = 50;
pub const IMAGES: usize = 2000;
/// The lines of a failed build's log a finished record keeps.
pub const TAIL_LINES: usize = 40;

/// What kind of image a build makes: a flake output or a package path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BuildKind {
    Flake,
    Packages,
}

impl BuildKind {
    pub fn name(self) -> &'static str {
        match self {
            BuildKind::Flake => "flake",
            BuildKind::Packages => "packages",
        }
    }
}

/// What a build is of, as a pull names it.
#[derive(Debug, Clone)]
pub struct BuildSubject {
    pub name: String,
    pub tag: String,
    pub system: String,
    pub kind: BuildKind,
    /// The commit the tag was resolved to, when the ref gate locked it.
    pub revision: Option<String>,
}

/// One layer of a built image, for the image page.
#[derive(Debug, Clone)]
pub struct LayerSummary {
    pub digest: String,
    pub size: u64,
    /// What the layer holds: store paths, or the tree or archive it is read from.
    pub paths: Vec<String>,
}

/// A built image: what its pages show.
#[derive(Debug, Clone)]
pub struct ImageSummary {
    pub subject: BuildSubject,
    pub manifest_digest: String,
    pub docker_digest: String,
    /// The config blob's JSON.
    pub config: serde_json::Value,
    pub platform: String,
    pub layers: Vec<LayerSummary>,
    pub built_at: SystemTime,
}

impl ImageSummary {
    /// Layers and config: the bytes a pull of this image fetches.
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

#[derive(Debug, Clone)]
pub enum Outcome {
    Built {
        image: Arc<ImageSummary>,
    },
    Failed {
        error: String,
        log_tail: Vec<String>,
    },
}

/// A log kept while its build runs: the last [`LOG_LINES`] lines.
#[derive(Debug, Default)]
struct Log {
    lines: VecDeque<String>,
    /// How many lines were ever added; `lines` ends with line `total - 1`.
    total: u64,
}

#[derive(Debug)]
pub struct Build {
    pub id: u64,
    pub subject: BuildSubject,
    pub started_at: SystemTime,
    started: Instant,
    log: Mutex<Log>,
    /// The log's `total` and whether the build ended, for live watchers.
    progress: watch::Sender<(u64, bool)>,
    outcome: OnceLock<(Outcome, Duration)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Build {
    fn new(id: u64, subject: BuildSubject) -> Build {
        Build {
            id,
            subject,
            started_at: SystemTime::now(),
            started: Instant::now(),
            log: Mutex::default(),
            progress: watch::channel((0, false)).0,
            outcome: OnceLock::new(),
        }
    }

    pub fn log_line(&self, line: &str) {
        let line = line.trim_end();
        if line.is_empty() {
            return;
        }
        let mut cut = line.len().min(LINE_BYTES);
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        let total = {
            let mut log = lock(&self.log);
            if log.lines.len() == LOG_LINES {
                log.lines.pop_front();
            }
            log.lines.push_back(line[..cut].to_string());
            log.total += 1;
            log.total
        };
        self.progress.send_replace((total, false));
    }

    /// Lines from number `from` on (those still kept), and the number of
    /// the line after the last one returned.
    pub fn lines_from(&self, from: u64) -> (Vec<String>, u64) {
        let log = lock(&self.log);
        let first = log.total - log.lines.len() as u64;
        let skip = from.saturating_sub(first) as usize;
        (log.lines.iter().skip(skip).cloned().collect(), log.total)
    }

    /// The last `n` lines.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let log = lock(&self.log);
        log.lines
            .iter()
            .skip(log.lines.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    /// Follows the log: changes when a line is added or the build ends.
    pub fn watch(&self) -> watch::Receiver<(u64, bool)> {
        self.progress.subscribe()
    }

    pub fn outcome(&self) -> Option<&(Outcome, Duration)> {
        self.outcome.get()
    }

    pub fn elapsed(&self) -> Duration {
        match self.outcome.get() {
            Some((_, d)) => *d,
            None => self.started.elapsed(),
        }
    }
}

#[derive(Default)]
struct State {
    next_id: u64,
    running: BTreeMap<u64, Arc<Build>>,
    /// Newest first.
    finished: VecDeque<Arc<Build>>,
    /// name -> (tag, system) -> the last image built.
    images: BTreeMap<String, BTreeMap<(String, String), Arc<ImageSummary>>>,
    image_count: usize,
    /// (name, tag) -> the digest of the index served over several systems.
    indexes: BTreeMap<(String, String), String>,
}

/// What changed, for pages that follow the list of builds.
#[derive(Debug, Clone)]
pub enum Change {
    Started(Arc<Build>),
    Finished(Arc<Build>),
}

pub struct Builds {
    state: Mutex<State>,
    changes: tokio::sync::broadcast::Sender<Change>,
}

impl Default for Builds {
    fn default() -> Self {
        Builds {
            state: Mutex::default(),
            changes: tokio::sync::broadcast::channel(64).0,
        }
    }
}

impl Builds {
    pub fn start(&self, subject: BuildSubject) -> Arc<Build> {
        let build = {
            let mut s = lock(&self.state);
            s.next_id += 1;
            let build = Arc::new(Build::new(s.next_id, subject));
            s.running.insert(build.id, build.clone());
            build
        };
        let _ = self.changes.send(Change::Started(build.clone()));
        build
    }

    /// The build ended: it moves to the finished list (unless `keep` is
    /// false: a name that is not an image is no build worth listing).
    pub fn finish(&self, build: &Arc<Build>, outcome: Outcome, keep: bool) {
        let elapsed = build.started.elapsed();
        let _ = build.outcome.set((outcome.clone(), elapsed));
        {
            let mut s = lock(&self.state);
            s.running.remove(&build.id);
            if keep {
                s.finished.push_front(build.clone());
                s.finished.truncate(FINISHED);
            }
            if let Outcome::Built { image } = &outcome {
                s.remember(image.clone());
            }
        }
        let total = lock(&build.log).total;
        build.progress.send_replace((total, true));
        let _ = self.changes.send(Change::Finished(build.clone()));
    }

    pub fn index_served(&self, name: &str, tag: &str, digest: &str) {
        let mut s = lock(&self.state);
        if s.indexes.len() >= IMAGES {
            s.indexes.pop_first();
        }
        s.indexes
            .insert((name.to_string(), tag.to_string()), digest.to_string());
    }

    pub fn running(&self) -> Vec<Arc<Build>> {
        lock(&self.state).running.values().cloned().collect()
    }

    pub fn finished(&self) -> Vec<Arc<Build>> {
        lock(&self.state).finished.iter().cloned().collect()
    }

    /// A running or recently finished build.
    pub fn get(&self, id: u64) -> Option<Arc<Build>> {
        let s = lock(&self.state);
        s.running
            .get(&id)
            .or_else(|| s.finished.iter().find(|b| b.id == id))
            .cloned()
    }

    /// Every image built of `name`, by (tag, system).
    pub fn images_of(&self, name: &str) -> Vec<Arc<ImageSummary>> {
        lock(&self.state)
            .images
            .get(name)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn index_of(&self, name: &str, tag: &str) -> Option<String> {
        lock(&self.state)
            .indexes
            .get(&(name.to_string(), tag.to_string()))
            .cloned()
    }

    /// The names of every image built, sorted.
    pub fn image_names(&self) -> Vec<String> {
        lock(&self.state).images.keys().cloned().collect()
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Change> {
        self.changes.subscribe()
    }
}

impl State {
    fn remember(&mut self, image: Arc<ImageSummary>) {
        let key = (image.subject.tag.clone(), image.subject.system.clone());
        let name = image.subject.name.clone();
        let fresh = self
            .images
            .entry(name)
            .or_default()
            .insert(key, image)
            .is_none();
        if fresh {
            self.image_count += 1;
        }
        // Over the bound: drop the oldest image of all.
        while self.image_count > IMAGES {
            let oldest = self
                .images
                .iter()
                .flat_map(|(n, m)| {
                    m.iter()
                        .map(move |(k, v)| (v.built_at, n.clone(), k.clone()))
                })
                .min();
            let Some((_, name, key)) = oldest else { break };
            if let Some(m) = self.images.get_mut(&name) {
                m.remove(&key);
                if m.is_empty() {
                    self.images.remove(&name);
                }
            }
            self.image_count -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(name: &str) -> BuildSubject {
        BuildSubject {
            name: name.into(),
            tag: "latest".into(),
            system: "x86_64-linux".into(),
            kind: BuildKind::Flake,
            revision: None,
        }
    }

    #[test]
    fn a_log_keeps_its_last_lines_and_a_reader_resumes_where_it_was() {
        let builds = Builds::default();
        let b = builds.start(subject("app"));
        for i in 0..(LOG_LINES + 10) {
            b.log_line(&format!("line {i}\n"));
        }
        b.log_line("   ");
        let (lines, next) = b.lines_from(0);
        assert_eq!(lines.len(), LOG_LINES);
        assert_eq!(lines[0], "line 10");
        assert_eq!(next, (LOG_LINES + 10) as u64);
        b.log_line("one more");
        assert_eq!(b.lines_from(next), (vec!["one more".to_string()], next + 1));
        b.log_line(&"é".repeat(LINE_BYTES));
        assert!(b.tail(1)[0].len() <= LINE_BYTES);
    }

    #[test]
    fn finished_builds_move_and_unkept_ones_vanish() {
        let builds = Builds::default();
        let kept = builds.start(subject("app"));
        let dropped = builds.start(subject("nope"));
        assert_eq!(builds.running().len(), 2);
        let mut watch = kept.watch();
        builds.finish(
            &kept,
            Outcome::Failed {
                error: "boom".into(),
                log_tail: vec![],
            },
            true,
        );
        assert!(watch.borrow_and_update().1, "watchers learn it ended");
        builds.finish(
            &dropped,
            Outcome::Failed {
                error: "not an image".into(),
                log_tail: vec![],
            },
            false,
        );
        assert!(builds.running().is_empty());
        assert_eq!(builds.finished().len(), 1);
        assert!(builds.get(kept.id).is_some());
        assert!(builds.get(dropped.id).is_none());
    }
}
