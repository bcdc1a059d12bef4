//! `make soak`: the whole stack under a fixed request rate for a long time,
//! with canary cycles and injected faults, watching for what only time shows:
//! failed requests nothing explains, memory that creeps, events that go
//! missing.
//!
//! Two real model servers (clusters heart-v1 and heart-v2), the release
//! controller, Envoy with two workers, predictions of real patients at a
//! fixed rate. The driver repeats four cycles, each on a freshly registered
//! version on the cluster that is not serving the baseline:
//!
//! - `promote`: the canary bakes through 20 → 50 → 100 % and is promoted;
//! - `auto_rollback`: the canary's model server starts failing half its
//!   requests (its fault switch) and the engine rolls back;
//! - `operator`: the split is set by hand, paused, resumed, rolled back;
//! - `controller_restart`: the controller is killed (`kill -9`) and started
//!   again on its database mid-canary, which then runs to promotion.
//!
//! A failed request is explained only when the canary served it while its
//! model server was failing on purpose; every other failure counts against
//! the soak. Memory (the filter VM's, Envoy's and the controller's RSS) is
//! sampled every few seconds and compared between the first and the last
//! window after a warm-up. At the end, the event log must hold every event
//! the cycles caused, with contiguous ids.

use super::machine::rss_bytes;
use super::rollback::model_server;
use super::stats::round;
use super::{Bench, DEPLOYMENT};
use cycles::Run;

mod cycles;
use anyhow::{Result, anyhow, bail};
use coalmine_e2e::{ControllerProc, Envoy, EnvoyConfig, EnvoyOptions, Load, Sample};
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const RPS: u32 = 100;
const CANARY_ERROR_RATE: f64 = 0.5;
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Allowed change of memory between the first and the last window.
const FLAT: f64 = 0.10;

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CycleKind {
    Promote,
    AutoRollback,
    Operator,
    ControllerRestart,
}

const CYCLES: [CycleKind; 4] = [
    CycleKind::Promote,
    CycleKind::AutoRollback,
    CycleKind::Operator,
    CycleKind::ControllerRestart,
];

#[derive(Debug, Clone, Serialize)]
pub struct Cycle {
    pub kind: CycleKind,
    pub version: String,
    pub started_s: f64,
    pub took_s: f64,
}

