//! The post-promotion watch as the API shows it: an operator's promotion
//! starts it with the old baseline's window, health and the deployment show
//! it, and an operator's rollback ends it.

use super::*;

#[tokio::test]
async fn a_promotion_is_watched_against_the_old_baselines_window() {
    let app = with_deployment().await;
    let mut stats = coalmine_protocol::stats::RoleStats::try_new().unwrap();
    for i in 0..40 {
        let outcome = if i < 2 {
            coalmine_protocol::Outcome::ServerError
        } else {
            coalmine_protocol::Outcome::Success
        };
        stats.record(outcome, 12_000);
    }
    let report = RoleReport::from_stats("heart-prod", Role::Baseline, "v1", &stats);
    let body =
        json!({"proxy": "envoy-1", "instance": "w0", "seq": 1, "epoch": 0, "reports": [report]});
    let (status, _) = call(&app, "POST", "/v1/sync", Some(SYNC), Some(body)).await;
    assert_eq!(status, StatusCode::OK);
    let canary = json!({"version": "v2"});
    let path = "/v1/deployments/heart-prod";
    let (status, _) = call(
        &app,
        "POST",
        &format!("{path}/canary"),
        Some(OP),
        Some(canary),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, d) = call(&app, "POST", &format!("{path}/promote"), Some(OP), None).await;
    assert_eq!(status, StatusCode::OK, "{d}");
    let w = &d["health"]["watch"];
    assert_eq!(w["version"], "v2", "{d}");
    assert_eq!(w["reference"]["version"], "v1");
    assert_eq!(w["reference"]["requests"], 40);
    assert_eq!(w["reference"]["error_rate"], 0.05);
    assert_eq!(
        w["until"].as_u64().unwrap() - w["since"].as_u64().unwrap(),
        600_000
    );
    assert_eq!(w["verdict"], "INSUFFICIENT_DATA");
    assert_eq!(w["current"]["requests"], 0);
    let (_, health) = call(&app, "GET", &format!("{path}/health"), None, None).await;
    assert_eq!(health["watch"]["version"], "v2");
    // An operator's revert ends it.
    let (status, d) = call(&app, "POST", &format!("{path}/rollback"), Some(OP), None).await;
    assert_eq!(status, StatusCode::OK, "{d}");
    assert_eq!(d["baseline"]["version"], "v1");
    assert_eq!(d["health"]["watch"], Value::Null);
}
