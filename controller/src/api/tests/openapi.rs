//! The OpenAPI document: it covers every route, and request bodies are
//! held to it.

use super::*;

#[tokio::test]
async fn the_openapi_document_covers_every_route() {
    let app = app().await;
    let (status, doc) = call(&app, "GET", "/v1/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    let mut documented: Vec<String> = Vec::new();
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            documented.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    documented.sort();
    let mut expected = vec![
        "GET /",
        "GET /dashboard.js",
        "GET /dashboard.css",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
        "GET /v1/deployments",
        "POST /v1/deployments",
        "GET /v1/deployments/{name}",
        "GET /v1/deployments/{name}/versions",
        "POST /v1/deployments/{name}/versions",
        "POST /v1/deployments/{name}/canary",
        "POST /v1/deployments/{name}/shadow",
        "DELETE /v1/deployments/{name}/shadow",
        "PUT /v1/deployments/{name}/traffic",
        "POST /v1/deployments/{name}/pause",
        "POST /v1/deployments/{name}/resume",
        "POST /v1/deployments/{name}/promote",
        "POST /v1/deployments/{name}/rollback",
        "POST /v1/deployments/{name}/unbar",
        "GET /v1/deployments/{name}/health",
        "GET /v1/deployments/{name}/events",
        "GET /v1/deployments/{name}/history",
        "GET /v1/deployments/{name}/policy",
        "PUT /v1/deployments/{name}/policy",
        "POST /v1/sync",
        "POST /v1/deployments/{name}/feedback",
    ];
    expected.sort();
    assert_eq!(documented, expected);

    // Changes need the operator token, sync its own; reads need none.
    let op = |m: &str, p: &str| doc["paths"][p][m].clone();
    assert_eq!(
        op("post", "/v1/deployments")["security"],
        json!([{"operator_token": []}])
    );
    assert_eq!(
        op("post", "/v1/sync")["security"],
        json!([{"sync_token": []}])
    );
    assert!(op("get", "/v1/deployments")["security"].is_null());
    assert_eq!(
        op("post", "/v1/deployments/{name}/feedback")["security"],
        json!([{"feedback_token": []}, {"operator_token": []}])
    );
    for method in ["post", "delete"] {
        let shadow = op(method, "/v1/deployments/{name}/shadow");
        assert_eq!(
            shadow["security"],
            json!([{"operator_token": []}]),
            "{method}"
        );
        assert!(shadow["responses"]["409"].is_object(), "{method}");
    }
    let schemas = &doc["components"]["schemas"];
    let start_shadow = &schemas["StartShadow"]["properties"]["percent"];
    assert_eq!(
        (&start_shadow["exclusiveMinimum"], &start_shadow["maximum"]),
        (&json!(0), &json!(100))
    );
    assert_eq!(schemas["StartShadow"]["required"], json!(["version"]));
    // Health shows the shadow beside the roles; the policy has its rule.
    assert!(schemas["Health"]["properties"]["shadow"].is_object());
    for field in [
        "version", "percent", "fields", "verdict", "skipped", "p99_ms",
    ] {
        assert!(
            schemas["ShadowHealth"]["properties"][field].is_object(),
            "{field}"
        );
    }
    assert!(schemas["ShadowField"]["properties"]["upper"].is_object());
    assert!(schemas["ShadowField"]["properties"]["standing"].is_object());
    assert_eq!(
        schemas["Standing"]["enum"],
        json!(["collecting", "agrees", "unproven", "below"])
    );
    assert!(schemas["ShadowVerdict"].is_object());
    assert!(schemas["Policy"]["properties"]["shadow"].is_object());
    assert!(schemas["ShadowRule"]["properties"]["min_agreement"].is_object());
    assert!(schemas["DeploymentView"]["properties"]["shadow"].is_object());
    assert!(schemas["SyncRequest"]["properties"]["shadow"].is_object());
    let feedback = &doc["components"]["schemas"]["FeedbackBatch"]["properties"];
    assert_eq!(feedback["observations"]["maxItems"], json!(10_000));
    // Every /v1 operation documents its errors as {error, message}.
    for (path, item) in paths.iter().filter(|(p, _)| p.starts_with("/v1/")) {
        for (method, operation) in item.as_object().unwrap() {
            let bad = &operation["responses"]["400"]["content"]["application/json"]["schema"];
            assert_eq!(
                bad["$ref"], "#/components/schemas/ErrorBody",
                "{method} {path}"
            );
        }
    }
    assert!(op("put", "/v1/deployments/{name}/traffic")["responses"]["413"].is_object());
    assert!(op("get", "/v1/deployments/{name}")["responses"]["404"].is_object());
    // Limits the schema states are the ones the handlers apply.
    let wait = op("post", "/v1/sync")["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "wait_ms")
        .cloned()
        .unwrap();
    assert_eq!(wait["schema"]["maximum"], json!(MAX_WAIT_MS));

    // Every request body type has a compiled schema to be checked against.
    let parsed: utoipa::openapi::OpenApi = serde_json::from_value(doc.clone()).unwrap();
    let schemas = schemas::BodySchemas::new(&parsed);
    for body in [
        CreateDeployment::name(),
        RegisterVersion::name(),
        StartCanary::name(),
        coalmine_client::types::StartShadow::name(),
        SetTraffic::name(),
        ReasonBody::name(),
        Policy::name(),
        SyncRequest::name(),
        coalmine_client::types::FeedbackBatch::name(),
    ] {
        assert!(schemas.contains(&body), "{body}");
    }
}

#[tokio::test]
async fn bodies_are_held_to_the_documented_schema() {
    let app = with_deployment().await;
    // serde alone would take a struct written as an array.
    let policy = json!({"slo": [null, null]});
    assert_error(
        &call(
            &app,
            "PUT",
            "/v1/deployments/heart-prod/policy",
            Some(OP),
            Some(policy),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "/slo",
    );
    let bad_target = json!({"name": "other", "baseline": {"version": "v 1", "cluster": "c"}});
    assert_error(
        &call(&app, "POST", "/v1/deployments", Some(OP), Some(bad_target)).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "/baseline/version",
    );
    let traffic = json!({"canary_percent": 101});
    assert_error(
        &call(
            &app,
            "PUT",
            "/v1/deployments/heart-prod/traffic",
            Some(OP),
            Some(traffic),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "/canary_percent",
    );
    for limit in ["0", "10001"] {
        assert_error(
            &call(
                &app,
                "GET",
                &format!("/v1/deployments/heart-prod/events?limit={limit}"),
                None,
                None,
            )
            .await,
            StatusCode::BAD_REQUEST,
            "bad_request",
            "limit must be between 1 and 10000",
        );
    }
    // Nothing of it changed anything.
    let (_, events) = call(&app, "GET", "/v1/deployments/heart-prod/events", None, None).await;
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["kind"] != "policy_changed"),
        "{events}"
    );
    // An optional body may be left out or be null.
    let (status, _) = call(
        &app,
        "POST",
        "/v1/deployments/heart-prod/pause",
        Some(OP),
        Some(Value::Null),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "no canary to pause");
}
