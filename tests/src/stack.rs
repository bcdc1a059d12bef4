//! The canary stack most end-to-end tests start: the controller, a baseline
//! and a canary upstream, and Envoys with the shipped config pointed at them.

use crate::{
    ControllerProc, Envoy, EnvoyConfig, Load, SERVER_NAME, SYNC_TOKEN, Sample, Upstream, poll,
    prometheus_value, without_outputs,
};
use anyhow::Result;
use coalmine_client::types::DeploymentView;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// The filters' sync interval in these tests.
pub const INTERVAL_MS: u64 = 1000;

/// The controller and both upstreams, each on a free loopback port.
#[derive(Debug)]
pub struct Stack {
    pub controller: ControllerProc,
    pub v1: Upstream,
    pub v2: Upstream,
}

/// The shipped plugin configuration pointed at the test controller; no
/// static split, so nothing reaches the canary before the controller says
/// so, and no outputs read (the tests that read them use
/// [`plugin_reading_outputs`]).
pub fn plugin(lease_ms: u64) -> Result<Value> {
    Ok(without_outputs(plugin_reading_outputs(lease_ms)?))
}

/// [`plugin`], reading the model's answers as the shipped configuration
/// does.
pub fn plugin_reading_outputs(lease_ms: u64) -> Result<Value> {
    let mut p = EnvoyConfig::shipped("envoy.yaml")?.shipped_plugin_config()?;
    p["controller"]["token"] = json!(SYNC_TOKEN);
    p["controller"]["interval_ms"] = json!(INTERVAL_MS);
    p["controller"]["lease_ms"] = json!(lease_ms);
    if let Some(d) = p["deployments"][0].as_object_mut() {
        d.remove("static");
    }
    Ok(p)
}

impl Stack {
    /// The controller serving HTTPS (as every `ControllerProc::start*`
    /// but `start_plain`), the two model versions.
    pub async fn start(lease_ms: u64) -> Result<Stack> {
        Stack::start_with(lease_ms, &[]).await
    }

    /// With a controller serving plain HTTP on loopback.
    pub async fn start_plain(lease_ms: u64) -> Result<Stack> {
        Ok(Stack {
            controller: ControllerProc::start_plain(lease_ms, &[]).await?,
            v1: Upstream::start("heart-v1").await?,
            v2: Upstream::start("heart-v2").await?,
        })
    }

    /// With extra controller arguments (e.g. `--webhook URL`).
    pub async fn start_with(lease_ms: u64, controller_args: &[&str]) -> Result<Stack> {
        Ok(Stack {
            controller: ControllerProc::start_with(lease_ms, controller_args).await?,
            v1: Upstream::start("heart-v1").await?,
            v2: Upstream::start("heart-v2").await?,
        })
    }

    /// With a controller serving HTTPS ([`ControllerProc::start_tls`]);
    /// the Envoys sync with it over TLS (`envoy-tls.yaml`).
    pub async fn start_tls(lease_ms: u64) -> Result<Stack> {
        Ok(Stack {
            controller: ControllerProc::start_tls(lease_ms, &[]).await?,
            v1: Upstream::start("heart-v1").await?,
            v2: Upstream::start("heart-v2").await?,
        })
    }

    /// The shipped Envoy config pointed at this stack: `envoy-tls.yaml`
    /// trusting the controller's CA when it serves HTTPS, else `envoy.yaml`.
    pub fn envoy_config(&self, lease_ms: u64) -> Result<EnvoyConfig> {
        let config = match self.controller.ca_file() {
            Some(ca) => EnvoyConfig::shipped("envoy-tls.yaml")?.upstream_tls(
                "coalmine_controller",
                ca,
                SERVER_NAME,
            )?,
            None => EnvoyConfig::shipped("envoy.yaml")?,
        };
        config
            .upstream("heart-v1", self.v1.addr)?
            .upstream("heart-v2", self.v2.addr)?
            .upstream("coalmine_controller", self.controller.addr)?
            .plugin_config(&plugin(lease_ms)?)
    }

    pub async fn envoy(&self, node: &str, lease_ms: u64) -> Result<Envoy> {
        Envoy::start_as(self.envoy_config(lease_ms)?, node).await
    }

    /// heart-prod on v1 with `policy`, v2 registered.
    pub async fn deployment(&self, policy: Value) -> Result<()> {
        self.controller.heart_prod(policy).await
    }

    /// v2 on a canary of heart-prod at `percent`.
    pub async fn start_canary(&self, percent: f64) -> Result<DeploymentView> {
        self.controller.start_canary(Some(percent)).await
    }

    pub async fn deployment_state(&self) -> Result<DeploymentView> {
        Ok(self.controller.client().deployment("heart-prod").await?)
    }
}

pub fn is_canary(s: &Sample) -> bool {
    s.role.as_deref() == Some("canary")
}

/// Waits until the last `quiet` of load saw no canary response (at least
/// `min` responses in it); returns when the last canary response was seen.
pub async fn canary_traffic_stops(
    load: &Load,
    quiet: Duration,
    min: usize,
    timeout: Duration,
) -> Result<Option<Instant>> {
    poll("canary traffic to stop", timeout, || {
        let samples = load.samples();
        let now = Instant::now();
        let recent: Vec<_> = samples
            .iter()
            .filter(|s| now.duration_since(s.at) < quiet)
            .collect();
        let stopped = recent.len() >= min && !recent.iter().any(|s| is_canary(s));
        let last = samples.iter().filter(|s| is_canary(s)).map(|s| s.at).max();
        async move { Ok(stopped.then_some(last)) }
    })
    .await
}

/// When the first canary response after `after` arrived.
pub async fn first_canary_response(load: &Load, after: Instant) -> Result<Instant> {
    poll("the first canary response", Duration::from_secs(15), || {
        let first = load.since(after).into_iter().find(is_canary).map(|s| s.at);
        async move { Ok(first) }
    })
    .await
}

/// Per role, the requests an Envoy's admin endpoint counted.
pub async fn role_counts(envoy: &Envoy) -> Result<(f64, f64)> {
    let text = envoy.prometheus().await?;
    let role = |r| {
        ["2xx", "4xx", "5xx", "reset"]
            .iter()
            .map(|c| {
                prometheus_value(
                    &text,
                    "coalmine_requests",
                    &[("deployment", "heart-prod"), ("role", r), ("class", c)],
                )
            })
            .sum::<f64>()
    };
    Ok((role("baseline"), role("canary")))
}

/// Each proxy's per-role counts once they stop changing (requests still
/// under way when a load stopped are counted first). The filter hands its
/// counts to Envoy on its tick, so "settled" means unchanged for longer
/// than a sync interval.
pub async fn settled_role_counts(proxies: &[Envoy]) -> Result<Vec<(f64, f64)>> {
    let steady_for = Duration::from_millis(INTERVAL_MS * 2);
    let last = std::sync::Mutex::new((Vec::new(), std::time::Instant::now()));
    poll(
        "the proxies' counts to settle",
        Duration::from_secs(10),
        || {
            let last = &last;
            async move {
                let mut now = Vec::new();
                for p in proxies {
                    now.push(role_counts(p).await?);
                }
                let mut before = last.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                if before.0 != now {
                    *before = (now, std::time::Instant::now());
                    return Ok(None);
                }
                Ok((before.1.elapsed() >= steady_for).then_some(now))
            }
        },
    )
    .await
}
