//! Feedback: who may post it, what is refused (and then nothing counted),
//! and what is counted.

use super::*;

const FEEDBACK: &str = "feedback-token";
const URI: &str = "/v1/deployments/heart-prod/feedback";

async fn app_with_feedback_token() -> Router {
    let store = Arc::new(SqliteStore::in_memory().await.unwrap());
    let controller = Controller::open(store, Default::default()).await.unwrap();
    let app = router(
        controller,
        Tokens::single(Some(OP), Some(SYNC), Some(FEEDBACK)),
    );
    let body = json!({"name": "heart-prod", "baseline": {"version": "v1", "cluster": "heart-v1"}});
    let created = call(&app, "POST", "/v1/deployments", Some(OP), Some(body)).await;
    assert_eq!(created.0, StatusCode::CREATED);
    let v2 = json!({"version": "v2", "cluster": "heart-v2"});
    let uri = "/v1/deployments/heart-prod/versions";
    let registered = call(&app, "POST", uri, Some(OP), Some(v2)).await;
    assert_eq!(registered.0, StatusCode::CREATED);
    app
}

fn batch(observations: Value) -> Value {
    json!({"metric": "accuracy", "observations": observations})
}

/// The baseline's accuracy feedback over the window, as health shows it.
async fn baseline_accuracy(app: &Router) -> Value {
    let (_, d) = call(app, "GET", "/v1/deployments/heart-prod", None, None).await;
    d["health"]["baseline"]["feedback"]["accuracy"].clone()
}

