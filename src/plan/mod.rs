//! Build output -> [`ImagePlan`]: ordered layers of store paths, the root
//! layer and the image config. Understands three inputs: flakeport conf v1
//! (nixlib), nixpkgs/flakeforge `streamLayeredImage` confs, and plain
//! packages.

use crate::layer::{LayerSource, LinkEntry, Owner, PermRule};

pub mod layering;
pub use layering::group_layers;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Clients fail somewhere past 125 layers.
pub const DEFAULT_MAX_LAYERS: usize = 100;
/// nixpkgs' default: 1970-01-01T00:00:01Z.
pub const DEFAULT_MTIME: u64 = 1;
pub const DEFAULT_CREATED: &str = "1970-01-01T00:00:01Z";

#[derive(Debug, Clone)]
pub struct ImagePlan {
    pub architecture: String,
    pub os: String,
    /// The `config` object of the image config (Entrypoint, Env, ...).
    pub config: Value,
    pub created: String,
    pub layers: Vec<PlannedLayer>,
}

#[derive(Debug, Clone)]
pub struct PlannedLayer {
    pub source: LayerSource,
    /// For the image history: what the layer holds.
    pub comment: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("the conf is not valid JSON of a known kind: {0}")]
    Conf(String),
    #[error("{0}")]
    Unsupported(String),
}

/// One node of the closure graph (`exportReferencesGraph` / `nix path-info`).
#[derive(Debug, Clone, Deserialize)]
pub struct GraphNode {
    pub path: PathBuf,
    #[serde(rename = "narSize", default)]
    pub nar_size: u64,
    #[serde(default)]
    pub references: Vec<PathBuf>,
}

/// flakeport conf v1, as written by `nixlib` (the derivation's structured
/// attributes; unknown fields are ignored). Documented in nixlib/README.md.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfV1 {
    flakeport: u32,
    #[serde(default)]
    architecture: Option<String>,
    #[serde(default)]
    os: Option<String>,
    #[serde(default)]
    config: Option<Value>,
    #[serde(default)]
    created: Option<String>,
    #[serde(default, deserialize_with = "time_or_seconds")]
    mtime: Option<u64>,
    #[serde(flatten)]
    owner: OwnerFields,
    #[serde(default)]
    perms: Vec<PermV1>,
    #[serde(default)]
    root_layer: Option<PathBuf>,
    /// The image's contents: the layering keeps each with what only it needs.
    #[serde(default)]
    roots: Vec<PathBuf>,
    #[serde(default)]
    graph: Vec<GraphNode>,
    #[serde(default)]
    layers: Vec<Vec<PathBuf>>,
    #[serde(default)]
    max_layers: Option<usize>,
}

/// Owner fields, shared by both conf formats and perms rules: ids as
/// numbers or strings (nixpkgs passes them with `--arg`, as strings).
#[derive(Debug, Default, Deserialize)]
struct OwnerFields {
    #[serde(default, deserialize_with = "num_or_string")]
    uid: Option<u64>,
    #[serde(default, deserialize_with = "num_or_string")]
    gid: Option<u64>,
    #[serde(default)]
    uname: Option<String>,
    #[serde(default)]
    gname: Option<String>,
}

impl OwnerFields {
    /// The owner, with root's defaults for what is not set.
    fn or_root(self) -> Owner {
        let d = Owner::default();
        Owner {
            uid: self.uid.unwrap_or(d.uid),
            gid: self.gid.unwrap_or(d.gid),
            uname: self.uname.unwrap_or(d.uname),
            gname: self.gname.unwrap_or(d.gname),
        }
    }
}

#[derive(Debug, Deserialize)]
struct PermV1 {
    path: String,
    #[serde(default)]
    mode: Option<String>,
    #[serde(flatten)]
    owner: OwnerFields,
    #[serde(default)]
    recursive: bool,
}

