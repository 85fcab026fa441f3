//! What the state dir keeps, and for how long. Without this it grows with
//! history: a GC root per name and tag ever pulled (so `nix-collect-garbage`
//! frees nothing), a JSON document per manifest ever served, an index line
//! per layer ever digested, a git mirror per source.
//!
//! A sweep (at start, then hourly) removes:
//! - GC roots not served within `--keep-roots` (a served image's root has
//!   its mtime set to the time of the pull, at most once an hour, also for
//!   pulls by digest), so that a Nix GC can take their closures;
//! - JSON documents not served within that time;
//! - index lines of layers whose store paths are gone (rewriting
//!   `layers.jsonl` with one line per live digest, so restart time follows
//!   what is live, not what ever was);
//! - with `--max-state-mib`, least recently used kept layer files
//!   (compressed layers, archive members) and then git mirrors (fetched
//!   again when needed) until the dir fits. Kept layer files written
//!   until the next sweep stay within what the rest of the dir leaves.

use crate::image::kept::KeptFiles;
use crate::image::ledger::DigestIndex;
use crate::nix::Nix;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone)]
pub struct Policy {
    pub state_dir: PathBuf,
    /// GC roots and documents not served for this long go.
    pub keep: Duration,
    /// Most bytes the state dir may hold.
    pub max_bytes: Option<u64>,
}

/// What a sweep did (logged).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub roots_removed: usize,
    pub documents_removed: usize,
    pub layers_kept: usize,
    pub layers_dropped: usize,
    pub mirrors_removed: usize,
    /// The state dir's size after the sweep, measured with `--max-state-mib` only.
    pub state_bytes: Option<u64>,
}

pub fn sweep(policy: &Policy, nix: &Nix, index: &DigestIndex, kept: &KeptFiles) -> Report {
    let mut r = Report::default();
    let cutoff = SystemTime::now()
        .checked_sub(policy.keep)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    for (path, _) in older_than(nix.gcroots(), cutoff) {
        if std::fs::remove_file(&path).is_ok() {
            tracing::info!(root = %path.display(), "GC root not served within --keep-roots; removed");
            r.roots_removed += 1;
        }
    }
    for (path, name) in older_than(index.json_dir(), cutoff) {
        if std::fs::remove_file(&path).is_ok() {
            // `<hex>` is a document, `<hex>.root` its note.
            if let Some(digest) = crate::vocab::Digest::from_hex(&name) {
                index.forget_json(&digest);
                r.documents_removed += 1;
            }
        }
    }
    match index.compact() {
        Ok((live, dropped)) => (r.layers_kept, r.layers_dropped) = (live, dropped),
        Err(e) => tracing::error!(error = %e, "cannot compact layers.jsonl"),
    }
    // The dir is walked only to enforce a cap: a git mirror can hold many
    // files, and nothing else needs the total.
    if let Some(max) = policy.max_bytes {
        let mut bytes = fit_kept(max, &policy.state_dir, kept);
        if bytes > max {
            let mut mirrors = older_than(&policy.state_dir.join("git"), SystemTime::now());
            // Least recently fetched first.
            mirrors.sort_by_key(|(p, _)| mtime(p));
            for (dir, _) in mirrors {
                if bytes <= max {
                    break;
                }
                let size = dir_bytes(&dir);
                if std::fs::remove_dir_all(&dir).is_ok() {
                    r.mirrors_removed += 1;
                    bytes = bytes.saturating_sub(size);
                }
            }
        }
        // Mirrors removed leave kept files more room.
        kept.shrink_to(max.saturating_sub(bytes.saturating_sub(kept.bytes())));
        if bytes > max {
            tracing::warn!(
                bytes,
                max,
                "the state dir is over --max-state-mib with nothing left to remove"
            );
        }
        r.state_bytes = Some(bytes);
    }
    r
}

/// Kept layer files fit in what the rest of the state dir leaves them of
/// `max` bytes, now and as they are written until this is called again
/// (at start, before the first GET, then by each sweep). Returns the
/// state dir's bytes.
pub fn fit_kept(max: u64, state_dir: &Path, kept: &KeptFiles) -> u64 {
    let others = dir_bytes(state_dir).saturating_sub(kept.bytes());
    kept.shrink_to(max.saturating_sub(others));
    others + kept.bytes()
}

fn mtime(p: &Path) -> SystemTime {
    p.symlink_metadata()
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Entries of `dir` (not followed: a GC root's own mtime counts) last
/// modified before `cutoff`, with their names.
fn older_than(dir: &Path, cutoff: SystemTime) -> Vec<(PathBuf, String)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| mtime(&e.path()) < cutoff)
        .map(|e| (e.path(), e.file_name().to_string_lossy().into_owned()))
        .collect()
}

