//! Which tags may be built: `latest`, a branch or tag of the source
//! (`refs/heads/*`, `refs/tags/*`), or a commit reachable from one. Forges
//! let anyone push `refs/pull/*` heads, and Nix fetches any commit a remote
//! has, so without this gate a stranger's commit would be evaluated and
//! built here. Everything is decided with git, before any nix process runs:
//! `git ls-remote` (cached for the manifest TTL, failures briefly), and for
//! a commit that no ref points at, a bare mirror of the branches and tags in
//! the state dir that answers "is it an ancestor of one of them".

use super::error::{NixError, Result};
use crate::nix::scheduler::{self, Job, Kind, Scheduler};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long a failed `ls-remote` is remembered: a flood of pulls for a
/// source that is down costs one git process per interval.
const FAILURE_TTL: Duration = Duration::from_secs(5);
/// Bound on one git process (ls-remote, a mirror fetch).
const GIT_TIMEOUT: Duration = Duration::from_secs(120);

/// Which commits may be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AllowCommits {
    /// Commits reachable from a branch or tag of the source.
    Reachable,
    /// Any commit the source has (for a source whose every ref is trusted).
    Any,
}

/// A branch or tag of a remote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitRef {
    /// `main`, `v1.2`
    pub short: String,
    /// `refs/heads/main`, `refs/tags/v1.2`
    pub full: String,
    /// The commit it points at (peeled, for annotated tags).
    pub commit: String,
}

/// What an allowed tag selects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selected {
    Latest,
    Ref(GitRef),
    Commit(String),
}

pub struct RefGate {
    scheduler: Arc<Scheduler>,
    mirrors: PathBuf,
    allow: AllowCommits,
    listed: moka::future::Cache<String, Arc<Vec<GitRef>>>,
    failed: moka::future::Cache<String, NixError>,
    /// Remotes whose mirror was fetched within the TTL.
    fetched: moka::future::Cache<String, ()>,
    /// (remote, commit) found reachable within the TTL: a pull of a cached
    /// commit image runs no git process.
    reachable: moka::future::Cache<(String, String), ()>,
}

pub use crate::vocab::is_commit;

