//! Controller capacity: simulated proxies' workers each syncing once a
//! second with realistic reports (two deployments, baseline and canary, full
//! latency histograms), at a rising rate, against the controller confined to
//! one core. The capacity is the highest rate at which every report was
//! answered 200 and the p99 sync latency stayed ≤ 10 ms.
//!
//! The load is open-loop: each report has a scheduled send time and its
//! latency counts from then, so a controller falling behind shows up as
//! latency instead of silently slowing the load down.

use super::machine::cpu_seconds;
use super::stats::{quantile, round};
use super::{Bench, DEPLOYMENT};
use anyhow::{Result, anyhow};
use coalmine_client::paths;
use coalmine_e2e::{ControllerProc, SYNC_TOKEN};
use coalmine_protocol::sync::{RoleReport, SyncRequest};
use coalmine_protocol::{Outcome, Role, stats::RoleStats};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const P99_LIMIT_MS: f64 = 10.0;
const SECOND_DEPLOYMENT: &str = "fraud-prod";

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub target_reports_per_s: u32,
    pub simulated_workers: u32,
    pub sent: usize,
    pub answered_ok: usize,
    pub achieved_reports_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// The controller's CPU time per report at this rate.
    pub controller_cpu_us_per_report: f64,
    pub sustained: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Capacity {
    pub seconds_per_step: u64,
    pub report_bytes: usize,
    pub p99_limit_ms: f64,
    pub steps: Vec<Step>,
    pub controller_reports_per_s: u32,
    /// Whether a step failed; if not, the ceiling lies above the last step.
    pub ceiling_found: bool,
}

/// One worker's report for one second: both roles of both deployments,
/// with latencies spread like a model server's (a few ms, a long tail).
fn reports(rng: &mut impl Rng) -> Vec<RoleReport> {
    let mut out = Vec::new();
    for (deployment, baseline_rps) in [(DEPLOYMENT, 80), (SECOND_DEPLOYMENT, 40)] {
        for (role, version, n) in [
            (Role::Baseline, "v1", baseline_rps),
            (Role::Canary, "v2", baseline_rps / 4),
        ] {
            let Ok(mut stats) = RoleStats::try_new() else {
                continue;
            };
            for _ in 0..n {
                let latency = 2_000
                    + rng.random_range(0..3_000)
                    + if rng.random_bool(0.02) {
                        rng.random_range(0..200_000)
                    } else {
                        0
                    };
                let outcome = if rng.random_bool(0.005) {
                    Outcome::ServerError
                } else {
                    Outcome::Success
                };
                stats.record(outcome, latency);
            }
            out.push(RoleReport::from_stats(deployment, role, version, &stats));
        }
    }
    out
}

