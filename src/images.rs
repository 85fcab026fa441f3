//! The path of a pull without HTTP: resolve -> build -> plan -> digest ->
//! manifest, with the caches that make every step happen once.

use crate::build::{Nix, PathInfo};
use crate::error::{RegistryError, Result};
use crate::index::DigestIndex;
use crate::layer::{LayerKey, LayerSource, LayerTar};
use crate::manifest::{documents, ImageDocuments, JsonBlob, LayerDigest};
use crate::plan::{self, GraphNode, ImagePlan};
use crate::registry::route::valid_tag;
use crate::resolve::{oci_arch, BuildTarget, FlakeSource};
use futures_util::future::{BoxFuture, FutureExt, Shared};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

pub struct Settings {
    pub source: FlakeSource,
    pub system: String,
    pub manifest_ttl: Duration,
}

/// Mutable refs expire after the manifest TTL; pinned commits never do.
struct TargetExpiry {
    ttl: Duration,
}

impl moka::Expiry<BuildTarget, Arc<ImageDocuments>> for TargetExpiry {
    fn expire_after_create(
        &self,
        key: &BuildTarget,
        _: &Arc<ImageDocuments>,
        _: Instant,
    ) -> Option<Duration> {
        (!key.pinned).then_some(self.ttl)
    }
}

type PendingImage = Shared<BoxFuture<'static, Result<Arc<ImageDocuments>>>>;

pub struct Images {
    settings: Settings,
    inflight: Mutex<HashMap<BuildTarget, PendingImage>>,
    pub nix: Nix,
    index: DigestIndex,
    manifests: moka::future::Cache<BuildTarget, Arc<ImageDocuments>>,
    /// Coalesces digest passes of one layer wanted by several images at once.
    digesting: moka::future::Cache<LayerKey, LayerDigest>,
    /// Scanned layers (file lists with rendered headers) for blob GETs.
    scanned: moka::future::Cache<String, Arc<LayerTar>>,
    /// Digest passes run on blocking threads, one per core.
    digest_slots: Semaphore,
}

/// What a blob GET serves.
pub enum Blob {
    Json(Arc<JsonBlob>),
    Layer { digest: String, tar: Arc<LayerTar> },
}

impl Images {
    pub fn new(settings: Settings, nix: Nix, index: DigestIndex) -> Arc<Images> {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let ttl = settings.manifest_ttl;
        Arc::new(Images {
            settings,
            inflight: Mutex::new(HashMap::new()),
            nix,
            index,
            manifests: moka::future::Cache::builder()
                .max_capacity(10_000)
                .expire_after(TargetExpiry { ttl })
                .build(),
            digesting: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
            scanned: moka::future::Cache::builder().max_capacity(32).build(),
            digest_slots: Semaphore::new(cores),
        })
    }

    pub fn source(&self) -> &FlakeSource {
        &self.settings.source
    }

    /// The image for `name:tag`. Concurrent pulls share one build, which runs
    /// in a task of its own: a client that hangs up cancels nothing, and the
    /// task caches its own result, so the next pull finds it even if every
    /// client has left. Failures are not cached.
    pub async fn image(self: &Arc<Self>, name: &str, tag: &str) -> Result<Arc<ImageDocuments>> {
        let target = self
            .settings
            .source
            .target(name, tag, &self.settings.system)?;
        if let Some(docs) = self.manifests.get(&target).await {
            return Ok(docs);
        }
        self.pending(target).await
    }