/// nixpkgs `streamLayeredImage` conf (and flakeforge's older one, which
/// lacks mtime and owner fields).
#[derive(Debug, Deserialize)]
struct NixpkgsConf {
    store_layers: Vec<Vec<PathBuf>>,
    #[serde(default)]
    customisation_layer: Option<PathBuf>,
    #[serde(default)]
    config: Option<Value>,
    #[serde(default)]
    architecture: Option<String>,
    #[serde(default)]
    created: Option<String>,
    #[serde(default, deserialize_with = "time_or_seconds")]
    mtime: Option<u64>,
    #[serde(flatten)]
    owner: OwnerFields,
    #[serde(default)]
    from_image: Option<Value>,
}

/// Parse a conf file from a build output.
pub fn plan_conf(bytes: &[u8], system_arch: &str) -> Result<ImagePlan, PlanError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| PlanError::Conf(e.to_string()))?;
    if value.get("flakeport").is_some() {
        let conf: ConfV1 =
            serde_json::from_value(value).map_err(|e| PlanError::Conf(e.to_string()))?;
        plan_v1(conf, system_arch)
    } else if value.get("store_layers").is_some() {
        let conf: NixpkgsConf =
            serde_json::from_value(value).map_err(|e| PlanError::Conf(e.to_string()))?;
        plan_nixpkgs(conf, system_arch)
    } else {
        Err(PlanError::Conf("neither a flakeport conf (\"flakeport\" field) nor a streamLayeredImage conf (\"store_layers\")".into()))
    }
}

fn plan_v1(conf: ConfV1, system_arch: &str) -> Result<ImagePlan, PlanError> {
    if conf.flakeport != 1 {
        return Err(PlanError::Unsupported(format!(
            "flakeport conf version {} is newer than this server understands (1); upgrade flakeport",
            conf.flakeport
        )));
    }
    let mtime = conf.mtime.unwrap_or(DEFAULT_MTIME);
    let owner = conf.owner.or_root();
    let perms = conf
        .perms
        .into_iter()
        .map(|p| {
            let mode = p
                .mode
                .map(|m| u32::from_str_radix(m.trim_start_matches("0o"), 8))
                .transpose()
                .map_err(|_| PlanError::Conf(format!("perms mode for {} is not octal", p.path)))?;
            Ok(PermRule {
                path: p.path,
                mode,
                uid: p.owner.uid,
                gid: p.owner.gid,
                uname: p.owner.uname,
                gname: p.owner.gname,
                recursive: p.recursive,
            })
        })
        .collect::<Result<Vec<_>, PlanError>>()?;
    let max_layers = conf.max_layers.unwrap_or(DEFAULT_MAX_LAYERS).max(2);
    let graph: Vec<GraphNode> = conf
        .graph
        .into_iter()
        .filter(|n| Some(&n.path) != conf.root_layer.as_ref())
        .collect();
    let store_budget = max_layers - usize::from(conf.root_layer.is_some());
    let mut layers: Vec<PlannedLayer> =
        group_layers(&graph, &conf.roots, &conf.layers, store_budget)
            .into_iter()
            .map(|paths| store_layer(paths, mtime, &owner, &perms))
            .collect();
    if let Some(dir) = conf.root_layer {
        layers.push(PlannedLayer {
            comment: format!("root layer {}", dir.display()),
            source: LayerSource::RootTree {
                dir,
                mtime,
                owner: owner.clone(),
                perms,
            },
        });
    }
    Ok(ImagePlan {
        architecture: conf.architecture.unwrap_or_else(|| system_arch.to_string()),
        os: conf.os.unwrap_or_else(|| "linux".into()),
        config: conf.config.unwrap_or_else(|| json!({})),
        created: created(conf.created),
        layers,
    })
}

