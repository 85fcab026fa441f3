//! Build output -> [`ImagePlan`]: ordered layers, the image config and its
//! history. One reader per input format, each turning its input into the
//! same plan, so nothing after planning learns where an image came from:
//!
//! - [`nixlib`]: flakeport conf v1, written by `nixlib/`;
//! - [`nixpkgs`]: `dockerTools.streamLayeredImage` confs (and flakeforge's);
//! - [`nix2container`]: nix2container's `buildImage` JSON;
//! - [`archive`]: image archives (docker-archive, OCI layout; tar, gzip or zstd,
//!   file or directory): `buildImage`, `pullImage`, `skopeo copy` outputs;
//! - [`package`]: plain packages and package-path images.
//!
//! `fromImage` bases are planned by the same readers ([`Planner::base`]).

pub mod archive;
pub mod layering;
pub mod nix2container;
pub mod nixlib;
pub mod nixpkgs;
pub mod package;

pub use layering::group_layers;
pub use package::{plan_package, plan_packages, root_links, ROOT_DIRS};

use crate::image::layer::LayerDigest;
use crate::image::layer::{LayerSource, Owner, PermRule};
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Clients fail somewhere past 125 layers.
pub const DEFAULT_MAX_LAYERS: usize = 100;
/// nixpkgs' default: 1970-01-01T00:00:01Z.
pub const DEFAULT_MTIME: u64 = 1;
pub const DEFAULT_CREATED: &str = "1970-01-01T00:00:01Z";
/// fromImage chains deeper than this are refused (a cycle cannot be built
/// by Nix, but a conf can name anything).
const MAX_BASE_DEPTH: usize = 8;
/// A conf or image JSON larger than this is not one.
const MAX_JSON_BYTES: u64 = 64 << 20;

#[derive(Debug, Clone)]
pub struct ImagePlan {
    pub architecture: String,
    pub os: String,
    /// The `config` object of the image config (Entrypoint, Env, ...).
    pub config: Value,
    pub created: String,
    pub layers: Vec<PlannedLayer>,
    /// History entries of a base image, which come before those of the
    /// layers planned here (a base's own entries, empty layers included).
    pub base_history: Vec<Value>,
    /// The platform variant (`v8` for arm64, `v7` for armv7l): what an index
    /// entry and the config say beside the architecture.
    pub variant: Option<String>,
    /// SPDX license identifiers by store path, where the input says them
    /// (a nixlib conf reads its contents' `meta.license`): for SBOMs.
    pub licenses: std::collections::BTreeMap<PathBuf, Vec<String>>,
}

impl ImagePlan {
    /// The image config's `history`: the base's entries, then one per
    /// layer planned here.
    pub fn history(&self) -> Vec<Value> {
        let own = self.layers.iter().filter_map(|l| {
            l.comment.as_ref().map(
                |c| json!({ "created": self.created, "created_by": "flakeport", "comment": c }),
            )
        });
        self.base_history.iter().cloned().chain(own).collect()
    }

    /// This plan as the base of another: its layers keep their digests and
    /// its history travels as base history.
    fn into_base(self) -> ImagePlan {
        let history = self.history();
        ImagePlan {
            layers: self
                .layers
                .into_iter()
                .map(|l| PlannedLayer { comment: None, ..l })
                .collect(),
            base_history: history,
            ..self
        }
    }
}

#[derive(Debug, Clone)]
pub struct PlannedLayer {
    pub source: LayerSource,
    /// For the image history: what the layer holds. `None` for a base
    /// image's layer, whose entry is in [`ImagePlan::base_history`].
    pub comment: Option<String>,
    /// Digest and size found while the input was read (archive members,
    /// hashed in the one pass over the archive): no digest pass needed.
    pub known: Option<LayerDigest>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("the conf is not valid JSON of a known kind: {0}")]
    Conf(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{path}: {reason}")]
    Archive { path: PathBuf, reason: String },
    #[error("base image {path}: {reason}")]
    Base { path: PathBuf, reason: String },
    #[error("{0}")]
    Outside(String),
}

