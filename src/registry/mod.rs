//! HTTP: the distribution spec's pull side. One `/v2/{*rest}` route and a
//! hand-written parser ([`route`]), one file per endpoint.

mod blobs;
pub mod hooks;
mod manifests;
pub mod route;
mod tags;
pub mod warm;

use crate::auth::Auth;
use crate::error::{RegistryError, Result};
use crate::images::Images;
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
    /// With `--webhook-secret`: `POST /hooks/push` (outside the auth of
    /// `/v2`: a delivery proves the secret instead).
    pub hooks: Option<Arc<hooks::Hooks>>,
}

/// What every handler shares.
struct Registry {
    images: Arc<Images>,
    streams: Arc<Semaphore>,
    max_streams: usize,
}

pub fn app(images: Arc<Images>, settings: Settings) -> Router {
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
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(|req: Request| async move {
            RegistryError::NoSuchEndpoint {
                path: req.uri().path().to_string(),
            }
        })
        .layer(SetResponseHeaderLayer::overriding(
            HeaderName::from_static("docker-distribution-api-version"),
            HeaderValue::from_static("registry/2.0"),
        ))
        .layer(CatchPanicLayer::new())
        .layer(TraceLayer::new_for_http())
        .with_state(Arc::new(Registry {
            images,
            streams: Arc::new(Semaphore::new(settings.max_streams.max(1))),
            max_streams: settings.max_streams.max(1),
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
    images: &Arc<Images>,
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
    match dispatch(&registry.images, &registry.streams, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn dispatch(
    images: &Arc<Images>,
    streams: &Arc<Semaphore>,
    req: Request,
) -> Result<Response> {
    let rest = req
        .uri()
        .path()
        .trim_start_matches("/v2")
        .trim_start_matches('/');
    let route = route::parse(rest)?;
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
            manifests::get(images, &name, &reference, req.headers(), head).await
        }
        Route::Blob { digest, .. } => {
            blobs::get(images, streams, &digest, req.headers(), head).await
        }
        Route::Tags { name } => tags::get(images, &name, req.uri().query()).await,
        Route::Catalog => tags::catalog(images, req.uri().query()).await,
    }
}

async fn metrics(State(registry): State<Arc<Registry>>) -> String {
    use std::fmt::Write;
    let sched = &registry.images.nix.scheduler;
    let mut m = format!(
        "# TYPE flakeport_nix_builds_started_total counter\nflakeport_nix_builds_started_total {}\n",
        registry.images.nix.builds_started()
    );
    m.push_str("# TYPE flakeport_processes_started_total counter\n");
    for kind in crate::scheduler::Kind::ALL {
        let _ = writeln!(
            m,
            "flakeport_processes_started_total{{kind=\"{}\"}} {}",
            kind.name(),
            sched.started(kind)
        );
    }
    let (pushed, push_failed) = registry.images.pushes();
    let _ = write!(
        m,
        "# TYPE flakeport_pushes_total counter\nflakeport_pushes_total{{result=\"ok\"}} {pushed}\nflakeport_pushes_total{{result=\"failed\"}} {push_failed}\n"
    );
    let bounds = sched.bounds();
    let _ = write!(
        m,
        "# TYPE flakeport_processes_running gauge\nflakeport_processes_running {}\n\
         # TYPE flakeport_processes_queued gauge\nflakeport_processes_queued {}\n\
         # TYPE flakeport_processes_refused_total counter\nflakeport_processes_refused_total {}\n\
         # TYPE flakeport_processes_max gauge\nflakeport_processes_max {}\n\
         # TYPE flakeport_layer_streams gauge\nflakeport_layer_streams {}\n",
        sched.running(),
        sched.queued(),
        sched.refused(),
        bounds.max_processes,
        registry.max_streams - registry.streams.available_permits(),
    );
    m
}
