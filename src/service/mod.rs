//! The path of a pull without HTTP: resolve -> build -> plan -> digest ->
//! manifest, with the caches that make every step happen once.
//!
//! - `produce`: resolve -> build -> plan -> digest -> manifest, single flight;
//! - `blobs`: digest -> what to stream, scans, the compressed cache;
//! - `platforms`: name + tag -> one image, or an index over `--system`;
//! - `catalog`: the names `/v2/_catalog` lists;
//! - `layers`: the layer store; layers verified once, streamed without hashing (small ones
//!   from memory) while their files are unchanged.

mod blobs;
mod catalog;
mod layers;
mod platforms;
mod produce;
pub mod retention;

pub use blobs::Blob;
pub use layers::{give_back_freed_memory, HotClaim, LayerStore, HOT_MAX_LAYER, SCANNED_MEMBERS};
pub use platforms::Tagged;

use crate::error::{RegistryError, Result};
use crate::events::{BuildKind, BuildSubject, Events, Outcome};
use crate::image::manifest::ImageDocuments;
use crate::nix::refs::{RefGate, Selected};
use crate::nix::resolve::{BuildTarget, FlakeSource, PackageSource, PackageTarget};
use crate::nix::Nix;
use crate::nix::NixError;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Settings {
    /// Images named by the flake's outputs.
    pub flake: Option<FlakeSource>,
    /// Nixery-style images: every other name is a list of packages of this set.
    pub packages: Option<PackageSource>,
    /// `--system`: one or more Nix systems; with more than one, a tag is
    /// an image index over those the name exists for. Never empty.
    pub systems: Vec<String>,
    pub manifest_ttl: Duration,
    /// `--push-to`: a Nix store URL every built closure is copied to.
    pub push_to: Option<String>,
}

/// What one image is built from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ImageKey {
    Flake(BuildTarget),
    Packages(PackageTarget),
}

impl ImageKey {
    fn pinned(&self) -> bool {
        match self {
            ImageKey::Flake(t) => t.pinned,
            ImageKey::Packages(t) => t.pinned,
        }
    }

    fn tag(&self) -> &str {
        match self {
            ImageKey::Flake(t) => &t.tag,
            ImageKey::Packages(t) => &t.tag,
        }
    }

    /// The build as the pages and metrics name it.
    fn subject(&self) -> BuildSubject {
        match self {
            ImageKey::Flake(t) => BuildSubject {
                name: t.attr_path.join("/"),
                tag: t.tag.clone(),
                system: t.system.clone(),
                kind: BuildKind::Flake,
                revision: t.revision(),
            },
            ImageKey::Packages(t) => BuildSubject {
                name: t.name(),
                tag: t.tag.clone(),
                system: t.system.clone(),
                kind: BuildKind::Packages,
                revision: (!t.rev.is_empty()).then(|| t.rev.clone()),
            },
        }
    }
}

impl std::fmt::Display for ImageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageKey::Flake(t) => t.fmt(f),
            ImageKey::Packages(t) => t.fmt(f),
        }
    }
}

/// Mutable refs expire after the manifest TTL; pinned commits never do.
struct TargetExpiry {
    ttl: Duration,
}

impl moka::Expiry<ImageKey, Arc<ImageDocuments>> for TargetExpiry {
    fn expire_after_create(
        &self,
        key: &ImageKey,
        _: &Arc<ImageDocuments>,
        _: Instant,
    ) -> Option<Duration> {
        (!key.pinned()).then_some(self.ttl)
    }
}

type PendingImage = Shared<BoxFuture<'static, Result<Arc<ImageDocuments>>>>;

pub struct ImageService {
    settings: Settings,
    inflight: Mutex<HashMap<ImageKey, PendingImage>>,
    pub nix: Nix,
    /// The layers' owner: the digest ledger, scans, digest passes, the
    /// compressed cache and trust.
    pub layers: Arc<layers::LayerStore>,
    manifests: moka::future::Cache<ImageKey, Arc<ImageDocuments>>,
    /// (name, tag) pairs that are not outputs of the flake, so package-path
    /// pulls skip the flake lookup until the manifest TTL passes.
    not_outputs: moka::sync::Cache<(String, String), ()>,
    /// Reads build outputs into plans; keeps the plans of archives it read.
    planner: Arc<crate::image::plan::Planner>,
    /// Which tags may be built (before any nix process runs).
    refs: RefGate,
    /// Output paths copied to `--push-to` (not copied again).
    pushed: moka::sync::Cache<PathBuf, ()>,
    pushes_ok: std::sync::atomic::AtomicU64,
    pushes_failed: std::sync::atomic::AtomicU64,
    catalog: catalog::Catalog,
    /// Where builds, cache lookups and digest passes are reported.
    pub events: Arc<Events>,
    /// What each produced image was made of: its SBOMs, provenance and
    /// signatures (see [`crate::provenance`]).
    pub provenance: Arc<crate::provenance::Provenance>,
}

