//! GET/HEAD `/v2/<name>/manifests/<tag|digest>`.

use super::route::{digest_tag, Reference};
use crate::error::{RegistryError, Result};
use crate::image::manifest::Accepts;
use crate::service::ImageService;
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use std::sync::Arc;

pub async fn get(
    images: &Arc<ImageService>,
    name: &str,
    reference: &Reference,
    headers: &HeaderMap,
    head: bool,
    client: Option<std::net::IpAddr>,
) -> Result<Response> {
    let started = std::time::Instant::now();
    let waited = std::sync::atomic::AtomicBool::new(false);
    let blob = match reference {
        Reference::Tag(tag) if digest_tag(tag).is_some() => {
            let (digest, signature) = digest_tag(tag).expect("checked above");
            super::referrers::tagged(images, name, &digest, signature, headers)?
        }
        Reference::Tag(tag) => {
            let tagged = images.tagged_waiting(name, tag, &waited).await?;
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
                    reference: d.to_string(),
                })?)
            .clone()
        }
    };
    let took = started.elapsed();
    let events = &images.events;
    let by_tag = matches!(reference, Reference::Tag(_));
    events.metrics.manifest_served(
        &blob.media_type,
        by_tag.then(|| (took, waited.load(std::sync::atomic::Ordering::Relaxed))),
    );
    let body = if head {
        Body::empty()
    } else {
        let reference = match reference {
            Reference::Tag(t) => t.as_str(),
            Reference::Digest(d) => d.as_str(),
        };
        let finished =
            events
                .pulls
                .manifest(client, name, reference, took, blobs_named(&blob.bytes));
        for pull in finished {
            events.pulled(&pull);
        }
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

/// The config and layer digests an image manifest names (none for an index).
fn blobs_named(manifest: &[u8]) -> Vec<String> {
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(manifest) else {
        return vec![];
    };
    let config = doc.pointer("/config/digest").into_iter();
    let layers = doc["layers"].as_array().into_iter().flatten();
    config
        .chain(layers.filter_map(|l| l.get("digest")))
        .filter_map(|d| d.as_str().map(str::to_string))
        .collect()
}
