//! A canary's whole life through the API: started, its traffic set,
//! paused, resumed, promoted and rolled back, the refusals on the way and
//! the timeline it leaves.

use super::*;

#[tokio::test]
async fn the_canary_lifecycle() {
    let app = with_deployment().await;
    let (status, d) = call(
        &app,
        "POST",
        "/v1/deployments/heart-prod/canary",
        Some(OP),
        Some(json!({"version": "v2", "percent": 20})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{d}");
    assert_eq!(
        (d["state"].as_str(), d["canary_percent"].as_f64()),
        (Some("canary"), Some(20.0))
    );
    assert_eq!(d["canary"]["next_step_percent"], 50.0);
    assert_error(
        &call(
            &app,
            "POST",
            "/v1/deployments/heart-prod/canary",
            Some(OP),
            Some(json!({"version": "v2"})),
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
        "already has canary v2",
    );
    for bad in [
        json!({"canary_percent": 101}),
        json!({"canary_percent": -1}),
    ] {
        assert_error(
            &call(
                &app,
                "PUT",
                "/v1/deployments/heart-prod/traffic",
                Some(OP),
                Some(bad),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "bad_request",
            "/canary_percent: ",
        );
    }
    let (status, d) = call(
        &app,
        "PUT",
        "/v1/deployments/heart-prod/traffic",
        Some(OP),
        Some(json!({"canary_percent": 35})),
    )
    .await;
    assert_eq!(
        (status, d["canary_percent"].as_f64()),
        (StatusCode::OK, Some(35.0))
    );
    let (status, d) = call(
        &app,
        "POST",
        "/v1/deployments/heart-prod/pause",
        Some(OP),
        None,
    )
    .await;
    assert_eq!(
        (status, d["state"].as_str()),
        (StatusCode::OK, Some("paused"))
    );
    assert_error(
        &call(
            &app,
            "POST",
            "/v1/deployments/heart-prod/pause",
            Some(OP),
            None,
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
        "already paused",
    );
    let (status, _) = call(
        &app,
        "POST",
        "/v1/deployments/heart-prod/resume",
        Some(OP),
        Some(json!({"reason": "checked"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, d) = call(
        &app,
        "POST",
        "/v1/deployments/heart-prod/promote",
        Some(OP),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (
            d["baseline"]["version"].as_str(),
            d["pinned"]["version"].as_str()
        ),
        (Some("v2"), Some("v1"))
    );
    let (status, d) = call(
        &app,
        "POST",
        "/v1/deployments/heart-prod/rollback",
        Some(OP),
        Some(json!({"reason": "bad outputs"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(d["baseline"]["version"], "v1");
    assert_error(
        &call(
            &app,
            "POST",
            "/v1/deployments/heart-prod/rollback",
            Some(OP),
            None,
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
        "nothing to roll back",
    );

    let (status, events) = call(&app, "GET", "/v1/deployments/heart-prod/events", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let kinds: Vec<_> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "deployment_created",
            "version_registered",
            "version_registered",
            "canary_started",
            "traffic_changed",
            "paused",
            "resumed",
            "promoted",
            "reverted_to_pinned"
        ]
    );
    assert_eq!(events[6]["reason"], "checked");
    assert_eq!(events[6]["actor"], "operator");
    let since = events[7]["id"].as_i64().unwrap();
    let (_, later) = call(
        &app,
        "GET",
        &format!("/v1/deployments/heart-prod/events?since={since}"),
        None,
        None,
    )
    .await;
    assert_eq!(later.as_array().unwrap().len(), 1);
    assert_error(
        &call(
            &app,
            "GET",
            "/v1/deployments/heart-prod/events?since=abc",
            None,
            None,
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "invalid query",
    );
    assert_error(
        &call(&app, "GET", "/v1/deployments/ghost/events", None, None).await,
        StatusCode::NOT_FOUND,
        "not_found",
        "ghost",
    );
}
