//! Split accuracy and propagation, on one Envoy with two workers syncing
//! with the controller.
//!
//! - Accuracy: the operator sets 20, 50 and 100 %; at each, wrk sends
//!   100 000 requests and the two upstreams count what they received.
//! - Propagation: under steady load from many connections (spread over both
//!   workers), the operator flips the split between 0 and 100 % fifty times.
//!   At those shares every single request shows which split routed it, so
//!   the time until the last request routed by the old split is exact.

use super::Bench;
use super::stats::{quantile, round};
use super::wrk::Wrk;
use anyhow::{Result, ensure};
use coalmine_e2e::{Envoy, EnvoyConfig, EnvoyOptions, Upstream, poll};
use rand::Rng;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Serialize)]
pub struct Level {
    pub configured_percent: f64,
    pub requests: u64,
    pub canary_requests: u64,
    pub observed_percent: f64,
    pub error_pp: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Routing {
    pub envoy_workers: u32,
    pub levels: Vec<Level>,
    pub split_error_pp: f64,
    pub changes: usize,
    /// Workers that accepted connections of the propagation load.
    pub workers_with_load: usize,
    pub propagation_ms: Vec<f64>,
    pub propagation_p50_ms: f64,
    pub propagation_p99_ms: f64,
    pub propagation_max_ms: f64,
}

const PATH: &str = "/predict/heart";

/// How long after `changed` every request was routed by the new split:
/// the send time of the first request after the last one routed by the old
/// split (`canary` says which role the new split sends everything to).
/// `None` until the new routing has held for `quiet`.
pub fn settled_after(
    samples: &[(Instant, bool)],
    changed: Instant,
    canary: bool,
    quiet: Duration,
) -> Option<Duration> {
    let after: Vec<&(Instant, bool)> = samples.iter().filter(|(t, _)| *t >= changed).collect();
    let last_old = after
        .iter()
        .filter(|(_, c)| *c != canary)
        .map(|(t, _)| *t)
        .max();
    let first_new = after
        .iter()
        .filter(|(t, c)| *c == canary && last_old.is_none_or(|old| *t > old))
        .map(|(t, _)| *t)
        .min()?;
    let newest = after.iter().map(|(t, _)| *t).max()?;
    (newest.duration_since(first_new) >= quiet).then(|| first_new.duration_since(changed))
}

/// Closed-loop load over `connections` connections, each at most `per_conn_rps`;
/// records (send time, routed to the canary) for every response.
struct RoleLoad {
    samples: Arc<Mutex<Vec<(Instant, bool)>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RoleLoad {
    fn start(url: String, connections: usize, per_conn_rps: u32) -> RoleLoad {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..connections)
            .map(|_| {
                let (url, samples, stop) = (url.clone(), samples.clone(), stop.clone());
                tokio::spawn(async move {
                    // One client per task: its own connection, so the load
                    // spreads over the workers the kernel hands them to.
                    let Ok(client) = reqwest::Client::builder()
                        .timeout(Duration::from_secs(5))
                        .pool_max_idle_per_host(1)
                        .build()
                    else {
                        return;
                    };
                    let mut tick =
                        tokio::time::interval(Duration::from_secs(1) / per_conn_rps.max(1));
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    while !stop.load(Ordering::Relaxed) {
                        tick.tick().await;
                        let sent = Instant::now();
                        if let Ok(r) = client.get(&url).send().await {
                            let canary = r
                                .headers()
                                .get("x-coalmine-role")
                                .is_some_and(|v| v == "canary");
                            let _ = r.bytes().await;
                            if let Ok(mut s) = samples.lock() {
                                s.push((sent, canary));
                            }
                        }
                    }
                })
            })
            .collect();
        RoleLoad {
            samples,
            stop,
            tasks,
        }
    }