fn plan_nixpkgs(conf: NixpkgsConf, system_arch: &str) -> Result<ImagePlan, PlanError> {
    if conf.from_image.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(PlanError::Unsupported(
            "images with fromImage are not supported yet".into(),
        ));
    }
    // Older confs had no mtime: nixpkgs then derived it from `created`.
    let mtime = conf
        .mtime
        .or_else(|| conf.created.as_deref().and_then(parse_time))
        .unwrap_or(DEFAULT_MTIME);
    let owner = conf.owner.or_root();
    let mut layers: Vec<PlannedLayer> = conf
        .store_layers
        .into_iter()
        .filter(|l| !l.is_empty())
        .map(|paths| store_layer(paths, mtime, &owner, &[]))
        .collect();
    if let Some(dir) = conf.customisation_layer {
        let path = dir.join("layer.tar");
        layers.push(PlannedLayer {
            comment: format!("customisation layer {}", dir.display()),
            source: LayerSource::TarFile { path },
        });
    }
    Ok(ImagePlan {
        architecture: conf.architecture.unwrap_or_else(|| system_arch.to_string()),
        os: "linux".into(),
        config: conf.config.unwrap_or_else(|| json!({})),
        created: created(conf.created),
        layers,
    })
}

/// A plain package: an image of its closure, its program as entrypoint.
pub fn plan_package(
    out: &Path,
    graph: Vec<GraphNode>,
    main_program: Option<String>,
    system_arch: &str,
) -> ImagePlan {
    let bin = out.join("bin");
    let program = main_program.or_else(|| {
        let mut progs: Vec<String> = std::fs::read_dir(&bin)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        progs.sort();
        (progs.len() == 1).then(|| progs.remove(0))
    });
    let mut config = serde_json::Map::new();
    config.insert(
        "Env".into(),
        json!([format!("PATH={}:/bin:/usr/bin", bin.display())]),
    );
    if let Some(p) = program {
        config.insert("Entrypoint".into(), json!([bin.join(p)]));
    }
    let owner = Owner::default();
    let layers = group_layers(&graph, &[out.to_path_buf()], &[], DEFAULT_MAX_LAYERS)
        .into_iter()
        .map(|paths| store_layer(paths, DEFAULT_MTIME, &owner, &[]))
        .collect();
    ImagePlan {
        architecture: system_arch.to_string(),
        os: "linux".into(),
        config: Value::Object(config),
        created: DEFAULT_CREATED.into(),
        layers,
    }
}

/// Directories of each package linked into `/` in a package-path image.
pub const ROOT_DIRS: &[&str] = &["bin", "etc", "lib", "share"];
/// Where nixpkgs' `cacert` puts its bundle.
const CA_BUNDLE: &str = "etc/ssl/certs/ca-bundle.crt";

/// A package-path image: the closure of the packages, and a root layer
/// linking every package's `bin/`, `etc/`, `lib/` and `share/` into `/`
/// (the first package, in store-path order, wins a conflict), `/tmp` (1777)
/// and `/usr/bin/env`.
pub fn plan_packages(
    outs: &[PathBuf],
    graph: Vec<GraphNode>,
    shell: bool,
    arch: &str,
) -> ImagePlan {
    let links = root_links(outs);
    let has = |p: &str| links.iter().any(|e| e.path == p);
    let mut env = vec![json!("PATH=/bin:/usr/bin")];
    if has(&format!("/{CA_BUNDLE}")) {
        env.push(json!(format!("SSL_CERT_FILE=/{CA_BUNDLE}")));
    }
    let mut config = serde_json::Map::new();
    config.insert("Env".into(), Value::Array(env));
    if shell && has("/bin/bash") {
        config.insert("Cmd".into(), json!(["bash"]));
    }
    let owner = Owner::default();
    let mut layers: Vec<PlannedLayer> = group_layers(&graph, outs, &[], DEFAULT_MAX_LAYERS - 1)
        .into_iter()
        .map(|paths| store_layer(paths, DEFAULT_MTIME, &owner, &[]))
        .collect();
    let tmp = PermRule {
        path: "/tmp".into(),
        mode: Some(0o1777),
        ..Default::default()
    };
    layers.push(PlannedLayer {
        comment: format!("root layer: links to {} packages", outs.len()),
        source: LayerSource::Links {
            entries: links,
            mtime: DEFAULT_MTIME,
            owner,
            perms: vec![tmp],
        },
    });
    ImagePlan {
        architecture: arch.to_string(),
        os: "linux".into(),
        config: Value::Object(config),
        created: DEFAULT_CREATED.into(),
        layers,
    }
}

