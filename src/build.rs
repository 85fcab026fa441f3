//! Everything that runs `nix`. Nothing above this module spawns processes.
//!
//! Request text reaches Nix only as `--argstr` values of a fixed expression
//! ([`RESOLVE_NIX`]), never spliced into code.

use crate::error::{RegistryError, Result};
use crate::resolve::{BuildTarget, PackageTarget};
use crate::scheduler::{self, Job, Kind, Scheduler};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Looks the attribute up in `packages.<system>`, then
/// `legacyPackages.<system>`; picks what to build: the `conf` of a
/// dockerTools image (`streamLayeredImage`'s `conf`, `buildLayeredImage`'s
/// `stream.conf`), else the value itself.
const RESOLVE_NIX: &str = r#"
{ flakeRef, system, attrPath }:
let
  flake = builtins.getFlake flakeRef;
  path = builtins.fromJSON attrPath;
  isDrv = v: builtins.isAttrs v && (v.type or null) == "derivation";
  lookup = set: builtins.foldl'
    (acc: n: if acc != null && builtins.isAttrs acc && builtins.hasAttr n acc then builtins.getAttr n acc else null)
    set path;
  packages = (flake.packages or { }).${system} or { };
  legacy = (flake.legacyPackages or { }).${system} or { };
  fromPackages = lookup packages;
  value = if fromPackages != null then fromPackages else lookup legacy;
  images = builtins.filter (n: builtins.tryEval (isDrv packages.${n}) == { success = true; value = true; })
    (builtins.attrNames packages);
in
{
  target =
    if !(isDrv value) then throw "flakeport-unknown-name ${builtins.toJSON images}"
    else if value ? conf && isDrv value.conf then value.conf
    else if value ? stream && isDrv value.stream && value.stream ? conf && isDrv value.stream.conf then value.stream.conf
    else value;
  mainProgram = value.meta.mainProgram or null;
  source = {
    narHash = flake.sourceInfo.narHash or null;
    rev = flake.sourceInfo.rev or null;
  };
  names = map (n:
    let d = builtins.tryEval (packages.${n}.meta.description or null); in
    { name = n; description = if d.success && builtins.isString d.value then d.value else null; })
    images;
}
"#;

