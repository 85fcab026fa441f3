//! A blob digest -> what to stream: JSON by its bytes, layers scanned (and
//! compressed) on demand, a digest whose bytes changed dropped everywhere.

use super::ImageService;
use super::SCANNED_MEMBERS;
use crate::error::{RegistryError, Result};
use crate::image::compressed::CompressedCache;
use crate::image::layer::{LayerSource, LayerTar};
use crate::image::manifest::JsonBlob;
use crate::image::members::Filled;
use std::sync::Arc;

/// What a blob GET serves.
pub enum Blob {
    Json(Arc<JsonBlob>),
    Layer {
        digest: String,
        tar: Arc<LayerTar>,
        /// For the bytes-served metric: none, gzip, zstd, or archive (a
        /// member served as an image archive packed it).
        compression: &'static str,
    },
}

impl ImageService {
    /// A manifest or index served before (not a config or other blob).
    pub fn manifest_by_digest(&self, digest: &str) -> Option<Arc<JsonBlob>> {
        self.layers
            .index
            .get_json(digest)
            .filter(|b| crate::vocab::media_type::known(&b.media_type) != "other")
    }

    /// A provenance document, fetchable by digest like the image's own.
    pub fn keep_document(&self, blob: &JsonBlob) -> std::io::Result<()> {
        self.layers.index.put_json(blob)
    }

    /// The provenance artifacts of the manifest `digest` (SBOMs, build
    /// provenance, the signature), for the identity `reference`
    /// (`host/name`) signatures name, with every document they name kept
    /// so that clients fetch it by digest; `None` for a digest not served.
    pub fn artifacts_of(
        &self,
        digest: &str,
        reference: &str,
    ) -> Result<Option<Vec<crate::provenance::Artifact>>> {
        let Some(subject) = self.manifest_by_digest(digest) else {
            return Ok(None);
        };
        let artifacts = self.provenance.artifacts(&subject, reference);
        self.keep_artifacts(&artifacts)?;
        Ok(Some(artifacts))
    }

    /// Every manifest and blob `artifacts` name, fetchable by digest.
    pub fn keep_artifacts(&self, artifacts: &[crate::provenance::Artifact]) -> Result<()> {
        for a in artifacts {
            for blob in std::iter::once(&a.manifest).chain(&a.blobs) {
                self.keep_document(blob).map_err(RegistryError::internal)?;
            }
        }
        Ok(())
    }

    /// `body`: the bytes will be read (not a HEAD), so a member of a
    /// compressed archive is served from its kept copy, made first if
    /// need be.
    pub async fn blob(&self, digest: &str, body: bool) -> Result<Blob> {
        if let Some(j) = self.layers.index.get_json(digest) {
            return Ok(Blob::Json(j));
        }
        let unknown = || RegistryError::BlobUnknown {
            digest: digest.to_string(),
        };
        let layer = self.layers.index.layer(digest).ok_or_else(unknown)?;
        let size = layer.size;
        if layer.diff_id.is_some() && layer.packed.is_none() {
            return match &self.layers.compressed {
                Some(cache) => self.compressed_blob(cache, digest, layer.source).await,
                // Served compressed before a restart without --compression.
                None => Err(unknown()),
            };
        }
        let compression = if layer.packed.is_some() {
            "archive"
        } else {
            "none"
        };
        let source = layer.source;
        self.events
            .metrics
            .cache("layer_scan", self.layers.scanned.contains_key(digest));
        let tar = self
            .layers
            .scanned
            .try_get_with(digest.to_string(), async move {
                tokio::task::spawn_blocking(move || LayerTar::scan(&source).map(Arc::new))
                    .await
                    .map_err(|e| (e.to_string(), false))?
                    .map_err(|e| (e.to_string(), e.is_transient()))
            })
            .await;
        if let Ok(tar) = &tar {
            if tar.entry_count() > SCANNED_MEMBERS {
                self.layers.keep_scan(digest, tar.clone()).await;
            }
        }
        match tar {
            Ok(tar) if tar.size() == size => Ok(Blob::Layer {
                digest: digest.to_string(),
                tar: match body && tar.is_compressed_member() {
                    true => self.member_blob(digest, tar).await?,
                    false => tar,
                },
                compression,
            }),
            Ok(tar) => {
                tracing::error!(
                    digest,
                    advertised = size,
                    now = tar.size(),
                    "layer size changed; dropping digest"
                );
                self.layer_is_corrupt(digest).await;
                Err(unknown())
            }
            Err(e) if e.1 => {
                tracing::warn!(digest, error = %e.0, "cannot scan layer for now; keeping the digest");
                Err(RegistryError::layer_unreadable_for_now())
            }
            Err(e) => {
                // Most likely its store paths were garbage-collected.
                tracing::warn!(digest, error = %e.0, "cannot scan layer; dropping digest");
                self.layer_is_corrupt(digest).await;
                Err(unknown())
            }
        }
    }

