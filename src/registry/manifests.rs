//! GET/HEAD `/v2/<name>/manifests/<tag|digest>`.

use super::route::Reference;
use crate::error::{RegistryError, Result};
use crate::images::Images;
use crate::manifest::Accepts;
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use std::sync::Arc;

pub async fn get(
    images: &Arc<Images>,
    name: &str,
    reference: &Reference,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response> {
    let blob = match reference {
        Reference::Tag(tag) => {
            let tagged = images.tagged(name, tag).await?;
            let accept: Vec<&str> = headers
                .get_all(header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            let accepts = Accepts::parse(&accept);
            tagged.document(accepts.docker, accepts.lists).clone()
        }
        // By digest: exactly those bytes, whatever the Accept header says.
        Reference::Digest(d) => {
            (*images
                .manifest_by_digest(d)
                .ok_or_else(|| RegistryError::ManifestUnknown {
                    reference: d.clone(),
                })?)
            .clone()
        }
    };
    let body = if head {
        Body::empty()
    } else {
        Body::from(blob.bytes.clone())
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, &blob.media_type)
        .header(header::CONTENT_LENGTH, blob.bytes.len())
        .header("Docker-Content-Digest", &blob.digest)
        .header(header::ETAG, format!("\"{}\"", blob.digest))
        .header(header::VARY, HeaderValue::from_static("Accept"))
        .body(body)
        .map_err(RegistryError::internal)
}
