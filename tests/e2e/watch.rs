//! The post-promotion watch on the real stack (Envoy, the controller, two
//! model servers): a promoted version whose model server starts failing
//! within its watch is reverted to the pinned version within seconds; once
//! the watch is over, the same failure reverts nothing on its own.

use anyhow::{Result, ensure};
use coalmine_client::Action;
use coalmine_decide::engine::{ENGINE, EventKind};
use coalmine_e2e::models::Training;
use coalmine_e2e::{ControllerProc, Envoy, EnvoyConfig, Load, ModelServer, patients, plugin, poll};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const LEASE_MS: u64 = 30_000;

/// heart-prod on v1 with v2 promoted by the operator, both model servers
/// real, v2's with its fault switch, under load.
struct Promoted {
    _dir: tempfile::TempDir,
    _v1: ModelServer,
    v2: ModelServer,
    c: ControllerProc,
    _envoy: Envoy,
    _load: Load,
    /// When v2 was promoted.
    at: Instant,
}

/// Starts the stack with `watch_seconds`, runs v2 as a canary at 50 %
/// until v1 has a window to be compared with, promotes v2 and waits until
/// v2's own requests as the baseline count.
async fn promoted(watch_seconds: u64) -> Result<Promoted> {
    let dir = tempfile::tempdir()?;
    let v1 = ModelServer::trained(dir.path(), "v1", Training::FULL).await?;
    let v2 = ModelServer::trained_with_faults(dir.path(), "v2", Training::FULL).await?;
    let c = ControllerProc::start(LEASE_MS).await?;
    let config = EnvoyConfig::shipped("envoy.yaml")?
        .upstream("heart-v1", v1.addr)?
        .upstream("heart-v2", v2.addr)?
        .controller(&c)?
        .plugin_config(&plugin(LEASE_MS)?)?;
    let envoy = Envoy::start_as(config, "proxy-a").await?;
    c.heart_prod(json!({
        "check_interval_seconds": 1, "window_seconds": 10, "min_requests": 20,
        "auto_promote": false, "cooldown_seconds": 3,
        "post_promotion": {"watch_seconds": watch_seconds}
    }))
    .await?;
    let load = Load::cycling(envoy.url("/predict/heart"), 100, patients()?);
    c.start_canary(Some(50.0)).await?;
    let api = c.client();
    poll(
        "v1's window before the promotion",
        Duration::from_secs(20),
        || async {
            let h = api.health("heart-prod").await?;
            Ok((h.baseline.requests >= 200 && h.canary.requests >= 200).then_some(()))
        },
    )
    .await?;
    let d = api.act("heart-prod", Action::Promote, None).await?;
    let at = Instant::now();
    let w = d.health.watch.as_ref();
    ensure!(
        d.baseline.version == "v2" && w.is_some_and(|w| w.reference.version == "v1"),
        "no watch after the promotion: {:?}",
        d.health
    );
    Ok(Promoted {
        _dir: dir,
        _v1: v1,
        v2,
        c,
        _envoy: envoy,
        _load: load,
        at,
    })
}

fn reverts(
    events: &[coalmine_client::types::StoredEvent],
) -> Vec<&coalmine_client::types::StoredEvent> {
    events
        .iter()
        .filter(|e| e.event.kind == EventKind::RevertedToPinned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_promoted_version_failing_within_its_watch_is_reverted_within_5_s() -> Result<()> {
    let p = promoted(120).await?;
    let api = p.c.client();
    poll(
        "v2's requests as the baseline",
        Duration::from_secs(10),
        || async {
            let h = api.health("heart-prod").await?;
            Ok(h.watch.filter(|w| w.current.requests >= 20).map(|_| ()))
        },
    )
    .await?;
    let client = reqwest::Client::new();
    p.v2.set_faults(&client, json!({"error_rate": 1.0})).await?;
    let failing = Instant::now();
    poll("the revert to v1", Duration::from_secs(15), || async {
        let d = api.deployment("heart-prod").await?;
        Ok((d.baseline.version == "v1").then_some(()))
    })
    .await?;
    let took = failing.elapsed();
    let events = api.events("heart-prod", None, None).await?;
    let reverted = reverts(&events);
    ensure!(reverted.len() == 1, "reverts: {reverted:?}");
    let e = &reverted[0].event;
    println!(
        "v2 failing {:.1} s after its promotion was reverted to v1 after {:.2} s: {}",
        failing.duration_since(p.at).as_secs_f64(),
        took.as_secs_f64(),
        e.reason
    );
    ensure!(e.actor == ENGINE, "actor {}", e.actor);
    ensure!(
        e.reason.starts_with("post-promotion watch: "),
        "reason: {}",
        e.reason
    );
    let (new, old) = (&e.numbers["new_error_rate"], &e.numbers["old_error_rate"]);
    ensure!(
        new.as_f64().is_some_and(|r| r > 0.05) && old.as_f64().is_some_and(|r| r < 0.05),
        "numbers: {}",
        Value::Object(e.numbers.clone())
    );
    ensure!(
        took <= Duration::from_secs(5),
        "reverted after {took:?}, more than 5 s"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_the_watch_a_failing_version_is_not_reverted_automatically() -> Result<()> {
    let p = promoted(6).await?;
    let api = p.c.client();
    poll("the watch to end", Duration::from_secs(15), || async {
        let d = api.deployment("heart-prod").await?;
        Ok(d.health.watch.is_none().then_some(()))
    })
    .await?;
    println!(
        "the watch ended {:.1} s after the promotion",
        p.at.elapsed().as_secs_f64()
    );
    let client = reqwest::Client::new();
    p.v2.set_faults(&client, json!({"error_rate": 1.0})).await?;
    poll("v2's failures counted", Duration::from_secs(10), || async {
        let h = api.health("heart-prod").await?;
        Ok((h.baseline.errors >= 100).then_some(()))
    })
    .await?;
    // Watched for 8 s more: v2 keeps serving, failing, and nothing reverts.
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        let d = api.deployment("heart-prod").await?;
        ensure!(d.baseline.version == "v2", "reverted after the watch");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let events = api.events("heart-prod", None, None).await?;
    ensure!(reverts(&events).is_empty(), "reverted after the watch");
    let h = api.health("heart-prod").await?;
    println!(
        "8 s of failures after the watch: v2 at {:.0} % errors over {} requests, not reverted",
        h.baseline.error_rate * 100.0,
        h.baseline.requests
    );
    Ok(())
}
