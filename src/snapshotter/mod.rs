//! `flakeport snapshotter`: a containerd snapshotter (a proxy plugin on a
//! unix socket) that makes the layers this node's flakeport served from
//! `/nix/store` instead of fetching and unpacking them.
//!
//! containerd unpacks an image layer by layer. For each it asks `Prepare`
//! for a new snapshot whose label `containerd.io/snapshot.ref` names the
//! layer's chain ID. If that chain ID is a layer flakeport served, made of
//! store paths (not an archive or a tar file), and its files still have the
//! fingerprint they had when flakeport hashed its bytes, the snapshotter
//! makes the layer's tree ([`crate::image::layer::tree`]), commits it, and
//! answers AlreadyExists: containerd then neither fetches nor unpacks it.
//! Every other layer is prepared as containerd's overlayfs snapshotter
//! prepares it, and containerd fetches and unpacks it into that snapshot.
//!
//! Separate from the registry's process: a restarted registry does not
//! stop containers from starting, and a restarted snapshotter finds its
//! snapshots in its root (`metadata.json` and its journal).

pub mod proto;
mod state;

use crate::image::layer::{LayerSource, LayerTar};
use crate::image::ledger::LedgerReader;
use crate::image::vouched::Vouches;
use crate::service::{give_back_freed_memory, SCANNED_MEMBERS};
use crate::vocab::Digest;
use proto::{
    CleanupRequest, CommitRequest, Info, InfoResponse, KeyRequest, ListRequest, Mount,
    MountsResponse, PrepareRequest, UpdateRequest, UsageResponse,
};
use state::{dir_of, disk_usage, now, Kind, Made, Metadata, Snapshot, State};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tonic::{Response, Status};

/// The label containerd's unpacker puts on `Prepare`: the chain ID the
/// snapshot will be committed as.
pub const SNAPSHOT_REF: &str = "containerd.io/snapshot.ref";

#[derive(clap::Args, Debug, Clone)]
pub struct SnapshotterOptions {
    /// The unix socket containerd's proxy plugin dials (its `address`).
    #[arg(
        long,
        env = "FLAKEPORT_SNAPSHOTTER_SOCKET",
        default_value = "/run/flakeport/snapshotter.sock"
    )]
    pub socket: PathBuf,
    /// Where snapshots are kept. On the same mount as /nix/store, a layer
    /// made from the store is hard links; elsewhere its files are copied.
    #[arg(
        long,
        env = "FLAKEPORT_SNAPSHOTTER_ROOT",
        default_value = "/nix/var/flakeport/snapshotter"
    )]
    pub root: PathBuf,
    /// The state dir of this node's flakeport (its --state-dir): which
    /// layers it served, and which it hashed from files that are still
    /// there.
    #[arg(long, env = "FLAKEPORT_STATE_DIR")]
    pub registry_state: PathBuf,
    /// Nix GC roots for the store paths of every layer made from the store,
    /// one directory per snapshot, removed with it.
    #[arg(long, default_value = "/nix/var/nix/gcroots/flakeport-snapshotter")]
    pub gc_roots: PathBuf,
}

/// Serve until `shutdown` resolves.
pub async fn run(
    opts: SnapshotterOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let snapshotter = Snapshotter::open(&opts)?;
    if let Some(parent) = opts.socket.parent() {
        std::fs::create_dir_all(parent)?;
    }
    // A socket left by a process that is gone.
    let _ = std::fs::remove_file(&opts.socket);
    let listener = tokio::net::UnixListener::bind(&opts.socket)
        .with_context(|| format!("listening on {}", opts.socket.display()))?;
    tracing::info!(socket = %opts.socket.display(), root = %opts.root.display(), "snapshotter listening");
    let served = tonic::transport::Server::builder()
        .add_service(proto::Server(Arc::new(snapshotter)))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            shutdown,
        )
        .await;
    let _ = std::fs::remove_file(&opts.socket);
    served.context("serving the snapshots API")
}

