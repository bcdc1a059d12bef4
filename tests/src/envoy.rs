//! A real Envoy on loopback: its bootstrap (a shipped config re-pointed at
//! the test's upstreams) and the running process.

use crate::{envoy_bin, filter_wasm, poll, tail, tail_text, workspace_root};
use anyhow::{Context as _, Result, anyhow, bail};
use serde_yaml_ng::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// An Envoy bootstrap, starting from a shipped config file.
#[derive(Debug, Clone)]
pub struct EnvoyConfig {
    doc: Value,
    /// The module the coalmine filter runs (default: the built filter).
    wasm: Option<PathBuf>,
}

/// Removes the entry named `name` from `list` (of `what`s), which must have one.
fn remove_named(list: &mut Vec<Value>, name: &str, what: &str) -> Result<()> {
    let before = list.len();
    list.retain(|f| f["name"].as_str() != Some(name));
    if list.len() == before {
        bail!("no {what} named {name}");
    }
    Ok(())
}

/// The shipped configs' strip of the clients' role and cluster headers.
const STRIP: &str = "coalmine.strip_client_headers";

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

    /// The early header mutations of the first listener (run before route
    /// selection and every HTTP filter).
    fn early_header_mutations(&mut self) -> Result<&mut Vec<Value>> {
        self.listeners()?
            .get_mut(0)
            .and_then(|l| {
                l["filter_chains"][0]["filters"][0]["typed_config"]
                    ["early_header_mutation_extensions"]
                    .as_sequence_mut()
            })
            .ok_or_else(|| anyhow!("first listener has no early_header_mutation_extensions"))
    }

    fn coalmine_filter(&mut self) -> Result<&mut Value> {
        self.http_filters()?
            .iter_mut()
            .find(|f| f["name"].as_str() == Some("coalmine"))
            .ok_or_else(|| anyhow!("no http filter named `coalmine`"))
    }

    pub(crate) fn cluster(&mut self, name: &str) -> Result<&mut Value> {
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

    /// Points the named cluster at several endpoints (the controller's
    /// replicas, say), keeping the first endpoint's settings for each.
    pub fn upstreams(mut self, cluster: &str, addrs: &[SocketAddr]) -> Result<EnvoyConfig> {
        let c = self.cluster(cluster)?;
        c["type"] = Value::from("STATIC");
        let endpoints = &mut c["load_assignment"]["endpoints"][0]["lb_endpoints"];
        let first = endpoints
            .as_sequence()
            .and_then(|e| e.first().cloned())
            .ok_or_else(|| anyhow!("cluster {cluster} has no endpoint"))?;
        let list = addrs
            .iter()
            .map(|addr| {
                let mut e = first.clone();
                let socket = &mut e["endpoint"]["address"]["socket_address"];
                socket["address"] = Value::from(addr.ip().to_string());
                socket["port_value"] = Value::from(addr.port());
                e
            })
            .collect();
        *endpoints = Value::Sequence(list);
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
    /// (standalone mode) and without reading outputs.
    pub fn standalone_plugin_config(&mut self) -> Result<serde_json::Value> {
        let mut plugin = without_outputs(self.shipped_plugin_config()?);
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

    /// Removes the shipped strip of the clients' role and cluster headers
    /// (e.g. to test the coalmine filter alone, or a chain without it).
    pub fn without_header_strip(mut self) -> Result<EnvoyConfig> {
        remove_named(
            self.early_header_mutations()?,
            STRIP,
            "early header mutation",
        )?;
        Ok(self)
    }

    /// Removes an HTTP filter by name (e.g. to test the coalmine filter alone).
    pub fn without_http_filter(mut self, name: &str) -> Result<EnvoyConfig> {
        remove_named(self.http_filters()?, name, "http filter")?;
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

    /// Only behind the header strip may the filter leave requests untagged
    /// (`client_headers_stripped`, `default_cluster`): a config without the
    /// strip (the filter alone, a sidecar's chain) has the filter tag every
    /// request, as a user's config must.
    fn tag_all_without_strip(&mut self) -> Result<()> {
        let stripped = self
            .early_header_mutations()
            .is_ok_and(|m| m.iter().any(|f| f["name"].as_str() == Some(STRIP)));
        if stripped || self.coalmine_filter().is_err() {
            return Ok(());
        }
        let mut plugin = self.shipped_plugin_config()?;
        if plugin["headers"]["client_headers_stripped"] != serde_json::Value::Bool(true) {
            return Ok(());
        }
        plugin["headers"]["client_headers_stripped"] = false.into();
        for d in plugin["deployments"].as_array_mut().into_iter().flatten() {
            if let Some(d) = d.as_object_mut() {
                d.remove("default_cluster");
            }
        }
        let filter = self.coalmine_filter()?;
        filter["typed_config"]["config"]["configuration"]["value"] =
            Value::from(plugin.to_string());
        Ok(())
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
        self.tag_all_without_strip()?;
        // A config without the filter (a benchmark's baseline) has no code.
        if let Ok(filter) = self.coalmine_filter() {
            filter["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"] =
                Value::from(wasm.display().to_string());
        }
        Ok(serde_yaml_ng::to_string(&self.doc)?)
    }
}

/// How to run Envoy: its node id, worker threads, and (optionally) the CPUs
/// it may run on (a `taskset` list such as `"1"`) and a command to run it
/// under (such as `valgrind --tool=callgrind`, which execs Envoy in the same
/// process), for benchmarks.
#[derive(Debug, Clone)]
pub struct EnvoyOptions {
    pub node_id: String,
    pub concurrency: u32,
    pub cpus: Option<String>,
    /// The command and its arguments, before Envoy's path.
    pub under: Vec<String>,
    /// How long Envoy may take to start answering.
    pub ready_within: Duration,
}

impl Default for EnvoyOptions {
    fn default() -> EnvoyOptions {
        EnvoyOptions {
            node_id: "coalmine-e2e".to_string(),
            concurrency: 2,
            cpus: None,
            under: Vec::new(),
            ready_within: Duration::from_secs(30),
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
        let mut line: Vec<std::ffi::OsString> = Vec::new();
        if let Some(cpus) = &opts.cpus {
            line.extend(["taskset".into(), "-c".into(), cpus.into()]);
        }
        line.extend(opts.under.iter().map(Into::into));
        line.push(envoy_bin()?.into());
        let (program, args) = line.split_first().context("no command to run Envoy")?;
        let mut command = Command::new(program);
        command.args(args);
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
        envoy.admin = poll("envoy's admin address", opts.ready_within, || {
            let r = envoy.check_running().map(|()| {
                std::fs::read_to_string(&admin_file)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
            });
            async move { r }
        })
        .await?;
        envoy.listener = poll("envoy's listener", opts.ready_within, || {
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
        poll("envoy to be ready", opts.ready_within, || {
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

/// A plugin configuration whose deployments read no outputs (answers are
/// judged by status and latency alone, as before outputs existed).
pub fn without_outputs(mut plugin: serde_json::Value) -> serde_json::Value {
    if let Some(deployments) = plugin["deployments"].as_array_mut() {
        for d in deployments.iter_mut().filter_map(|d| d.as_object_mut()) {
            d.remove("outputs");
        }
    }
    plugin
}