/// The root layer's entries, in archive (component) order.
pub fn root_links(outs: &[PathBuf]) -> Vec<LinkEntry> {
    let mut tree: BTreeMap<Vec<String>, Option<String>> = BTreeMap::new();
    for out in outs {
        for dir in ROOT_DIRS {
            link_into(&out.join(dir), vec![dir.to_string()], &mut tree, 0);
        }
    }
    tree.insert(vec!["tmp".into()], None);
    if let Some(Some(env)) = tree
        .get(&vec!["bin".to_string(), "env".to_string()])
        .cloned()
    {
        tree.entry(vec!["usr".into()]).or_insert(None);
        tree.entry(vec!["usr".into(), "bin".into()]).or_insert(None);
        tree.entry(vec!["usr".into(), "bin".into(), "env".into()])
            .or_insert(Some(env));
    }
    // Every directory on the way to an entry exists.
    let parents: Vec<Vec<String>> = tree
        .keys()
        .flat_map(|k| (1..k.len()).map(|n| k[..n].to_vec()).collect::<Vec<_>>())
        .collect();
    for p in parents {
        tree.entry(p).or_insert(None);
    }
    tree.into_iter()
        .map(|(k, target)| LinkEntry {
            path: format!("/{}", k.join("/")),
            target,
        })
        .collect()
}

fn link_into(
    src: &Path,
    at: Vec<String>,
    tree: &mut BTreeMap<Vec<String>, Option<String>>,
    depth: usize,
) {
    // Follows symlinks (a package's `bin` may itself be one); the depth bound
    // stops a symlink cycle.
    let Ok(meta) = std::fs::metadata(src) else {
        return;
    };
    if !meta.is_dir() {
        if let Some(target) = src.to_str() {
            tree.entry(at).or_insert_with(|| Some(target.to_string()));
        }
        return;
    }
    match tree.get(&at) {
        Some(Some(_)) => return, // an earlier package put a file here
        Some(None) => {}
        None => {
            tree.insert(at.clone(), None);
        }
    }
    if depth > 32 {
        return;
    }
    let mut children: Vec<(String, PathBuf)> = std::fs::read_dir(src)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(|n| (n.to_string(), e.path())))
        .collect();
    children.sort();
    for (name, path) in children {
        let mut child = at.clone();
        child.push(name);
        link_into(&path, child, tree, depth + 1);
    }
}

fn store_layer(paths: Vec<PathBuf>, mtime: u64, owner: &Owner, perms: &[PermRule]) -> PlannedLayer {
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
        comment,
        source: LayerSource::StorePaths {
            paths,
            mtime,
            owner: owner.clone(),
            perms: perms.to_vec(),
        },
    }
}

fn created(c: Option<String>) -> String {
    match c.as_deref() {
        None => DEFAULT_CREATED.into(),
        Some("now") => time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| DEFAULT_CREATED.into()),
        Some(s) => s.to_string(),
    }
}

/// RFC 3339 (`date -Iseconds` output included) -> Unix seconds.
fn parse_time(s: &str) -> Option<u64> {
    if s == "now" {
        return Some(time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64);
    }
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp()).ok()
}

fn num_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
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

fn time_or_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
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
        let based = br#"{"store_layers":[],"from_image":"/nix/store/x.tar"}"#;
        assert!(matches!(
            plan_conf(based, "amd64"),
            Err(PlanError::Unsupported(_))
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
