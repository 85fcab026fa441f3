//! The server as the library builds it: [`ServeOptions`] (the `serve`
//! flags, parsed by `main.rs` or given by a test) become the listener, the
//! application state and the router ([`prepare`]); [`Prepared::run`]
//! serves until a shutdown future resolves. Nothing here exits the
//! process or reads signals: that is `main.rs`'s.

use crate::http::registry;
use crate::image::layer::compress::Codec;
use crate::image::ledger as index;
use crate::nix::{self as build, resolve};
use crate::service;
use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args, Clone, Debug)]
pub struct ServeOptions {
    /// Flake to serve: github:ORG/REPO, git+https://..., git+file:///..., or a local path
    /// (a path inside a git work tree is served as git+file so tags select its refs).
    #[arg(env = "FLAKEPORT_FLAKE", required_unless_present = "packages")]
    pub flake: Option<String>,

    /// Package set for Nixery-style names (`shell/curl/jq`): a flake reference
    /// (its legacyPackages.<system>, then packages.<system>), a local path to a
    /// nixpkgs-style tree (`import PATH {}`), or a git URL. Tags select git
    /// refs of the set. Nixery's NIXERY_CHANNEL, NIXERY_PKGS_REPO and
    /// NIXERY_PKGS_PATH set it too.
    #[arg(long, env = "FLAKEPORT_PACKAGES")]
    pub packages: Option<String>,

    /// Address to listen on (PORT=N also works: 0.0.0.0:N).
    #[arg(long, env = "FLAKEPORT_LISTEN", default_value = "0.0.0.0:5000")]
    pub listen: SocketAddr,

    /// Where GC roots of builds, the digest index and manifests are kept
    /// [default: $XDG_STATE_HOME/flakeport or ~/.local/state/flakeport].
    #[arg(long, env = "FLAKEPORT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// Nix systems whose images are served, comma-separated [default: this
    /// host's, e.g. x86_64-linux]. With more than one, a tag is an image index
    /// (a Docker manifest list for Docker-only clients) over the systems the
    /// image exists for; builds for other systems need a remote builder,
    /// extra-platforms or a binary cache (see the README).
    #[arg(long, env = "FLAKEPORT_SYSTEM", value_delimiter = ',', value_parser = crate::vocab::parse_system)]
    pub system: Vec<String>,

    /// Seconds a nix build may take before it is stopped (NIX_TIMEOUT also works).
    #[arg(long, env = "FLAKEPORT_NIX_TIMEOUT", default_value_t = 1800)]
    pub nix_timeout: u64,

    /// Most nix builds running at once; further pulls of other images wait.
    #[arg(long, env = "FLAKEPORT_MAX_BUILDS", default_value_t = 2)]
    pub max_builds: usize,

    /// Most external processes (nix build, eval, path-info; git) running at
    /// once, builds included; at least --max-builds.
    #[arg(long, env = "FLAKEPORT_MAX_PROCESSES", default_value_t = 6)]
    pub max_processes: usize,

    /// Most processes waiting for a slot; past that requests that need one
    /// get 429 TOOMANYREQUESTS with Retry-After.
    #[arg(long, env = "FLAKEPORT_MAX_QUEUED", default_value_t = 64)]
    pub max_queued: usize,

    /// Seconds a tag that names a branch (or `latest`) is served before its
    /// ref is resolved and built again. 40-hex commit tags are cached for good.
    #[arg(long, env = "FLAKEPORT_MANIFEST_TTL", default_value_t = 60)]
    pub manifest_ttl: u64,