/// The store paths a build output may make the server read: its closure.
/// A conf names paths as it likes, so each one is checked here before it
/// is read: a path a layer walks (without following symlinks) must be a
/// store path of the closure or lie lexically inside one; a file or tree
/// the server opens (a tar, an archive, a root tree) must, with every
/// symlink resolved, too. Not one byte from outside is read or served.
///
/// The set may still be coming (`nix path-info` runs while the planner
/// reads the conf): a check of any path outside the output itself waits
/// for it.
#[derive(Debug, Default)]
pub struct Closure {
    out: PathBuf,
    /// `None` once filled: the query failed, and nothing but the output
    /// passes.
    paths: std::sync::OnceLock<Option<HashSet<PathBuf>>>,
    filled: (std::sync::Mutex<()>, std::sync::Condvar),
    /// Off only in unit tests, whose confs live in temp dirs.
    confined: bool,
}

impl Closure {
    pub fn new(out: &Path, paths: impl IntoIterator<Item = PathBuf>) -> Closure {
        let closure = Closure::pending(out);
        closure.fill(Some(paths.into_iter().collect()));
        closure
    }

    /// A closure whose paths [`Closure::fill`] gives later.
    pub fn pending(out: &Path) -> Closure {
        Closure {
            out: out.to_path_buf(),
            confined: true,
            ..Closure::default()
        }
    }

    /// The paths, or `None` if they cannot be had: every check waiting
    /// goes on. Only the first fill counts.
    pub fn fill(&self, paths: Option<HashSet<PathBuf>>) {
        let _ = self.paths.set(paths);
        let _guard = self.filled.0.lock().unwrap_or_else(|e| e.into_inner());
        self.filled.1.notify_all();
    }

    fn holds(&self, store_path: &Path) -> bool {
        if store_path == self.out {
            return true;
        }
        let mut guard = self.filled.0.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(paths) = self.paths.get() {
                return paths.as_ref().is_some_and(|p| p.contains(store_path));
            }
            guard = self.filled.1.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
    }

    #[cfg(test)]
    pub fn anywhere() -> Closure {
        Closure {
            confined: false,
            ..Closure::default()
        }
    }

    fn outside(&self, path: &Path, real: Option<&Path>) -> PlanError {
        let via = match real {
            Some(r) if r != path => format!(" (it resolves to {})", r.display()),
            _ => String::new(),
        };
        PlanError::Outside(format!(
            "{}{via} is not in the closure of {}",
            path.display(),
            self.out.display()
        ))
    }

    /// A path walked without following symlinks (store layers).
    pub fn check_walked(&self, path: &Path) -> Result<(), PlanError> {
        if !self.confined {
            return Ok(());
        }
        match store_path_of(path) {
            Some(p) if self.holds(&p) => Ok(()),
            _ => Err(self.outside(path, None)),
        }
    }

    /// A file or directory opened through symlinks: where it really is.
    pub fn check_opened(&self, path: &Path) -> Result<PathBuf, PlanError> {
        self.check_walked(path)?;
        let real = std::fs::canonicalize(path).map_err(|e| PlanError::Archive {
            path: path.to_path_buf(),
            reason: format!("cannot read: {e}"),
        })?;
        match store_path_of(&real) {
            _ if !self.confined => Ok(real),
            Some(p) if self.holds(&p) => Ok(real),
            _ => Err(self.outside(path, Some(&real))),
        }
    }
}

pub use crate::vocab::store_path_of;

/// One node of the closure graph (`exportReferencesGraph` / `nix path-info`).
#[derive(Debug, Clone, Deserialize)]
pub struct GraphNode {
    pub path: PathBuf,
    #[serde(rename = "narSize", default)]
    pub nar_size: u64,
    #[serde(default)]
    pub references: Vec<PathBuf>,
}

/// Plans build outputs. Holds what is worth keeping between images: the
/// plans of archives already read, so an archive costs one pass per
/// process however many images are built on it.
pub struct Planner {
    /// By archive and architecture (which picks the image of an OCI index).
    archives: moka::sync::Cache<(PathBuf, String), Arc<ImagePlan>>,
}

impl Default for Planner {
    fn default() -> Self {
        Planner {
            archives: moka::sync::Cache::new(1_000),
        }
    }
}