impl ImageService {
    pub fn new(
        settings: Settings,
        nix: Nix,
        layers: Arc<LayerStore>,
        refs: RefGate,
        events: Arc<Events>,
        provenance: Arc<crate::provenance::Provenance>,
    ) -> Arc<ImageService> {
        let ttl = settings.manifest_ttl;
        Arc::new(ImageService {
            layers,
            settings,
            inflight: Mutex::new(HashMap::new()),
            not_outputs: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(ttl)
                .build(),
            nix,
            // In bytes of the documents: an image with many layers weighs more.
            manifests: moka::future::Cache::builder()
                .weigher(|_, d: &Arc<ImageDocuments>| {
                    let bytes = d.oci.bytes.len() + d.docker.bytes.len() + d.config.bytes.len();
                    u32::try_from(bytes + 512).unwrap_or(u32::MAX)
                })
                .max_capacity(64 * 1024 * 1024)
                .expire_after(TargetExpiry { ttl })
                .support_invalidation_closures()
                .build(),
            planner: Arc::new(crate::image::plan::Planner::default()),
            refs,
            pushed: moka::sync::Cache::new(100_000),
            pushes_ok: Default::default(),
            pushes_failed: Default::default(),
            catalog: catalog::Catalog::new(ttl),
            events,
            provenance,
        })
    }

    /// The served flake's URL, if a flake is served.
    pub fn flake_url(&self) -> Option<&str> {
        self.settings.flake.as_ref().map(|f| f.url.as_str())
    }

    /// The package set of Nixery-style names, if there is one.
    pub fn packages_source(&self) -> Option<String> {
        self.settings.packages.as_ref().map(|p| p.describe())
    }

    pub fn systems(&self) -> &[String] {
        &self.settings.systems
    }

