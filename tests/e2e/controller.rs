//! The controller syncs with every proxy, judges the canary and rolls back by
//! itself: real Envoy, the real controller binary, upstreams on loopback.

use anyhow::{Context as _, Result, bail, ensure};
use coalmine_client::Action;
use coalmine_client::types::DeploymentView;
use coalmine_decide::engine::VersionState;
use coalmine_e2e::{
    INTERVAL_MS, Load, SYNC_TOKEN, Stack, canary_traffic_stops, first_canary_response, poll,
    prometheus_value,
};
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_canary_is_rolled_back_automatically_and_then_gets_no_traffic() -> Result<()> {
    let s = Stack::start(30_000).await?;
    let envoy = s.envoy("proxy-a", 30_000).await?;
    s.v2.fail_every(4); // 25 % of the canary's answers are 500s
    s.deployment(json!({"check_interval_seconds": 1, "window_seconds": 60, "min_requests": 20}))
        .await?;
    let load = Load::start(envoy.url("/predict/heart"), 100);
    let started = Instant::now();
    s.start_canary(20.0).await?;
    let first_canary = first_canary_response(&load, started).await?;

    let decided = poll(
        "the automatic rollback",
        Duration::from_secs(30),
        || async {
            let d = s.deployment_state().await?;
            Ok(d.canary.is_none().then(Instant::now))
        },
    )
    .await?;
    let last_canary = canary_traffic_stops(
        &load,
        Duration::from_millis(1500),
        100,
        Duration::from_secs(15),
    )
    .await?
    .unwrap_or(first_canary);
    println!(
        "first canary request → rollback decided: {:.2} s; → last canary request: {:.2} s",
        decided.duration_since(first_canary).as_secs_f64(),
        last_canary.duration_since(first_canary).as_secs_f64()
    );

    // From here on, no request reaches the canary.
    let reached = s.v2.seen().len();
    let after = Instant::now();
    poll(
        "two more seconds of traffic",
        Duration::from_secs(10),
        || {
            let n = load.since(after).len();
            async move { Ok((n >= 200).then_some(())) }
        },
    )
    .await?;
    ensure!(
        s.v2.seen().len() == reached,
        "the canary got {} requests after the rollback",
        s.v2.seen().len() - reached
    );
    ensure!(
        load.since(after)
            .iter()
            .all(|r| r.served_by == "heart-v1" && r.status == 200)
    );

    // With the significance guard, the breach may first hold as DEGRADED
    // while the evidence gathers; then failure, trigger and rollback follow
    // one another.
    let kinds = s.controller.event_kinds("heart-prod").await?;
    let story: Vec<&str> = kinds
        .iter()
        .map(String::as_str)
        .filter(|k| *k != "health_degraded")
        .collect();
    ensure!(
        story
            == [
                "deployment_created",
                "version_registered",
                "version_registered",
                "canary_started",
                "health_check_failed",
                "auto_rollback_triggered",
                "rolled_back"
            ],
        "timeline: {kinds:?}"
    );
    ensure!(
        kinds.ends_with(&[
            "health_check_failed".to_string(),
            "auto_rollback_triggered".into(),
            "rolled_back".into()
        ]),
        "{kinds:?}"
    );
    let api = s.controller.client();
    let events = api.events("heart-prod", None, None).await?;
    let failed = events
        .iter()
        .find(|e| e.event.kind.as_str() == "health_check_failed")
        .map(|e| e.event.clone())
        .context("no health_check_failed event")?;
    let rate = failed.numbers["canary_error_rate"]
        .as_f64()
        .unwrap_or_default();
    ensure!(
        (0.15..=0.35).contains(&rate),
        "canary error rate in the event: {rate}"
    );
    ensure!(failed.actor == "engine", "{failed:?}");
    ensure!(
        failed.numbers["log_e_value"].as_f64().unwrap_or(0.0) >= (200.0f64).ln(),
        "established at α/2: {failed:?}"
    );
    let versions = api.versions("heart-prod").await?;
    ensure!(
        versions[1].state == VersionState::RolledBack && !versions[1].healthy,
        "{versions:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn state_and_timeline_survive_kill_9() -> Result<()> {
    let mut s = Stack::start(30_000).await?;
    let envoy = s.envoy("proxy-a", 30_000).await?;
    s.deployment(json!({"check_interval_seconds": 1})).await?;
    s.start_canary(20.0).await?;
    s.controller
        .client()
        .set_traffic("heart-prod", 35.0)
        .await?;
    s.controller
        .client()
        .act("heart-prod", Action::Pause, Some("looking at logs".into()))
        .await?;
    let strip = |d: DeploymentView| {
        let mut d = serde_json::to_value(d).unwrap_or_default();
        if let Some(o) = d.as_object_mut() {
            o.remove("health");
        }
        d
    };
    let before = strip(s.deployment_state().await?);
    let events_before = s
        .controller
        .client()
        .events("heart-prod", None, None)
        .await?;
    let versions_before = s.controller.client().versions("heart-prod").await?;

    s.controller.restart().await?; // SIGKILL, then start on the same database

    let api = s.controller.client();
    ensure!(
        strip(s.deployment_state().await?) == before,
        "state changed across kill -9"
    );
    ensure!(api.events("heart-prod", None, None).await? == events_before);
    ensure!(api.versions("heart-prod").await? == versions_before);
    // The timeline continues without gaps or duplicates, and the proxy still
    // routes by the restored split.
    api.act("heart-prod", Action::Resume, None).await?;
    let events = api.events("heart-prod", None, None).await?;
    let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
    ensure!(ids.windows(2).all(|w| w[1] == w[0] + 1), "ids {ids:?}");
    ensure!(events.len() == events_before.len() + 1);
    let load = Load::start(envoy.url("/predict/heart"), 100);
    first_canary_response(&load, Instant::now()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_healthy_canary_steps_up_and_is_promoted() -> Result<()> {
    let s = Stack::start(30_000).await?;
    let envoy = s.envoy("proxy-a", 30_000).await?;
    s.deployment(json!({
        "check_interval_seconds": 1, "window_seconds": 30, "min_requests": 10,
        "promote": {"min_canary_requests": 20}, "bake_seconds": 2, "steps": [20, 50, 100]
    }))
    .await?;
    let load = Load::start(envoy.url("/predict/heart"), 100);
    s.start_canary(20.0).await?;
    poll("the promotion", Duration::from_secs(60), || async {
        let d = s.deployment_state().await?;
        Ok((d.baseline.version == "v2").then_some(()))
    })
    .await?;
    let kinds = s.controller.event_kinds("heart-prod").await?;
    let tail: Vec<&str> = kinds.iter().skip(3).map(String::as_str).collect();
    ensure!(
        tail == [
            "canary_started",
            "step_advanced",
            "step_advanced",
            "promoted"
        ],
        "timeline: {kinds:?}"
    );
    let events = s
        .controller
        .client()
        .events("heart-prod", None, None)
        .await?;
    ensure!(
        events[4].event.numbers["to_percent"] == 50.0
            && events[5].event.numbers["to_percent"] == 100.0,
        "{events:?}"
    );
    let d = s.deployment_state().await?;
    ensure!(
        d.pinned.as_ref().map(|p| p.version.as_str()) == Some("v1") && d.canary.is_none(),
        "{d:?}"
    );

    // All traffic now goes to v2, as the baseline.
    let after = Instant::now();
    let settled = poll(
        "traffic on the new baseline",
        Duration::from_secs(10),
        || {
            let recent = load.since(after);
            let ok =
                recent.len() >= 100
                    && recent.iter().rev().take(100).all(|r| {
                        r.served_by == "heart-v2" && r.role.as_deref() == Some("baseline")
                    });
            async move { Ok(ok.then_some(())) }
        },
    )
    .await;
    if let Err(e) = settled {
        bail!("{e}: last {:?}", load.samples().last());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_controller_canary_traffic_stops_within_the_lease() -> Result<()> {
    let lease_ms = 3000;
    let mut s = Stack::start(lease_ms).await?;
    let envoy = s.envoy("proxy-a", lease_ms).await?;
    s.deployment(json!({"check_interval_seconds": 1})).await?;
    let load = Load::start(envoy.url("/predict/heart"), 100);
    let started = Instant::now();
    s.start_canary(50.0).await?;
    first_canary_response(&load, started).await?;

    let killed = Instant::now();
    s.controller.kill9();
    let last = canary_traffic_stops(
        &load,
        Duration::from_millis(1000),
        50,
        Duration::from_secs(20),
    )
    .await?
    .unwrap_or(killed);
    let fallback = last.saturating_duration_since(killed);
    println!(
        "controller killed → last canary request: {:.2} s (lease {lease_ms} ms, sync every {INTERVAL_MS} ms)",
        fallback.as_secs_f64()
    );
    // The lease was renewed at most one interval before the kill and is
    // checked every interval: lease + interval, plus scheduling slack.
    ensure!(
        fallback <= Duration::from_millis(lease_ms + 2 * INTERVAL_MS),
        "canary traffic went on for {fallback:?} after the controller died"
    );
    ensure!(
        load.since(killed).iter().all(|r| r.status == 200),
        "user traffic was disturbed"
    );
    let said = |log: &str, what: &str| log.lines().filter(|l| l.contains(what)).count();
    let text = poll(
        "the lease expiry metric",
        Duration::from_secs(5),
        || async {
            let text = envoy.prometheus().await?;
            let n = prometheus_value(
                &text,
                "coalmine_lease_expiries",
                &[("deployment", "heart-prod")],
            );
            Ok((n >= 1.0).then_some(text))
        },
    )
    .await?;
    ensure!(
        prometheus_value(
            &text,
            "coalmine_lease_expiries",
            &[("deployment", "heart-prod")]
        ) == 1.0
    );
    ensure!(
        prometheus_value(
            &text,
            "coalmine_canary_share_bps",
            &[("deployment", "heart-prod")]
        ) == 0.0
    );
    ensure!(
        said(&envoy.log(), "falls back to its baseline") == 1,
        "one log line per proxy:\n{}",
        envoy.log()
    );

    // The controller answers again: the canary split is back.
    s.controller.restart().await?;
    let back = Instant::now();
    first_canary_response(&load, back).await?;
    ensure!(said(&envoy.log(), "lease renewed") == 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_needs_its_tokens_keeps_them_out_of_logs_and_stops_on_sigterm() -> Result<()>
{
    // Without tokens (and without --insecure-dev) it refuses to start, and says why.
    let dir = tempfile::tempdir()?;
    let out = std::process::Command::new(coalmine_e2e::controller_bin()?)
        .args(["--listen", "127.0.0.1:0", "--db"])
        .arg(dir.path().join("x.db"))
        .env_remove("COALMINE_OPERATOR_TOKEN")
        .env_remove("COALMINE_SYNC_TOKEN")
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "started without tokens");
    ensure!(
        stderr.contains("refusing to start without --operator-token")
            && stderr.contains("--insecure-dev"),
        "{stderr}"
    );
    // A feedback token that is another token's would grant more than feedback.
    let out = std::process::Command::new(coalmine_e2e::controller_bin()?)
        .args(["--listen", "127.0.0.1:0", "--db"])
        .arg(dir.path().join("y.db"))
        .env("COALMINE_OPERATOR_TOKEN", "same-token")
        .env("COALMINE_SYNC_TOKEN", "sync-token")
        .env("COALMINE_FEEDBACK_TOKEN", "same-token")
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success(),
        "started with the operator token as feedback token"
    );
    ensure!(
        stderr.contains("the feedback token must differ") && !stderr.contains("same-token"),
        "{stderr}"
    );

    let mut s = Stack::start(30_000).await?;
    let envoy = s.envoy("proxy-a", 30_000).await?;
    s.deployment(json!({})).await?;
    s.start_canary(20.0).await?;
    let load = Load::start(envoy.url("/predict/heart"), 50);
    first_canary_response(&load, Instant::now() - Duration::from_secs(60)).await?;
    let status = s.controller.terminate(Duration::from_secs(10)).await?;
    ensure!(status.success(), "SIGTERM: {status}");
    let log = s.controller.log();
    ensure!(
        log.contains("shutting down") && log.contains("stopped"),
        "{log}"
    );
    for token in [coalmine_e2e::OPERATOR_TOKEN, SYNC_TOKEN] {
        ensure!(
            !log.contains(token),
            "a token appears in the controller's log"
        );
    }
    ensure!(
        !envoy.log().contains(SYNC_TOKEN),
        "the sync token appears in Envoy's log"
    );
    Ok(())
}