    /// A compressed layer: opened from the cache right away (eviction cannot
    /// cut the stream then), compressed again first if it was evicted.
    async fn compressed_blob(
        &self,
        cache: &Arc<CompressedCache>,
        digest: &str,
        source: LayerSource,
    ) -> Result<Blob> {
        let (cache, want) = (cache.clone(), digest.to_string());
        let codec = cache.codec.name();
        let events = self.events.clone();
        let opened =
            tokio::task::spawn_blocking(move || -> std::result::Result<LayerTar, Unopened> {
                let io = |e: std::io::Error| {
                    Unopened::new(e.to_string(), crate::image::layer::is_transient(&e))
                };
                let path = cache.path(&want);
                let kept = cache.open_blob(&want);
                events.metrics.cache("compressed", kept.is_some());
                let file = match kept {
                    Some(file) => file,
                    None => {
                        let tar = LayerTar::scan(&source)
                            .map_err(|e| Unopened::new(e.to_string(), e.is_transient()))?;
                        let (c, file) = cache.insert(&tar).map_err(io)?;
                        if c.digest != want {
                            return Err(Unopened::Broken(format!(
                                "compressed again to {}, not {want}",
                                c.digest
                            )));
                        }
                        file
                    }
                };
                LayerTar::opened(file, path).map_err(io)
            })
            .await
            .map_err(RegistryError::internal)?;
        match opened {
            Ok(tar) => Ok(Blob::Layer {
                digest: digest.to_string(),
                tar: Arc::new(tar),
                compression: codec,
            }),
            Err(Unopened::ForNow(e)) => {
                tracing::warn!(digest, error = %e, "cannot serve compressed layer for now; keeping the digest");
                Err(RegistryError::layer_unreadable_for_now())
            }
            Err(Unopened::Broken(e)) => {
                tracing::error!(digest, error = %e, "cannot serve compressed layer; dropping digest");
                self.layer_is_corrupt(digest).await;
                Err(RegistryError::BlobUnknown {
                    digest: digest.to_string(),
                })
            }
        }
    }

    /// A member of a gzip or zstd archive, from its kept copy: hashed again
    /// first unless its file is as it was when it last hashed right, and
    /// made (with the archive's other layers, in one pass) if not kept or
    /// not right. One larger than the budget is read from the archive.
    async fn member_blob(&self, digest: &str, member: Arc<LayerTar>) -> Result<Arc<LayerTar>> {
        let (layers, want, events) = (self.layers.clone(), digest.to_string(), self.events.clone());
        let archived = member.clone();
        let kept = tokio::task::spawn_blocking(move || -> std::io::Result<Option<LayerTar>> {
            let copy = layers.members.open(&want, archived.size());
            events.metrics.cache("archive_member", copy.is_some());
            if let Some(copy) = copy {
                // Served unhashed only as it was when it last hashed right;
                // else (a restart, a write to it) hashed before a byte of it
                // is served. A copy that cannot be read is the state dir's
                // trouble, not the archive's: it goes, like a wrong one.
                let checked = copy.identity().and_then(|identity| {
                    if layers.layer_trusted(&want, identity) {
                        return Ok(None);
                    }
                    let (hashed, held) = copy.digest_since(identity)?;
                    if hashed == want && held {
                        layers.layer_verified(&want, identity);
                        return Ok(None);
                    }
                    Ok(Some(format!("it hashes to {hashed}")))
                });
                match checked {
                    Ok(None) => return Ok(Some(copy)),
                    Ok(Some(why)) => {
                        tracing::warn!(digest = %want, why, "a kept archive member no longer hashes to its digest; discarded, decompressing it again")
                    }
                    Err(e) => {
                        tracing::warn!(digest = %want, error = %e, "cannot read a kept archive member; discarded, decompressing it again")
                    }
                }
                layers.members.discard(&want);
            }
            let known = |d: &str| {
                layers.index.layer(d).is_some_and(|l| {
                    matches!(l.source, LayerSource::ArchiveMember { gzip, zstd, .. } if gzip || zstd)
                })
            };
            match layers.members.fill(&want, &archived, &known)? {
                Filled::Kept(copy) => {
                    // Its bytes hashed to the digest as they were written.
                    if let Ok(identity) = copy.identity() {
                        layers.layer_verified(&want, identity);
                    }
                    Ok(Some(copy))
                }
                Filled::NotKept => Ok(None),
            }
        });
        match kept.await.map_err(RegistryError::internal)? {
            Ok(Some(copy)) => Ok(Arc::new(copy)),
            Ok(None) => Ok(member),
            Err(e) if crate::image::layer::is_transient(&e) => {
                tracing::warn!(digest, error = %e, "cannot keep an archive member for now; keeping the digest");
                Err(RegistryError::layer_unreadable_for_now())
            }
            Err(e) => {
                tracing::error!(digest, error = %e, "cannot read an archive member; dropping the digest");
                self.layer_is_corrupt(digest).await;
                Err(RegistryError::BlobGone {
                    digest: digest.to_string(),
                    reason: e.to_string(),
                })
            }
        }
    }

    /// Served bytes did not hash to the digest: drop every cached trace of it.
    pub async fn layer_is_corrupt(&self, digest: &str) {
        self.layers.forget_corrupt(digest).await;
        self.manifests.invalidate_all();
    }
}

/// Why a compressed layer could not be opened.
enum Unopened {
    /// Short of descriptors or memory (see `layer::is_transient`): the
    /// digest is kept and the client retries.
    ForNow(String),
    /// The layer's sources changed or its bytes no longer match.
    Broken(String),
}

impl Unopened {
    fn new(reason: String, transient: bool) -> Unopened {
        if transient {
            Unopened::ForNow(reason)
        } else {
            Unopened::Broken(reason)
        }
    }
}
