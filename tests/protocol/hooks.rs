//! `POST /hooks/push`: forge webhooks, checked by HMAC (GitHub, Gitea) or
//! token (GitLab). What a signed push warms, and that a forged one changes
//! no refs the server remembers, is in tests/e2e.sh (`t_webhook`: it pushes
//! to the fixture repo, which the other checks here share).

use crate::harness::*;
use hmac::{KeyInit, Mac};

const SECRET: &str = "flakeport-test-webhook-secret-0123456789";

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Nix; scripts/test runs it"]
async fn forged_unsigned_and_unknown_deliveries_are_403_denied() {
    let secret = state_dir().join("hook-secret");
    std::fs::write(&secret, SECRET).unwrap();
    let s = in_process(&["--webhook-secret", secret.to_str().unwrap()]).await;
    let push = format!(
        r#"{{"ref":"refs/heads/main","after":"{}","repository":{{"default_branch":"main"}}}}"#,
        rev_parse("main")
    );
    let push = push.as_bytes();
    let forged = format!(
        "sha256={}",
        hmac_hex("another-secret-of-32-bytes-xxxxx", push)
    );
    for (what, headers) in [
        (
            "a forged GitHub delivery",
            vec![
                ("x-github-event", "push"),
                ("x-hub-signature-256", forged.as_str()),
            ],
        ),
        ("an unsigned delivery", vec![("x-github-event", "push")]),
        (
            "a GitLab delivery with a wrong token",
            vec![
                ("x-gitlab-event", "Push Hook"),
                ("x-gitlab-token", "guess-guess-guess"),
            ],
        ),
        ("a delivery from no forge", vec![]),
    ] {
        let r = s.post("/hooks/push", &headers, push).await;
        assert_eq!(r.status(), 403, "{what}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["errors"][0]["code"], "DENIED", "{what}: {body}");
    }
    assert_eq!(s.builds().await, 0, "builds after refused deliveries");
    // Gitea: signed, but not a push: acknowledged, nothing warmed.
    let sig = hmac_hex(SECRET, push);
    let r = s
        .post(
            "/hooks/push",
            &[("x-gitea-event", "issues"), ("x-gitea-signature", &sig)],
            push,
        )
        .await;
    assert!(r.status().is_success(), "{}", r.status());
    let body = r.text().await.unwrap();
    assert!(
        body.contains("\"ignored\""),
        "a Gitea event that is not a push: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Nix; scripts/test runs it"]
async fn without_a_webhook_secret_there_is_no_endpoint() {
    let s = in_process(&[]).await;
    assert_eq!(
        s.post("/hooks/push", &[], b"{}").await.status(),
        404,
        "/hooks/push without --webhook-secret"
    );
    s.healthy().await;
}
