//! The shadow judged: its block in health beside the baseline, the
//! disagreement the engine reports once (and after a restart), and a new
//! run starting from nothing.

use super::*;

#[tokio::test]
async fn health_shows_the_shadow_beside_the_baseline() {
    let (app, c, ..) = shadowed().await;
    let (_, h) = call(&app, "GET", "/v1/deployments/heart-prod/health", None, None).await;
    assert_eq!(h["shadow"], Value::Null, "null without a shadow");
    start(&app, json!({"version": "v3", "percent": 20})).await;
    let (_, h) = call(&app, "GET", "/v1/deployments/heart-prod/health", None, None).await;
    assert_eq!(h["shadow"]["verdict"], "INSUFFICIENT_DATA");
    assert_eq!(h["shadow"]["fields"], json!([]));
    assert_eq!(h["shadow"]["p50_ms"], Value::Null);
    let body = sync_body(1, vec![], vec![shadow_report("v3", (500, 0), 500, 350)]);
    call(&app, "POST", "/v1/sync", Some(SYNC), Some(body)).await;
    let (_, h) = call(&app, "GET", "/v1/deployments/heart-prod/health", None, None).await;
    let s = h["shadow"].as_object().unwrap();
    let mut keys: Vec<&str> = s.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "error_rate",
            "errors",
            "fields",
            "p50_ms",
            "p95_ms",
            "p99_ms",
            "percent",
            "requests",
            "skipped",
            "uncompared",
            "verdict",
            "version"
        ]
    );
    assert_eq!(
        (s["version"].as_str(), s["percent"].as_f64()),
        (Some("v3"), Some(20.0))
    );
    assert_eq!(s["verdict"], "DISAGREES");
    let p50 = s["p50_ms"].as_f64().unwrap();
    assert!((19.9..=20.1).contains(&p50), "{p50}");
    let f = &s["fields"][0];
    let mut keys: Vec<&str> = f.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "agreed",
            "agreement",
            "compared",
            "field",
            "lower",
            "min_agreement",
            "standing",
            "upper"
        ]
    );
    assert_eq!(
        (f["field"].as_str(), f["agreement"].as_f64()),
        (Some("prediction"), Some(0.7))
    );
    assert_eq!(f["min_agreement"], 0.9);
    assert_eq!(f["standing"], "below", "as the engine judged it");
    let (lower, upper) = (f["lower"].as_f64().unwrap(), f["upper"].as_f64().unwrap());
    assert!(lower < 0.7 && 0.7 < upper && upper < 0.9, "{lower} {upper}");
    // The canary's verdict is not the shadow's business.
    assert_eq!(h["verdict"], "INSUFFICIENT_DATA");
    assert_eq!(h["reasons"][0]["code"], "no_canary");
    // The typed client reads it.
    let typed: coalmine_decide::verdict::Health = serde_json::from_value(h).unwrap();
    assert_eq!(typed.shadow.unwrap().fields[0].agreed, 350);
    // So does /metrics, once a second.
    c.sample().await;
    let metrics = c.metrics().encode();
    for want in [
        "coalmine_controller_shadow_percent{deployment=\"heart-prod\"} 20.0",
        "coalmine_controller_shadow_info{deployment=\"heart-prod\",version=\"v3\"} 1",
        "coalmine_controller_shadow_agreement{deployment=\"heart-prod\",field=\"prediction\"} 0.7",
        "coalmine_controller_shadow_compared{deployment=\"heart-prod\",field=\"prediction\"} 500",
        "coalmine_controller_shadow_latency_ms{deployment=\"heart-prod\",percentile=\"p99\"}",
    ] {
        assert!(metrics.contains(want), "{want} missing in\n{metrics}");
    }
    // Another version: the info gauge names it alone.
    start(&app, json!({"version": "v2", "percent": 20})).await;
    c.sample().await;
    let metrics = c.metrics().encode();
    assert!(
        metrics.contains(
            "coalmine_controller_shadow_info{deployment=\"heart-prod\",version=\"v2\"} 1"
        ),
        "{metrics}"
    );
    assert!(!metrics.contains("version=\"v3\""), "{metrics}");
    call(&app, "DELETE", SHADOW, Some(OP), None).await;
    c.sample().await;
    let metrics = c.metrics().encode();
    assert!(metrics.contains("coalmine_controller_shadow_percent{deployment=\"heart-prod\"} 0.0"));
    assert!(
        !metrics.contains("coalmine_controller_shadow_info{"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("coalmine_controller_shadow_agreement{"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_established_disagreement_is_an_event_once_and_the_shadow_survives_a_restart() {
    let (app, c, clock, store) = shadowed().await;
    start(&app, json!({"version": "v3"})).await;
    let bad = |seq| sync_body(seq, vec![], vec![shadow_report("v3", (500, 0), 500, 350)]);
    call(&app, "POST", "/v1/sync", Some(SYNC), Some(bad(1))).await;
    // The first sight of a deployment only schedules it.
    c.evaluate_due().await;
    for second in 1..=5 {
        clock.set(T0 + second * 1000);
        c.evaluate_due().await;
    }
    let disagrees: Vec<String> = kinds(&app)
        .await
        .into_iter()
        .filter(|k| k == "shadow_disagrees")
        .collect();
    assert_eq!(disagrees.len(), 1, "once per field and run");
    let e = event(&app, "shadow_disagrees").await;
    assert_eq!(e["actor"], "engine");
    let n = &e["numbers"];
    assert_eq!(
        (
            n["field"].as_str(),
            n["agreed"].as_u64(),
            n["compared"].as_u64(),
            n["rate"].as_f64()
        ),
        (Some("prediction"), Some(350), Some(500), Some(0.7))
    );
    assert_eq!(n["min_agreement"], 0.9);
    assert!(n["bound"].as_f64().unwrap() < 0.9);
    assert!(
        e["reason"]
            .as_str()
            .unwrap()
            .starts_with("shadow v3 disagrees on prediction")
    );
    // No canary: nothing about the users' split changed.
    let (_, d) = call(&app, "GET", "/v1/deployments/heart-prod", None, None).await;
    assert_eq!(
        (d["state"].as_str(), d["canary_percent"].as_f64()),
        (Some("stable"), Some(0.0))
    );

    // A controller started on the same database has the shadow, and does
    // not report the same disagreement again.
    drop(app);
    let (app, c) = open(store, clock.clone()).await;
    let (_, d) = call(&app, "GET", "/v1/deployments/heart-prod", None, None).await;
    assert_eq!(
        (
            d["shadow"]["version"].as_str(),
            d["shadow"]["percent"].as_f64()
        ),
        (Some("v3"), Some(100.0))
    );
    let (_, resp) = call(
        &app,
        "POST",
        "/v1/sync",
        Some(SYNC),
        Some(sync_body(1, vec![], vec![])),
    )
    .await;
    assert_eq!(
        resp["table"]["deployments"][0]["shadow"]["target"]["version"],
        "v3"
    );
    call(&app, "POST", "/v1/sync", Some(SYNC), Some(bad(2))).await;
    for second in 10..=13 {
        clock.set(T0 + second * 1000);
        c.evaluate_due().await;
    }
    let count = kinds(&app)
        .await
        .iter()
        .filter(|k| *k == "shadow_disagrees")
        .count();
    assert_eq!(count, 1);
}

/// How many `shadow_disagrees` the timeline holds.
async fn disagreements(app: &Router) -> usize {
    kinds(app)
        .await
        .iter()
        .filter(|k| *k == "shadow_disagrees")
        .count()
}

#[tokio::test]
async fn a_shadow_started_again_or_under_another_baseline_starts_from_nothing() {
    let (app, c, clock, _) = shadowed().await;
    let mut seq = 0;
    let mut bad = |version: &str| {
        seq += 1;
        sync_body(
            seq,
            vec![],
            vec![shadow_report(version, (500, 0), 500, 350)],
        )
    };
    let shadow_requests = |h: &Value| h["shadow"]["requests"].as_u64();
    start(&app, json!({"version": "v3"})).await;
    call(&app, "POST", "/v1/sync", Some(SYNC), Some(bad("v3"))).await;
    c.evaluate_due().await;
    clock.set(T0 + 1000);
    c.evaluate_due().await;
    assert_eq!(disagreements(&app).await, 1);

    // Stopped and started again 2 s later (the window is 300 s): the new
    // run has seen nothing, so nothing is reported on the old run's data.
    clock.set(T0 + 2000);
    call(&app, "DELETE", SHADOW, Some(OP), None).await;
    start(&app, json!({"version": "v3"})).await;
    let (_, h) = call(&app, "GET", "/v1/deployments/heart-prod/health", None, None).await;
    assert_eq!(shadow_requests(&h), Some(0), "{h}");
    assert_eq!(h["shadow"]["fields"], json!([]));
    for second in 3..=5 {
        clock.set(T0 + second * 1000);
        c.evaluate_due().await;
    }
    assert_eq!(disagreements(&app).await, 1, "not on the old run's data");
    // Its own reports count, and are its own news.
    call(&app, "POST", "/v1/sync", Some(SYNC), Some(bad("v3"))).await;
    clock.set(T0 + 6000);
    c.evaluate_due().await;
    assert_eq!(disagreements(&app).await, 2);

    // v3 → v2 → v3: the same.
    clock.set(T0 + 7000);
    start(&app, json!({"version": "v2"})).await;
    start(&app, json!({"version": "v3"})).await;
    let (_, h) = call(&app, "GET", "/v1/deployments/heart-prod/health", None, None).await;
    assert_eq!(shadow_requests(&h), Some(0), "{h}");
    clock.set(T0 + 8000);
    c.evaluate_due().await;
    assert_eq!(disagreements(&app).await, 2);

    // A promotion mid-run: v3 is compared with another baseline from now,
    // a new run (same version, later `started_at`), reported again.
    call(&app, "POST", "/v1/sync", Some(SYNC), Some(bad("v3"))).await;
    clock.set(T0 + 9000);
    c.evaluate_due().await;
    assert_eq!(disagreements(&app).await, 3);
    let canary = json!({"version": "v2", "percent": 10});
    let (status, d) = call(
        &app,
        "POST",
        "/v1/deployments/heart-prod/canary",
        Some(OP),
        Some(canary),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{d}");
    let (_, d) = call(&app, "GET", "/v1/deployments/heart-prod", None, None).await;
    let before = d["shadow"]["started_at"].as_u64().unwrap();
    clock.set(T0 + 10_000);
    let (status, d) = call(
        &app,
        "POST",
        "/v1/deployments/heart-prod/promote",
        Some(OP),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{d}");
    assert!(d["shadow"]["started_at"].as_u64().unwrap() > before, "{d}");
    let (_, h) = call(&app, "GET", "/v1/deployments/heart-prod/health", None, None).await;
    assert_eq!(shadow_requests(&h), Some(0), "{h}");
    call(&app, "POST", "/v1/sync", Some(SYNC), Some(bad("v3"))).await;
    clock.set(T0 + 11_000);
    c.evaluate_due().await;
    assert_eq!(disagreements(&app).await, 4, "news under the new baseline");
}
