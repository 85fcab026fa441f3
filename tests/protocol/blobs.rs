//! `/v2/NAME/blobs/DIGEST`: GET, HEAD and Range, plain and compressed,
//! and what happens when the store changes under a known digest.

use crate::harness::*;
use reqwest::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Nix; scripts/test runs it"]
async fn a_malformed_digest_is_400_digest_invalid() {
    let s = in_process(&[]).await;
    s.expect_error(
        Method::GET,
        "/v2/app/blobs/sha256:1234",
        400,
        "DIGEST_INVALID",
        Some("sha256:<64"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Nix; scripts/test runs it"]
async fn a_digest_never_served_is_404_blob_unknown() {
    let s = in_process(&[]).await;
    s.expect_error(
        Method::GET,
        &format!("/v2/app/blobs/{}", zero_digest()),
        404,
        "BLOB_UNKNOWN",
        None,
    )
    .await;
}

mod built {
    use crate::harness::*;
    use std::path::Path;
    use std::process::{Command, Stdio};

    /// Range and HEAD on a blob: HEAD gives the length and digest without a
    /// body; two ranges concatenate to the whole; a suffix range; 416 past the end.
    async fn check_range_and_head(s: &Server, name: &str, digest: &str, size: u64) {
        let path = format!("/v2/{name}/blobs/{digest}");
        let whole = s.bytes(&path).await;
        assert_eq!(
            (whole.len() as u64, sha256(&whole)),
            (size, digest.to_string())
        );
        let head = s.head(&path).await;
        assert_eq!(head.status(), 200, "HEAD {path}");
        assert_eq!(header(head.headers(), "content-length"), size.to_string());
        assert_eq!(header(head.headers(), "docker-content-digest"), digest);
        assert!(head.bytes().await.unwrap().is_empty());
        let cut = size / 3;
        let first = s
            .get(&path, &[("range", &format!("bytes=0-{}", cut - 1))])
            .await;
        assert_eq!(first.status(), 206);
        assert_eq!(
            header(first.headers(), "content-range"),
            format!("bytes 0-{}/{size}", cut - 1)
        );
        let mut joined = first.bytes().await.unwrap().to_vec();
        let rest = s.get(&path, &[("range", &format!("bytes={cut}-"))]).await;
        assert_eq!(rest.status(), 206);
        assert_eq!(
            header(rest.headers(), "content-length"),
            (size - cut).to_string()
        );
        joined.extend_from_slice(&rest.bytes().await.unwrap());
        assert!(joined == whole, "ranges of {path} concatenate to the whole");
        let tail = s.get(&path, &[("range", "bytes=-5")]).await;
        assert_eq!(tail.status(), 206);
        assert_eq!(&tail.bytes().await.unwrap()[..], &whole[whole.len() - 5..]);
        let past = s.get(&path, &[("range", &format!("bytes={size}-"))]).await;
        assert_eq!(past.status(), 416, "a range past the end of {path}");
        assert_eq!(
            header(past.headers(), "content-range"),
            format!("bytes */{size}")
        );
    }

    /// A layer and the config of app: digest verified, exact length, Range
    /// pieces concatenate to the whole, a middle range, 416 past the end, HEAD.
    #[tokio::test]
    #[ignore = "needs Nix; scripts/test runs it"]
    async fn layer_and_config_digest_length_ranges_and_head() {
        let s = start(&state_dir(), &[]).await;
        let m = s.manifest("app", "latest").await;
        let (layer, size) = layers(&m).remove(0);
        let config = m["config"]["digest"].as_str().unwrap();
        assert!(
            size > 100_000,
            "layer of {size} bytes: too small for the range checks"
        );
        let path = format!("/v2/app/blobs/{layer}");
        let r = s.get(&path, &[]).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(r.headers(), "docker-content-digest"), layer);
        assert_eq!(header(r.headers(), "content-length"), size.to_string());
        let blob = r.bytes().await.unwrap().to_vec();
        assert_eq!(sha256(&blob), layer, "sha256 of the layer blob");
        assert_eq!(blob.len() as u64, size, "blob size");
        // Ranges: pieces concatenate to the whole; a range past the end is 416.
        let first = s.get(&path, &[("range", "bytes=0-99999")]).await;
        assert_eq!(first.status(), 206);
        let mut joined = first.bytes().await.unwrap().to_vec();
        let rest = s.get(&path, &[("range", "bytes=100000-")]).await;
        assert_eq!(rest.status(), 206);
        joined.extend_from_slice(&rest.bytes().await.unwrap());
        assert!(joined == blob, "ranges concatenate to the whole");
        let mid = s.get(&path, &[("range", "bytes=100-199")]).await;
        assert_eq!(mid.status(), 206, "status of a Range GET");
        assert_eq!(
            header(mid.headers(), "content-range"),
            format!("bytes 100-199/{size}")
        );
        assert_eq!(header(mid.headers(), "content-length"), "100");
        assert_eq!(&mid.bytes().await.unwrap()[..], &blob[100..200]);
        let past = s.get(&path, &[("range", &format!("bytes={size}-"))]).await;
        assert_eq!(past.status(), 416, "status of a range past the end");
        let head = s.head(&path).await;
        assert_eq!(head.status(), 200, "status of HEAD");
        assert_eq!(header(head.headers(), "content-length"), size.to_string());
        let cfg = s.bytes(&format!("/v2/app/blobs/{config}")).await;
        assert_eq!(sha256(&cfg), config, "sha256 of the config blob");
    }

    #[tokio::test]
    #[ignore = "needs Nix; scripts/test runs it"]
    async fn range_and_head_on_json_blobs_and_a_conf_layer_tar() {
        let s = start(&state_dir(), &[]).await;
        let m = s.manifest("stock", "latest").await;
        let config = m["config"]["digest"].as_str().unwrap();
        let config_size = m["config"]["size"].as_u64().unwrap();
        check_range_and_head(&s, "stock", config, config_size).await;
        // The customisation layer is nixpkgs' layer.tar, served byte for byte:
        // the last layer of the image.
        let (tar, size) = layers(&m).pop().unwrap();
        let bytes = s.bytes(&format!("/v2/stock/blobs/{tar}")).await;
        let verbatim = store_paths_ending("-stock-customisation-layer")
            .iter()
            .any(|p| std::fs::read(p.join("layer.tar")).ok().as_ref() == Some(&bytes));
        assert!(verbatim, "the last layer is the conf's layer.tar, verbatim");
        check_range_and_head(&s, "stock", &tar, size).await;
    }

    #[tokio::test]
    #[ignore = "needs Nix; scripts/test runs it"]
    async fn compressed_blobs_range_head_eviction_and_restarts() {
        let state = state_dir();
        // A bound of 0 keeps only the blob just compressed.
        let s = start(
            &state,
            &["--compression", "gzip", "--compressed-cache-mib", "0"],
        )
        .await;
        let m = s.manifest("app", "latest").await;
        let app = layers(&m);
        assert!(app.len() >= 2);
        for (digest, size) in &app {
            check_range_and_head(&s, "app", digest, *size).await;
        }
        // Another image's layers push app's out of the cache...
        let other = layers(&s.manifest("other", "latest").await);
        let (evicted, size) = app.iter().find(|l| !other.contains(l)).unwrap();
        let file = state
            .join("gzip")
            .join(evicted.trim_start_matches("sha256:"));
        assert!(!file.exists(), "{evicted} was evicted");
        // ...and a HEAD of an evicted blob still knows its length.
        let head = s.head(&format!("/v2/app/blobs/{evicted}")).await;
        assert_eq!(head.status(), 200);
        assert_eq!(header(head.headers(), "content-length"), size.to_string());
        check_range_and_head(&s, "app", evicted, *size).await;
        drop(s);

        // Restarted with --compression on the same state: every blob answers
        // without a build.
        let s = start(&state, &["--compression", "gzip"]).await;
        for (digest, size) in &app {
            let body = s.bytes(&format!("/v2/app/blobs/{digest}")).await;
            assert_eq!((body.len() as u64, sha256(&body)), (*size, digest.clone()));
        }
        assert_eq!(s.builds().await, 0);
        drop(s);

        // Restarted without it: compressed blobs are not served (the server
        // would have to compress them), so they are unknown; the same
        // image's uncompressed manifest has other layer digests.
        let s = start(&state, &[]).await;
        let (status, code, _) = s.error(&format!("/v2/app/blobs/{evicted}")).await;
        assert_eq!((status.as_u16(), code.as_str()), (404, "BLOB_UNKNOWN"));
        let plain = layers(&s.manifest("app", "latest").await);
        assert!(plain.iter().all(|l| !app.contains(l)));
    }

    /// `chmod -R u+w` a store path so a test can change it; `nix-store
    /// --repair-path` puts it back afterwards.
    fn make_writable(p: &Path) {
        let ok = Command::new("chmod")
            .arg("-R")
            .arg("u+w")
            .arg(p)
            .status()
            .unwrap();
        assert!(ok.success());
    }

    fn repair(p: &Path) {
        let ok = Command::new("nix-store")
            .arg("--repair-path")
            .arg(p)
            .env("NIX_CONFIG", &fixture().nix_config)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success(), "nix-store --repair-path {}", p.display());
    }

    #[tokio::test]
    #[ignore = "needs Nix; scripts/test runs it"]
    async fn store_paths_changed_between_the_digest_pass_and_a_get() {
        let s = start(&state_dir(), &[]).await;
        let nonce = &fixture().nonce;
        for (name, change, logged) in [
            (
                "resized",
                "grow a file",
                "layer size changed; dropping digest",
            ),
            (
                "vanishing",
                "remove the path",
                "cannot scan layer; dropping digest",
            ),
        ] {
            let m = s.manifest(name, "latest").await;
            let path = glob_one(&format!("-{name}-{nonce}"));
            // The layer that holds the path's file.
            let mut target = None;
            for (d, _) in layers(&m) {
                let body = s.bytes(&format!("/v2/{name}/blobs/{d}")).await;
                if body
                    .windows(name.len() + 1)
                    .any(|w| w == format!("{name}\n").as_bytes())
                {
                    target = Some(d);
                }
            }
            let target = target.expect("a layer holds the data file");
            // `s` has scanned that layer for the GETs above; a second server on
            // the same state dir knows the digest from the index only, and
            // sees the store as it is at its GET.
            make_writable(&path);
            match change {
                "grow a file" => {
                    let mut f = std::fs::OpenOptions::new()
                        .append(true)
                        .open(path.join("share/data"))
                        .unwrap();
                    // Past the next 10240-byte record: the tar's size changes.
                    std::io::Write::write_all(&mut f, &[b'x'; 20_000]).unwrap();
                }
                _ => std::fs::remove_dir_all(&path).unwrap(),
            }
            let fresh = start(&s.state, &[]).await;
            let (status, code, _) = fresh.error(&format!("/v2/{name}/blobs/{target}")).await;
            assert_eq!(
                (status.as_u16(), code.as_str()),
                (404, "BLOB_UNKNOWN"),
                "{change}"
            );
            // A vanished path may be found by the GET's scan or, first, by the
            // sweep at start, which drops index lines of paths that are gone.
            let log = fresh.log_text();
            assert!(
                log.contains(logged)
                    || (change == "remove the path" && !log.contains("layers_dropped: 0")),
                "{change}: {log}"
            );
            // Dropped for good: a second GET does not scan again.
            let (status, _, _) = fresh.error(&format!("/v2/{name}/blobs/{target}")).await;
            assert_eq!(status, 404);
            repair(&path);
            // The next pull digests the store as it is now and serves it.
            let again = fresh.manifest(name, "latest").await;
            for (d, size) in layers(&again) {
                let body = fresh.bytes(&format!("/v2/{name}/blobs/{d}")).await;
                assert_eq!((body.len() as u64, sha256(&body)), (size, d));
            }
            drop(fresh);
        }
    }
}
