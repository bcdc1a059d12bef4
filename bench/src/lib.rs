//! `make bench`: what coalmine costs and how fast it acts, measured side by
//! side in one run on one machine (loopback only, bounded, stops by itself).
//!
//! - [`calibrate`]: what one host call of each kind costs, from the empty
//!   filter making N of them per request.
//! - [`dataplane`]: Envoy without a filter vs native `weighted_clusters` vs
//!   the coalmine filter: requests/s, p50/p99, CPU per request (wrk).
//! - [`instructions`]: Envoy's instructions per request under callgrind, for
//!   the data plane's configurations and per kind of host call.
//! - [`routing`]: split accuracy over 100 000 requests at 20/50/100 %, and
//!   how long an operator's split change takes to reach every worker.
//! - [`rollback`]: real model servers; the canary starts failing; time until
//!   no request reaches it, and how many users got a canary error.
//! - [`capacity`]: simulated proxies syncing with the controller on one core.
//! - [`ha`]: two controllers on PostgreSQL: takeover time when the leader is
//!   killed, and the sync capacity on PostgreSQL.
//! - [`profile`]: instructions per request of the filter's pure request path
//!   under callgrind (repeatable where wall-clock timings are not).
//!
//! Every figure in `target/bench/perf.json` and `BENCHMARKS.md` comes from
//! the run; the report module only formats them and checks them against the
//! goals. `--smoke` runs each section for seconds, so `make test` keeps the
//! harness from rotting; its figures are not meant to be read.

use anyhow::{Context as _, Result, bail};
use coalmine_client::Action;
use coalmine_client::types::{CreateDeployment, RegisterVersion, StartCanary};
use coalmine_e2e::{
    ControllerProc, Envoy, EnvoyConfig, SYNC_TOKEN, Upstream, poll, prometheus_value,
    without_outputs,
};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub mod calibrate;
pub mod capacity;
pub mod compare;
pub mod dataplane;
pub mod ha;
pub mod heart;
pub mod instructions;
pub mod machine;
pub mod profile;
pub mod report;
pub mod rollback;
pub mod routing;
pub mod soak;
pub mod stats;
pub mod wrk;

/// The deployment every section uses (the shipped plugin config's).
pub const DEPLOYMENT: &str = "heart-prod";

/// Which CPUs each party runs on. On a machine with at least two cores the
/// proxy (or, for the capacity test, the controller) gets a core of its own
/// and the load generator and upstreams share the other, so they do not
/// steal the measured process's time. `None`: no pinning.
#[derive(Debug, Clone, Default)]
pub struct Cpus {
    /// The bench process itself: load generators and in-process upstreams.
    pub load: Option<String>,
    /// The process being measured.
    pub proxy: Option<String>,
    /// Everything, for multi-worker sections.
    pub all: Option<String>,
    /// How many cores the machine gave this run (before any pinning).
    pub cores: usize,
}

impl Cpus {
    fn detect() -> Cpus {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        if n < 2 {
            return Cpus {
                cores: n,
                ..Cpus::default()
            };
        }
        Cpus {
            load: Some("0".into()),
            proxy: Some((n - 1).to_string()),
            all: Some(format!("0-{}", n - 1)),
            cores: n,
        }
    }
}

/// What every section needs: the binaries, a scratch directory, the CPU
/// layout, and whether this is the smoke run.
#[derive(Debug)]
pub struct Bench {
    pub smoke: bool,
    pub cpus: Cpus,
    bin_dir: PathBuf,
    dir: tempfile::TempDir,
    started: Instant,
}

impl Bench {
    pub fn new(smoke: bool, bin_dir: PathBuf) -> Result<Bench> {
        Ok(Bench {
            smoke,
            cpus: Cpus::detect(),
            bin_dir,
            dir: tempfile::Builder::new()
                .prefix("coalmine-bench-")
                .tempdir()?,
            started: Instant::now(),
        })
    }

