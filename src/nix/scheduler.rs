//! Every external process flakeport starts (`nix build`, `nix eval`, `nix
//! path-info`, `git`) runs here, under one set of bounds that holds for any
//! mix of requests:
//!
//! - at most `max_processes` run at once, and at most `max_builds` of them
//!   are builds;
//! - at most `max_queued` wait for a slot; past that the caller gets
//!   [`Failure::Busy`] at once (the registry answers 429 with Retry-After),
//!   so a flood of distinct names costs a bounded number of processes and
//!   a bounded amount of memory;
//! - each has a timeout: SIGINT to its process group first (nix stops its
//!   builders, which live in sessions of their own, only on its own
//!   interrupt), SIGKILL after a grace;
//! - each runs in a process group of its own, tracked so that shutdown can
//!   stop them all ([`Scheduler::stop_all`]): `process::exit` runs no
//!   `kill_on_drop`.
//!
//! Nothing here knows what the processes do; the runner and `refs` decide that.

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::process::Command;
use tokio::sync::Semaphore;

/// What a process is, for its bound and its counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `nix build`: also bounded by `max_builds`.
    Build,
    /// `nix eval`.
    Eval,
    /// `nix path-info`, and other store queries.
    Query,
    /// `git ls-remote`, a mirror fetch, `git for-each-ref`.
    Git,
    /// `nix copy` to a binary cache (`--push-to`).
    Copy,
}

impl Kind {
    pub const ALL: [Kind; 5] = [Kind::Build, Kind::Eval, Kind::Query, Kind::Git, Kind::Copy];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Build => "build",
            Kind::Eval => "eval",
            Kind::Query => "query",
            Kind::Git => "git",
            Kind::Copy => "copy",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One process to run.
pub struct Job<'a> {
    pub kind: Kind,
    pub program: &'a str,
    pub args: Vec<String>,
    pub env: Vec<(&'a str, &'a str)>,
    pub timeout: Duration,
    /// Called with each line of stderr as it comes (a build's live log).
    pub stderr_lines: Option<&'a (dyn Fn(&str) + Sync)>,
    /// Also bounded by `max_builds`, whatever its kind: the evaluation
    /// that chooses what to build takes as much memory as the build's own
    /// evaluation did.
    pub build_slot: bool,
}

#[derive(Debug)]
pub enum Failure {
    /// It could not be started.
    Spawn(String),
    /// It ran past its timeout and was stopped.
    Timeout,
    /// Too many processes already wait: try again later.
    Busy,
}

#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub max_processes: usize,
    pub max_builds: usize,
    pub max_queued: usize,
}

pub struct Scheduler {
    bounds: Bounds,
    processes: Semaphore,
    builds: Semaphore,
    queued: AtomicUsize,
    running_now: AtomicUsize,
    builds_queued: AtomicUsize,
    builds_running: AtomicUsize,
    started: [AtomicU64; 5],
    refused: AtomicU64,
    /// Process groups running now.
    groups: Mutex<HashSet<i32>>,
}

/// How long a process gets to stop after SIGINT before SIGKILL.
const INTERRUPT_GRACE: Duration = Duration::from_secs(10);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Undoes a count when the future holding it ends, however it ends (a
/// client that goes away drops the future mid-wait).
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(c: &'a AtomicUsize) -> Self {
        c.fetch_add(1, Ordering::SeqCst);
        Counted(c)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Keeps a process group in `groups` while its process runs.
struct Group<'a> {
    pgid: i32,
    groups: &'a Mutex<HashSet<i32>>,
}

impl Drop for Group<'_> {
    fn drop(&mut self) {
        lock(self.groups).remove(&self.pgid);
    }
}

impl Scheduler {
    pub fn new(bounds: Bounds) -> Scheduler {
        let bounds = Bounds {
            max_processes: bounds.max_processes.max(1),
            max_builds: bounds.max_builds.clamp(1, bounds.max_processes.max(1)),
            max_queued: bounds.max_queued,
        };
        Scheduler {
            processes: Semaphore::new(bounds.max_processes),
            builds: Semaphore::new(bounds.max_builds),
            bounds,
            queued: AtomicUsize::new(0),
            running_now: AtomicUsize::new(0),
            builds_queued: AtomicUsize::new(0),
            builds_running: AtomicUsize::new(0),
            started: Default::default(),
            refused: AtomicU64::new(0),
            groups: Mutex::default(),
        }
    }

