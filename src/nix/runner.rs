//! Everything that runs `nix`. Nothing above this module spawns processes.
//!
//! Request text reaches Nix only as `--argstr` values of fixed expressions
//! (`resolve.nix`, `packages.nix`), never spliced into code. What a name
//! means is evaluated first with `nix eval --json` into a small result
//! attrset, read as data; only then is the `drvPath` it names built. So no
//! answer is ever found by searching Nix's messages, whose traces quote the
//! expression's own source since 2.13.

use super::path_info::{self, PathInfo};
use super::version::{NixVersion, VersionError};

use super::error::{NixError, Result};
use crate::nix::resolve::{BuildTarget, PackageTarget};
use crate::nix::scheduler::{self, Job, Kind, Scheduler};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A flake image name: see the file's own comment.
const RESOLVE_NIX: &str = include_str!("resolve.nix");

/// A package path of a package set: see the file's own comment.
const PACKAGES_NIX: &str = include_str!("packages.nix");

#[derive(Debug, Deserialize)]
struct UnknownPackage {
    name: String,
    at: Vec<String>,
    names: Vec<String>,
}

/// One derivation to build, and the one output of it that is served.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Hash)]
struct Chosen {
    #[serde(rename = "drvPath")]
    drv_path: PathBuf,
    #[serde(rename = "outputName")]
    output_name: String,
}

/// `result` of `resolve.nix`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FlakeResult {
    Found {
        #[serde(flatten)]
        chosen: Chosen,
    },
    Unknown {
        images: Vec<String>,
    },
}

/// `result` of `packages.nix`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PackagesResult {
    Found { drvs: Vec<Chosen> },
    Unknown { unknown: Vec<UnknownPackage> },
}

/// One entry of `nix build --json` (later versions add timings).
#[derive(Debug, Deserialize)]
struct BuildJson {
    #[serde(rename = "drvPath")]
    drv_path: PathBuf,
    outputs: std::collections::BTreeMap<String, PathBuf>,
}

/// The flake source as Nix locked it for an evaluation.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct FlakeLock {
    #[serde(rename = "narHash")]
    pub nar_hash: Option<String>,
    pub rev: Option<String>,
}

/// Why the server cannot work with the `nix` it found.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot run `nix --version`: {0}; install Nix 2.8 or later (or Lix, or Determinate Nix) and put `nix` on PATH")]
    NoNix(String),
    #[error(transparent)]
    Version(#[from] VersionError),
    #[error("cannot open the Nix store with `nix {command}` ({nix}): {stderr}")]
    Store {
        command: String,
        nix: String,
        stderr: String,
    },
}

pub struct Nix {
    gcroots: PathBuf,
    timeout: Duration,
    /// The Nix that runs every command, read once at start.
    version: NixVersion,
    /// Runs every nix process, within the bounds for all processes.
    pub scheduler: Arc<Scheduler>,
    /// Locks of sources evaluated at a commit: they never change, so one
    /// evaluation serves every image built from the same commit.
    locks: moka::future::Cache<String, FlakeLock>,
}

const LOG_TAIL_LINES: usize = 25;

/// Where a build's stderr goes, line by line, while it runs.
pub type BuildLog<'a> = &'a (dyn Fn(&str) + Sync);

enum Failure {
    Exit { stderr: String },
    Timeout,
    Busy,
}

impl Nix {
    /// A runner for a Nix already identified (see [`Nix::start`]).
    pub fn new(
        state_dir: &Path,
        timeout: Duration,
        scheduler: Arc<Scheduler>,
        version: NixVersion,
    ) -> std::io::Result<Nix> {
        let gcroots = state_dir.join("gcroots");
        std::fs::create_dir_all(&gcroots)?;
        Ok(Nix {
            gcroots,
            timeout,
            version,
            scheduler,
            locks: moka::future::Cache::new(10_000),
        })
    }

