//! nix2container `buildImage` output: `{"version": 1, "image-config",
//! "layers", "arch", "created"}`. Each layer either names a finished tar
//! (`layer-path`: a pulled base's blob, or a non-reproducible layer), served
//! as it is, or lists store paths that the layer engine streams, with
//! nix2container's `copyToRoot` rewrite and `perms`.
//!
//! The digests nix2container computed are not reused: its tar bytes differ
//! from ours, and a digest is only worth what the bytes served under it.

use super::{archive, Closure, ImagePlan, PlanError, PlannedLayer, DEFAULT_CREATED, DEFAULT_MTIME};
use crate::image::layer::compress::Codec;
use crate::image::layer::LayerDigest;
use crate::image::layer::{LayerSource, Owner, PermRule};
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::PathBuf;

#[derive(Debug, Deserialize)]
pub struct Image {
    version: u32,
    #[serde(rename = "image-config", default)]
    image_config: Value,
    #[serde(default)]
    layers: Vec<Layer>,
    #[serde(default)]
    arch: Option<String>,
    #[serde(default)]
    created: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Layer {
    #[serde(default)]
    diff_ids: Option<String>,
    #[serde(default)]
    paths: Vec<LayerPath>,
    #[serde(default)]
    mediatype: Option<String>,
    #[serde(rename = "layer-path", default)]
    layer_path: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
struct LayerPath {
    path: PathBuf,
    #[serde(default)]
    options: Option<PathOptions>,
}

#[derive(Debug, Default, Deserialize)]
struct PathOptions {
    #[serde(default)]
    rewrite: Option<Rewrite>,
    #[serde(default)]
    perms: Vec<Perm>,
    #[serde(rename = "ignoreDestination", default)]
    ignore_destination: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Rewrite {
    #[serde(default)]
    regex: String,
    #[serde(default)]
    repl: String,
}

#[derive(Debug, Deserialize)]
struct Perm {
    #[serde(default)]
    regex: String,
    #[serde(default)]
    mode: String,
    #[serde(rename = "orMode", default)]
    or_mode: Option<String>,
    #[serde(default)]
    uid: Option<u64>,
    #[serde(default)]
    gid: Option<u64>,
    #[serde(default)]
    uname: Option<String>,
    #[serde(default)]
    gname: Option<String>,
}

pub fn plan(image: Image, system_arch: &str, closure: &Closure) -> Result<ImagePlan, PlanError> {
    if image.version != 1 {
        return Err(PlanError::Unsupported(format!(
            "nix2container image version {} (this server reads version 1)",
            image.version
        )));
    }
    let layers = image
        .layers
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            plan_layer(l, closure)
                .map_err(|e| PlanError::Unsupported(format!("nix2container layer {i}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // nix2container's Go zero time means "not set".
    let created = image
        .created
        .filter(|c| !c.starts_with("0001-01-01"))
        .unwrap_or_else(|| DEFAULT_CREATED.into());
    Ok(ImagePlan {
        architecture: image.arch.unwrap_or_else(|| system_arch.to_string()),
        os: "linux".into(),
        config: match image.image_config {
            Value::Object(_) => image.image_config,
            _ => json!({}),
        },
        created,
        layers,
        base_history: vec![],
        licenses: Default::default(),
        variant: None,
    })
}

fn plan_layer(l: Layer, closure: &Closure) -> Result<PlannedLayer, String> {
    if let Some(given) = l.layer_path.filter(|p| !p.as_os_str().is_empty()) {
        let path = closure.check_opened(&given).map_err(|e| e.to_string())?;
        // A finished tar (a pulled base's blob): hashed once here.
        let (digest, size, _) =
            archive::hash_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let packed = match l.mediatype.as_deref().unwrap_or("") {
            t if t.ends_with("gzip") => Some(Codec::Gzip),
            t if t.ends_with("zstd") => Some(Codec::Zstd),
            _ => None,
        };
        return Ok(PlannedLayer {
            comment: Some(format!("layer {}", path.display())),
            known: Some(LayerDigest {
                size,
                digest,
                diff_id: packed.and(l.diff_ids),
                packed,
            }),
            source: LayerSource::TarFile { path },
        });
    }
    let mut store = Vec::new();
    let mut store_perms = Vec::new();
    let mut roots = Vec::new();
    for p in l.paths {
        let options = p.options.unwrap_or_default();
        if let Some(i) = options.ignore_destination.filter(|i| !i.is_empty()) {
            return Err(format!("ignoreDestination ({i:?}) is not supported"));
        }
        let to_root = match options.rewrite {
            Some(r) if !r.regex.is_empty() => {
                let path = p.path.to_string_lossy();
                if r.repl.is_empty() && r.regex.trim_start_matches('^') == path {
                    true
                } else {
                    return Err(format!(
                        "rewrite {:?} -> {:?} of {path} is not supported (only copyToRoot's, which moves the path to /)",
                        r.regex, r.repl
                    ));
                }
            }
            _ => false,
        };
        let at = if to_root {
            String::new()
        } else {
            p.path.to_string_lossy().into_owned()
        };
        let source = p.path.to_string_lossy().into_owned();
        let perms = options
            .perms
            .into_iter()
            .map(|perm| perm_rule(&at, &source, perm))
            .collect::<Result<Vec<_>, String>>()?;
        if to_root {
            roots.push(LayerSource::RootTree {
                dir: p.path,
                mtime: DEFAULT_MTIME,
                owner: Owner::default(),
                perms,
            });
        } else {
            store.push(p.path);
            store_perms.extend(perms);
        }
    }
    let comment = format!("{} store paths, {} trees at /", store.len(), roots.len());
    let mut parts = roots;
    if !store.is_empty() {
        parts.push(LayerSource::StorePaths {
            paths: store,
            mtime: DEFAULT_MTIME,
            owner: Owner::default(),
            perms: store_perms,
        });
    }
    let source = match parts.len() {
        0 => return Err("no paths and no layer-path".into()),
        1 => parts.remove(0),
        _ => LayerSource::Parts { parts },
    };
    Ok(PlannedLayer {
        source,
        comment: Some(comment),
        known: None,
    })
}

/// nix2container perms apply to the files under a path whose path in the
/// store matches a regex (unanchored, so `"/tmp/test1.txt"` in its own
/// `examples/ownership.nix` matches `/nix/store/…-test/tmp/test1.txt`). A
/// match-everything regex (what its `perms` helper writes) is a plain
/// recursive rule; any other regex is applied per file, as nix2container
/// does. On a match it sets uid and gid (0 when not given), and uname,
/// gname and mode when given. `source` is the store path `at` stands for.
fn perm_rule(at: &str, source: &str, p: Perm) -> Result<PermRule, String> {
    let every_file = matches!(p.regex.as_str(), "" | ".*" | "^.*$" | ".*$" | "^.*");
    if !every_file {
        crate::image::layer::go_regex(&p.regex)
            .map_err(|e| format!("perms regex {:?} is not a valid regex: {e}", p.regex))?;
    }
    if p.or_mode.is_some() {
        return Err("perms with orMode are not supported".into());
    }
    let mode = if p.mode.is_empty() {
        None
    } else {
        Some(
            u32::from_str_radix(&p.mode, 8)
                .map_err(|_| format!("perms mode {:?} is not octal", p.mode))?,
        )
    };
    let (regex, source) = match every_file {
        true => (None, None),
        false => (Some(p.regex), Some(source.to_string())),
    };
    Ok(PermRule {
        path: at.to_string(),
        mode,
        uid: Some(p.uid.unwrap_or(0)),
        gid: Some(p.gid.unwrap_or(0)),
        uname: p.uname.filter(|u| !u.is_empty()),
        gname: p.gname.filter(|g| !g.is_empty()),
        recursive: true,
        regex,
        source,
    })
}
