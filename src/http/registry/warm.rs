//! POST `/warm?image=NAME[:TAG]&image=...[&wait=1]`: start builds now, so
//! that a later first pull finds the image ready. Without `wait` it answers
//! 202 at once; with it, 200 once every image is ready, with each one's
//! manifest digest or error. Behind the same auth as `/v2`.

use crate::error::{RegistryError, Result};
use crate::http::registry::route::{valid_name, valid_tag};
use crate::service::ImageService;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// Most images one request may warm.
const MAX_IMAGES: usize = 64;

/// One warming build per image, each in a task of its own (it goes on if
/// the client leaves), logged when it ends. `--warm` at start, `POST
/// /warm` and push webhooks all warm through here.
pub fn start(images: &Arc<ImageService>, wanted: &[(String, String)]) -> Vec<WarmTask> {
    wanted
        .iter()
        .cloned()
        .map(|(name, tag)| {
            let images = images.clone();
            tokio::spawn(async move {
                let image = format!("{name}:{tag}");
                let result = images.tagged(&name, &tag).await;
                match &result {
                    Ok(t) => tracing::info!(%image, digest = t.digest(), "warmed"),
                    Err(e) => tracing::warn!(%image, error = %e, "cannot warm"),
                }
                result
            })
        })
        .collect()
}

pub type WarmTask = tokio::task::JoinHandle<Result<crate::service::Tagged>>;

/// `NAME[:TAG]` (a tag defaults to `latest`), checked as a pull's would be.
pub fn parse_image(text: &str) -> Result<(String, String)> {
    let (name, tag) = text.split_once(':').unwrap_or((text, "latest"));
    Ok((valid_name(name)?, valid_tag(tag)?))
}

pub async fn post(images: &Arc<ImageService>, query: Option<&str>) -> Result<Response> {
    let (wanted, wait) = parse(query)?;
    let tasks = start(images, &wanted);
    let names: Vec<String> = wanted.iter().map(|(n, t)| format!("{n}:{t}")).collect();
    if !wait {
        let body = serde_json::json!({ "warming": names });
        return Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response());
    }
    let mut results = Vec::new();
    for (image, task) in names.into_iter().zip(tasks) {
        let outcome = task
            .await
            .unwrap_or_else(|e| Err(RegistryError::internal(e.to_string())));
        results.push(match outcome {
            Ok(tagged) => serde_json::json!({ "image": image, "digest": tagged.digest() }),
            Err(e) => serde_json::json!({ "image": image, "error": e.body()["errors"][0] }),
        });
    }
    Ok(axum::Json(serde_json::json!({ "images": results })).into_response())
}

/// `image` values (a tag defaults to `latest`) and `wait`.
fn parse(query: Option<&str>) -> Result<(Vec<(String, String)>, bool)> {
    let mut wanted = Vec::new();
    let mut wait = false;
    for (k, v) in super::query_pairs(query) {
        match k {
            "image" => wanted.push(parse_image(v)?),
            "wait" => wait = matches!(v, "1" | "true" | ""),
            _ => {}
        }
    }
    if wanted.is_empty() || wanted.len() > MAX_IMAGES {
        return Err(RegistryError::WarmInvalid {
            reason: format!("name 1 to {MAX_IMAGES} images as image=NAME[:TAG]"),
        });
    }
    Ok((wanted, wait))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries() {
        let (w, wait) = parse(Some("image=app&image=a/b:v1&wait=1")).unwrap();
        assert_eq!(
            w,
            vec![("app".into(), "latest".into()), ("a/b".into(), "v1".into())]
        );
        assert!(wait);
        assert!(parse(Some("wait=1")).is_err());
        assert!(parse(Some("image=Bad")).is_err());
        assert!(parse(Some("image=app:-x")).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_query(q in "\\PC{0,60}") {
            let _ = parse(Some(&q));
        }
    }
}
