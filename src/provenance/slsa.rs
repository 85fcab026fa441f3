//! Build provenance: an in-toto statement (v1) with a SLSA provenance (v1)
//! predicate. The subject is the image manifest; the build is `nix build`
//! of an attribute of a locked flake (or of a package set), on a system,
//! from a derivation; the builder is this flakeport.

use super::record::{hash_hex, Record, Source};
use serde_json::{json, Value};

pub const IN_TOTO: &str = "application/vnd.in-toto+json";
pub const BUILD_TYPE: &str = "https://flakeport.invalid/buildtypes/nix-build/v1";
pub const BUILDER: &str = "https://flakeport.invalid/builder";

pub fn statement(record: &Record, subject: &str) -> Vec<u8> {
    let (external, dependencies) = match &record.source {
        Source::Flake {
            url,
            evaluated,
            attribute,
            revision,
            nar_hash,
        } => {
            let mut digest = serde_json::Map::new();
            if let Some(rev) = revision {
                digest.insert("gitCommit".into(), json!(rev));
            }
            if let Some(hex) = nar_hash.as_deref().and_then(hash_hex) {
                digest.insert("sha256".into(), json!(hex));
            }
            let mut dependency = json!({ "uri": evaluated, "digest": digest });
            if let Some(h) = nar_hash {
                dependency["annotations"] = json!({ "narHash": h });
            }
            (
                json!({ "flake": url, "attribute": attribute, "tag": record.tag }),
                vec![dependency],
            )
        }
        Source::Packages {
            set,
            packages,
            revision,
        } => {
            let mut dependency = json!({ "uri": set });
            if let Some(rev) = revision {
                dependency["digest"] = json!({ "gitCommit": rev });
            }
            (
                json!({ "packageSet": set, "packages": packages, "tag": record.tag }),
                vec![dependency],
            )
        }
    };
    let byproducts: Vec<Value> = record
        .derivations
        .iter()
        .map(|d| json!({ "name": "derivation", "uri": d }))
        .chain(
            record
                .outputs
                .iter()
                .map(|o| json!({ "name": "output", "uri": o })),
        )
        .collect();
    let doc = json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{
            "name": record.name,
            "digest": { "sha256": subject.trim_start_matches("sha256:") },
        }],
        "predicateType": "https://slsa.dev/provenance/v1",
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": external,
                "internalParameters": {
                    "system": record.system,
                    "derivations": record.derivations,
                },
                "resolvedDependencies": dependencies,
            },
            "runDetails": {
                "builder": {
                    "id": BUILDER,
                    "version": { "flakeport": env!("CARGO_PKG_VERSION") },
                },
                "byproducts": byproducts,
            },
        },
    });
    serde_json::to_vec_pretty(&doc).expect("JSON values serialise")
}