    pub fn bounds(&self) -> Bounds {
        self.bounds
    }

    /// Processes of this kind started since start.
    pub fn started(&self, kind: Kind) -> u64 {
        self.started[kind.index()].load(Ordering::SeqCst)
    }

    pub fn running(&self) -> usize {
        self.running_now.load(Ordering::SeqCst)
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    /// `nix build` processes running, and waiting for a slot.
    pub fn builds(&self) -> (usize, usize) {
        (
            self.builds_running.load(Ordering::SeqCst),
            self.builds_queued.load(Ordering::SeqCst),
        )
    }

    /// Requests refused because the queue was full.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }

    /// Wait for a slot (or fail at once with `Busy` if the queue is full),
    /// run the job, return its output whatever its exit status.
    pub async fn run(&self, job: Job<'_>) -> Result<std::process::Output, Failure> {
        let heavy = job.kind == Kind::Build || job.build_slot;
        let (_build, _process) = {
            if self.queued.load(Ordering::SeqCst) >= self.bounds.max_queued
                && (self.processes.available_permits() == 0
                    || (heavy && self.builds.available_permits() == 0))
            {
                self.refused.fetch_add(1, Ordering::SeqCst);
                return Err(Failure::Busy);
            }
            let _waiting = Counted::new(&self.queued);
            let _waiting_build = heavy.then(|| Counted::new(&self.builds_queued));
            // Builds take their build slot first, then a process slot: one
            // order everywhere, so no two jobs wait on each other.
            let build = match heavy {
                true => Some(self.builds.acquire().await.expect("never closed")),
                false => None,
            };
            (build, self.processes.acquire().await.expect("never closed"))
        };
        let _running = Counted::new(&self.running_now);
        let _running_build = heavy.then(|| Counted::new(&self.builds_running));
        self.started[job.kind.index()].fetch_add(1, Ordering::SeqCst);
        self.spawn_and_wait(job).await
    }

    async fn spawn_and_wait(&self, job: Job<'_>) -> Result<std::process::Output, Failure> {
        let mut cmd = Command::new(job.program);
        cmd.args(&job.args)
            .envs(job.env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.kill_on_drop(true).process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(|e| Failure::Spawn(format!("cannot run {}: {e}", job.program)))?;
        let pid = child.id().map(|p| p as i32);
        let _group = pid.map(|pgid| {
            lock(&self.groups).insert(pgid);
            Group {
                pgid,
                groups: &self.groups,
            }
        });
        let (mut stdout, mut stderr) = (
            child.stdout.take().expect("piped"),
            child.stderr.take().expect("piped"),
        );
        let output = async {
            use tokio::io::AsyncReadExt;
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let read_err = async {
                let Some(each_line) = job.stderr_lines else {
                    return stderr.read_to_end(&mut err).await.map(drop);
                };
                // Line by line, so that a watcher sees each as it comes.
                let mut reader = tokio::io::BufReader::new(&mut stderr);
                loop {
                    let start = err.len();
                    if tokio::io::AsyncBufReadExt::read_until(&mut reader, b'\n', &mut err).await?
                        == 0
                    {
                        return Ok(());
                    }
                    each_line(&String::from_utf8_lossy(&err[start..]));
                }
            };
            let (r1, r2) = tokio::join!(stdout.read_to_end(&mut out), read_err);
            r1.and(r2)?;
            Ok::<_, std::io::Error>(std::process::Output {
                status: child.wait().await?,
                stdout: out,
                stderr: err,
            })
        };
        match tokio::time::timeout(job.timeout, output).await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) => Err(Failure::Spawn(format!("waiting for {}: {e}", job.program))),
            Err(_) => {
                if let Some(pid) = pid {
                    signal_group(pid, libc::SIGINT);
                    let _ = tokio::time::timeout(INTERRUPT_GRACE, child.wait()).await;
                    signal_group(pid, libc::SIGKILL);
                }
                let _ = child.wait().await;
                Err(Failure::Timeout)
            }
        }
    }

