//! Image config and manifests as canonical JSON bytes, serialised once and
//! served by those bytes. `serde_json::Value` objects are BTreeMaps (the
//! `preserve_order` feature is off, and a test guards that), so key order
//! never depends on a hash seed.

use crate::image::layer::compress::Codec;
use crate::image::plan::ImagePlan;
use bytes::Bytes;
use serde_json::{json, Value};

use std::sync::Arc;

pub use crate::vocab::media_type::*;

/// A JSON document with its digest, served byte for byte.
#[derive(Debug, Clone)]
pub struct JsonBlob {
    pub digest: String,
    pub media_type: String,
    pub bytes: Bytes,
}

impl JsonBlob {
    /// Bytes as they are (a document written elsewhere, pretty or not).
    pub fn from_bytes(media_type: &str, bytes: Vec<u8>) -> JsonBlob {
        JsonBlob {
            digest: crate::vocab::Digest::of(&bytes).into(),
            media_type: media_type.to_string(),
            bytes: Bytes::from(bytes),
        }
    }

    pub fn new(media_type: &str, value: &Value) -> JsonBlob {
        let bytes = serde_json::to_vec(value).expect("JSON values serialise");
        JsonBlob {
            digest: crate::vocab::Digest::of(&bytes).into(),
            media_type: media_type.to_string(),
            bytes: Bytes::from(bytes),
        }
    }
}

pub use crate::image::layer::LayerDigest;

/// The config blob and both manifest flavours of one image.
#[derive(Debug, Clone)]
pub struct ImageDocuments {
    pub config: JsonBlob,
    pub oci: JsonBlob,
    pub docker: JsonBlob,
}

/// `codec`: how layers with a `diff_id` are compressed.
pub fn documents(plan: &ImagePlan, layers: &[LayerDigest], codec: Option<Codec>) -> ImageDocuments {
    let history = plan.history();
    // An uncompressed layer's diff_id is its blob digest.
    let diff_ids: Vec<&str> = layers
        .iter()
        .map(|l| l.diff_id.as_deref().unwrap_or(&l.digest))
        .collect();
    let mut config = json!({
        "architecture": plan.architecture,
        "os": plan.os,
        "created": plan.created,
        "config": plan.config,
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": history,
    });
    if let Some(v) = &plan.variant {
        config["variant"] = json!(v);
    }
    let config = JsonBlob::new(OCI_CONFIG, &config);
    // A layer is compressed if it came so (`packed`) or if we compressed it
    // (`diff_id` without `packed`: the server's codec).
    let compression = |l: &LayerDigest| {
        l.packed
            .or_else(|| l.diff_id.as_ref().map(|_| codec.unwrap_or(Codec::Gzip)))
    };
    let manifest = |manifest_type: &str, config_type: &str, docker: bool| {
        let layer_descs: Vec<Value> = layers
            .iter()
            .map(|l| {
                // Docker's schema has no zstd type: its manifest names the OCI
                // one, which containerd understands (Docker engine 20.10 does
                // not: use gzip).
                let media_type = match (compression(l), docker) {
                    (None, false) => OCI_LAYER,
                    (None, true) => DOCKER_LAYER,
                    (Some(Codec::Gzip), false) => OCI_LAYER_GZIP,
                    (Some(Codec::Gzip), true) => DOCKER_LAYER_GZIP,
                    (Some(Codec::Zstd), _) => OCI_LAYER_ZSTD,
                };
                json!({ "mediaType": media_type, "digest": l.digest, "size": l.size })
            })
            .collect();
        JsonBlob::new(
            manifest_type,
            &json!({
                "schemaVersion": 2,
                "mediaType": manifest_type,
                "config": { "mediaType": config_type, "digest": config.digest, "size": config.bytes.len() },
                "layers": layer_descs,
            }),
        )
    };
    let oci = manifest(OCI_MANIFEST, OCI_CONFIG, false);
    let docker = manifest(DOCKER_MANIFEST, DOCKER_CONFIG, true);
    ImageDocuments {
        config,
        oci,
        docker,
    }
}

