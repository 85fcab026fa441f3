//! `/v2/NAME/manifests/REFERENCE`: validation of names and tags before any
//! Nix runs, headers and flavours of a built manifest, which tags build,
//! and errors from lookups and builds.

use crate::harness::*;
use reqwest::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Nix; scripts/test runs it"]
async fn malformed_names_and_tags_are_400() {
    let s = in_process(&[]).await;
    s.expect_error(
        Method::GET,
        "/v2/Bad_Name/manifests/latest",
        400,
        "NAME_INVALID",
        Some("lowercase"),
    )
    .await;
    s.expect_error(
        Method::GET,
        "/v2/app/manifests/-bad",
        400,
        "TAG_INVALID",
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Nix; scripts/test runs it"]
async fn a_manifest_digest_never_served_is_404_manifest_unknown() {
    let s = in_process(&[]).await;
    s.expect_error(
        Method::GET,
        &format!("/v2/app/manifests/{}", zero_digest()),
        404,
        "MANIFEST_UNKNOWN",
        None,
    )
    .await;
}

/// Nothing a client sends is Nix code: quotes, interpolation and flags are
/// refused before nix runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Nix; scripts/test runs it"]
async fn injection_attempts_are_refused_before_nix_runs() {
    let s = in_process(&[]).await;
    for (path, code) in [
        ("/v2/a%22%24%7Bthrow%7D/manifests/latest", "NAME_INVALID"),
        (
            "/v2/app/manifests/$%7Bbuiltins.abort%20%22x%22%7D",
            "TAG_INVALID",
        ),
        ("/v2/app/manifests/v1%20--impure", "TAG_INVALID"),
    ] {
        s.expect_error(Method::GET, path, 400, code, None).await;
    }
    assert_eq!(
        s.builds().await,
        0,
        "nix runs for requests refused by validation"
    );
}

/// The same for package paths (a server with only a package set).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Nix; scripts/test runs it"]
async fn package_path_injection_attempts_are_refused_before_nix_runs() {
    let repo = fixture().repo.display().to_string();
    let s = in_process_with(Flake::None, &["--packages", &repo]).await;
    for (path, code) in [
        (
            "/v2/hello/%24%7Bbuiltins.abort%20%22x%22%7D/manifests/latest",
            "NAME_INVALID",
        ),
        ("/v2/hello/a%22%3B/manifests/latest", "NAME_INVALID"),
        ("/v2/hello/manifests/latest%22%20--impure", "TAG_INVALID"),
    ] {
        s.expect_error(Method::GET, path, 400, code, None).await;
    }
    assert_eq!(
        s.builds().await,
        0,
        "nix runs for requests refused by validation"
    );
}

mod built {
    use crate::harness::*;
    use reqwest::Method;
    use std::process::Command;
    use std::time::Duration;

    const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

    /// Digest, length, type and Vary of a manifest; HEAD agrees; by digest
    /// the same bytes.
    #[tokio::test]
    #[ignore = "needs Nix; scripts/test runs it"]
    async fn headers_head_and_by_digest() {
        let s = start(&state_dir(), &[]).await;
        let r = s.get("/v2/app/manifests/latest", &[]).await;
        assert_eq!(r.status(), 200);
        let h = r.headers().clone();
        let body = r.bytes().await.unwrap().to_vec();
        let digest = sha256(&body);
        assert_eq!(header(&h, "docker-content-digest"), digest);
        assert_eq!(header(&h, "content-type"), OCI_MANIFEST);
        assert_eq!(header(&h, "vary").to_ascii_lowercase(), "accept");
        assert_eq!(header(&h, "content-length"), body.len().to_string());
        let head = s.head("/v2/app/manifests/latest").await;
        assert_eq!(head.status(), 200);
        assert_eq!(header(head.headers(), "docker-content-digest"), digest);
        assert_eq!(
            header(head.headers(), "content-length"),
            body.len().to_string()
        );
        let by_digest = s.bytes(&format!("/v2/app/manifests/{digest}")).await;
        assert!(by_digest == body, "the manifest by digest: other bytes");
    }

    /// Docker schema2 when Accept asks only for Docker types, with the same
    /// config as the OCI manifest.
    #[tokio::test]
    #[ignore = "needs Nix; scripts/test runs it"]
    async fn docker_schema2_when_accept_asks_only_for_docker_types() {
        let s = start(&state_dir(), &[]).await;
        let oci = s.manifest("app", "latest").await;
        let docker: serde_json::Value = serde_json::from_slice(
            &s.bytes_with(
                "/v2/app/manifests/latest",
                &[(
                    "accept",
                    "application/vnd.docker.distribution.manifest.v2+json",
                )],
            )
            .await,
        )
        .unwrap();
        assert_eq!(
            docker["mediaType"],
            "application/vnd.docker.distribution.manifest.v2+json"
        );
        assert_eq!(
            docker["layers"][0]["mediaType"],
            "application/vnd.docker.image.rootfs.diff.tar"
        );
        assert_eq!(docker["config"]["digest"], oci["config"]["digest"]);
    }

    #[tokio::test]
    #[ignore = "needs Nix; scripts/test runs it"]
    async fn unknown_names_and_tags_are_404() {
        let s = start(&state_dir(), &[]).await;
        // The reply lists the flake's outputs.
        s.expect_error(
            Method::GET,
            "/v2/appp/manifests/latest",
            404,
            "NAME_UNKNOWN",
            Some("\"app"),
        )
        .await;
        s.expect_error(
            Method::GET,
            "/v2/app/manifests/v9",
            404,
            "MANIFEST_UNKNOWN",
            Some(r#"\\"v9\\""#),
        )
        .await;
    }

    /// A build failure is a 500 with the log's tail, and is not cached: the
    /// next pull builds again.
    #[tokio::test]
    #[ignore = "needs Nix; scripts/test runs it"]
    async fn a_build_failure_is_500_with_the_log_tail_and_not_cached() {
        let s = start(&state_dir(), &[]).await;
        s.expect_error(
            Method::GET,
            "/v2/broken/manifests/latest",
            500,
            "UNKNOWN",
            Some("broken on purpose"),
        )
        .await;
        let before = s.builds().await;
        s.expect_error(
            Method::GET,
            "/v2/broken/manifests/latest",
            500,
            "UNKNOWN",
            Some("broken on purpose"),
        )
        .await;
        assert_eq!(
            s.builds().await,
            before + 1,
            "nix builds started by a second pull of a failing image"
        );
    }

    /// Names that are attribute tricks are names that do not exist: one
    /// evaluation each says so, and nothing is built.
    #[tokio::test]
    #[ignore = "needs Nix; scripts/test runs it"]
    async fn names_that_are_nix_keywords_are_looked_up_as_data() {
        let s = start(&state_dir(), &[]).await;
        let (builds, evals) = (s.builds().await, s.evals().await);
        for name in ["or", "outpath"] {
            s.expect_error(
                Method::GET,
                &format!("/v2/{name}/manifests/latest"),
                404,
                "NAME_UNKNOWN",
                None,
            )
            .await;
        }
        assert_eq!(
            s.builds().await,
            builds,
            "nix builds for two names that are not outputs"
        );
        assert_eq!(
            s.evals().await,
            evals + 2,
            "nix evaluations for two names that are not outputs"
        );
    }

    /// A pull-request head or an unknown branch is 404 with no build; a
    /// commit reachable from main that no ref points at builds.
    #[tokio::test]
    #[ignore = "needs Nix; scripts/test runs it"]
    async fn tags_name_reachable_refs_only() {
        let s = start(&state_dir(), &[]).await;
        let pr = rev_parse("refs/pull/1/head");
        let before = s.builds().await;
        for tag in [pr.as_str(), "nosuchbranch"] {
            s.expect_error(
                Method::GET,
                &format!("/v2/app/manifests/{tag}"),
                404,
                "MANIFEST_UNKNOWN",
                Some("is not a branch, tag or commit"),
            )
            .await;
        }
        assert_eq!(
            s.builds().await,
            before,
            "nix builds started for refused tags"
        );
        let mid = rev_parse("main~1");
        assert_eq!(
            s.greeting("app", &mid).await,
            "GREETING=v1",
            "Env of app:<commit reachable from main that no ref points at>"
        );
    }

    /// Package paths (a server with only a package set): every unknown
    /// package named in one 404 with close matches; attribute tricks are
    /// unknown names, looked up by one evaluation, never built.
    #[tokio::test]
    #[ignore = "needs Nix; scripts/test runs it"]
    async fn package_paths_unknown_names_and_keywords() {
        let repo = fixture().repo.display().to_string();
        let s = start_binary(Flake::None, &state_dir(), &["--packages", &repo]).await;
        s.expect_error(
            Method::GET,
            "/v2/hello/helo/gretter/python3packages.reqests/manifests/latest",
            404,
            "MANIFEST_UNKNOWN",
            Some(
                r"gretter \(did you mean greeter\?\); helo \(did you mean hello\?\); python3packages.reqests \(did you mean python3packages.requests\?\)",
            ),
        )
        .await;
        let (builds, evals) = (s.builds().await, s.evals().await);
        s.expect_error(
            Method::GET,
            "/v2/hello/builtins.abort/import/or/manifests/latest",
            404,
            "MANIFEST_UNKNOWN",
            Some("builtins.abort; import; or"),
        )
        .await;
        assert_eq!(s.builds().await, builds, "nix builds for unknown names");
        assert_eq!(
            s.evals().await,
            evals + 1,
            "nix evaluations for one lookup of unknown names"
        );
    }

    #[tokio::test]
    #[ignore = "needs Nix; scripts/test runs it"]
    async fn manifest_ttl_pinned_commits_and_the_not_an_output_cache() {
        let f = fixture();
        let packages = format!("git+file://{}", f.repo.display());
        let s = start(
            &state_dir(),
            &["--manifest-ttl", "2", "--packages", &packages],
        )
        .await;
        let commit = String::from_utf8(
            Command::new("git")
                .arg("-C")
                .arg(&f.repo)
                .args(["rev-parse", "v1"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
        .trim()
        .to_string();
        let pull = |name: &'static str, tag: String| {
            let s = &s;
            async move {
                let r = s.get(&format!("/v2/{name}/manifests/{tag}"), &[]).await;
                r.status()
            }
        };
        let ttl = Duration::from_millis(2500);

        // A pinned commit is built once and never expires.
        assert_eq!(pull("app", commit.clone()).await, 200);
        let b0 = s.builds().await;
        tokio::time::sleep(ttl).await;
        assert_eq!(pull("app", commit.clone()).await, 200);
        assert_eq!(s.builds().await, b0, "a pinned commit after the TTL");

        // A branch is built again after the TTL.
        assert_eq!(pull("app", "main".into()).await, 200);
        let b1 = s.builds().await;
        assert_eq!(pull("app", "main".into()).await, 200);
        assert_eq!(s.builds().await, b1, "a branch within the TTL");
        tokio::time::sleep(ttl).await;
        assert_eq!(pull("app", "main".into()).await, 200);
        assert_eq!(s.builds().await, b1 + 1, "a branch after the TTL");

        // A package path beside a flake: the flake lookup (an evaluation that
        // says it is no output), then the packages (an evaluation and a
        // build). Within the TTL: nothing; after it: both again.
        let (b2, e2) = (s.builds().await, s.evals().await);
        assert_eq!(pull("hello/greeter", "latest".into()).await, 200);
        assert_eq!((s.builds().await, s.evals().await), (b2 + 1, e2 + 2));
        assert_eq!(pull("hello/greeter", "latest".into()).await, 200);
        assert_eq!(
            (s.builds().await, s.evals().await),
            (b2 + 1, e2 + 2),
            "a package path within the TTL"
        );
        tokio::time::sleep(ttl).await;
        assert_eq!(pull("hello/greeter", "latest".into()).await, 200);
        assert_eq!(
            (s.builds().await, s.evals().await),
            (b2 + 2, e2 + 4),
            "a package path after the TTL"
        );

        // A name that is neither: failures are not cached, but "not an output
        // of the flake" is, for the TTL, so the flake lookup is skipped. Both
        // lookups are evaluations; nothing is built.
        let (b3, e3) = (s.builds().await, s.evals().await);
        assert_eq!(pull("nosuchpkg", "latest".into()).await, 404);
        assert_eq!(s.evals().await, e3 + 2);
        assert_eq!(pull("nosuchpkg", "latest".into()).await, 404);
        assert_eq!(s.evals().await, e3 + 3, "the flake lookup is skipped");
        tokio::time::sleep(ttl).await;
        assert_eq!(pull("nosuchpkg", "latest".into()).await, 404);
        assert_eq!(
            s.evals().await,
            e3 + 5,
            "after the TTL the flake is asked again"
        );
        assert_eq!(
            s.builds().await,
            b3,
            "nix builds for a name that is neither"
        );
    }
}
