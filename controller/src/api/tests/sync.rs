//! Sync reports: counted once (deduplicated by proxy, instance and
//! sequence number), refused whole when malformed, and the held call.

use super::*;

#[tokio::test]
async fn sync_reports_and_dedup() {
    let app = with_deployment().await;
    let mut stats = coalmine_protocol::stats::RoleStats::try_new().unwrap();
    for _ in 0..25 {
        stats.record(coalmine_protocol::Outcome::Success, 12_000);
    }
    let report = RoleReport::from_stats("heart-prod", Role::Baseline, "v1", &stats);
    let body =
        json!({"proxy": "envoy-1", "instance": "w0", "seq": 1, "epoch": 0, "reports": [report]});
    let (status, resp) = call(&app, "POST", "/v1/sync", Some(SYNC), Some(body.clone())).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    assert_eq!(resp["lease_ms"], 30_000);
    assert_eq!(
        resp["table"]["deployments"][0]["baseline"]["cluster"],
        "heart-v1"
    );
    // The retry of the same report is not counted again.
    let (status, _) = call(&app, "POST", "/v1/sync", Some(SYNC), Some(body)).await;
    assert_eq!(status, StatusCode::OK);
    let (_, health) = call(&app, "GET", "/v1/deployments/heart-prod/health", None, None).await;
    assert_eq!(health["baseline"]["requests"], 25);
    assert_eq!(health["reasons"][0]["code"], "no_canary");

    let hostile = json!({"proxy": "envoy-1", "instance": "w0", "seq": 2, "epoch": 0, "reports": [{
        "deployment": "heart-prod", "role": "baseline", "version": "v1",
        "counts": {"2xx": 1}, "latency_us": "!!!"}]});
    assert_error(
        &call(&app, "POST", "/v1/sync", Some(SYNC), Some(hostile)).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "base64",
    );
    let negative = json!({"proxy": "p", "instance": "i", "seq": 1, "epoch": 0, "reports": [{
        "deployment": "heart-prod", "role": "baseline", "version": "v1", "counts": {"2xx": -5}, "latency_us": ""}]});
    assert_error(
        &call(&app, "POST", "/v1/sync", Some(SYNC), Some(negative)).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "2xx",
    );
    let held = json!({"proxy": "p", "instance": "i", "seq": 1, "epoch": 0, "reports": [report]});
    for (query, needle) in [
        ("?wait_ms=60001", "at most 60000"),
        ("?wait_ms=-1", "wait_ms"),
        ("?hold=5", "unknown field"),
    ] {
        let path = format!("/v1/sync{query}");
        assert_error(
            &call(&app, "POST", &path, Some(SYNC), Some(held.clone())).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
            needle,
        );
    }
    let (_, health) = call(&app, "GET", "/v1/deployments/heart-prod/health", None, None).await;
    assert_eq!(
        health["baseline"]["requests"], 25,
        "refused reports change nothing"
    );
    // A worker behind the table is answered at once, hold or not.
    let (status, resp) = call(
        &app,
        "POST",
        "/v1/sync?wait_ms=60000",
        Some(SYNC),
        Some(held),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    assert_eq!(resp["table"]["epoch"], 1);
}
