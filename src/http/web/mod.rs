//! The pages a person opens in a browser: `/` (how to pull, what is
//! served, builds running with their logs, recent builds and failures),
//! `/images/<name>` (tags, digests, layers, config) and `/builds/<id>`
//! (one build's log). Every page is whole without JavaScript; a little
//! script (no build step) follows running builds over server-sent events
//! (`live`).
//!
//! Everything shown comes from requests, builds and flakes, none of it
//! trusted: the pages are maud templates, which escape every value, and a
//! Content-Security-Policy allows only this server's own script.

mod live;
mod pages;

use crate::error::RegistryError;
use crate::events::Events;
use crate::service::ImageService;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

/// What the pages need to say how to pull.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// The registry is on TLS: no insecure-registry flags in pull lines.
    pub tls: bool,
}

#[derive(Clone)]
struct Web {
    images: Arc<ImageService>,
    events: Arc<Events>,
    settings: Settings,
}

/// The pages' routes, for any state of the router they join.
pub fn router<S: Clone + Send + Sync + 'static>(
    images: Arc<ImageService>,
    settings: Settings,
) -> Router<S> {
    let web = Web {
        events: images.events.clone(),
        images,
        settings,
    };
    Router::new()
        .route("/", get(home))
        .route("/images/{*name}", get(image))
        .route("/builds/events", get(live::builds))
        .route("/builds/{id}", get(build))
        .route("/builds/{id}/log", get(live::log))
        .route(
            "/static/flakeport.js",
            get(|| async {
                asset(
                    "text/javascript; charset=utf-8",
                    include_str!("flakeport.js"),
                )
            }),
        )
        .route(
            "/static/flakeport.css",
            get(|| async { asset("text/css; charset=utf-8", include_str!("flakeport.css")) }),
        )
        .with_state(web)
}

/// Only this server's script and styles run; nothing is framed or posted.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn html(status: StatusCode, page: maud::Markup) -> Response {
    let mut resp = (status, page.into_string()).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// The host a client reached this server by, for pull lines: the request's
/// Host header if it looks like a host (and port), else a placeholder.
fn host(req: &Request) -> String {
    crate::http::request::client_host(req.headers())
        .unwrap_or("HOST:5000")
        .to_string()
}

async fn home(State(web): State<Web>, req: Request) -> Response {
    let host = host(&req);
    html(StatusCode::OK, pages::home(&web, &host).await)
}

async fn image(State(web): State<Web>, Path(name): Path<String>, req: Request) -> Response {
    let host = host(&req);
    match pages::image(&web, &host, &name).await {
        Ok(page) => html(StatusCode::OK, page),
        Err(e) => error_page(&e),
    }
}

async fn build(State(web): State<Web>, Path(id): Path<String>) -> Response {
    let found = id.parse().ok().and_then(|id| web.events.builds.get(id));
    match found {
        Some(b) => html(StatusCode::OK, pages::build(&b)),
        None => error_page(&RegistryError::NoSuchEndpoint {
            path: format!("/builds/{id} (only running and recent builds are kept)"),
        }),
    }
}

/// An error as a page: the status and message of the registry's error.
fn error_page(e: &RegistryError) -> Response {
    let (status, code) = e.status_and_code();
    let mut resp = html(status, pages::error(code, &e.to_string()));
    resp.extensions_mut().insert(crate::error::ErrorCode(code));
    resp
}
