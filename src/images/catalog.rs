//! `/v2/_catalog`: the flake's image names (`packages.<system>` at
//! `latest`, for every served system), and the package paths pulled since
//! start (the set itself is never listed: evaluating all of nixpkgs for a
//! listing is not worth it).

use super::Images;
use crate::error::{RegistryError, Result};
use crate::refs::Selected;
use crate::registry::route::valid_name;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

pub(super) struct Catalog {
    /// The flake's names, for the manifest TTL (a push adds outputs).
    listed: moka::future::Cache<(), Arc<Vec<String>>>,
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

impl Images {
    /// Every name the catalog lists, sorted.
    pub async fn catalog(self: &Arc<Self>) -> Result<Vec<String>> {
        let mut names = BTreeSet::new();
        if let Some(flake) = &self.settings.flake {
            let listed = self
                .catalog
                .listed
                .try_get_with((), async {
                    let mut all = BTreeSet::new();
                    for system in &self.settings.systems {
                        // (The attribute path is unused: only the names are read.)
                        let target =
                            flake.target("catalog", "latest", system, &Selected::Latest)?;
                        all.extend(
                            self.nix
                                .image_names(&target)
                                .await?
                                .into_iter()
                                // Names a pull cannot spell (capitals) are left out.
                                .filter(|n| valid_name(n).is_ok()),
                        );
                    }
                    Ok::<_, RegistryError>(Arc::new(all.into_iter().collect::<Vec<_>>()))
                })
                .await
                .map_err(|e| (*e).clone())?;
            names.extend(listed.iter().cloned());
        }
        names.extend(self.catalog.pulled.iter().map(|(k, _)| (*k).clone()));
        Ok(names.into_iter().collect())
    }
}
