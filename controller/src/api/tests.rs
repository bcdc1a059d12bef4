//! Router tests: every endpoint's success and error cases, no socket.

use super::*;
use crate::auth::Secret;
use crate::store::SqliteStore;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use coalmine_client::types::{
    CreateDeployment, ReasonBody, RegisterVersion, SetTraffic, StartCanary,
};
use coalmine_decide::policy::Policy;
use coalmine_protocol::Role;
use coalmine_protocol::sync::{MAX_WAIT_MS, RoleReport, SyncRequest};
use serde_json::{Value, json};
use tower::ServiceExt;
use utoipa::ToSchema;

mod feedback;

const OP: &str = "op-token";
const SYNC: &str = "sync-token";

async fn app() -> Router {
    let store = Arc::new(SqliteStore::in_memory().await.unwrap());
    let controller = Controller::open(store, Default::default()).await.unwrap();
    router(
        controller,
        Tokens {
            operator: Some(Secret::new(OP)),
            sync: Some(Secret::new(SYNC)),
            feedback: None,
        },
    )
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let body = match body {
        Some(v) => Body::from(v.to_string()),
        None => Body::empty(),
    };
    raw(app, req.body(body).unwrap()).await
}

async fn raw(app: &Router, req: Request<Body>) -> (StatusCode, Value) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, json)
}

fn assert_error(got: &(StatusCode, Value), status: StatusCode, code: &str, contains: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["error"], code, "{}", got.1);
    let message = got.1["message"].as_str().unwrap();
    assert!(
        message.contains(contains),
        "{message:?} should contain {contains:?}"
    );
}

