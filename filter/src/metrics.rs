//! Envoy metrics, per deployment and role.
//!
//! Names carry the labels as `deployment.<name>.role.<role>.class.<class>`
//! segments; the `stats_tags` of the shipped Envoy configs extract them, so
//! the admin `/stats/prometheus` shows for example
//! `coalmine_requests{deployment="heart-prod",role="canary",class="5xx"}`.
//!
//! The worker writes them through the [`Metrics`] trait: [`EnvoyMetrics`]
//! in the filter, a recording in the worker's tests (which run natively,
//! where Envoy's host calls do not exist).

use coalmine_protocol::config::Deployment;
use coalmine_protocol::{Outcome, Role};
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

/// What a worker counts, per deployment (by its index in the configuration).
pub(crate) trait Metrics {
    /// A finished request of a role: its outcome class and latency.
    fn request(&self, deployment: usize, role: Role, outcome: Outcome, latency_us: u64);
    /// A request whose role a tester chose (kept out of the role counters
    /// and the reports: it is not part of the comparison).
    fn tester_override(&self, deployment: usize);
    /// The split in force: canary share and table epoch.
    fn split(&self, deployment: usize, canary_bps: u16, epoch: u64);
    /// A failed sync, counted for every deployment.
    fn sync_failed(&self);
    /// The lease ran out, counted for every deployment.
    fn lease_expired(&self);
}

/// Envoy's metrics of every configured deployment.
#[derive(Debug, Clone)]
pub(crate) struct EnvoyMetrics {
    deployments: Vec<DeploymentMetrics>,
}

impl EnvoyMetrics {
    /// Defines (or looks up) every deployment's metrics.
    pub(crate) fn define(deployments: &[Deployment]) -> Result<EnvoyMetrics, String> {
        let deployments = deployments
            .iter()
            .map(DeploymentMetrics::define)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(EnvoyMetrics { deployments })
    }
}

impl Metrics for EnvoyMetrics {
    fn request(&self, deployment: usize, role: Role, outcome: Outcome, latency_us: u64) {
        if let Some(m) = self.deployments.get(deployment) {
            m.record(role, outcome, latency_us);
        }
    }

    fn tester_override(&self, deployment: usize) {
        if let Some(m) = self.deployments.get(deployment) {
            let _ = hostcalls::increment_metric(m.tester_overrides, 1);
        }
    }

    fn split(&self, deployment: usize, canary_bps: u16, epoch: u64) {
        if let Some(m) = self.deployments.get(deployment) {
            let _ = hostcalls::record_metric(m.canary_share_bps, u64::from(canary_bps));
            let _ = hostcalls::record_metric(m.split_epoch, epoch);
        }
    }

    fn sync_failed(&self) {
        for m in &self.deployments {
            let _ = hostcalls::increment_metric(m.sync_failures, 1);
        }
    }

    fn lease_expired(&self) {
        for m in &self.deployments {
            let _ = hostcalls::increment_metric(m.lease_expiries, 1);
        }
    }
}

/// Metric ids of one deployment (ids are per VM; Envoy shares the stat).
#[derive(Debug, Clone)]
struct DeploymentMetrics {
    /// `[role][class]` request counters.
    requests: [[u32; 4]; 2],
    /// Per role latency histogram in milliseconds.
    latency_ms: [u32; 2],
    canary_share_bps: u32,
    split_epoch: u32,
    sync_failures: u32,
    lease_expiries: u32,
    tester_overrides: u32,
}

/// The metric names of one deployment, in the order they are defined.
fn names(deployment: &str) -> Vec<(MetricType, String)> {
    let mut out = Vec::with_capacity(15);
    for role in Role::ALL {
        for class in Outcome::ALL {
            out.push((
                MetricType::Counter,
                format!("coalmine.deployment.{deployment}.role.{role}.class.{class}.requests"),
            ));
        }
        out.push((
            MetricType::Histogram,
            format!("coalmine.deployment.{deployment}.role.{role}.latency_ms"),
        ));
    }
    out.push((
        MetricType::Gauge,
        format!("coalmine.deployment.{deployment}.canary_share_bps"),
    ));
    out.push((
        MetricType::Gauge,
        format!("coalmine.deployment.{deployment}.split_epoch"),
    ));
    out.push((
        MetricType::Counter,
        format!("coalmine.deployment.{deployment}.sync_failures"),
    ));
    out.push((
        MetricType::Counter,
        format!("coalmine.deployment.{deployment}.lease_expiries"),
    ));
    out.push((
        MetricType::Counter,
        format!("coalmine.deployment.{deployment}.tester_overrides"),
    ));
    out
}