/// NixOS mounts /nix/store read-only over itself, and a hard link cannot
/// cross from one mount to another, even within one filesystem. Called
/// before any thread starts: if a store file cannot be linked into `root`
/// across such a mount, the snapshotter moves into a mount namespace of its
/// own and takes the bind mounts off /nix/store there, so that the store is
/// reached through the mount that holds `root` too. Nothing changes for
/// any other process. Returns how many mounts it took off.
pub fn see_through_store_mounts(root: &Path) -> std::io::Result<usize> {
    std::fs::create_dir_all(root)?;
    if link_probe(root).is_none() {
        return Ok(0);
    }
    // Another filesystem altogether: no mount namespace helps (and taking
    // its mount off would hide the store).
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/nix/store")?.dev() != std::fs::metadata(root)?.dev() {
        return Ok(0);
    }
    let mut taken = 0;
    loop {
        match link_probe(root) {
            Some(Err(e)) if e.raw_os_error() == Some(libc::EXDEV) && taken < 4 => {}
            _ => return Ok(taken),
        }
        let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
        let (slash, store) = (c("/"), c("/nix/store"));
        // SAFETY: plain syscalls on valid C strings; single-threaded here,
        // so the new namespace is the whole process's.
        unsafe {
            if taken == 0
                && (libc::unshare(libc::CLONE_NEWNS) != 0
                    || libc::mount(
                        std::ptr::null(),
                        slash.as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::umount2(store.as_ptr(), libc::MNT_DETACH) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        taken += 1;
    }
}

/// Whether a store file can be hard-linked into `root`, tried with a
/// regular file at the top of /nix/store (a `.drv`, or a store path that
/// is one file); `None` when there is none to try.
fn link_probe(root: &Path) -> Option<std::io::Result<()>> {
    let file = std::fs::read_dir("/nix/store")
        .ok()?
        .flatten()
        .take(10_000)
        .map(|e| e.path())
        .find(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()))?;
    let probe = root.join(".link-probe");
    let _ = std::fs::remove_file(&probe);
    let linked = std::fs::hard_link(&file, &probe);
    let _ = std::fs::remove_file(&probe);
    Some(linked)
}

pub struct Snapshotter {
    root: PathBuf,
    gc_roots: PathBuf,
    state: Mutex<Metadata>,
    ledger: Mutex<LedgerReader>,
    vouches: Vouches,
    /// One layer is made from the store at a time: two pulls of one image
    /// must not make it twice.
    making: tokio::sync::Mutex<()>,
}

impl Snapshotter {
    pub fn open(opts: &SnapshotterOptions) -> anyhow::Result<Snapshotter> {
        std::fs::create_dir_all(opts.root.join("snapshots"))?;
        let state = Metadata::open(&opts.root)?;
        let s = Snapshotter {
            root: opts.root.clone(),
            gc_roots: opts.gc_roots.clone(),
            state: Mutex::new(state),
            ledger: Mutex::new(LedgerReader::new(&opts.registry_state)),
            vouches: Vouches::at(&opts.registry_state),
            making: tokio::sync::Mutex::new(()),
        };
        let removed = s.remove_orphans();
        tracing::info!(
            snapshots = s.lock().snapshots.len(),
            orphans_removed = removed,
            "snapshotter state loaded"
        );
        s.probe_links();
        Ok(s)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Metadata> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Make the change to `keys` durable (see `state.rs`).
    fn record(&self, state: &mut Metadata, keys: &[&str]) -> Result<(), Status> {
        state
            .record(keys)
            .map_err(|e| Status::internal(format!("saving the snapshotter's metadata: {e}")))
    }

    /// Whether a store file can be hard-linked into the root: if not, every
    /// layer made from the store is copied, and the operator should know.
    fn probe_links(&self) {
        if let Some(Err(e)) = link_probe(&self.root) {
            tracing::warn!(
                error = %e,
                root = %self.root.display(),
                "cannot hard-link store files into the root: layers made from the store will be copied (put --root on the filesystem that holds /nix/store)"
            );
        }
    }

    /// Directories and GC roots no snapshot owns (a crash between making
    /// and recording, or between forgetting and deleting).
    /// Holds the state's lock throughout: a snapshot made meanwhile is not
    /// taken for an orphan.
    fn remove_orphans(&self) -> usize {
        let state = self.lock();
        let ids: std::collections::HashSet<String> =
            state.snapshots.values().map(|s| s.id.to_string()).collect();
        let mut removed = 0;
        for dir in [self.root.join("snapshots"), self.gc_roots.clone()] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                if !ids.contains(&*e.file_name().to_string_lossy()) {
                    let _ = std::fs::remove_dir_all(e.path());
                    removed += 1;
                }
            }
        }
        removed
    }

    fn info(key: &str, s: &Snapshot) -> Info {
        let ts = |(seconds, nanos): (i64, i32)| Some(prost_types::Timestamp { seconds, nanos });
        Info {
            name: key.to_string(),
            parent: s.parent.clone(),
            kind: match s.kind {
                Kind::View => proto::Kind::View,
                Kind::Active => proto::Kind::Active,
                Kind::Committed => proto::Kind::Committed,
            } as i32,
            created_at: ts(s.created),
            updated_at: ts(s.updated),
            labels: s.labels.clone().into_iter().collect(),
        }
    }

    fn mounts_of(&self, state: &State, key: &str) -> Result<Vec<Mount>, Status> {
        let s = state
            .snapshots
            .get(key)
            .ok_or_else(|| Status::not_found(format!("snapshot {key} does not exist")))?;
        let fs = |id: u64| dir_of(&self.root, id).join("fs").display().to_string();
        let lower: Vec<String> = state.parents(key).iter().map(|p| fs(p.id)).collect();
        let bind = |source: String, mode: &str| Mount {
            r#type: "bind".into(),
            source,
            target: String::new(),
            options: vec![mode.into(), "rbind".into()],
        };
        Ok(vec![match (s.kind, lower.len()) {
            (Kind::Committed, _) => {
                return Err(Status::failed_precondition(format!(
                    "snapshot {key} is committed: it has no mounts"
                )))
            }
            (Kind::Active, 0) => bind(fs(s.id), "rw"),
            (Kind::View, 0) => bind(fs(s.id), "ro"),
            (Kind::View, 1) => bind(lower[0].clone(), "ro"),
            (Kind::View, _) => Mount {
                r#type: "overlay".into(),
                source: "overlay".into(),
                target: String::new(),
                options: vec!["index=off".into(), format!("lowerdir={}", lower.join(":"))],
            },
            (Kind::Active, _) => {
                let dir = dir_of(&self.root, s.id);
                Mount {
                    r#type: "overlay".into(),
                    source: "overlay".into(),
                    target: String::new(),
                    options: vec![
                        "index=off".into(),
                        format!("workdir={}", dir.join("work").display()),
                        format!("upperdir={}", dir.join("fs").display()),
                        format!("lowerdir={}", lower.join(":")),
                    ],
                }
            }
        }])
    }

    /// A new active snapshot or view, as the overlayfs snapshotter makes it.
    fn create(&self, kind: Kind, r: PrepareRequest) -> Result<Vec<Mount>, Status> {
        let mut state = self.lock();
        if r.key.is_empty() {
            return Err(Status::invalid_argument("a snapshot key is required"));
        }
        if state.snapshots.contains_key(&r.key) {
            return Err(Status::already_exists(format!(
                "snapshot {} already exists",
                r.key
            )));
        }
        if !r.parent.is_empty() {
            match state.snapshots.get(&r.parent) {
                None => {
                    return Err(Status::not_found(format!(
                        "parent snapshot {} does not exist",
                        r.parent
                    )))
                }
                Some(p) if p.kind != Kind::Committed => {
                    return Err(Status::invalid_argument(format!(
                        "parent snapshot {} is not committed",
                        r.parent
                    )))
                }
                Some(_) => {}
            }
        }
        let id = state.new_id();
        let dir = dir_of(&self.root, id);
        let made = std::fs::create_dir_all(dir.join("fs"))
            .and_then(|()| std::fs::create_dir_all(dir.join("work")));
        if let Err(e) = made {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(Status::internal(format!("making {}: {e}", dir.display())));
        }
        let t = now();
        state.snapshots.insert(
            r.key.clone(),
            Snapshot {
                id,
                kind,
                parent: r.parent,
                labels: r.labels.into_iter().collect(),
                created: t,
                updated: t,
                usage: None,
                made: None,
            },
        );
        if let Err(e) = self.record(&mut state, &[&r.key]) {
            state.snapshots.remove(&r.key);
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        self.mounts_of(&state, &r.key)
    }
}

/// The namespace part of a key containerd's metadata store gives its
/// backend (`<namespace>/<n>/<name>`).
fn namespace_of(key: &str) -> &str {
    key.split('/').next().unwrap_or("")
}

/// The chain ID a committed snapshot stands for: its `snapshot.ref` label,
/// else the name containerd committed it under (`<ns>/<n>/<chain ID>`).
fn chain_of(name: &str, s: &Snapshot) -> Option<String> {
    if let Some(r) = s.labels.get(SNAPSHOT_REF) {
        return Some(r.clone());
    }
    let last = name.rsplit('/').next()?;
    Digest::parse(last).ok().map(String::from)
}

/// The OCI chain ID of a layer on top of `parent`'s chain.
fn chain_id(parent: Option<&str>, diff_id: &str) -> String {
    match parent {
        None => diff_id.to_string(),
        Some(p) => Digest::of(format!("{p} {diff_id}").as_bytes()).to_string(),
    }
}

/// Whether the layer engine can make the source into a tree.
fn generated(source: &LayerSource) -> bool {
    match source {
        LayerSource::StorePaths { .. }
        | LayerSource::RootTree { .. }
        | LayerSource::Links { .. } => true,
        LayerSource::Parts { parts } => parts.iter().all(generated),
        LayerSource::TarFile { .. } | LayerSource::ArchiveMember { .. } => false,
    }
}

impl Snapshotter {
    /// The name of a committed snapshot of `target` on `parent` in the
    /// namespace of `key`, made before.
    fn committed_for(&self, key: &str, parent: &str, target: &str) -> Option<String> {
        let ns = namespace_of(key);
        self.lock()
            .snapshots
            .iter()
            .find(|(name, s)| {
                s.kind == Kind::Committed
                    && s.parent == parent
                    && namespace_of(name) == ns
                    && s.labels.get(SNAPSHOT_REF).map(String::as_str) == Some(target)
            })
            .map(|(name, _)| name.clone())
    }

    /// The layer flakeport served whose chain ID on `parent` is `target`.
    fn layer_of(&self, parent: &str, target: &str) -> Result<(String, LayerSource), String> {
        let parent_chain = if parent.is_empty() {
            None
        } else {
            let state = self.lock();
            let p = state
                .snapshots
                .get(parent)
                .ok_or_else(|| format!("parent {parent} unknown"))?;
            Some(chain_of(parent, p).ok_or_else(|| format!("parent {parent} names no chain ID"))?)
        };
        let mut ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        let find = |l: &LedgerReader| {
            l.diff_ids()
                .find(|d| chain_id(parent_chain.as_deref(), d) == target)
                .map(|d| (d.to_string(), l.source(d).cloned()))
        };
        let found = match find(&ledger) {
            Some(f) => Some(f),
            None => {
                ledger
                    .refresh()
                    .map_err(|e| format!("reading flakeport's ledger: {e}"))?;
                find(&ledger)
            }
        };
        match found {
            Some((diff, Some(source))) => Ok((diff, source)),
            _ => Err("not a layer this node's flakeport served".into()),
        }
    }

    /// Make `target` from the store and commit it; the committed name, or
    /// why not (then containerd fetches the layer as usual).
    async fn make_from_store(&self, r: &PrepareRequest, target: &str) -> Result<String, String> {
        let started = std::time::Instant::now();
        let (diff_id, source) = self.layer_of(&r.parent, target)?;
        if !generated(&source) {
            return Err("an archive or tar file layer: unpacked as usual".into());
        }
        let vouched = self
            .vouches
            .get(&diff_id)
            .ok_or("flakeport has not hashed this layer from the files now in the store")?;
        let id = self.lock().new_id();
        let dir = dir_of(&self.root, id);
        let roots = self.gc_roots.join(id.to_string());
        let (d, rt) = (dir.clone(), roots.clone());
        let made = tokio::task::spawn_blocking(move || -> Result<_, String> {
            let tar = LayerTar::scan(&source).map_err(|e| e.to_string())?;
            let print = || tar.fingerprint().ok().flatten();
            let made = (|| {
                if print() != Some(vouched) {
                    return Err("its files changed since flakeport hashed them".into());
                }
                // Roots first: a store path is not collected while its tree
                // is made, nor afterwards while the snapshot lives.
                hold_store_paths(&rt, &source).map_err(|e| format!("making GC roots: {e}"))?;
                let cost = tar.make_tree(&d.join("fs")).map_err(|e| e.to_string())?;
                if print() != Some(vouched) {
                    return Err("its files changed while the tree was made".into());
                }
                Ok(cost)
            })();
            if tar.entry_count() > SCANNED_MEMBERS {
                // Made or not, the scan is dropped: its many small blocks go
                // back.
                drop(tar);
                give_back_freed_memory();
            }
            made
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        let cost = match made {
            Ok(cost) => cost,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                let _ = std::fs::remove_dir_all(&roots);
                return Err(e);
            }
        };
        let name = format!("{}/flakeport/{id}/{target}", namespace_of(&r.key));
        let t = now();
        let mut state = self.lock();
        state.snapshots.insert(
            name.clone(),
            Snapshot {
                id,
                kind: Kind::Committed,
                parent: r.parent.clone(),
                labels: r.labels.clone().into_iter().collect(),
                created: t,
                updated: t,
                usage: Some((cost.bytes as i64, cost.inodes as i64)),
                made: Some(Made {
                    diff_id: diff_id.clone(),
                    cost,
                }),
            },
        );
        if let Err(e) = self.record(&mut state, &[&name]) {
            state.snapshots.remove(&name);
            drop(state);
            let _ = std::fs::remove_dir_all(&dir);
            let _ = std::fs::remove_dir_all(&roots);
            return Err(e.message().to_string());
        }
        tracing::info!(
            target_chain = target,
            diff_id,
            entries = cost.entries,
            linked = cost.linked,
            copied = cost.copied,
            disk_bytes = cost.bytes,
            ms = started.elapsed().as_millis() as u64,
            "layer made from the store"
        );
        Ok(name)
    }

    /// Delete a snapshot's directory and GC roots (it is forgotten already).
    async fn delete(&self, id: u64) {
        let dir = dir_of(&self.root, id);
        let roots = self.gc_roots.join(id.to_string());
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(error = %e, dir = %dir.display(), "cannot delete a removed snapshot's directory; the next start retries");
                }
            }
            let _ = std::fs::remove_dir_all(&roots);
        })
        .await;
    }
}

