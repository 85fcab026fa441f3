//! flakeport: a pull-only OCI registry that builds images on demand with Nix
//! and streams their layers straight out of /nix/store.

use flakeport::app::ServeOptions;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

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
    serve: Option<ServeOptions>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the flake's images (the default).
    Serve(Box<ServeOptions>),
    /// Ask a running flakeport to build images now (POST /warm), so that
    /// their first pull finds them ready.
    Warm(WarmArgs),
    /// A containerd snapshotter (proxy plugin) that makes the layers this
    /// node's flakeport served from /nix/store instead of fetching and
    /// unpacking them.
    Snapshotter(flakeport::snapshotter::SnapshotterOptions),
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
        (Some(Command::Snapshotter(o)), _) => {
            init_log("text");
            // Before the runtime's threads exist (see the function).
            match flakeport::snapshotter::see_through_store_mounts(&o.root) {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    mounts = n,
                    "/nix/store is a bind mount: took it off in the snapshotter's own mount namespace, so that store files can be hard-linked"
                ),
                Err(e) => tracing::warn!(error = %e, "cannot see through the bind mount on /nix/store: layers made from the store will be copied"),
            }
            return tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(flakeport::snapshotter::run(o, shutdown_signal()));
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

/// Serves until SIGTERM or SIGINT; past `--shutdown-grace` after it, stops
/// Nix and exits with streams still open.
async fn serve(args: ServeOptions) -> anyhow::Result<()> {
    let server = flakeport::app::prepare(args).await?;
    let (grace, stop_nix) = (server.grace(), server.stopper());
    server
        .run(async move {
            shutdown_signal().await;
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                tracing::warn!("grace period over; exiting with streams still open");
                stop_nix.await;
                std::process::exit(0);
            });
        })
        .await;
    Ok(())
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

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
