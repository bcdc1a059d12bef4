//! Envoy metrics, per deployment and role.
//!
//! Names carry the labels as `deployment.<name>.role.<role>.class.<class>`
//! segments; the `stats_tags` of the shipped Envoy configs extract them, so
//! the admin `/stats/prometheus` shows for example
//! `coalmine_requests{deployment="heart-prod",role="canary",class="5xx"}`,
//! and, for deployments that read outputs,
//! `coalmine_outputs{deployment,role,field,value}` and
//! `coalmine_outputs_skipped{deployment,role,reason}`.
//!
//! The worker writes them through the [`Metrics`] trait: [`EnvoyMetrics`]
//! in the filter, a recording in the worker's tests (which run natively,
//! where Envoy's host calls do not exist).

use coalmine_protocol::config::Deployment;
use coalmine_protocol::outputs::{FieldKind, FieldValue, MAX_LABELS, OTHER, Skip, metric_label};
use coalmine_protocol::{Outcome, Role};
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

/// What a worker counts, per deployment (by its index in the configuration).
pub(crate) trait Metrics {
    /// A finished request of a role: its outcome class and latency.
    fn request(&mut self, deployment: usize, role: Role, outcome: Outcome, latency_us: u64);
    /// One field of an answer read (`field`: its index in `outputs`).
    fn output(&mut self, deployment: usize, role: Role, field: usize, value: &FieldValue);
    /// An answer not read, and why.
    fn output_skipped(&mut self, deployment: usize, role: Role, skip: Skip);
    /// A request whose role a tester chose (kept out of the role counters
    /// and the reports: it is not part of the comparison).
    fn tester_override(&mut self, deployment: usize);
    /// The split in force: canary share and table epoch.
    fn split(&self, deployment: usize, canary_bps: u16, epoch: u64);
    /// A failed sync, counted for every deployment.
    fn sync_failed(&self);
    /// The lease ran out, counted for every deployment.
    fn lease_expired(&self);
    /// A report the controller refused (it would refuse it again) dropped.
    fn report_dropped(&self);
    /// Hands the counts gathered since the last call to Envoy (on the tick).
    fn flush(&mut self) {}
}

/// An Envoy counter whose increments wait in the VM until the next flush:
/// one host call per counter and tick instead of one per request. Totals
/// stay exact; Envoy shows them at most one tick late.
#[derive(Debug, Clone, Copy, Default)]
struct Counter {
    id: u32,
    pending: u64,
}

impl Counter {
    fn defined(name: &str) -> Result<Counter, String> {
        Ok(Counter {
            id: define(MetricType::Counter, name)?,
            pending: 0,
        })
    }

    fn add(&mut self) {
        self.pending = self.pending.saturating_add(1);
    }

    fn flush(&mut self) {
        if self.pending > 0 {
            let n = i64::try_from(self.pending).unwrap_or(i64::MAX);
            let _ = hostcalls::increment_metric(self.id, n);
            self.pending = 0;
        }
    }
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
    fn request(&mut self, deployment: usize, role: Role, outcome: Outcome, latency_us: u64) {
        if let Some(m) = self.deployments.get_mut(deployment) {
            m.record(role, outcome, latency_us);
        }
    }

    fn output(&mut self, deployment: usize, role: Role, field: usize, value: &FieldValue) {
        let Some(m) = self.deployments.get_mut(deployment) else {
            return;
        };
        let Some(f) = m
            .outputs
            .get_mut(role.index())
            .and_then(|f| f.get_mut(field))
        else {
            return;
        };
        if let Some(c) = f.counter(value) {
            c.add();
        }
    }

    fn output_skipped(&mut self, deployment: usize, role: Role, skip: Skip) {
        let counter = self
            .deployments
            .get_mut(deployment)
            .and_then(|m| m.skipped.get_mut(role.index()))
            .and_then(|s| s.get_mut(skip.index()));
        if let Some(c) = counter {
            c.add();
        }
    }