    /// What is served, for the startup log.
    pub fn describe(&self) -> String {
        let flake = self
            .settings
            .flake
            .as_ref()
            .map(|f| format!("flake {}", f.url));
        let packages = self
            .settings
            .packages
            .as_ref()
            .map(|p| format!("packages of {}", p.describe()));
        [flake, packages]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `waited` is set when the image was not ready (built, or being built).
    async fn get_or_build(
        self: &Arc<Self>,
        key: ImageKey,
        waited: &AtomicBool,
    ) -> Result<Arc<ImageDocuments>> {
        let cached = self.manifests.get(&key).await;
        self.events.metrics.cache("manifest", cached.is_some());
        let docs = match cached {
            Some(docs) => docs,
            None => {
                waited.store(true, Ordering::Relaxed);
                self.pending(key).await?
            }
        };
        // Keeps its GC root (and documents) from retention's sweep.
        for blob in [&docs.oci, &docs.docker, &docs.config] {
            self.layers.index.served(&blob.digest);
        }
        Ok(docs)
    }

    /// Copy built outputs (with their closures) to the `--push-to` store,
    /// once per output path; runs after the manifest is served, so a pull
    /// never waits for it.
    async fn push(&self, store: &str, outputs: Vec<PathBuf>) {
        let fresh: Vec<PathBuf> = outputs
            .into_iter()
            .filter(|p| !self.pushed.contains_key(p))
            .collect();
        if fresh.is_empty() {
            return;
        }
        let started = Instant::now();
        match self.nix.copy_to(store, &fresh).await {
            Ok(()) => {
                for p in &fresh {
                    self.pushed.insert(p.clone(), ());
                }
                self.pushes_ok
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tracing::info!(
                    store = %crate::redact::redact(store),
                    paths = fresh.len(),
                    secs = started.elapsed().as_secs_f64(),
                    "pushed to the binary cache"
                );
            }
            Err(e) => {
                self.pushes_failed
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tracing::warn!(store = %crate::redact::redact(store), error = %e, "nix copy to the binary cache failed");
            }
        }
    }

    /// A push moved `tag` (and `latest` with it, when `default`): the refs
    /// listed before it, and what was cached of those tags, are stale.
    pub async fn pushed(&self, tag: &str, default: bool) {
        let remotes = [
            self.settings.flake.as_ref().and_then(|f| f.git_remote()),
            self.settings.packages.as_ref().and_then(|p| p.git_remote()),
        ];
        for remote in remotes.into_iter().flatten() {
            self.refs.forget(&remote).await;
        }
        // A push may add outputs.
        self.not_outputs.invalidate_all();
        if default {
            self.catalog.forget_listed();
        }
        let tag = tag.to_string();
        let stale = self.manifests.invalidate_entries_if(move |k, _| {
            !k.pinned() && (k.tag() == tag || (default && k.tag() == "latest"))
        });
        if let Err(e) = stale {
            tracing::error!(error = %e, "cannot drop cached manifests of a pushed tag");
        }
    }

    /// Pushes to `--push-to` that succeeded and failed.
    pub fn pushes(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::SeqCst;
        (self.pushes_ok.load(SeqCst), self.pushes_failed.load(SeqCst))
    }

    /// Apply `--keep-roots` and `--max-state-mib` to the state dir (see
    /// [`crate::service::retention`]); run at start and every hour.
    pub async fn sweep_state(self: &Arc<Self>, policy: crate::service::retention::Policy) {
        let this = self.clone();
        let report = tokio::task::spawn_blocking(move || {
            crate::service::retention::sweep(
                &policy,
                &this.nix,
                &this.layers.index,
                &this.layers.kept,
            )
        })
        .await;
        match report {
            Ok(r) => {
                if r.roots_removed > 0 || r.layers_dropped > 0 {
                    // Cached manifests may name layers whose paths a GC can now take.
                    self.manifests.invalidate_all();
                    self.layers.scanned.invalidate_all();
                }
                if r.roots_removed + r.layers_dropped + r.documents_removed + r.mirrors_removed > 0
                {
                    tracing::info!(?r, "state dir swept");
                } else {
                    tracing::debug!(?r, "state dir swept");
                }
            }
            Err(e) => tracing::error!(error = %e, "state sweep failed"),
        }
    }

    /// The in-flight build of `target`, started if there is none.
    /// (moka's own coalescing restarts the work when the first caller is
    /// dropped, which would run a second `nix build`.)
    fn pending(self: &Arc<Self>, target: ImageKey) -> PendingImage {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = inflight.get(&target) {
            return p.clone();
        }
        let this = self.clone();
        let t = target.clone();
        let task = tokio::spawn(async move {
            let subject = t.subject();
            let kind = subject.kind.name();
            let build = this.events.builds.start(subject);
            this.events.metrics.build_started(kind);
            let result = match this.produce(&t, &build).await {
                Ok(produced) => {
                    if let Some(store) = this.settings.push_to.clone() {
                        let pusher = this.clone();
                        let outputs = produced.outputs;
                        tokio::spawn(async move { pusher.push(&store, outputs).await });
                    }
                    let image = Arc::new(produced.summary);
                    this.events
                        .builds
                        .finish(&build, Outcome::Built { image }, true);
                    Ok(Arc::new(produced.docs))
                }
                Err(e) => {
                    let reason = e.build_failure();
                    let outcome = Outcome::Failed {
                        error: e.to_string(),
                        log_tail: build.tail(crate::events::builds::TAIL_LINES),
                    };
                    // A name that is no image, or a full queue, is no build.
                    let keep = reason.was_a_build();
                    // (The error reply, or the warm task, logs it.)
                    this.events.builds.finish(&build, outcome, keep);
                    Err(e)
                }
            };
            let failure = result.as_ref().err().map(RegistryError::build_failure);
            this.events
                .metrics
                .build_finished(kind, failure, build.elapsed());
            if let Ok(docs) = &result {
                this.manifests.insert(t.clone(), docs.clone()).await;
            }
            this.inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&t);
            result
        });
        let pending = async move {
            task.await
                .unwrap_or_else(|e| Err(RegistryError::internal(format!("image task failed: {e}"))))
        }
        .boxed()
        .shared();
        inflight.insert(target, pending.clone());
        pending
    }

    /// Whether `name` is an output of the flake (at `latest`) for any
    /// served system: NameUnknown if for none.
    async fn output_exists(&self, flake: &FlakeSource, name: &str) -> Result<()> {
        let mut unknown = None;
        for system in &self.settings.systems {
            let target = flake.target(name, "latest", system, &Selected::Latest)?;
            if self
                .manifests
                .contains_key(&ImageKey::Flake(target.clone()))
            {
                return Ok(());
            }
            match self.nix.check_exists(&target).await {
                Err(e @ NixError::NameUnknown { .. }) => unknown = Some(e),
                other => return Ok(other?),
            }
        }
        Err(unknown.expect("at least one system").into())
    }

    /// `latest` plus the branches and tags of the source the name comes from.
    pub async fn tags(self: &Arc<Self>, name: &str) -> Result<Vec<String>> {
        let mut remote = None;
        let mut is_output = false;
        if let Some(flake) = &self.settings.flake {
            match self.output_exists(flake, name).await {
                Ok(()) => {
                    is_output = true;
                    remote = flake.git_remote();
                }
                Err(RegistryError::NameUnknown { .. }) if self.settings.packages.is_some() => {}
                Err(e) => return Err(e),
            }
        }
        if !is_output {
            if let Some(p) = &self.settings.packages {
                remote = p.git_remote();
            }
        }
        let mut tags = vec!["latest".to_string()];
        if let Some(remote) = remote {
            tags.extend(
                self.refs
                    .refs(&remote)
                    .await?
                    .iter()
                    .map(|r| r.short.clone())
                    .filter(|t| crate::vocab::is_tag(t)),
            );
        }
        tags.sort();
        tags.dedup();
        Ok(tags)
    }
}