    /// Which 40-hex commit tags are built: `reachable` (the default) only
    /// commits reachable from a branch or tag of the source, so a pushed
    /// `refs/pull/*` head is never built; `any` every commit the source
    /// has, for a source whose every ref you trust.
    #[arg(
        long,
        env = "FLAKEPORT_ALLOW_COMMITS",
        value_enum,
        default_value = "reachable"
    )]
    pub allow_commits: crate::nix::refs::AllowCommits,

    /// Layer compression. `none` (the default) streams tars straight from the
    /// store; `gzip` (level 6) or `zstd` (level 3; OCI clients such as
    /// containerd, not Docker 20.10) compresses each layer once with a pinned
    /// encoder and keeps it in the state dir, for clients and links that want it.
    #[arg(long, env = "FLAKEPORT_COMPRESSION", default_value = "none", value_parser = ["none", "gzip", "zstd"])]
    pub compression: String,

    /// Most MiB of layer files kept in the state dir: compressed layers, and
    /// members of gzip or zstd image archives kept decompressed. Least
    /// recently used go first, and are made again when asked for.
    #[arg(long, env = "FLAKEPORT_COMPRESSED_CACHE_MIB", default_value_t = 10240)]
    pub compressed_cache_mib: u64,

    /// Most MiB of memory for the bytes of small layers (up to 16 MiB each)
    /// already verified, served from memory while their store files are
    /// unchanged; 0 turns it off.
    #[arg(long, env = "FLAKEPORT_HOT_LAYERS_MIB", default_value_t = 128)]
    pub hot_layers_mib: u64,

    /// ECDSA P-256 private key (PEM, PKCS#8 or SEC1) to sign every served
    /// manifest with, cosign-compatible: signatures are referrers of the
    /// manifest and `sha256-<hex>.sig` tags; the public key is at
    /// /.well-known/flakeport/cosign.pub. Without it nothing is signed.
    #[arg(long, env = "FLAKEPORT_SIGNING_KEY", value_name = "FILE")]
    pub signing_key: Option<PathBuf>,

    /// htpasswd file of bcrypt entries (`htpasswd -B`): pulls need HTTP Basic
    /// credentials of one of its users. Read again when it changes.
    #[arg(long, env = "FLAKEPORT_HTPASSWD")]
    pub htpasswd: Option<PathBuf>,

    /// File of tokens, one per line: `Authorization: Bearer TOKEN`, or TOKEN
    /// as the password of a Basic login with any user name, may pull.
    #[arg(long, env = "FLAKEPORT_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// With --htpasswd or --token-file: /metrics needs credentials too.
    #[arg(long, env = "FLAKEPORT_PROTECT_METRICS")]
    pub protect_metrics: bool,

    /// How the log is written: `text`, for a person at a terminal (one line
    /// per pull, builds, warnings), or `json`, one object per line for a
    /// log shipper (every field, pull lines included). FLAKEPORT_LOG sets
    /// the level (e.g. `debug`).
    #[arg(long, env = "FLAKEPORT_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// PEM certificate chain to serve https with (needs --tls-key); reloaded
    /// when the file changes.
    #[arg(long, env = "FLAKEPORT_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "FLAKEPORT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Seconds a client has to send a request's headers (and to finish a
    /// TLS handshake); also how long an idle keep-alive connection stays.
    #[arg(long, env = "FLAKEPORT_HEADER_TIMEOUT", default_value_t = 30)]
    pub header_timeout: u64,

    /// Seconds a client may take no bytes of a response before its
    /// connection is closed.
    #[arg(long, env = "FLAKEPORT_IDLE_TIMEOUT", default_value_t = 60)]
    pub idle_timeout: u64,

    /// Most layer streams in flight; past it a blob GET gets 429 with
    /// Retry-After.
    #[arg(long, env = "FLAKEPORT_MAX_STREAMS", default_value_t = 1024)]
    pub max_streams: usize,

    /// Most open connections; further ones wait to be accepted.
    #[arg(long, env = "FLAKEPORT_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// Images to build at start (NAME or NAME:TAG; the tag defaults to
    /// latest), so their first pull does not wait for a build. With
    /// --webhook-secret, a push warms these names at the pushed branch or
    /// tag (and at latest, for the default branch).
    #[arg(long, env = "FLAKEPORT_WARM", value_delimiter = ',', num_args = 1..)]
    pub warm: Vec<String>,

    /// A file holding the secret of push webhooks (GitHub, Gitea, Forgejo,
    /// GitLab) sent to POST /hooks/push; without it that endpoint is off.
    /// At least 16 bytes; reloaded when the file changes.
    #[arg(long, env = "FLAKEPORT_WEBHOOK_SECRET")]
    pub webhook_secret: Option<PathBuf>,

    /// A Nix store URL (`file:///srv/cache`, `s3://bucket`, `ssh://host`)
    /// that every built image's closure is copied to (`nix copy --to`)
    /// after its first pull, so other nodes substitute it instead of
    /// building. Sign with `?secret-key=FILE` in the URL or `secret-key-files`
    /// in nix.conf.
    #[arg(long, env = "FLAKEPORT_PUSH_TO")]
    pub push_to: Option<String>,

    /// Days a GC root (and the documents) of an image that is not pulled is
    /// kept; then the root goes and a Nix GC may take its closure. Checked
    /// at start and hourly.
    #[arg(long, env = "FLAKEPORT_KEEP_ROOTS", default_value_t = 30.0)]
    pub keep_roots: f64,

    /// Most MiB the state dir may hold: kept layer files (least recently
    /// used first), then git mirrors, are removed to fit. Checked at start
    /// and hourly; kept layer files stay within what it leaves them.
    #[arg(long, env = "FLAKEPORT_MAX_STATE_MIB")]
    pub max_state_mib: Option<u64>,

    /// Seconds to let streams in flight finish after SIGTERM/SIGINT.
    #[arg(long, env = "FLAKEPORT_SHUTDOWN_GRACE", default_value_t = 30)]
    pub shutdown_grace: u64,
}

