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

#[tokio::test]
async fn an_operator_lifts_the_bar_on_a_rolled_back_version() {
    let app = with_deployment().await;
    let post = |path: &'static str, body: Value| {
        let app = app.clone();
        async move {
            let uri = format!("/v1/deployments/heart-prod/{path}");
            call(&app, "POST", &uri, Some(OP), Some(body)).await
        }
    };
    let (status, _) = post("canary", json!({"version": "v2", "percent": 10})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = post("rollback", json!({"reason": "bad outputs"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_error(
        &post("shadow", json!({"version": "v2"})).await,
        StatusCode::CONFLICT,
        "conflict",
        "lift the bar",
    );
    let unbar = json!({"version": "v2", "reason": "the feature store was down"});
    assert_error(
        &call(
            &app,
            "POST",
            "/v1/deployments/heart-prod/unbar",
            None,
            Some(unbar.clone()),
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "operator token",
    );
    for (body, contains) in [
        (json!({"version": "v2"}), "reason"),
        (json!({"version": "v2", "reason": ""}), "/reason"),
        (json!({"version": "v2", "reason": "  "}), "reason"),
    ] {
        assert_error(
            &post("unbar", body).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
            contains,
        );
    }
    assert_error(
        &post("unbar", json!({"version": "v9", "reason": "x"})).await,
        StatusCode::CONFLICT,
        "conflict",
        "v9 is not registered",
    );
    assert_error(
        &post("unbar", json!({"version": "v1", "reason": "x"})).await,
        StatusCode::CONFLICT,
        "conflict",
        "not barred",
    );
    let (status, v) = post("unbar", unbar.clone()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        (v["state"].as_str(), v["healthy"].as_bool()),
        (Some("registered"), Some(true))
    );
    assert_error(
        &post("unbar", unbar).await,
        StatusCode::CONFLICT,
        "conflict",
        "not barred",
    );
    // The cooldown after the rollback still holds.
    assert_error(
        &post("canary", json!({"version": "v2"})).await,
        StatusCode::CONFLICT,
        "conflict",
        "cooling down",
    );
    let (_, events) = call(&app, "GET", "/v1/deployments/heart-prod/events", None, None).await;
    let last = events.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["kind"], "version_unbarred");
    assert_eq!(last["actor"], "operator");
    assert_eq!(last["numbers"]["was"], "rolled_back");
    assert!(
        last["reason"]
            .as_str()
            .unwrap()
            .contains("the feature store was down"),
        "{last}"
    );
}
