//! Data-plane cost: the same Envoy, upstreams and wrk settings, nine ways:
//! (a) no filter, (b) Envoy's native `weighted_clusters` 80/20, (c) the
//! shipped config with a wasm filter that does nothing in coalmine's place
//! (what any wasm filter costs), (c') the same filter exporting only the
//! callbacks coalmine exports, (d) the shipped coalmine config (header
//! strip + filter) at 80/20 with its controller syncing, without reading
//! outputs, and (e, f) the same reading the answers' outputs (prediction
//! and probability) of every request and of 10 %, and (g, h) (e) with a
//! shadow version getting a copy of 10 % and of 100 % of the baseline's
//! requests (each on a deployment of its own in the same controller),
//! and (i) the empty filter making the host calls coalmine makes in (d)
//! and nothing else (the floor of any filter making those calls).
//! Repetitions are interleaved (a b c c' d e f g h i a b …) so drift of
//! the machine hits all alike; medians are reported.
//!
//! Each repetition has two wrk runs per variant: throughput and CPU per
//! request from `connections` connections saturating the one Envoy worker,
//! and latency from one connection (at saturation the latency is mostly
//! queueing, connections ÷ throughput, not the time a request takes).

use super::Bench;
use super::machine::cpu_seconds;
use super::stats::{median, round, round_order};
use super::wrk::{Wrk, WrkRun};
use anyhow::Result;
use coalmine_e2e::{Envoy, EnvoyConfig, EnvoyOptions, Upstream};
use serde::Serialize;
use serde_json::json;
use std::time::Duration;

/// One configuration's medians over its repetitions.
#[derive(Debug, Clone, Serialize)]
pub struct Variant {
    pub name: &'static str,
    pub description: &'static str,
    pub requests_per_s: f64,
    /// Latency with one connection.
    pub p50_us: f64,
    pub p99_us: f64,
    /// Envoy's CPU time (user + system) per request.
    pub cpu_us_per_request: f64,
    pub runs: Vec<Run>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub requests: u64,
    pub requests_per_s: f64,
    /// Latency with one connection.
    pub p50_us: f64,
    pub p99_us: f64,
    /// Latency at saturation (mostly queueing).
    pub saturated_p50_us: f64,
    pub saturated_p99_us: f64,
    pub cpu_us_per_request: f64,
    pub failed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DataPlane {
    pub connections: u32,
    pub seconds_per_run: u64,
    pub repetitions: usize,
    pub envoy_workers: u32,
    pub variants: Vec<Variant>,
    pub latency_connections: u32,
    pub throughput_ratio_filter_vs_plain: f64,
    pub throughput_ratio_filter_vs_weighted: f64,
    /// What any wasm filter costs: the empty filter against no filter.
    pub throughput_ratio_empty_wasm_vs_plain: f64,
    /// What coalmine's own work costs: coalmine against the empty filter.
    pub throughput_ratio_filter_vs_empty_wasm: f64,
    /// Against the empty filter without the callbacks coalmine does not take.
    pub throughput_ratio_filter_vs_lean_empty_wasm: f64,
    /// What the callbacks coalmine does not export cost an empty filter.
    pub throughput_ratio_lean_vs_empty_wasm: f64,
    /// What coalmine's host calls cost an otherwise empty filter.
    pub throughput_ratio_calls_vs_empty_wasm: f64,
    /// coalmine against the empty filter making the same host calls: what
    /// its own code costs beyond them.
    pub throughput_ratio_filter_vs_its_calls: f64,
    pub p50_added_vs_its_calls_us: f64,
    /// coalmine ÷ the empty filter in each round (both measured in the
    /// same round), in round order: the spread behind the median.
    pub filter_vs_empty_wasm_per_round: Vec<f64>,
    /// What reading outputs costs: reading every answer (and 10 % of them)
    /// against coalmine without outputs.
    pub throughput_ratio_outputs_100_vs_filter: f64,
    pub throughput_ratio_outputs_10_vs_filter: f64,
    /// Reading 10 % of the answers against the empty filter.
    pub throughput_ratio_outputs_10_vs_empty_wasm: f64,
    pub p50_added_outputs_100_us: f64,
    pub p50_added_outputs_10_us: f64,
    /// What a shadow costs: copying 10 % (and 100 %) of the baseline's
    /// requests against the same reading every answer without a shadow.
    pub throughput_ratio_shadow_10_vs_outputs_100: f64,
    pub throughput_ratio_shadow_100_vs_outputs_100: f64,
    pub p50_added_shadow_10_us: f64,
    pub p50_added_shadow_100_us: f64,
    pub p50_added_us: f64,
    /// coalmine's p50 over the empty filter's (one connection).
    pub p50_added_vs_empty_us: f64,
    pub p99_added_us: f64,
    pub cpu_us_added_per_request: f64,
}

pub(crate) const PATH: &str = "/predict/heart";
/// Latency is measured with one connection: no queueing in Envoy.
const LATENCY_CONNECTIONS: u32 = 1;

fn route(target: serde_json::Value) -> serde_json::Value {
    let mut route = json!({"prefix_rewrite": "/predict", "timeout": "15s"});
    if let (Some(r), Some(t)) = (route.as_object_mut(), target.as_object()) {
        r.extend(t.clone());
    }
    json!([{ "match": { "prefix": PATH }, "route": route }])
}

/// `base` without a filter or the header strip, sending every request to
/// `heart-v1`: plain Envoy.
pub(crate) fn plain(base: EnvoyConfig) -> Result<EnvoyConfig> {
    base.without_http_filter("coalmine")?
        .without_header_strip()?
        .routes(route(json!({"cluster": "heart-v1"})))
}

/// Warms up every Envoy (connections, the filter's JIT) before measuring.
pub(crate) fn warm_up<'a>(
    b: &Bench,
    envoys: impl Iterator<Item = &'a Envoy>,
    connections: u32,
) -> Result<()> {
    for envoy in envoys {
        Wrk {
            url: &envoy.url(PATH),
            connections,
            duration: Duration::from_secs(1),
            limit: None,
        }
        .run(b.dir())?;
    }
    Ok(())
}

