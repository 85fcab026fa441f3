//! A value loaded from files and loaded again when they change (mtime and
//! size, compared every [`POLL`]), for the TLS pair and the credential
//! files: a renewal or an edit takes effect without a restart. Files that
//! do not load keep the previous value in service, and are tried again on
//! their next change (a writer may be half way through).

use std::fmt::Display;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

pub const POLL: Duration = Duration::from_secs(2);

type Loader<T> = Box<dyn Fn(&[PathBuf]) -> Result<T, String> + Send + Sync>;

pub struct Reloading<T> {
    /// What the files hold, for the log.
    what: &'static str,
    paths: Vec<PathBuf>,
    load: Loader<T>,
    current: RwLock<(Stamp, Arc<T>)>,
}

/// What tells a changed file: its mtime and size.
type Stamp = Vec<(Option<SystemTime>, u64)>;

fn stamp(paths: &[PathBuf]) -> Stamp {
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .map(|m| (m.modified().ok(), m.len()))
                .unwrap_or((None, 0))
        })
        .collect()
}

impl<T: Send + Sync + 'static> Reloading<T> {
    /// Load now (an error here is the caller's to report) and watch the
    /// files for as long as the value is in use.
    pub fn new<E: Display>(
        what: &'static str,
        paths: Vec<PathBuf>,
        load: impl Fn(&[PathBuf]) -> Result<T, E> + Send + Sync + 'static,
    ) -> Result<Arc<Reloading<T>>, E> {
        // Stamped before reading: a change during the load is seen later.
        let s = stamp(&paths);
        let first = load(&paths)?;
        let this = Arc::new(Reloading {
            what,
            paths,
            load: Box::new(move |p| load(p).map_err(|e| e.to_string())),
            current: RwLock::new((s, Arc::new(first))),
        });
        let watcher = Arc::downgrade(&this);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL);
            loop {
                tick.tick().await;
                let Some(this) = watcher.upgrade() else {
                    return;
                };
                this.reload_if_changed();
            }
        });
        Ok(this)
    }

    /// The value as last loaded.
    pub fn get(&self) -> Arc<T> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    fn reload_if_changed(&self) {
        let s = stamp(&self.paths);
        if self.current.read().unwrap_or_else(|p| p.into_inner()).0 == s {
            return;
        }
        let loaded = (self.load)(&self.paths);
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        cur.0 = s;
        match loaded {
            Ok(v) => {
                cur.1 = Arc::new(v);
                tracing::info!(what = self.what, "reloaded");
            }
            Err(e) => {
                tracing::warn!(what = self.what, error = %e, "changed but cannot be loaded; keeping the previous one")
            }
        }
    }
}

impl<T> std::fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("what", &self.what)
            .field("paths", &self.paths)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_change_is_loaded_and_a_bad_one_keeps_the_old_value() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("n");
        std::fs::write(&p, "1").unwrap();
        let r = Reloading::new("a number", vec![p.clone()], |ps| {
            std::fs::read_to_string(&ps[0])
                .unwrap()
                .trim()
                .parse::<u32>()
        })
        .unwrap();
        assert_eq!(*r.get(), 1);
        std::fs::write(&p, "22").unwrap();
        r.reload_if_changed();
        assert_eq!(*r.get(), 22);
        std::fs::write(&p, "not a number").unwrap();
        r.reload_if_changed();
        assert_eq!(*r.get(), 22);
    }
}
