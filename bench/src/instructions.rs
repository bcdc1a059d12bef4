//! Envoy's instructions per request, counted by callgrind: the data plane's
//! cost without this machine's noise.
//!
//! Throughput on this machine moves by ±15 % from one round to the next, as
//! much as the data-plane goals' margins. Instructions do not: here each
//! configuration's Envoy (one worker) runs under callgrind. After a warm-up
//! its counts are zeroed, requests are sent over one connection, and the
//! counts are dumped; then Envoy idles as long and they are dumped again, so
//! what Envoy does by the clock alone (timers, stats, the filter's tick) is
//! taken off. Two runs of one configuration agree within 0.1 %.
//!
//! The filter's split is static (the shipped 80/20) and no controller is
//! configured: under callgrind a request takes some 40 ms, so a sync each
//! second would be charged to 25 requests instead of the thousands a second
//! brings in production. Everything else is the data-plane section's
//! configuration.
//!
//! An instruction is not a unit of time (a cache miss costs more than an
//! add), so the ratios below say how much work a configuration adds, not how
//! fast it runs; the data-plane section measures that.

use super::Bench;
use super::calibrate::CALLS;
use super::dataplane::{PATH, plain};
use super::stats::round;
use anyhow::{Context as _, Result, bail};
use coalmine_e2e::{Envoy, EnvoyConfig, EnvoyOptions, Upstream, poll, without_outputs};
use futures_util::{StreamExt as _, TryStreamExt as _};
use serde::Serialize;
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One configuration's count.
#[derive(Debug, Clone, Serialize)]
pub struct Counted {
    pub name: &'static str,
    pub description: &'static str,
    pub requests: u64,
    pub instructions_per_request: f64,
    /// Of which by the clock alone, per request (taken off above).
    pub idle_instructions_per_request: f64,
}