/// `envoy` saturated by `connections` for `secs`: the wrk run, and the CPU
/// seconds Envoy spent meanwhile.
pub(crate) fn saturate(
    b: &Bench,
    envoy: &Envoy,
    connections: u32,
    secs: u64,
) -> Result<(WrkRun, f64)> {
    let before = cpu_seconds(envoy.pid())?;
    let w = Wrk {
        url: &envoy.url(PATH),
        connections,
        duration: Duration::from_secs(secs),
        limit: None,
    }
    .run(b.dir())?;
    Ok((w, cpu_seconds(envoy.pid())? - before))
}

/// (requests/s, Envoy CPU µs per request) of one wrk run, or their medians.
pub(crate) type Load = (f64, f64);

/// `reps` interleaved rounds of saturating each named Envoy in turn (each
/// round starting at another, [`round_order`]), after
/// warming them up: per Envoy, the median requests/s and Envoy CPU µs per
/// request, and every run's (requests/s, CPU µs per request).
pub(crate) fn interleaved(
    b: &Bench,
    section: &str,
    envoys: &[(String, &Envoy)],
    (reps, secs, connections): (usize, u64, u32),
) -> Result<Vec<(Load, Vec<Load>)>> {
    warm_up(b, envoys.iter().map(|e| e.1), connections)?;
    let mut runs: Vec<Vec<Load>> = vec![Vec::new(); envoys.len()];
    for rep in 0..reps {
        for i in round_order(envoys.len(), rep, reps) {
            let (Some((name, envoy)), Some(r)) = (envoys.get(i), runs.get_mut(i)) else {
                continue;
            };
            let (w, cpu) = saturate(b, envoy, connections, secs)?;
            let rps = w.requests_per_s();
            let cpu_us = cpu * 1e6 / w.requests.max(1) as f64;
            b.progress(&format!(
                "{section} {}/{reps} {rps:>8.0} req/s {cpu_us:>6.1} µs CPU/req  {name}",
                rep + 1
            ));
            r.push((rps, cpu_us));
        }
    }
    Ok(runs
        .into_iter()
        .map(|r| {
            let m =
                |f: fn(&Load) -> f64| median(&r.iter().map(f).collect::<Vec<_>>()).unwrap_or(0.0);
            ((m(|x| x.0), m(|x| x.1)), r)
        })
        .collect())
}

