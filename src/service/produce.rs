//! resolve -> build -> plan -> digest -> manifest for one image.

use super::{ImageKey, ImageService};
use crate::error::{RegistryError, Result};
use crate::events::{Build, ImageSummary, LayerSummary};
use crate::image::layer::{Identity, LayerSource, LayerTar};
use crate::image::manifest::{documents, ImageDocuments, LayerDigest};
use crate::image::plan::{self, Closure, GraphNode, ImagePlan};
use crate::nix::resolve::BuildTarget;
use crate::nix::PathInfo;
use crate::vocab::oci_arch;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// What producing an image made.
pub(super) struct Produced {
    pub docs: ImageDocuments,
    /// The build outputs the image was made from (for `--push-to`).
    pub outputs: Vec<PathBuf>,
    pub summary: ImageSummary,
}

impl ImageService {
    /// The image's documents, and the build outputs they were made from;
    /// the build's log goes to `build` as it comes.
    pub(super) async fn produce(&self, key: &ImageKey, build: &Build) -> Result<Produced> {
        let started = Instant::now();
        let log = |line: &str| build.log_line(line);
        let outputs = match key {
            ImageKey::Flake(t) => vec![self.nix.build(t, &log).await?],
            ImageKey::Packages(t) => self.nix.build_packages(t, &log).await?,
        };
        let built = started.elapsed();
        // The source's narHash for provenance: an evaluation of its own
        // (once per commit), only for a build that succeeded, and beside
        // the planning and the digest pass rather than before them.
        let lock_eval = async {
            let ImageKey::Flake(t) = key else { return None };
            self.nix
                .flake_lock(t)
                .await
                .inspect_err(|e| tracing::warn!(image = %key, error = %e, "cannot read the flake's lock for provenance"))
                .ok()
        };
        let (digested, lock) = tokio::join!(self.plan_and_digest(key, &outputs), lock_eval);
        let (plan, closure, layers, [planned, digested]) = digested?;
        let (planned, digested) = (planned - started, digested - started);
        let docs = documents(
            &plan,
            &layers,
            self.layers.compressed.as_ref().map(|c| c.codec),
        );
        for blob in [&docs.config, &docs.oci, &docs.docker] {
            self.layers
                .index
                .put_json(blob)
                .map_err(RegistryError::internal)?;
        }
        let root = match key {
            ImageKey::Flake(t) => self.nix.flake_root(t),
            ImageKey::Packages(t) => self.nix.packages_root(t),
        };
        self.layers
            .index
            .link_root(
                &[&docs.oci.digest, &docs.docker.digest, &docs.config.digest],
                &root,
            )
            .map_err(RegistryError::internal)?;
        tracing::info!(
            image = %key,
            digest = %docs.oci.digest,
            layers = layers.len(),
            build_ms = built.as_millis() as u64,
            plan_ms = (planned - built).as_millis() as u64,
            digest_ms = (digested - planned).as_millis() as u64,
            "image ready"
        );
        let summary = ImageSummary {
            subject: build.subject.clone(),
            manifest_digest: docs.oci.digest.clone(),
            docker_digest: docs.docker.digest.clone(),
            config: serde_json::from_slice(&docs.config.bytes).unwrap_or_default(),
            platform: match &plan.variant {
                Some(v) => format!("{}/{}/{v}", plan.os, plan.architecture),
                None => format!("{}/{}", plan.os, plan.architecture),
            },
            layers: plan
                .layers
                .iter()
                .zip(&layers)
                .map(|(planned, digest)| LayerSummary {
                    digest: digest.digest.clone(),
                    size: digest.size,
                    paths: planned
                        .source
                        .reads()
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect(),
                })
                .collect(),
            built_at: std::time::SystemTime::now(),
        };
        let record = record(key, &plan, &docs, &summary, &outputs, &closure, lock);
        if let Err(e) = self.provenance.remember(record) {
            tracing::warn!(image = %key, error = %e, "cannot keep the image's provenance record");
        }
        Ok(Produced {
            docs,
            outputs,
            summary,
        })
    }

