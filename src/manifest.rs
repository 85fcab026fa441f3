//! Image config and manifests as canonical JSON bytes, serialised once and
//! served by those bytes. `serde_json::Value` objects are BTreeMaps (the
//! `preserve_order` feature is off, and a test guards that), so key order
//! never depends on a hash seed.

use crate::layer::compress::Codec;
use crate::plan::ImagePlan;
use bytes::Bytes;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// A JSON document with its digest, served byte for byte.
#[derive(Debug, Clone)]
pub struct JsonBlob {
    pub digest: String,
    pub media_type: String,
    pub bytes: Bytes,
}

impl JsonBlob {
    pub fn new(media_type: &str, value: &Value) -> JsonBlob {
        let bytes = serde_json::to_vec(value).expect("JSON values serialise");
        JsonBlob {
            digest: sha256_digest(&bytes),
            media_type: media_type.to_string(),
            bytes: Bytes::from(bytes),
        }
    }
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Digest and size of one layer, from the digest pass.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerDigest {
    pub digest: String,
    pub size: u64,
    /// For a compressed blob: the digest of the uncompressed tar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff_id: Option<String>,
    /// For a blob that came compressed (a member of an image archive),
    /// served as it is: its codec, whatever `--compression` says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packed: Option<Codec>,
}

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
    let config = JsonBlob::new(
        OCI_CONFIG,
        &json!({
            "architecture": plan.architecture,
            "os": plan.os,
            "created": plan.created,
            "config": plan.config,
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
            "history": history,
        }),
    );
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

/// Which manifest flavour a client gets: OCI unless its `Accept` header
/// names Docker's manifest type and no OCI type (older Docker clients).
pub fn wants_docker(accept: &[&str]) -> bool {
    let types: Vec<&str> = accept
        .iter()
        .flat_map(|h| h.split(','))
        .map(|t| t.split(';').next().unwrap_or("").trim())
        .filter(|t| !t.is_empty())
        .collect();
    let docker = types
        .iter()
        .any(|t| *t == DOCKER_MANIFEST || *t == DOCKER_LIST);
    let oci = types.iter().any(|t| *t == OCI_MANIFEST || *t == OCI_INDEX);
    docker && !oci
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{LayerSource, Owner};
    use crate::plan::PlannedLayer;

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
        assert_eq!(a.oci.digest, sha256_digest(&a.oci.bytes));
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
        assert!(!wants_docker(&[]));
        assert!(!wants_docker(&["*/*"]));
        assert!(wants_docker(&[DOCKER_MANIFEST]));
        assert!(wants_docker(&["application/vnd.docker.distribution.manifest.v2+json; q=0.9, application/vnd.docker.distribution.manifest.list.v2+json"]));
        assert!(!wants_docker(&[DOCKER_MANIFEST, OCI_MANIFEST]));
        assert!(!wants_docker(&["application/vnd.oci.image.index.v1+json,application/vnd.docker.distribution.manifest.v2+json"]));
    }
}