/// How often the state dir is swept (the first sweep runs at start).
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

fn default_state_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("flakeport");
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty() && h != "/") {
        Some(home) => PathBuf::from(home).join(".local/state/flakeport"),
        None => PathBuf::from("/var/lib/flakeport"),
    }
}

fn host_system() -> String {
    format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS)
}

/// Options parsed as the command line would give them, for tests and
/// embedders: `ServeOptions::parse_from(["flakeport", FLAKE, "--listen", ...])`.
impl ServeOptions {
    pub fn parse_from<I, T>(args: I) -> Result<ServeOptions, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            serve: ServeOptions,
        }
        <Wrapper as clap::Parser>::try_parse_from(args).map(|w| w.serve)
    }
}

/// A server ready to accept: bound, with its state opened and its
/// background work (warm builds, sweeps, pull reports) started.
pub struct Prepared {
    listener: tokio::net::TcpListener,
    router: axum::Router,
    tls: Option<crate::http::tls::TlsAcceptor>,
    limits: crate::http::server::Limits,
    images: Arc<service::ImageService>,
    events: Arc<crate::events::Events>,
    grace: Duration,
}

impl Prepared {
    /// The address bound (with `--listen 127.0.0.1:0`, the port chosen).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// `--shutdown-grace`: how long streams may finish after shutdown.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// Stops every Nix process still running; for a caller whose grace
    /// period ran out.
    pub fn stopper(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let images = self.images.clone();
        async move { images.nix.stop_all().await }
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets
    /// responses in flight finish, and stops the Nix processes whose
    /// clients all left.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let events = self.events.clone();
        let grace = self.grace;
        crate::http::server::serve(
            self.listener,
            self.router,
            self.tls,
            self.limits,
            async move {
                shutdown.await;
                events.close();
                tracing::info!(
                    grace_secs = grace.as_secs(),
                    "shutting down: no new connections, finishing streams and builds in flight"
                );
            },
        )
        .await;
        // Builds whose clients all left run on in tasks of their own.
        self.images.nix.stop_all().await;
    }
}

