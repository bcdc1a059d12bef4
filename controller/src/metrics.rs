//! The controller's Prometheus metrics (`GET /metrics`).

use coalmine_decide::engine::{Deployment, EventKind};
use coalmine_decide::rules::compare;
use coalmine_decide::verdict::VerdictKind;
use coalmine_decide::window::RoleWindowStats;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;

mod runtime;
mod shadow;
pub use runtime::Dropped;
use runtime::ReasonLabel;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeploymentLabel {
    deployment: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    deployment: String,
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActorLabels {
    deployment: String,
    actor: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FieldLabels {
    deployment: String,
    field: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShareLabels {
    deployment: String,
    role: String,
    field: String,
    value: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MetricLabels {
    deployment: String,
    metric: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MetricRoleLabels {
    deployment: String,
    metric: String,
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

/// Every metric, registered once.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    canary_share: Family<DeploymentLabel, Gauge<f64, AtomicU64>>,
    verdict: Family<VerdictLabels, Gauge>,
    rollbacks: Family<ActorLabels, Counter>,
    promotions: Family<ActorLabels, Counter>,
    sync_reports: Family<ResultLabel, Counter>,
    evaluation_seconds: Histogram,
    webhooks: Family<ResultLabel, Counter>,
    output_share: Family<ShareLabels, Gauge<f64, AtomicU64>>,
    output_shift: Family<FieldLabels, Gauge<f64, AtomicU64>>,
    feedback_received: Family<MetricLabels, Counter>,
    feedback_observations: Family<MetricRoleLabels, Gauge>,
    feedback_rate: Family<MetricRoleLabels, Gauge<f64, AtomicU64>>,
    feedback_age: Family<MetricRoleLabels, Gauge>,
    store_errors: Counter,
    unstored: Gauge,
    leader: Gauge,
    leader_term: Gauge,
    takeovers: Counter,
    auth_failures: Family<runtime::RoleLabel, Counter>,
    auth_limited: Counter,
    last_evaluation: Gauge<f64, AtomicU64>,
    held_syncs: Gauge,
    open_connections: Gauge,
    refused_connections: Counter,
    tls_handshake_failures: Family<ReasonLabel, Counter>,
    dropped_reports: Family<ReasonLabel, Counter>,
    database_bytes: Gauge,
    webhook_backlog: Family<ReceiverLabel, Gauge>,
    shadow: shadow::ShadowMetrics,
}

/// How a sync report was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncResult {
    Accepted,
    Duplicate,
    Rejected,
    Unauthorized,
    /// Refused while evaluations are stalled (the lease not renewed).
    Stalled,
    /// Refused by a replica that does not lead.
    Follower,
    /// A proxy's own token, reporting as another proxy.
    Forged,
}

/// What became of a webhook delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    Retried,
    Failed,
    Dropped,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("coalmine_controller");
        let m = Metrics {
            canary_share: Family::default(),
            verdict: Family::default(),
            rollbacks: Family::default(),
            promotions: Family::default(),
            sync_reports: Family::default(),
            evaluation_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            webhooks: Family::default(),
            output_share: Family::default(),
            output_shift: Family::default(),
            feedback_received: Family::default(),
            feedback_observations: Family::default(),
            feedback_rate: Family::default(),
            feedback_age: Family::default(),
            store_errors: Counter::default(),
            unstored: Gauge::default(),
            leader: Gauge::default(),
            leader_term: Gauge::default(),
            takeovers: Counter::default(),
            auth_failures: Family::default(),
            auth_limited: Counter::default(),
            last_evaluation: Gauge::default(),
            held_syncs: Gauge::default(),
            open_connections: Gauge::default(),
            refused_connections: Counter::default(),
            tls_handshake_failures: Family::default(),
            dropped_reports: Family::default(),
            database_bytes: Gauge::default(),
            webhook_backlog: Family::default(),
            shadow: shadow::ShadowMetrics::default(),
            registry: Registry::default(),
        };
        registry.register(
            "canary_share_percent",
            "The canary's share of traffic",
            m.canary_share.clone(),
        );
        registry.register(
            "verdict",
            "1 for the deployment's current verdict, 0 for the others",
            m.verdict.clone(),
        );
        registry.register(
            "rollbacks",
            "Canary rollbacks and reverts to the pinned version",
            m.rollbacks.clone(),
        );
        registry.register(
            "promotions",
            "Canaries promoted to baseline",
            m.promotions.clone(),
        );
        registry.register(
            "sync_reports",
            "Sync reports from proxies by result",
            m.sync_reports.clone(),
        );
        registry.register(
            "evaluation_duration_seconds",
            "Time to evaluate one deployment (window merge, policy, engine, commit)",
            m.evaluation_seconds.clone(),
        );
        registry.register(
            "webhook_deliveries",
            "Webhook deliveries by result",
            m.webhooks.clone(),
        );
        registry.register(
            "output_share",
            "Each role's share of its answers read with this value of an output field, over the policy's window",
            m.output_share.clone(),
        );
        registry.register(
            "output_shift",
            "How far the canary's distribution of an output field is from the baseline's (total variation distance), over the policy's window",
            m.output_shift.clone(),
        );
        registry.register(
            "feedback_received",
            "Feedback observations counted, by deployment and metric",
            m.feedback_received.clone(),
        );
        registry.register(
            "feedback_observations",
            "Feedback observations of each role over the metric's window",
            m.feedback_observations.clone(),
        );
        registry.register(
            "feedback_rate",
            "Each role's rate of 1s of a feedback metric over its window (absent without observations)",
            m.feedback_rate.clone(),
        );
        registry.register(
            "feedback_newest_age_seconds",
            "Seconds since each role's newest feedback observation arrived (absent before the first)",
            m.feedback_age.clone(),
        );
        m.shadow.register(&mut registry);
        m.register_runtime(&mut registry);
        registry.register(
            "webhook_backlog",
            "Notified events waiting for delivery to each webhook receiver (scheme, host and port only)",
            m.webhook_backlog.clone(),
        );
        Metrics { registry, ..m }
    }
}

/// OpenMetrics text (what the registry writes) as Prometheus text: a
/// counter's family takes its samples' `_total` name in HELP and TYPE, and
/// the OpenMetrics-only `# UNIT` and `# EOF` lines go.
fn prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if line.starts_with("# EOF") || line.starts_with("# UNIT ") {
            continue;
        }
        if line.starts_with("# HELP ") {
            help = Some(line);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let renamed =
                (kind == "counter" && !name.ends_with("_total")).then(|| format!("{name}_total"));
            let family = renamed.as_deref().unwrap_or(name);
            if let Some(h) = help.take() {
                let text = h.strip_prefix("# HELP ").and_then(|h| h.split_once(' '));
                out.push_str(&format!(
                    "# HELP {family} {}\n",
                    text.map_or("", |(_, t)| t)
                ));
            }
            out.push_str(&format!("# TYPE {family} {kind}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

impl Metrics {
    /// The Prometheus text exposition (format 0.0.4), which every scraper
    /// and `promtool check metrics` read.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        prometheus_text(&out)
    }

    pub fn observe_deployment(&self, d: &Deployment, verdict: Option<VerdictKind>) {
        let label = DeploymentLabel {
            deployment: d.name.clone(),
        };
        let share = d.canary.as_ref().map_or(0.0, |c| c.bps.as_percent());
        self.canary_share.get_or_create(&label).set(share);
        // Counters exist at 0 from the start, so rates and increases work
        // before the first rollback or promotion.
        for actor in [
            coalmine_decide::engine::ENGINE,
            coalmine_decide::engine::OPERATOR,
        ] {
            let labels = ActorLabels {
                deployment: d.name.clone(),
                actor: actor.to_string(),
            };
            drop(self.rollbacks.get_or_create(&labels));
            drop(self.promotions.get_or_create(&labels));
        }
        if let Some(verdict) = verdict {
            for kind in VerdictKind::ALL {
                let labels = VerdictLabels {
                    deployment: d.name.clone(),
                    verdict: kind.as_str().to_string(),
                };
                self.verdict
                    .get_or_create(&labels)
                    .set(i64::from(kind == verdict));
            }
        }
    }

    /// Each output field's distributions and shift, from both roles'
    /// window statistics.
    pub fn observe_outputs(
        &self,
        deployment: &str,
        baseline: &RoleWindowStats,
        canary: &RoleWindowStats,
    ) {
        let fields: BTreeSet<&String> = baseline
            .outputs
            .keys()
            .chain(canary.outputs.keys())
            .collect();
        for field in fields {
            let Some(c) = compare(canary.outputs.get(field), baseline.outputs.get(field)) else {
                continue;
            };
            let labels = FieldLabels {
                deployment: deployment.to_string(),
                field: field.clone(),
            };
            self.output_shift.get_or_create(&labels).set(c.shift);
            for s in &c.shares {
                for (role, share) in [("baseline", s.baseline), ("canary", s.canary)] {
                    let labels = ShareLabels {
                        deployment: deployment.to_string(),
                        role: role.to_string(),
                        field: field.clone(),
                        value: s.value.clone(),
                    };
                    self.output_share.get_or_create(&labels).set(share);
                }
            }
        }
    }

    /// `n` observations of `metric` counted for `deployment`.
    pub fn feedback_received(&self, deployment: &str, metric: &str, n: u64) {
        let labels = MetricLabels {
            deployment: deployment.to_string(),
            metric: metric.to_string(),
        };
        self.feedback_received.get_or_create(&labels).inc_by(n);
    }

    /// Each declared feedback metric per role: its count over the window
    /// (0 without any), and its rate and newest age when it has some.
    pub fn observe_feedback(
        &self,
        d: &Deployment,
        baseline: &RoleWindowStats,
        canary: &RoleWindowStats,
    ) {
        for metric in d.policy.feedback.keys() {
            let roles = [
                ("baseline", Some(baseline)),
                ("canary", d.canary.as_ref().map(|_| canary)),
            ];
            for (role, stats) in roles {
                let labels = MetricRoleLabels {
                    deployment: d.name.clone(),
                    metric: metric.clone(),
                    role: role.to_string(),
                };
                let s = stats.and_then(|s| s.feedback.get(metric));
                let count = s.map_or(0, |s| s.observations);
                self.feedback_observations
                    .get_or_create(&labels)
                    .set(i64::try_from(count).unwrap_or(i64::MAX));
                match s.filter(|s| s.observations > 0) {
                    Some(s) => {
                        self.feedback_rate.get_or_create(&labels).set(s.rate);
                    }
                    None => {
                        self.feedback_rate.remove(&labels);
                    }
                }
                match s.and_then(|s| s.newest_age_seconds) {
                    Some(age) => {
                        self.feedback_age
                            .get_or_create(&labels)
                            .set(i64::try_from(age).unwrap_or(i64::MAX));
                    }
                    None => {
                        self.feedback_age.remove(&labels);
                    }
                }
            }
        }
    }

    pub fn count_event(&self, deployment: &str, kind: EventKind, actor: &str) {
        let labels = ActorLabels {
            deployment: deployment.to_string(),
            actor: actor.to_string(),
        };
        match kind {
            EventKind::RolledBack | EventKind::RevertedToPinned => {
                self.rollbacks.get_or_create(&labels).inc();
            }
            EventKind::Promoted => {
                self.promotions.get_or_create(&labels).inc();
            }
            _ => {}
        }
    }

    pub fn sync_report(&self, result: SyncResult) {
        let result = match result {
            SyncResult::Accepted => "accepted",
            SyncResult::Duplicate => "duplicate",
            SyncResult::Rejected => "rejected",
            SyncResult::Unauthorized => "unauthorized",
            SyncResult::Stalled => "stalled",
            SyncResult::Follower => "follower",
            SyncResult::Forged => "forged",
        };
        self.sync_reports
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    pub fn evaluation(&self, seconds: f64) {
        self.evaluation_seconds.observe(seconds);
    }

    pub fn webhook(&self, result: Delivery) {
        let result = match result {
            Delivery::Delivered => "delivered",
            Delivery::Retried => "retried",
            Delivery::Failed => "failed",
            Delivery::Dropped => "dropped",
        };
        self.webhooks
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }
}

// Webhook backlog (notify/webhook.rs): one gauge per receiver, labelled by
// its redacted form (`https://host:port/…`), never its URL.

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReceiverLabel {
    receiver: String,
}

impl Metrics {
    /// `waiting` notified events not yet delivered to `receiver`.
    pub fn webhook_backlog(&self, receiver: &str, waiting: u64) {
        let label = ReceiverLabel {
            receiver: receiver.to_string(),
        };
        self.webhook_backlog
            .get_or_create(&label)
            .set(i64::try_from(waiting).unwrap_or(i64::MAX));
    }
}
