//! GET `/v2/<name>/tags/list` and `/v2/_catalog`, with the `n` and
//! `last` pagination the distribution spec gives both.

use crate::error::{RegistryError, Result};
use crate::service::ImageService;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

pub async fn get(images: &Arc<ImageService>, name: &str, query: Option<&str>) -> Result<Response> {
    let (n, last) = pagination(query)?;
    let all = images.tags(name).await?;
    let (page, next) = paginate(all, n, last.as_deref());
    let body = axum::Json(serde_json::json!({ "name": name, "tags": page }));
    Ok(with_link(body, next, &format!("/v2/{name}/tags/list"), n))
}

pub async fn catalog(images: &Arc<ImageService>, query: Option<&str>) -> Result<Response> {
    let (n, last) = pagination(query)?;
    let all = images.catalog().await?;
    let (page, next) = paginate(all, n, last.as_deref());
    let body = axum::Json(serde_json::json!({ "repositories": page }));
    Ok(with_link(body, next, "/v2/_catalog", n))
}

/// The page of `all` (sorted) after `last`, at most `n` long, and the
/// `last` of the next page when more follow.
fn paginate(
    all: Vec<String>,
    n: Option<usize>,
    last: Option<&str>,
) -> (Vec<String>, Option<String>) {
    let after: Vec<String> = all
        .into_iter()
        .filter(|t| last.is_none_or(|l| t.as_str() > l))
        .collect();
    let page: Vec<String> = after
        .iter()
        .take(n.unwrap_or(usize::MAX))
        .cloned()
        .collect();
    let next = (after.len() > page.len())
        .then(|| page.last().cloned())
        .flatten();
    (page, next)
}

fn with_link(
    body: axum::Json<serde_json::Value>,
    next: Option<String>,
    path: &str,
    n: Option<usize>,
) -> Response {
    match (next, n) {
        (Some(last), Some(n)) => {
            let link = format!("<{path}?n={n}&last={last}>; rel=\"next\"");
            ([(header::LINK, link)], body).into_response()
        }
        _ => body.into_response(),
    }
}

/// `n` and `last` from the query string.
fn pagination(query: Option<&str>) -> Result<(Option<usize>, Option<String>)> {
    let mut n: Option<usize> = None;
    let mut last: Option<String> = None;
    for (k, v) in super::query_pairs(query) {
        match k {
            "n" => {
                n = Some(v.parse().map_err(|_| RegistryError::PaginationInvalid {
                    reason: format!("n={v:?} is not a number"),
                })?)
            }
            "last" => last = Some(v.to_string()),
            _ => {} // unknown parameters (e.g. `ns` from mirrors) are ignored
        }
    }
    Ok((n, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages() {
        let all: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        assert_eq!(
            paginate(all.clone(), Some(2), None),
            (vec!["a".into(), "b".into()], Some("b".into()))
        );
        assert_eq!(
            paginate(all.clone(), Some(2), Some("b")),
            (vec!["c".into()], None)
        );
        assert_eq!(
            paginate(all.clone(), None, Some("a")),
            (vec!["b".into(), "c".into()], None)
        );
        assert_eq!(paginate(all.clone(), Some(3), None).1, None);
        // n=0: an empty page; no Link, since no page could make progress.
        assert_eq!(paginate(all, Some(0), None), (vec![], None));
    }

    proptest::proptest! {
        /// Any query: a page size and marker, or PAGINATION_NUMBER_INVALID;
        /// never a panic.
        #[test]
        fn any_query(q in "\\PC{0,60}") {
            if let Err(e) = pagination(Some(&q)) {
                proptest::prop_assert_eq!(e.status_and_code().1, "PAGINATION_NUMBER_INVALID");
            }
        }
    }
}