/// A span during which the canary's model server failed on purpose.
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    pub kind: &'static str,
    pub from_s: f64,
    pub to_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemorySample {
    pub at_s: f64,
    pub vm_memory_bytes: u64,
    pub envoy_rss_bytes: u64,
    pub controller_rss_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Trend {
    pub first_window_mean: f64,
    pub last_window_mean: f64,
    /// last / first − 1.
    pub change: f64,
    pub flat: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Events {
    pub total: usize,
    pub ids_contiguous: bool,
    pub by_kind: BTreeMap<String, usize>,
    /// Events the cycles caused that the log does not hold.
    pub missing: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Soak {
    pub duration_s: f64,
    pub requests_per_s: u32,
    pub requests: usize,
    pub failed_requests: usize,
    /// Failed on the canary while its model server failed on purpose.
    pub failed_explained_by_faults: usize,
    pub failed_unexplained: usize,
    pub cycles: Vec<Cycle>,
    pub faults: Vec<Fault>,
    pub controller_restarts: usize,
    pub warmup_s: f64,
    pub window_s: f64,
    pub vm_memory: Trend,
    pub envoy_rss: Trend,
    pub controller_rss: Trend,
    pub events: Events,
    pub memory: Vec<MemorySample>,
    pub passed: bool,
}

/// The clusters the two model servers serve.
/// The mean of `value` over the first and the last window after `warmup`.
fn trend(
    samples: &[MemorySample],
    warmup: f64,
    window: f64,
    value: fn(&MemorySample) -> u64,
) -> Trend {
    let end = samples.last().map_or(0.0, |s| s.at_s);
    let mean = |from: f64, to: f64| {
        let v: Vec<f64> = samples
            .iter()
            .filter(|s| s.at_s >= from && s.at_s < to)
            .map(|s| value(s) as f64)
            .collect();
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let first = mean(warmup, warmup + window);
    let last = mean(end - window, end + 1.0);
    let change = if first > 0.0 {
        last / first - 1.0
    } else {
        f64::INFINITY
    };
    Trend {
        first_window_mean: round(first, 0),
        last_window_mean: round(last, 0),
        change: round(change, 4),
        flat: change.abs() <= FLAT,
    }
}

/// Whether a failed request is explained by an injected fault: the canary
/// served it while its model server was failing on purpose (the request was
/// under way at some moment of the fault: answered after it began, sent
/// before it ended).
fn explained(s: &Sample, faults: &[(Instant, Instant)]) -> bool {
    s.role.as_deref() == Some("canary")
        && faults
            .iter()
            .any(|&(from, to)| s.at >= from && s.sent <= to)
}

/// Samples memory every [`SAMPLE_EVERY`] until aborted.
async fn sample_memory(
    envoy: Arc<Envoy>,
    controller_pid: Arc<AtomicU32>,
    started: Instant,
    out: Arc<Mutex<Vec<MemorySample>>>,
) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tick.tick().await;
        let vm = envoy.prometheus().await.map(|text| {
            coalmine_e2e::prometheus_value(&text, "coalmine_vm_memory_bytes", &[]) as u64
        });
        let pid = controller_pid.load(Ordering::SeqCst);
        // A sample taken while the controller restarts is skipped.
        if let (Ok(vm), Ok(envoy_rss), Ok(controller_rss)) =
            (vm, rss_bytes(envoy.pid()), rss_bytes(pid))
            && let Ok(mut out) = out.lock()
        {
            out.push(MemorySample {
                at_s: round(started.elapsed().as_secs_f64(), 1),
                vm_memory_bytes: vm,
                envoy_rss_bytes: envoy_rss,
                controller_rss_bytes: controller_rss,
            });
        }
    }
}

pub async fn run(minutes: f64, out: &Path) -> Result<Soak> {
    let b = Bench::new(minutes < 10.0, super::bin_dir()?)?;
    let duration = Duration::from_secs_f64(minutes * 60.0);
    // A warm-up of a minute (20 s in short runs), then windows of five
    // minutes (a third of the rest in short runs).
    let warmup = if minutes >= 10.0 { 60.0 } else { 20.0 };
    let window = 300.0_f64.min((duration.as_secs_f64() - warmup) / 3.0);
    if window < 10.0 {
        bail!("a soak of {minutes} min is too short to compare memory; give at least 1.5 min");
    }
    b.progress(&format!(
        "soak: {minutes} min at {RPS} requests/s; memory compared over the first and last {window:.0} s after {warmup:.0} s"
    ));
    let servers = [
        model_server(&b, "v1", false).await?,
        model_server(&b, "v2", false).await?,
    ];
    let controller =
        ControllerProc::start_from(b.bin("coalmine-controller")?, None, 30_000, &[]).await?;
    let policy = json!({
        "check_interval_seconds": 1, "window_seconds": 30, "bake_seconds": 3,
        "cooldown_seconds": 0, "steps": [20, 50, 100],
    });
    b.deployment(&controller, policy).await?;
    let config = EnvoyConfig::shipped("envoy.yaml")?
        .upstream("heart-v1", servers[0].addr)?
        .upstream("heart-v2", servers[1].addr)?
        .upstream("coalmine_controller", controller.addr)?
        .plugin_config(&b.plugin_config())?;
    let envoy = Arc::new(
        Envoy::start_with(
            config,
            &EnvoyOptions {
                node_id: "soak".into(),
                concurrency: 2,
                cpus: None,
                ..EnvoyOptions::default()
            },
        )
        .await?,
    );
    let patient = coalmine_e2e::patients()?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("no patients"))?;
    let load = Load::start_with(envoy.url("/predict/heart"), RPS, Some(patient));
    let started = Instant::now();
    let controller_pid = Arc::new(AtomicU32::new(controller.pid().unwrap_or(0)));
    let memory = Arc::new(Mutex::new(Vec::new()));
    let sampler = tokio::spawn(sample_memory(
        envoy.clone(),
        controller_pid.clone(),
        started,
        memory.clone(),
    ));
    let mut run = Run {
        b: &b,
        controller,
        servers,
        client: reqwest::Client::new(),
        started,
        versions: 0,
        cycles: Vec::new(),
        faults: Vec::new(),
        restarts: 0,
        last_id: 0,
        expected: BTreeMap::from([("deployment_created", 1), ("version_registered", 1)]),
    };
    let mut n = 0;
    while started.elapsed() < duration {
        let kind = CYCLES[n % CYCLES.len()];
        n += 1;
        let result = run.cycle(kind, &load).await;
        controller_pid.store(run.controller.pid().unwrap_or(0), Ordering::SeqCst);
        if let Err(e) = result {
            sampler.abort();
            bail!(
                "{kind:?} cycle failed: {e:#}\ncontroller log:\n{}",
                run.controller.log()
            );
        }
    }
    sampler.abort();
    let elapsed = started.elapsed().as_secs_f64();
    // Requests still under way are dropped with the load, uncounted either
    // way: every counted request has its answer.
    let samples = load.samples();
    drop(load);

    let failed: Vec<&Sample> = samples.iter().filter(|s| s.status != 200).collect();
    let explained_n = failed.iter().filter(|s| explained(s, &run.faults)).count();
    let memory = memory.lock().map(|m| m.clone()).unwrap_or_default();
    let vm_memory = trend(&memory, warmup, window, |s| s.vm_memory_bytes);
    let envoy_rss = trend(&memory, warmup, window, |s| s.envoy_rss_bytes);
    let controller_rss = trend(&memory, warmup, window, |s| s.controller_rss_bytes);

    let log = run
        .controller
        .client()
        .events(DEPLOYMENT, None, Some(10_000))
        .await?;
    let ids: Vec<i64> = log.iter().map(|e| e.id).collect();
    let mut by_kind = BTreeMap::new();
    for e in &log {
        *by_kind
            .entry(e.event.kind.as_str().to_string())
            .or_insert(0) += 1;
    }
    let missing: Vec<String> = run
        .expected
        .iter()
        .filter(|&(k, &n)| by_kind.get(*k).copied().unwrap_or(0) < n)
        .map(|(k, n)| {
            format!(
                "{k}: expected {n}, found {}",
                by_kind.get(*k).copied().unwrap_or(0)
            )
        })
        .collect();
    let events = Events {
        total: log.len(),
        ids_contiguous: ids.windows(2).all(|w| w[1] == w[0] + 1) && ids.first() == Some(&1),
        by_kind,
        missing,
    };
    let faults = run
        .faults
        .iter()
        .map(|&(from, to)| Fault {
            kind: "canary_error_rate_0.5",
            from_s: run.at(from),
            to_s: run.at(to),
        })
        .collect();
    let failed_unexplained = failed.len() - explained_n;
    let passed = failed_unexplained == 0
        && vm_memory.flat
        && envoy_rss.flat
        && controller_rss.flat
        && events.ids_contiguous
        && events.missing.is_empty();
    let soak = Soak {
        duration_s: round(elapsed, 1),
        requests_per_s: RPS,
        requests: samples.len(),
        failed_requests: failed.len(),
        failed_explained_by_faults: explained_n,
        failed_unexplained,
        cycles: run.cycles.clone(),
        faults,
        controller_restarts: run.restarts,
        warmup_s: warmup,
        window_s: round(window, 0),
        vm_memory,
        envoy_rss,
        controller_rss,
        events,
        memory,
        passed,
    };
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, serde_json::to_string_pretty(&soak)? + "\n")?;
    b.progress(&format!("wrote {}", out.display()));
    for (s, what) in failed
        .iter()
        .filter(|s| !explained(s, &run.faults))
        .take(5)
        .map(|s| (s, "unexplained failure"))
    {
        println!(
            "{what}: status {} role {:?} served by {:?} at {:.1} s",
            s.status,
            s.role,
            s.served_by,
            s.sent.duration_since(started).as_secs_f64()
        );
    }
    Ok(soak)
}
