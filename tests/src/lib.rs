//! Harness for coalmine's end-to-end tests: real processes on loopback.
//!
//! - [`EnvoyConfig`]: the shipped `envoy/envoy.yaml`, re-pointed at the test's
//!   upstreams, with ports 0, the built filter and, if a test wants, another
//!   plugin configuration.
//! - [`Envoy`]: the real Envoy from the project's `.venv`, started on free
//!   ports (learned from its admin endpoint, so nothing races for a port), and
//!   killed when dropped.
//! - [`Upstream`]: a small HTTP server on `127.0.0.1:0` that names itself in
//!   every response, remembers the coalmine headers it was sent, and can
//!   answer a share of requests with 500s.
//! - [`ControllerProc`]: the real controller binary with its own database;
//!   it can be killed with SIGKILL and restarted on the same address.
//! - [`Load`]: steady client traffic in the background, every response kept.
//! - [`Stack`]: the controller and both upstreams, and Envoys pointed at
//!   them.
//! - [`Receiver`]: a webhook receiver that can fail or hang on purpose.
//! - [`Browser`]: Debian's headless Chromium driven through chromedriver.
//! - [`poll`]: wait for a condition with a deadline; tests never sleep a
//!   fixed time.

use anyhow::{Context as _, Result, anyhow, bail};
use serde_yaml_ng::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

mod browser;
pub mod compose;
mod controller;
mod load;
pub mod models;
mod receiver;
mod stack;
mod upstream;
pub use browser::Browser;
pub use controller::{ControllerProc, OPERATOR_TOKEN, SYNC_TOKEN, controller_bin, package_bin};
pub use load::{Load, Sample};
pub use models::ModelServer;
pub mod bench;
pub use receiver::Receiver;
pub use stack::{
    INTERVAL_MS, Stack, canary_traffic_stops, first_canary_response, is_canary, plugin,
    role_counts, settled_role_counts,
};
pub use upstream::{SeenHeaders, Upstream};

/// The repository root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The Envoy binary `make setup` installs.
pub fn envoy_bin() -> Result<PathBuf> {
    let bin = workspace_root().join(".venv/bin/envoy");
    if !bin.exists() {
        bail!("{} is missing; run `make setup`", bin.display());
    }
    Ok(bin)
}

/// The release build of the filter.
pub fn filter_wasm() -> Result<PathBuf> {
    built_wasm("coalmine_filter")
}

/// The release build of the filter that does nothing (for benchmarks).
pub fn empty_filter_wasm() -> Result<PathBuf> {
    built_wasm("coalmine_empty_filter")
}

fn built_wasm(name: &str) -> Result<PathBuf> {
    let wasm = workspace_root().join(format!("target/wasm32-wasip1/release/{name}.wasm"));
    if !wasm.exists() {
        bail!("{} is missing; run `make build`", wasm.display());
    }
    Ok(wasm)
}

/// Real patients from the UCI Cleveland data set as prediction requests
/// (the rows without missing values, the 13 features by name).
pub fn patients() -> Result<Vec<serde_json::Value>> {
    let text =
        std::fs::read_to_string(workspace_root().join("data/uci-heart-cleveland/cleveland.tsv"))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split('\t').collect();
    let mut out = Vec::new();
    for line in lines {
        let cells: Vec<&str> = line.split('\t').collect();
        if cells.contains(&"?") || cells.len() != header.len() {
            continue;
        }
        let mut row = serde_json::Map::new();
        for (name, cell) in header.iter().zip(&cells).take(13) {
            row.insert(
                name.to_string(),
                serde_json::json!(cell.parse::<f64>().unwrap_or_default()),
            );
        }
        out.push(serde_json::Value::Object(row));
    }
    Ok(out)
}