    /// The image's plan, its closure, its layers' digests, and when the
    /// plan and the digests were done.
    async fn plan_and_digest(
        &self,
        key: &ImageKey,
        outputs: &[PathBuf],
    ) -> Result<(ImagePlan, Vec<PathInfo>, Vec<LayerDigest>, [Instant; 2])> {
        let (mut plan, closure) = match key {
            ImageKey::Flake(t) => self.plan_flake_output(t, &outputs[0]).await?,
            ImageKey::Packages(t) => {
                let infos = self.nix.closure(outputs).await?;
                let graph = graph_of(infos.clone());
                let (outs, shell, arch) =
                    (outputs.to_vec(), t.shell, oci_arch(&t.system).to_string());
                let plan = tokio::task::spawn_blocking(move || {
                    plan::plan_packages(&outs, graph, shell, &arch)
                })
                .await
                .map_err(RegistryError::internal)?;
                (plan, infos)
            }
        };
        // The system's variant (arm64 -> v8), unless the input said its own.
        let platform = crate::image::manifest::Platform::of_system(key.system());
        if plan.variant.is_none() && plan.architecture == platform.architecture {
            plan.variant = platform.variant;
        }
        let planned = Instant::now();
        let layers = self.digest_layers(&plan).await?;
        Ok((plan, closure, layers, [planned, Instant::now()]))
    }

    /// The output's plan, and its closure (with narHashs, for provenance).
    async fn plan_flake_output(
        &self,
        target: &BuildTarget,
        out: &std::path::Path,
    ) -> Result<(ImagePlan, Vec<PathInfo>)> {
        let arch = oci_arch(&target.system).to_string();
        let not_image = |reason: String| RegistryError::NotAnImage {
            target: target.to_string(),
            reason,
        };
        // Everything the image holds must come from the output's closure:
        // a conf may name any path, and only what Nix built is read. The
        // planner reads the conf while `nix path-info` runs; a check of a
        // path other than the output waits for the closure.
        let closure = Arc::new(Closure::pending(out));
        let unfilled = FillOnDrop(closure.clone());
        let (planner, path, a, c) = (
            self.planner.clone(),
            out.to_path_buf(),
            arch.clone(),
            closure.clone(),
        );
        let planning = tokio::task::spawn_blocking(move || planner.plan_output(&path, &a, &c));
        let infos = self
            .nix
            .closure(std::slice::from_ref(&out.to_path_buf()))
            .await;
        closure.fill(
            infos
                .as_ref()
                .ok()
                .map(|infos| infos.iter().map(|p| p.path.clone()).collect()),
        );
        drop(unfilled);
        let infos = infos?;
        let planned = planning
            .await
            .map_err(RegistryError::internal)?
            .map_err(|e| not_image(e.to_string()))?;
        let Some(plan) = planned else {
            let main_program = self.nix.main_program(target).await?;
            let plan = plan::plan_package(out, graph_of(infos.clone()), main_program, &arch);
            return Ok((plan, infos));
        };
        for layer in &plan.layers {
            for path in layer.source.reads() {
                closure
                    .check_walked(path)
                    .map_err(|e| not_image(e.to_string()))?;
            }
            for path in layer.source.opens() {
                closure
                    .check_opened(path)
                    .map_err(|e| not_image(e.to_string()))?;
            }
        }
        Ok((plan, infos))
    }

    /// One streaming pass per layer not digested before, in parallel.
    async fn digest_layers(&self, plan: &ImagePlan) -> Result<Vec<LayerDigest>> {
        let passes = plan
            .layers
            .iter()
            .map(|l| self.layer_digest(&l.source, l.known.as_ref()));
        futures_util::future::try_join_all(passes).await
    }

