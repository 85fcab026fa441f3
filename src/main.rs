//! flakeport: a pull-only OCI registry that builds images on demand with Nix
//! and streams their layers straight out of /nix/store.

use flakeport::layer::compress::Codec;
use flakeport::{build, compressed, images, index, registry, resolve};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "flakeport",
    version,
    about = "Serve every image output of a Nix flake as a pull-only OCI registry",
    long_about = "Serve every image output of a Nix flake as a pull-only OCI registry.\n\n\
        `docker pull HOST:5000/NAME:TAG` runs `nix build FLAKE#NAME` (packages.<system>.NAME, else\n\
        legacyPackages.<system>.NAME) at git ref TAG (`latest` = the flake as given, a 40-hex tag =\n\
        that commit) and streams the image's layers straight out of /nix/store.\n\n\
        With --packages SET, any other name is a list of packages of SET (Nixery-style):\n\
        `docker pull HOST:5000/shell/curl/jq` is an image with bash, coreutils, curl and jq.\n\n\
        A bare `flakeport FLAKE` means `flakeport serve FLAKE`.",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: Option<ServeArgs>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the flake's images (the default).
    Serve(Box<ServeArgs>),
    /// Ask a running flakeport to build images now (POST /warm), so that
    /// their first pull finds them ready.
    Warm(WarmArgs),
}

#[derive(Args)]
struct WarmArgs {
    /// Images to build: NAME or NAME:TAG (the tag defaults to latest).
    #[arg(required = true)]
    images: Vec<String>,

