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
//!   it can be stopped (SIGTERM) or killed (SIGKILL) and restarted on the
//!   same address and database.
//! - [`Load`]: steady client traffic in the background, every response kept.
//! - [`Stack`]: the controller and both upstreams, and Envoys pointed at
//!   them.
//! - [`Receiver`]: a webhook receiver (HTTP, or HTTPS with a certificate
//!   the test made) that can fail, refuse or hang on purpose.
//! - [`AnswerServer`]: an upstream that answers whatever a test asks (good
//!   and bad model answers, chunked, huge, compressed).
//! - [`Browser`]: Debian's headless Chromium driven through chromedriver.
//! - [`Postgres`]: a real PostgreSQL server in a temporary directory.
//! - [`TlsFiles`]: a CA of the test's own and a certificate it signed for
//!   `localhost` and `127.0.0.1` (a controller serving HTTPS).
//! - [`poll`]: wait for a condition with a deadline; tests never sleep a
//!   fixed time.

use anyhow::{Result, anyhow, bail};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod answers;
mod browser;
mod clients;
pub mod compose;
mod controller;
mod dblock;
mod envoy;
mod envoy_tls;
mod load;
pub mod models;
mod postgres;
mod receiver;
mod stack;
mod tls;
mod upstream;
pub use answers::{AnswerServer, answer_body};
pub use browser::{Browser, click, element_text};
pub use clients::RawStream;
pub use controller::{
    ControllerProc, FEEDBACK_TOKEN, OPERATOR_TOKEN, SYNC_TOKEN, controller_bin, package_bin,
};
pub use dblock::DbLock;
pub use envoy::{Envoy, EnvoyConfig, EnvoyOptions, without_outputs};
pub use load::{Load, Sample};
pub use models::ModelServer;
pub use postgres::Postgres;
pub use receiver::Receiver;
pub use stack::{
    INTERVAL_MS, Stack, canary_traffic_stops, first_canary_response, is_canary, plugin,
    plugin_reading_outputs, role_counts, settled_role_counts,
};
pub use tls::{SERVER_NAME, TlsFiles};
pub use upstream::{SeenHeaders, Upstream};

/// A TCP port free on loopback right now (for servers that cannot be
/// given port 0 and report theirs).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

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

/// The filter that does nothing, without the callbacks coalmine does not
/// take (`make build-wasm`): the floor of what any filter costs.
pub fn lean_empty_filter_wasm() -> Result<PathBuf> {
    built_wasm("coalmine_empty_filter_lean")
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
    Ok(coalmine_models_server::patients::load_requests(
        &workspace_root(),
    )?)
}

/// Resident memory of a process in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| anyhow!("no VmRSS for pid {pid}"))
}

/// The kinds of `events`, in order.
pub fn kinds(events: &[coalmine_client::types::StoredEvent]) -> Vec<&'static str> {
    events.iter().map(|e| e.event.kind.as_str()).collect()
}

/// The check that failed a canary which must never have advanced: its
/// `health_check_failed` event, after none of `step_advanced` or `promoted`.
pub fn failed_without_advancing(
    events: &[coalmine_client::types::StoredEvent],
) -> Result<&coalmine_client::types::StoredEvent> {
    let seen = kinds(events);
    anyhow::ensure!(
        !seen
            .iter()
            .any(|k| ["step_advanced", "promoted"].contains(k)),
        "the canary advanced: {seen:?}"
    );
    events
        .iter()
        .find(|e| e.event.kind.as_str() == "health_check_failed")
        .ok_or_else(|| anyhow!("no health_check_failed event in {seen:?}"))
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

pub(crate) fn tail(path: &Path, lines: usize) -> String {
    tail_text(&std::fs::read_to_string(path).unwrap_or_default(), lines)
}

pub(crate) fn tail_text(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The value of a Prometheus sample with exactly these labels (in order), or
/// 0 when absent.
pub fn prometheus_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let rendered: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    let series = format!("{name}{{{}}}", rendered.join(","));
    // A series without labels may be written without braces (the
    // controller's) or with empty ones (Envoy's).
    let bare = format!("{name} ");
    text.lines()
        .find_map(|line| {
            line.strip_prefix(&series)
                .or_else(|| {
                    labels
                        .is_empty()
                        .then(|| line.strip_prefix(&bare))
                        .flatten()
                })
                .map(str::trim)
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::prometheus_value;

    #[test]
    fn samples_are_found_with_labels_and_without() {
        let controller = "coalmine_controller_store_errors_total 3\n";
        let envoy = "coalmine_vm_memory_bytes{} 1048576\n\
                     coalmine_requests{deployment=\"d\",role=\"canary\",class=\"2xx\"} 7\n";
        assert_eq!(
            prometheus_value(controller, "coalmine_controller_store_errors_total", &[]),
            3.0
        );
        assert_eq!(
            prometheus_value(envoy, "coalmine_vm_memory_bytes", &[]),
            1_048_576.0
        );
        let labels = [("deployment", "d"), ("role", "canary"), ("class", "2xx")];
        assert_eq!(prometheus_value(envoy, "coalmine_requests", &labels), 7.0);
        assert_eq!(prometheus_value(envoy, "coalmine_requests", &[]), 0.0);
    }
}
