//! `/metrics`: what the server counts, after real pulls. A real Prometheus
//! scraping it (the dashboard's queries, the alert rules) and the terminal's
//! pull lines stay in tests/e2e.sh (`t_metrics`).

use crate::harness::*;

/// The Nix the server found at start, as `nix --version` names it here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Nix; scripts/test runs it"]
async fn build_info_names_flakeport_and_the_nix_version() {
    let s = in_process(&[]).await;
    let series = format!(
        "flakeport_build_info{{version=\"{}\",nix_flavour=\"nix\",nix_version=\"{}\"}}",
        env!("CARGO_PKG_VERSION"),
        nix_version()
    );
    assert_eq!(s.counter(&series).await, 1, "{series}");
}

/// The HELP text is part of what a dashboard shows: it says what is
/// counted, in the reader's words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Nix; scripts/test runs it"]
async fn help_says_what_each_metric_counts() {
    let s = in_process(&[]).await;
    let text = String::from_utf8(s.bytes("/metrics").await).unwrap();
    let help = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("# HELP {name} ")))
            .unwrap_or_else(|| panic!("no HELP for {name}:\n{text}"))
            .to_string()
    };
    for (name, starts) in [
        ("flakeport_builds_started", "Images whose production"),
        ("flakeport_builds_succeeded", "Images produced"),
        ("flakeport_images_in_progress", "Images being produced"),
    ] {
        assert!(help(name).starts_with(starts), "{name}: {}", help(name));
    }
    for line in text.lines().filter(|l| l.starts_with("# HELP ")) {
        assert!(!line.contains("ImageService"), "{line}");
    }
}

mod built {
    use crate::harness::*;
    use reqwest::Method;

    const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

    /// A pull as a client into an empty layout makes it: the manifest,
    /// then every blob once.
    async fn pull(s: &Server, name: &str) -> u64 {
        let m: serde_json::Value = serde_json::from_slice(
            &s.bytes_with(
                &format!("/v2/{name}/manifests/latest"),
                &[("accept", OCI_MANIFEST)],
            )
            .await,
        )
        .unwrap();
        let config = m["config"]["digest"].as_str().unwrap();
        let mut sizes = m["config"]["size"].as_u64().unwrap();
        s.bytes(&format!("/v2/{name}/blobs/{config}")).await;
        for (digest, size) in layers(&m) {
            s.bytes(&format!("/v2/{name}/blobs/{digest}")).await;
            sizes += size;
        }
        sizes
    }

    #[tokio::test]
    #[ignore = "needs Nix; scripts/test runs it"]
    async fn counters_after_real_pulls() {
        let repo = fixture().repo.display().to_string();
        let s = start(&state_dir(), &["--packages", &repo]).await;
        let sizes = pull(&s, "stock").await;
        let none = s
            .counter("flakeport_blob_bytes_served_total{compression=\"none\"}")
            .await;
        let json = s
            .counter("flakeport_blob_bytes_served_total{compression=\"json\"}")
            .await;
        assert_eq!(
            none + json,
            sizes,
            "blob bytes served for one pull of stock"
        );
        let flake = |what: &str| format!("flakeport_{what}{{kind=\"flake\"}}");
        assert_eq!(
            s.counter(&flake("builds_started_total")).await,
            1,
            "builds started"
        );
        assert_eq!(
            s.counter(&flake("builds_succeeded_total")).await,
            1,
            "builds succeeded"
        );
        assert_eq!(
            s.counter(&flake("build_duration_seconds_count")).await,
            1,
            "build durations observed"
        );
        let at_least = |got: u64, min: u64, what: &str| {
            assert!(got >= min, "{what}: got {got}, want at least {min}");
        };
        at_least(
            s.counter("flakeport_cache_lookups_total{cache=\"manifest\",result=\"miss\"}")
                .await,
            1,
            "manifest cache misses",
        );
        at_least(
            s.counter("flakeport_digest_pass_duration_seconds_count")
                .await,
            1,
            "digest passes",
        );
        // The pull's manifest and one more, as skopeo asks for it twice.
        s.bytes_with("/v2/stock/manifests/latest", &[("accept", OCI_MANIFEST)])
            .await;
        at_least(
            s.counter(&format!(
                "flakeport_manifests_served_total{{media_type=\"{OCI_MANIFEST}\"}}"
            ))
            .await,
            2,
            "OCI manifests served",
        );
        // The second pull finds the manifest cached.
        pull(&s, "stock").await;
        at_least(
            s.counter("flakeport_cache_lookups_total{cache=\"manifest\",result=\"hit\"}")
                .await,
            1,
            "manifest cache hits",
        );
        assert_eq!(
            s.counter(&flake("builds_started_total")).await,
            1,
            "builds started after a second pull"
        );
        // Failures by reason, errors by code; a package path is its own kind.
        assert_eq!(
            s.status(Method::GET, "/v2/failing/manifests/latest", &[])
                .await,
            500,
            "a pull of failing"
        );
        assert_eq!(
            s.counter("flakeport_builds_failed_total{kind=\"flake\",reason=\"build\"}")
                .await,
            1,
            "failed builds"
        );
        assert_eq!(
            s.counter("flakeport_errors_total{code=\"UNKNOWN\"}").await,
            1,
            "UNKNOWN errors"
        );
        assert_eq!(
            s.status(Method::GET, "/v2/no/such/image/manifests/latest", &[])
                .await,
            404,
            "a pull of an unknown package path"
        );
        assert_eq!(
            s.counter("flakeport_errors_total{code=\"MANIFEST_UNKNOWN\"}")
                .await,
            1,
            "MANIFEST_UNKNOWN errors (an unknown package path)"
        );
        assert_eq!(
            s.status(Method::GET, "/v2/shell/hello/manifests/latest", &[])
                .await,
            200,
            "a pull of shell/hello"
        );
        assert_eq!(
            s.counter("flakeport_builds_succeeded_total{kind=\"packages\"}")
                .await,
            1,
            "package-path builds"
        );
        at_least(
            s.counter("flakeport_state_dir_bytes").await,
            1,
            "the state dir's size",
        );
        assert_eq!(
            s.counter("flakeport_builds_running").await,
            0,
            "builds running"
        );
        assert_eq!(
            s.counter("flakeport_images_in_progress").await,
            0,
            "images in progress"
        );
    }
}