    /// A scratch directory that lives as long as the run.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A binary built beside this one (`make build-native`).
    pub fn bin(&self, name: &str) -> Result<PathBuf> {
        let bin = self.bin_dir.join(name);
        if !bin.exists() {
            bail!("{} is missing; run `make build`", bin.display());
        }
        Ok(bin)
    }

    pub fn progress(&self, line: &str) {
        println!("[{:>6.1} s] {line}", self.started.elapsed().as_secs_f64());
    }

    /// The release controller with a fresh database (lease 30 s).
    pub async fn controller(&self, cpus: Option<&str>) -> Result<ControllerProc> {
        let cpus = cpus.or(self.cpus.load.as_deref());
        ControllerProc::start_from(self.bin("coalmine-controller")?, cpus, 30_000, &[]).await
    }

    /// The shipped plugin configuration syncing with the bench's controller
    /// every second; no static split (the controller's table rules).
    pub fn plugin_config(&self) -> Value {
        let mut p = EnvoyConfig::shipped("envoy.yaml")
            .and_then(|mut c| c.shipped_plugin_config())
            .map(without_outputs)
            .unwrap_or_else(|_| json!({}));
        p["controller"]["token"] = json!(SYNC_TOKEN);
        p["controller"]["interval_ms"] = json!(1000);
        if let Some(d) = p["deployments"][0].as_object_mut() {
            d.remove("static");
        }
        p
    }

    /// The `outputs` block of the shipped plugin configuration.
    pub fn shipped_outputs(&self) -> Result<Value> {
        let p = EnvoyConfig::shipped("envoy.yaml")?.shipped_plugin_config()?;
        let outputs = p["deployments"][0]["outputs"].clone();
        if outputs.is_null() {
            bail!("envoy/envoy.yaml reads no outputs");
        }
        Ok(outputs)
    }

    /// Creates `name` with v1 on `cluster` as its baseline, and `policy`.
    pub async fn create(
        &self,
        c: &ControllerProc,
        name: &str,
        cluster: &str,
        policy: Value,
    ) -> Result<()> {
        let policy = Some(serde_json::from_value(policy)?);
        let body = CreateDeployment::new(name, "v1", cluster, policy);
        c.client().create_deployment(&body).await?;
        Ok(())
    }

    /// Creates the deployment (v1 baseline) with `policy`.
    pub async fn deployment(&self, c: &ControllerProc, policy: Value) -> Result<()> {
        self.create(c, DEPLOYMENT, "heart-v1", policy).await
    }

    /// Registers `version` of `deployment` on `cluster` and starts it as a
    /// canary at `percent`.
    pub async fn start_canary_of(
        &self,
        c: &ControllerProc,
        deployment: &str,
        version: &str,
        cluster: &str,
        percent: f64,
    ) -> Result<()> {
        let api = c.client();
        let register = RegisterVersion {
            version: version.into(),
            cluster: cluster.into(),
            metadata: None,
        };
        api.register_version(deployment, &register).await?;
        let start = StartCanary {
            version: version.into(),
            percent: Some(percent),
            ..StartCanary::default()
        };
        api.start_canary(deployment, &start).await?;
        Ok(())
    }

    /// `deployment` (v1 on heart-v1) with v2 on a paused canary at 20 % and
    /// v3 (cluster heart-v3) copied `percent` of the baseline's requests as
    /// its shadow.
    pub async fn shadowed(&self, c: &ControllerProc, deployment: &str, percent: f64) -> Result<()> {
        self.create(c, deployment, "heart-v1", json!({})).await?;
        self.start_canary_of(c, deployment, "v2", "heart-v2", 20.0)
            .await?;
        let api = c.client();
        api.act(deployment, Action::Pause, Some("benchmark".into()))
            .await?;
        let register = RegisterVersion {
            version: "v3".into(),
            cluster: "heart-v3".into(),
            metadata: None,
        };
        api.register_version(deployment, &register).await?;
        api.start_shadow(deployment, "v3", Some(percent)).await?;
        Ok(())
    }