/// The platform of one image in an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// The platform of a Nix system (`aarch64-linux` -> `linux/arm64/v8`),
    /// with the variant Docker Hub's images give each architecture.
    pub fn of_system(system: &str) -> Platform {
        let (cpu, os) = system.split_once('-').unwrap_or((system, "linux"));
        let variant = match cpu {
            "aarch64" => Some("v8"),
            "armv7l" => Some("v7"),
            "armv6l" => Some("v6"),
            _ => None,
        };
        Platform {
            os: os.to_string(),
            architecture: crate::vocab::oci_arch(system).to_string(),
            variant: variant.map(str::to_string),
        }
    }

    /// What an image's config says of its platform.
    pub fn of_config(config: &JsonBlob) -> Option<Platform> {
        let v: Value = serde_json::from_slice(&config.bytes).ok()?;
        Some(Platform {
            os: v["os"].as_str()?.to_string(),
            architecture: v["architecture"].as_str()?.to_string(),
            variant: v["variant"].as_str().map(str::to_string),
        })
    }

    fn json(&self) -> Value {
        let mut p = json!({ "os": self.os, "architecture": self.architecture });
        if let Some(v) = &self.variant {
            p["variant"] = json!(v);
        }
        p
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            Some(v) => write!(f, "/{v}"),
            None => Ok(()),
        }
    }
}

/// An image index over several platforms, in both flavours: the OCI index
/// names the images' OCI manifests, Docker's manifest list their Docker
/// manifests.
#[derive(Debug, Clone)]
pub struct IndexDocuments {
    pub oci: JsonBlob,
    pub docker: JsonBlob,
    /// The images it lists, in its order.
    pub images: Vec<(Platform, Arc<ImageDocuments>)>,
}

pub fn index_documents(images: Vec<(Platform, Arc<ImageDocuments>)>) -> IndexDocuments {
    let list = |list_type: &str, flavour: fn(&ImageDocuments) -> &JsonBlob| {
        let manifests: Vec<Value> = images
            .iter()
            .map(|(platform, docs)| {
                let m = flavour(docs);
                json!({
                    "mediaType": m.media_type,
                    "digest": m.digest,
                    "size": m.bytes.len(),
                    "platform": platform.json(),
                })
            })
            .collect();
        JsonBlob::new(
            list_type,
            &json!({ "schemaVersion": 2, "mediaType": list_type, "manifests": manifests }),
        )
    };
    IndexDocuments {
        oci: list(OCI_INDEX, |d| &d.oci),
        docker: list(DOCKER_LIST, |d| &d.docker),
        images,
    }
}

/// What a client's `Accept` header lets it receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepts {
    /// Docker's types and no OCI type (older Docker clients): the Docker
    /// flavour; else OCI.
    pub docker: bool,
    /// An index or manifest list. A client that names manifest types but
    /// neither list type gets the image of the first `--system` instead.
    pub lists: bool,
}

