//! Faults on the real stack: a stalled controller, a restarted Envoy, a
//! canary upstream that refuses connections, and a database that cannot be
//! written. (A controller killed mid-canary and one restarted on its database
//! are in `controller.rs`.)

use anyhow::{Context, Result, ensure};
use coalmine_client::types::DeploymentView;
use coalmine_client::{Action, Auth, Method, paths};
use coalmine_decide::engine::VersionState;
use coalmine_e2e::{
    DbLock, INTERVAL_MS, Load, Stack, canary_traffic_stops, first_canary_response, is_canary, poll,
    prometheus_value, role_counts,
};
use serde_json::json;
use std::time::{Duration, Instant};

const LEASE_MS: u64 = 30_000;

/// heart-prod with a paused canary at `percent`: the split stays where it is
/// whatever the numbers say, so only the fault under test moves anything.
async fn paused_canary(s: &Stack, percent: f64) -> Result<()> {
    s.deployment(json!({"check_interval_seconds": 1})).await?;
    s.start_canary(percent).await?;
    s.controller
        .client()
        .act("heart-prod", Action::Pause, None)
        .await?;
    Ok(())
}

/// The milliseconds from send to response at quantile `q` (0..=1).
fn latency_ms(samples: &[coalmine_e2e::Sample], q: f64) -> f64 {
    let mut ms: Vec<f64> = samples
        .iter()
        .map(|s| s.at.duration_since(s.sent).as_secs_f64() * 1000.0)
        .collect();
    ms.sort_by(f64::total_cmp);
    let i = ((ms.len() as f64 - 1.0) * q).round() as usize;
    ms.get(i).copied().unwrap_or(0.0)
}

