//! `/v2/_catalog`: the flake's outputs in lexical order, paginated with
//! `n`, `last` and Link as the distribution spec describes.

use crate::harness::*;
use reqwest::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Nix; scripts/test runs it"]
async fn a_page_size_that_is_not_a_number_is_400() {
    let s = in_process(&[]).await;
    s.expect_error(
        Method::GET,
        "/v2/_catalog?n=x",
        400,
        "PAGINATION_NUMBER_INVALID",
        None,
    )
    .await;
}

mod built {
    use crate::harness::*;

    /// Walks the catalog `n` at a time by its Link headers, checking each
    /// page: at most `n` names, sorted, after the previous page's with no
    /// repeats, and a Link exactly when a page is full, naming `n` and the
    /// page's last name.
    async fn walk(s: &Server, n: usize) -> Vec<String> {
        let link_re =
            regex::Regex::new(r#"^<(/v2/_catalog\?n=(\d+)&last=([^>]+))>; rel="next"$"#).unwrap();
        let mut url = Some(format!("/v2/_catalog?n={n}"));
        let mut seen: Vec<String> = Vec::new();
        let mut pages = 0;
        while let Some(path) = url.take() {
            let r = s.get(&path, &[]).await;
            assert_eq!(r.status(), 200, "GET {path}");
            let link = r
                .headers()
                .get("link")
                .map(|l| l.to_str().unwrap().to_string());
            let page = strings(&r.json::<serde_json::Value>().await.unwrap()["repositories"]);
            pages += 1;
            assert!(page.len() <= n, "page of {} names for n={n}", page.len());
            if let (Some(last), Some(first)) = (seen.last(), page.first()) {
                assert!(first > last, "page starts at {first:?}, after {last:?}");
            }
            let mut sorted = page.clone();
            sorted.sort();
            assert_eq!(page, sorted, "page not sorted");
            seen.extend(page.iter().cloned());
            if let Some(link) = link {
                let m = link_re
                    .captures(&link)
                    .unwrap_or_else(|| panic!("Link {link:?}"));
                assert!(
                    m[2].parse::<usize>().unwrap() == n
                        && Some(&m[3]) == page.last().map(|p| p.as_str())
                        && page.len() == n,
                    "Link {link:?} after a page of {} ending {:?}",
                    page.len(),
                    page.last()
                );
                url = Some(m[1].to_string());
            }
            assert!(pages <= 1000, "more than 1000 pages");
        }
        seen
    }

    #[tokio::test]
    #[ignore = "needs Nix; scripts/test runs it"]
    async fn the_flakes_outputs_sorted_and_walked_by_link() {
        let s = start(&state_dir(), &[]).await;
        let all = strings(&s.json("/v2/_catalog").await["repositories"]);
        for name in ["app", "stock", "plain"] {
            assert!(
                all.iter().any(|n| n == name),
                "{name} in the catalog {all:?}"
            );
        }
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(sorted, all, "catalog order");
        assert_eq!(walk(&s, 3).await, all, "the catalog walked 3 at a time");
        assert_eq!(
            s.json("/v2/_catalog?n=0").await["repositories"],
            serde_json::json!([]),
            "n=0"
        );
    }
}
