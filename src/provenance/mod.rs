//! Provenance only Nix can give, served through the referrers API: SBOMs of
//! the image's closure (CycloneDX, SPDX), SLSA build provenance, and cosign
//! signatures. Each is an OCI artifact manifest whose `subject` is the image
//! manifest. They are generated on request from the [`Record`] taken when
//! the image was produced, deterministically, so nothing but the record is
//! stored. No HTTP here: the registry asks, this answers with documents.

pub mod record;
pub mod sbom;
pub mod sign;
pub mod slsa;

pub use record::{Component, Described, Record, Source};
pub use sign::Signer;

use crate::image::manifest::{JsonBlob, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST};
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

/// The empty config of an artifact manifest (image spec 1.1).
pub const EMPTY: &str = "application/vnd.oci.empty.v1+json";

/// One artifact attached to a manifest: its manifest, and the blobs that
/// manifest names (which must be served by digest too).
pub struct Artifact {
    pub artifact_type: &'static str,
    pub manifest: JsonBlob,
    pub blobs: Vec<JsonBlob>,
}

pub struct Provenance {
    dir: PathBuf,
    records: moka::sync::Cache<String, Arc<Record>>,
    signer: Option<Signer>,
}

impl Provenance {
    /// Records live in `<state dir>/provenance/<manifest hex>.json`.
    pub fn open(state_dir: &std::path::Path, signer: Option<Signer>) -> std::io::Result<Self> {
        let dir = state_dir.join("provenance");
        std::fs::create_dir_all(&dir)?;
        Ok(Provenance {
            dir,
            records: moka::sync::Cache::new(10_000),
            signer,
        })
    }

    pub fn signer(&self) -> Option<&Signer> {
        self.signer.as_ref()
    }

    fn path(&self, digest: &str) -> Option<PathBuf> {
        let digest = crate::vocab::Digest::parse(digest).ok()?;
        Some(self.dir.join(format!("{}.json", digest.hex())))
    }

    /// Keep what an image was made of, under both of its manifest digests.
    pub fn remember(&self, record: Record) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(&record).map_err(std::io::Error::other)?;
        let record = Arc::new(record);
        for d in [&record.oci.digest, &record.docker.digest] {
            let Some(path) = self.path(d) else { continue };
            if !path.exists() {
                let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
                tmp.write_all(&bytes)?;
                tmp.persist(&path).map_err(|e| e.error)?;
            }
            self.records.insert(d.clone(), record.clone());
        }
        Ok(())
    }

    /// What the image of manifest `digest` was made of, if this server (or
    /// one sharing its state dir) produced it.
    pub fn record(&self, digest: &str) -> Option<Arc<Record>> {
        if let Some(r) = self.records.get(digest) {
            return Some(r);
        }
        let bytes = std::fs::read(self.path(digest)?).ok()?;
        let record: Arc<Record> = Arc::new(serde_json::from_slice(&bytes).ok()?);
        self.records.insert(digest.to_string(), record.clone());
        Some(record)
    }

    /// Every artifact of the manifest `subject`: SBOMs and provenance for
    /// an image this server produced, a signature of any manifest it serves
    /// when it has a key. `reference` is `host/name` as the client pulled.
    pub fn artifacts(&self, subject: &JsonBlob, reference: &str) -> Vec<Artifact> {
        let described = json!({
            "mediaType": subject.media_type,
            "digest": subject.digest,
            "size": subject.bytes.len(),
        });
        let mut out = vec![];
        let record = self.record(&subject.digest);
        if let Some(r) = &record {
            let d = &subject.digest;
            for (kind, bytes) in [
                (sbom::CYCLONEDX, sbom::cyclonedx(r, d)),
                (sbom::SPDX, sbom::spdx(r, d)),
                (slsa::IN_TOTO, slsa::statement(r, d)),
            ] {
                out.push(artifact(kind, bytes, &described, &r.created));
            }
        }
        if let Some(signer) = &self.signer {
            let created = record
                .as_ref()
                .map_or("1970-01-01T00:00:00Z", |r| &r.created);
            out.push(signature(signer, subject, reference, &described, created));
        }
        out
    }

    /// The cosign signature of `subject` (the `sha256-<hex>.sig` tag), if
    /// there is a key.
    pub fn signature(&self, subject: &JsonBlob, reference: &str) -> Option<Artifact> {
        let signer = self.signer.as_ref()?;
        let described = json!({
            "mediaType": subject.media_type,
            "digest": subject.digest,
            "size": subject.bytes.len(),
        });
        let record = self.record(&subject.digest);
        let created = record
            .as_ref()
            .map_or("1970-01-01T00:00:00Z", |r| &r.created);
        Some(signature(signer, subject, reference, &described, created))
    }
}