async fn with_deployment() -> Router {
    let app = app().await;
    let body = json!({"name": "heart-prod", "baseline": {"version": "v1", "cluster": "heart-v1"}, "policy": {"check_interval_seconds": 1}});
    let (status, d) = call(&app, "POST", "/v1/deployments", Some(OP), Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{d}");
    let v2 = json!({"version": "v2", "cluster": "heart-v2", "metadata": {"sha256": "ab12", "test_accuracy": 0.71}});
    let (status, v) = call(
        &app,
        "POST",
        "/v1/deployments/heart-prod/versions",
        Some(OP),
        Some(v2),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    app
}

#[tokio::test]
async fn healthz_and_unknown_paths() {
    let app = app().await;
    assert_eq!(
        call(&app, "GET", "/healthz", None, None).await,
        (StatusCode::OK, json!({"status": "ok"}))
    );
    assert_error(
        &call(&app, "GET", "/v2/nothing", None, None).await,
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint",
    );
}

#[tokio::test]
async fn create_list_show() {
    let app = with_deployment().await;
    let (status, list) = call(&app, "GET", "/v1/deployments", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list[0]["name"], "heart-prod");
    let (status, d) = call(&app, "GET", "/v1/deployments/heart-prod", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(d["state"], "stable");
    assert_eq!(
        d["baseline"],
        json!({"version": "v1", "cluster": "heart-v1"})
    );
    assert_eq!(d["health"]["verdict"], "INSUFFICIENT_DATA");
    assert_eq!(d["policy"]["check_interval_seconds"], 1);
    let (status, versions) = call(
        &app,
        "GET",
        "/v1/deployments/heart-prod/versions",
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(versions[0]["state"], "production");
    assert_eq!(versions[0]["pinned"], true);
    assert_eq!(versions[1]["metadata"]["test_accuracy"], 0.71);

    assert_error(
        &call(&app, "GET", "/v1/deployments/nope", None, None).await,
        StatusCode::NOT_FOUND,
        "not_found",
        "\"nope\"",
    );
    let dup = json!({"name": "heart-prod", "baseline": {"version": "v1", "cluster": "heart-v1"}});
    assert_error(
        &call(&app, "POST", "/v1/deployments", Some(OP), Some(dup)).await,
        StatusCode::CONFLICT,
        "conflict",
        "already exists",
    );
    let bad_name = json!({"name": "Heart Prod", "baseline": {"version": "v1", "cluster": "c"}});
    assert_error(
        &call(&app, "POST", "/v1/deployments", Some(OP), Some(bad_name)).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "name",
    );
    let bad_policy = json!({"name": "x", "baseline": {"version": "v1", "cluster": "c"}, "policy": {"steps": [50, 10]}});
    assert_error(
        &call(&app, "POST", "/v1/deployments", Some(OP), Some(bad_policy)).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "policy.steps",
    );
    let unknown = json!({"name": "x", "baseline": {"version": "v1", "cluster": "c"}, "colour": 1});
    assert_error(
        &call(&app, "POST", "/v1/deployments", Some(OP), Some(unknown)).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "'colour' was unexpected",
    );
    let dup_version = json!({"version": "v2", "cluster": "heart-v2"});
    assert_error(
        &call(
            &app,
            "POST",
            "/v1/deployments/heart-prod/versions",
            Some(OP),
            Some(dup_version),
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
        "already registered",
    );
}

#[tokio::test]
async fn tokens_are_required_for_changes() {
    let app = with_deployment().await;
    let body = json!({"version": "v2"});
    assert_error(
        &call(
            &app,
            "POST",
            "/v1/deployments/heart-prod/canary",
            None,
            Some(body.clone()),
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "operator token",
    );
    assert_error(
        &call(
            &app,
            "POST",
            "/v1/deployments/heart-prod/canary",
            Some("wrong"),
            Some(body.clone()),
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "not valid",
    );
    assert_error(
        &call(
            &app,
            "POST",
            "/v1/deployments/heart-prod/canary",
            Some(SYNC),
            Some(body),
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "not valid",
    );
    let sync = json!({"proxy": "p", "instance": "i", "seq": 1, "epoch": 0});
    assert_error(
        &call(&app, "POST", "/v1/sync", None, Some(sync.clone())).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "sync token",
    );
    assert_error(
        &call(&app, "POST", "/v1/sync", Some(OP), Some(sync)).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "sync token",
    );
}

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
async fn commands_on_unknown_deployments_and_versions() {
    let app = with_deployment().await;
    for (method, path) in [
        ("POST", "pause"),
        ("POST", "resume"),
        ("POST", "promote"),
        ("POST", "rollback"),
    ] {
        assert_error(
            &call(
                &app,
                method,
                &format!("/v1/deployments/ghost/{path}"),
                Some(OP),
                None,
            )
            .await,
            StatusCode::NOT_FOUND,
            "not_found",
            "\"ghost\"",
        );
    }
    assert_error(
        &call(
            &app,
            "POST",
            "/v1/deployments/heart-prod/canary",
            Some(OP),
            Some(json!({"version": "v9"})),
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
        "v9 is not registered",
    );
    assert_error(
        &call(
            &app,
            "PUT",
            "/v1/deployments/heart-prod/traffic",
            Some(OP),
            Some(json!({"canary_percent": 10})),
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
        "no canary",
    );
}

#[tokio::test]
async fn malformed_and_oversized_bodies() {
    let app = with_deployment().await;
    let req = Request::builder()
        .method("POST")
        .uri("/v1/deployments")
        .header(header::AUTHORIZATION, format!("Bearer {OP}"))
        .body(Body::from("{\"name\": "))
        .unwrap();
    assert_error(
        &raw(&app, req).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "invalid JSON",
    );
    assert_error(
        &call(&app, "POST", "/v1/deployments", Some(OP), None).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "body is required",
    );
    let big = "x".repeat(BODY_LIMIT + 1);
    let req = Request::builder()
        .method("POST")
        .uri("/v1/deployments/heart-prod/pause")
        .header(header::AUTHORIZATION, format!("Bearer {OP}"))
        .body(Body::from(format!("{{\"reason\": \"{big}\"}}")))
        .unwrap();
    assert_error(
        &raw(&app, req).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "limit",
    );
    assert_error(
        &call(
            &app,
            "PUT",
            "/v1/deployments/heart-prod/traffic",
            Some(OP),
            Some(json!({"canary_percent": "ten"})),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "canary_percent",
    );
}

#[tokio::test]
async fn policy_get_and_put() {
    let app = with_deployment().await;
    let (status, p) = call(&app, "GET", "/v1/deployments/heart-prod/policy", None, None).await;
    assert_eq!(
        (status, p["window_seconds"].as_u64()),
        (StatusCode::OK, Some(300))
    );
    let (status, d) = call(
        &app,
        "PUT",
        "/v1/deployments/heart-prod/policy",
        Some(OP),
        Some(json!({"window_seconds": 60, "bake_seconds": 5})),
    )
    .await;
    assert_eq!(
        (status, d["policy"]["window_seconds"].as_u64()),
        (StatusCode::OK, Some(60))
    );
    assert_error(
        &call(
            &app,
            "PUT",
            "/v1/deployments/heart-prod/policy",
            Some(OP),
            Some(json!({"window_seconds": 1})),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "policy.window_seconds",
    );
}

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
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
        "GET /v1/deployments",
        "POST /v1/deployments",
        "GET /v1/deployments/{name}",
        "GET /v1/deployments/{name}/versions",
        "POST /v1/deployments/{name}/versions",
        "POST /v1/deployments/{name}/canary",
        "PUT /v1/deployments/{name}/traffic",
        "POST /v1/deployments/{name}/pause",
        "POST /v1/deployments/{name}/resume",
        "POST /v1/deployments/{name}/promote",
        "POST /v1/deployments/{name}/rollback",
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

#[tokio::test]
async fn events_page_from_the_newest() {
    let app = with_deployment().await;
    for _ in 0..3 {
        let body = json!({"version": format!("v{}", rand_suffix()), "cluster": "c"});
        let (status, _) = call(
            &app,
            "POST",
            "/v1/deployments/heart-prod/versions",
            Some(OP),
            Some(body),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let uri = "/v1/deployments/heart-prod/events";
    let (_, all) = call(&app, "GET", uri, None, None).await;
    let ids: Vec<i64> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 6);
    let (_, newest) = call(
        &app,
        "GET",
        &format!("{uri}?order=newest&limit=2"),
        None,
        None,
    )
    .await;
    let page: Vec<i64> = newest
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(page, [ids[5], ids[4]]);
    let (_, older) = call(
        &app,
        "GET",
        &format!("{uri}?order=newest&before={}&limit=10", ids[4]),
        None,
        None,
    )
    .await;
    assert_eq!(older.as_array().unwrap().len(), 4);
    assert_eq!(older[0]["id"], ids[3]);
    for bad in ["order=newest&since=1", "before=3", "order=sideways"] {
        let (status, _) = call(&app, "GET", &format!("{uri}?{bad}"), None, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(10);
    N.fetch_add(1, Ordering::SeqCst)
}
