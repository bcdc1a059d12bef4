//! The shadow through the API: started, changed and stopped, the refusals
//! on the way, the split table that carries it to the proxies, its reports
//! (counted once, a bad one dropped alone), its block in health, its
//! metrics, the disagreement the engine reports once, and a restart.

use super::*;
use crate::clock::ManualClock;
use crate::service::{Services, Settings};
use crate::store::Store;
use coalmine_protocol::Outcome;
use coalmine_protocol::shadow::{FieldAgreement, ShadowReport, ShadowSkips};
use coalmine_protocol::stats::{RoleStats, encode_histogram};
use coalmine_protocol::sync::OutcomeCounts;

const T0: u64 = 1_700_000_000_000;

/// A controller on `store` and a clock the test moves, and its API.
async fn open(store: Arc<dyn Store>, clock: Arc<ManualClock>) -> (Router, Arc<Controller>) {
    let services = Services {
        clock,
        ..Services::default()
    };
    let c = Controller::open_with(store, Settings::default(), services)
        .await
        .unwrap();
    let tokens = Tokens::single(Some(OP), Some(SYNC), None);
    (router(c.clone(), tokens), c)
}

/// heart-prod on v1 (checked every second), v2 and v3 registered.
async fn shadowed() -> (Router, Arc<Controller>, Arc<ManualClock>, Arc<dyn Store>) {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().await.unwrap());
    let clock = Arc::new(ManualClock::new(T0));
    let (app, c) = open(store.clone(), clock.clone()).await;
    let body = json!({"name": "heart-prod", "baseline": {"version": "v1", "cluster": "heart-v1"},
                      "policy": {"check_interval_seconds": 1}});
    let (status, d) = call(&app, "POST", "/v1/deployments", Some(OP), Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{d}");
    for v in ["v2", "v3"] {
        let body = json!({"version": v, "cluster": format!("heart-{v}")});
        let path = "/v1/deployments/heart-prod/versions";
        let (status, _) = call(&app, "POST", path, Some(OP), Some(body)).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    (app, c, clock, store)
}

const SHADOW: &str = "/v1/deployments/heart-prod/shadow";

async fn start(app: &Router, body: Value) -> (StatusCode, Value) {
    call(app, "POST", SHADOW, Some(OP), Some(body)).await
}

async fn kinds(app: &Router) -> Vec<String> {
    let (_, events) = call(app, "GET", "/v1/deployments/heart-prod/events", None, None).await;
    events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect()
}

async fn event(app: &Router, kind: &str) -> Value {
    let (_, events) = call(app, "GET", "/v1/deployments/heart-prod/events", None, None).await;
    let all = events.as_array().unwrap();
    all.iter()
        .rev()
        .find(|e| e["kind"] == kind)
        .cloned()
        .unwrap()
}

/// A shadow report of `version`: `ok` 2xx and `failed` 5xx answers at
/// 20 ms, `compared` of them compared on `prediction`, `agreed` agreeing.
fn shadow_report(
    version: &str,
    (ok, failed): (u64, u64),
    compared: u64,
    agreed: u64,
) -> ShadowReport {
    let mut s = RoleStats::try_new().unwrap();
    for (outcome, n) in [(Outcome::Success, ok), (Outcome::ServerError, failed)] {
        for _ in 0..n {
            s.record(outcome, 20_000);
        }
    }
    let mut counts = OutcomeCounts::default();
    for o in Outcome::ALL {
        counts.add(o, s.count(o));
    }
    ShadowReport {
        deployment: "heart-prod".into(),
        version: version.into(),
        counts,
        latency_us: encode_histogram(s.latency_us()),
        agreement: vec![FieldAgreement {
            field: "prediction".into(),
            compared,
            agreed,
        }],
        uncompared: failed,
        skipped: ShadowSkips {
            busy: 1,
            too_large: 2,
            ..ShadowSkips::default()
        },
    }
}

fn sync_body(seq: u64, reports: Vec<RoleReport>, shadow: Vec<ShadowReport>) -> Value {
    json!({"proxy": "envoy-1", "instance": "w0", "seq": seq, "epoch": 0,
           "reports": reports, "shadow": shadow})
}

fn baseline_report(n: u64) -> RoleReport {
    let mut stats = RoleStats::try_new().unwrap();
    for _ in 0..n {
        stats.record(Outcome::Success, 12_000);
    }
    RoleReport::from_stats("heart-prod", Role::Baseline, "v1", &stats)
}

#[tokio::test]
async fn start_change_and_stop_a_shadow_and_the_refusals() {
    let (app, ..) = shadowed().await;
    let body = json!({"version": "v3"});
    assert_error(
        &call(&app, "POST", SHADOW, None, Some(body.clone())).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "operator token",
    );
    assert_error(
        &call(&app, "DELETE", SHADOW, None, None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "operator token",
    );
    for (body, message) in [
        (
            json!({"version": "v9"}),
            "version v9 is not registered for heart-prod",
        ),
        (
            json!({"version": "v1"}),
            "v1 is the baseline; it already answers every user",
        ),
    ] {
        assert_error(
            &start(&app, body).await,
            StatusCode::CONFLICT,
            "conflict",
            message,
        );
    }
    assert_error(
        &call(&app, "DELETE", SHADOW, Some(OP), None).await,
        StatusCode::CONFLICT,
        "conflict",
        "heart-prod has no shadow running",
    );
    for bad in [json!(0), json!(-5), json!(101), json!("all")] {
        assert_error(
            &start(&app, json!({"version": "v3", "percent": bad})).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
            "/percent",
        );
    }
    assert_error(
        &call(
            &app,
            "DELETE",
            "/v1/deployments/ghost/shadow",
            Some(OP),
            None,
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
        "\"ghost\"",
    );
    assert!(!kinds(&app).await.iter().any(|k| k.starts_with("shadow")));

    let (status, d) = start(&app, json!({"version": "v3"})).await;
    assert_eq!(status, StatusCode::OK, "{d}");
    assert_eq!(d["shadow"]["version"], "v3");
    assert_eq!(d["shadow"]["cluster"], "heart-v3");
    assert_eq!(d["shadow"]["percent"], 100.0);
    assert_eq!(d["shadow"]["started_at"], T0);
    assert_eq!(d["state"], "stable", "a shadow answers no user");
    assert_eq!(d["canary_percent"], 0.0);
    assert_eq!(d["versions_in_play"], json!(["v1", "v3"]));
    let started = event(&app, "shadow_started").await;
    assert_eq!(started["actor"], "operator");
    assert_eq!(started["numbers"]["version"], "v3");
    assert_eq!(started["numbers"]["percent"], 100.0);
    // A change of share; the same again changes nothing.
    let (status, d) = start(&app, json!({"version": "v3", "percent": 25})).await;
    assert_eq!(
        (status, d["shadow"]["percent"].as_f64()),
        (StatusCode::OK, Some(25.0))
    );
    let before = kinds(&app).await.len();
    let (status, _) = start(&app, json!({"version": "v3", "percent": 25})).await;
    assert_eq!((status, kinds(&app).await.len()), (StatusCode::OK, before));
    let (_, d) = call(&app, "GET", "/v1/deployments/heart-prod", None, None).await;
    assert_eq!(d["shadow"]["percent"], 25.0);

    let (status, d) = call(&app, "DELETE", SHADOW, Some(OP), None).await;
    assert_eq!((status, &d["shadow"]), (StatusCode::OK, &Value::Null));
    let stopped = event(&app, "shadow_stopped").await;
    assert_eq!(stopped["numbers"]["cause"], "operator");
    assert!(
        stopped["reason"]
            .as_str()
            .unwrap()
            .contains("stopped by the operator")
    );
    let shadow_kinds: Vec<String> = kinds(&app)
        .await
        .into_iter()
        .filter(|k| k.starts_with("shadow"))
        .collect();
    assert_eq!(
        shadow_kinds,
        ["shadow_started", "shadow_started", "shadow_stopped"]
    );
}

#[tokio::test]
async fn a_shadow_coexists_with_a_canary_and_a_canary_of_its_version_stops_it() {
    let (app, ..) = shadowed().await;
    let canary = |v: &str| json!({"version": v, "percent": 10});
    let path = "/v1/deployments/heart-prod/canary";
    let (status, _) = call(&app, "POST", path, Some(OP), Some(canary("v2"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_error(
        &start(&app, json!({"version": "v2"})).await,
        StatusCode::CONFLICT,
        "conflict",
        "v2 is the canary of heart-prod",
    );
    let (status, d) = start(&app, json!({"version": "v3", "percent": 50})).await;
    assert_eq!(status, StatusCode::OK, "{d}");
    assert_eq!(
        (
            d["canary"]["version"].as_str(),
            d["shadow"]["version"].as_str()
        ),
        (Some("v2"), Some("v3"))
    );
    // Promoting v2 leaves the shadow of v3 running.
    let (status, d) = call(
        &app,
        "POST",
        "/v1/deployments/heart-prod/promote",
        Some(OP),
        None,
    )
    .await;
    assert_eq!(
        (status, d["shadow"]["version"].as_str()),
        (StatusCode::OK, Some("v3"))
    );
    // The shadow's version as the canary: the shadow stops.
    let (status, d) = call(&app, "POST", path, Some(OP), Some(canary("v3"))).await;
    assert_eq!(status, StatusCode::OK, "{d}");
    assert_eq!(
        (d["canary"]["version"].as_str(), &d["shadow"]),
        (Some("v3"), &Value::Null)
    );
    let stopped = event(&app, "shadow_stopped").await;
    assert_eq!(stopped["numbers"]["cause"], "became_canary");
    assert!(
        stopped["reason"]
            .as_str()
            .unwrap()
            .contains("became the canary"),
        "{stopped}"
    );
}

#[tokio::test]
async fn sync_answers_carry_the_shadow_and_its_reports_count_once() {
    let (app, c, ..) = shadowed().await;
    let (status, resp) = call(
        &app,
        "POST",
        "/v1/sync",
        Some(SYNC),
        Some(sync_body(1, vec![], vec![])),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    assert!(resp["table"]["deployments"][0].get("shadow").is_none());
    let epoch = resp["table"]["epoch"].as_u64().unwrap();
    start(&app, json!({"version": "v3", "percent": 50})).await;
    let body = sync_body(
        2,
        vec![baseline_report(40)],
        vec![shadow_report("v3", (30, 2), 30, 24)],
    );
    let (status, resp) = call(&app, "POST", "/v1/sync", Some(SYNC), Some(body.clone())).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    let d = &resp["table"]["deployments"][0];
    assert_eq!(
        d["shadow"],
        json!({"target": {"version": "v3", "cluster": "heart-v3"}, "bps": 5000})
    );
    assert_eq!(d["canary_bps"], 0, "the users' split is unchanged");
    assert!(
        resp["table"]["epoch"].as_u64().unwrap() > epoch,
        "a new table for the proxies"
    );
    // The same report again (a retry) is not counted twice.
    let (status, _) = call(&app, "POST", "/v1/sync", Some(SYNC), Some(body)).await;
    assert_eq!(status, StatusCode::OK);
    let (_, h) = call(&app, "GET", "/v1/deployments/heart-prod/health", None, None).await;
    let s = &h["shadow"];
    assert_eq!(
        (s["requests"].as_u64(), s["errors"].as_u64()),
        (Some(32), Some(2))
    );
    assert_eq!(s["fields"][0]["compared"], 30);
    assert_eq!(s["fields"][0]["agreed"], 24);
    let skipped = &s["skipped"];
    assert_eq!(
        (&skipped["busy"], &skipped["too_large"], &skipped["refused"]),
        (&json!(1), &json!(2), &json!(0))
    );
    assert_eq!(h["baseline"]["requests"], 40);

    // A bad shadow report is dropped alone: the call answers 200 and its
    // role reports count (a filter drops a refused call for good, and the
    // canary's numbers with it).
    let mut bad = shadow_report("v3", (10, 0), 10, 11);
    bad.agreement[0].agreed = 11;
    let body = sync_body(
        3,
        vec![baseline_report(5)],
        vec![bad, shadow_report("v3", (4, 0), 4, 4)],
    );
    let (status, resp) = call(&app, "POST", "/v1/sync", Some(SYNC), Some(body.clone())).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    // Resent: counted once, the drop too.
    let (status, _) = call(&app, "POST", "/v1/sync", Some(SYNC), Some(body)).await;
    assert_eq!(status, StatusCode::OK);
    let mut mismatch = shadow_report("v3", (10, 0), 10, 10);
    mismatch.counts.success = 12;
    let body = sync_body(4, vec![baseline_report(1)], vec![mismatch]);
    let (status, resp) = call(&app, "POST", "/v1/sync", Some(SYNC), Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    let (_, h) = call(&app, "GET", "/v1/deployments/heart-prod/health", None, None).await;
    assert_eq!(
        (
            h["shadow"]["requests"].as_u64(),
            h["baseline"]["requests"].as_u64()
        ),
        (Some(36), Some(46))
    );
    let metrics = c.metrics().encode();
    assert!(
        metrics
            .contains("coalmine_controller_dropped_reports_total{reason=\"bad_shadow_report\"} 2"),
        "{metrics}"
    );
    // A bad role report still refuses the whole call.
    let mut bad_role = baseline_report(5);
    bad_role.counts.success = 999;
    let body = sync_body(5, vec![bad_role], vec![shadow_report("v3", (4, 0), 4, 4)]);
    assert_error(
        &call(&app, "POST", "/v1/sync", Some(SYNC), Some(body)).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "report refused",
    );
    // A version that is not the shadow (stopped or replaced) is dropped.
    let body = sync_body(5, vec![], vec![shadow_report("v2", (10, 0), 10, 10)]);
    let (status, _) = call(&app, "POST", "/v1/sync", Some(SYNC), Some(body)).await;
    assert_eq!(status, StatusCode::OK);
    let (_, h) = call(&app, "GET", "/v1/deployments/heart-prod/health", None, None).await;
    assert_eq!(h["shadow"]["requests"], 36);
    let metrics = c.metrics().encode();
    assert!(
        metrics.contains("coalmine_controller_dropped_reports_total{reason=\"not_shadow\"} 1"),
        "{metrics}"
    );
    // Per deployment, never by version: no series for every version ever
    // shadowed.
    for want in [
        "coalmine_controller_shadow_requests_total{deployment=\"heart-prod\",class=\"2xx\"} 34",
        "coalmine_controller_shadow_skipped_total{deployment=\"heart-prod\",reason=\"too_large\"} 4",
        "coalmine_controller_shadow_skipped_total{deployment=\"heart-prod\",reason=\"refused\"} 0",
        "coalmine_controller_shadow_skipped_total{deployment=\"heart-prod\",reason=\"incomplete\"} 0",
    ] {
        assert!(metrics.contains(want), "{want} missing in\n{metrics}");
    }
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("coalmine_controller_shadow_"))
    {
        assert!(
            !line.contains("version=") || line.starts_with("coalmine_controller_shadow_info{"),
            "{line}"
        );
    }
}

mod judged;