/// One GC root per store path the layer reads, in `dir`.
fn hold_store_paths(dir: &Path, source: &LayerSource) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for p in source.reads() {
        if let Some(sp) = crate::vocab::store_path_of(p) {
            let name = sp.file_name().unwrap_or_default();
            let link = dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(&sp, link)?;
            }
        }
    }
    Ok(())
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl proto::Snapshots for Snapshotter {
    async fn prepare(&self, r: PrepareRequest) -> Reply<MountsResponse> {
        tracing::debug!(key = %r.key, parent = %r.parent, labels = ?r.labels, "prepare");
        if let Some(target) = r.labels.get(SNAPSHOT_REF).cloned() {
            let _one = self.making.lock().await;
            if let Some(name) = self.committed_for(&r.key, &r.parent, &target) {
                return Err(Status::already_exists(format!(
                    "target snapshot {target} exists as {name}"
                )));
            }
            match self.make_from_store(&r, &target).await {
                Ok(name) => {
                    return Err(Status::already_exists(format!(
                        "target snapshot {target} made from the store as {name}"
                    )))
                }
                Err(why) => {
                    tracing::info!(target_chain = %target, reason = %why, "layer left to containerd to fetch and unpack")
                }
            }
        }
        let mounts = self.create(Kind::Active, r)?;
        Ok(Response::new(MountsResponse { mounts }))
    }

    async fn view(&self, r: PrepareRequest) -> Reply<MountsResponse> {
        let mounts = self.create(Kind::View, r)?;
        Ok(Response::new(MountsResponse { mounts }))
    }

    async fn mounts(&self, r: KeyRequest) -> Reply<MountsResponse> {
        let state = self.lock();
        let mounts = self.mounts_of(&state, &r.key)?;
        Ok(Response::new(MountsResponse { mounts }))
    }

    async fn commit(&self, r: CommitRequest) -> Reply<()> {
        let (id, active) = {
            let state = self.lock();
            if state.snapshots.contains_key(&r.name) {
                return Err(Status::already_exists(format!(
                    "snapshot {} already exists",
                    r.name
                )));
            }
            match state.snapshots.get(&r.key) {
                Some(s) if s.kind == Kind::Active => (s.id, s.clone()),
                Some(_) => {
                    return Err(Status::failed_precondition(format!(
                        "snapshot {} is not active",
                        r.key
                    )))
                }
                None => {
                    return Err(Status::not_found(format!(
                        "snapshot {} does not exist",
                        r.key
                    )))
                }
            }
        };
        let fs = dir_of(&self.root, id).join("fs");
        let usage = tokio::task::spawn_blocking(move || disk_usage(&fs))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut state = self.lock();
        if state.snapshots.get(&r.key).map(|s| s.id) != Some(id)
            || state.snapshots.contains_key(&r.name)
        {
            return Err(Status::failed_precondition(format!(
                "snapshot {} changed while committing",
                r.key
            )));
        }
        state.snapshots.remove(&r.key);
        state.snapshots.insert(
            r.name.clone(),
            Snapshot {
                kind: Kind::Committed,
                labels: r.labels.into_iter().collect(),
                updated: now(),
                usage: Some(usage),
                ..active.clone()
            },
        );
        if let Err(e) = self.record(&mut state, &[&r.key, &r.name]) {
            state.snapshots.remove(&r.name);
            state.snapshots.insert(r.key, active);
            return Err(e);
        }
        Ok(Response::new(()))
    }

    async fn remove(&self, r: KeyRequest) -> Reply<()> {
        let id = {
            let mut state = self.lock();
            let Some(s) = state.snapshots.get(&r.key) else {
                return Err(Status::not_found(format!(
                    "snapshot {} does not exist",
                    r.key
                )));
            };
            if state.has_children(&r.key) {
                return Err(Status::failed_precondition(format!(
                    "snapshot {} has children",
                    r.key
                )));
            }
            let id = s.id;
            let removed = state.snapshots.remove(&r.key);
            if let Err(e) = self.record(&mut state, &[&r.key]) {
                if let Some(s) = removed {
                    state.snapshots.insert(r.key, s);
                }
                return Err(e);
            }
            id
        };
        self.delete(id).await;
        Ok(Response::new(()))
    }

    async fn stat(&self, r: KeyRequest) -> Reply<InfoResponse> {
        let state = self.lock();
        let s = state
            .snapshots
            .get(&r.key)
            .ok_or_else(|| Status::not_found(format!("snapshot {} does not exist", r.key)))?;
        Ok(Response::new(InfoResponse {
            info: Some(Self::info(&r.key, s)),
        }))
    }

    async fn update(&self, r: UpdateRequest) -> Reply<InfoResponse> {
        let info = r
            .info
            .ok_or_else(|| Status::invalid_argument("update without info"))?;
        let mut state = self.lock();
        let Some(s) = state.snapshots.get_mut(&info.name) else {
            return Err(Status::not_found(format!(
                "snapshot {} does not exist",
                info.name
            )));
        };
        let before = s.clone();
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        if paths.is_empty() {
            s.labels = info.labels.clone().into_iter().collect();
        }
        for path in paths {
            if path == "labels" {
                s.labels = info.labels.clone().into_iter().collect();
            } else if let Some(label) = path.strip_prefix("labels.") {
                match info.labels.get(label) {
                    Some(v) => s.labels.insert(label.to_string(), v.clone()),
                    None => s.labels.remove(label),
                };
            } else {
                *s = before;
                return Err(Status::invalid_argument(format!("cannot update {path}")));
            }
        }
        s.updated = now();
        let out = Self::info(&info.name, s);
        if let Err(e) = self.record(&mut state, &[&info.name]) {
            state.snapshots.insert(info.name, before);
            return Err(e);
        }
        Ok(Response::new(InfoResponse { info: Some(out) }))
    }

    /// Filters are not applied: containerd checks what it asked a walk for.
    async fn list(&self, _: ListRequest) -> Result<Vec<Info>, Status> {
        let state = self.lock();
        Ok(state
            .snapshots
            .iter()
            .map(|(k, s)| Self::info(k, s))
            .collect())
    }

    async fn usage(&self, r: KeyRequest) -> Reply<UsageResponse> {
        let (id, stored) = {
            let state = self.lock();
            let s = state
                .snapshots
                .get(&r.key)
                .ok_or_else(|| Status::not_found(format!("snapshot {} does not exist", r.key)))?;
            (s.id, s.usage)
        };
        let (size, inodes) = match stored {
            Some(u) => u,
            None => {
                let fs = dir_of(&self.root, id).join("fs");
                tokio::task::spawn_blocking(move || disk_usage(&fs))
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?
            }
        };
        Ok(Response::new(UsageResponse { size, inodes }))
    }

    async fn cleanup(&self, _: CleanupRequest) -> Reply<()> {
        // Not while a layer is made: its directory is not recorded yet.
        let _one = self.making.lock().await;
        let removed = self.remove_orphans();
        tracing::info!(removed, "cleanup");
        Ok(Response::new(()))
    }
}