async fn metrics_text(app: &Router) -> String {
    let req = Request::get("/metrics").body(Body::empty()).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn post(token: &str, body: String) -> Request<Body> {
    Request::post(URI)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap()
}

#[tokio::test]
async fn feedback_is_counted_whole_with_either_token() {
    let app = app_with_feedback_token().await;
    let obs = json!([
        {"version": "v1", "value": 1},
        {"version": "v1", "value": false},
        {"version": "v2", "value": true}
    ]);
    let got = call(&app, "POST", URI, Some(FEEDBACK), Some(batch(obs.clone()))).await;
    assert_eq!(got, (StatusCode::ACCEPTED, json!({"accepted": 3})));
    let got = call(&app, "POST", URI, Some(OP), Some(batch(obs))).await;
    assert_eq!(got.0, StatusCode::ACCEPTED, "{}", got.1);
    let accuracy = baseline_accuracy(&app).await;
    assert_eq!(accuracy["observations"], json!(4), "{accuracy}");
    assert_eq!(accuracy["rate"], json!(0.5), "{accuracy}");
    let received = r#"coalmine_controller_feedback_received_total{deployment="heart-prod",metric="accuracy"} 6"#;
    let metrics = metrics_text(&app).await;
    assert!(metrics.contains(received), "{metrics}");
}

#[tokio::test]
async fn the_feedback_token_opens_nothing_else() {
    let app = app_with_feedback_token().await;
    let calls = [
        (
            "POST",
            "/v1/deployments",
            json!({"name": "x", "baseline": {"version": "v1", "cluster": "c"}}),
        ),
        (
            "POST",
            "/v1/deployments/heart-prod/canary",
            json!({"version": "v2"}),
        ),
        ("POST", "/v1/deployments/heart-prod/rollback", json!({})),
        ("PUT", "/v1/deployments/heart-prod/policy", json!({})),
        (
            "POST",
            "/v1/deployments/heart-prod/versions",
            json!({"version": "v3", "cluster": "c"}),
        ),
    ];
    for (method, uri, body) in calls {
        let got = call(&app, method, uri, Some(FEEDBACK), Some(body)).await;
        assert_error(
            &got,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "operator token",
        );
    }
    let report = SyncRequest {
        proxy: "p".into(),
        instance: "i".into(),
        seq: 1,
        epoch: 0,
        reports: vec![],
        shadow: Vec::new(),
    };
    let body = serde_json::to_value(report).unwrap();
    let got = call(&app, "POST", "/v1/sync", Some(FEEDBACK), Some(body)).await;
    assert_error(&got, StatusCode::UNAUTHORIZED, "unauthorized", "sync token");
}

#[tokio::test]
async fn bad_feedback_is_refused_and_nothing_counted() {
    let app = app_with_feedback_token().await;
    let good = json!({"version": "v1", "value": 1});
    let bad_request = |contains: &'static str| (StatusCode::BAD_REQUEST, "bad_request", contains);
    let cases = [
        (
            Some("wrong"),
            batch(json!([good])),
            (StatusCode::UNAUTHORIZED, "unauthorized", "neither"),
        ),
        (
            None,
            batch(json!([good])),
            (StatusCode::UNAUTHORIZED, "unauthorized", "Bearer"),
        ),
        (
            Some(FEEDBACK),
            batch(json!([good, {"version": "v9", "value": 1}])),
            bad_request("observations[1]: version \"v9\" is not registered"),
        ),
        (
            Some(FEEDBACK),
            batch(json!([good, good, {"version": "v1", "value": 2}])),
            bad_request("/observations/2/value: 2 is not one of [0,1,true,false]"),
        ),
        (
            Some(FEEDBACK),
            batch(json!([{"version": "v1", "value": 0.5}])),
            bad_request("/observations/0/value"),
        ),
        (
            Some(FEEDBACK),
            batch(Value::Array(vec![good.clone(); 10_001])),
            bad_request("/observations: the value has more than 10000 items"),
        ),
        (
            Some(FEEDBACK),
            batch(json!([])),
            bad_request("/observations"),
        ),
        (
            Some(FEEDBACK),
            json!({"metric": "conversion", "observations": [good]}),
            bad_request("\"conversion\" is not declared"),
        ),
        (
            Some(FEEDBACK),
            json!({"metric": "accuracy", "observations": [good], "extra": 1}),
            bad_request("extra"),
        ),
    ];
    for (token, body, (status, code, contains)) in cases {
        let got = call(&app, "POST", URI, token, Some(body)).await;
        assert_error(&got, status, code, contains);
    }
    let unknown = "/v1/deployments/nope/feedback";
    let got = call(
        &app,
        "POST",
        unknown,
        Some(FEEDBACK),
        Some(batch(json!([good]))),
    )
    .await;
    assert_error(&got, StatusCode::NOT_FOUND, "not_found", "nope");
    // A body cut short, and one beyond the limit.
    let full = batch(json!([good, good])).to_string();
    let cut = post(FEEDBACK, full[..full.len() - 7].to_string());
    assert_error(
        &raw(&app, cut).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "invalid JSON body",
    );
    let many = vec![good.to_string(); FEEDBACK_BODY_LIMIT / 20].join(",");
    let huge = format!("{{\"metric\": \"accuracy\", \"observations\": [{many}]}}");
    assert!(huge.len() > FEEDBACK_BODY_LIMIT);
    assert_error(
        &raw(&app, post(FEEDBACK, huge)).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        &FEEDBACK_BODY_LIMIT.to_string(),
    );
    // Nothing of any of it was counted (the declared metric shows, empty).
    assert_eq!(baseline_accuracy(&app).await["observations"], json!(0));
    let metrics = metrics_text(&app).await;
    assert!(!metrics.contains("feedback_received_total{"), "{metrics}");
}

#[tokio::test]
async fn a_full_call_with_the_longest_version_names_fits() {
    let app = app_with_feedback_token().await;
    let long = "v".repeat(256);
    let register = json!({"version": long, "cluster": "heart-v2"});
    let uri = "/v1/deployments/heart-prod/versions";
    assert_eq!(
        call(&app, "POST", uri, Some(OP), Some(register)).await.0,
        StatusCode::CREATED
    );
    let full = batch(Value::Array(vec![
        json!({"version": long, "value": 1});
        10_000
    ]));
    let got = call(&app, "POST", URI, Some(FEEDBACK), Some(full)).await;
    assert_eq!(got, (StatusCode::ACCEPTED, json!({"accepted": 10_000})));
}

#[tokio::test]
async fn without_a_feedback_token_only_the_operator_posts_feedback() {
    let app = with_deployment().await;
    let obs = batch(json!([{"version": "v2", "value": 0}]));
    let got = call(&app, "POST", URI, Some(OP), Some(obs.clone())).await;
    assert_eq!(got.0, StatusCode::ACCEPTED, "{}", got.1);
    let got = call(&app, "POST", URI, Some(SYNC), Some(obs)).await;
    assert_error(&got, StatusCode::UNAUTHORIZED, "unauthorized", "neither");
}

#[tokio::test]
async fn a_given_feedback_token_is_checked_even_without_an_operator_token() {
    let store = Arc::new(SqliteStore::in_memory().await.unwrap());
    let controller = Controller::open(store, Default::default()).await.unwrap();
    let tokens = Tokens::single(None, None, Some(FEEDBACK));
    let app = router(controller, tokens);
    let body = json!({"name": "heart-prod", "baseline": {"version": "v1", "cluster": "heart-v1"}});
    let created = call(&app, "POST", "/v1/deployments", None, Some(body)).await;
    assert_eq!(created.0, StatusCode::CREATED);
    let obs = batch(json!([{"version": "v1", "value": 1}]));
    let got = call(&app, "POST", URI, None, Some(obs.clone())).await;
    assert_error(&got, StatusCode::UNAUTHORIZED, "unauthorized", "Bearer");
    let got = call(&app, "POST", URI, Some(FEEDBACK), Some(obs)).await;
    assert_eq!(got.0, StatusCode::ACCEPTED, "{}", got.1);
}