fn canary_share(samples: &[coalmine_e2e::Sample]) -> f64 {
    samples.iter().filter(|s| is_canary(s)).count() as f64 / samples.len().max(1) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_controller_adds_no_latency_and_resent_reports_count_once() -> Result<()> {
    let s = Stack::start(LEASE_MS).await?;
    let envoy = s.envoy("proxy-a", LEASE_MS).await?;
    paused_canary(&s, 50.0).await?;
    let load = Load::start(envoy.url("/predict/heart"), 100);
    first_canary_response(&load, Instant::now()).await?;
    let sync_failures = || async {
        let text = envoy.prometheus().await?;
        anyhow::Ok(prometheus_value(
            &text,
            "coalmine_sync_failures",
            &[("deployment", "heart-prod")],
        ))
    };
    let failures_before = sync_failures().await?;

    // Frozen: the controller keeps its port, so sync calls connect and then
    // hang until the filter's timeout, again and again.
    let frozen = Instant::now();
    s.controller.freeze()?;
    let stalled = poll(
        "sync calls to time out",
        Duration::from_secs(20),
        || async {
            let n = sync_failures().await?;
            let long_enough = frozen.elapsed() >= Duration::from_secs(3);
            Ok((long_enough && n >= failures_before + 2.0).then_some(n - failures_before))
        },
    )
    .await;
    let thawed = Instant::now();
    s.controller.thaw()?;
    let stalled = stalled?;

    let before: Vec<_> = load
        .samples()
        .into_iter()
        .filter(|r| r.sent < frozen)
        .collect();
    let during: Vec<_> = load
        .since(frozen)
        .into_iter()
        .filter(|r| r.sent < thawed)
        .collect();
    println!(
        "controller frozen {:.1} s, {stalled} sync calls timed out; user requests p50/p99: {:.1}/{:.1} ms before, {:.1}/{:.1} ms during ({} requests, canary share {:.2})",
        thawed.duration_since(frozen).as_secs_f64(),
        latency_ms(&before, 0.5),
        latency_ms(&before, 0.99),
        latency_ms(&during, 0.5),
        latency_ms(&during, 0.99),
        during.len(),
        canary_share(&during),
    );
    ensure!(during.len() >= 100, "too few requests while frozen");
    ensure!(
        during.iter().all(|r| r.status == 200),
        "user requests failed while the controller was frozen"
    );
    // A request that waited on the sync would take the sync timeout
    // (500 ms); these are the user's own round trips.
    ensure!(
        latency_ms(&during, 0.99) < 250.0,
        "user requests were slowed while the controller was frozen"
    );
    ensure!(
        (0.35..0.65).contains(&canary_share(&during)),
        "the split did not hold while the controller was frozen"
    );

    // The reports that timed out were sent again with the same sequence
    // numbers; the controller counts every request exactly once.
    drop(load);
    let (envoy_counts, controller_counts) = poll(
        "the controller to count what Envoy counted",
        Duration::from_secs(20),
        || async {
            let envoy_counts = role_counts(&envoy).await?;
            let seen = s.controller.role_counts().await?;
            Ok((seen == envoy_counts).then_some((envoy_counts, seen)))
        },
    )
    .await?;
    let duplicates = prometheus_value(
        &s.controller.metrics_text().await?,
        "coalmine_controller_sync_reports_total",
        &[("result", "duplicate")],
    );
    println!(
        "Envoy counted {envoy_counts:?} (baseline, canary), the controller {controller_counts:?}; {duplicates} resent reports refused as duplicates"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_envoy_routes_by_the_split_after_one_sync() -> Result<()> {
    let s = Stack::start(LEASE_MS).await?;
    let first = s.envoy("proxy-a", LEASE_MS).await?;
    paused_canary(&s, 30.0).await?;
    let load = Load::start(first.url("/predict/heart"), 100);
    first_canary_response(&load, Instant::now()).await?;
    drop(load);
    drop(first); // killed

    let started = Instant::now();
    let envoy = s.envoy("proxy-a", LEASE_MS).await?;
    let ready = Instant::now();
    let load = Load::start(envoy.url("/predict/heart"), 100);
    let restored = first_canary_response(&load, ready).await?;
    println!(
        "Envoy restarted: ready after {:.2} s, first canary response {:.2} s after that (sync every {INTERVAL_MS} ms)",
        ready.duration_since(started).as_secs_f64(),
        restored.duration_since(ready).as_secs_f64()
    );
    // The first tick comes one interval after start, and its sync is
    // answered at once (the new worker holds no table).
    ensure!(
        restored.duration_since(ready) <= Duration::from_millis(2 * INTERVAL_MS),
        "the split took {:?} to come back",
        restored.duration_since(ready)
    );
    let settled = load
        .at_least(300, restored, Duration::from_secs(20))
        .await?;
    let share = canary_share(&settled);
    println!("canary share after the restart: {share:.3} (split 30 %)");
    ensure!((0.2..0.4).contains(&share), "share {share}");
    ensure!(settled.iter().all(|r| r.status == 200));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_whose_upstream_refuses_connections_is_rolled_back() -> Result<()> {
    let s = Stack::start(LEASE_MS).await?;
    // A port nothing listens on: every connection is refused.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let config = s.envoy_config(LEASE_MS)?.upstream("heart-v2", dead)?;
    let envoy = coalmine_e2e::Envoy::start_as(config, "proxy-a").await?;
    s.deployment(json!({"check_interval_seconds": 1, "window_seconds": 30}))
        .await?;
    let load = Load::start(envoy.url("/predict/heart"), 100);
    let started = Instant::now();
    s.start_canary(20.0).await?;
    poll(
        "the automatic rollback",
        Duration::from_secs(30),
        || async {
            let kinds = s.controller.event_kinds("heart-prod").await?;
            Ok(kinds.iter().any(|k| k == "rolled_back").then_some(()))
        },
    )
    .await?;
    let rolled_back = Instant::now();
    let events = s
        .controller
        .client()
        .events("heart-prod", None, None)
        .await?;
    let trigger = events
        .iter()
        .find(|e| e.event.kind.as_str() == "auto_rollback_triggered")
        .map(|e| e.event.clone())
        .context("no auto_rollback_triggered event")?;
    println!(
        "canary upstream refusing connections: rolled back {:.1} s after the start; {}",
        rolled_back.duration_since(started).as_secs_f64(),
        trigger.reason
    );
    ensure!(trigger.actor == "engine", "{events:?}");
    // Envoy answered the refused requests itself; the filter counted them as
    // the canary's errors.
    let text = envoy.prometheus().await?;
    let canary_errors: f64 = ["5xx", "reset"]
        .iter()
        .map(|c| {
            prometheus_value(
                &text,
                "coalmine_requests",
                &[
                    ("deployment", "heart-prod"),
                    ("role", "canary"),
                    ("class", c),
                ],
            )
        })
        .sum();
    ensure!(canary_errors > 0.0, "no canary errors counted");
    let failed_canary = load
        .samples()
        .iter()
        .filter(|r| is_canary(r) && r.status != 200)
        .count();
    ensure!(failed_canary > 0, "the canary never failed a request");
    // From the rollback on, everything goes to the baseline and succeeds.
    let after = Instant::now();
    let recent = load.at_least(200, after, Duration::from_secs(10)).await?;
    ensure!(
        recent
            .iter()
            .all(|r| r.status == 200 && r.served_by == "heart-v1"),
        "requests still failed after the rollback"
    );
    let versions = s.controller.client().versions("heart-prod").await?;
    ensure!(
        versions[1].state == VersionState::RolledBack,
        "{versions:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_locked_database_refuses_changes_but_not_a_rollback() -> Result<()> {
    let s = Stack::start(LEASE_MS).await?;
    let envoy = s.envoy("proxy-a", LEASE_MS).await?;
    paused_canary(&s, 30.0).await?;
    let load = Load::start(envoy.url("/predict/heart"), 100);
    first_canary_response(&load, Instant::now()).await?;
    let state = || async {
        let d: DeploymentView = s.deployment_state().await?;
        let mut d = serde_json::to_value(d)?;
        if let Some(o) = d.as_object_mut() {
            o.remove("health");
        }
        anyhow::Ok(d)
    };
    let before = state().await?;
    let events_before = s.controller.event_kinds("heart-prod").await?;

    let lock = DbLock::take(&s.controller.db_path()).await?;
    let locked = Instant::now();
    let api = s.controller.client();
    for (method, path, body) in [
        (
            Method::PUT,
            paths::of("heart-prod", "traffic"),
            json!({"canary_percent": 60}),
        ),
        (
            Method::POST,
            paths::of("heart-prod", "versions"),
            json!({"version": "v3", "cluster": "heart-v3"}),
        ),
    ] {
        let (status, answer) = api
            .send_json(method.clone(), &path, Some(&body), Auth::Operator)
            .await?;
        println!("{method} {path} with the database locked: {status} {answer}");
        ensure!(status == 503, "{method} {path}: {status} {answer}");
        ensure!(answer["error"] == "unavailable", "{answer}");
        ensure!(
            answer["message"]
                .as_str()
                .is_some_and(|m| m.contains("nothing was changed")),
            "{answer}"
        );
    }
    // Nothing changed, not even in memory; reads still work.
    ensure!(
        state().await? == before,
        "state changed under a locked database"
    );
    ensure!(s.controller.event_kinds("heart-prod").await? == events_before);
    // The proxies kept syncing and routing by the last table.
    let during = load.since(locked);
    ensure!(during.iter().all(|r| r.status == 200));
    let share = canary_share(&during);
    println!(
        "while locked: {} requests, canary share {share:.3} (split 30 %)",
        during.len()
    );
    ensure!((0.15..0.45).contains(&share), "share {share}");

    // A rollback lowers the share: it takes effect now, stored later.
    let rolled = api.act("heart-prod", Action::Rollback, None).await?;
    ensure!(rolled.canary.is_none(), "{rolled:?}");
    canary_traffic_stops(&load, Duration::from_secs(1), 50, Duration::from_secs(10)).await?;
    let unready = api
        .readyz()
        .await
        .err()
        .context("ready with a change unstored")?;
    ensure!(unready.status() == Some(503), "{unready}");
    ensure!(s.controller.event_kinds("heart-prod").await? == events_before);

    drop(lock);
    poll("the rollback stored", Duration::from_secs(15), || async {
        Ok(api.readyz().await.is_ok().then_some(()))
    })
    .await?;
    let kinds = s.controller.event_kinds("heart-prod").await?;
    let added: Vec<&str> = kinds[events_before.len()..]
        .iter()
        .map(String::as_str)
        .collect();
    ensure!(added == ["rolled_back"], "{added:?}");
    Ok(())
}

/// What the broken controller answers: a good table first, then one kind
/// of garbage after another.
const GARBAGE: [(u16, &str); 6] = [
    (200, "not json"),
    (200, r#"{"table": 5, "lease_ms": 30000}"#),
    (
        200,
        r#"{"table": {"epoch": 2, "deployments": [{"name": "heart-prod", "baseline": {"version": "v1", "cluster": "heart-v1"}, "canary": {"version": "v2", "cluster": "heart-v2"}, "canary_bps": 20000}]}, "lease_ms": 30000}"#,
    ),
    (
        200,
        r#"{"table": {"epoch": 2, "deployments": [{"name": "heart-prod", "baseline": {"version": "", "cluster": "heart-v1"}}]}, "lease_ms": 30000}"#,
    ),
    (200, r#"{"table": {"epoch": 2, "deploy"#),
    (500, r#"{"error": "unavailable", "message": "broken"}"#),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_controller_answering_garbage_leaves_the_last_good_table() -> Result<()> {
    use axum::http::StatusCode;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let broken = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let good = json!({"table": {"epoch": 1, "deployments": [{
        "name": "heart-prod",
        "baseline": {"version": "v1", "cluster": "heart-v1"},
        "canary": {"version": "v2", "cluster": "heart-v2"},
        "canary_bps": 5000
    }]}, "lease_ms": 30000});
    let app = {
        let (broken, calls) = (broken.clone(), calls.clone());
        axum::Router::new().fallback(move || {
            let (broken, calls, good) = (broken.clone(), calls.clone(), good.clone());
            async move {
                if !broken.load(Ordering::SeqCst) {
                    return (StatusCode::OK, good.to_string());
                }
                let n = calls.fetch_add(1, Ordering::SeqCst);
                let (status, body) = GARBAGE[n % GARBAGE.len()];
                (
                    StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                    body.to_string(),
                )
            }
        })
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let fake = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    // The fake controller speaks plain HTTP.
    let s = Stack::start_plain(LEASE_MS).await?;
    let config = s
        .envoy_config(LEASE_MS)?
        .upstream("coalmine_controller", fake)?;
    let envoy = coalmine_e2e::Envoy::start_as(config, "proxy-a").await?;
    let load = Load::start(envoy.url("/predict/heart"), 100);
    first_canary_response(&load, Instant::now()).await?;
    let gauges = || async {
        let text = envoy.prometheus().await?;
        let labels = [("deployment", "heart-prod")];
        anyhow::Ok((
            prometheus_value(&text, "coalmine_canary_share_bps", &labels),
            prometheus_value(&text, "coalmine_split_epoch", &labels),
            prometheus_value(&text, "coalmine_sync_failures", &labels),
        ))
    };
    let (_, _, failures_before) = gauges().await?;

    broken.store(true, Ordering::SeqCst);
    let from = Instant::now();
    poll(
        "every kind of garbage to be answered",
        Duration::from_secs(30),
        || async { Ok((calls.load(Ordering::SeqCst) >= 2 * GARBAGE.len()).then_some(())) },
    )
    .await?;
    let (share, epoch, failures) = gauges().await?;
    let during = load.since(from);
    println!(
        "{} garbage answers: split {share} bps at epoch {epoch}, {} sync failures counted; {} requests, canary share {:.2}",
        calls.load(Ordering::SeqCst),
        failures - failures_before,
        during.len(),
        canary_share(&during)
    );
    ensure!(
        share == 5000.0 && epoch == 1.0,
        "the table changed: {share} bps, epoch {epoch}"
    );
    ensure!(failures - failures_before >= GARBAGE.len() as f64);
    ensure!(during.iter().all(|r| r.status == 200));
    ensure!(
        (0.3..0.7).contains(&canary_share(&during)),
        "the split did not hold"
    );
    ensure!(envoy.log().contains("does not parse"), "{}", envoy.log());
    server.abort();
    Ok(())
}
