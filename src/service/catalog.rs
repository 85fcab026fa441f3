//! `/v2/_catalog`: the flake's image names (`packages.<system>` at
//! `latest`, for every served system), and the package paths pulled since
//! start (the set itself is never listed: evaluating all of nixpkgs for a
//! listing is not worth it).

use super::ImageService;
use crate::error::{RegistryError, Result};
use crate::nix::refs::Selected;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

pub(super) struct Catalog {
    /// The flake's names with their `meta.description`, for the manifest
    /// TTL (a push adds outputs).
    listed: moka::future::Cache<(), Arc<BTreeMap<String, Option<String>>>>,
    /// Package paths that gave an image.
    pulled: moka::sync::Cache<String, ()>,
}

impl Catalog {
    pub(super) fn new(ttl: Duration) -> Catalog {
        Catalog {
            listed: moka::future::Cache::builder().time_to_live(ttl).build(),
            pulled: moka::sync::Cache::new(10_000),
        }
    }

    pub(super) fn pulled(&self, name: &str) {
        self.pulled.insert(name.to_string(), ());
    }

    pub(super) fn forget_listed(&self) {
        self.listed.invalidate_all();
    }
}

impl ImageService {
    /// Every name the catalog lists, sorted.
    pub async fn catalog(self: &Arc<Self>) -> Result<Vec<String>> {
        let mut names: BTreeSet<String> = self.outputs().await?.keys().cloned().collect();
        names.extend(self.catalog.pulled.iter().map(|(k, _)| (*k).clone()));
        Ok(names.into_iter().collect())
    }

    /// Package paths pulled since start, sorted.
    pub fn pulled_package_paths(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .catalog
            .pulled
            .iter()
            .map(|(k, _)| (*k).clone())
            .collect();
        names.sort();
        names
    }

    /// The flake's image outputs (none without a flake), each with its
    /// `meta.description` if it has one.
    pub async fn outputs(self: &Arc<Self>) -> Result<Arc<BTreeMap<String, Option<String>>>> {
        let Some(flake) = &self.settings.flake else {
            return Ok(Arc::default());
        };
        self.catalog
            .listed
            .try_get_with((), async {
                let mut all = BTreeMap::new();
                for system in &self.settings.systems {
                    // (The attribute path is unused: only the names are read.)
                    let target = flake.target("catalog", "latest", system, &Selected::Latest)?;
                    for (name, description) in self.nix.image_names(&target).await? {
                        // Names a pull cannot spell (capitals) are left out.
                        if crate::vocab::check_name(&name).is_ok() {
                            let known = all.entry(name).or_insert(None);
                            if known.is_none() {
                                *known = description;
                            }
                        }
                    }
                }
                Ok::<_, RegistryError>(Arc::new(all))
            })
            .await
            .map_err(|e| (*e).clone())
    }
}