/// Bytes of regular files under `dir`, without following symlinks.
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::layer::{LayerSource, Owner};
    use crate::image::manifest::{JsonBlob, LayerDigest};
    use crate::nix::scheduler::{Bounds, Scheduler};
    use std::sync::Arc;

    fn age(path: &Path, days: u64) {
        let t = SystemTime::now() - Duration::from_secs(days * 86_400);
        let f = std::fs::File::options()
            .write(true)
            .open(path)
            .or_else(|_| std::fs::File::open(path))
            .unwrap();
        f.set_modified(t).unwrap();
    }

    fn age_link(path: &Path, days: u64) {
        let secs = (SystemTime::now() - Duration::from_secs(days * 86_400))
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let ts = [libc::timespec {
            tv_sec: secs,
            tv_nsec: 0,
        }; 2];
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid C string and two timespecs.
        let rc = unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                ts.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        assert_eq!(rc, 0);
    }

    /// Old roots and documents go, served ones stay (also when served by
    /// digest: the document's note keeps its root); index lines of layers
    /// whose paths are gone go; the git mirror goes when over the cap.
    #[test]
    fn sweep_keeps_what_was_served() {
        let state = tempfile::tempdir().unwrap();
        let store = tempfile::tempdir().unwrap();
        let nix = Nix::new(
            state.path(),
            Duration::from_secs(1),
            Arc::new(Scheduler::new(Bounds {
                max_processes: 1,
                max_builds: 1,
                max_queued: 1,
            })),
            crate::nix::NixVersion::parse("nix (Nix) 2.8.0").unwrap(),
        )
        .unwrap();
        let index = DigestIndex::open(state.path()).unwrap();
        // Each image's root with a link Nix made beside it (another
        // output's): the two are kept or removed together.
        let root = |n: &str| nix.gcroots().join(n);
        let (old_root, kept_root) = (root("aaaaaaaaaaaaaaaa-old"), root("bbbbbbbbbbbbbbbb-kept"));
        let (old_bin, kept_bin) = (
            root("aaaaaaaaaaaaaaaa-old-bin"),
            root("bbbbbbbbbbbbbbbb-kept-bin"),
        );
        for link in [&old_root, &kept_root, &old_bin, &kept_bin] {
            std::os::unix::fs::symlink(store.path(), link).unwrap();
        }
        let old_doc = JsonBlob::new(
            "application/vnd.oci.image.manifest.v1+json",
            &serde_json::json!({"a": 1}),
        );
        let kept_doc = JsonBlob::new(
            "application/vnd.oci.image.manifest.v1+json",
            &serde_json::json!({"b": 2}),
        );
        index.put_json(&old_doc).unwrap();
        index.put_json(&kept_doc).unwrap();
        index.link_root(&[&old_doc.digest], &old_root).unwrap();
        index.link_root(&[&kept_doc.digest], &kept_root).unwrap();
        let hex = |d: &str| d.trim_start_matches("sha256:").to_string();
        for d in [&old_doc.digest, &kept_doc.digest] {
            age(&index.json_dir().join(hex(d)), 40);
            age(&index.json_dir().join(hex(d) + ".root"), 40);
        }
        for link in [&old_root, &kept_root, &old_bin, &kept_bin] {
            age_link(link, 40);
        }
        // A pull by digest, after a restart (nothing touched yet).
        let index = DigestIndex::open(state.path()).unwrap();
        assert!(index.get_json(&kept_doc.digest).is_some());

        let live = store.path().join("live");
        std::fs::write(&live, b"x").unwrap();
        let src = |p: PathBuf| LayerSource::StorePaths {
            paths: vec![p],
            mtime: 1,
            owner: Owner::default(),
            perms: vec![],
        };
        let digest = |c: char| LayerDigest {
            digest: format!("sha256:{}", c.to_string().repeat(64)),
            size: 1024,
            diff_id: None,
            packed: None,
        };
        for _ in 0..3 {
            index
                .record_layer(src(live.clone()).key(), &src(live.clone()), &digest('1'))
                .unwrap();
        }
        let gone = store.path().join("gone");
        index
            .record_layer(src(gone.clone()).key(), &src(gone), &digest('2'))
            .unwrap();

        let mirror = state.path().join("git/abc");
        std::fs::create_dir_all(&mirror).unwrap();
        std::fs::write(mirror.join("pack"), vec![0u8; 1 << 20]).unwrap();

        let policy = Policy {
            state_dir: state.path().to_path_buf(),
            keep: Duration::from_secs(30 * 86_400),
            max_bytes: Some(512 * 1024),
        };
        let kept = crate::image::kept::KeptFiles::open(state.path(), u64::MAX).unwrap();
        let r = sweep(&policy, &nix, &index, &kept);
        assert_eq!(r.roots_removed, 2, "{r:?}");
        assert!(old_root.symlink_metadata().is_err() && old_bin.symlink_metadata().is_err());
        assert!(kept_root.symlink_metadata().is_ok() && kept_bin.symlink_metadata().is_ok());
        assert_eq!(r.documents_removed, 1, "{r:?}");
        assert!(index.get_json(&old_doc.digest).is_none());
        assert!(index.get_json(&kept_doc.digest).is_some());
        assert_eq!((r.layers_kept, r.layers_dropped), (1, 1), "{r:?}");
        let lines = std::fs::read_to_string(state.path().join("layers.jsonl")).unwrap();
        assert_eq!(lines.lines().count(), 1, "{lines}");
        assert!(index.layer(&digest('2').digest).is_none());
        assert_eq!(r.mirrors_removed, 1, "{r:?}");
        assert!(r.state_bytes.unwrap() <= 512 * 1024, "{r:?}");
        assert!(dir_bytes(state.path()) <= 512 * 1024, "{r:?}");
        // The compacted index loads the same after a restart.
        let index = DigestIndex::open(state.path()).unwrap();
        assert!(index.layer(&digest('1').digest).is_some());
    }
}