    /// Reads `nix --version`, refuses a Nix flakeport cannot work with,
    /// and opens the store once. A fresh store's first opening creates
    /// `/nix/var/nix`, and Nix does that unlocked: two first commands at
    /// once can fail with "File exists". Opening it here, before any
    /// request, and again if that first attempt lost such a race with
    /// another process, leaves later commands nothing to create.
    pub async fn start(
        state_dir: &Path,
        timeout: Duration,
        scheduler: Arc<Scheduler>,
    ) -> std::result::Result<Nix, StartError> {
        let unknown = NixVersion::parse("nix (Nix) 0.0.0").expect("a valid placeholder");
        let mut nix =
            Nix::new(state_dir, timeout, scheduler, unknown).map_err(|e| StartError::Store {
                command: "(none)".into(),
                nix: "-".into(),
                stderr: format!("creating {}: {e}", state_dir.join("gcroots").display()),
            })?;
        let out = nix
            .run_bare(Kind::Query, &["--version"])
            .await
            .map_err(|f| StartError::NoNix(f.describe()))?;
        nix.version = NixVersion::parse(&String::from_utf8_lossy(&out))?;
        nix.version.check_supported()?;
        let open = nix.version.store_info_args();
        let mut last = None;
        for attempt in 0..3 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            match nix.run(Kind::Query, &open.map(String::from)).await {
                Ok(_) => {
                    last = None;
                    break;
                }
                Err(f) => last = Some(f.describe()),
            }
        }
        if let Some(stderr) = last {
            return Err(StartError::Store {
                command: open.join(" "),
                nix: nix.version.to_string(),
                stderr,
            });
        }
        Ok(nix)
    }

    /// The Nix every command runs.
    pub fn version(&self) -> &NixVersion {
        &self.version
    }

    /// Build the target's one output; the out-link in the state dir is a
    /// GC root that keeps it (and everything it references) alive until
    /// the same name and tag is built again.
    pub async fn build(&self, t: &BuildTarget, log: BuildLog<'_>) -> Result<PathBuf> {
        let evaluate = || async {
            // The evaluation takes a build slot, as it did inside `nix
            // build`: a flake's evaluation can take as much memory.
            match self.eval_json::<FlakeResult>(t, "result", true).await? {
                FlakeResult::Found { chosen } => Ok(vec![chosen]),
                FlakeResult::Unknown { images } => Err(name_unknown(t, images)),
            }
        };
        let outs = self
            .evaluate_then_build(&self.flake_root(t), t, log, evaluate, |f| {
                classify(
                    &t.to_string(),
                    &t.tag,
                    &t.flake_ref,
                    Step::Build,
                    f,
                    self.timeout,
                )
            })
            .await?;
        outs.into_iter()
            .next()
            .ok_or_else(|| self.unreadable("nix build --json", "it named no output"))
    }

    /// The GC root (an out-link) that keeps a flake image's output alive.
    /// Nix names the links of other outputs and of further derivations
    /// after it (`ROOT-bin`, `ROOT-1`): each starts with this root's name
    /// up to its first `-`, which is how retention keeps them together.
    pub fn flake_root(&self, t: &BuildTarget) -> PathBuf {
        self.gcroots.join(root_name(t))
    }

    /// The GC root of a package-path image's packages.
    pub fn packages_root(&self, t: &PackageTarget) -> PathBuf {
        let mut h = Sha256::new();
        h.update(t.to_string());
        h.update(&t.system);
        self.gcroots
            .join(format!("{}-packages", &hex::encode(h.finalize())[..16]))
    }

    pub fn gcroots(&self) -> &Path {
        &self.gcroots
    }

    /// Build every package of a package-path image; returns their outputs.
    pub async fn build_packages(
        &self,
        t: &PackageTarget,
        log: BuildLog<'_>,
    ) -> Result<Vec<PathBuf>> {
        let json = |v: &[String]| serde_json::to_string(v).expect("strings serialise");
        let mut args: Vec<String> = [
            "eval",
            "--json",
            "--impure",
            "--expr",
            PACKAGES_NIX,
            "result",
        ]
        .map(String::from)
        .to_vec();
        for (k, v) in [
            ("kind", t.kind.to_string()),
            ("location", t.location.clone()),
            ("ref", t.git_ref.clone()),
            ("rev", t.rev.clone()),
            ("system", t.system.clone()),
            ("packages", json(&t.packages)),
            ("optional", json(&t.optional)),
        ] {
            args.extend(["--argstr".to_string(), k.to_string(), v]);
        }
        let classify_pkg =
            |step, f| classify(&t.to_string(), &t.tag, &t.location, step, f, self.timeout);
        let evaluate = || async {
            let out = self
                .run_slotted(Kind::Eval, &args, None, true)
                .await
                .map_err(|f| classify_pkg(Step::Eval, f))?;
            match serde_json::from_slice(&out).map_err(|e| self.unreadable("nix eval --json", e))? {
                PackagesResult::Found { drvs } => Ok(drvs),
                PackagesResult::Unknown { unknown } => Err(unknown_packages(t, unknown)),
            }
        };
        let mut outs = self
            .evaluate_then_build(&self.packages_root(t), t, log, evaluate, |f| {
                classify_pkg(Step::Build, f)
            })
            .await?;
        outs.sort();
        outs.dedup();
        Ok(outs)
    }

    /// What `evaluate` chose, built (see [`Nix::build_chosen`]). The
    /// `.drv` files the evaluation wrote have no GC root until the build
    /// makes one: if a collection in between took one, the build fails on
    /// a path no longer valid, and one more evaluation writes it again.
    async fn evaluate_then_build<F, Fut>(
        &self,
        link: &Path,
        target: &(dyn std::fmt::Display + Sync),
        log: BuildLog<'_>,
        evaluate: F,
        on_failure: impl Fn(Failure) -> NixError,
    ) -> Result<Vec<PathBuf>>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<Vec<Chosen>>>,
    {
        let mut again = true;
        loop {
            let mut chosen = evaluate().await?;
            let mut seen = std::collections::HashSet::new();
            chosen.retain(|c| seen.insert(c.clone()));
            // (`shell` alone, on a set with none of its packages: nothing
            // to build; `nix build` with no installable would build `.`.)
            if chosen.is_empty() {
                return Ok(Vec::new());
            }
            match self
                .build_chosen(link, &chosen, target, log, &on_failure)
                .await
            {
                Err(_) if again && gone(&chosen) => again = false,
                built => return built,
            }
        }
    }

    /// Builds the chosen output of each chosen derivation within the build
    /// limit, with GC roots named after `link`; their outputs, in order.
    /// Since 2.13, `nix build --json DRV^OUTPUT` builds that output alone.
    /// Before, `nix build DRV` builds every output of a derivation, so
    /// `nix-store --realise DRV!OUTPUT` builds the one (it prints the
    /// roots it made). Links of an earlier build that this one did not
    /// make again (another output, a derivation fewer) are removed.
    async fn build_chosen(
        &self,
        link: &Path,
        chosen: &[Chosen],
        target: &(dyn std::fmt::Display + Sync),
        log: BuildLog<'_>,
        on_failure: impl Fn(Failure) -> NixError,
    ) -> Result<Vec<PathBuf>> {
        tracing::info!(image = %target, "nix build started");
        let started = std::time::Instant::now();
        let (outputs, made) = if self.version.selects_drv_outputs() {
            let mut all = vec![
                "build".to_string(),
                "--json".into(),
                // Builders' output on stderr as it comes (prefixed `name> `),
                // for the log a watcher follows; failures keep their tail.
                "--print-build-logs".into(),
                "--out-link".into(),
                path_str(link),
            ];
            all.extend(
                chosen
                    .iter()
                    .map(|c| format!("{}^{}", c.drv_path.display(), c.output_name)),
            );
            let stdout = self
                .run_slotted(Kind::Build, &all, Some(log), false)
                .await
                .map_err(on_failure)?;
            let built: Vec<BuildJson> = serde_json::from_slice(&stdout)
                .map_err(|e| self.unreadable("nix build --json", e))?;
            let outputs = chosen_outputs(chosen, &built)
                .map_err(|e| self.unreadable("nix build --json", e))?;
            (outputs, out_links(link, chosen))
        } else {
            let mut all = vec!["--realise".to_string(), "--add-root".into(), path_str(link)];
            all.extend(
                chosen
                    .iter()
                    .map(|c| format!("{}!{}", c.drv_path.display(), c.output_name)),
            );
            let stdout = self
                .spawn("nix-store", Kind::Build, all, Some(log), false)
                .await
                .map_err(on_failure)?;
            let made: Vec<PathBuf> = String::from_utf8_lossy(&stdout)
                .lines()
                .filter(|l| !l.is_empty())
                .map(PathBuf::from)
                .collect();
            let outputs = made
                .iter()
                .map(std::fs::read_link)
                .collect::<std::io::Result<Vec<_>>>()
                .map_err(|e| self.unreadable("nix-store --realise --add-root", e))?;
            if outputs.len() != chosen.len() {
                return Err(self.unreadable(
                    "nix-store --realise --add-root",
                    format!("{} roots for {} outputs", outputs.len(), chosen.len()),
                ));
            }
            (outputs, made)
        };
        tracing::debug!(image = %target, secs = started.elapsed().as_secs_f64(), "nix build finished");
        for stale in root_family(link) {
            if !made.contains(&stale) {
                tracing::info!(root = %stale.display(), "GC root of an earlier build, not made again; removed");
                let _ = std::fs::remove_file(&stale);
            }
        }
        Ok(outputs)
    }

    /// `attr` of the flake's evaluation (see `expr_args`), as JSON.
    /// With `build_slot`, it waits for a build slot, as the evaluation
    /// before a build does.
    async fn eval_json<T: serde::de::DeserializeOwned>(
        &self,
        t: &BuildTarget,
        attr: &str,
        build_slot: bool,
    ) -> Result<T> {
        let mut args = vec!["eval".to_string(), "--json".into()];
        args.extend(expr_args(t, attr));
        let out = self
            .run_slotted(Kind::Eval, &args, None, build_slot)
            .await
            .map_err(|f| {
                classify(
                    &t.to_string(),
                    &t.tag,
                    &t.flake_ref,
                    Step::Eval,
                    f,
                    self.timeout,
                )
            })?;
        serde_json::from_slice(&out).map_err(|e| self.unreadable("nix eval --json", e))
    }

    /// The error for a tool output that cannot be read.
    fn unreadable(&self, command: &str, reason: impl std::fmt::Display) -> NixError {
        NixError::Unreadable {
            command: command.to_string(),
            nix: self.version.to_string(),
            reason: reason.to_string(),
        }
    }

    pub async fn main_program(&self, t: &BuildTarget) -> Result<Option<String>> {
        self.eval_json(t, "mainProgram", false).await
    }

    /// The flake source's narHash and commit, as the build's evaluation
    /// locks them (for provenance).
    pub async fn flake_lock(&self, t: &BuildTarget) -> Result<FlakeLock> {
        let eval = || self.eval_json(t, "source", false);
        // `latest` of a work tree can change between two builds.
        if t.locked_ref.is_none() {
            return eval().await;
        }
        self.locks
            .try_get_with(t.eval_ref().to_string(), eval())
            .await
            .map_err(|e: Arc<NixError>| (*e).clone())
    }

    /// The names of `packages.<system>` that are derivations: every one is
    /// an image (a conf, an archive, or a package served as its closure);
    /// each with its `meta.description`, if it has one.
    pub async fn image_names(&self, t: &BuildTarget) -> Result<Vec<(String, Option<String>)>> {
        #[derive(Deserialize)]
        struct Named {
            name: String,
            description: Option<String>,
        }
        let named: Vec<Named> = self.eval_json(t, "names", false).await?;
        Ok(named.into_iter().map(|n| (n.name, n.description)).collect())
    }

    /// Check that the name is an image of the flake at this tag, without
    /// building: `NameUnknown` only when the evaluation says so.
    pub async fn check_exists(&self, t: &BuildTarget) -> Result<()> {
        match self.eval_json::<FlakeResult>(t, "result", false).await? {
            FlakeResult::Found { .. } => Ok(()),
            FlakeResult::Unknown { images } => Err(name_unknown(t, images)),
        }
    }

    /// `nix copy --to STORE PATHS`: the paths and their closures, so that
    /// other nodes substitute them instead of building.
    pub async fn copy_to(&self, store: &str, paths: &[PathBuf]) -> std::result::Result<(), String> {
        let mut args = vec!["copy".to_string(), "--to".into(), store.to_string()];
        args.extend(paths.iter().map(|p| path_str(p)));
        self.run(Kind::Copy, &args)
            .await
            .map(drop)
            .map_err(|f| match f {
                Failure::Exit { stderr } => {
                    let lines: Vec<&str> =
                        stderr.lines().filter(|l| !l.trim().is_empty()).collect();
                    lines[lines.len().saturating_sub(5)..].join("\n")
                }
                Failure::Timeout => format!("timed out after {} s", self.timeout.as_secs()),
                Failure::Busy => "too many processes waiting".to_string(),
            })
    }

    /// The closure of built paths with sizes and references, from `nix
    /// path-info --json -r` in whichever shape this Nix prints it.
    pub async fn closure(&self, paths: &[PathBuf]) -> Result<Vec<PathInfo>> {
        let mut args = vec!["path-info".to_string(), "--json".into()];
        args.extend(
            self.version
                .path_info_format_args()
                .iter()
                .map(|a| a.to_string()),
        );
        args.push("-r".into());
        args.extend(paths.iter().map(|p| path_str(p)));
        let command = format!("nix {}", args[..args.len() - paths.len()].join(" "));
        let out = self.run(Kind::Query, &args).await.map_err(|f| match f {
            Failure::Busy => NixError::Busy,
            f => NixError::CommandFailed {
                command: command.clone(),
                nix: self.version.to_string(),
                log_tail: tail(&f.describe()),
            },
        })?;
        let store_dir = paths
            .first()
            .and_then(|p| p.parent())
            .unwrap_or(Path::new("/nix/store"));
        path_info::parse(&out, store_dir).map_err(|e| self.unreadable(&command, e))
    }

    /// Run nix through the scheduler; its stdout if it succeeded.
    async fn run(&self, kind: Kind, args: &[String]) -> std::result::Result<Vec<u8>, Failure> {
        self.run_slotted(kind, args, None, false).await
    }

    /// `nix ARGS` as given (no experimental-features flag): for
    /// `--version`, which must work on any Nix.
    async fn run_bare(&self, kind: Kind, args: &[&str]) -> std::result::Result<Vec<u8>, Failure> {
        let args = args.iter().map(|a| a.to_string()).collect();
        self.spawn("nix", kind, args, None, false).await
    }

    /// `nix ARGS`, each stderr line also handed to `log` as it comes; with
    /// `build_slot`, within the build limit whatever its kind.
    async fn run_slotted(
        &self,
        kind: Kind,
        args: &[String],
        log: Option<BuildLog<'_>>,
        build_slot: bool,
    ) -> std::result::Result<Vec<u8>, Failure> {
        // Works whether or not the host's nix.conf enables flakes.
        let mut all = vec![
            "--extra-experimental-features".to_string(),
            "nix-command flakes".to_string(),
        ];
        all.extend_from_slice(args);
        self.spawn("nix", kind, all, log, build_slot).await
    }

    async fn spawn(
        &self,
        program: &str,
        kind: Kind,
        args: Vec<String>,
        log: Option<BuildLog<'_>>,
        build_slot: bool,
    ) -> std::result::Result<Vec<u8>, Failure> {
        let job = Job {
            kind,
            program,
            args,
            env: vec![],
            timeout: self.timeout,
            stderr_lines: log,
            build_slot,
        };
        match self.scheduler.run(job).await {
            Ok(out) if out.status.success() => Ok(out.stdout),
            Ok(out) => Err(Failure::Exit {
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }),
            Err(scheduler::Failure::Spawn(e)) => Err(Failure::Exit { stderr: e }),
            Err(scheduler::Failure::Timeout) => Err(Failure::Timeout),
            Err(scheduler::Failure::Busy) => Err(Failure::Busy),
        }
    }

    /// Stop every nix process still running (at shutdown).
    pub async fn stop_all(&self) {
        self.scheduler.stop_all().await
    }

    /// `nix build`s started since start (exposed on /metrics).
    pub fn builds_started(&self) -> u64 {
        self.scheduler.started(Kind::Build)
    }
}

