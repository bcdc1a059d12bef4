//! Time to rollback on the real stack: two real model servers (v1 and the
//! underfit v2), the controller checking every second, Envoy with two
//! workers, 200 predictions/s of real patients, the canary at 20 %.
//!
//! Each trial registers a fresh canary version (a rolled-back version is not
//! started again), lets it serve healthily, then at t0 switches the canary
//! model server to the seed's failure (19 % errors) through its fault
//! switch, and measures until no request reaches the canary any more.

use super::stats::{median, quantile, round};
use super::{Bench, DEPLOYMENT};
use anyhow::{Result, anyhow, bail};
use coalmine_e2e::models::Training;
use coalmine_e2e::{Envoy, EnvoyConfig, EnvoyOptions, Load, ModelServer, Sample, poll};
use serde::Serialize;
use serde_json::json;
use std::time::{Duration, Instant};

const RPS: u32 = 200;
const ERROR_RATE: f64 = 0.19;
const ADMIN_TOKEN: &str = "bench-models-admin-token";

#[derive(Debug, Clone, Serialize)]
pub struct Trial {
    pub version: String,
    /// From the fault switch until the send time of the last request that
    /// reached the canary.
    pub time_to_rollback_s: f64,
    /// Canary requests after t0, and how many of them failed.
    pub canary_requests: usize,
    pub failed_requests: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Rollback {
    pub requests_per_s: u32,
    pub canary_percent: f64,
    pub injected_error_rate: f64,
    pub check_interval_seconds: u64,
    pub sync_interval_ms: u64,
    pub trials: Vec<Trial>,
    pub time_to_rollback_median_s: f64,
    pub time_to_rollback_p95_s: f64,
    pub failed_requests_median: f64,
}

/// A model server for `version`, trained into the bench directory, on a free
/// port and the bench's CPUs.
pub(crate) async fn model_server(b: &Bench, version: &str, underfit: bool) -> Result<ModelServer> {
    let bin = b.bin("coalmine-models-server")?;
    let how = if underfit {
        Training::UNDERFIT
    } else {
        Training::FULL
    };
    let model = coalmine_e2e::models::train(&bin, b.dir(), version, how)?;
    let args = [
        "serve",
        "--model",
        &model.display().to_string(),
        "--listen",
        "127.0.0.1:0",
    ]
    .map(String::from);
    let env = [(
        "COALMINE_MODELS_ADMIN_TOKEN".to_string(),
        ADMIN_TOKEN.to_string(),
    )];
    ModelServer::serve(&bin, b.cpus.all.as_deref(), &args, &env, b.dir(), version).await
}

fn is_canary(s: &Sample) -> bool {
    s.role.as_deref() == Some("canary")
}

pub async fn run(b: &Bench) -> Result<Rollback> {
    let trials = if b.smoke { 1 } else { 10 };
    let v1 = model_server(b, "v1", false).await?;
    let v2 = model_server(b, "v2", true).await?;
    let controller = b.controller(b.cpus.all.as_deref()).await?;
    let policy = json!({"check_interval_seconds": 1, "cooldown_seconds": 0});
    b.deployment(&controller, policy).await?;
    let config = EnvoyConfig::shipped("envoy.yaml")?
        .upstream("heart-v1", v1.addr)?
        .upstream("heart-v2", v2.addr)?
        .upstream("coalmine_controller", controller.addr)?
        .plugin_config(&b.plugin_config())?;
    let envoy = Envoy::start_with(
        config,
        &EnvoyOptions {
            node_id: "bench-rollback".into(),
            concurrency: 2,
            cpus: b.cpus.all.clone(),
            ..EnvoyOptions::default()
        },
    )
    .await?;
    let patient = coalmine_e2e::patients()?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("no patients"))?;
    let load = Load::start_with(envoy.url("/predict/heart"), RPS, Some(patient));
    let client = reqwest::Client::new();

    let mut results = Vec::new();
    for t in 1..=trials {
        let version = format!("v2-trial{t}");
        v2.set_error_rate(&client, 0.0).await?;
        let started = Instant::now();
        b.start_canary(&controller, &version, 20.0).await?;
        // Healthy canary traffic first: at least 100 canary responses.
        poll("healthy canary traffic", Duration::from_secs(30), || {
            let n = load.since(started).iter().filter(|s| is_canary(s)).count();
            async move { Ok((n >= 100).then_some(())) }
        })
        .await?;
        let t0 = Instant::now();
        v2.set_error_rate(&client, ERROR_RATE).await?;
        // Done when the last 2 s saw at least 200 responses and none from the canary.
        let last_canary = poll("canary traffic to stop", Duration::from_secs(60), || {
            let samples = load.since(t0);
            let now = Instant::now();
            let recent: Vec<&Sample> = samples
                .iter()
                .filter(|s| now.duration_since(s.at) < Duration::from_secs(2))
                .collect();
            let stopped = recent.len() >= 200 && !recent.iter().any(|s| is_canary(s));
            let last = samples
                .iter()
                .filter(|s| is_canary(s))
                .map(|s| s.sent)
                .max();
            async move { Ok(stopped.then_some(last)) }
        })
        .await?;
        let after: Vec<Sample> = load
            .since(t0)
            .into_iter()
            .filter(|s| s.sent >= t0 && is_canary(s))
            .collect();
        let state = controller.client().deployment(DEPLOYMENT).await?;
        if state.canary.is_some() {
            bail!("canary traffic stopped but the controller still has a canary: {state:?}");
        }
        let trial = Trial {
            time_to_rollback_s: round(
                last_canary.map_or(0.0, |l| l.saturating_duration_since(t0).as_secs_f64()),
                3,
            ),
            canary_requests: after.len(),
            failed_requests: after
                .iter()
                .filter(|s| s.status >= 500 || s.status == 0)
                .count(),
            version,
        };
        b.progress(&format!(
            "rollback {t:>2}/{trials}: no canary request after {:.2} s; {} canary requests after the fault, {} failed",
            trial.time_to_rollback_s, trial.canary_requests, trial.failed_requests
        ));
        results.push(trial);
    }
    let times: Vec<f64> = results.iter().map(|t| t.time_to_rollback_s).collect();
    let failed: Vec<f64> = results.iter().map(|t| t.failed_requests as f64).collect();
    Ok(Rollback {
        requests_per_s: RPS,
        canary_percent: 20.0,
        injected_error_rate: ERROR_RATE,
        check_interval_seconds: 1,
        sync_interval_ms: 1000,
        time_to_rollback_median_s: median(&times).unwrap_or(0.0),
        time_to_rollback_p95_s: quantile(&times, 0.95).unwrap_or(0.0),
        failed_requests_median: median(&failed).unwrap_or(0.0),
        trials: results,
    })
}