impl Planner {
    /// The plan of a build output, or `None` for a directory that is no
    /// image: a plain package, planned from its closure by the caller.
    /// Blocking: reads files, and every byte of an archive.
    /// Every file read lies in `closure` (see [`Closure`]).
    pub fn plan_output(
        &self,
        out: &Path,
        arch: &str,
        closure: &Closure,
    ) -> Result<Option<ImagePlan>, PlanError> {
        self.plan_path(out, arch, 0, closure)
    }

    fn plan_path(
        &self,
        given: &Path,
        arch: &str,
        depth: usize,
        closure: &Closure,
    ) -> Result<Option<ImagePlan>, PlanError> {
        let path = &closure.check_opened(given)?;
        let io = |e: std::io::Error| PlanError::Archive {
            path: path.to_path_buf(),
            reason: format!("cannot read: {e}"),
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.is_dir() {
            return if archive::is_layout_dir(path) {
                self.archive(path, arch).map(|p| Some((*p).clone()))
            } else {
                Ok(None)
            };
        }
        let mut head = Vec::with_capacity(512);
        std::fs::File::open(path)
            .map_err(io)?
            .take(512)
            .read_to_end(&mut head)
            .map_err(io)?;
        if archive::is_archive(&head) {
            return self.archive(path, arch).map(|p| Some((*p).clone()));
        }
        if head.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(PlanError::Conf(
                "the output is neither a JSON conf, an image archive (tar, gzip or zstd) nor a directory"
                    .into(),
            ));
        }
        if meta.len() > MAX_JSON_BYTES {
            return Err(PlanError::Conf(format!(
                "{} bytes is too large for a conf",
                meta.len()
            )));
        }
        let bytes = std::fs::read(path).map_err(io)?;
        let value: Value =
            serde_json::from_slice(&bytes).map_err(|e| PlanError::Conf(e.to_string()))?;
        let conf = |e: serde_json::Error| PlanError::Conf(e.to_string());
        let plan = if value.get("flakeport").is_some() {
            nixlib::plan(serde_json::from_value(value).map_err(conf)?, arch, |b| {
                self.base(b, arch, depth, closure)
            })?
        } else if value.get("store_layers").is_some() {
            nixpkgs::plan(serde_json::from_value(value).map_err(conf)?, arch, |b| {
                self.base(b, arch, depth, closure)
            })?
        } else if value.get("image-config").is_some() {
            nix2container::plan(serde_json::from_value(value).map_err(conf)?, arch, closure)?
        } else {
            return Err(PlanError::Conf("neither a flakeport conf (\"flakeport\" field), a streamLayeredImage conf (\"store_layers\") nor a nix2container image (\"image-config\")".into()));
        };
        Ok(Some(plan))
    }

    /// The plan of a `fromImage`: an archive, or another image output of a
    /// conf format. Its architecture must be the image's.
    pub fn base(
        &self,
        path: &Path,
        arch: &str,
        depth: usize,
        closure: &Closure,
    ) -> Result<ImagePlan, PlanError> {
        let base = |reason: String| PlanError::Base {
            path: path.to_path_buf(),
            reason,
        };
        if depth >= MAX_BASE_DEPTH {
            return Err(base(format!(
                "fromImage chains deeper than {MAX_BASE_DEPTH} are not supported"
            )));
        }
        let plan = self
            .plan_path(path, arch, depth + 1, closure)
            .map_err(|e| match e {
                PlanError::Outside(_) => e,
                PlanError::Archive { path: p, reason } if p == path => base(reason),
                e => base(e.to_string()),
            })?
            .ok_or_else(|| base("is a directory, not an image".into()))?;
        if plan.architecture != arch {
            return Err(base(format!(
                "is for {}/{}, this image for linux/{arch}",
                plan.os, plan.architecture
            )));
        }
        Ok(plan.into_base())
    }

    fn archive(&self, path: &Path, arch: &str) -> Result<Arc<ImagePlan>, PlanError> {
        let key = (path.to_path_buf(), arch.to_string());
        if let Some(p) = self.archives.get(&key) {
            return Ok(p);
        }
        let plan = Arc::new(archive::read(path, arch)?);
        self.archives.insert(key, plan.clone());
        Ok(plan)
    }
}

