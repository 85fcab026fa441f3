//! The web pages over HTTP (what they do in a browser is checked with
//! Chromium in tests/e2e.sh, `t_web`).

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Nix; scripts/test runs it"]
async fn the_home_page_names_the_nix_builds_run() {
    let s = in_process(&[]).await;
    let home = String::from_utf8(s.bytes("/").await).unwrap();
    let want = format!("Builds run Nix {}", nix_version());
    assert!(
        home.lines().any(|l| l.contains(&want)),
        "the home page lacks {want:?}:\n{home}"
    );
    // Words a reader sees are not the code's names for things.
    assert!(
        home.contains("<h2>Images</h2>"),
        "no Images heading:\n{home}"
    );
}
