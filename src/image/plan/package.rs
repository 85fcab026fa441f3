//! Plain packages (an image of the closure, the program as entrypoint) and
//! package-path images (Nixery-style: packages linked into `/`).

use super::{
    group_layers, store_layer, GraphNode, ImagePlan, PlannedLayer, DEFAULT_CREATED,
    DEFAULT_MAX_LAYERS, DEFAULT_MTIME,
};
use crate::image::layer::{LayerSource, LinkEntry, Owner, PermRule};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
        base_history: vec![],
        licenses: Default::default(),
        variant: None,
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
        comment: Some(format!("root layer: links to {} packages", outs.len())),
        known: None,
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
        base_history: vec![],
        licenses: Default::default(),
        variant: None,
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
