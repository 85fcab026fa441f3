//! HTTP: the distribution spec's pull side. One `/v2/{*rest}` route and a
//! hand-written parser ([`route`]), one file per endpoint.

mod blobs;
mod manifests;
pub mod route;
mod tags;

use crate::error::{RegistryError, Result};
use crate::images::Images;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use route::Route;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

pub fn app(images: Arc<Images>) -> Router {
    Router::new()
        .route("/v2", any(v2))
        .route("/v2/", any(v2))
        .route("/v2/{*rest}", any(v2))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
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
        .with_state(images)
}

async fn v2(State(images): State<Arc<Images>>, req: Request) -> Response {
    match dispatch(images, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn dispatch(images: Arc<Images>, req: Request) -> Result<Response> {
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
            manifests::get(&images, &name, &reference, req.headers(), head).await
        }
        Route::Blob { digest, .. } => blobs::get(&images, &digest, req.headers(), head).await,
        Route::Tags { name } => tags::get(&images, &name, req.uri().query()).await,
    }
}

async fn metrics(State(images): State<Arc<Images>>) -> String {
    format!(
        "# TYPE flakeport_nix_builds_started_total counter\nflakeport_nix_builds_started_total {}\n",
        images.nix.builds_started.load(Ordering::SeqCst)
    )
}
