//! What one host call costs on this machine: the empty filter in coalmine's
//! place, once doing nothing and once per kind of call coalmine makes on
//! its request path, making `per_request` calls of that kind for each
//! request (see `bench/empty-filter`). A call's price is the difference in
//! Envoy's CPU per request against the idle empty filter, divided by the
//! calls; the same from throughput (wall time per request on the one
//! worker) as a cross-check. Repetitions are interleaved; medians.
//!
//! These figures decide which crossings of the VM boundary are worth
//! removing from coalmine's request path.

use super::Bench;
use super::dataplane::interleaved;
use super::stats::round;
use anyhow::Result;
use coalmine_e2e::{Envoy, EnvoyConfig, EnvoyOptions, Upstream};
use serde::Serialize;
use serde_json::json;

/// The kinds of call, as the empty filter names them, and what each is.
pub const CALLS: [(&str, &str); 6] = [
    ("header_read", "read a request header (`:path`)"),
    ("header_write", "set a request header"),
    ("time", "read the host's clock"),
    ("property", "read a property (`request.duration`)"),
    ("counter", "increment a counter"),
    ("histogram", "record a histogram value"),
];

#[derive(Debug, Clone, Serialize)]
pub struct CallCost {
    pub call: &'static str,
    pub what: &'static str,
    pub requests_per_s: f64,
    pub cpu_us_per_request: f64,
    /// (CPU per request − the idle empty filter's) ÷ calls per request.
    pub cpu_us_per_call: f64,
    /// (1 / requests/s − the idle empty filter's) ÷ calls per request: the
    /// worker's time per call.
    pub wall_us_per_call: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Calibration {
    pub per_request: u32,
    pub repetitions: usize,
    pub seconds_per_run: u64,
    pub connections: u32,
    pub empty_requests_per_s: f64,
    pub empty_cpu_us_per_request: f64,
    pub calls: Vec<CallCost>,
}

pub async fn run(b: &Bench) -> Result<Calibration> {
    let (reps, secs, connections, per_request) = if b.smoke {
        (1, 1, 8, 10)
    } else {
        (3, 6, 32, 50)
    };
    let upstream = Upstream::start_counting("heart-v1").await?;
    let config = |call: Option<&str>| -> Result<EnvoyConfig> {
        let plugin = match call {
            Some(call) => json!({"calibrate": {"call": call, "per_request": per_request}}),
            None => json!({}),
        };
        Ok(EnvoyConfig::shipped("envoy.yaml")?
            .upstream("heart-v1", upstream.addr)?
            .upstream("heart-v2", upstream.addr)?
            // The empty filter never calls the controller.
            .upstream("coalmine_controller", upstream.addr)?
            .plugin_config(&plugin)?
            .wasm_module(coalmine_e2e::empty_filter_wasm()?))
    };
    let opts = EnvoyOptions {
        node_id: "bench-calibrate".into(),
        concurrency: 1,
        cpus: b.cpus.proxy.clone(),
        ..EnvoyOptions::default()
    };
    let mut envoys: Vec<(Option<(&str, &str)>, Envoy)> = Vec::new();
    envoys.push((None, Envoy::start_with(config(None)?, &opts).await?));
    for (call, what) in CALLS {
        let envoy = Envoy::start_with(config(Some(call))?, &opts).await?;
        envoys.push((Some((call, what)), envoy));
    }
    let named: Vec<(String, &Envoy)> = envoys
        .iter()
        .map(|(call, e)| (call.map_or("idle", |c| c.0).to_string(), e))
        .collect();
    let medians: Vec<(f64, f64)> = interleaved(b, "calibrate", &named, (reps, secs, connections))?
        .into_iter()
        .map(|(m, _)| m)
        .collect();
    let (idle_rps, idle_cpu) = medians.first().copied().unwrap_or_default();
    let n = f64::from(per_request.max(1));
    let per_call_wall = |rps: f64| {
        if rps > 0.0 && idle_rps > 0.0 {
            (1e6 / rps - 1e6 / idle_rps) / n
        } else {
            0.0
        }
    };
    let calls = envoys
        .iter()
        .zip(&medians)
        .filter_map(|((call, _), &(rps, cpu))| {
            let (call, what) = (*call)?;
            Some(CallCost {
                call,
                what,
                requests_per_s: round(rps, 0),
                cpu_us_per_request: round(cpu, 2),
                cpu_us_per_call: round((cpu - idle_cpu) / n, 2),
                wall_us_per_call: round(per_call_wall(rps), 2),
            })
        })
        .collect();
    Ok(Calibration {
        per_request,
        repetitions: reps,
        seconds_per_run: secs,
        connections,
        empty_requests_per_s: round(idle_rps, 0),
        empty_cpu_us_per_request: round(idle_cpu, 2),
        calls,
    })
}