    /// The running flakeport.
    #[arg(
        long,
        env = "FLAKEPORT_SERVER",
        default_value = "http://127.0.0.1:5000"
    )]
    server: String,

    /// Return once every image is ready, printing its digest (or error);
    /// exit 1 if any failed.
    #[arg(long)]
    wait: bool,

    /// A token of the server's --token-file, sent as a bearer token.
    #[arg(long, env = "FLAKEPORT_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// A user of the server's --htpasswd; the password is read from
    /// FLAKEPORT_PASSWORD.
    #[arg(long, env = "FLAKEPORT_USER")]
    user: Option<String>,

    /// The CA certificate (PEM) of a server on TLS with a private CA.
    #[arg(long)]
    ca_cert: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct ServeArgs {
    /// Flake to serve: github:ORG/REPO, git+https://..., git+file:///..., or a local path
    /// (a path inside a git work tree is served as git+file so tags select its refs).
    #[arg(env = "FLAKEPORT_FLAKE", required_unless_present = "packages")]
    flake: Option<String>,

    /// Package set for Nixery-style names (`shell/curl/jq`): a flake reference
    /// (its legacyPackages.<system>, then packages.<system>), a local path to a
    /// nixpkgs-style tree (`import PATH {}`), or a git URL. Tags select git
    /// refs of the set. Nixery's NIXERY_CHANNEL, NIXERY_PKGS_REPO and
    /// NIXERY_PKGS_PATH set it too.
    #[arg(long, env = "FLAKEPORT_PACKAGES")]
    packages: Option<String>,

    /// Address to listen on (PORT=N also works: 0.0.0.0:N).
    #[arg(long, env = "FLAKEPORT_LISTEN", default_value = "0.0.0.0:5000")]
    listen: SocketAddr,

    /// Where GC roots of builds, the digest index and manifests are kept
    /// [default: $XDG_STATE_HOME/flakeport or ~/.local/state/flakeport].
    #[arg(long, env = "FLAKEPORT_STATE_DIR")]
    state_dir: Option<PathBuf>,

    /// Nix systems whose images are served, comma-separated [default: this
    /// host's, e.g. x86_64-linux]. With more than one, a tag is an image index
    /// (a Docker manifest list for Docker-only clients) over the systems the
    /// image exists for; builds for other systems need a remote builder,
    /// extra-platforms or a binary cache (see the README).
    #[arg(long, env = "FLAKEPORT_SYSTEM", value_delimiter = ',', value_parser = parse_system)]
    system: Vec<String>,

    /// Seconds a nix build may take before it is stopped (NIX_TIMEOUT also works).
    #[arg(long, env = "FLAKEPORT_NIX_TIMEOUT", default_value_t = 1800)]
    nix_timeout: u64,

    /// Most nix builds running at once; further pulls of other images wait.
    #[arg(long, env = "FLAKEPORT_MAX_BUILDS", default_value_t = 2)]
    max_builds: usize,

    /// Most external processes (nix build, eval, path-info; git) running at
    /// once, builds included; at least --max-builds.
    #[arg(long, env = "FLAKEPORT_MAX_PROCESSES", default_value_t = 6)]
    max_processes: usize,

    /// Most processes waiting for a slot; past that requests that need one
    /// get 429 TOOMANYREQUESTS with Retry-After.
    #[arg(long, env = "FLAKEPORT_MAX_QUEUED", default_value_t = 64)]
    max_queued: usize,

    /// Seconds a tag that names a branch (or `latest`) is served before its
    /// ref is resolved and built again. 40-hex commit tags are cached for good.
    #[arg(long, env = "FLAKEPORT_MANIFEST_TTL", default_value_t = 60)]
    manifest_ttl: u64,

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
    allow_commits: flakeport::refs::AllowCommits,

    /// Layer compression. `none` (the default) streams tars straight from the
    /// store; `gzip` (level 6) or `zstd` (level 3; OCI clients such as
    /// containerd, not Docker 20.10) compresses each layer once with a pinned
    /// encoder and keeps it in the state dir, for clients and links that want it.
    #[arg(long, env = "FLAKEPORT_COMPRESSION", default_value = "none", value_parser = ["none", "gzip", "zstd"])]
    compression: String,

    /// Most MiB of compressed layers kept in the state dir; least recently
    /// used go first, and are compressed again when asked for.
    #[arg(long, env = "FLAKEPORT_COMPRESSED_CACHE_MIB", default_value_t = 10240)]
    compressed_cache_mib: u64,

    /// Most MiB of memory for the bytes of small layers (up to 16 MiB each)
    /// already verified, served from memory while their store files are
    /// unchanged; 0 turns it off.
    #[arg(long, env = "FLAKEPORT_HOT_LAYERS_MIB", default_value_t = 128)]
    hot_layers_mib: u64,

    /// ECDSA P-256 private key (PEM, PKCS#8 or SEC1) to sign every served
    /// manifest with, cosign-compatible: signatures are referrers of the
    /// manifest and `sha256-<hex>.sig` tags; the public key is at
    /// /.well-known/flakeport/cosign.pub. Without it nothing is signed.
    #[arg(long, env = "FLAKEPORT_SIGNING_KEY", value_name = "FILE")]
    signing_key: Option<PathBuf>,

    /// htpasswd file of bcrypt entries (`htpasswd -B`): pulls need HTTP Basic
    /// credentials of one of its users. Read again when it changes.
    #[arg(long, env = "FLAKEPORT_HTPASSWD")]
    htpasswd: Option<PathBuf>,

    /// File of tokens, one per line: `Authorization: Bearer TOKEN`, or TOKEN
    /// as the password of a Basic login with any user name, may pull.
    #[arg(long, env = "FLAKEPORT_TOKEN_FILE")]
    token_file: Option<PathBuf>,

    /// With --htpasswd or --token-file: /metrics needs credentials too.
    #[arg(long, env = "FLAKEPORT_PROTECT_METRICS")]
    protect_metrics: bool,

    /// How the log is written: `text`, for a person at a terminal (one line
    /// per pull, builds, warnings), or `json`, one object per line for a
    /// log shipper (every field, pull lines included). FLAKEPORT_LOG sets
    /// the level (e.g. `debug`).
    #[arg(long, env = "FLAKEPORT_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,

    /// PEM certificate chain to serve https with (needs --tls-key); reloaded
    /// when the file changes.
    #[arg(long, env = "FLAKEPORT_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "FLAKEPORT_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Seconds a client has to send a request's headers (and to finish a
    /// TLS handshake); also how long an idle keep-alive connection stays.
    #[arg(long, env = "FLAKEPORT_HEADER_TIMEOUT", default_value_t = 30)]
    header_timeout: u64,

    /// Seconds a client may take no bytes of a response before its
    /// connection is closed.
    #[arg(long, env = "FLAKEPORT_IDLE_TIMEOUT", default_value_t = 60)]
    idle_timeout: u64,

    /// Most layer streams in flight; past it a blob GET gets 429 with
    /// Retry-After.
    #[arg(long, env = "FLAKEPORT_MAX_STREAMS", default_value_t = 1024)]
    max_streams: usize,

    /// Most open connections; further ones wait to be accepted.
    #[arg(long, env = "FLAKEPORT_MAX_CONNECTIONS", default_value_t = 4096)]
    max_connections: usize,

    /// Images to build at start (NAME or NAME:TAG; the tag defaults to
    /// latest), so their first pull does not wait for a build. With
    /// --webhook-secret, a push warms these names at the pushed branch or
    /// tag (and at latest, for the default branch).
    #[arg(long, env = "FLAKEPORT_WARM", value_delimiter = ',', num_args = 1..)]
    warm: Vec<String>,

    /// A file holding the secret of push webhooks (GitHub, Gitea, Forgejo,
    /// GitLab) sent to POST /hooks/push; without it that endpoint is off.
    /// At least 16 bytes; reloaded when the file changes.
    #[arg(long, env = "FLAKEPORT_WEBHOOK_SECRET")]
    webhook_secret: Option<PathBuf>,

    /// A Nix store URL (`file:///srv/cache`, `s3://bucket`, `ssh://host`)
    /// that every built image's closure is copied to (`nix copy --to`)
    /// after its first pull, so other nodes substitute it instead of
    /// building. Sign with `?secret-key=FILE` in the URL or `secret-key-files`
    /// in nix.conf.
    #[arg(long, env = "FLAKEPORT_PUSH_TO")]
    push_to: Option<String>,

    /// Days a GC root (and the documents) of an image that is not pulled is
    /// kept; then the root goes and a Nix GC may take its closure. Checked
    /// at start and hourly.
    #[arg(long, env = "FLAKEPORT_KEEP_ROOTS", default_value_t = 30.0)]
    keep_roots: f64,

    /// Most MiB the state dir may hold: compressed layers (least recently
    /// used first), then git mirrors, are removed to fit. Checked at start
    /// and hourly.
    #[arg(long, env = "FLAKEPORT_MAX_STATE_MIB")]
    max_state_mib: Option<u64>,

    /// Seconds to let streams in flight finish after SIGTERM/SIGINT.
    #[arg(long, env = "FLAKEPORT_SHUTDOWN_GRACE", default_value_t = 30)]
    shutdown_grace: u64,
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

/// A Nix system: CPU and kernel, as in `x86_64-linux`.
fn parse_system(s: &str) -> Result<String, String> {
    let ok = |part: &str| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    match s.trim().split_once('-') {
        Some((cpu, os)) if ok(cpu) && ok(os) => Ok(s.trim().to_string()),
        _ => Err(format!(
            "{s:?} is not a Nix system (CPU-KERNEL, e.g. x86_64-linux or aarch64-linux)"
        )),
    }
}

/// Nixery's environment variables, for users switching from it. flakeport's
/// own variables win when both are set.
fn apply_nixery_aliases() {
    let set_if_unset = |ours: &str, value: String| {
        if std::env::var_os(ours).is_none() {
            std::env::set_var(ours, value);
        }
    };
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let Some(v) = var("NIXERY_PKGS_PATH").or_else(|| var("NIXERY_PKGS_REPO")) {
        set_if_unset("FLAKEPORT_PACKAGES", v);
    } else if let Some(channel) = var("NIXERY_CHANNEL") {
        set_if_unset(
            "FLAKEPORT_PACKAGES",
            format!("github:NixOS/nixpkgs/{channel}"),
        );
    }
    if let Some(t) = var("NIX_TIMEOUT") {
        set_if_unset("FLAKEPORT_NIX_TIMEOUT", t);
    }
    if let Some(port) = var("PORT") {
        set_if_unset("FLAKEPORT_LISTEN", format!("0.0.0.0:{port}"));
    }
}

/// The log on stderr. `text`: a pull is one plain line (the pull target's
/// message alone), everything else a compact tracing line. `json`: one
/// object per event, fields flattened, for log shippers.
fn init_log(format: &str) {
    use tracing_subscriber::filter::filter_fn;
    use tracing_subscriber::fmt::format::debug_fn;
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLAKEPORT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tower_http=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let stderr = || flakeport::redact::RedactingStderr;
    let is_pull = |m: &tracing::Metadata<'_>| m.target() == "flakeport::pull";
    let registry = tracing_subscriber::registry().with(filter);
    if format == "json" {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(stderr),
            )
            .init();
        return;
    }
    registry
        .with(
            tracing_subscriber::fmt::layer()
                .compact()
                .with_writer(stderr)
                .with_ansi(ansi)
                .with_filter(filter_fn(move |m| !is_pull(m))),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(stderr)
                .with_ansi(ansi)
                .with_target(false)
                .with_level(false)
                .fmt_fields(debug_fn(|w, field, value| {
                    if field.name() == "message" {
                        write!(w, "{value:?}")
                    } else {
                        Ok(())
                    }
                }))
                .with_filter(filter_fn(is_pull)),
        )
        .init();
}

