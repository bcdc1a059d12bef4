//! Builds of the filter side by side: the shipped config (header strip +
//! filter at 80/20, controller syncing, no outputs read) with each given
//! module in turn, and with the empty filter for reference. This is how a
//! change to the request path is measured on its own: build the module
//! before and after it, then
//!
//! ```text
//! coalmine-bench --only compare --module before.wasm --module after.wasm
//! ```
//!
//! Repetitions are interleaved as in the data-plane section; medians are
//! reported, with each module's throughput against the first module's and
//! against the empty filter's. Every module is given the shipped plugin
//! configuration, so a build from before a configuration field was added
//! refuses it; measure such a change with the field's effect switched in
//! the code instead.

use super::Bench;
use super::dataplane::interleaved;
use super::stats::round;
use anyhow::{Context, Result, bail};
use coalmine_e2e::{Envoy, EnvoyConfig, EnvoyOptions, Upstream};
use serde::Serialize;
use std::path::PathBuf;

/// One module's medians.
#[derive(Debug, Clone, Serialize)]
pub struct Module {
    pub module: String,
    pub requests_per_s: f64,
    pub cpu_us_per_request: f64,
    /// Median requests/s against the first module's.
    pub throughput_vs_first: f64,
    /// Median requests/s against the empty filter's.
    pub throughput_vs_empty_wasm: f64,
    pub runs_requests_per_s: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub repetitions: usize,
    pub seconds_per_run: u64,
    pub connections: u32,
    pub empty_wasm_requests_per_s: f64,
    pub modules: Vec<Module>,
}

pub async fn run(b: &Bench, modules: &[PathBuf]) -> Result<Comparison> {
    if modules.is_empty() {
        bail!("compare needs at least one --module <file.wasm>");
    }
    // Envoy runs elsewhere: it is given each module by its absolute path.
    let modules = modules
        .iter()
        .map(|m| {
            m.canonicalize()
                .with_context(|| format!("no module at {}", m.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    let (reps, secs, connections) = if b.smoke { (1, 1, 8) } else { (7, 8, 32) };
    let v1 = Upstream::start_counting("heart-v1").await?;
    let v2 = Upstream::start_counting("heart-v2").await?;
    let controller = b.controller(None).await?;
    b.canary(&controller, 20.0, true).await?;
    let config = |module: PathBuf| -> Result<EnvoyConfig> {
        Ok(EnvoyConfig::shipped("envoy.yaml")?
            .upstream("heart-v1", v1.addr)?
            .upstream("heart-v2", v2.addr)?
            .upstream("coalmine_controller", controller.addr)?
            .plugin_config(&b.plugin_config())?
            .wasm_module(module))
    };
    let opts = EnvoyOptions {
        node_id: "bench-compare".into(),
        concurrency: 1,
        cpus: b.cpus.proxy.clone(),
        ..EnvoyOptions::default()
    };
    let mut envoys =
        vec![Envoy::start_with(config(coalmine_e2e::empty_filter_wasm()?)?, &opts).await?];
    for m in &modules {
        let envoy = Envoy::start_with(config(m.clone())?, &opts).await?;
        b.wait_share(&envoy, 2000).await?;
        envoys.push(envoy);
    }
    let named: Vec<(String, &Envoy)> = envoys
        .iter()
        .zip(
            std::iter::once("empty filter".to_string())
                .chain(modules.iter().map(|m| m.display().to_string())),
        )
        .map(|(e, name)| (name, e))
        .collect();
    let measured = interleaved(b, "compare", &named, (reps, secs, connections))?;
    let medians: Vec<(f64, f64)> = measured.iter().map(|(m, _)| *m).collect();
    let runs: Vec<&Vec<(f64, f64)>> = measured.iter().map(|(_, r)| r).collect();
    let ratio = |a: f64, b: f64| if b > 0.0 { round(a / b, 3) } else { 0.0 };
    let empty = medians.first().map_or(0.0, |m| m.0);
    let first = medians.get(1).map_or(0.0, |m| m.0);
    let modules = modules
        .iter()
        .zip(medians.iter().skip(1).zip(runs.iter().skip(1)))
        .map(|(path, (&(rps, cpu), r))| Module {
            module: path.display().to_string(),
            requests_per_s: round(rps, 0),
            cpu_us_per_request: round(cpu, 2),
            throughput_vs_first: ratio(rps, first),
            throughput_vs_empty_wasm: ratio(rps, empty),
            runs_requests_per_s: r.iter().map(|r| round(r.0, 0)).collect(),
        })
        .collect();
    Ok(Comparison {
        repetitions: reps,
        seconds_per_run: secs,
        connections,
        empty_wasm_requests_per_s: round(empty, 0),
        modules,
    })
}
