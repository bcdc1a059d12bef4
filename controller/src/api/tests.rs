//! Router tests: every endpoint's success and error cases, no socket.

use super::*;
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

mod dashboard;
mod events;
mod feedback;
mod lifecycle;
mod openapi;
mod schedule;
mod shadow;
mod sync;
mod watch;

const OP: &str = "op-token";
const SYNC: &str = "sync-token";

async fn app() -> Router {
    let store = Arc::new(SqliteStore::in_memory().await.unwrap());
    let controller = Controller::open(store, Default::default()).await.unwrap();
    router(controller, Tokens::single(Some(OP), Some(SYNC), None))
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