    /// The in-flight build of `target`, started if there is none.
    /// (moka's own coalescing restarts the work when the first caller is
    /// dropped, which would run a second `nix build`.)
    fn pending(self: &Arc<Self>, target: BuildTarget) -> PendingImage {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = inflight.get(&target) {
            return p.clone();
        }
        let this = self.clone();
        let t = target.clone();
        let task = tokio::spawn(async move {
            let result = this.produce(&t).await.map(Arc::new);
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

    async fn produce(&self, target: &BuildTarget) -> Result<ImageDocuments> {
        let started = Instant::now();
        let out = self.nix.build(target).await?;
        let built = started.elapsed();
        let plan = self.plan(target, &out).await?;
        let planned = started.elapsed();
        let layers = self.digest_layers(&plan).await?;
        let docs = documents(&plan, &layers);
        for blob in [&docs.config, &docs.oci, &docs.docker] {
            self.index.put_json(blob).map_err(RegistryError::internal)?;
        }
        tracing::info!(
            target = %target,
            digest = %docs.oci.digest,
            layers = layers.len(),
            build_ms = built.as_millis() as u64,
            plan_ms = (planned - built).as_millis() as u64,
            digest_ms = (started.elapsed() - planned).as_millis() as u64,
            "image ready"
        );
        Ok(docs)
    }

    async fn plan(&self, target: &BuildTarget, out: &std::path::Path) -> Result<ImagePlan> {
        let arch = oci_arch(&self.settings.system).to_string();
        let not_image = |reason: String| RegistryError::NotAnImage {
            target: target.to_string(),
            reason,
        };
        let meta = tokio::fs::metadata(out)
            .await
            .map_err(RegistryError::internal)?;
        if meta.is_file() {
            let bytes = tokio::fs::read(out)
                .await
                .map_err(RegistryError::internal)?;
            return plan::plan_conf(&bytes, &arch).map_err(|e| not_image(e.to_string()));
        }
        let main_program = self.nix.main_program(target).await?;
        let closure: Vec<PathInfo> = self.nix.closure(out).await?;
        let graph = closure
            .into_iter()
            .map(|p| GraphNode {
                path: p.path,
                nar_size: p.nar_size,
                references: p.references,
            })
            .collect();
        Ok(plan::plan_package(out, graph, main_program, &arch))
    }

    /// One streaming pass per layer not digested before, in parallel.
    async fn digest_layers(&self, plan: &ImagePlan) -> Result<Vec<LayerDigest>> {
        let passes = plan.layers.iter().map(|l| self.layer_digest(&l.source));
        futures_util::future::try_join_all(passes).await
    }

    async fn layer_digest(&self, source: &LayerSource) -> Result<LayerDigest> {
        let key = source.key();
        if let Some(d) = self.index.layer_digest(&key) {
            return Ok(d);
        }
        let src = source.clone();
        self.digesting
            .try_get_with(key, async move {
                let _slot = self
                    .digest_slots
                    .acquire()
                    .await
                    .map_err(RegistryError::internal)?;
                let s = src.clone();
                let d = tokio::task::spawn_blocking(move || -> std::io::Result<LayerDigest> {
                    let tar = LayerTar::scan(&s).map_err(std::io::Error::other)?;
                    Ok(LayerDigest {
                        digest: tar.digest()?,
                        size: tar.size(),
                    })
                })
                .await
                .map_err(RegistryError::internal)?
                .map_err(|e| RegistryError::internal(format!("digest pass failed: {e}")))?;
                self.index
                    .record_layer(&src, &d)
                    .map_err(RegistryError::internal)?;
                Ok(d)
            })
            .await
            .map_err(|e: Arc<RegistryError>| (*e).clone())
    }

    pub fn manifest_by_digest(&self, digest: &str) -> Option<Arc<JsonBlob>> {
        self.index
            .get_json(digest)
            .filter(|b| b.media_type != crate::manifest::OCI_CONFIG)
    }

    pub async fn blob(&self, digest: &str) -> Result<Blob> {
        if let Some(j) = self.index.get_json(digest) {
            return Ok(Blob::Json(j));
        }
        let unknown = || RegistryError::BlobUnknown {
            digest: digest.to_string(),
        };
        let (source, size) = self.index.layer_source(digest).ok_or_else(unknown)?;
        let tar = self
            .scanned
            .try_get_with(digest.to_string(), async {
                tokio::task::spawn_blocking(move || LayerTar::scan(&source).map(Arc::new))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())
            })
            .await;
        match tar {
            Ok(tar) if tar.size() == size => Ok(Blob::Layer {
                digest: digest.to_string(),
                tar,
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
            Err(e) => {
                // Most likely its store paths were garbage-collected.
                tracing::warn!(digest, error = %e, "cannot scan layer; dropping digest");
                self.layer_is_corrupt(digest).await;
                Err(unknown())
            }
        }
    }

    /// Served bytes did not hash to the digest: drop every cached trace of it.
    pub async fn layer_is_corrupt(&self, digest: &str) {
        if let Some(key) = self.index.forget_layer(digest) {
            self.digesting.invalidate(&key).await;
        }
        self.scanned.invalidate(digest).await;
        self.manifests.invalidate_all();
    }

    /// `latest` plus the branches and tags of a git source.
    pub async fn tags(self: &Arc<Self>, name: &str) -> Result<Vec<String>> {
        let target = self
            .settings
            .source
            .target(name, "latest", &self.settings.system)?;
        if self.manifests.get(&target).await.is_none() {
            self.nix.check_exists(&target).await?;
        }
        let mut tags = vec!["latest".to_string()];
        if let Some(remote) = self.settings.source.git_remote() {
            let out = tokio::process::Command::new("git")
                .args(["ls-remote", "--heads", "--tags", &remote])
                .kill_on_drop(true)
                .output()
                .await
                .map_err(RegistryError::internal)?;
            if !out.status.success() {
                tracing::warn!(remote, stderr = %String::from_utf8_lossy(&out.stderr), "git ls-remote failed");
            }
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let Some(r) = line.split('\t').nth(1) else {
                    continue;
                };
                let short = r
                    .strip_prefix("refs/heads/")
                    .or_else(|| r.strip_prefix("refs/tags/"));
                if let Some(t) = short.filter(|t| !t.ends_with("^{}") && valid_tag(t).is_ok()) {
                    tags.push(t.to_string());
                }
            }
        }
        tags.sort();
        tags.dedup();
        Ok(tags)
    }
}
