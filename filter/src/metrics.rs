//! Envoy metrics, per deployment and role.
//!
//! Names carry the labels as `deployment.<name>.role.<role>.class.<class>`
//! segments; the `stats_tags` of the shipped Envoy configs extract them, so
//! the admin `/stats/prometheus` shows for example
//! `coalmine_requests{deployment="heart-prod",role="canary",class="5xx"}`.

use coalmine_protocol::config::Deployment;
use coalmine_protocol::{Outcome, Role};
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

/// Metric ids of one deployment (ids are per VM; Envoy shares the stat).
#[derive(Debug, Clone)]
pub(crate) struct DeploymentMetrics {
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
pub(crate) fn names(deployment: &str) -> Vec<(MetricType, String)> {
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
    pub(crate) fn define(deployment: &Deployment) -> Result<DeploymentMetrics, String> {
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

    pub(crate) fn record(&self, role: Role, outcome: Outcome, latency_us: u64) {
        let r = role.index();
        if let Some(id) = self.requests.get(r).and_then(|c| c.get(outcome.index())) {
            let _ = hostcalls::increment_metric(*id, 1);
        }
        if let Some(id) = self.latency_ms.get(r) {
            let _ = hostcalls::record_metric(*id, latency_us / 1000);
        }
    }

    /// A request whose role a tester chose (kept out of the role counters
    /// and the reports: it is not part of the comparison).
    pub(crate) fn tester_override(&self) {
        let _ = hostcalls::increment_metric(self.tester_overrides, 1);
    }

    pub(crate) fn sync_failed(&self) {
        let _ = hostcalls::increment_metric(self.sync_failures, 1);
    }

    pub(crate) fn lease_expired(&self) {
        let _ = hostcalls::increment_metric(self.lease_expiries, 1);
    }

    pub(crate) fn set_split(&self, canary_bps: u16, epoch: u64) {
        let _ = hostcalls::record_metric(self.canary_share_bps, u64::from(canary_bps));
        let _ = hostcalls::record_metric(self.split_epoch, epoch);
    }
}