impl Failure {
    fn describe(&self) -> String {
        match self {
            Failure::Exit { stderr } => stderr.trim().to_string(),
            Failure::Timeout => "timed out".into(),
            Failure::Busy => "too many processes waiting".into(),
        }
    }
}

/// Whether a derivation the evaluation wrote is gone: collected before
/// the build could root it (the `.drv` has no GC root in between).
fn gone(chosen: &[Chosen]) -> bool {
    chosen.iter().any(|c| !c.drv_path.exists())
}

/// The out-links `nix build --out-link LINK` makes for installables of one
/// output each: `LINK` for the first, `LINK-<i>` for the i-th after it,
/// then `-<output>` unless the output is `out` (the same rule from 2.8 to
/// today, CppNix, Lix and Determinate).
fn out_links(link: &Path, chosen: &[Chosen]) -> Vec<PathBuf> {
    chosen
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut name = link.as_os_str().to_owned();
            if i > 0 {
                name.push(format!("-{i}"));
            }
            if c.output_name != "out" {
                name.push(format!("-{}", c.output_name));
            }
            PathBuf::from(name)
        })
        .collect()
}

/// The chosen output of each chosen derivation, from `nix build --json`
/// (whose entries come sorted by `drvPath`, and on a Nix that builds every
/// output of a `.drv`, hold them all).
fn chosen_outputs(
    chosen: &[Chosen],
    built: &[BuildJson],
) -> std::result::Result<Vec<PathBuf>, String> {
    chosen
        .iter()
        .map(|c| {
            let entry = built
                .iter()
                .find(|b| b.drv_path == c.drv_path && b.outputs.contains_key(&c.output_name))
                .or_else(|| built.iter().find(|b| b.drv_path == c.drv_path))
                .ok_or_else(|| format!("no entry for {}", c.drv_path.display()))?;
            entry.outputs.get(&c.output_name).cloned().ok_or_else(|| {
                format!(
                    "no output {:?} of {} (it has {:?})",
                    c.output_name,
                    c.drv_path.display(),
                    entry.outputs.keys().collect::<Vec<_>>()
                )
            })
        })
        .collect()
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// One GC root per name and tag: a rebuild replaces the previous root.
fn root_name(t: &BuildTarget) -> String {
    let mut h = Sha256::new();
    h.update(format!(
        "{}\n{}\n{}\n{}",
        t.flake_ref,
        t.attr_path.join("\0"),
        t.system,
        t.tag
    ));
    let name: String = t.attr_path.join("-").chars().take(60).collect();
    format!("{}-{}", &hex::encode(h.finalize())[..16], name)
}

/// A locked flake is evaluated in pure mode: nothing from the environment
/// (NIX_PATH, `builtins.getEnv`, unlocked fetches) reaches it.
fn expr_args(t: &BuildTarget, attr: &str) -> Vec<String> {
    let attr_json = serde_json::to_string(&t.attr_path).expect("strings serialise");
    let impure = t.locked_ref.is_none().then_some("--impure");
    impure
        .into_iter()
        .chain([
            "--expr",
            RESOLVE_NIX,
            attr,
            "--argstr",
            "flakeRef",
            t.eval_ref(),
            "--argstr",
            "system",
            &t.system,
            "--argstr",
            "attrPath",
            &attr_json,
        ])
        .map(|s| s.to_string())
        .collect()
}

/// The 404 for a name that is no image of the flake, with the closest
/// images it does have.
fn name_unknown(t: &BuildTarget, images: Vec<String>) -> NixError {
    NixError::NameUnknown {
        name: t.attr_path.join("/"),
        flake: t.flake_ref.clone(),
        available: closest(&t.attr_path.join("/"), images, 8),
    }
}

/// The 404 for a package path: every unknown package, each with the
/// closest names at the level where its lookup failed.
fn unknown_packages(t: &PackageTarget, report: Vec<UnknownPackage>) -> NixError {
    let unknown = report
        .into_iter()
        .map(|u| {
            let depth = u.at.len();
            let segment = u.name.split('.').nth(depth).unwrap_or(&u.name).to_string();
            let prefix: String = u.at.iter().map(|a| format!("{a}.")).collect();
            let close = closest(&segment, u.names, 3)
                .into_iter()
                .filter(|c| edit_distance(&segment, c) <= segment.len() / 3 + 1)
                .map(|c| format!("{prefix}{c}"))
                .collect();
            (u.name, close)
        })
        .collect();
    NixError::PackagesUnknown {
        unknown,
        source_name: t.location.clone(),
    }
}

/// Which step of producing an image failed: only an evaluation fetches
/// the source, so only its failure can mean the tag names no ref.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Eval,
    Build,
}

