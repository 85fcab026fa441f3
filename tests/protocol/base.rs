//! `/v2/`: the API version check, and methods a pull-only registry refuses.

use crate::harness::*;
use reqwest::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Nix; scripts/test runs it"]
async fn get_and_head_v2_with_the_api_version_header() {
    let s = in_process(&[]).await;
    let r = s.get("/v2/", &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(r.headers(), "docker-distribution-api-version"),
        "registry/2.0"
    );
    assert_eq!(s.status(Method::HEAD, "/v2/", &[]).await, 200, "HEAD /v2/");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Nix; scripts/test runs it"]
async fn push_put_and_delete_are_405_unsupported() {
    let s = in_process(&[]).await;
    s.expect_error(
        Method::POST,
        "/v2/app/blobs/uploads/",
        405,
        "UNSUPPORTED",
        Some("read-only"),
    )
    .await;
    s.expect_error(
        Method::PUT,
        "/v2/app/manifests/latest",
        405,
        "UNSUPPORTED",
        None,
    )
    .await;
    s.expect_error(
        Method::DELETE,
        &format!("/v2/app/manifests/{}", zero_digest()),
        405,
        "UNSUPPORTED",
        None,
    )
    .await;
}