/// Loads a package set and looks up every requested attribute path
/// (case-insensitively per level, since registry names are lowercase, and
/// with `_` before names starting with a digit, as nixpkgs spells them).
/// Unknown packages are all reported at once, with the names at the level
/// where the lookup failed, for "did you mean".
const PACKAGES_NIX: &str = r#"
{ kind, location, ref, rev, system, packages, optional }:
let
  fetched = builtins.fetchGit ({ url = location; }
    // (if ref != "" then { inherit ref; } else { })
    // (if rev != "" then { inherit rev; allRefs = true; } else { }));
  set =
    if kind == "flake" then
      let f = builtins.getFlake location; in ((f.packages or { }).${system} or { }) // ((f.legacyPackages or { }).${system} or { })
    else import (if kind == "git" || ref != "" || rev != "" then fetched else /. + location) { inherit system; };
  upper = [ "A" "B" "C" "D" "E" "F" "G" "H" "I" "J" "K" "L" "M" "N" "O" "P" "Q" "R" "S" "T" "U" "V" "W" "X" "Y" "Z" ];
  lower = map (c: builtins.replaceStrings upper [ "a" "b" "c" "d" "e" "f" "g" "h" "i" "j" "k" "l" "m" "n" "o" "p" "q" "r" "s" "t" "u" "v" "w" "x" "y" "z" ] c) upper;
  toLower = builtins.replaceStrings upper lower;
  isDrv = v: builtins.isAttrs v && (v.type or null) == "derivation";
  attempt = v: let r = builtins.tryEval v; in if r.success then r.value else null;
  findIn = set: seg:
    if builtins.hasAttr seg set then seg
    else if builtins.hasAttr "_${seg}" set then "_${seg}"
    else let m = builtins.filter (n: toLower n == seg) (builtins.attrNames set); in
      if m != [ ] then builtins.head m else null;
  lookup = dotted: builtins.foldl'
    (acc: seg:
      if !acc.ok then acc
      else if !(builtins.isAttrs acc.value) || isDrv acc.value then acc // { ok = false; names = [ ]; }
      else let n = findIn acc.value seg; in
        if n == null then acc // { ok = false; names = builtins.attrNames acc.value; }
        else { ok = true; value = attempt (builtins.getAttr n acc.value); at = acc.at ++ [ n ]; })
    { ok = true; value = set; at = [ ]; }
    (builtins.filter builtins.isString (builtins.split "\\." dotted));
  found = p: let r = lookup p; in r.ok && isDrv r.value;
  wanted = builtins.fromJSON packages;
  unknown = builtins.filter (p: !(found p)) wanted;
  report = map (p: let r = lookup p; in { name = p; at = map toLower r.at; names = if r.ok then [ ] else map toLower r.names; }) unknown;
  chosen = wanted ++ builtins.filter found (builtins.fromJSON optional);
in
{
  all = if unknown != [ ] then throw "flakeport-unknown-packages ${builtins.toJSON report}"
    else map (p: (lookup p).value) chosen;
}
"#;

#[derive(Debug, Deserialize)]
struct UnknownPackage {
    name: String,
    at: Vec<String>,
    names: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct BuildJson {
    outputs: std::collections::BTreeMap<String, PathBuf>,
}

/// One entry of `nix path-info --json -r`.
#[derive(Debug, Clone, Deserialize)]
pub struct PathInfo {
    pub path: PathBuf,
    #[serde(rename = "narSize")]
    pub nar_size: u64,
    #[serde(default)]
    pub references: Vec<PathBuf>,
    #[serde(rename = "narHash", default)]
    pub nar_hash: String,
    #[serde(default)]
    pub deriver: Option<PathBuf>,
}

/// The flake source as Nix locked it for an evaluation.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct FlakeLock {
    #[serde(rename = "narHash")]
    pub nar_hash: Option<String>,
    pub rev: Option<String>,
}

pub struct Nix {
    gcroots: PathBuf,
    timeout: Duration,
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
    pub fn new(
        state_dir: &Path,
        timeout: Duration,
        scheduler: Arc<Scheduler>,
    ) -> std::io::Result<Nix> {
        let gcroots = state_dir.join("gcroots");
        std::fs::create_dir_all(&gcroots)?;
        Ok(Nix {
            gcroots,
            timeout,
            scheduler,
            locks: moka::future::Cache::new(10_000),
        })
    }

    /// Build the target; the out-link in the state dir is a GC root that
    /// keeps the output (and everything it references) alive until the same
    /// name and tag is built again.
    pub async fn build(&self, t: &BuildTarget, log: BuildLog<'_>) -> Result<PathBuf> {
        let link = self.flake_root(t);
        let outs = self
            .build_outputs(&link, expr_args(t, "target"), t, log, |f| {
                classify_flake(t, f, self.timeout)
            })
            .await?;
        outs.into_iter()
            .next()
            .ok_or_else(|| RegistryError::internal("`nix build --json` named no output"))
    }

    /// Build every package of a package-path image; returns their outputs.
    /// The GC root (an out-link) that keeps a flake image's output alive.
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

    pub async fn build_packages(
        &self,
        t: &PackageTarget,
        log: BuildLog<'_>,
    ) -> Result<Vec<PathBuf>> {
        let link = self.packages_root(t);
        let json = |v: &[String]| serde_json::to_string(v).expect("strings serialise");
        let mut args: Vec<String> = ["--impure", "--expr", PACKAGES_NIX, "all"]
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
        let mut outs = self
            .build_outputs(&link, args, t, log, |f| match f {
                Failure::Exit { stderr } if stderr.contains("flakeport-unknown-packages ") => {
                    unknown_packages(t, &stderr)
                }
                f => classify(&t.to_string(), &t.tag, &t.location, f, self.timeout),
            })
            .await?;
        outs.sort();
        outs.dedup();
        Ok(outs)
    }

    /// `nix build --json --out-link LINK ARGS` within the build limit; each
    /// built derivation's default output, in nix's order.
    async fn build_outputs(
        &self,
        link: &Path,
        args: Vec<String>,
        target: &(dyn std::fmt::Display + Sync),
        log: BuildLog<'_>,
        on_failure: impl FnOnce(Failure) -> RegistryError,
    ) -> Result<Vec<PathBuf>> {
        let mut all = vec![
            "build".to_string(),
            "--json".into(),
            // Builders' output on stderr as it comes (prefixed `name> `),
            // for the log a watcher follows; failures keep their tail.
            "--print-build-logs".into(),
            "--out-link".into(),
            path_str(link),
        ];
        all.extend(args);
        tracing::info!(image = %target, "nix build started");
        let started = std::time::Instant::now();
        let stdout = self
            .run_logged(Kind::Build, &all, Some(log))
            .await
            .map_err(on_failure)?;
        tracing::debug!(image = %target, secs = started.elapsed().as_secs_f64(), "nix build finished");
        let built: Vec<BuildJson> = serde_json::from_slice(&stdout).map_err(|e| {
            RegistryError::internal(format!("unexpected `nix build --json` output: {e}"))
        })?;
        Ok(built
            .into_iter()
            .filter_map(|b| {
                b.outputs
                    .get("out")
                    .or_else(|| b.outputs.values().next())
                    .cloned()
            })
            .collect())
    }

    /// `attr` of the flake's evaluation (see `expr_args`), as JSON.
    async fn eval_json<T: serde::de::DeserializeOwned>(
        &self,
        t: &BuildTarget,
        attr: &str,
    ) -> Result<T> {
        let mut args = vec!["eval".to_string(), "--json".into()];
        args.extend(expr_args(t, attr));
        let out = self
            .run(Kind::Eval, &args)
            .await
            .map_err(|f| classify_flake(t, f, self.timeout))?;
        serde_json::from_slice(&out).map_err(RegistryError::internal)
    }

    pub async fn main_program(&self, t: &BuildTarget) -> Result<Option<String>> {
        self.eval_json(t, "mainProgram").await
    }

    /// The flake source's narHash and commit, as the build's evaluation
    /// locks them (for provenance).
    pub async fn flake_lock(&self, t: &BuildTarget) -> Result<FlakeLock> {
        let eval = || self.eval_json(t, "source");
        // `latest` of a work tree can change between two builds.
        if t.locked_ref.is_none() {
            return eval().await;
        }
        self.locks
            .try_get_with(t.eval_ref().to_string(), eval())
            .await
            .map_err(|e: Arc<RegistryError>| (*e).clone())
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
        let named: Vec<Named> = self.eval_json(t, "names").await?;
        Ok(named.into_iter().map(|n| (n.name, n.description)).collect())
    }

    /// Check that the name is an image of the flake at this tag, without building.
    pub async fn check_exists(&self, t: &BuildTarget) -> Result<()> {
        let mut args = vec!["eval".to_string(), "--raw".into()];
        args.extend(expr_args(t, "target.drvPath"));
        self.run(Kind::Eval, &args)
            .await
            .map(|_| ())
            .map_err(|f| classify_flake(t, f, self.timeout))
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

    /// The closure of built paths with sizes and references.
    pub async fn closure(&self, paths: &[PathBuf]) -> Result<Vec<PathInfo>> {
        let mut args = vec!["path-info".to_string(), "--json".into(), "-r".into()];
        args.extend(paths.iter().map(|p| path_str(p)));
        let out = self.run(Kind::Query, &args).await.map_err(|f| match f {
            Failure::Exit { stderr } => {
                RegistryError::internal(format!("nix path-info failed: {stderr}"))
            }
            Failure::Timeout => RegistryError::internal("nix path-info timed out"),
            Failure::Busy => busy(),
        })?;
        serde_json::from_slice(&out).map_err(RegistryError::internal)
    }

    /// Run nix through the scheduler; its stdout if it succeeded.
    async fn run(&self, kind: Kind, args: &[String]) -> std::result::Result<Vec<u8>, Failure> {
        self.run_logged(kind, args, None).await
    }

    /// [`Nix::run`], each stderr line also handed to `log` as it comes.
    async fn run_logged(
        &self,
        kind: Kind,
        args: &[String],
        log: Option<BuildLog<'_>>,
    ) -> std::result::Result<Vec<u8>, Failure> {
        // Works whether or not the host's nix.conf enables flakes.
        let mut all = vec![
            "--extra-experimental-features".to_string(),
            "nix-command flakes".to_string(),
        ];
        all.extend_from_slice(args);
        let job = Job {
            kind,
            program: "nix",
            args: all,
            env: vec![],
            timeout: self.timeout,
            stderr_lines: log,
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

/// The reply when too many processes already wait.
pub fn busy() -> RegistryError {
    RegistryError::TooManyRequests {
        what: "too many nix and git processes are waiting to run".into(),
        retry_after_secs: 5,
    }
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

fn classify_flake(t: &BuildTarget, f: Failure, timeout: Duration) -> RegistryError {
    if let Failure::Exit { stderr } = &f {
        if let Some(rest) = stderr.split("flakeport-unknown-name ").nth(1) {
            let json = rest.lines().next().unwrap_or("[]");
            let all: Vec<String> = serde_json::from_str(json).unwrap_or_default();
            return RegistryError::NameUnknown {
                name: t.attr_path.join("/"),
                flake: t.flake_ref.clone(),
                available: closest(&t.attr_path.join("/"), all, 8),
            };
        }
    }
    classify(&t.to_string(), &t.tag, &t.flake_ref, f, timeout)
}

/// The 404 for a package path: every unknown package, each with the
/// closest names at the level where its lookup failed.
fn unknown_packages(t: &PackageTarget, stderr: &str) -> RegistryError {
    let rest = stderr
        .split("flakeport-unknown-packages ")
        .nth(1)
        .unwrap_or("[]");
    let report: Vec<UnknownPackage> =
        serde_json::from_str(rest.lines().next().unwrap_or("[]")).unwrap_or_default();
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
    RegistryError::PackagesUnknown {
        unknown,
        source_name: t.location.clone(),
    }
}

/// Turn a failed nix run into the error the client should see.
fn classify(target: &str, tag: &str, source: &str, f: Failure, timeout: Duration) -> RegistryError {
    let stderr = match f {
        Failure::Busy => return busy(),
        Failure::Timeout => {
            return RegistryError::BuildTimeout {
                target: target.to_string(),
                secs: timeout.as_secs(),
            }
        }
        Failure::Exit { stderr } => stderr,
    };
    const MISSING_REF: &[&str] = &[
        "unknown revision",
        "Cannot find Git revision",
        "couldn't find remote ref",
        "not a valid object name",
        "invalid reference",
        "HTTP error 404",
        "does not exist",
        "not a tree object",
    ];
    if tag != "latest" && MISSING_REF.iter().any(|m| stderr.contains(m)) {
        return RegistryError::TagUnknown {
            tag: tag.to_string(),
            flake: source.to_string(),
        };
    }
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
    RegistryError::BuildFailed {
        target: target.to_string(),
        log_tail: tail,
    }
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
    fn classifies_recorded_nix_errors() {
        let unknown = "error: flakeport-unknown-name [\"hello\",\"apps\",\"web\"]\n(use '--show-trace' to show detailed location information)\n";
        match classify_flake(
            &target("latest"),
            Failure::Exit {
                stderr: unknown.into(),
            },
            Duration::from_secs(1),
        ) {
            RegistryError::NameUnknown { available, .. } => assert_eq!(available[0], "apps"),
            e => panic!("{e:?}"),
        }
        let badref = "fatal: ambiguous argument 'v9': unknown revision or path not in the working tree.\nerror: program 'git' failed with exit code 128\n";
        assert!(matches!(
            classify_flake(
                &target("v9"),
                Failure::Exit {
                    stderr: badref.into()
                },
                Duration::from_secs(1)
            ),
            RegistryError::TagUnknown { .. }
        ));
        let failed = (1..40)
            .map(|i| format!("line {i}"))
            .collect::<Vec<_>>()
            .join("\n");
        match classify_flake(
            &target("latest"),
            Failure::Exit { stderr: failed },
            Duration::from_secs(1),
        ) {
            RegistryError::BuildFailed { log_tail, .. } => {
                assert!(log_tail.starts_with("line 15\n") && log_tail.ends_with("line 39"))
            }
            e => panic!("{e:?}"),
        }
        assert!(matches!(
            classify_flake(&target("latest"), Failure::Timeout, Duration::from_secs(3)),
            RegistryError::BuildTimeout { secs: 3, .. }
        ));
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