/// Turn a failed nix run into the error the client should see.
fn classify(
    target: &str,
    tag: &str,
    source: &str,
    step: Step,
    f: Failure,
    timeout: Duration,
) -> NixError {
    let stderr = match f {
        Failure::Busy => return NixError::Busy,
        Failure::Timeout => {
            return NixError::BuildTimeout {
                target: target.to_string(),
                secs: timeout.as_secs(),
            }
        }
        Failure::Exit { stderr } => stderr,
    };
    if step == Step::Eval && tag != "latest" && names_missing_ref(&stderr) {
        return NixError::TagUnknown {
            tag: tag.to_string(),
            flake: source.to_string(),
        };
    }
    NixError::BuildFailed {
        target: target.to_string(),
        log_tail: tail(&stderr),
    }
}

/// The last lines of a command's output that say something.
fn tail(output: &str) -> String {
    let lines: Vec<&str> = output.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// What Nix and git say when a ref or commit is not in the source: git's
/// own messages (Nix before 2.20 and Lix run git), libgit2's through Nix
/// 2.20+ ("resolving Git reference", "object not found"), and forges'
/// (a 404 for a tarball, GitHub's 422 for an unknown commit). Only Nix's
/// `error:` and git's `fatal:` lines count: a builder's log may say
/// anything.
fn names_missing_ref(stderr: &str) -> bool {
    const MISSING_REF: &[&str] = &[
        "unknown revision",
        "Cannot find Git revision",
        "couldn't find remote ref",
        "not a valid object name",
        "invalid reference: ",
        "not a tree object",
        "resolving Git reference",
        "object not found - no match for id",
        "HTTP error 404",
        "No commit found for SHA",
    ];
    // A message's own indented lines (a forge's response body) count too.
    let mut in_message = false;
    stderr.lines().any(|line| {
        let trimmed = line.trim_start();
        if trimmed.starts_with("error:") || trimmed.starts_with("fatal:") {
            in_message = true;
        } else if !line.is_empty() && !line.starts_with(' ') {
            in_message = false;
        }
        in_message && MISSING_REF.iter().any(|m| line.contains(m))
    })
}

/// The `n` names closest to `wanted` (edit distance), for "did you mean".
pub fn closest(wanted: &str, names: Vec<String>, n: usize) -> Vec<String> {
    let mut scored: Vec<(usize, String)> = names
        .into_iter()
        .map(|c| (edit_distance(wanted, &c), c))
        .collect();
    scored.sort();
    scored.into_iter().take(n).map(|(_, c)| c).collect()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push(
                (prev[j] + usize::from(ca != *cb))
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1),
            );
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A GC root and the links Nix made beside it in the same build: the
/// links of other outputs and further derivations (`ROOT-bin`, `ROOT-1`)
/// share the root's name up to its first `-` (the hash of the image's
/// target), so retention keeps or removes them together.
pub fn root_family(root: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (root.parent(), root.file_name().and_then(|n| n.to_str())) else {
        return vec![root.to_path_buf()];
    };
    let Some(dash) = name.find('-') else {
        return vec![root.to_path_buf()];
    };
    let prefix = &name[..=dash];
    let mut family: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.starts_with(prefix))
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    if !family.iter().any(|p| p == root) {
        family.push(root.to_path_buf());
    }
    family
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(tag: &str) -> BuildTarget {
        BuildTarget {
            flake_ref: "git+file:///f".into(),
            attr_path: vec!["app".into()],
            system: "x86_64-linux".into(),
            pinned: false,
            tag: tag.into(),
            locked_ref: None,
        }
    }

    #[test]
    fn reads_eval_results_as_data() {
        let unknown: FlakeResult =
            serde_json::from_str(r#"{"images":["hello","apps","web"],"ok":false}"#).unwrap();
        let FlakeResult::Unknown { images } = unknown else {
            panic!("{unknown:?}")
        };
        match name_unknown(&target("latest"), images) {
            NixError::NameUnknown { available, .. } => assert_eq!(available[0], "apps"),
            e => panic!("{e:?}"),
        }
        let found: FlakeResult = serde_json::from_str(
            r#"{"drvPath":"/nix/store/cbvk24gy2a65fdfv2q2fcv3cv219az3w-hello.drv","ok":true,"outputName":"out"}"#,
        )
        .unwrap();
        assert!(matches!(found, FlakeResult::Found { chosen } if chosen.output_name == "out"));
        let packages: PackagesResult = serde_json::from_str(
            r#"{"ok":false,"unknown":[{"at":[],"name":"gretter","names":["greeter","hello"]}]}"#,
        )
        .unwrap();
        assert!(
            matches!(packages, PackagesResult::Unknown { unknown } if unknown[0].name == "gretter")
        );
    }

    /// `nix build --json` of `DRV` on 2.8.0 (every output), and of
    /// `DRV^out` on 2.26.3 (that output, with timings), recorded from
    /// Debian's builds of those versions with the offline fixture's
    /// `multiout`.
    #[test]
    fn picks_the_chosen_output() {
        let drv = "/nix/store/ms9639152jq28jf6068rf2rrsyfdy54w-multiout-1.0.drv";
        let chosen = [Chosen {
            drv_path: drv.into(),
            output_name: "out".into(),
        }];
        let v28 = r#"[{"drvPath":"/nix/store/ms9639152jq28jf6068rf2rrsyfdy54w-multiout-1.0.drv","outputs":{"bin":"/nix/store/m0jshq1n9im3kf0g04apl42im1p87ybw-multiout-1.0-bin","man":"/nix/store/5azd208dmz26ggzqrn4lsvxpc6dan6k9-multiout-1.0-man","out":"/nix/store/q1p3nngqj2va8zr43zrg81dzz8vh0l5z-multiout-1.0"}}]"#;
        let v226 = r#"[{"drvPath":"/nix/store/ms9639152jq28jf6068rf2rrsyfdy54w-multiout-1.0.drv","outputs":{"out":"/nix/store/q1p3nngqj2va8zr43zrg81dzz8vh0l5z-multiout-1.0"},"startTime":1796641486,"stopTime":1796641486}]"#;
        for json in [v28, v226] {
            let built: Vec<BuildJson> = serde_json::from_str(json).unwrap();
            assert_eq!(
                chosen_outputs(&chosen, &built).unwrap(),
                vec![PathBuf::from(
                    "/nix/store/q1p3nngqj2va8zr43zrg81dzz8vh0l5z-multiout-1.0"
                )]
            );
        }
        // 2.26's `nix build --json FLAKE#multiout`: meta.outputsToInstall.
        let installed: Vec<BuildJson> = serde_json::from_str(
            r#"[{"drvPath":"/nix/store/ms9639152jq28jf6068rf2rrsyfdy54w-multiout-1.0.drv","outputs":{"bin":"/nix/store/m0jshq1n9im3kf0g04apl42im1p87ybw-multiout-1.0-bin","man":"/nix/store/5azd208dmz26ggzqrn4lsvxpc6dan6k9-multiout-1.0-man"}}]"#,
        )
        .unwrap();
        let e = chosen_outputs(&chosen, &installed).unwrap_err();
        assert!(e.contains("no output \"out\""), "{e}");
    }

    #[test]
    fn classifies_recorded_nix_errors() {
        let badref = "fatal: ambiguous argument 'v9': unknown revision or path not in the working tree.\nerror: program 'git' failed with exit code 128\n";
        let classify_ = |tag: &str, f| {
            classify(
                "app",
                tag,
                "git+file:///f",
                Step::Eval,
                f,
                Duration::from_secs(1),
            )
        };
        assert!(matches!(
            classify_(
                "v9",
                Failure::Exit {
                    stderr: badref.into()
                }
            ),
            NixError::TagUnknown { .. }
        ));
        // Nix 2.26.3 (libgit2) on a `git+file` flake without ref `v9`;
        // a 2.22+ message as Nix's src/libfetchers/git-utils.cc words it.
        let libgit2 = "error:\n       … while fetching the input 'git+file:///f?ref=v9'\n\n       error: resolving Git reference 'v9': revspec 'v9' not found\n";
        assert!(matches!(
            classify_(
                "v9",
                Failure::Exit {
                    stderr: libgit2.into()
                }
            ),
            NixError::TagUnknown { .. }
        ));
        // A builder that says "does not exist" is a failed build, not a
        // missing tag; nor is a missing-ref message inside a build log.
        for log in [
            "app> cp: /etc/foo: does not exist\nerror: builder for '/nix/store/x.drv' failed with exit code 1\n",
            "app> fatal: couldn't find remote ref v9\nerror: builder for '/nix/store/x.drv' failed with exit code 1\n",
        ] {
            assert!(matches!(
                classify_("v9", Failure::Exit { stderr: log.into() }),
                NixError::BuildFailed { .. }
            ));
        }
        // GitHub's 422 for an unknown commit: Nix prints a failed
        // download's response body on the message's own indented lines.
        let github = "error: unable to download 'https://api.github.com/repos/o/r/commits/v9': HTTP error 422\n\n       response body:\n\n       {\"message\":\"No commit found for SHA: v9\"}\n";
        assert!(matches!(
            classify_(
                "v9",
                Failure::Exit {
                    stderr: github.into()
                }
            ),
            NixError::TagUnknown { .. }
        ));
        // The same words from a build: the source was fetched by then.
        assert!(matches!(
            classify(
                "app",
                "v9",
                "f",
                Step::Build,
                Failure::Exit {
                    stderr: libgit2.into()
                },
                Duration::from_secs(1)
            ),
            NixError::BuildFailed { .. }
        ));
        let failed = (1..40)
            .map(|i| format!("line {i}"))
            .collect::<Vec<_>>()
            .join("\n");
        match classify_("latest", Failure::Exit { stderr: failed }) {
            NixError::BuildFailed { log_tail, .. } => {
                assert!(log_tail.starts_with("line 15\n") && log_tail.ends_with("line 39"))
            }
            e => panic!("{e:?}"),
        }
        assert!(matches!(
            classify(
                "app",
                "latest",
                "f",
                Step::Build,
                Failure::Timeout,
                Duration::from_secs(3)
            ),
            NixError::BuildTimeout { secs: 3, .. }
        ));
    }

    /// Link names as `nix build --out-link L` makes them (recorded on 2.8.0:
    /// `L L-1 L-1-bin L-1-dev` for two installables; see
    /// tests/nix-outputs/README.md for the rule in later versions).
    #[test]
    fn out_links_follow_nix() {
        let c = |drv: &str, out: &str| Chosen {
            drv_path: drv.into(),
            output_name: out.into(),
        };
        let links = out_links(
            Path::new("/s/gcroots/0123456789abcdef-app"),
            &[
                c("/nix/store/a.drv", "out"),
                c("/nix/store/b.drv", "bin"),
                c("/nix/store/c.drv", "out"),
            ],
        );
        assert_eq!(
            links,
            [
                "/s/gcroots/0123456789abcdef-app",
                "/s/gcroots/0123456789abcdef-app-1-bin",
                "/s/gcroots/0123456789abcdef-app-2"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn closest_names_first() {
        let names = vec!["curl".to_string(), "htop".into(), "jq".into(), "git".into()];
        assert_eq!(
            closest("crul", names, 2),
            vec!["curl".to_string(), "git".into()]
        );
    }
}