    /// Stop every process still running (at shutdown): SIGINT, then SIGKILL
    /// for whatever is left after [`INTERRUPT_GRACE`].
    pub async fn stop_all(&self) {
        let groups: Vec<i32> = lock(&self.groups).iter().copied().collect();
        if groups.is_empty() {
            return;
        }
        tracing::warn!(processes = groups.len(), "stopping processes still running");
        for &g in &groups {
            signal_group(g, libc::SIGINT);
        }
        let deadline = std::time::Instant::now() + INTERRUPT_GRACE;
        // A group leaves `groups` when its process has been waited for.
        while std::time::Instant::now() < deadline
            && groups.iter().any(|g| lock(&self.groups).contains(g))
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for g in groups {
            if lock(&self.groups).contains(&g) {
                signal_group(g, libc::SIGKILL);
            }
        }
    }
}

fn signal_group(pgid: i32, sig: i32) {
    // SAFETY: kill(2) on a process group we created for our own child.
    unsafe { libc::kill(-pgid, sig) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn sleep_job(kind: Kind, secs: &str) -> Job<'static> {
        Job {
            kind,
            program: "sleep",
            args: vec![secs.to_string()],
            env: vec![],
            timeout: Duration::from_secs(30),
            stderr_lines: None,
            build_slot: false,
        }
    }

    /// 2 process slots (1 for builds), 3 queued: of 12 jobs at once, never
    /// more than 2 run, and the ones past the queue are refused at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bounds_hold_and_the_queue_refuses() {
        let s = Arc::new(Scheduler::new(Bounds {
            max_processes: 2,
            max_builds: 1,
            max_queued: 3,
        }));
        let peak = Arc::new(AtomicUsize::new(0));
        let watcher = {
            let (s, peak) = (s.clone(), peak.clone());
            tokio::spawn(async move {
                loop {
                    peak.fetch_max(s.running(), Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        let jobs: Vec<_> = (0..12)
            .map(|i| {
                let s = s.clone();
                let kind = if i % 2 == 0 { Kind::Build } else { Kind::Eval };
                tokio::spawn(async move { s.run(sleep_job(kind, "0.3")).await.map(|_| ()) })
            })
            .collect();
        let mut ok = 0;
        let mut busy = 0;
        for j in jobs {
            match j.await.unwrap() {
                Ok(()) => ok += 1,
                Err(Failure::Busy) => busy += 1,
                Err(e) => panic!("{e:?}"),
            }
        }
        watcher.abort();
        assert!(
            peak.load(Ordering::SeqCst) <= 2,
            "peak {}",
            peak.load(Ordering::SeqCst)
        );
        assert!(busy >= 1, "some were refused");
        assert_eq!(ok + busy, 12);
        assert_eq!(s.refused(), busy as u64);
        assert_eq!(s.queued(), 0);
        assert_eq!(s.running(), 0);
    }

    /// Each stderr line reaches the watcher as it is written (the second
    /// comes a while after the first), and the output still has them all.
    #[tokio::test]
    async fn stderr_lines_arrive_as_they_come() {
        let s = Scheduler::new(Bounds {
            max_processes: 1,
            max_builds: 1,
            max_queued: 1,
        });
        let seen = Mutex::new(Vec::<(String, std::time::Instant)>::new());
        let record = |l: &str| lock(&seen).push((l.to_string(), std::time::Instant::now()));
        let job = Job {
            kind: Kind::Build,
            program: "sh",
            args: vec![
                "-c".into(),
                "echo one >&2; sleep 0.5; printf two >&2; echo out".into(),
            ],
            env: vec![],
            timeout: Duration::from_secs(30),
            stderr_lines: Some(&record),
            build_slot: false,
        };
        let out = s.run(job).await.unwrap();
        assert_eq!(out.stderr, b"one\ntwo");
        assert_eq!(out.stdout, b"out\n");
        let seen = lock(&seen);
        let lines: Vec<&str> = seen.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(lines, ["one\n", "two"]);
        assert!(seen[1].1 - seen[0].1 >= Duration::from_millis(400));
    }

    #[tokio::test]
    async fn timeout_stops_the_process() {
        let s = Scheduler::new(Bounds {
            max_processes: 1,
            max_builds: 1,
            max_queued: 1,
        });
        let mut job = sleep_job(Kind::Eval, "30");
        job.timeout = Duration::from_millis(200);
        let started = std::time::Instant::now();
        assert!(matches!(s.run(job).await, Err(Failure::Timeout)));
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(lock(&s.groups).is_empty());
    }
}