    fn tester_override(&mut self, deployment: usize) {
        if let Some(m) = self.deployments.get_mut(deployment) {
            m.tester_overrides.add();
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

    fn report_dropped(&self) {
        for m in &self.deployments {
            let _ = hostcalls::increment_metric(m.sync_reports_dropped, 1);
        }
    }

    fn flush(&mut self) {
        for m in &mut self.deployments {
            m.flush();
        }
    }
}

/// The name of a deployment-wide metric.
fn deployment_name(deployment: &str, what: &str) -> String {
    format!("coalmine.deployment.{deployment}.{what}")
}

/// The name of a role's metric.
fn role_name(deployment: &str, role: Role, what: &str) -> String {
    format!("coalmine.deployment.{deployment}.role.{role}.{what}")
}

/// The counter of one value of one output field.
fn output_name(deployment: &str, role: Role, field: &str, value: &str) -> String {
    role_name(
        deployment,
        role,
        &format!("field.{field}.value.{value}.outputs"),
    )
}

fn define(kind: MetricType, name: &str) -> Result<u32, String> {
    hostcalls::define_metric(kind, name)
        .map_err(|status| format!("cannot define metric {name}: {status:?}"))
}

/// The counters of one output field of one role.
#[derive(Debug, Clone)]
enum FieldIds {
    /// Labels get their counter when first seen (at most [`MAX_LABELS`];
    /// the others count as `other`).
    Class {
        /// The name of a label's counter, but for the label.
        name: (String, String),
        labels: Vec<(String, Counter)>,
        other: Counter,
    },
    /// One counter per slot, defined at load.
    Score { slots: Vec<Counter> },
}

impl FieldIds {
    fn define(
        deployment: &str,
        role: Role,
        field: &str,
        kind: FieldKind,
    ) -> Result<FieldIds, String> {
        let counter = |value: &str| Counter::defined(&output_name(deployment, role, field, value));
        Ok(match kind {
            FieldKind::Class => FieldIds::Class {
                name: (
                    role_name(deployment, role, &format!("field.{field}.value.")),
                    ".outputs".to_string(),
                ),
                labels: Vec::new(),
                other: counter(OTHER)?,
            },
            FieldKind::Score(bins) => FieldIds::Score {
                slots: (0..bins.slots())
                    .map(|s| counter(&bins.slot_label(s)))
                    .collect::<Result<_, _>>()?,
            },
        })
    }

    /// The counter of `value`; a new label's is defined here (one host call
    /// for each of the first [`MAX_LABELS`] labels, never again).
    fn counter(&mut self, value: &FieldValue) -> Option<&mut Counter> {
        match (self, value) {
            (FieldIds::Score { slots }, FieldValue::Slot(s)) => slots.get_mut(*s),
            (
                FieldIds::Class {
                    name,
                    labels,
                    other,
                },
                FieldValue::Label(label),
            ) => {
                let label = metric_label(label);
                if let Some(i) = labels.iter().position(|(l, _)| *l == label) {
                    return labels.get_mut(i).map(|(_, c)| c);
                }
                if labels.len() >= MAX_LABELS || label == OTHER {
                    return Some(other);
                }
                let c = Counter::defined(&format!("{}{label}{}", name.0, name.1)).ok()?;
                labels.push((label, c));
                labels.last_mut().map(|(_, c)| c)
            }
            _ => None,
        }
    }

    fn flush(&mut self) {
        match self {
            FieldIds::Class { labels, other, .. } => {
                labels.iter_mut().for_each(|(_, c)| c.flush());
                other.flush();
            }
            FieldIds::Score { slots } => slots.iter_mut().for_each(Counter::flush),
        }
    }
}

/// Metric ids of one deployment (ids are per VM; Envoy shares the stat).
#[derive(Debug, Clone)]
struct DeploymentMetrics {
    /// `[role][class]` request counters.
    requests: [[Counter; Outcome::ALL.len()]; 2],
    /// Per role latency histogram in microseconds.
    latency_us: [u32; 2],
    /// Per role, per output field (none without `outputs`).
    outputs: [Vec<FieldIds>; 2],
    /// `[role][skip]` answers not read.
    skipped: [[Counter; Skip::ALL.len()]; 2],
    canary_share_bps: u32,
    split_epoch: u32,
    sync_failures: u32,
    sync_reports_dropped: u32,
    lease_expiries: u32,
    tester_overrides: Counter,
}

impl DeploymentMetrics {
    /// Defines (or looks up) the deployment's metrics.
    fn define(deployment: &Deployment) -> Result<DeploymentMetrics, String> {
        let d = deployment.name.as_str();
        let fields = deployment.outputs.as_ref().map_or(&[][..], |o| &o.fields);
        let mut requests = [[Counter::default(); Outcome::ALL.len()]; 2];
        let mut latency_us = [0; 2];
        let mut outputs: [Vec<FieldIds>; 2] = Default::default();
        let mut skipped = [[Counter::default(); Skip::ALL.len()]; 2];
        for role in Role::ALL {
            let r = role.index();
            for (i, class) in Outcome::ALL.iter().enumerate() {
                let name = role_name(d, role, &format!("class.{class}.requests"));
                if let Some(c) = requests.get_mut(r).and_then(|c| c.get_mut(i)) {
                    *c = Counter::defined(&name)?;
                }
            }
            if let Some(id) = latency_us.get_mut(r) {
                *id = define(MetricType::Histogram, &role_name(d, role, "latency_us"))?;
            }
            if fields.is_empty() {
                continue;
            }
            if let Some(o) = outputs.get_mut(r) {
                *o = fields
                    .iter()
                    .map(|f| FieldIds::define(d, role, &f.name, f.kind))
                    .collect::<Result<_, _>>()?;
            }
            for (i, skip) in Skip::ALL.iter().enumerate() {
                let name = role_name(
                    d,
                    role,
                    &format!("reason.{}.outputs_skipped", skip.as_str()),
                );
                if let Some(c) = skipped.get_mut(r).and_then(|s| s.get_mut(i)) {
                    *c = Counter::defined(&name)?;
                }
            }
        }
        Ok(DeploymentMetrics {
            requests,
            latency_us,
            outputs,
            skipped,
            canary_share_bps: define(MetricType::Gauge, &deployment_name(d, "canary_share_bps"))?,
            split_epoch: define(MetricType::Gauge, &deployment_name(d, "split_epoch"))?,
            sync_failures: define(MetricType::Counter, &deployment_name(d, "sync_failures"))?,
            sync_reports_dropped: define(
                MetricType::Counter,
                &deployment_name(d, "sync_reports_dropped"),
            )?,
            lease_expiries: define(MetricType::Counter, &deployment_name(d, "lease_expiries"))?,
            tester_overrides: Counter::defined(&deployment_name(d, "tester_overrides"))?,
        })
    }

    fn record(&mut self, role: Role, outcome: Outcome, latency_us: u64) {
        let r = role.index();
        if let Some(c) = self
            .requests
            .get_mut(r)
            .and_then(|c| c.get_mut(outcome.index()))
        {
            c.add();
        }
        if let Some(id) = self.latency_us.get(r) {
            let _ = hostcalls::record_metric(*id, latency_us);
        }
    }

    fn flush(&mut self) {
        self.requests.iter_mut().flatten().for_each(Counter::flush);
        self.skipped.iter_mut().flatten().for_each(Counter::flush);
        self.outputs.iter_mut().flatten().for_each(FieldIds::flush);
        self.tester_overrides.flush();
    }
}

/// The VM's own gauge: its linear memory in bytes. Every worker's VM sets
/// it on its tick, so it shows one worker's memory (they are alike).
#[derive(Debug, Clone)]
pub(crate) struct VmMetrics {
    memory_bytes: u32,
}

impl VmMetrics {
    pub(crate) fn define() -> Result<VmMetrics, String> {
        let memory_bytes = define(MetricType::Gauge, "coalmine.vm_memory_bytes")?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The names the shipped `stats_tags` parse into labels.
    #[test]
    fn names_carry_their_labels_as_segments() {
        let d = "coalmine.deployment.heart-prod";
        assert_eq!(
            role_name("heart-prod", Role::Canary, "class.bad_output.requests"),
            format!("{d}.role.canary.class.bad_output.requests")
        );
        assert_eq!(
            role_name("heart-prod", Role::Baseline, "latency_us"),
            format!("{d}.role.baseline.latency_us")
        );
        assert_eq!(
            output_name("heart-prod", Role::Canary, "probability", "07"),
            format!("{d}.role.canary.field.probability.value.07.outputs")
        );
        assert_eq!(
            deployment_name("heart-prod", "canary_share_bps"),
            format!("{d}.canary_share_bps")
        );
    }
}