    /// Registers `version` on cluster heart-v2 and starts it as a canary.
    pub async fn start_canary(
        &self,
        c: &ControllerProc,
        version: &str,
        percent: f64,
    ) -> Result<()> {
        self.start_canary_of(c, DEPLOYMENT, version, "heart-v2", percent)
            .await
    }

    /// A deployment with v2 on a canary at `percent`, optionally paused (no
    /// automatic steps while a section measures).
    pub async fn canary(&self, c: &ControllerProc, percent: f64, paused: bool) -> Result<()> {
        self.deployment(c, json!({})).await?;
        self.start_canary(c, "v2", percent).await?;
        if paused {
            c.client()
                .act(DEPLOYMENT, Action::Pause, Some("benchmark".into()))
                .await?;
        }
        Ok(())
    }

    /// Sets the canary share by hand.
    pub async fn set_traffic(&self, c: &ControllerProc, percent: f64) -> Result<()> {
        c.client().set_traffic(DEPLOYMENT, percent).await?;
        Ok(())
    }

    /// Waits until the proxy's canary-share gauge shows `bps`.
    pub async fn wait_share(&self, envoy: &Envoy, bps: u32) -> Result<()> {
        poll(
            "the proxy to take the controller's split",
            Duration::from_secs(15),
            || async {
                let text = envoy.prometheus().await?;
                let share = prometheus_value(
                    &text,
                    "coalmine_canary_share_bps",
                    &[("deployment", DEPLOYMENT)],
                );
                Ok((share == f64::from(bps)).then_some(()))
            },
        )
        .await
    }

    /// Waits until requests through `envoy` reach the shadow `upstream`:
    /// the proxy took its controller's split with the shadow.
    pub async fn wait_shadow(&self, envoy: &Envoy, upstream: &Upstream) -> Result<()> {
        let client = reqwest::Client::new();
        let url = envoy.url("/predict/heart");
        let before = upstream.count();
        poll("copies to the shadow", Duration::from_secs(15), || async {
            for _ in 0..20 {
                client.post(&url).body("{}").send().await?;
            }
            Ok((upstream.count() > before).then_some(()))
        })
        .await
    }

    /// Checks that the empty filter making coalmine's calls does what
    /// coalmine does with them: of 10 requests in a row, 2 reach the
    /// canary's `upstream` and say so, and every answer names a version.
    pub async fn check_calls(&self, envoy: &Envoy, canary: &Upstream) -> Result<()> {
        let client = reqwest::Client::new();
        let before = canary.count();
        let mut said_canary = 0;
        for _ in 0..10 {
            let r = client
                .post(envoy.url("/predict/heart"))
                .body("{}")
                .send()
                .await?;
            let header = |n: &str| r.headers().get(n).and_then(|v| v.to_str().ok());
            if header("x-coalmine-version").is_none() {
                bail!("the empty filter making coalmine's calls set no x-coalmine-version");
            }
            said_canary += usize::from(header("x-coalmine-role") == Some("canary"));
        }
        let reached = canary.count() - before;
        if said_canary != 2 || reached != 2 {
            bail!(
                "the empty filter making coalmine's calls: {said_canary} of 10 answers said canary and {reached} reached it; 2 expected"
            );
        }
        Ok(())
    }

    /// The filter VM's linear memory as the filter last reported it.
    pub async fn vm_memory_bytes(&self, envoy: &Envoy) -> Result<u64> {
        let text = envoy.prometheus().await?;
        let bytes = prometheus_value(&text, "coalmine_vm_memory_bytes", &[]);
        if bytes <= 0.0 {
            bail!("the filter reported no coalmine_vm_memory_bytes");
        }
        Ok(bytes as u64)
    }
}