fn main() -> anyhow::Result<()> {
    // Before any thread starts: set_var is only sound single-threaded.
    apply_nixery_aliases();
    limit_malloc_arenas();
    let cli = Cli::parse();
    let args = match (cli.command, cli.serve) {
        (Some(Command::Serve(a)), _) => *a,
        (None, Some(a)) => a,
        (Some(Command::Warm(w)), _) => {
            init_log("text");
            return warm(w);
        }
        (None, None) => unreachable!("clap requires FLAKE or --packages"),
    };
    init_log(&args.log_format);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Blocking work is short reads, scans, digests and compression:
        // more threads than this only add memory on a node's few cores.
        .max_blocking_threads(128)
        .build()?
        .block_on(serve(args))
}

/// glibc gives each thread that allocates its own arena, up to 8 per core,
/// and keeps what each arena freed. Layer chunks are allocated on blocking
/// threads and freed on the runtime's, so after a burst of streams every
/// arena holds its high-water mark. Two arenas: peak RSS with 64 clients
/// on 64 layers went from 71-76 MiB to 59-61 MiB, at the same throughput
/// (wide64, after 16 clients pulled img192, small3000 and big128). `MALLOC_ARENA_MAX`
/// in the environment still decides, as glibc documents.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before
        // any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

fn warm(w: WarmArgs) -> anyhow::Result<()> {
    let user = match w.user {
        Some(u) => Some((
            u,
            std::env::var("FLAKEPORT_PASSWORD")
                .context("--user needs the password in FLAKEPORT_PASSWORD")?,
        )),
        None => None,
    };
    let ok = flakeport::client::warm(&flakeport::client::WarmRequest {
        server: w.server,
        images: w.images,
        wait: w.wait,
        token: w.token,
        user,
        ca_cert: w.ca_cert,
    })?;
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
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
    let scheduler = std::sync::Arc::new(flakeport::scheduler::Scheduler::new(
        flakeport::scheduler::Bounds {
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
    let compressed = Codec::parse(&args.compression)
        .map(|codec| {
            compressed::CompressedCache::open(
                &state_dir,
                codec,
                args.compressed_cache_mib * 1024 * 1024,
            )
        })
        .transpose()
        .context("opening the compressed layer cache")?;
    let events = flakeport::events::Events::new();
    let signer = match &args.signing_key {
        Some(path) => Some(
            flakeport::provenance::Signer::from_file(path)
                .map_err(anyhow::Error::msg)
                .context("--signing-key")?,
        ),
        None => None,
    };
    let provenance = std::sync::Arc::new(
        flakeport::provenance::Provenance::open(&state_dir, signer)
            .context("opening the provenance records")?,
    );
    let images = images::Images::new(
        images::Settings {
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
            hot_layer_bytes: args.hot_layers_mib * 1024 * 1024,
        },
        nix,
        index,
        compressed,
        flakeport::refs::RefGate::new(
            &state_dir,
            Duration::from_secs(args.manifest_ttl),
            args.allow_commits,
            scheduler,
        ),
        events.clone(),
        provenance,
    );
    events.start_pull_reports();
    let auth = flakeport::auth::Auth::new(
        args.htpasswd.clone(),
        args.token_file.clone(),
        "flakeport".into(),
    )?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            Some(flakeport::tls::TlsAcceptor::new(cert.clone(), key.clone())?)
        }
        _ => None,
    };
    match flakeport::server::raise_fd_limit() {
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
    let policy = flakeport::retention::Policy {
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
    let sweeper = images.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(SWEEP_EVERY);
        loop {
            every.tick().await;
            sweeper.sweep_state(policy.clone()).await;
        }
    });
    let limits = flakeport::server::Limits {
        header_read: Duration::from_secs(args.header_timeout.max(1)),
        idle_write: Duration::from_secs(args.idle_timeout.max(1)),
        max_connections: args.max_connections,
    };
    let streams = std::sync::Arc::new(tokio::sync::Semaphore::new(args.max_streams.max(1)));
    let grace = Duration::from_secs(args.shutdown_grace);
    let at_exit = images.clone();
    let app = registry::app(
        images.clone(),
        registry::Settings {
            auth,
            protect_metrics: args.protect_metrics,
            max_streams: args.max_streams,
            streams,
            hooks,
            state_dir: state_dir.clone(),
            web: flakeport::web::Settings { tls: tls.is_some() },
        },
    );
    flakeport::server::serve(listener, app, tls, limits, async move {
        shutdown_signal().await;
        events.close();
        tracing::info!(
            grace_secs = grace.as_secs(),
            "shutting down: no new connections, finishing streams and builds in flight"
        );
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            tracing::warn!("grace period over; exiting with streams still open");
            at_exit.nix.stop_all().await;
            std::process::exit(0);
        });
    })
    .await;
    // Builds whose clients all left run on in tasks of their own.
    images.nix.stop_all().await;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
