//! The exponential ramp on the real stack: a healthy canary (the same
//! trained model as the baseline, on real model servers behind Envoy)
//! climbs 1 → 2 → 4 → 8 → 16 → 32 → 64 → 100 % one healthy bake at a time
//! and is promoted, every step in the timeline.

use anyhow::{Result, ensure};
use coalmine_client::types::StartCanary;
use coalmine_decide::policy::{Exponential, Schedule};
use coalmine_e2e::models::Training;
use coalmine_e2e::{
    ControllerProc, Envoy, EnvoyConfig, Load, ModelServer, kinds, patients, plugin, poll,
};
use serde_json::json;
use std::time::{Duration, Instant};

const LEASE_MS: u64 = 30_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_healthy_canary_climbs_the_exponential_ramp_and_is_promoted() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let v1 = ModelServer::trained(dir.path(), "v1", Training::FULL).await?;
    let v2 = ModelServer::trained(dir.path(), "v2", Training::FULL).await?;
    let c = ControllerProc::start(LEASE_MS).await?;
    let config = EnvoyConfig::shipped("envoy.yaml")?
        .upstream("heart-v1", v1.addr)?
        .upstream("heart-v2", v2.addr)?
        .controller(&c)?
        .plugin_config(&plugin(LEASE_MS)?)?;
    let envoy = Envoy::start_as(config, "proxy-a").await?;
    // At 1 % of 200 requests/s the canary sees about two requests a second.
    // The significance guard would want hundreds of canary requests before
    // it calls the canary non-inferior at the first share; this test is
    // about the ramp, not the statistics, so it uses the bare seed rules
    // ("none") with a low bar of 5 requests in either role, which the
    // canary's window (30 s, covering the whole ramp) reaches within a few
    // seconds at 1 % and keeps from then on.
    c.heart_prod(json!({
        "check_interval_seconds": 1, "window_seconds": 30, "min_requests": 5,
        "promote": {"min_canary_requests": 5}, "significance": "none"
    }))
    .await?;
    // Clean patients only: no malformed request, so neither model errs.
    let _load = Load::cycling(envoy.url("/predict/heart"), 200, patients()?);
    let ramp = Schedule::Exponential(Exponential {
        start: 1.0,
        factor: 2.0,
        every_seconds: 1,
        max: 100.0,
    });
    let start = StartCanary {
        version: "v2".into(),
        schedule: Some(ramp),
        ..StartCanary::default()
    };
    let started = Instant::now();
    let d = c.client().start_canary("heart-prod", &start).await?;
    let planned = d
        .canary
        .as_ref()
        .map(|c| c.steps.clone())
        .unwrap_or_default();
    ensure!(
        planned == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 100.0],
        "planned {planned:?}"
    );
    poll("the promotion", Duration::from_secs(50), || async {
        let d = c.client().deployment("heart-prod").await?;
        Ok((d.baseline.version == "v2").then_some(()))
    })
    .await?;
    let took = started.elapsed();
    let events = c.client().events("heart-prod", None, None).await?;
    let from_start: Vec<_> = events
        .iter()
        .skip_while(|e| e.event.kind.as_str() != "canary_started")
        .cloned()
        .collect();
    let timeline = kinds(&from_start);
    println!(
        "promoted {:.1} s after the canary started: {timeline:?}",
        took.as_secs_f64()
    );
    let mut expected = vec!["canary_started"];
    expected.extend(["step_advanced"; 7]);
    expected.push("promoted");
    ensure!(timeline == expected, "timeline: {timeline:?}");
    let steps: Vec<(f64, f64)> = from_start
        .iter()
        .filter(|e| e.event.kind.as_str() == "step_advanced")
        .map(|e| {
            let n = &e.event.numbers;
            (
                n["from_percent"].as_f64().unwrap_or(f64::NAN),
                n["to_percent"].as_f64().unwrap_or(f64::NAN),
            )
        })
        .collect();
    ensure!(
        steps
            == [
                (1.0, 2.0),
                (2.0, 4.0),
                (4.0, 8.0),
                (8.0, 16.0),
                (16.0, 32.0),
                (32.0, 64.0),
                (64.0, 100.0)
            ],
        "steps: {steps:?}"
    );
    let d = c.client().deployment("heart-prod").await?;
    ensure!(
        d.canary.is_none() && d.pinned.as_ref().map(|p| p.version.as_str()) == Some("v1"),
        "{d:?}"
    );
    Ok(())
}
