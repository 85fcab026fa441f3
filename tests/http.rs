//! HTTP-level end-to-end tests: the real flakeport binary, real Nix and
//! store, the offline test flake in a git repo (made by tests/lib.sh), and
//! reqwest. Each test runs its own server on its own state dir.
//!
//! They need Nix and a static busybox, so they are `#[ignore]`d for a bare
//! `cargo test`; scripts/test runs them with `--include-ignored`.
//! tests/e2e.sh drives the external clients (skopeo, umoci, containerd,
//! Docker).

use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

struct Fixture {
    /// The test flake: tag v1, then one more commit on main.
    repo: PathBuf,
    nonce: String,
    nix_config: String,
    root: PathBuf,
}

/// One fixture repo for every test in this process (the Nix builds of its
/// package set are shared through the store anyway).
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let dir = tempfile::Builder::new()
            .prefix("flakeport-http.")
            .tempdir()
            .unwrap()
            .keep();
        let registry = dir.join("empty-registry.json");
        std::fs::write(&registry, r#"{"flakes":[],"version":2}"#).unwrap();
        let nix_config = format!(
            "experimental-features = nix-command flakes\nsandbox = false\nsubstituters =\n\
             flake-registry = {}\nbuild-users-group =",
            registry.display()
        );
        let repo = dir.join("repo");
        let made = Command::new("bash")
            .args([
                "-c",
                ". \"$1/tests/lib.sh\"; make_fixture_repo \"$1\" \"$2\"",
                "_",
            ])
            .arg(&root)
            .arg(&repo)
            .status()
            .unwrap();
        assert!(made.success(), "make_fixture_repo failed");
        let nonce = std::fs::read_to_string(repo.join("nonce")).unwrap();
        Fixture {
            repo,
            nonce,
            nix_config,
            root,
        }
    })
}

struct Server {
    child: Child,
    base: String,
    state: PathBuf,
    log: PathBuf,
    http: reqwest::Client,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Start flakeport serving the fixture flake with `args`, on `state`.
async fn start(state: &Path, args: &[&str]) -> Server {
    let f = fixture();
    let port = free_port();
    let log = state.with_extension(format!("{port}.log"));
    // FLAKEPORT_BIN: another way to run it (tests/e2e.sh runs these tests
    // again with Debian 13's Nix, through a wrapper that enters its root).
    let bin =
        std::env::var_os("FLAKEPORT_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_flakeport").into());
    let child = Command::new(bin)
        .arg("serve")
        .arg(&f.repo)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--state-dir"])
        .arg(state)
        .args(args)
        .env("NIX_CONFIG", &f.nix_config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let server = Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
        state: state.to_path_buf(),
        log,
        http: reqwest::Client::new(),
    };
    for _ in 0..100 {
        if server.http.get(server.url("/v2/")).send().await.is_ok() {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("flakeport did not start: {}", server.log_text());
}

fn state_dir() -> PathBuf {
    tempfile::Builder::new()
        .prefix("flakeport-http-state.")
        .tempdir()
        .unwrap()
        .keep()
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut req = self.http.get(self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.unwrap()
    }

    async fn head(&self, path: &str) -> reqwest::Response {
        self.http.head(self.url(path)).send().await.unwrap()
    }

    /// GET that must answer 200; its body.
    async fn bytes(&self, path: &str) -> Vec<u8> {
        let r = self.get(path, &[]).await;
        let status = r.status();
        let body = r.bytes().await.unwrap().to_vec();
        assert_eq!(
            status,
            200,
            "GET {path}: {}",
            String::from_utf8_lossy(&body)
        );
        body
    }

    async fn manifest(&self, name: &str, tag: &str) -> Value {
        serde_json::from_slice(&self.bytes(&format!("/v2/{name}/manifests/{tag}")).await).unwrap()
    }

    async fn builds(&self) -> u64 {
        self.counter("flakeport_nix_builds_started_total").await
    }

    /// `nix eval`s started: how names are looked up (no build for a name
    /// that is no image).
    async fn evals(&self) -> u64 {
        self.counter("flakeport_processes_started_total{kind=\"eval\"}")
            .await
    }

    async fn counter(&self, series: &str) -> u64 {
        let text = String::from_utf8(self.bytes("/metrics").await).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in /metrics"))
            .parse()
            .unwrap()
    }

    /// Status and OCI error code of a failing request.
    async fn error(&self, path: &str) -> (StatusCode, String, String) {
        let r = self.get(path, &[]).await;
        let status = r.status();
        let body = r.bytes().await;
        let body: Value = match body
            .as_ref()
            .ok()
            .and_then(|b| serde_json::from_slice(b).ok())
        {
            Some(v) => v,
            None => panic!(
                "GET {path}: {status}, not an error body ({body:?}); log:\n{}",
                self.log_text()
            ),
        };
        let code = body["errors"][0]["code"].as_str().unwrap().to_string();
        let message = body["errors"][0]["message"].as_str().unwrap().to_string();
        (status, code, message)
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Wait up to `limit` for the process to exit; true if it did.
    fn exited_within(&mut self, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if self.child.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name)
        .unwrap_or_else(|| panic!("no {name} header in {h:?}"))
        .to_str()
        .unwrap()
}

fn layers(m: &Value) -> Vec<(String, u64)> {
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["digest"].as_str().unwrap().to_string(),
                l["size"].as_u64().unwrap(),
            )
        })
        .collect()
}

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

