//! HTTP: the distribution spec's pull side. One `/v2/{*rest}` route and a
//! hand-written parser ([`route`]), one file per endpoint.

mod blobs;
pub mod hooks;
mod manifests;
pub mod referrers;
pub mod route;
mod tags;
pub mod warm;

use crate::error::{RegistryError, Result};
use crate::http::auth::Auth;
use crate::http::server::Peer;
use crate::service::ImageService;
use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use route::Route;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

/// Who may use the registry, and how much of it at once.
pub struct Settings {
    /// With it, every `/v2` request (and `/metrics` if `protect_metrics`)
    /// needs credentials; `/healthz` never does, so that probes work.
    pub auth: Option<Arc<Auth>>,
    pub protect_metrics: bool,
    /// Layer streams in flight; past it a blob GET gets 429.
    pub max_streams: usize,
    /// Their slots (`max_streams` of them).
    pub streams: Arc<Semaphore>,
    /// With `--webhook-secret`: `POST /hooks/push` (outside the auth of
    /// `/v2`: a delivery proves the secret instead).
    pub hooks: Option<Arc<hooks::Hooks>>,
    /// Measured for `/metrics`.
    pub state_dir: std::path::PathBuf,
    /// The web pages (behind the same auth as `/v2`).
    pub web: crate::http::web::Settings,
}

/// What every handler shares.
struct Registry {
    images: Arc<ImageService>,
    streams: Arc<Semaphore>,
    max_streams: usize,
    state_dir: std::path::PathBuf,
    /// The state dir's size and when it was measured (a walk, so not on
    /// every scrape).
    state_bytes: std::sync::Mutex<Option<(std::time::Instant, u64)>>,
}

pub fn app(images: Arc<ImageService>, settings: Settings) -> Router {
    let access = &settings;
    let guarded = |router: Router<Arc<Registry>>, auth: Option<Arc<Auth>>| match auth {
        Some(auth) => router.layer(middleware::from_fn(move |req: Request, next: Next| {
            let auth = auth.clone();
            async move { require(&auth, req, next).await }
        })),
        None => router,
    };
    let v2_routes = guarded(
        Router::new()
            .route("/v2", any(v2))
            .route("/v2/", any(v2))
            .route("/v2/{*rest}", any(v2)),
        access.auth.clone(),
    );
    let warm_route = guarded(
        Router::new().route(
            "/warm",
            any(
                |State(registry): State<Arc<Registry>>, req: Request| async move {
                    if req.method() != Method::POST {
                        return RegistryError::WarmInvalid {
                            reason: "use POST /warm?image=NAME[:TAG]".into(),
                        }
                        .into_response();
                    }
                    warm::post(&registry.images, req.uri().query())
                        .await
                        .unwrap_or_else(|e| e.into_response())
                },
            ),
        ),
        access.auth.clone(),
    );
    let metrics_route = guarded(
        Router::new().route("/metrics", get(metrics)),
        access.auth.clone().filter(|_| access.protect_metrics),
    );
    let web_routes = guarded(
        crate::http::web::router(images.clone(), settings.web),
        access.auth.clone(),
    );
    let events = images.events.clone();
    let hooks_route = Router::new().route(
        "/hooks/push",
        any({
            let hooks = settings.hooks.clone();
            move |State(registry): State<Arc<Registry>>, req: Request| {
                let hooks = hooks.clone();
                async move {
                    push_hook(&registry.images, hooks.as_deref(), req)
                        .await
                        .unwrap_or_else(|e| e.into_response())
                }
            }
        }),
    );
    Router::new()
        .merge(v2_routes)
        .merge(hooks_route)
        .merge(metrics_route)
        .merge(warm_route)
        .merge(web_routes)
        .route("/healthz", get(|| async { "ok\n" }))
        // Public by nature, so outside the auth: what verifiers need first.
        .route(
            "/.well-known/flakeport/cosign.pub",
            get(|State(registry): State<Arc<Registry>>| async move {
                match registry.images.provenance.signer() {
                    Some(s) => (
                        [(axum::http::header::CONTENT_TYPE, "application/x-pem-file")],
                        s.public_key_pem().to_string(),
                    )
                        .into_response(),
                    None => RegistryError::NotSigning.into_response(),
                }
            }),
        )
        .fallback(|req: Request| async move {
            RegistryError::NoSuchEndpoint {
                path: req.uri().path().to_string(),
            }
        })
        .layer(SetResponseHeaderLayer::overriding(
            HeaderName::from_static("docker-distribution-api-version"),
            HeaderValue::from_static("registry/2.0"),
        ))
        .layer(middleware::map_response(move |resp: Response| {
            let events = events.clone();
            async move {
                if let Some(code) = resp.extensions().get::<crate::error::ErrorCode>() {
                    events.metrics.error(code.0);
                }
                resp
            }
        }))
        .layer(CatchPanicLayer::new())
        .layer(TraceLayer::new_for_http())
        .with_state(Arc::new(Registry {
            images,
            streams: settings.streams,
            max_streams: settings.max_streams.max(1),
            state_dir: settings.state_dir,
            state_bytes: std::sync::Mutex::new(None),
        }))
}