/// `Env` of an image on a base: the base's variables, then the image's, a
/// later value replacing an earlier one in the earlier one's place
/// (nixpkgs' rule for `fromImage`).
pub fn merge_env(base: &Value, own: &Value) -> Option<Value> {
    let all: Vec<&str> = [base, own]
        .iter()
        .filter_map(|v| v.get("Env").and_then(Value::as_array))
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if all.is_empty() {
        return None;
    }
    let mut merged: Vec<(String, &str)> = Vec::new();
    for entry in all {
        let key = entry.split('=').next().unwrap_or(entry).to_string();
        match merged.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = entry,
            None => merged.push((key, entry)),
        }
    }
    Some(Value::Array(
        merged.into_iter().map(|(_, e)| json!(e)).collect(),
    ))
}

/// Base layers, then own layers; the base's history first.
fn on_base(base: ImagePlan, mut own: ImagePlan) -> ImagePlan {
    let mut layers = base.layers;
    layers.append(&mut own.layers);
    let mut licenses = base.licenses;
    licenses.append(&mut own.licenses);
    ImagePlan {
        layers,
        base_history: base.base_history,
        licenses,
        ..own
    }
}

/// Owner fields, shared by both conf formats and perms rules: ids as
/// numbers or strings (nixpkgs passes them with `--arg`, as strings).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct OwnerFields {
    #[serde(default, deserialize_with = "num_or_string")]
    pub(crate) uid: Option<u64>,
    #[serde(default, deserialize_with = "num_or_string")]
    pub(crate) gid: Option<u64>,
    #[serde(default)]
    pub(crate) uname: Option<String>,
    #[serde(default)]
    pub(crate) gname: Option<String>,
}

impl OwnerFields {
    /// The owner, with root's defaults for what is not set.
    pub(crate) fn or_root(self) -> Owner {
        let d = Owner::default();
        Owner {
            uid: self.uid.unwrap_or(d.uid),
            gid: self.gid.unwrap_or(d.gid),
            uname: self.uname.unwrap_or(d.uname),
            gname: self.gname.unwrap_or(d.gname),
        }
    }
}

pub(crate) fn store_layer(
    paths: Vec<PathBuf>,
    mtime: u64,
    owner: &Owner,
    perms: &[PermRule],
) -> PlannedLayer {
    let names: Vec<String> = paths
        .iter()
        .map(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    let comment = if names.len() <= 3 {
        format!("store paths: {}", names.join(" "))
    } else {
        format!("{} store paths: {} ...", names.len(), names[..3].join(" "))
    };
    PlannedLayer {
        comment: Some(comment),
        known: None,
        source: LayerSource::StorePaths {
            paths,
            mtime,
            owner: owner.clone(),
            perms: perms.to_vec(),
        },
    }
}

pub(crate) fn created(c: Option<String>) -> String {
    match c.as_deref() {
        None => DEFAULT_CREATED.into(),
        Some("now") => time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| DEFAULT_CREATED.into()),
        Some(s) => s.to_string(),
    }
}

/// RFC 3339 (`date -Iseconds` output included) -> Unix seconds.
pub(crate) fn parse_time(s: &str) -> Option<u64> {
    if s == "now" {
        return Some(time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64);
    }
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp()).ok()
}

pub(crate) fn num_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom("expected a non-negative integer")),
        Some(Value::String(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("{s:?} is not a number"))),
        Some(other) => Err(serde::de::Error::custom(format!(
            "expected a number, got {other}"
        ))),
    }
}

