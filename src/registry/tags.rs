//! GET `/v2/<name>/tags/list` with `n` and `last` pagination.

use crate::error::{RegistryError, Result};
use crate::images::Images;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

pub async fn get(images: &Arc<Images>, name: &str, query: Option<&str>) -> Result<Response> {
    let (n, last) = pagination(query)?;
    let all = images.tags(name).await?;
    let after: Vec<String> = all
        .into_iter()
        .filter(|t| last.as_ref().is_none_or(|l| t.as_str() > l.as_str()))
        .collect();
    let page: Vec<String> = after
        .iter()
        .take(n.unwrap_or(usize::MAX))
        .cloned()
        .collect();
    let body = axum::Json(serde_json::json!({ "name": name, "tags": page }));
    match (n, page.last()) {
        (Some(n), Some(last)) if after.len() > page.len() => {
            let link = format!("</v2/{name}/tags/list?n={n}&last={last}>; rel=\"next\"");
            Ok(([(header::LINK, link)], body).into_response())
        }
        _ => Ok(body.into_response()),
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
