//! `--warm` and `POST /warm`: images built before their first pull.

use crate::harness::*;
use reqwest::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Nix; scripts/test runs it"]
async fn get_warm_is_400() {
    let s = in_process(&[]).await;
    assert_eq!(s.status(Method::GET, "/warm", &[]).await, 400, "GET /warm");
}

mod built {
    use crate::harness::*;
    use reqwest::Method;
    use std::process::Command;

    /// `flakeport warm --server URL ARGS...`: its exit status and stdout.
    fn warm_cli(s: &Server, args: &[&str]) -> (bool, String) {
        let out = Command::new(flakeport_bin())
            .args(["warm", "--server", &s.base])
            .args(args)
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8(out.stdout).unwrap())
    }

    #[tokio::test]
    #[ignore = "needs Nix; scripts/test runs it"]
    async fn warm_at_start_and_post_warm_build_before_the_first_pull() {
        let s = start(&state_dir(), &["--warm", "stock:v1,nosuch"]).await;
        // Built at start, with no pull.
        s.wait_for_log("warmed image=stock:v1", 60).await;
        s.wait_for_log("cannot warm image=nosuch", 60).await;
        // (nosuch is looked up by an evaluation and builds nothing)
        assert_eq!(s.builds().await, 1, "builds after warming");
        // The first pull finds it ready.
        assert_eq!(
            s.status(Method::GET, "/v2/stock/manifests/v1", &[]).await,
            200
        );
        assert_eq!(s.builds().await, 1, "builds after the first pull");
        // POST /warm: at once (202), or when ready (wait=1) with the digest
        // a pull then gets, or the error an unknown name gets.
        let r = s.post("/warm?image=plain:v1", &[], b"").await;
        assert_eq!(r.status(), 202, "POST /warm");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(strings(&body["warming"]), ["plain:v1"], "what is warming");
        let r = s
            .post("/warm?image=plain:v1&image=nosuch&wait=1", &[], b"")
            .await;
        assert!(r.status().is_success(), "POST /warm?wait=1: {}", r.status());
        let waited: serde_json::Value = r.json().await.unwrap();
        let pulled = s.get("/v2/plain/manifests/v1", &[]).await;
        assert_eq!(pulled.status(), 200);
        let want = header(pulled.headers(), "docker-content-digest").to_string();
        assert_eq!(
            waited["images"][0]["digest"], want,
            "the digest warm waited for: {waited}"
        );
        assert_eq!(
            waited["images"][1]["error"]["code"], "NAME_UNKNOWN",
            "the error of an unknown name: {waited}"
        );
        // The CLI: --wait prints each digest, and fails naming what failed.
        let (ok, out) = warm_cli(&s, &["--wait", "plain:v1"]);
        assert!(ok, "flakeport warm --wait: {out}");
        assert_eq!(
            out.trim_end(),
            format!("plain:v1 {want}"),
            "flakeport warm --wait"
        );
        let (ok, out) = warm_cli(&s, &["--wait", "plain:v1", "nosuch"]);
        assert!(!ok, "flakeport warm of an unknown name succeeded: {out}");
        assert!(
            out.lines()
                .any(|l| l.starts_with("nosuch:latest failed: NAME_UNKNOWN")),
            "flakeport warm of an unknown name: {out}"
        );
    }
}