    /// `known`: the digest the planner found (an archive member's).
    async fn layer_digest(
        &self,
        source: &LayerSource,
        known: Option<&LayerDigest>,
    ) -> Result<LayerDigest> {
        // A member that came compressed is served as it is; an uncompressed
        // one is compressed like any layer when the server compresses.
        if let Some(k) = known.filter(|k| k.packed.is_some() || self.layers.compressed.is_none()) {
            let key = source.key();
            if self.layers.index.layer_digest(&key).as_ref() != Some(k) {
                self.layers
                    .index
                    .record_layer(key, source, k)
                    .map_err(RegistryError::internal)?;
            }
            return Ok(k.clone());
        }
        let key = match &self.layers.compressed {
            Some(cache) => cache.codec.key(source),
            None => source.key(),
        };
        let cached = self.layers.index.layer_digest(&key);
        self.events.metrics.cache("layer_digest", cached.is_some());
        if let Some(d) = cached {
            return Ok(d);
        }
        let src = source.clone();
        self.layers
            .digesting
            .try_get_with(key.clone(), async move {
                let _slot = self
                    .layers
                    .digest_slots
                    .acquire()
                    .await
                    .map_err(RegistryError::internal)?;
                let (s, compressed) = (src.clone(), self.layers.compressed.clone());
                let vouches = self.layers.vouches.clone();
                let large = self.layers.released.clone();
                let started = Instant::now();
                type Verified = Option<(Arc<LayerTar>, Identity)>;
                let (d, verified) = tokio::task::spawn_blocking(
                    move || -> std::io::Result<(LayerDigest, Verified)> {
                        let tar = Arc::new(LayerTar::scan(&s).map_err(std::io::Error::other)?);
                        large.watch(&tar);
                        match compressed {
                            Some(cache) => {
                                let before = tar.identity()?;
                                let (c, _) = cache.insert(&tar)?;
                                if tar.identity()? == before {
                                    vouches.vouch_for(&c.diff_id, &tar);
                                }
                                let d = LayerDigest {
                                    digest: c.digest,
                                    size: c.size,
                                    diff_id: Some(c.diff_id),
                                    packed: None,
                                };
                                Ok((d, None))
                            }
                            None => {
                                // The pass hashes the very bytes a GET
                                // serves: with the files' identity the same
                                // before and after, this scan is verified as
                                // a first GET would verify it.
                                let before = tar.identity()?;
                                let (digest, held) = tar.digest_since(before)?;
                                if held {
                                    vouches.vouch_for(&digest, &tar);
                                }
                                let d = LayerDigest {
                                    digest,
                                    size: tar.size(),
                                    diff_id: None,
                                    packed: None,
                                };
                                Ok((d, held.then_some((tar, before))))
                            }
                        }
                    },
                )
                .await
                .map_err(RegistryError::internal)?
                .map_err(|e| RegistryError::internal(format!("digest pass failed: {e}")))?;
                self.events.metrics.digest_pass(started.elapsed());
                self.layers
                    .index
                    .record_layer(key, &src, &d)
                    .map_err(RegistryError::internal)?;
                if let Some((tar, identity)) = verified {
                    // GETs serve this scan, trusted while the files keep
                    // their identity: a new pull's blobs are not hashed twice.
                    self.layers.keep_scan(&d.digest, tar).await;
                    self.layers.layer_verified(&d.digest, identity);
                }
                Ok(d)
            })
            .await
            .map_err(|e: Arc<RegistryError>| (*e).clone())
    }
}

/// `/nix/store/<hash>-<name>` of a path at or below it.
fn graph_of(closure: Vec<PathInfo>) -> Vec<GraphNode> {
    closure
        .into_iter()
        .map(|p| GraphNode {
            path: p.path,
            nar_size: p.nar_size,
            references: p.references,
        })
        .collect()
}