    fn samples(&self) -> Vec<(Instant, bool)> {
        self.samples.lock().map(|s| s.clone()).unwrap_or_default()
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Distinct workers whose listener accepted connections.
async fn workers_with_connections(envoy: &Envoy) -> Result<usize> {
    let text = reqwest::get(envoy.admin_url("/stats?filter=worker_[0-9]+\\.downstream_cx_total"))
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("listener.") && !l.starts_with("listener.admin"))
        .filter(|l| {
            l.rsplit(':')
                .next()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
                > 0
        })
        .count())
}

/// Returns the figures and the filter VM's memory after the load.
pub async fn run(b: &Bench) -> Result<(Routing, u64)> {
    let (per_level, changes) = if b.smoke { (2_000, 3) } else { (100_000, 50) };
    let v1 = Upstream::start_counting("heart-v1").await?;
    let v2 = Upstream::start_counting("heart-v2").await?;
    let controller = b.controller(None).await?;
    b.canary(&controller, 20.0, true).await?;
    let config = EnvoyConfig::shipped("envoy.yaml")?
        .upstream("heart-v1", v1.addr)?
        .upstream("heart-v2", v2.addr)?
        .upstream("coalmine_controller", controller.addr)?
        .plugin_config(&b.plugin_config())?;
    let workers = 2;
    let envoy = Envoy::start_with(
        config,
        &EnvoyOptions {
            node_id: "bench-routing".into(),
            concurrency: workers,
            cpus: b.cpus.all.clone(),
            ..EnvoyOptions::default()
        },
    )
    .await?;
    let url = envoy.url(PATH);

    let mut levels = Vec::new();
    for percent in [20.0, 50.0, 100.0] {
        b.set_traffic(&controller, percent).await?;
        b.wait_share(&envoy, (percent * 100.0) as u32).await?;
        // Warm both workers onto the new table before counting; the warm-up
        // rate bounds the counted run (wrk waits out its whole duration even
        // after the last response, so the duration should not be generous).
        let warm = Wrk {
            url: &url,
            connections: 16,
            duration: Duration::from_secs(1),
            limit: None,
        }
        .run(b.dir())?;
        let at_half_rate = 2.0 * per_level as f64 / warm.requests_per_s().max(100.0);
        let duration = Duration::from_secs_f64(at_half_rate.ceil() + 1.0);
        let settled = || async {
            let mut last = (v1.count(), v2.count());
            poll(
                "the upstream counts to settle",
                Duration::from_secs(10),
                || {
                    let now = (v1.count(), v2.count());
                    let done = now == last;
                    last = now;
                    async move {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok(done.then_some(now))
                    }
                },
            )
            .await
        };
        let before = settled().await?;
        let w = Wrk {
            url: &url,
            connections: 16,
            duration,
            limit: Some(per_level),
        }
        .run(b.dir())?;
        let after = settled().await?;
        let (base, canary) = (after.0 - before.0, after.1 - before.1);
        let requests = base + canary;
        ensure!(
            requests >= per_level,
            "only {requests} of {per_level} requests arrived (wrk: {w:?})"
        );
        let observed = 100.0 * canary as f64 / requests as f64;
        let level = Level {
            configured_percent: percent,
            requests,
            canary_requests: canary,
            observed_percent: round(observed, 3),
            error_pp: round((observed - percent).abs(), 3),
        };
        b.progress(&format!(
            "split at {percent:>5.1} %: {canary} of {requests} requests to the canary = {:.3} % (error {:.3} pp)",
            level.observed_percent, level.error_pp
        ));
        levels.push(level);
    }

    // Propagation: flip between 0 and 100 % under load.
    b.set_traffic(&controller, 0.0).await?;
    b.wait_share(&envoy, 0).await?;
    let load = RoleLoad::start(url.clone(), 16, 125);
    let mut rng = rand::rng();
    let mut propagation_ms = Vec::new();
    for i in 0..changes {
        // A random pause, so changes land at every phase of the sync ticks.
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..1100))).await;
        let to_canary = i % 2 == 0;
        let changed = Instant::now();
        b.set_traffic(&controller, if to_canary { 100.0 } else { 0.0 })
            .await?;
        let took = poll(
            "every worker to route by the new split",
            Duration::from_secs(10),
            || {
                let r = settled_after(
                    &load.samples(),
                    changed,
                    to_canary,
                    Duration::from_millis(300),
                );
                async move { Ok(r) }
            },
        )
        .await?;
        let ms = round(took.as_secs_f64() * 1000.0, 1);
        b.progress(&format!(
            "propagation {:>2}/{changes}: {} % reached every worker after {ms:>6.1} ms",
            i + 1,
            if to_canary { 100 } else { 0 }
        ));
        propagation_ms.push(ms);
    }
    load.stop().await;
    let workers_with_load = workers_with_connections(&envoy).await?;
    let vm_memory = b.vm_memory_bytes(&envoy).await?;
    let q = |p: f64| quantile(&propagation_ms, p).unwrap_or(0.0);
    Ok((
        Routing {
            envoy_workers: workers,
            split_error_pp: levels.iter().map(|l| l.error_pp).fold(0.0, f64::max),
            levels,
            changes,
            workers_with_load,
            propagation_p50_ms: q(0.5),
            propagation_p99_ms: q(0.99),
            propagation_max_ms: q(1.0),
            propagation_ms,
        },
        vm_memory,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settles_after_the_last_request_routed_by_the_old_split() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let quiet = Duration::from_millis(300);
        // Requests before the change do not count; the old split went on
        // until 250 ms (one worker lagging), the new one from 260 ms.
        let mut samples = vec![
            (at(0), false),
            (at(100), false),
            (at(200), true),
            (at(250), false),
        ];
        samples.extend((26..60).map(|i| (at(i * 10), true)));
        assert_eq!(
            settled_after(&samples, at(50), true, quiet),
            Some(Duration::from_millis(210))
        );
        // Not yet settled: the new routing has not held for `quiet`.
        assert_eq!(settled_after(&samples[..10], at(50), true, quiet), None);
        // Nothing routed by the old split after the change: the first request.
        let all_new: Vec<_> = (0..50).map(|i| (at(i * 10), true)).collect();
        assert_eq!(
            settled_after(&all_new, at(95), true, quiet),
            Some(Duration::from_millis(5))
        );
        assert_eq!(settled_after(&[], at(0), true, quiet), None);
    }
}
