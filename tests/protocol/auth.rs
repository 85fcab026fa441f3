//! `--htpasswd` and `--token-file`: every registry, warm and (with
//! `--protect-metrics`) metrics request needs credentials; /healthz stays
//! open. Logins of real clients (docker, skopeo, ctr) stay in tests/e2e.sh.

use crate::harness::*;
use reqwest::Method;

const USER: &str = "alice";
const PASSWORD: &str = "wonder land 42";

/// The flags of a server with one htpasswd user and one token; the token.
fn credentials() -> (Vec<String>, String) {
    let dir = state_dir();
    let htpasswd = dir.join("htpasswd");
    let hash = bcrypt::hash(PASSWORD, 5).unwrap();
    std::fs::write(&htpasswd, format!("{USER}:{hash}\n")).unwrap();
    let token = format!("token-{}", fixture().nonce.replace('-', ""));
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("{token}\n")).unwrap();
    let args = [
        "--htpasswd",
        htpasswd.to_str().unwrap(),
        "--token-file",
        tokens.to_str().unwrap(),
        "--protect-metrics",
    ];
    (args.iter().map(|a| a.to_string()).collect(), token)
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {pair}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Nix; scripts/test runs it"]
async fn without_valid_credentials_401_with_a_basic_challenge() {
    let (args, token) = credentials();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let s = in_process(&args).await;
    let r = s.get("/v2/", &[]).await;
    assert_eq!(r.status(), 401, "GET /v2/ without credentials");
    assert_eq!(
        header(r.headers(), "www-authenticate"),
        "Basic realm=\"flakeport\""
    );
    let body = s
        .get("/v2/app/manifests/latest", &[])
        .await
        .text()
        .await
        .unwrap();
    assert!(
        body.contains("\"code\":\"UNAUTHORIZED\""),
        "the error body: {body}"
    );
    let manifest = "/v2/app/manifests/latest";
    for (what, credentials) in [
        ("a wrong password", basic(USER, "wrong")),
        ("an unknown user", basic("bob", PASSWORD)),
        ("a wrong token", format!("Bearer not-{token}")),
    ] {
        let got = s
            .status(Method::GET, manifest, &[("authorization", &credentials)])
            .await;
        assert_eq!(got, 401, "{what}");
    }
    assert_eq!(
        s.status(Method::GET, "/healthz", &[]).await,
        200,
        "/healthz stays open"
    );
    assert_eq!(
        s.status(Method::POST, "/warm?image=app", &[]).await,
        401,
        "POST /warm without credentials"
    );
    assert_eq!(
        s.status(Method::GET, "/metrics", &[]).await,
        401,
        "/metrics with --protect-metrics"
    );
    let bearer = format!("Bearer {token}");
    assert_eq!(
        s.counter_with(
            "flakeport_nix_builds_started_total",
            &[("authorization", &bearer)]
        )
        .await,
        0,
        "builds for refused requests"
    );
}

mod built {
    use super::*;

    #[tokio::test]
    #[ignore = "needs Nix; scripts/test runs it"]
    async fn a_bearer_token_pulls() {
        let (args, token) = credentials();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let s = start(&state_dir(), &args).await;
        let bearer = format!("Bearer {token}");
        assert_eq!(
            s.status(
                Method::GET,
                "/v2/app/manifests/latest",
                &[("authorization", &bearer)]
            )
            .await,
            200,
            "a bearer token"
        );
    }
}
