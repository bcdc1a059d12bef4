//! The dashboard's files and the headers that keep the page to itself.

use super::*;
use axum::http::HeaderMap;

async fn get(app: &Router, uri: &str) -> (StatusCode, HeaderMap, String) {
    let req = Request::builder().uri(uri).body(Body::empty()).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, headers, String::from_utf8(bytes.to_vec()).unwrap())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    let all: Vec<_> = headers.get_all(name).iter().collect();
    assert_eq!(all.len(), 1, "{name}: {all:?}");
    all[0].to_str().unwrap()
}

#[tokio::test]
async fn the_dashboard_is_served_with_its_policy() {
    let app = app().await;
    for (uri, content_type, holds) in [
        (
            "/",
            "text/html; charset=utf-8",
            "<script src=\"/dashboard.js\">",
        ),
        (
            "/dashboard.js",
            "text/javascript; charset=utf-8",
            "\"use strict\";",
        ),
        ("/dashboard.css", "text/css; charset=utf-8", ".split"),
    ] {
        let (status, headers, body) = get(&app, uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
        assert_eq!(header(&headers, "content-type"), content_type, "{uri}");
        assert!(body.contains(holds), "{uri} lacks {holds}");
        let csp = header(&headers, "content-security-policy");
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'none'",
        ] {
            assert!(csp.contains(directive), "{uri}: {csp} lacks {directive}");
        }
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(header(&headers, "x-frame-options"), "DENY", "{uri}");
        assert_eq!(header(&headers, "x-content-type-options"), "nosniff");
        assert_eq!(header(&headers, "referrer-policy"), "no-referrer");
    }
    // Nothing inline for the policy to refuse: no script or style in the
    // page, no handler or style attribute anywhere.
    let (_, _, page) = get(&app, "/").await;
    assert!(!page.contains("<script>") && !page.contains("<style"));
    let (_, _, script) = get(&app, "/dashboard.js").await;
    // The token is kept for the tab only; localStorage is only cleared.
    assert!(script.contains("sessionStorage.setItem") && !script.contains("localStorage.setItem"));
    for inline in [&page, &script] {
        assert!(!inline.contains("style=\""));
        assert!(!inline.contains(" onclick=\"") && !inline.contains(" onchange=\""));
    }
}

#[tokio::test]
async fn every_answer_refuses_frames_and_sniffing() {
    let app = app().await;
    for uri in [
        "/healthz",
        "/v1/deployments",
        "/v1/openapi.json",
        "/nowhere",
    ] {
        let (_, headers, _) = get(&app, uri).await;
        assert_eq!(header(&headers, "x-frame-options"), "DENY", "{uri}");
        assert_eq!(header(&headers, "x-content-type-options"), "nosniff");
    }
    // A change refused for its token is no exception.
    let req = Request::builder()
        .method("POST")
        .uri("/v1/deployments/heart-prod/pause")
        .body(Body::empty())
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(header(resp.headers(), "x-frame-options"), "DENY");
}