#[tokio::test]
#[ignore = "needs Nix; scripts/test runs it"]
async fn tags_list_pagination_edges() {
    let s = start(&state_dir(), &[]).await;
    let tags = |v: &Value| -> Vec<String> {
        v["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect()
    };
    // n=0: an empty list and no Link (distribution spec).
    let r = s.get("/v2/app/tags/list?n=0", &[]).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("link").is_none(), "n=0 has no Link");
    assert_eq!(tags(&r.json().await.unwrap()), Vec::<String>::new());
    // An exact fit: all three tags, no Link to an empty page.
    let r = s.get("/v2/app/tags/list?n=3", &[]).await;
    assert!(
        r.headers().get("link").is_none(),
        "an exact fit has no Link"
    );
    assert_eq!(tags(&r.json().await.unwrap()), ["latest", "main", "v1"]);
    // One short of a fit: a Link to the last one.
    let r = s.get("/v2/app/tags/list?n=2", &[]).await;
    assert_eq!(
        header(r.headers(), "link"),
        "</v2/app/tags/list?n=2&last=main>; rel=\"next\""
    );
    assert_eq!(tags(&r.json().await.unwrap()), ["latest", "main"]);
    // `last` past the end: empty, no Link.
    let r = s.get("/v2/app/tags/list?n=2&last=zzz", &[]).await;
    assert!(r.headers().get("link").is_none());
    assert_eq!(tags(&r.json().await.unwrap()), Vec::<String>::new());
    // Not a number, or negative: 400 in the registry's error format.
    for bad in ["abc", "-1", ""] {
        let (status, code, message) = s.error(&format!("/v2/app/tags/list?n={bad}")).await;
        assert_eq!(
            (status.as_u16(), code.as_str()),
            (400, "PAGINATION_NUMBER_INVALID"),
            "n={bad}"
        );
        assert!(message.contains("is not a number"), "{message}");
    }
    s.bytes("/v2/").await;
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

fn store_paths_ending(suffix: &str) -> Vec<PathBuf> {
    std::fs::read_dir("/nix/store")
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(suffix) && p.is_dir())
        .collect()
}

/// The one store path whose name ends with `suffix` (a nonce makes it unique).
fn glob_one(suffix: &str) -> PathBuf {
    let mut found = store_paths_ending(suffix);
    assert_eq!(
        found.len(),
        1,
        "store paths ending with {suffix}: {found:?}"
    );
    found.remove(0)
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

/// Processes whose working directory is a build directory of `name`:
/// (pid, directory).
fn builders_of(name: &str) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cwd) = std::fs::read_link(e.path().join("cwd")) {
            if cwd.to_string_lossy().contains(&format!("nix-build-{name}")) {
                found.push((pid, cwd.display().to_string()));
            }
        }
    }
    found
}

/// Stops, by PID, builders of `name` this test started and left behind
/// (only when the behaviour under test is broken).
struct StopBuilders(String);

impl Drop for StopBuilders {
    fn drop(&mut self) {
        for (pid, _) in builders_of(&self.0) {
            // SAFETY: kill(2) on a builder of this test's own derivation.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

#[tokio::test]
#[ignore = "needs Nix; scripts/test runs it"]
async fn sigterm_during_a_build_stops_nix_and_its_builder() {
    let mut s = start(&state_dir(), &["--shutdown-grace", "2"]).await;
    let stuck = format!("stuck-{}", fixture().nonce);
    let _cleanup = StopBuilders(stuck.clone());
    let client = s.http.clone();
    let url = s.url("/v2/stuck/manifests/latest");
    let pull = tokio::spawn(async move { client.get(url).send().await });
    let start = Instant::now();
    while builders_of(&stuck).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the builder never started"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // SAFETY: kill(2) on the server this test started.
    unsafe { libc::kill(s.pid(), libc::SIGTERM) };
    // The grace (2 s), then nix is interrupted and stops its builder.
    assert!(
        s.exited_within(Duration::from_secs(15)),
        "the server did not exit"
    );
    let _ = pull.await;
    let end = Instant::now() + Duration::from_secs(5);
    while !builders_of(&stuck).is_empty() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        builders_of(&stuck),
        Vec::<(i32, String)>::new(),
        "builders left running"
    );
    assert!(s.log_text().contains("stopping processes still running"));
}

#[tokio::test]
#[ignore = "needs Nix; scripts/test runs it"]
async fn a_stream_that_outlasts_the_shutdown_grace_is_cut() {
    let mut s = start(&state_dir(), &["--shutdown-grace", "1"]).await;
    let m = s.manifest("large", "latest").await;
    let (digest, size) = layers(&m).into_iter().max_by_key(|l| l.1).unwrap();
    assert!(size > 12 << 20);
    let out = s.state.join("slow.blob");
    // 12 MiB at 1 MiB/s: it would take 12 s.
    let mut slow = Command::new(fixture().root.join("tests/slow_client.py"))
        .arg(s.url(&format!("/v2/large/blobs/{digest}")))
        .arg(&out)
        .arg("1024")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        slow.try_wait().unwrap().is_none(),
        "the download is running"
    );
    let signalled = Instant::now();
    // SAFETY: kill(2) on the server this test started.
    unsafe { libc::kill(s.pid(), libc::SIGTERM) };
    assert!(
        s.exited_within(Duration::from_secs(5)),
        "the server outlived its grace"
    );
    let took = signalled.elapsed();
    let result = slow.wait_with_output().unwrap();
    assert!(!result.status.success(), "the download must be cut short");
    assert!(
        String::from_utf8_lossy(&result.stderr).contains("short body"),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(
        took >= Duration::from_millis(900),
        "exited before the grace: {took:?}"
    );
    assert!(std::fs::metadata(&out).unwrap().len() < size);
    assert!(s.log_text().contains("grace period over"));
}