/// Returns the figures and the filter VM's memory after the load.
pub async fn run(b: &Bench) -> Result<(DataPlane, u64)> {
    let (reps, secs, latency_secs, connections) =
        if b.smoke { (1, 1, 1, 8) } else { (5, 8, 4, 32) };
    let v1 = Upstream::start_counting("heart-v1").await?;
    let v2 = Upstream::start_counting("heart-v2").await?;
    let v3 = Upstream::start_counting("heart-v3").await?;
    let controller = b.controller(None).await?;
    b.canary(&controller, 20.0, true).await?;
    const SHADOWED: [(&str, f64); 2] = [("heart-shadow-10", 10.0), ("heart-shadow-100", 100.0)];
    for (name, percent) in SHADOWED {
        b.shadowed(&controller, name, percent).await?;
    }

    let base = || -> Result<EnvoyConfig> {
        EnvoyConfig::shipped("envoy.yaml")?
            .upstream("heart-v1", v1.addr)?
            .upstream("heart-v2", v2.addr)?
            .upstream("heart-v3", v3.addr)?
            .upstream("coalmine_controller", controller.addr)
    };
    let plain = plain(base()?)?;
    let weighted = base()?
        .without_http_filter("coalmine")?
        .without_header_strip()?
        .routes(route(json!({"weighted_clusters": {"clusters": [
            {"name": "heart-v1", "weight": 80},
            {"name": "heart-v2", "weight": 20}
        ]}})))?;
    let coalmine = base()?.plugin_config(&b.plugin_config())?;
    let reading = |percent: f64| -> Result<EnvoyConfig> {
        let mut p = b.plugin_config();
        p["deployments"][0]["outputs"] = b.shipped_outputs()?;
        p["deployments"][0]["outputs"]["sample_percent"] = json!(percent);
        base()?.plugin_config(&p)
    };
    let (outputs_100, outputs_10) = (reading(100.0)?, reading(10.0)?);
    let shadowing = |deployment: &str| -> Result<EnvoyConfig> {
        let mut p = b.plugin_config();
        p["deployments"][0]["outputs"] = b.shipped_outputs()?;
        p["deployments"][0]["name"] = json!(deployment);
        base()?.plugin_config(&p)
    };
    let (shadow_10, shadow_100) = (shadowing(SHADOWED[0].0)?, shadowing(SHADOWED[1].0)?);
    let empty = base()?
        .plugin_config(&b.plugin_config())?
        .wasm_module(coalmine_e2e::empty_filter_wasm()?);
    let lean = base()?
        .plugin_config(&b.plugin_config())?
        .wasm_module(coalmine_e2e::lean_empty_filter_wasm()?);
    let calls = base()?
        .plugin_config(&json!({"calibrate": {"call": "coalmine", "per_request": 1}}))?
        .wasm_module(coalmine_e2e::empty_filter_wasm()?);

    let opts = EnvoyOptions {
        node_id: "bench-dataplane".into(),
        concurrency: 1,
        cpus: b.cpus.proxy.clone(),
        ..EnvoyOptions::default()
    };
    let variants = [
        (
            "plain",
            "Envoy, no filter, one cluster",
            Envoy::start_with(plain, &opts).await?,
        ),
        (
            "weighted_clusters",
            "Envoy's native weighted_clusters 80/20",
            Envoy::start_with(weighted, &opts).await?,
        ),
        (
            "empty_wasm",
            "the shipped config with a wasm filter that does nothing in coalmine's place",
            Envoy::start_with(empty, &opts).await?,
        ),
        (
            "empty_wasm_lean",
            "the same empty filter without the callbacks coalmine does not take",
            Envoy::start_with(lean, &opts).await?,
        ),
        (
            "coalmine",
            "the shipped config: header strip + coalmine filter at 80/20, controller syncing, no outputs read",
            Envoy::start_with(coalmine, &opts).await?,
        ),
        (
            "outputs_100",
            "coalmine reading the outputs of every answer",
            Envoy::start_with(outputs_100, &opts).await?,
        ),
        (
            "outputs_10",
            "coalmine reading the outputs of 10 % of the answers",
            Envoy::start_with(outputs_10, &opts).await?,
        ),
        (
            "shadow_10",
            "outputs_100 with a shadow getting a copy of 10 % of the baseline's requests",
            Envoy::start_with(shadow_10, &opts).await?,
        ),
        (
            "shadow_100",
            "outputs_100 with a shadow getting a copy of every baseline request",
            Envoy::start_with(shadow_100, &opts).await?,
        ),
        (
            "coalmine_calls",
            "the empty filter making coalmine's host calls (as in coalmine, 20 % to the canary) and nothing else",
            Envoy::start_with(calls, &opts).await?,
        ),
    ];
    const COALMINE: usize = 4;
    b.wait_share(&variants[COALMINE].2, 2000).await?;
    for shadowed in &variants[COALMINE + 3..COALMINE + 5] {
        b.wait_shadow(&shadowed.2, &v3).await?;
    }
    b.check_calls(&variants[COALMINE + 5].2, &v2).await?;

    warm_up(b, variants.iter().map(|v| &v.2), connections)?;
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); variants.len()];
    for rep in 0..reps {
        for i in round_order(variants.len(), rep, reps) {
            let Some((name, _, envoy)) = variants.get(i) else {
                continue;
            };
            let url = envoy.url(PATH);
            let (w, cpu) = saturate(b, envoy, connections, secs)?;
            let one: WrkRun = Wrk {
                url: &url,
                connections: LATENCY_CONNECTIONS,
                duration: Duration::from_secs(latency_secs),
                limit: None,
            }
            .run(b.dir())?;
            let run = Run {
                requests: w.requests,
                requests_per_s: round(w.requests_per_s(), 0),
                p50_us: one.p50_us,
                p99_us: one.p99_us,
                saturated_p50_us: w.p50_us,
                saturated_p99_us: w.p99_us,
                cpu_us_per_request: round(cpu * 1e6 / w.requests.max(1) as f64, 2),
                failed: w.errors + w.non_2xx + one.errors + one.non_2xx,
            };
            b.progress(&format!(
                "data plane {}/{reps} {name:<17} {:>8.0} req/s  {:>5.1} µs CPU/req; one connection: p50 {:>5.0} µs  p99 {:>6.0} µs",
                rep + 1, run.requests_per_s, run.cpu_us_per_request, run.p50_us, run.p99_us
            ));
            if let Some(r) = runs.get_mut(i) {
                r.push(run);
            }
        }
    }
    let summarize = |i: usize| -> Variant {
        let r = runs.get(i).cloned().unwrap_or_default();
        let m = |f: fn(&Run) -> f64| median(&r.iter().map(f).collect::<Vec<_>>()).unwrap_or(0.0);
        Variant {
            name: variants[i].0,
            description: variants[i].1,
            requests_per_s: m(|r| r.requests_per_s),
            p50_us: m(|r| r.p50_us),
            p99_us: m(|r| r.p99_us),
            cpu_us_per_request: m(|r| r.cpu_us_per_request),
            runs: r,
        }
    };
    let vm_memory = b.vm_memory_bytes(&variants[COALMINE].2).await?;
    let (plain, weighted, empty, lean, filter, all, tenth) = (
        summarize(0),
        summarize(1),
        summarize(2),
        summarize(3),
        summarize(COALMINE),
        summarize(COALMINE + 1),
        summarize(COALMINE + 2),
    );
    let (shadow_10, shadow_100) = (summarize(COALMINE + 3), summarize(COALMINE + 4));
    let calls = summarize(COALMINE + 5);
    let per_round = filter
        .runs
        .iter()
        .zip(&empty.runs)
        .map(|(f, e)| round(f.requests_per_s / e.requests_per_s.max(1.0), 3))
        .collect();
    let ratio = |a: f64, b: f64| if b > 0.0 { round(a / b, 3) } else { 0.0 };
    let figures = DataPlane {
        connections,
        seconds_per_run: secs,
        repetitions: reps,
        envoy_workers: 1,
        latency_connections: LATENCY_CONNECTIONS,
        throughput_ratio_filter_vs_plain: ratio(filter.requests_per_s, plain.requests_per_s),
        throughput_ratio_filter_vs_weighted: ratio(filter.requests_per_s, weighted.requests_per_s),
        throughput_ratio_empty_wasm_vs_plain: ratio(empty.requests_per_s, plain.requests_per_s),
        throughput_ratio_filter_vs_empty_wasm: ratio(filter.requests_per_s, empty.requests_per_s),
        throughput_ratio_filter_vs_lean_empty_wasm: ratio(
            filter.requests_per_s,
            lean.requests_per_s,
        ),
        throughput_ratio_lean_vs_empty_wasm: ratio(lean.requests_per_s, empty.requests_per_s),
        throughput_ratio_calls_vs_empty_wasm: ratio(calls.requests_per_s, empty.requests_per_s),
        throughput_ratio_filter_vs_its_calls: ratio(filter.requests_per_s, calls.requests_per_s),
        p50_added_vs_its_calls_us: round(filter.p50_us - calls.p50_us, 1),
        filter_vs_empty_wasm_per_round: per_round,
        throughput_ratio_outputs_100_vs_filter: ratio(all.requests_per_s, filter.requests_per_s),
        throughput_ratio_outputs_10_vs_filter: ratio(tenth.requests_per_s, filter.requests_per_s),
        throughput_ratio_outputs_10_vs_empty_wasm: ratio(
            tenth.requests_per_s,
            empty.requests_per_s,
        ),
        p50_added_outputs_100_us: round(all.p50_us - filter.p50_us, 1),
        p50_added_outputs_10_us: round(tenth.p50_us - filter.p50_us, 1),
        throughput_ratio_shadow_10_vs_outputs_100: ratio(
            shadow_10.requests_per_s,
            all.requests_per_s,
        ),
        throughput_ratio_shadow_100_vs_outputs_100: ratio(
            shadow_100.requests_per_s,
            all.requests_per_s,
        ),
        p50_added_shadow_10_us: round(shadow_10.p50_us - all.p50_us, 1),
        p50_added_shadow_100_us: round(shadow_100.p50_us - all.p50_us, 1),
        p50_added_us: round(filter.p50_us - plain.p50_us, 1),
        p50_added_vs_empty_us: round(filter.p50_us - empty.p50_us, 1),
        p99_added_us: round(filter.p99_us - plain.p99_us, 1),
        cpu_us_added_per_request: round(filter.cpu_us_per_request - plain.cpu_us_per_request, 2),
        variants: vec![
            plain, weighted, empty, lean, filter, all, tenth, shadow_10, shadow_100, calls,
        ],
    };
    Ok((figures, vm_memory))
}