impl RefGate {
    pub fn new(
        state_dir: &Path,
        ttl: Duration,
        allow: AllowCommits,
        scheduler: Arc<Scheduler>,
    ) -> RefGate {
        RefGate {
            scheduler,
            mirrors: state_dir.join("git"),
            allow,
            listed: moka::future::Cache::builder()
                .max_capacity(1_000)
                .time_to_live(ttl)
                .build(),
            failed: moka::future::Cache::builder()
                .max_capacity(1_000)
                .time_to_live(FAILURE_TTL)
                .build(),
            fetched: moka::future::Cache::builder()
                .max_capacity(1_000)
                .time_to_live(ttl)
                .build(),
            reachable: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// What `tag` selects in `remote`, or 404 `MANIFEST_UNKNOWN` when it
    /// names nothing buildable. `source` is the URL shown in errors.
    pub async fn select(&self, remote: &str, tag: &str, source: &str) -> Result<Selected> {
        if tag == "latest" {
            return Ok(Selected::Latest);
        }
        let unknown = || NixError::TagUnknown {
            tag: tag.to_string(),
            flake: source.to_string(),
        };
        if is_commit(tag) {
            let commit = tag.to_ascii_lowercase();
            if self.allow == AllowCommits::Any {
                return Ok(Selected::Commit(commit));
            }
            let key = (remote.to_string(), commit.clone());
            if self.reachable.contains_key(&key)
                || self.refs(remote).await?.iter().any(|r| r.commit == commit)
                || self.in_mirror(remote, &commit).await?
            {
                self.reachable.insert(key, ()).await;
                return Ok(Selected::Commit(commit));
            }
            return Err(unknown());
        }
        self.refs(remote)
            .await?
            .iter()
            .find(|r| r.short == tag)
            .cloned()
            .map(Selected::Ref)
            .ok_or_else(unknown)
    }

    /// The branches and tags of `remote` (branches first: a branch wins
    /// over a tag of the same name, as in git).
    pub async fn refs(&self, remote: &str) -> Result<Arc<Vec<GitRef>>> {
        if let Some(e) = self.failed.get(remote).await {
            return Err(e);
        }
        let listed = self
            .listed
            .try_get_with(remote.to_string(), async {
                ls_remote(&self.scheduler, remote).await.map(Arc::new)
            })
            .await;
        match listed {
            Ok(refs) => Ok(refs),
            // A full queue says nothing about the remote: not remembered.
            Err(e) if matches!(*e, NixError::Busy) => Err((*e).clone()),
            Err(e) => {
                self.failed.insert(remote.to_string(), (*e).clone()).await;
                Err((*e).clone())
            }
        }
    }

    /// Forget what was listed or fetched of `remote` (a push webhook said
    /// it moved): the next pull asks it again.
    pub async fn forget(&self, remote: &str) {
        self.listed.invalidate(remote).await;
        self.failed.invalidate(remote).await;
        self.fetched.invalidate(remote).await;
    }

    /// Is `commit` an ancestor of a branch or tag? Asks the mirror, which is
    /// fetched first if it has not been within the TTL.
    async fn in_mirror(&self, remote: &str, commit: &str) -> Result<bool> {
        let dir = self.mirror_dir(remote);
        if dir.exists() && contained(&self.scheduler, &dir, commit).await? {
            return Ok(true);
        }
        if self.fetched.contains_key(remote) {
            return Ok(false);
        }
        let fetched = self
            .fetched
            .try_get_with(
                remote.to_string(),
                fetch_mirror(&self.scheduler, &dir, remote),
            )
            .await;
        if let Err(e) = fetched {
            return Err((*e).clone());
        }
        contained(&self.scheduler, &dir, commit).await
    }

    fn mirror_dir(&self, remote: &str) -> PathBuf {
        let h = hex::encode(Sha256::digest(remote.as_bytes()));
        self.mirrors.join(&h[..24])
    }
}

async fn git(
    scheduler: &Scheduler,
    args: &[&str],
    dir: Option<&Path>,
) -> Result<std::process::Output> {
    let mut all: Vec<String> = Vec::new();
    if let Some(d) = dir {
        all.extend(["-C".to_string(), d.to_string_lossy().into_owned()]);
    }
    all.extend(args.iter().map(|a| a.to_string()));
    let job = Job {
        kind: Kind::Git,
        program: "git",
        args: all,
        // Never wait on a prompt for credentials.
        env: vec![("GIT_TERMINAL_PROMPT", "0"), ("GIT_ASKPASS", "true")],
        timeout: GIT_TIMEOUT,
        stderr_lines: None,
        build_slot: false,
    };
    scheduler.run(job).await.map_err(|f| match f {
        scheduler::Failure::Busy => NixError::Busy,
        scheduler::Failure::Spawn(e) => NixError::Git(format!("cannot run git: {e}")),
        scheduler::Failure::Timeout => NixError::Git(format!(
            "git {} timed out after {} s",
            args.first().unwrap_or(&""),
            GIT_TIMEOUT.as_secs()
        )),
    })
}

async fn ls_remote(scheduler: &Scheduler, remote: &str) -> Result<Vec<GitRef>> {
    // Patterns, not `--heads` (deprecated for `--branches` in git 2.46,
    // which older gits refuse): `refs/heads/*` works on every version.
    let out = git(
        scheduler,
        &["ls-remote", remote, "refs/heads/*", "refs/tags/*"],
        None,
    )
    .await?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        tracing::warn!(remote, stderr = %stderr.trim(), "git ls-remote failed");
        return Err(NixError::Git(format!(
            "git ls-remote {remote} failed: {}",
            stderr.lines().last().unwrap_or("").trim()
        )));
    }
    Ok(parse_ls_remote(&String::from_utf8_lossy(&out.stdout)))
}

/// `git ls-remote REMOTE 'refs/heads/*' 'refs/tags/*'` output -> refs; an annotated tag's
/// commit is its peeled (`^{}`) line.
pub fn parse_ls_remote(text: &str) -> Vec<GitRef> {
    let mut refs: Vec<GitRef> = Vec::new();
    for line in text.lines() {
        let Some((sha, full)) = line.split_once('\t') else {
            continue;
        };
        let sha = sha.trim().to_ascii_lowercase();
        if let Some(tag) = full.strip_suffix("^{}") {
            if let Some(r) = refs.iter_mut().find(|r| r.full == tag) {
                r.commit = sha;
            }
            continue;
        }
        let short = full
            .strip_prefix("refs/heads/")
            .or_else(|| full.strip_prefix("refs/tags/"));
        if let Some(s) = short {
            refs.push(GitRef {
                short: s.to_string(),
                full: full.to_string(),
                commit: sha,
            });
        }
    }
    // Branches win over tags of the same name (stable sort keeps order).
    refs.sort_by_key(|r| !r.full.starts_with("refs/heads/"));
    let mut seen = std::collections::HashSet::new();
    refs.retain(|r| seen.insert(r.short.clone()));
    refs
}

async fn fetch_mirror(scheduler: &Scheduler, dir: &Path, remote: &str) -> Result<()> {
    if !dir.join("HEAD").exists() {
        std::fs::create_dir_all(dir)
            .map_err(|e| NixError::Git(format!("{}: {e}", dir.display())))?;
        let out = git(scheduler, &["init", "--quiet", "--bare"], Some(dir)).await?;
        if !out.status.success() {
            return Err(NixError::Git(format!(
                "git init {}: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
    }
    // Only branches and tags: refs/pull/* never enter the mirror. A full
    // fetch, not a commits-only partial one: in a partial clone, asking
    // about an unknown commit fetches it lazily from the remote (git 2.45
    // has --no-lazy-fetch; Debian 12 ships 2.39).
    let out = git(
        scheduler,
        &[
            "fetch",
            "--quiet",
            "--prune",
            "--no-tags",
            "--",
            remote,
            "+refs/heads/*:refs/heads/*",
            "+refs/tags/*:refs/tags/*",
        ],
        Some(dir),
    )
    .await?;
    if !out.status.success() {
        return Err(NixError::Git(format!(
            "git fetch {remote} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Does a branch or tag of the mirror contain `commit`? (An unknown commit
/// is in none of them.)
async fn contained(scheduler: &Scheduler, dir: &Path, commit: &str) -> Result<bool> {
    let out = git(
        scheduler,
        &[
            "for-each-ref",
            "--count=1",
            "--format=%(refname)",
            "--contains",
            commit,
            "refs/heads",
            "refs/tags",
        ],
        Some(dir),
    )
    .await?;
    Ok(out.status.success() && !out.stdout.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ls_remote_output_peels_tags_and_prefers_branches() {
        let text = "\
1111111111111111111111111111111111111111\trefs/heads/main
2222222222222222222222222222222222222222\trefs/tags/v1
3333333333333333333333333333333333333333\trefs/tags/v1^{}
4444444444444444444444444444444444444444\trefs/tags/main
5555555555555555555555555555555555555555\trefs/pull/1/head
";
        let refs = parse_ls_remote(text);
        assert_eq!(refs.len(), 2);
        assert_eq!(
            (refs[0].short.as_str(), refs[0].full.as_str()),
            ("main", "refs/heads/main")
        );
        assert_eq!(
            refs[1].commit,
            "3".repeat(40),
            "the peeled commit of an annotated tag"
        );
        assert!(refs.iter().all(|r| !r.full.starts_with("refs/pull/")));
    }
}
