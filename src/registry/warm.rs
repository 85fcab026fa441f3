//! POST `/warm?image=NAME[:TAG]&image=...[&wait=1]`: start builds now, so
//! that a later first pull finds the image ready. Without `wait` it answers
//! 202 at once; with it, 200 once every image is ready, with each one's
//! manifest digest or error. Behind the same auth as `/v2`.

use crate::error::{RegistryError, Result};
use crate::images::Images;
use crate::registry::route::{valid_name, valid_tag};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// Most images one request may warm.
const MAX_IMAGES: usize = 64;

pub async fn post(images: &Arc<Images>, query: Option<&str>) -> Result<Response> {
    let (wanted, wait) = parse(query)?;
    let tasks: Vec<_> = wanted
        .iter()
        .cloned()
        .map(|(name, tag)| {
            let images = images.clone();
            // A task of its own: the build goes on if the client leaves.
            tokio::spawn(async move { images.tagged(&name, &tag).await })
        })
        .collect();
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
            "image" => {
                let (name, tag) = v.split_once(':').unwrap_or((v, "latest"));
                wanted.push((valid_name(name)?, valid_tag(tag)?));
            }
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