/// `k=v` pairs of a query string, as sent (a key without `=` has an empty
/// value); shared by the endpoints that take parameters.
fn query_pairs(query: Option<&str>) -> impl Iterator<Item = (&str, &str)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

async fn push_hook(
    images: &Arc<ImageService>,
    hooks: Option<&hooks::Hooks>,
    req: Request,
) -> Result<Response> {
    let Some(hooks) = hooks else {
        return Err(RegistryError::NoSuchEndpoint {
            path: "/hooks/push (start flakeport with --webhook-secret)".into(),
        });
    };
    if req.method() != Method::POST {
        return Err(RegistryError::WebhookInvalid {
            reason: "a webhook is a POST".into(),
        });
    }
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, hooks::MAX_BODY)
        .await
        .map_err(|_| RegistryError::WebhookInvalid {
            reason: format!("the body is over {} MiB, or was cut", hooks::MAX_BODY >> 20),
        })?;
    hooks::post(images, hooks, &parts.headers, &body).await
}

async fn require(auth: &Auth, req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if auth.allows(header).await {
        next.run(req).await
    } else {
        if header.is_some() {
            tracing::info!(path = %req.uri().path(), "credentials refused");
        }
        RegistryError::Unauthorized {
            challenge: auth.challenge(),
        }
        .into_response()
    }
}

async fn v2(State(registry): State<Arc<Registry>>, req: Request) -> Response {
    match dispatch(&registry, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn dispatch(registry: &Registry, req: Request) -> Result<Response> {
    let images = &registry.images;
    let rest = req
        .uri()
        .path()
        .trim_start_matches("/v2")
        .trim_start_matches('/');
    let route = route::parse(rest)?;
    let client = req.extensions().get::<Peer>().map(|p| p.0);
    let head = match *req.method() {
        Method::GET => false,
        Method::HEAD => true,
        ref m => {
            return Err(RegistryError::ReadOnly {
                method: m.to_string(),
            })
        }
    };
    match route {
        Route::Base => Ok(axum::Json(serde_json::json!({})).into_response()),
        Route::Upload => Err(RegistryError::ReadOnly {
            method: req.method().to_string(),
        }),
        Route::Manifest { name, reference } => {
            manifests::get(images, &name, &reference, req.headers(), head, client).await
        }
        Route::Blob { digest, .. } => {
            blobs::get(
                images,
                &registry.streams,
                &digest,
                req.headers(),
                head,
                client,
            )
            .await
        }
        Route::Tags { name } => tags::get(images, &name, req.uri().query()).await,
        Route::Referrers { name, digest } => referrers::get(
            images,
            &name,
            &digest,
            req.uri().query(),
            req.headers(),
            head,
        ),
        Route::Catalog => tags::catalog(images, req.uri().query()).await,
    }
}

/// How long a measured state dir size is reported before it is walked again.
const STATE_BYTES_FOR: std::time::Duration = std::time::Duration::from_secs(30);

async fn metrics(State(registry): State<Arc<Registry>>) -> Response {
    let images = &registry.images;
    let sched = &images.nix.scheduler;
    let (pushes_ok, pushes_failed) = images.pushes();
    let (builds_running, builds_queued) = sched.builds();
    let fresh = *registry
        .state_bytes
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let state_dir_bytes = match fresh {
        Some((at, bytes)) if at.elapsed() < STATE_BYTES_FOR => bytes,
        _ => {
            let dir = registry.state_dir.clone();
            let bytes =
                tokio::task::spawn_blocking(move || crate::service::retention::dir_bytes(&dir))
                    .await
                    .unwrap_or(0);
            *registry
                .state_bytes
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some((std::time::Instant::now(), bytes));
            bytes
        }
    };
    let bounds = sched.bounds();
    let snapshot = crate::events::Snapshot {
        nix_flavour: images.nix.version().flavour.as_str(),
        nix_version: images.nix.version().number().to_string(),
        nix_builds_started: images.nix.builds_started(),
        processes_started: crate::nix::scheduler::Kind::ALL
            .iter()
            .map(|k| (k.name(), sched.started(*k)))
            .collect(),
        processes_running: sched.running() as u64,
        processes_queued: sched.queued() as u64,
        processes_refused: sched.refused(),
        processes_max: bounds.max_processes as u64,
        builds_running: builds_running as u64,
        builds_queued: builds_queued as u64,
        images_in_progress: images.events.builds.running().len() as u64,
        pushes_ok,
        pushes_failed,
        layer_streams: (registry.max_streams - registry.streams.available_permits()) as u64,
        layer_streams_max: registry.max_streams as u64,
        state_dir_bytes,
        hot_layer_bytes: images.layers.hot_layer_bytes(),
    };
    (
        [(header::CONTENT_TYPE, crate::events::metrics::CONTENT_TYPE)],
        images.events.metrics.encode(&snapshot),
    )
        .into_response()
}