/// Polls `check` every 20 ms until it returns `Some`, or fails after `timeout`
/// with `what` and the last value seen.
pub async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => None,
            Err(e) => Some(e),
        };
        if Instant::now() >= deadline {
            return Err(match last {
                Some(e) => e.context(format!("timed out after {timeout:?} waiting for {what}")),
                None => anyhow!("timed out after {timeout:?} waiting for {what}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An Envoy bootstrap, starting from a shipped config file.
#[derive(Debug, Clone)]
pub struct EnvoyConfig {
    doc: Value,
    /// The module the coalmine filter runs (default: the built filter).
    wasm: Option<PathBuf>,
}

impl EnvoyConfig {
    /// Loads a config shipped under `envoy/` (e.g. `envoy.yaml`).
    pub fn shipped(name: &str) -> Result<EnvoyConfig> {
        let path = workspace_root().join("envoy").join(name);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let doc = serde_yaml_ng::from_str(&text)
            .with_context(|| format!("parsing {}", path.display()))?;
        Ok(EnvoyConfig { doc, wasm: None })
    }

    fn listeners(&mut self) -> Result<&mut Vec<Value>> {
        self.doc["static_resources"]["listeners"]
            .as_sequence_mut()
            .ok_or_else(|| anyhow!("config has no static listeners"))
    }

    /// The HTTP filter list of the first listener.
    fn http_filters(&mut self) -> Result<&mut Vec<Value>> {
        self.listeners()?
            .get_mut(0)
            .and_then(|l| {
                l["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
                    .as_sequence_mut()
            })
            .ok_or_else(|| anyhow!("first listener has no http_filters"))
    }

    fn coalmine_filter(&mut self) -> Result<&mut Value> {
        self.http_filters()?
            .iter_mut()
            .find(|f| f["name"].as_str() == Some("coalmine"))
            .ok_or_else(|| anyhow!("no http filter named `coalmine`"))
    }

    fn cluster(&mut self, name: &str) -> Result<&mut Value> {
        self.doc["static_resources"]["clusters"]
            .as_sequence_mut()
            .ok_or_else(|| anyhow!("config has no static clusters"))?
            .iter_mut()
            .find(|c| c["name"].as_str() == Some(name))
            .ok_or_else(|| anyhow!("no cluster named {name}"))
    }

    /// Points the named cluster's single endpoint at `addr`.
    pub fn upstream(mut self, cluster: &str, addr: SocketAddr) -> Result<EnvoyConfig> {
        let c = self.cluster(cluster)?;
        // A name resolved by DNS in a deployment (compose, a mesh) is a
        // loopback address here.
        c["type"] = Value::from("STATIC");
        let socket = &mut c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["socket_address"];
        socket["address"] = Value::from(addr.ip().to_string());
        socket["port_value"] = Value::from(addr.port());
        Ok(self)
    }

    /// Renames a cluster (as a control plane would name it).
    pub fn rename_cluster(mut self, from: &str, to: &str) -> Result<EnvoyConfig> {
        let c = self.cluster(from)?;
        c["name"] = Value::from(to);
        c["load_assignment"]["cluster_name"] = Value::from(to);
        Ok(self)
    }

    /// Replaces the coalmine filter's plugin configuration.
    pub fn plugin_config(mut self, json: &serde_json::Value) -> Result<EnvoyConfig> {
        let filter = self.coalmine_filter()?;
        filter["typed_config"]["config"]["configuration"]["value"] = Value::from(json.to_string());
        Ok(self)
    }

    /// The shipped plugin configuration, as JSON.
    pub fn shipped_plugin_config(&mut self) -> Result<serde_json::Value> {
        let filter = self.coalmine_filter()?;
        let text = filter["typed_config"]["config"]["configuration"]["value"]
            .as_str()
            .ok_or_else(|| anyhow!("coalmine filter has no configuration value"))?;
        Ok(serde_json::from_str(text)?)
    }

    /// The shipped plugin configuration without its `controller` block
    /// (standalone mode).
    pub fn standalone_plugin_config(&mut self) -> Result<serde_json::Value> {
        let mut plugin = self.shipped_plugin_config()?;
        if let Some(o) = plugin.as_object_mut() {
            o.remove("controller");
        }
        Ok(plugin)
    }

    /// Replaces the routes of the first listener's first virtual host.
    pub fn routes(mut self, routes: serde_json::Value) -> Result<EnvoyConfig> {
        let vhost = self
            .listeners()?
            .get_mut(0)
            .map(|l| {
                &mut l["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
                    ["virtual_hosts"][0]
            })
            .ok_or_else(|| anyhow!("no listener"))?;
        vhost["routes"] = serde_yaml_ng::to_value(routes)?;
        Ok(self)
    }

    /// Removes an HTTP filter by name (e.g. to test the coalmine filter alone).
    pub fn without_http_filter(mut self, name: &str) -> Result<EnvoyConfig> {
        let filters = self.http_filters()?;
        let before = filters.len();
        filters.retain(|f| f["name"].as_str() != Some(name));
        if filters.len() == before {
            bail!("no http filter named {name}");
        }
        Ok(self)
    }

    /// The module file the coalmine filter loads, as the config names it.
    pub fn wasm_filename(&mut self) -> Result<String> {
        let filter = self.coalmine_filter()?;
        filter["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("the coalmine filter loads no local file"))
    }

    /// Runs another module in the coalmine filter's place.
    pub fn wasm_module(mut self, path: PathBuf) -> EnvoyConfig {
        self.wasm = Some(path);
        self
    }

    /// The final bootstrap: ports 0 (Envoy picks), the built filter.
    fn render(mut self) -> Result<String> {
        let wasm = match self.wasm.take() {
            Some(path) => path,
            None => filter_wasm()?,
        };
        // Loopback only, whatever address a config binds in a deployment.
        let admin = &mut self.doc["admin"]["address"]["socket_address"];
        admin["address"] = Value::from("127.0.0.1");
        admin["port_value"] = Value::from(0);
        for l in self.listeners()? {
            l["address"]["socket_address"]["address"] = Value::from("127.0.0.1");
            l["address"]["socket_address"]["port_value"] = Value::from(0);
        }
        // A config without the filter (a benchmark's baseline) has no code.
        if let Ok(filter) = self.coalmine_filter() {
            filter["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"] =
                Value::from(wasm.display().to_string());
        }
        Ok(serde_yaml_ng::to_string(&self.doc)?)
    }
}

/// How to run Envoy: its node id, worker threads, and (optionally) the CPUs
/// it may run on (a `taskset` list such as `"1"`), for benchmarks.
#[derive(Debug, Clone)]
pub struct EnvoyOptions {
    pub node_id: String,
    pub concurrency: u32,
    pub cpus: Option<String>,
}

impl Default for EnvoyOptions {
    fn default() -> EnvoyOptions {
        EnvoyOptions {
            node_id: "coalmine-e2e".to_string(),
            concurrency: 2,
            cpus: None,
        }
    }
}

/// A running Envoy; killed on drop.
#[derive(Debug)]
pub struct Envoy {
    child: Child,
    dir: tempfile::TempDir,
    admin: SocketAddr,
    listener: SocketAddr,
    client: reqwest::Client,
}

impl Envoy {
    fn spawn(config: EnvoyConfig, opts: &EnvoyOptions) -> Result<(Child, tempfile::TempDir)> {
        let dir = tempfile::Builder::new()
            .prefix("coalmine-envoy-")
            .tempdir()?;
        let config_path = dir.path().join("envoy.yaml");
        std::fs::write(&config_path, config.render()?)?;
        let log = std::fs::File::create(dir.path().join("envoy.log"))?;
        let mut command = match &opts.cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpus]).arg(envoy_bin()?);
                c
            }
            None => Command::new(envoy_bin()?),
        };
        let child = command
            .arg("-c")
            .arg(&config_path)
            .args(["--disable-hot-restart", "-l", "info"])
            .arg("--concurrency")
            .arg(opts.concurrency.to_string())
            .args(["--service-node", &opts.node_id])
            .args(["--service-cluster", "coalmine-e2e"])
            .arg("--admin-address-path")
            .arg(dir.path().join("admin.address"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting envoy")?;
        Ok((child, dir))
    }

    /// Starts Envoy and waits until its listener accepts requests.
    pub async fn start(config: EnvoyConfig) -> Result<Envoy> {
        Envoy::start_as(config, "coalmine-e2e").await
    }

    /// Starts Envoy with the given node id.
    pub async fn start_as(config: EnvoyConfig, node_id: &str) -> Result<Envoy> {
        let opts = EnvoyOptions {
            node_id: node_id.to_string(),
            ..EnvoyOptions::default()
        };
        Envoy::start_with(config, &opts).await
    }

    /// Starts Envoy as `opts` say.
    pub async fn start_with(config: EnvoyConfig, opts: &EnvoyOptions) -> Result<Envoy> {
        let (child, dir) = Envoy::spawn(config, opts)?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let mut envoy = Envoy {
            child,
            dir,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            listener: SocketAddr::from(([127, 0, 0, 1], 0)),
            client,
        };
        let admin_file = envoy.dir.path().join("admin.address");
        envoy.admin = poll("envoy's admin address", Duration::from_secs(30), || {
            let r = envoy.check_running().map(|()| {
                std::fs::read_to_string(&admin_file)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
            });
            async move { r }
        })
        .await?;
        envoy.listener = poll("envoy's listener", Duration::from_secs(30), || {
            let running = envoy.check_running();
            let request = envoy
                .client
                .get(envoy.admin_url("/listeners?format=json"))
                .send();
            async move {
                running?;
                let body: serde_json::Value = match request.await {
                    Ok(r) => r.json().await?,
                    Err(_) => return Ok(None),
                };
                let a = &body["listener_statuses"][0]["local_address"]["socket_address"];
                Ok(match (a["address"].as_str(), a["port_value"].as_u64()) {
                    (Some(ip), Some(port)) if port > 0 => format!("{ip}:{port}").parse().ok(),
                    _ => None,
                })
            }
        })
        .await?;
        poll("envoy to be ready", Duration::from_secs(30), || {
            let running = envoy.check_running();
            let request = envoy.client.get(envoy.admin_url("/ready")).send();
            async move {
                running?;
                Ok(request
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
                    .map(|_| ()))
            }
        })
        .await?;
        Ok(envoy)
    }

    /// Fails with the log's tail if Envoy has exited.
    fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "envoy exited with {status}:\n{}",
                tail(&self.dir.path().join("envoy.log"), 30)
            );
        }
        Ok(())
    }

    /// Runs Envoy with a configuration it must refuse: returns its exit status
    /// and log once it exits (within 30 s).
    pub async fn start_expecting_refusal(config: EnvoyConfig) -> Result<(ExitStatus, String)> {
        let (mut child, dir) = Envoy::spawn(config, &EnvoyOptions::default())?;
        let status = poll("envoy to exit", Duration::from_secs(30), || {
            let r = child.try_wait().map_err(anyhow::Error::from);
            async move { r }
        })
        .await;
        let log = std::fs::read_to_string(dir.path().join("envoy.log")).unwrap_or_default();
        match status {
            Ok(status) => Ok((status, log)),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e.context(format!("envoy kept running:\n{}", tail_text(&log, 30))))
            }
        }
    }

    /// The process id (with `cpus`, `taskset` has exec'd into Envoy).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://<listener>` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listener)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// The admin endpoint's Prometheus text.
    pub async fn prometheus(&self) -> Result<String> {
        Ok(self
            .client
            .get(self.admin_url("/stats/prometheus"))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?)
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(path: &Path, lines: usize) -> String {
    tail_text(&std::fs::read_to_string(path).unwrap_or_default(), lines)
}

fn tail_text(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The value of a Prometheus sample with exactly these labels (in order), or
/// 0 when absent.
pub fn prometheus_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let rendered: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    let series = format!("{name}{{{}}}", rendered.join(","));
    text.lines()
        .find_map(|line| line.strip_prefix(&series).map(str::trim))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}