impl Accepts {
    pub fn parse(accept: &[&str]) -> Accepts {
        let types: Vec<&str> = accept
            .iter()
            .flat_map(|h| h.split(','))
            .map(|t| t.split(';').next().unwrap_or("").trim())
            .filter(|t| !t.is_empty())
            .collect();
        let has = |wanted: &[&str]| types.iter().any(|t| wanted.contains(t));
        let docker = has(&[DOCKER_MANIFEST, DOCKER_LIST]) && !has(&[OCI_MANIFEST, OCI_INDEX]);
        let names_manifests = has(&[DOCKER_MANIFEST, OCI_MANIFEST]);
        Accepts {
            docker,
            lists: !names_manifests || has(&[DOCKER_LIST, OCI_INDEX]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::layer::{LayerSource, Owner};
    use crate::image::plan::PlannedLayer;

    fn plan() -> ImagePlan {
        ImagePlan {
            architecture: "amd64".into(),
            os: "linux".into(),
            config: json!({ "Env": ["Z=1", "A=2"], "Labels": { "z": "1", "a": "2", "m": "3" }, "Entrypoint": ["/bin/x"] }),
            created: "1970-01-01T00:00:01Z".into(),
            layers: vec![PlannedLayer {
                source: LayerSource::StorePaths {
                    paths: vec![],
                    mtime: 1,
                    owner: Owner::default(),
                    perms: vec![],
                },
                comment: Some("c".into()),
                known: None,
            }],
            base_history: vec![],
            licenses: Default::default(),
            variant: None,
        }
    }

    #[test]
    fn canonical_bytes_are_sorted_and_stable() {
        let l = [LayerDigest {
            digest: format!("sha256:{}", "a".repeat(64)),
            size: 10240,
            diff_id: None,
            packed: None,
        }];
        let a = documents(&plan(), &l, None);
        let b = documents(&plan(), &l, None);
        assert_eq!(a.oci.bytes, b.oci.bytes);
        // Keys sorted: fails if anything enables serde_json's preserve_order.
        // "z" was inserted first: only sorting puts it last.
        let s = std::str::from_utf8(&a.config.bytes).unwrap();
        assert!(
            s.contains("\"Labels\":{\"a\":\"2\",\"m\":\"3\",\"z\":\"1\"}"),
            "{s}"
        );
        assert!(
            s.starts_with("{\"architecture\":\"amd64\",\"config\":"),
            "{s}"
        );
        let m: Value = serde_json::from_slice(&a.docker.bytes).unwrap();
        assert_eq!(m["config"]["digest"], a.config.digest.as_str());
        assert_eq!(m["layers"][0]["mediaType"], DOCKER_LAYER);
        assert_eq!(
            a.oci.digest,
            crate::vocab::Digest::of(&a.oci.bytes).to_string()
        );
    }

    #[test]
    fn gzip_layers_keep_uncompressed_diff_ids() {
        let l = [LayerDigest {
            digest: format!("sha256:{}", "b".repeat(64)),
            size: 900,
            diff_id: Some(format!("sha256:{}", "c".repeat(64))),
            packed: None,
        }];
        let d = documents(&plan(), &l, Some(Codec::Gzip));
        let config: Value = serde_json::from_slice(&d.config.bytes).unwrap();
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            format!("sha256:{}", "c".repeat(64))
        );
        let oci: Value = serde_json::from_slice(&d.oci.bytes).unwrap();
        assert_eq!(
            (
                oci["layers"][0]["mediaType"].as_str(),
                oci["layers"][0]["size"].as_u64()
            ),
            (Some(OCI_LAYER_GZIP), Some(900))
        );
        let docker: Value = serde_json::from_slice(&d.docker.bytes).unwrap();
        assert_eq!(docker["layers"][0]["mediaType"], DOCKER_LAYER_GZIP);
    }

    #[test]
    fn accept_negotiation() {
        let docker = |a: &[&str]| Accepts::parse(a).docker;
        let lists = |a: &[&str]| Accepts::parse(a).lists;
        assert!(!docker(&[]));
        assert!(!docker(&["*/*"]));
        assert!(docker(&[DOCKER_MANIFEST]));
        assert!(docker(&["application/vnd.docker.distribution.manifest.v2+json; q=0.9, application/vnd.docker.distribution.manifest.list.v2+json"]));
        assert!(!docker(&[DOCKER_MANIFEST, OCI_MANIFEST]));
        assert!(!docker(&["application/vnd.oci.image.index.v1+json,application/vnd.docker.distribution.manifest.v2+json"]));
        // No Accept, or */*: anything, lists included.
        assert!(lists(&[]) && lists(&["*/*"]));
        assert!(lists(&[DOCKER_MANIFEST, DOCKER_LIST]));
        assert!(lists(&[OCI_MANIFEST, OCI_INDEX]));
        assert!(!lists(&[DOCKER_MANIFEST]));
        assert!(!lists(&[OCI_MANIFEST, DOCKER_MANIFEST]));
    }

    #[test]
    fn index_entries_name_each_flavour_and_platform() {
        let l = [LayerDigest {
            digest: format!("sha256:{}", "a".repeat(64)),
            size: 10240,
            diff_id: None,
            packed: None,
        }];
        let amd = documents(&plan(), &l, None);
        let mut arm_plan = plan();
        arm_plan.architecture = "arm64".into();
        arm_plan.variant = Some("v8".into());
        let arm = documents(&arm_plan, &l, None);
        let arm_platform = Platform::of_config(&arm.config).unwrap();
        assert_eq!(arm_platform.to_string(), "linux/arm64/v8");
        let amd_platform = Platform::of_config(&amd.config).unwrap();
        assert_eq!(amd_platform.variant, None);
        let (amd, arm) = (Arc::new(amd), Arc::new(arm));
        let index = index_documents(vec![
            (amd_platform, amd.clone()),
            (arm_platform, arm.clone()),
        ]);
        let oci: Value = serde_json::from_slice(&index.oci.bytes).unwrap();
        assert_eq!(oci["mediaType"], OCI_INDEX);
        assert_eq!(oci["manifests"][1]["digest"], arm.oci.digest.as_str());
        assert_eq!(oci["manifests"][1]["size"], arm.oci.bytes.len());
        assert_eq!(oci["manifests"][1]["mediaType"], OCI_MANIFEST);
        assert_eq!(
            oci["manifests"][1]["platform"],
            json!({"os": "linux", "architecture": "arm64", "variant": "v8"})
        );
        assert_eq!(
            oci["manifests"][0]["platform"],
            json!({"os": "linux", "architecture": "amd64"})
        );
        let docker: Value = serde_json::from_slice(&index.docker.bytes).unwrap();
        assert_eq!(docker["mediaType"], DOCKER_LIST);
        assert_eq!(docker["manifests"][0]["digest"], amd.docker.digest.as_str());
        assert_eq!(docker["manifests"][0]["mediaType"], DOCKER_MANIFEST);
    }
}
