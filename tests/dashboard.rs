//! The embedded dashboard: `/` and `/assets/{file}` with types, CSP and revalidation.
//! (The real-browser test is `tests/browser/run.sh`.)

mod common;

use common::TestServer;

#[tokio::test]
async fn dashboard_is_served_from_the_binary_with_strict_headers() {
    let s = TestServer::start("", "[pipelines.echo]\ncommand = [\"echo\"]\n").await;
    let res = s.http.get(format!("{}/", s.base)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let h = res.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["cache-control"], "no-cache");
    let body = res.text().await.unwrap();
    assert!(body.contains("/assets/app.js"), "{body}");
    assert!(
        !body.contains("<style") && !body.contains("onclick="),
        "no inline styles or handlers"
    );

    for (file, ty) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("logview.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
    ] {
        let res = s
            .http
            .get(format!("{}/assets/{file}", s.base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{file}");
        assert_eq!(res.headers()["content-type"], ty, "{file}");
        assert!(res.headers().contains_key("content-security-policy"));
        let etag = res.headers()["etag"].clone();
        let again = s
            .http
            .get(format!("{}/assets/{file}", s.base))
            .header("if-none-match", etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{file} revalidates");
    }

    let (status, body) = s.get("/assets/..%2Fsrc%2Fmain.rs").await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].is_string());
    let (status, _) = s.get("/assets/nope.js").await;
    assert_eq!(status, 404);
    // The API is unchanged next to it.
    let (status, _) = s.get("/api/pipelines").await;
    assert_eq!(status, 200);
    s.stop().await;
}
