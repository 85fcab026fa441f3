//! `/v2/NAME/tags/list`: latest, branches and tags of the flake's repo,
//! paginated with `n`, `last` and Link.

mod built {
    use crate::harness::*;
    use reqwest::Method;
    use serde_json::Value;

    fn tags(v: &Value) -> Vec<String> {
        strings(&v["tags"])
    }

    #[tokio::test]
    #[ignore = "needs Nix; scripts/test runs it"]
    async fn latest_branches_and_tags_paginated_with_link() {
        let s = start(&state_dir(), &[]).await;
        assert_eq!(
            tags(&s.json("/v2/app/tags/list").await),
            ["latest", "main", "v1"],
            "all tags"
        );
        let r = s.get("/v2/app/tags/list?n=1", &[]).await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            header(r.headers(), "link"),
            "</v2/app/tags/list?n=1&last=latest>; rel=\"next\""
        );
        assert_eq!(
            tags(&r.json().await.unwrap()),
            ["latest"],
            "first page of 1"
        );
        assert_eq!(
            tags(&s.json("/v2/app/tags/list?n=5&last=main").await),
            ["v1"],
            "page after main"
        );
        s.expect_error(Method::GET, "/v2/appp/tags/list", 404, "NAME_UNKNOWN", None)
            .await;
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
}
