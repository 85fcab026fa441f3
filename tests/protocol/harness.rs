//! Shared by every endpoint file: the offline fixture flake, servers on it
//! (in process or the real binary), HTTP helpers and the error contract.

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct Fixture {
    /// The test flake: tag v1, then one more commit on main.
    pub repo: PathBuf,
    pub nonce: String,
    pub nix_config: String,
    pub root: PathBuf,
}

/// One fixture repo for every test in this process (the Nix builds of its
/// package set are shared through the store anyway).
pub fn fixture() -> &'static Fixture {
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
        // An in-process server runs `nix --version` (and git) as children of
        // this process, which inherit its environment: they must see the
        // offline settings too, or Nix would wait on cache.nixos.org. Set
        // once, here, before any server starts; std serialises env access.
        std::env::set_var("NIX_CONFIG", &nix_config);
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

/// How a server runs: the real binary (a child we kill), or the library's
/// server in this process (stopped through its shutdown future).
enum Running {
    Binary(Child),
    InProcess(Option<tokio::sync::oneshot::Sender<()>>),
}

pub struct Server {
    running: Running,
    pub base: String,
    pub state: PathBuf,
    log: Option<PathBuf>,
    pub http: reqwest::Client,
}

impl Drop for Server {
    fn drop(&mut self) {
        match &mut self.running {
            Running::Binary(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Running::InProcess(stop) => {
                if let Some(stop) = stop.take() {
                    let _ = stop.send(());
                }
            }
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn state_dir() -> PathBuf {
    tempfile::Builder::new()
        .prefix("flakeport-http-state.")
        .tempdir()
        .unwrap()
        .keep()
}

/// The binary under test. FLAKEPORT_BIN: another way to run it (tests/e2e.sh
/// runs the `built::` tests again with Debian 13's Nix, through a wrapper
/// that enters its root).
pub fn flakeport_bin() -> std::ffi::OsString {
    std::env::var_os("FLAKEPORT_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_flakeport").into())
}

/// Whether the server gets the fixture flake, or only `--packages`.
#[derive(Clone, Copy, PartialEq)]
pub enum Flake {
    Fixture,
    None,
}

/// The real binary serving the fixture flake with `args`, on `state`: for
/// every check that runs Nix beyond `nix --version`.
pub async fn start(state: &Path, args: &[&str]) -> Server {
    start_binary(Flake::Fixture, state, args).await
}

pub async fn start_binary(flake: Flake, state: &Path, args: &[&str]) -> Server {
    let f = fixture();
    let port = free_port();
    let log = state.with_extension(format!("{port}.log"));
    let mut cmd = Command::new(flakeport_bin());
    cmd.arg("serve");
    if flake == Flake::Fixture {
        cmd.arg(&f.repo);
    }
    let child = cmd
        .args(["--listen", &format!("127.0.0.1:{port}"), "--state-dir"])
        .arg(state)
        .args(args)
        .env("NIX_CONFIG", &f.nix_config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut server = Server {
        running: Running::Binary(child),
        base: format!("http://127.0.0.1:{port}"),
        state: state.to_path_buf(),
        log: Some(log),
        http: reqwest::Client::new(),
    };
    for _ in 0..100 {
        // A binary that exits at once (a broken FLAKEPORT_BIN) fails now,
        // not after the 10 s a slow start may take.
        if let Running::Binary(child) = &mut server.running {
            if let Some(exit) = child.try_wait().unwrap() {
                panic!("flakeport exited at start ({exit}): {}", server.log_text());
            }
        }
        // /healthz: open with auth on.
        if server.http.get(server.url("/healthz")).send().await.is_ok() {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("flakeport did not start: {}", server.log_text());
}

/// The library's server in this process, on a state dir of its own, for
/// checks that need no Nix but `nix --version` (validation, auth, static
/// pages, error replies). Stopped when the `Server` is dropped.
pub async fn in_process(args: &[&str]) -> Server {
    in_process_with(Flake::Fixture, args).await
}

pub async fn in_process_with(flake: Flake, args: &[&str]) -> Server {
    let f = fixture();
    let state = state_dir();
    let mut argv: Vec<String> = vec!["flakeport".into()];
    if flake == Flake::Fixture {
        argv.push(f.repo.display().to_string());
    }
    argv.extend([
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--state-dir".into(),
    ]);
    argv.push(state.display().to_string());
    argv.extend(args.iter().map(|a| a.to_string()));
    let opts = flakeport::app::ServeOptions::parse_from(argv).unwrap();
    let prepared = flakeport::app::prepare(opts).await.unwrap();
    let addr = prepared.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(prepared.run(async move {
        let _ = stopped.await;
    }));
    Server {
        running: Running::InProcess(Some(stop)),
        base: format!("http://{addr}"),
        state,
        log: None,
        http: reqwest::Client::new(),
    }
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The binary's log (an in-process server logs nowhere).
    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|l| std::fs::read_to_string(l).ok())
            .unwrap_or_default()
    }

    /// Wait up to `secs` for a line of the log containing `text`.
    pub async fn wait_for_log(&self, text: &str, secs: u64) {
        let end = Instant::now() + Duration::from_secs(secs);
        while !self.log_text().contains(text) {
            assert!(
                Instant::now() < end,
                "no {text:?} in the log after {secs} s:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut req = self.http.request(method, self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.unwrap()
    }

    /// POST of `body` with `headers`.
    pub async fn post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> reqwest::Response {
        let mut req = self.http.post(self.url(path)).body(body.to_vec());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.unwrap()
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        self.request(Method::GET, path, headers).await
    }

    pub async fn head(&self, path: &str) -> reqwest::Response {
        self.request(Method::HEAD, path, &[]).await
    }

    pub async fn status(&self, method: Method, path: &str, headers: &[(&str, &str)]) -> u16 {
        self.request(method, path, headers).await.status().as_u16()
    }

    /// GET that must answer 200; its body.
    pub async fn bytes(&self, path: &str) -> Vec<u8> {
        self.bytes_with(path, &[]).await
    }

    pub async fn bytes_with(&self, path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
        let r = self.get(path, headers).await;
        let status = r.status();
        let body = r.bytes().await.unwrap().to_vec();
        assert_eq!(
            status,
            200,
            "GET {path}: {}; log:\n{}",
            String::from_utf8_lossy(&body),
            self.log_text()
        );
        body
    }

    pub async fn json(&self, path: &str) -> Value {
        serde_json::from_slice(&self.bytes(path).await).unwrap()
    }

    pub async fn manifest(&self, name: &str, tag: &str) -> Value {
        self.json(&format!("/v2/{name}/manifests/{tag}")).await
    }

    /// The image config's `GREETING=` entry of Env, as `skopeo inspect`
    /// showed it: which revision of the flake the image was built from.
    pub async fn greeting(&self, name: &str, tag: &str) -> String {
        let m = self.manifest(name, tag).await;
        let config = m["config"]["digest"].as_str().unwrap();
        let c = self.json(&format!("/v2/{name}/blobs/{config}")).await;
        c["config"]["Env"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e.as_str())
            .find(|e| e.starts_with("GREETING"))
            .unwrap_or_else(|| panic!("no GREETING in {c}"))
            .to_string()
    }

    /// `nix build`s started.
    pub async fn builds(&self) -> u64 {
        self.counter("flakeport_nix_builds_started_total").await
    }

    /// `nix eval`s started: how names are looked up (no build for a name
    /// that is no image).
    pub async fn evals(&self) -> u64 {
        self.counter("flakeport_processes_started_total{kind=\"eval\"}")
            .await
    }

    pub async fn counter(&self, series: &str) -> u64 {
        self.counter_with(series, &[]).await
    }

    /// A sample of /metrics (`headers`: credentials, when it is protected).
    pub async fn counter_with(&self, series: &str, headers: &[(&str, &str)]) -> u64 {
        let text = String::from_utf8(self.bytes_with("/metrics", headers).await).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in /metrics:\n{text}"))
            .parse()
            .unwrap()
    }

    /// Status, OCI error code and message of a failing GET.
    pub async fn error(&self, path: &str) -> (StatusCode, String, String) {
        let (status, body) = self.error_body(Method::GET, path).await;
        let code = body["errors"][0]["code"].as_str().unwrap().to_string();
        let message = body["errors"][0]["message"].as_str().unwrap().to_string();
        (status, code, message)
    }

    async fn error_body(&self, method: Method, path: &str) -> (StatusCode, Value) {
        let r = self.request(method.clone(), path, &[]).await;
        let status = r.status();
        let body = r.bytes().await;
        match body
            .as_ref()
            .ok()
            .and_then(|b| serde_json::from_slice(b).ok())
        {
            Some(v) => (status, v),
            None => panic!(
                "{method} {path}: {status}, not an error body ({body:?}); log:\n{}",
                self.log_text()
            ),
        }
    }

    /// The error contract of design.md: `method path` answers `status` with
    /// the OCI error `code` (and, if given, a body matching the regex
    /// `body_re`); the server still answers afterwards.
    pub async fn expect_error(
        &self,
        method: Method,
        path: &str,
        status: u16,
        code: &str,
        body_re: Option<&str>,
    ) {
        let r = self.request(method.clone(), path, &[]).await;
        let got = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(got, status, "status of {method} {path} ({text})");
        if method != Method::HEAD {
            let body: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"));
            assert_eq!(
                body["errors"][0]["code"].as_str(),
                Some(code),
                "OCI error code of {method} {path}: {text}"
            );
            if let Some(re) = body_re {
                assert!(
                    regex::Regex::new(re).unwrap().is_match(&text),
                    "message of {method} {path}: no match for {re:?} in {text}"
                );
            }
        }
        self.healthy().await;
    }

    /// The registry still answers (/healthz: open with auth on too).
    pub async fn healthy(&self) {
        let r = self.get("/healthz", &[]).await;
        assert_eq!(r.status(), 200, "the server no longer answers");
    }

    pub fn pid(&self) -> i32 {
        match &self.running {
            Running::Binary(child) => child.id() as i32,
            Running::InProcess(_) => panic!("an in-process server has no pid of its own"),
        }
    }

    /// Wait up to `limit` for the process to exit; true if it did.
    pub fn exited_within(&mut self, limit: Duration) -> bool {
        let Running::Binary(child) = &mut self.running else {
            panic!("an in-process server does not exit");
        };
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if child.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A digest no image has: sha256 of 64 zeros as hex digits.
pub fn zero_digest() -> String {
    format!("sha256:{}", "0".repeat(64))
}

pub fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name)
        .unwrap_or_else(|| panic!("no {name} header in {h:?}"))
        .to_str()
        .unwrap()
}

pub fn layers(m: &Value) -> Vec<(String, u64)> {
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

pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

/// `git -C REPO rev-parse REV` in the fixture repo.
pub fn rev_parse(rev: &str) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(&fixture().repo)
        .args(["rev-parse", rev])
        .output()
        .unwrap();
    assert!(out.status.success(), "git rev-parse {rev}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `nix --version`'s number, as the server finds it at start.
pub fn nix_version() -> String {
    let out = Command::new("nix").arg("--version").output().unwrap();
    let line = String::from_utf8(out.stdout).unwrap();
    let first = line.lines().next().unwrap_or_default();
    first.rsplit(' ').next().unwrap().to_string()
}

pub fn store_paths_ending(suffix: &str) -> Vec<PathBuf> {
    std::fs::read_dir("/nix/store")
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(suffix) && p.is_dir())
        .collect()
}

/// The one store path whose name ends with `suffix` (a nonce makes it unique).
pub fn glob_one(suffix: &str) -> PathBuf {
    let mut found = store_paths_ending(suffix);
    assert_eq!(
        found.len(),
        1,
        "store paths ending with {suffix}: {found:?}"
    );
    found.remove(0)
}