/// Runs every section and writes the JSON (and, for a full run, the
/// Markdown report).
/// Runs only the named sections (`profile`, `calibrate`, `dataplane`, `routing`,
/// `rollback`, `capacity`, `ha`, and `compare` of the given filter `modules`) and
/// prints their figures: for working on one.
pub async fn run_only(smoke: bool, sections: &[String], modules: &[PathBuf]) -> Result<()> {
    let b = Bench::new(smoke, bin_dir()?)?;
    if let Some(cpus) = &b.cpus.load {
        machine::pin_self(cpus)?;
    }
    for s in sections {
        let figures = match s.as_str() {
            "profile" => serde_json::to_string_pretty(&profile::run(&b)?)?,
            "calibrate" => serde_json::to_string_pretty(&calibrate::run(&b).await?)?,
            "dataplane" => serde_json::to_string_pretty(&dataplane::run(&b).await?)?,
            "routing" => serde_json::to_string_pretty(&routing::run(&b).await?)?,
            "rollback" => serde_json::to_string_pretty(&rollback::run(&b).await?)?,
            "capacity" => serde_json::to_string_pretty(&capacity::run(&b, None).await?)?,
            "ha" => serde_json::to_string_pretty(&ha::run(&b).await?)?,
            "compare" => serde_json::to_string_pretty(&compare::run(&b, modules).await?)?,
            "instructions" => serde_json::to_string_pretty(&instructions::run(&b).await?)?,
            other => bail!(
                "no section {other:?}: profile, calibrate, dataplane, instructions, routing, rollback, capacity, ha, compare"
            ),
        };
        println!("{s}: {figures}");
    }
    Ok(())
}

pub(crate) fn bin_dir() -> Result<PathBuf> {
    std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .context("no directory for the running binary")
}

pub async fn run(smoke: bool, out: &Path, markdown: Option<&Path>) -> Result<report::Perf> {
    let b = Bench::new(smoke, bin_dir()?)?;
    // Describe the machine before this process is confined to one core.
    let machine = machine::Machine::describe(&coalmine_e2e::envoy_bin()?);
    if let Some(cpus) = &b.cpus.load {
        machine::pin_self(cpus)?;
    }
    b.progress(&format!(
        "{} run on {} × {} ({} GiB), {}; load on CPU {}, measured process on CPU {}",
        if smoke { "smoke" } else { "full" },
        machine.cores,
        machine.cpu,
        machine.memory_gib,
        machine.envoy,
        b.cpus.load.as_deref().unwrap_or("any"),
        b.cpus.proxy.as_deref().unwrap_or("any"),
    ));
    let profile = profile::run(&b)?;
    b.progress(&format!(
        "request path: {:.0} instructions per request (callgrind)",
        profile.instructions_per_request
    ));
    let calibration = calibrate::run(&b).await?;
    let (dataplane, vm_after_dataplane) = dataplane::run(&b).await?;
    let instructions = instructions::run(&b).await?;
    let (routing, vm_after_routing) = routing::run(&b).await?;
    let rollback = rollback::run(&b).await?;
    let capacity = capacity::run(&b, None).await?;
    let ha = ha::run(&b).await?;
    let wasm = coalmine_e2e::filter_wasm()?;
    let footprint = report::Footprint {
        wasm_size_bytes: std::fs::metadata(&wasm)?.len(),
        vm_memory_bytes: vm_after_dataplane.max(vm_after_routing),
    };
    let perf = report::Perf::new(
        smoke,
        machine,
        report::Sections {
            calibration,
            dataplane,
            instructions,
            routing,
            rollback,
            capacity,
            ha,
            footprint,
            profile,
        },
    );
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, serde_json::to_string_pretty(&perf)? + "\n")?;
    b.progress(&format!("wrote {}", out.display()));
    if let Some(md) = markdown {
        let existing = std::fs::read_to_string(md).unwrap_or_default();
        std::fs::write(md, perf.markdown(&existing))?;
        b.progress(&format!("wrote {}", md.display()));
    }
    println!("\n{}", perf.table());
    Ok(perf)
}