/// The empty config every artifact manifest names.
pub fn empty_config() -> JsonBlob {
    JsonBlob::from_bytes(EMPTY, b"{}".to_vec())
}

fn artifact(
    kind: &'static str,
    bytes: Vec<u8>,
    subject: &serde_json::Value,
    created: &str,
) -> Artifact {
    let blob = JsonBlob::from_bytes(kind, bytes);
    let empty = empty_config();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": kind,
        "config": {
            "mediaType": EMPTY,
            "digest": empty.digest,
            "size": empty.bytes.len(),
            "data": "e30=",
        },
        "layers": [{
            "mediaType": kind,
            "digest": blob.digest,
            "size": blob.bytes.len(),
        }],
        "subject": subject,
        "annotations": { "org.opencontainers.image.created": created },
    });
    Artifact {
        artifact_type: kind,
        manifest: JsonBlob::new(OCI_MANIFEST, &manifest),
        blobs: vec![empty, blob],
    }
}

/// A signature as cosign writes one: an image manifest whose one layer is
/// the payload, the signature in that layer's annotation, with a config
/// cosign's way; plus `artifactType` and `subject`, so the referrers API
/// lists it.
fn signature(
    signer: &Signer,
    subject: &JsonBlob,
    reference: &str,
    described: &serde_json::Value,
    created: &str,
) -> Artifact {
    use base64::Engine;
    let payload = JsonBlob::from_bytes(
        sign::SIMPLE_SIGNING,
        sign::simple_signing_payload(reference, &subject.digest),
    );
    let signed = base64::engine::general_purpose::STANDARD.encode(signer.sign(&payload.bytes));
    let config = JsonBlob::new(
        OCI_CONFIG,
        &json!({
            "architecture": "",
            "created": "0001-01-01T00:00:00Z",
            "history": [{ "created": "0001-01-01T00:00:00Z" }],
            "os": "",
            "rootfs": { "type": "layers", "diff_ids": [payload.digest] },
            "config": {},
        }),
    );
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": sign::SIGNATURE_ARTIFACT,
        "config": {
            "mediaType": OCI_CONFIG,
            "digest": config.digest,
            "size": config.bytes.len(),
        },
        "layers": [{
            "mediaType": sign::SIMPLE_SIGNING,
            "digest": payload.digest,
            "size": payload.bytes.len(),
            "annotations": { sign::SIGNATURE_ANNOTATION: signed },
        }],
        "subject": described,
        "annotations": { "org.opencontainers.image.created": created },
    });
    Artifact {
        artifact_type: sign::SIGNATURE_ARTIFACT,
        manifest: JsonBlob::new(OCI_MANIFEST, &manifest),
        blobs: vec![config, payload],
    }
}

/// The referrers list of a manifest: an image index of its artifacts, only
/// those of `artifact_type` when given.
pub fn referrers_index(artifacts: &[Artifact], artifact_type: Option<&str>) -> JsonBlob {
    let manifests: Vec<serde_json::Value> = artifacts
        .iter()
        .filter(|a| artifact_type.is_none_or(|t| t == a.artifact_type))
        .map(|a| {
            json!({
                "mediaType": OCI_MANIFEST,
                "digest": a.manifest.digest,
                "size": a.manifest.bytes.len(),
                "artifactType": a.artifact_type,
                "annotations": { "org.opencontainers.image.created":
                    serde_json::from_slice::<serde_json::Value>(&a.manifest.bytes)
                        .ok()
                        .and_then(|m| m["annotations"]["org.opencontainers.image.created"].as_str().map(str::to_string))
                        .unwrap_or_default() },
            })
        })
        .collect();
    JsonBlob::new(
        OCI_INDEX,
        &json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests }),
    )
}
