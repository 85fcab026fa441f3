//! Name + tag -> what a manifest GET by tag serves: one image, or with
//! several `--system`s an image index over every system the name exists
//! for. An index is all or nothing: a system whose build fails fails the
//! tag, naming the system, so no client ever gets an index with an entry
//! missing.

use super::{ImageKey, ImageService};
use crate::error::{RegistryError, Result};
use crate::image::manifest::{index_documents, ImageDocuments, IndexDocuments, JsonBlob, Platform};
use crate::nix::refs::Selected;
use crate::nix::NixError;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// What a tag names.
#[derive(Debug, Clone)]
pub enum Tagged {
    Image(Arc<ImageDocuments>),
    Index(Arc<IndexDocuments>),
}

impl Tagged {
    /// The document served to a client: OCI or Docker flavour; an index
    /// only to a client that takes lists (else the first system's image).
    pub fn document(&self, docker: bool, lists: bool) -> &JsonBlob {
        fn image(d: &ImageDocuments, docker: bool) -> &JsonBlob {
            if docker {
                &d.docker
            } else {
                &d.oci
            }
        }
        match self {
            Tagged::Image(d) => image(d, docker),
            Tagged::Index(i) if lists => {
                if docker {
                    &i.docker
                } else {
                    &i.oci
                }
            }
            Tagged::Index(i) => image(&i.images[0].1, docker),
        }
    }

    /// The OCI document's digest: what a pull by tag resolves to.
    pub fn digest(&self) -> &str {
        &self.document(false, true).digest
    }
}

impl ImageKey {
    pub(super) fn system(&self) -> &str {
        match self {
            ImageKey::Flake(t) => &t.system,
            ImageKey::Packages(t) => &t.system,
        }
    }
}

impl ImageService {
    /// The image or index for `name:tag`. A flake output keeps its name;
    /// any other name is a package path of the package set, if there is
    /// one. Concurrent pulls share one build per system, which runs in a
    /// task of its own (see `pending`).
    pub async fn tagged(self: &Arc<Self>, name: &str, tag: &str) -> Result<Tagged> {
        self.tagged_waiting(name, tag, &AtomicBool::new(false))
            .await
    }

    /// [`ImageService::tagged`]; `waited` is set if an image was not ready.
    pub async fn tagged_waiting(
        self: &Arc<Self>,
        name: &str,
        tag: &str,
        waited: &AtomicBool,
    ) -> Result<Tagged> {
        if let Some(flake) = &self.settings.flake {
            let asked = (name.to_string(), tag.to_string());
            let has_packages = self.settings.packages.is_some();
            if !(has_packages && self.not_outputs.contains_key(&asked)) {
                let allowed = match flake.git_remote() {
                    Some(remote) => self.refs.select(&remote, tag, &flake.url).await,
                    None => Ok(Selected::Latest),
                };
                match allowed {
                    // Not a ref of the flake: maybe one of the package set.
                    Err(NixError::TagUnknown { .. }) if has_packages => {}
                    Err(e) => return Err(e.into()),
                    Ok(selected) => {
                        let keys = self
                            .settings
                            .systems
                            .iter()
                            .map(|s| Ok(ImageKey::Flake(flake.target(name, tag, s, &selected)?)))
                            .collect::<Result<Vec<_>>>()?;
                        match self.over_systems(keys, waited).await {
                            // Not an output of the flake for any system: a
                            // package path, if there is a set.
                            Err(RegistryError::NameUnknown { .. }) if has_packages => {
                                self.not_outputs.insert(asked, ())
                            }
                            other => return other,
                        }
                    }
                }
            }
        }
        let packages = self
            .settings
            .packages
            .as_ref()
            .expect("a flake or a package set is configured");
        let git_ref = match packages.git_remote() {
            Some(remote) => match self.refs.select(&remote, tag, &packages.describe()).await? {
                Selected::Ref(r) => Some(r.full),
                Selected::Latest | Selected::Commit(_) => None,
            },
            None => None,
        };
        // (An `arm64/` path gives the same target for every system: one image.)
        let keys = self
            .settings
            .systems
            .iter()
            .map(|s| {
                Ok(ImageKey::Packages(packages.target(
                    name,
                    tag,
                    s,
                    git_ref.clone(),
                )?))
            })
            .collect::<Result<Vec<_>>>()?;
        let tagged = self.over_systems(keys, waited).await?;
        self.catalog.pulled(name);
        Ok(tagged)
    }

    /// One image per key (one key per system), built concurrently. A
    /// system the name does not exist for is left out of the index.
    async fn over_systems(
        self: &Arc<Self>,
        mut keys: Vec<ImageKey>,
        waited: &AtomicBool,
    ) -> Result<Tagged> {
        let mut seen = std::collections::HashSet::new();
        keys.retain(|k| seen.insert(k.clone()));
        if let [key] = keys.as_slice() {
            return Ok(Tagged::Image(self.get_or_build(key.clone(), waited).await?));
        }
        let built = futures_util::future::join_all(
            keys.iter().map(|k| self.get_or_build(k.clone(), waited)),
        )
        .await;
        let mut images = Vec::new();
        let mut unknown = None;
        for (key, result) in keys.iter().zip(built) {
            let system = key.system();
            let for_system = |e: RegistryError| match e {
                // Transient: the client retries the whole tag.
                e @ (RegistryError::TooManyRequests { .. } | RegistryError::Unavailable { .. }) => {
                    e
                }
                e => RegistryError::ForSystem {
                    system: system.to_string(),
                    source: Box::new(e),
                },
            };
            match result {
                Ok(docs) => {
                    let platform = checked_platform(key, &docs).map_err(for_system)?;
                    images.push((platform, docs));
                }
                Err(
                    e @ (RegistryError::NameUnknown { .. } | RegistryError::PackagesUnknown { .. }),
                ) => {
                    unknown.get_or_insert(e);
                }
                Err(e) => return Err(for_system(e)),
            }
        }
        if images.is_empty() {
            return Err(unknown.expect("every key failed"));
        }
        let docs = index_documents(images);
        for blob in [&docs.oci, &docs.docker] {
            if self.layers.index.get_json(&blob.digest).is_none() {
                self.layers
                    .index
                    .put_json(blob)
                    .map_err(RegistryError::internal)?;
            }
        }
        let subject = keys[0].subject();
        self.events
            .builds
            .index_served(&subject.name, &subject.tag, &docs.oci.digest);
        Ok(Tagged::Index(Arc::new(docs)))
    }
}

/// The platform an index lists the image under: its config's, which must
/// be the system's (an aarch64-linux output that made an amd64 image
/// would be a wrong entry).
fn checked_platform(key: &ImageKey, docs: &ImageDocuments) -> Result<Platform> {
    let wanted = Platform::of_system(key.system());
    let got = Platform::of_config(&docs.config)
        .ok_or_else(|| RegistryError::internal("an image config without os or architecture"))?;
    if (&got.os, &got.architecture) != (&wanted.os, &wanted.architecture) {
        return Err(RegistryError::NotAnImage {
            target: key.to_string(),
            reason: format!("its config is for {got}, not {wanted}"),
        });
    }
    Ok(got)
}