pub async fn prepare(args: ServeOptions) -> anyhow::Result<Prepared> {
    let flake = args
        .flake
        .as_deref()
        .map(resolve::FlakeSource::parse)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let packages = args
        .packages
        .as_deref()
        .map(resolve::PackageSource::parse)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let state_dir = args.state_dir.clone().unwrap_or_else(default_state_dir);
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating state dir {}", state_dir.display()))?;
    // GC roots must be absolute paths.
    let state_dir = std::fs::canonicalize(&state_dir)?;
    let scheduler = std::sync::Arc::new(crate::nix::scheduler::Scheduler::new(
        crate::nix::scheduler::Bounds {
            max_processes: args.max_processes.max(args.max_builds),
            max_builds: args.max_builds,
            max_queued: args.max_queued,
        },
    ));
    let nix = build::Nix::start(
        &state_dir,
        Duration::from_secs(args.nix_timeout),
        scheduler.clone(),
    )
    .await?;
    tracing::info!(
        nix = %nix.version(),
        flavour = nix.version().flavour.as_str(),
        version = nix.version().number(),
        line = %nix.version().line,
        "using Nix"
    );
    let index = index::DigestIndex::open(&state_dir).context("opening the digest index")?;
    let kept = std::sync::Arc::new(
        crate::image::kept::KeptFiles::open(&state_dir, args.compressed_cache_mib * 1024 * 1024)
            .context("opening the kept layer files (compressed layers, archive members)")?,
    );
    if let Some(max) = args.max_state_mib {
        crate::service::retention::fit_kept(max * 1024 * 1024, &state_dir, &kept);
    }
    let codec = Codec::parse(&args.compression);
    let events = crate::events::Events::new();
    let signer = match &args.signing_key {
        Some(path) => Some(
            crate::provenance::Signer::from_file(path)
                .map_err(anyhow::Error::msg)
                .context("--signing-key")?,
        ),
        None => None,
    };
    let provenance = std::sync::Arc::new(
        crate::provenance::Provenance::open(&state_dir, signer)
            .context("opening the provenance records")?,
    );
    let images = service::ImageService::new(
        service::Settings {
            flake,
            packages,
            systems: {
                let mut systems = args.system.clone();
                if systems.is_empty() {
                    systems.push(host_system());
                }
                let mut seen = std::collections::HashSet::new();
                systems.retain(|s| seen.insert(s.clone()));
                systems
            },
            manifest_ttl: Duration::from_secs(args.manifest_ttl),
            push_to: args.push_to.clone(),
        },
        nix,
        std::sync::Arc::new(service::LayerStore::new(
            index,
            kept,
            codec,
            args.hot_layers_mib * 1024 * 1024,
            crate::image::vouched::Vouches::open(&state_dir)
                .context("opening the vouched layers")?,
            events.clone(),
        )),
        crate::nix::refs::RefGate::new(
            &state_dir,
            Duration::from_secs(args.manifest_ttl),
            args.allow_commits,
            scheduler,
        ),
        events.clone(),
        provenance,
    );
    events.start_pull_reports();
    let auth = crate::http::auth::Auth::new(
        args.htpasswd.clone(),
        args.token_file.clone(),
        "flakeport".into(),
    )?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(crate::http::tls::TlsAcceptor::new(
            cert.clone(),
            key.clone(),
        )?),
        _ => None,
    };
    match crate::http::server::raise_fd_limit() {
        Ok(n) => tracing::debug!(open_files = n, "file descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the file descriptor limit"),
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        serving = images.describe(),
        state_dir = %state_dir.display(),
        tls = tls.is_some(),
        auth = auth.is_some(),
        "flakeport serving"
    );
    if auth.is_none() && !args.listen.ip().is_loopback() {
        tracing::warn!(
            "listening beyond loopback with no --htpasswd or --token-file: anyone who can reach {} can pull and start builds",
            args.listen
        );
    }
    let policy = crate::service::retention::Policy {
        state_dir: state_dir.clone(),
        keep: Duration::from_secs_f64(args.keep_roots.max(0.0) * 86_400.0),
        max_bytes: args.max_state_mib.map(|m| m * 1024 * 1024),
    };
    let warm = args
        .warm
        .iter()
        .map(|w| registry::warm::parse_image(w).map_err(|e| anyhow::anyhow!("--warm {w}: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    registry::warm::start(&images, &warm);
    let hooks = match &args.webhook_secret {
        Some(file) => {
            let mut names: Vec<String> = warm.iter().map(|(n, _)| n.clone()).collect();
            names.sort();
            names.dedup();
            if names.is_empty() {
                tracing::warn!("--webhook-secret without --warm: a push warms nothing");
            }
            Some(std::sync::Arc::new(
                registry::hooks::Hooks::new(file.clone(), names)
                    .context("loading --webhook-secret")?,
            ))
        }
        None => None,
    };
    let layers = images.layers.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(2));
        loop {
            every.tick().await;
            layers.give_back_released();
        }
    });
    let sweeper = images.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(SWEEP_EVERY);
        loop {
            every.tick().await;
            sweeper.sweep_state(policy.clone()).await;
        }
    });
    let limits = crate::http::server::Limits {
        header_read: Duration::from_secs(args.header_timeout.max(1)),
        idle_write: Duration::from_secs(args.idle_timeout.max(1)),
        max_connections: args.max_connections,
    };
    let streams = std::sync::Arc::new(tokio::sync::Semaphore::new(args.max_streams.max(1)));
    let router = registry::app(
        images.clone(),
        registry::Settings {
            auth,
            protect_metrics: args.protect_metrics,
            max_streams: args.max_streams,
            streams,
            hooks,
            state_dir: state_dir.clone(),
            web: crate::http::web::Settings { tls: tls.is_some() },
        },
    );
    Ok(Prepared {
        listener,
        router,
        tls,
        limits,
        images,
        events,
        grace: Duration::from_secs(args.shutdown_grace),
    })
}