pub(crate) fn time_or_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom("mtime must be >= 0")),
        Some(Value::String(s)) => parse_time(&s)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not an RFC 3339 time"))),
        Some(other) => Err(serde::de::Error::custom(format!(
            "expected a time, got {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The planner runs while `nix path-info` does: the output passes at
    /// once, any other path waits for the closure, and a query that failed
    /// lets nothing else through.
    #[test]
    fn a_pending_closure_makes_checks_wait() {
        let out = Path::new("/nix/store/aaa-out");
        let dep = Path::new("/nix/store/bbb-dep/bin/sh");
        let closure = Arc::new(Closure::pending(out));
        assert!(closure
            .check_walked(Path::new("/nix/store/aaa-out/conf.json"))
            .is_ok());
        let (tx, rx) = std::sync::mpsc::channel();
        let waiting = {
            let closure = closure.clone();
            std::thread::spawn(move || tx.send(closure.check_walked(dep).is_ok()).unwrap())
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            rx.try_recv().is_err(),
            "a check answered before the closure came"
        );
        closure.fill(Some(
            [out, Path::new("/nix/store/bbb-dep")]
                .map(PathBuf::from)
                .into(),
        ));
        assert!(rx.recv().unwrap());
        waiting.join().unwrap();
        // Only the first fill counts.
        closure.fill(None);
        assert!(closure.check_walked(dep).is_ok());

        let failed = Closure::pending(out);
        failed.fill(None);
        assert!(failed.check_walked(dep).is_err());
        assert!(failed
            .check_walked(Path::new("/nix/store/aaa-out/x"))
            .is_ok());
    }

    #[test]
    fn only_paths_inside_the_closure_pass() {
        let c = Closure::new(
            Path::new("/nix/store/aaa-out"),
            [PathBuf::from("/nix/store/aaa-out")],
        );
        assert!(c.check_walked(Path::new("/nix/store/aaa-out")).is_ok());
        assert!(c
            .check_walked(Path::new("/nix/store/aaa-out/bin/sh"))
            .is_ok());
        for bad in [
            "/etc",
            "/nix/store/bbb-other",
            "/nix/store/aaa-out/../bbb-other",
            "/nix/store/aaa-out/bin/../../../../etc",
            "/nix/store",
            "nix/store/aaa-out",
        ] {
            let e = c.check_walked(Path::new(bad)).unwrap_err().to_string();
            assert!(
                e.contains("is not in the closure of /nix/store/aaa-out"),
                "{bad}: {e}"
            );
        }
    }
    use crate::image::layer::LayerSource;

    /// A conf as a build output would hold it.
    fn plan_conf(json: &[u8], arch: &str) -> Result<ImagePlan, PlanError> {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("conf.json");
        std::fs::write(&out, json).unwrap();
        Planner::default()
            .plan_output(&out, arch, &Closure::anywhere())
            .map(|p| p.expect("a conf is an image"))
    }

    #[test]
    fn nixpkgs_conf_with_string_ids_and_old_flakeforge_conf() {
        let nixpkgs = br#"{"architecture":"amd64","config":{"Cmd":["/bin/sh"]},"os":"linux","store_dir":"/nix/store",
          "from_image":null,"store_layers":[["/nix/store/a-glibc"],["/nix/store/b-bash","/nix/store/c-x"]],
          "customisation_layer":"/nix/store/d-cust","repo_tag":"x:y","created":"1970-01-01T00:00:01+00:00",
          "mtime":"1970-01-01T00:00:01+00:00","uid":"1000","gid":"100","uname":"app","gname":"users"}"#;
        let p = plan_conf(nixpkgs, "amd64").unwrap();
        assert_eq!(p.layers.len(), 3);
        match &p.layers[1].source {
            LayerSource::StorePaths {
                paths,
                mtime,
                owner,
                ..
            } => {
                assert_eq!(paths.len(), 2);
                assert_eq!(*mtime, 1);
                assert_eq!(
                    (owner.uid, owner.gid, owner.uname.as_str()),
                    (1000, 100, "app")
                );
            }
            s => panic!("{s:?}"),
        }
        assert_eq!(
            p.layers[2].source,
            LayerSource::TarFile {
                path: "/nix/store/d-cust/layer.tar".into()
            }
        );
        let flakeforge = br#"{"architecture":"amd64","config":{},"os":"linux","store_dir":"/nix/store","from_image":null,
          "store_layers":[["/nix/store/a"]],"customisation_layer":"/nix/store/c","repo_tag":"x:y","created":"1970-01-01T00:00:05+00:00"}"#;
        let p = plan_conf(flakeforge, "amd64").unwrap();
        assert!(
            matches!(&p.layers[0].source, LayerSource::StorePaths { mtime: 5, owner, .. } if owner.uname == "root")
        );
        let based = br#"{"store_layers":[],"from_image":"/nix/store/x-absent.tar"}"#;
        assert!(matches!(
            plan_conf(based, "amd64"),
            Err(PlanError::Base { .. })
        ));
    }

    #[test]
    fn conf_v1_layers_and_root() {
        let conf = br#"{"flakeport":1,"architecture":"amd64","config":{"Entrypoint":["/bin/app"]},"mtime":1,
          "uid":0,"gid":0,"uname":"root","gname":"root","perms":[{"path":"/tmp","mode":"1777"}],
          "rootLayer":"/nix/store/r-root","maxLayers":3,"layers":[],
          "graph":[{"path":"/nix/store/r-root","narSize":1,"references":["/nix/store/app"]},
                   {"path":"/nix/store/app","narSize":10,"references":["/nix/store/lib","/nix/store/app"]},
                   {"path":"/nix/store/lib","narSize":100,"references":[]},
                   {"path":"/nix/store/extra","narSize":5,"references":[]}],
          "builder":"ignored","outputs":{"out":"/nix/store/c-conf.json"}}"#;
        let p = plan_conf(conf, "amd64").unwrap();
        assert_eq!(p.layers.len(), 3, "maxLayers counts the root layer");
        let LayerSource::RootTree { perms, .. } = &p.layers[2].source else {
            panic!()
        };
        assert_eq!(perms[0].mode, Some(0o1777));
        let LayerSource::StorePaths { paths, .. } = &p.layers[0].source else {
            panic!()
        };
        assert_eq!(
            paths,
            &[PathBuf::from("/nix/store/app"), "/nix/store/lib".into()],
            "over budget, the app travels with the library only it needs"
        );
        let newer = br#"{"flakeport":2}"#;
        assert!(matches!(
            plan_conf(newer, "amd64"),
            Err(PlanError::Unsupported(_))
        ));
    }

    #[test]
    fn root_links_merge_packages_first_wins() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a-pkg");
        let b = t.path().join("b-pkg");
        std::fs::create_dir_all(a.join("bin")).unwrap();
        std::fs::create_dir_all(b.join("bin")).unwrap();
        std::fs::create_dir_all(b.join("etc/ssl/certs")).unwrap();
        std::fs::create_dir_all(b.join("include")).unwrap();
        std::fs::write(a.join("bin/env"), "").unwrap();
        std::fs::write(a.join("bin/tool"), "").unwrap();
        std::fs::write(b.join("bin/tool"), "").unwrap();
        std::fs::write(b.join("bin/bash"), "").unwrap();
        std::fs::write(b.join("etc/ssl/certs/ca-bundle.crt"), "").unwrap();
        let outs = vec![a.clone(), b.clone()];
        let links = root_links(&outs);
        let got: Vec<(String, Option<String>)> = links
            .iter()
            .map(|e| (e.path.clone(), e.target.clone()))
            .collect();
        let s = |p: &Path| Some(p.to_str().unwrap().to_string());
        assert_eq!(
            got,
            vec![
                ("/bin".into(), None),
                ("/bin/bash".into(), s(&b.join("bin/bash"))),
                ("/bin/env".into(), s(&a.join("bin/env"))),
                ("/bin/tool".into(), s(&a.join("bin/tool"))),
                ("/etc".into(), None),
                ("/etc/ssl".into(), None),
                ("/etc/ssl/certs".into(), None),
                (
                    "/etc/ssl/certs/ca-bundle.crt".into(),
                    s(&b.join("etc/ssl/certs/ca-bundle.crt"))
                ),
                ("/tmp".into(), None),
                ("/usr".into(), None),
                ("/usr/bin".into(), None),
                ("/usr/bin/env".into(), s(&a.join("bin/env"))),
            ]
        );
        let plan = plan_packages(&outs, vec![], true, "amd64");
        assert_eq!(plan.config["Cmd"], json!(["bash"]));
        assert_eq!(
            plan.config["Env"][1],
            json!("SSL_CERT_FILE=/etc/ssl/certs/ca-bundle.crt")
        );
        assert!(plan_packages(&outs, vec![], false, "amd64")
            .config
            .get("Cmd")
            .is_none());
    }
}
