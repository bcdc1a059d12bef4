//! The exponential ramp through the API: a canary started with a schedule
//! shows its planned shares and the current one; a policy may carry one;
//! the schedule is documented and held to its schema.

use super::*;

const CANARY: &str = "/v1/deployments/heart-prod/canary";

#[tokio::test]
async fn a_canary_started_with_a_schedule_shows_its_planned_ramp() {
    let app = with_deployment().await;
    let body = json!({"version": "v2", "schedule": {"exponential": {"start": 1, "factor": 2, "every_seconds": 30, "max": 100}}});
    let (status, d) = call(&app, "POST", CANARY, Some(OP), Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{d}");
    let c = &d["canary"];
    assert_eq!(
        c["steps"],
        json!([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 100.0])
    );
    assert_eq!(
        (&c["percent"], &c["step_index"], &c["next_step_percent"]),
        (&json!(1.0), &json!(0), &json!(2.0))
    );
    assert_eq!(c["bake_seconds"], 30);
    // Set off the plan by hand: no place in it, the next planned share above.
    let (_, d) = call(
        &app,
        "PUT",
        "/v1/deployments/heart-prod/traffic",
        Some(OP),
        Some(json!({"canary_percent": 5})),
    )
    .await;
    let c = &d["canary"];
    assert_eq!(
        (&c["step_index"], &c["next_step_percent"]),
        (&Value::Null, &json!(8.0))
    );
    let (_, d) = call(
        &app,
        "PUT",
        "/v1/deployments/heart-prod/traffic",
        Some(OP),
        Some(json!({"canary_percent": 16})),
    )
    .await;
    assert_eq!(d["canary"]["step_index"], 4);
}

#[tokio::test]
async fn a_schedule_with_steps_or_a_bad_schedule_is_a_400_that_says_why() {
    let app = with_deployment().await;
    let exp = json!({"exponential": {"start": 1, "factor": 2, "every_seconds": 30, "max": 100}});
    for extra in [json!({"steps": [10, 100]}), json!({"bake_seconds": 5})] {
        let mut body = json!({"version": "v2", "schedule": exp});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        assert_error(
            &call(&app, "POST", CANARY, Some(OP), Some(body)).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
            "schedule replaces steps and bake_seconds",
        );
    }
    let slow = json!({"version": "v2", "schedule": {"exponential": {"factor": 1.0001}}});
    assert_error(
        &call(&app, "POST", CANARY, Some(OP), Some(slow)).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "schedule.exponential.factor: the ramp from 1 % to 100 % would take 9901 shares",
    );
    // The schema refuses what serde would: an unknown kind or field.
    for schedule in [
        json!({"linear": {}}),
        json!({"exponential": {"start": 1, "ratio": 2}}),
    ] {
        let body = json!({"version": "v2", "schedule": schedule});
        let got = call(&app, "POST", CANARY, Some(OP), Some(body)).await;
        assert_eq!(got.0, StatusCode::BAD_REQUEST, "{}", got.1);
        assert!(
            got.1["message"].as_str().unwrap().contains("/schedule"),
            "{}",
            got.1
        );
    }
    let (_, d) = call(&app, "GET", "/v1/deployments/heart-prod", None, None).await;
    assert!(d["canary"].is_null(), "nothing started: {d}");
}

#[tokio::test]
async fn a_policy_schedule_is_the_ramp_of_the_next_canary() {
    let app = with_deployment().await;
    let policy = json!({"check_interval_seconds": 1, "steps": [20, 50, 100],
        "schedule": {"exponential": {"start": 10, "factor": 3, "every_seconds": 5, "max": 50}}});
    let (status, p) = call(
        &app,
        "PUT",
        "/v1/deployments/heart-prod/policy",
        Some(OP),
        Some(policy),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{p}");
    let body = json!({"version": "v2"});
    let (status, d) = call(&app, "POST", CANARY, Some(OP), Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{d}");
    assert_eq!(d["canary"]["steps"], json!([10.0, 30.0, 50.0]));
    assert_eq!(d["canary"]["bake_seconds"], 5);
    assert_eq!(d["policy"]["schedule"]["exponential"]["factor"], json!(3.0));
    let bad = json!({"schedule": {"exponential": {"start": 60, "max": 50}}});
    assert_error(
        &call(
            &app,
            "PUT",
            "/v1/deployments/heart-prod/policy",
            Some(OP),
            Some(bad),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "schedule.exponential.start",
    );
}

#[tokio::test]
async fn the_schedule_is_in_the_openapi_document() {
    let app = app().await;
    let (_, doc) = call(&app, "GET", "/v1/openapi.json", None, None).await;
    let schemas = &doc["components"]["schemas"];
    for (schema, field) in [
        ("StartCanary", "schedule"),
        ("Policy", "schedule"),
        ("CanaryView", "step_index"),
    ] {
        assert!(
            schemas[schema]["properties"][field].is_object(),
            "{schema}.{field}: {}",
            schemas[schema]
        );
    }
    let exponential = &schemas["Schedule"]["oneOf"][0];
    assert_eq!(exponential["required"], json!(["exponential"]));
    assert_eq!(exponential["additionalProperties"], json!(false));
    let fields = &exponential["properties"]["exponential"]["properties"];
    assert_eq!(fields["factor"]["exclusiveMinimum"], json!(1));
    assert_eq!(fields["every_seconds"]["maximum"], json!(86_400));
    for share in ["start", "max"] {
        assert_eq!(
            (&fields[share]["minimum"], &fields[share]["maximum"]),
            (&json!(0.01), &json!(100)),
            "{share}"
        );
    }
}
