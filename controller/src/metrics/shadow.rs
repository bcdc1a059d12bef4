//! The shadow in `/metrics`: per deployment, the share copied and the
//! current shadow's version (`shadow_info`), the shadow's answers by class
//! and copies not made by why (counted as the reports arrive, per
//! deployment: not by version, which would add series with every version
//! ever shadowed), and over the policy's window its latency percentiles and
//! each output field's agreement with the answers users got (gauges,
//! absent without a shadow or without data).

use super::Metrics;
use coalmine_decide::engine::Deployment;
use coalmine_decide::rules::shadow::skip_reasons;
use coalmine_decide::window::ShadowWindowStats;
use coalmine_protocol::Outcome;
use coalmine_protocol::shadow::ShadowSkips;
use coalmine_protocol::sync::OutcomeCounts;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeploymentLabel {
    deployment: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    deployment: String,
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    deployment: String,
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SkipLabels {
    deployment: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PercentileLabels {
    deployment: String,
    percentile: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FieldLabels {
    deployment: String,
    field: String,
}

/// The shadow's families.
#[derive(Debug, Default)]
pub(super) struct ShadowMetrics {
    percent: Family<DeploymentLabel, Gauge<f64, AtomicU64>>,
    info: Family<VersionLabels, Gauge>,
    requests: Family<ClassLabels, Counter>,
    skipped: Family<SkipLabels, Counter>,
    latency: Family<PercentileLabels, Gauge<f64, AtomicU64>>,
    agreement: Family<FieldLabels, Gauge<f64, AtomicU64>>,
    compared: Family<FieldLabels, Gauge>,
    /// The fields each deployment's gauges show, to remove the gone.
    fields: Mutex<HashMap<String, BTreeSet<String>>>,
    /// The version each deployment's `shadow_info` shows, to remove it
    /// when the shadow stops or another replaces it.
    versions: Mutex<HashMap<String, String>>,
}

impl ShadowMetrics {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "shadow_percent",
            "The share of the baseline's requests copied to the deployment's shadow (0 without one)",
            self.percent.clone(),
        );
        registry.register(
            "shadow_info",
            "1, labelled by the version of the deployment's shadow (absent without one)",
            self.info.clone(),
        );
        registry.register(
            "shadow_requests",
            "The deployment's shadow's answers to copied requests, by outcome class, whichever version it was (shadow_info names the current one)",
            self.requests.clone(),
        );
        registry.register(
            "shadow_skipped",
            "Copies to the deployment's shadow not made, by why (busy, too_large, refused, incomplete), whichever version it was",
            self.skipped.clone(),
        );
        registry.register(
            "shadow_latency_ms",
            "The shadow's latency percentiles (p50, p95, p99) over the policy's window (absent without answers)",
            self.latency.clone(),
        );
        registry.register(
            "shadow_agreement",
            "Each output field's share of compared answers on which the shadow agreed with the answer the user got, over the policy's window (absent before any were compared)",
            self.agreement.clone(),
        );
        registry.register(
            "shadow_compared",
            "Each output field's answers compared between the shadow and the user's, over the policy's window",
            self.compared.clone(),
        );
    }
}

fn gauge_count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Metrics {
    /// One report of `deployment`'s shadow, counted.
    pub fn shadow_report(&self, deployment: &str, counts: &OutcomeCounts, skipped: &ShadowSkips) {
        for class in Outcome::ALL {
            let labels = ClassLabels {
                deployment: deployment.to_string(),
                class: class.as_str().to_string(),
            };
            // Every class exists from the first report, so rates work.
            self.shadow
                .requests
                .get_or_create(&labels)
                .inc_by(counts.get(class));
        }
        for (reason, n) in skip_reasons(skipped) {
            let labels = SkipLabels {
                deployment: deployment.to_string(),
                reason,
            };
            self.shadow.skipped.get_or_create(&labels).inc_by(n);
        }
    }

    /// `d`'s shadow now: its share, and over the window (`stats`, none
    /// without a shadow) its latency and each field's agreement.
    pub fn observe_shadow(&self, d: &Deployment, stats: Option<&ShadowWindowStats>) {
        let m = &self.shadow;
        let deployment = || d.name.clone();
        let share = d.shadow.as_ref().map_or(0.0, |s| s.bps.as_percent());
        m.percent
            .get_or_create(&DeploymentLabel {
                deployment: deployment(),
            })
            .set(share);
        let version = d.shadow.as_ref().map(|s| s.target.version.clone());
        let before = match m.versions.lock() {
            Ok(mut shown) => match &version {
                Some(v) => shown.insert(d.name.clone(), v.clone()),
                None => shown.remove(&d.name),
            },
            Err(_) => None,
        };
        if let Some(old) = before.filter(|old| Some(old) != version.as_ref()) {
            m.info.remove(&VersionLabels {
                deployment: deployment(),
                version: old,
            });
        }
        if let Some(version) = version {
            m.info
                .get_or_create(&VersionLabels {
                    deployment: deployment(),
                    version,
                })
                .set(1);
        }
        let stats = stats.filter(|_| d.shadow.is_some());
        for (percentile, value) in [
            ("p50", stats.and_then(|s| s.p50_ms)),
            ("p95", stats.and_then(|s| s.p95_ms)),
            ("p99", stats.and_then(|s| s.p99_ms)),
        ] {
            let labels = PercentileLabels {
                deployment: deployment(),
                percentile: percentile.to_string(),
            };
            match value {
                Some(ms) => {
                    m.latency.get_or_create(&labels).set(ms);
                }
                None => {
                    m.latency.remove(&labels);
                }
            }
        }
        let now: BTreeSet<String> = stats
            .map(|s| s.fields.keys().cloned().collect())
            .unwrap_or_default();
        let gone: Vec<String> = match m.fields.lock() {
            Ok(mut shown) => {
                let before = shown
                    .insert(d.name.clone(), now.clone())
                    .unwrap_or_default();
                before.difference(&now).cloned().collect()
            }
            Err(_) => Vec::new(),
        };
        for field in gone {
            let labels = FieldLabels {
                deployment: deployment(),
                field,
            };
            m.agreement.remove(&labels);
            m.compared.remove(&labels);
        }
        for (field, a) in stats.iter().flat_map(|s| s.fields.iter()) {
            let labels = FieldLabels {
                deployment: deployment(),
                field: field.clone(),
            };
            m.compared
                .get_or_create(&labels)
                .set(gauge_count(a.compared));
            match a.rate() {
                Some(rate) => {
                    m.agreement.get_or_create(&labels).set(rate);
                }
                None => {
                    m.agreement.remove(&labels);
                }
            }
        }
    }
}