/// What one host call of a kind adds to a request.
#[derive(Debug, Clone, Serialize)]
pub struct CallInstructions {
    pub call: &'static str,
    pub what: &'static str,
    pub instructions_per_call: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Instructions {
    pub configurations: Vec<Counted>,
    /// The empty filter making [`CALLS_PER_REQUEST`] calls of one kind per
    /// request, against it making none, per call.
    pub calls: Vec<CallInstructions>,
    /// The empty filter's instructions per request ÷ coalmine's: the
    /// throughput ratio if Envoy's time went with its instructions (compare
    /// `throughput_ratio_filter_vs_empty_wasm`).
    pub instruction_ratio_filter_vs_empty_wasm: f64,
    pub instruction_ratio_filter_vs_plain: f64,
    pub instruction_ratio_outputs_10_vs_empty_wasm: f64,
    /// The empty filter ÷ the empty filter making coalmine's host calls.
    pub instruction_ratio_calls_vs_empty_wasm: f64,
    /// The empty filter making coalmine's calls ÷ coalmine: what coalmine's
    /// own code adds to its calls.
    pub instruction_ratio_filter_vs_its_calls: f64,
    /// coalmine's instructions per request over the empty filter's, and
    /// over the empty filter making its calls.
    pub instructions_added_vs_empty_wasm: f64,
    pub instructions_added_vs_its_calls: f64,
}

/// Calls of one kind per request when pricing a call (the empty filter
/// making them, against it making none).
pub const CALLS_PER_REQUEST: u32 = 4;

/// The `totals:` (or `summary:`) line of a callgrind dump.
pub fn totals(dump: &str) -> Option<u64> {
    dump.lines()
        .find_map(|l| l.strip_prefix("totals:"))
        .or_else(|| dump.lines().find_map(|l| l.strip_prefix("summary:")))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Sends a command to the callgrind running as `pid` (`-z`: zero the
/// counts, `-d`: dump them).
async fn control(pid: u32, command: &str) -> Result<()> {
    let out = tokio::process::Command::new("callgrind_control")
        .args([command, &pid.to_string()])
        .output()
        .await
        .context("running callgrind_control (Debian package `valgrind`)")?;
    // It exits 0 when it finds no such run; it says so.
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() || said.contains("Error") || said.contains("No active") {
        bail!("callgrind_control {command} {pid}: {said}");
    }
    Ok(())
}

/// The count in dump number `n` of `out` (callgrind names the n-th dump
/// `<out>.<n>`), once it is written.
async fn dumped(out: &Path, n: u32) -> Result<u64> {
    let path = PathBuf::from(format!("{}.{n}", out.display()));
    poll(
        &format!("callgrind's dump {}", path.display()),
        Duration::from_secs(60),
        || {
            let total = std::fs::read_to_string(&path)
                .ok()
                .as_deref()
                .and_then(totals);
            async move { Ok(total) }
        },
    )
    .await
}

/// Sends `n` requests one after another over one connection: how many
/// were answered 2xx.
async fn send(client: &reqwest::Client, url: &str, n: u64) -> u64 {
    let mut answered = 0;
    for _ in 0..n {
        if let Ok(r) = client.get(url).send().await
            && r.status().is_success()
        {
            answered += 1;
        }
    }
    answered
}

/// Counts `envoy` (running under callgrind, dumping to `out`) over
/// `requests` requests after `warm_up`: (instructions per request, of which
/// by the clock alone).
async fn count(
    smoke: bool,
    envoy: &Envoy,
    out: &Path,
    (warm_up, requests): (u64, u64),
) -> Result<(f64, f64)> {
    let url = envoy.url(PATH);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(60))
        .build()?;
    // The first requests may time out while V8 compiles the filter under
    // callgrind; the warm-up only has to get some through.
    if send(&client, &url, warm_up).await == 0 {
        bail!("no request of the warm-up was answered");
    }
    // What the warm-up set off (V8 compiling the filter's hot code anew)
    // finishes before anything is counted.
    tokio::time::sleep(Duration::from_secs(if smoke { 1 } else { 5 })).await;
    let idle_for = Duration::from_secs(if smoke { 1 } else { 10 });
    control(envoy.pid(), "-z").await?;
    let started = Instant::now();
    tokio::time::sleep(idle_for).await;
    control(envoy.pid(), "-d").await?;
    let idled = started.elapsed();
    let idle = dumped(out, 1).await?;
    control(envoy.pid(), "-z").await?;
    let started = Instant::now();
    let answered = send(&client, &url, requests).await;
    control(envoy.pid(), "-d").await?;
    let took = started.elapsed();
    let loaded = dumped(out, 2).await?;
    if answered < requests {
        bail!(
            "{} of {requests} counted requests were not answered 2xx",
            requests - answered
        );
    }
    // Envoy's work by the clock, at the idle rate, over the loaded time.
    let by_clock = idle as f64 * took.as_secs_f64() / idled.as_secs_f64().max(1e-3);
    let n = requests as f64;
    Ok(((loaded as f64 - by_clock) / n, by_clock / n))
}

/// The shipped plugin configuration without a controller: the static
/// 80/20 split serves.
fn standalone(b: &Bench, outputs_percent: Option<f64>) -> Result<Value> {
    let mut p = without_outputs(EnvoyConfig::shipped("envoy.yaml")?.shipped_plugin_config()?);
    if let Some(o) = p.as_object_mut() {
        o.remove("controller");
    }
    if p["deployments"][0]["static"].is_null() {
        bail!("envoy/envoy.yaml has no static split to serve without a controller");
    }
    if let Some(percent) = outputs_percent {
        p["deployments"][0]["outputs"] = b.shipped_outputs()?;
        p["deployments"][0]["outputs"]["sample_percent"] = json!(percent);
    }
    Ok(p)
}

/// Starts `config`'s Envoy under callgrind and counts it.
async fn measure(
    b: &Bench,
    (name, description): (&'static str, &'static str),
    config: EnvoyConfig,
    (warm_up, requests): (u64, u64),
) -> Result<Counted> {
    let out = b.dir().join(format!("callgrind-{name}.out"));
    let opts = EnvoyOptions {
        node_id: format!("bench-instructions-{name}"),
        concurrency: 1,
        under: vec![
            "valgrind".into(),
            "--tool=callgrind".into(),
            // `.venv/bin/envoy` is a script that execs Envoy's binary.
            "--trace-children=yes".into(),
            // V8 writes the filter's machine code at run time.
            "--smc-check=all-non-file".into(),
            format!("--callgrind-out-file={}", out.display()),
        ],
        ready_within: Duration::from_secs(600),
        // Any core: this process may be confined to the load generator's.
        cpus: b.cpus.all.clone(),
    };
    b.progress(&format!("instructions: starting {name} under callgrind"));
    let envoy = Envoy::start_with(config, &opts)
        .await
        .with_context(|| format!("starting {name} under callgrind (Debian package `valgrind`)"))?;
    let (per_request, idle) = count(b.smoke, &envoy, &out, (warm_up, requests))
        .await
        .with_context(|| format!("counting {name}"))?;
    b.progress(&format!(
        "instructions: {name:<15} {per_request:>9.0} per request ({requests} requests)"
    ));
    Ok(Counted {
        name,
        description,
        requests,
        instructions_per_request: round(per_request, 0),
        idle_instructions_per_request: round(idle, 0),
    })
}

pub async fn run(b: &Bench) -> Result<Instructions> {
    let (warm_up, requests) = if b.smoke { (20, 50) } else { (200, 500) };
    let v1 = Upstream::start_counting("heart-v1").await?;
    let v2 = Upstream::start_counting("heart-v2").await?;
    let base = || -> Result<EnvoyConfig> {
        EnvoyConfig::shipped("envoy.yaml")?
            .upstream("heart-v1", v1.addr)?
            .upstream("heart-v2", v2.addr)
    };
    let mut configurations: Vec<(&'static str, &'static str, EnvoyConfig)> = vec![
        ("plain", "Envoy, no filter, one cluster", plain(base()?)?),
        (
            "empty_wasm",
            "the shipped config with a wasm filter that does nothing in coalmine's place",
            base()?
                .plugin_config(&standalone(b, None)?)?
                .wasm_module(coalmine_e2e::empty_filter_wasm()?),
        ),
        (
            "coalmine_calls",
            "the empty filter making coalmine's host calls (20 % to the canary) and nothing else",
            base()?
                .plugin_config(&json!({"calibrate": {"call": "coalmine", "per_request": 1}}))?
                .wasm_module(coalmine_e2e::empty_filter_wasm()?),
        ),
        (
            "coalmine",
            "the shipped config: header strip + coalmine filter at 80/20 (static), no outputs read",
            base()?.plugin_config(&standalone(b, None)?)?,
        ),
        (
            "outputs_10",
            "coalmine reading the outputs of 10 % of the answers",
            base()?.plugin_config(&standalone(b, Some(10.0))?)?,
        ),
    ];
    let calibrating = |call: &str| -> Result<EnvoyConfig> {
        Ok(base()?
            .plugin_config(&json!({"calibrate": {"call": call, "per_request": CALLS_PER_REQUEST}}))?
            .wasm_module(coalmine_e2e::empty_filter_wasm()?))
    };
    // The kinds coalmine makes per request, and the property read it makes
    // for a missing status or a 5xx.
    for (call, what) in CALLS.into_iter().filter(|(call, _)| *call != "counter") {
        configurations.push((call, what, calibrating(call)?));
    }
    if b.smoke {
        configurations.retain(|c| c.0 == "coalmine");
    }
    // As many at a time as there are cores: counts do not depend on what
    // else the machine runs, but a starved Envoy's requests would time out.
    let width = b.cpus.cores.max(1);
    let counted = futures_util::stream::iter(configurations)
        .map(|(name, description, config)| {
            measure(b, (name, description), config, (warm_up, requests))
        })
        .buffered(width)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(summarize(counted))
}

impl Instructions {
    /// The section of BENCHMARKS.md.
    pub fn markdown(&self) -> String {
        let mut o = String::new();
        let requests = self
            .configurations
            .iter()
            .map(|c| c.requests)
            .max()
            .unwrap_or(0);
        let _ = writeln!(
            o,
            "\n### Envoy's instructions per request (callgrind)\n\nEach configuration's Envoy (1 worker) under callgrind; after a warm-up, up to {requests} requests over one connection; what Envoy does by the clock alone (measured idle, at the same rate) taken off. The filter's split is static (80/20) and no controller is configured (`bench/src/instructions.rs` says why). Repeatable within 0.1 %; an instruction is not a unit of time.\n"
        );
        let _ = writeln!(
            o,
            "| configuration | instructions per request | of which by the clock |\n|---|---|---|"
        );
        for c in &self.configurations {
            if CALLS.iter().any(|(call, _)| *call == c.name) {
                continue;
            }
            let _ = writeln!(
                o,
                "| {} ({}) | {:.0} | {:.0} |",
                c.name, c.description, c.instructions_per_request, c.idle_instructions_per_request
            );
        }
        let _ = writeln!(
            o,
            "\nThe empty filter's instructions ÷ coalmine's (the throughput ratio if time went with instructions): × {}; plain Envoy's ÷ coalmine's: × {}; the empty filter's ÷ coalmine reading 10 % of the outputs: × {}. coalmine adds {:.0} instructions per request to the empty filter; the empty filter making coalmine's host calls adds all but {:.0} of them (× {} of the empty filter; coalmine × {} of it).",
            self.instruction_ratio_filter_vs_empty_wasm,
            self.instruction_ratio_filter_vs_plain,
            self.instruction_ratio_outputs_10_vs_empty_wasm,
            self.instructions_added_vs_empty_wasm,
            self.instructions_added_vs_its_calls,
            self.instruction_ratio_calls_vs_empty_wasm,
            self.instruction_ratio_filter_vs_its_calls
        );
        if !self.calls.is_empty() {
            let _ = writeln!(
                o,
                "\nWhat one host call adds ({CALLS_PER_REQUEST} calls of a kind per request, against none):\n\n| call | instructions per call |\n|---|---|"
            );
            for k in &self.calls {
                let _ = writeln!(
                    o,
                    "| `{}`: {} | {:.0} |",
                    k.call, k.what, k.instructions_per_call
                );
            }
        }
        o
    }
}

fn summarize(configurations: Vec<Counted>) -> Instructions {
    let of = |name: &str| {
        configurations
            .iter()
            .find(|c| c.name == name)
            .map_or(0.0, |c| c.instructions_per_request)
    };
    let (plain, empty, calls, filter, tenth) = (
        of("plain"),
        of("empty_wasm"),
        of("coalmine_calls"),
        of("coalmine"),
        of("outputs_10"),
    );
    // Fewer instructions per request, more requests per second: a ratio of
    // throughputs is the inverse ratio of instructions.
    let ratio = |cheaper: f64, dearer: f64| {
        if dearer > 0.0 {
            round(cheaper / dearer, 3)
        } else {
            0.0
        }
    };
    // The empty filter making no call.
    let none = empty;
    let per_call = CALLS
        .iter()
        .filter(|(call, _)| none > 0.0 && of(call) > 0.0)
        .map(|&(call, what)| CallInstructions {
            call,
            what,
            instructions_per_call: round((of(call) - none) / f64::from(CALLS_PER_REQUEST), 0),
        })
        .collect();
    Instructions {
        calls: per_call,
        instruction_ratio_filter_vs_empty_wasm: ratio(empty, filter),
        instruction_ratio_filter_vs_plain: ratio(plain, filter),
        instruction_ratio_outputs_10_vs_empty_wasm: ratio(empty, tenth),
        instruction_ratio_calls_vs_empty_wasm: ratio(empty, calls),
        instruction_ratio_filter_vs_its_calls: ratio(calls, filter),
        instructions_added_vs_empty_wasm: round(filter - empty, 0),
        instructions_added_vs_its_calls: round(filter - calls, 0),
        configurations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_dumps_totals() {
        let dump = "events: Ir\nsummary: 222556906\n\nfn=(1) main\n0 5\ntotals: 222933153\n";
        assert_eq!(totals(dump), Some(222_933_153));
        assert_eq!(totals("events: Ir\nsummary: 17\n"), Some(17));
        assert_eq!(totals("nothing"), None);
    }

    #[test]
    fn a_configuration_twice_as_dear_runs_at_half_the_rate() {
        let c = |name, n| Counted {
            name,
            description: "",
            requests: 1,
            instructions_per_request: n,
            idle_instructions_per_request: 0.0,
        };
        let s = summarize(vec![
            c("header_read", 240_000.0),
            c("plain", 150_000.0),
            c("empty_wasm", 200_000.0),
            c("coalmine_calls", 240_000.0),
            c("coalmine", 250_000.0),
            c("outputs_10", 400_000.0),
        ]);
        assert_eq!(s.instruction_ratio_filter_vs_empty_wasm, 0.8);
        assert_eq!(s.instruction_ratio_filter_vs_plain, 0.6);
        assert_eq!(s.instruction_ratio_outputs_10_vs_empty_wasm, 0.5);
        assert_eq!(s.instruction_ratio_filter_vs_its_calls, 0.96);
        assert_eq!(s.instructions_added_vs_empty_wasm, 50_000.0);
        assert_eq!(s.calls.len(), 1);
        assert_eq!(s.calls[0].instructions_per_call, 10_000.0);
    }
}