/// The VM's own gauge: its linear memory in bytes. Every worker's VM sets
/// it on its tick, so it shows one worker's memory (they are alike).
#[derive(Debug, Clone)]
pub(crate) struct VmMetrics {
    memory_bytes: u32,
}

impl VmMetrics {
    pub(crate) fn define() -> Result<VmMetrics, String> {
        let name = "coalmine.vm_memory_bytes";
        let memory_bytes = hostcalls::define_metric(MetricType::Gauge, name)
            .map_err(|status| format!("cannot define metric {name}: {status:?}"))?;
        Ok(VmMetrics { memory_bytes })
    }

    pub(crate) fn publish_memory(&self) {
        let _ = hostcalls::record_metric(self.memory_bytes, linear_memory_bytes());
    }
}

/// The size of this VM's linear memory (0 off wasm, where there is none).
fn linear_memory_bytes() -> u64 {
    #[cfg(target_arch = "wasm32")]
    {
        (core::arch::wasm32::memory_size(0) as u64).saturating_mul(65_536)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        0
    }
}

impl DeploymentMetrics {
    /// Defines (or looks up) the deployment's metrics.
    fn define(deployment: &Deployment) -> Result<DeploymentMetrics, String> {
        let mut ids = Vec::with_capacity(15);
        for (kind, name) in names(&deployment.name) {
            let id = hostcalls::define_metric(kind, &name)
                .map_err(|status| format!("cannot define metric {name}: {status:?}"))?;
            ids.push(id);
        }
        let id = |i: usize| ids.get(i).copied().unwrap_or_default();
        // Layout of `names`: per role 4 counters then the histogram; then 2
        // gauges and 3 counters.
        Ok(DeploymentMetrics {
            requests: [[id(0), id(1), id(2), id(3)], [id(5), id(6), id(7), id(8)]],
            latency_ms: [id(4), id(9)],
            canary_share_bps: id(10),
            split_epoch: id(11),
            sync_failures: id(12),
            lease_expiries: id(13),
            tester_overrides: id(14),
        })
    }

    fn record(&self, role: Role, outcome: Outcome, latency_us: u64) {
        let r = role.index();
        if let Some(id) = self.requests.get(r).and_then(|c| c.get(outcome.index())) {
            let _ = hostcalls::increment_metric(*id, 1);
        }
        if let Some(id) = self.latency_ms.get(r) {
            let _ = hostcalls::record_metric(*id, latency_us / 1000);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `DeploymentMetrics::define` takes ids by position: this is the layout
    /// it relies on, and the names the shipped `stats_tags` parse.
    #[test]
    fn names_follow_the_layout_the_ids_are_taken_by() {
        let names: Vec<String> = names("heart-prod").into_iter().map(|(_, n)| n).collect();
        let d = "coalmine.deployment.heart-prod";
        assert_eq!(names.len(), 15);
        assert_eq!(names[0], format!("{d}.role.baseline.class.2xx.requests"));
        assert_eq!(names[3], format!("{d}.role.baseline.class.reset.requests"));
        assert_eq!(names[4], format!("{d}.role.baseline.latency_ms"));
        assert_eq!(names[5], format!("{d}.role.canary.class.2xx.requests"));
        assert_eq!(names[9], format!("{d}.role.canary.latency_ms"));
        assert_eq!(
            names[10..],
            [
                format!("{d}.canary_share_bps"),
                format!("{d}.split_epoch"),
                format!("{d}.sync_failures"),
                format!("{d}.lease_expiries"),
                format!("{d}.tester_overrides"),
            ]
        );
    }
}
