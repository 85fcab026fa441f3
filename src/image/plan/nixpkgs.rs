//! nixpkgs `dockerTools.streamLayeredImage` confs (`passthru.conf`; also
//! `streamNixShellImage`'s, `buildLayeredImage`'s `passthru.stream.conf`,
//! and flakeforge's older schema). The image is what nixpkgs' stream
//! script makes from the conf: store layers as listed, the customisation
//! layer's `layer.tar` verbatim, a `from_image` archive's layers first.

use super::{
    created, merge_env, on_base, parse_time, store_layer, time_or_seconds, ImagePlan, OwnerFields,
    PlanError, PlannedLayer, DEFAULT_MTIME,
};
use crate::image::layer::LayerSource;
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// nixpkgs `streamLayeredImage` conf (and flakeforge's older one, which
/// lacks mtime and owner fields).
#[derive(Debug, Deserialize)]
pub struct NixpkgsConf {
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
    /// A docker-archive (maybe gzipped) whose layers come first.
    #[serde(default)]
    from_image: Option<PathBuf>,
}

/// `base`: plans the `from_image` archive (see [`super::Planner::base`]).
pub fn plan(
    conf: NixpkgsConf,
    system_arch: &str,
    base: impl FnOnce(&Path) -> Result<ImagePlan, PlanError>,
) -> Result<ImagePlan, PlanError> {
    let base = conf.from_image.as_deref().map(base).transpose()?;
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
            comment: Some(format!("customisation layer {}", dir.display())),
            known: None,
            source: LayerSource::TarFile { path },
        });
    }
    let mut config = conf.config.unwrap_or_else(|| json!({}));
    // The stream script takes only `Env` from the base's config.
    if let Some(b) = &base {
        if let (Some(env), Some(obj)) = (merge_env(&b.config, &config), config.as_object_mut()) {
            obj.insert("Env".into(), env);
        }
    }
    let plan = ImagePlan {
        architecture: conf.architecture.unwrap_or_else(|| system_arch.to_string()),
        // The stream script writes "linux" whatever the conf says.
        os: "linux".into(),
        config,
        created: created(conf.created),
        layers,
        base_history: vec![],
        licenses: Default::default(),
        variant: None,
    };
    Ok(match base {
        Some(b) => on_base(b, plan),
        None => plan,
    })
}