/// What the provenance documents of this image say: the store paths its
/// layers read (with their closure within the image), where it came from,
/// the manifests it is served as.
fn record(
    key: &ImageKey,
    plan: &ImagePlan,
    docs: &ImageDocuments,
    summary: &ImageSummary,
    outputs: &[PathBuf],
    closure: &[PathInfo],
    lock: Option<crate::nix::FlakeLock>,
) -> crate::provenance::Record {
    use crate::provenance::{record::store_path_of, Component, Described, Record, Source};
    use crate::redact::redact;
    use std::collections::BTreeSet;
    // The store paths the image holds under /nix/store: the conf or stream
    // script it came from is in the output's closure but not in the image,
    // and a tree copied to / (a customisation layer) is no package.
    let in_image: BTreeSet<PathBuf> = plan
        .layers
        .iter()
        .flat_map(|l| l.source.store_paths())
        .filter_map(store_path_of)
        .collect();
    let by_path: std::collections::HashMap<&std::path::Path, &PathInfo> =
        closure.iter().map(|p| (p.path.as_path(), p)).collect();
    // An image holds the closure of what it reads (the layers of a conf
    // are closures); follow references to be sure none is left out.
    let mut all = in_image.clone();
    let mut todo: Vec<PathBuf> = in_image.into_iter().collect();
    while let Some(p) = todo.pop() {
        if let Some(info) = by_path.get(p.as_path()) {
            for r in &info.references {
                if all.insert(r.clone()) {
                    todo.push(r.clone());
                }
            }
        }
    }
    let components = all
        .iter()
        .filter_map(|p| by_path.get(p.as_path()))
        .map(|info| Component {
            path: info.path.display().to_string(),
            nar_hash: info.nar_hash.clone(),
            nar_size: info.nar_size,
            references: info
                .references
                .iter()
                .filter(|r| **r != info.path)
                .map(|r| r.display().to_string())
                .collect(),
            deriver: info.deriver.as_ref().map(|d| d.display().to_string()),
            licenses: plan.licenses.get(&info.path).cloned().unwrap_or_default(),
        })
        .collect();
    let derivations = outputs
        .iter()
        .filter_map(|o| by_path.get(o.as_path())?.deriver.as_ref())
        .map(|d| d.display().to_string())
        .collect();
    let source = match key {
        ImageKey::Flake(t) => {
            let lock = lock.unwrap_or_default();
            Source::Flake {
                url: redact(&t.flake_ref).into_owned(),
                evaluated: redact(t.eval_ref()).into_owned(),
                attribute: t.attr_path.join("."),
                revision: lock.rev.or_else(|| t.revision()),
                nar_hash: lock.nar_hash,
            }
        }
        ImageKey::Packages(t) => Source::Packages {
            set: redact(&t.location).into_owned(),
            packages: t.packages.clone(),
            revision: (!t.rev.is_empty()).then(|| t.rev.clone()),
        },
    };
    let described = |b: &crate::image::manifest::JsonBlob| Described {
        media_type: b.media_type.clone(),
        digest: b.digest.clone(),
        size: b.bytes.len() as u64,
    };
    Record {
        name: summary.subject.name.clone(),
        tag: summary.subject.tag.clone(),
        system: key.system().to_string(),
        platform: summary.platform.clone(),
        oci: described(&docs.oci),
        docker: described(&docs.docker),
        created: summary
            .config
            .get("created")
            .and_then(|c| c.as_str())
            .unwrap_or("1970-01-01T00:00:00Z")
            .to_string(),
        source,
        outputs: outputs.iter().map(|o| o.display().to_string()).collect(),
        derivations,
        components,
    }
}

/// Fills a pending closure with nothing if its query never came back (the
/// pull was dropped mid-way), so a planner waiting on it goes on and ends.
struct FillOnDrop(Arc<Closure>);

impl Drop for FillOnDrop {
    fn drop(&mut self) {
        self.0.fill(None);
    }
}
