//! flakeport conf v1, written by `nixlib/` (documented in nixlib/README.md):
//! the closure graph is in the conf, so planning runs no Nix.

use super::{
    created, group_layers, merge_env, on_base, store_layer, time_or_seconds, GraphNode, ImagePlan,
    OwnerFields, PlanError, PlannedLayer, DEFAULT_MAX_LAYERS, DEFAULT_MTIME,
};
use crate::image::layer::{LayerSource, PermRule};
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// flakeport conf v1, as written by `nixlib` (the derivation's structured
/// attributes; unknown fields are ignored). Documented in nixlib/README.md.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfV1 {
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
    /// A base image: an archive or another image output.
    #[serde(default)]
    from_image: Option<PathBuf>,
    /// The root layer as a finished tar (made under fakeroot), instead of
    /// `rootLayer`'s tree.
    #[serde(default)]
    root_layer_tar: Option<PathBuf>,
    /// `meta.license` of each of `contents`, as SPDX identifiers.
    #[serde(default)]
    licenses: Vec<LicensedV1>,
}

#[derive(Debug, Deserialize)]
struct LicensedV1 {
    path: PathBuf,
    #[serde(default)]
    licenses: Vec<String>,
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

/// `base`: plans a `fromImage` (see [`super::Planner::base`]).
pub fn plan(
    conf: ConfV1,
    system_arch: &str,
    base: impl FnOnce(&Path) -> Result<ImagePlan, PlanError>,
) -> Result<ImagePlan, PlanError> {
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
                ..PermRule::default()
            })
        })
        .collect::<Result<Vec<_>, PlanError>>()?;
    let max_layers = conf.max_layers.unwrap_or(DEFAULT_MAX_LAYERS).max(2);
    let graph: Vec<GraphNode> = conf
        .graph
        .into_iter()
        .filter(|n| Some(&n.path) != conf.root_layer.as_ref())
        .collect();
    let base = conf.from_image.as_deref().map(base).transpose()?;
    let base_layers = base.as_ref().map_or(0, |b| b.layers.len());
    let root_layers = usize::from(conf.root_layer.is_some() || conf.root_layer_tar.is_some());
    let store_budget = max_layers
        .checked_sub(root_layers + base_layers)
        .filter(|n| *n >= 1)
        .ok_or_else(|| {
            PlanError::Unsupported(format!(
                "maxLayers = {max_layers} leaves no layer for the store paths: the base image has {base_layers}"
            ))
        })?;
    let mut layers: Vec<PlannedLayer> =
        group_layers(&graph, &conf.roots, &conf.layers, store_budget)
            .into_iter()
            .map(|paths| store_layer(paths, mtime, &owner, &perms))
            .collect();
    if let Some(path) = conf.root_layer_tar {
        layers.push(PlannedLayer {
            comment: Some(format!("root layer {}", path.display())),
            known: None,
            source: LayerSource::TarFile { path },
        });
    } else if let Some(dir) = conf.root_layer {
        layers.push(PlannedLayer {
            comment: Some(format!("root layer {}", dir.display())),
            known: None,
            source: LayerSource::RootTree {
                dir,
                mtime,
                owner: owner.clone(),
                perms,
            },
        });
    }
    let own_config = conf.config.unwrap_or_else(|| json!({}));
    let plan = ImagePlan {
        architecture: conf.architecture.unwrap_or_else(|| system_arch.to_string()),
        os: conf.os.unwrap_or_else(|| "linux".into()),
        config: match &base {
            Some(b) => inherit_config(&b.config, own_config),
            None => own_config,
        },
        created: created(conf.created),
        layers,
        base_history: vec![],
        licenses: conf
            .licenses
            .into_iter()
            .filter(|l| !l.licenses.is_empty())
            .map(|l| (l.path, l.licenses))
            .collect(),
        variant: None,
    };
    Ok(match base {
        Some(b) => on_base(b, plan),
        None => plan,
    })
}

/// The config of an image on a base, as `FROM` gives it: every field of
/// the base's config that the image does not set (`Entrypoint`, `Cmd`,
/// `WorkingDir`, ...), and `Env` merged by variable.
fn inherit_config(base: &Value, own: Value) -> Value {
    let mut merged = base.as_object().cloned().unwrap_or_default();
    let env = merge_env(base, &own);
    if let Value::Object(own) = own {
        merged.extend(own);
    }
    if let Some(env) = env {
        merged.insert("Env".into(), env);
    }
    Value::Object(merged)
}