/// Sends `rate` reports a second for `seconds`, spread over `rate` simulated
/// workers (each syncing once a second), and measures every answer.
async fn step(
    b: &Bench,
    url: &str,
    pid: u32,
    rate: u32,
    seconds: u64,
    pool: &[Vec<RoleReport>],
) -> Result<Step> {
    let total = rate as usize * seconds as usize;
    // Bodies first, so building them costs nothing during the measurement.
    let bodies: Vec<Vec<u8>> = (0..total)
        .map(|i| {
            let worker = i % rate as usize;
            let request = SyncRequest {
                proxy: format!("bench-proxy-{}", worker / 4),
                instance: format!("rate{rate}-worker{worker}"),
                seq: (i / rate as usize) as u64 + 1,
                epoch: 0,
                reports: pool.get(i % pool.len()).cloned().unwrap_or_default(),
                shadow: Vec::new(),
            };
            serde_json::to_vec(&request).unwrap_or_default()
        })
        .collect();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(4096)
        .build()?;
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let cpu_before = cpu_seconds(pid)?;
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let interval = Duration::from_secs(1).as_secs_f64() / f64::from(rate);
    let mut tasks = Vec::with_capacity(total);
    for (i, body) in bodies.into_iter().enumerate() {
        let scheduled = start + Duration::from_secs_f64(i as f64 * interval);
        tokio::time::sleep_until(scheduled).await;
        let (client, latencies, url) = (client.clone(), latencies.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let ok = client
                .post(&url)
                .bearer_auth(SYNC_TOKEN)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ok && let Ok(mut l) = latencies.lock() {
                l.push(scheduled.elapsed().as_secs_f64() * 1000.0);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid)? - cpu_before;
    let latencies = latencies
        .lock()
        .map(|l| l.clone())
        .map_err(|_| anyhow!("poisoned"))?;
    let p99 = quantile(&latencies, 0.99).unwrap_or(f64::INFINITY);
    let step = Step {
        target_reports_per_s: rate,
        simulated_workers: rate,
        sent: total,
        answered_ok: latencies.len(),
        achieved_reports_per_s: round(latencies.len() as f64 / elapsed, 0),
        p50_ms: round(quantile(&latencies, 0.5).unwrap_or(f64::INFINITY), 2),
        p99_ms: round(p99, 2),
        controller_cpu_us_per_report: round(cpu * 1e6 / total.max(1) as f64, 1),
        sustained: latencies.len() == total && p99 <= P99_LIMIT_MS,
    };
    b.progress(&format!(
        "controller at {rate:>5} reports/s: {} of {total} answered, p50 {:.2} ms, p99 {:.2} ms, {:.0} µs CPU/report → {}",
        step.answered_ok,
        step.p50_ms,
        step.p99_ms,
        step.controller_cpu_us_per_report,
        if step.sustained { "sustained" } else { "not sustained" }
    ));
    Ok(step)
}

/// The capacity of a controller on SQLite (`db` none) or on the
/// PostgreSQL database at `db`.
pub async fn run(b: &Bench, db: Option<&str>) -> Result<Capacity> {
    let (rates, seconds): (&[u32], u64) = if b.smoke {
        (&[200], 1)
    } else {
        (
            &[500, 1000, 2000, 4000, 8000, 12000, 16000, 24000, 32000],
            5,
        )
    };
    let controller = match db {
        None => b.controller(b.cpus.proxy.as_deref()).await?,
        Some(url) => {
            let bin = b.bin("coalmine-controller")?;
            ControllerProc::start_from_on(bin, b.cpus.proxy.as_deref(), url, 30_000, &[]).await?
        }
    };
    if db.is_some() {
        coalmine_e2e::poll(
            "the controller to lead",
            Duration::from_secs(20),
            || async { Ok(controller.client().readyz().await.is_ok().then_some(())) },
        )
        .await?;
    }
    b.progress(&format!(
        "controller capacity on {}",
        if db.is_some() { "PostgreSQL" } else { "SQLite" }
    ));
    let pid = controller
        .pid()
        .ok_or_else(|| anyhow!("controller not running"))?;
    b.canary(&controller, 20.0, true).await?;
    b.create(&controller, SECOND_DEPLOYMENT, "fraud-v1", json!({}))
        .await?;
    b.start_canary_of(&controller, SECOND_DEPLOYMENT, "v2", "fraud-v2", 20.0)
        .await?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let pool: Vec<Vec<RoleReport>> = (0..64).map(|_| reports(&mut rng)).collect();
    let report_bytes = pool
        .first()
        .map(|r| {
            serde_json::to_vec(&SyncRequest {
                proxy: "bench-proxy-0".into(),
                instance: "worker0".into(),
                seq: 1,
                epoch: 0,
                reports: r.clone(),
                shadow: Vec::new(),
            })
            .map_or(0, |v| v.len())
        })
        .unwrap_or(0);
    let url = controller.url(paths::SYNC);
    let mut steps = Vec::new();
    let mut best = 0;
    let mut ceiling_found = false;
    for &rate in rates {
        let s = step(b, &url, pid, rate, seconds, &pool).await?;
        let sustained = s.sustained;
        steps.push(s);
        if !sustained {
            ceiling_found = true;
            break;
        }
        best = rate;
    }
    Ok(Capacity {
        seconds_per_step: seconds,
        report_bytes,
        p99_limit_ms: P99_LIMIT_MS,
        steps,
        controller_reports_per_s: best,
        ceiling_found,
    })
}
