//! The policy: a deployment's thresholds, schedule and switches, as
//! operators write them (JSON, every field optional) and validated once.
//!
//! Defaults are the seed rule set of DESIGN.md. How the thresholds are
//! applied to both roles' numbers is [`crate::rules`].

use coalmine_protocol::Outcome;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Thresholds a canary is compared against its baseline with.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// Canary error rate above baseline's by more than this (0.05 = 5 pp).
    pub error_rate_delta: f64,
    /// Canary p95 above baseline's by more than this many milliseconds.
    pub p95_delta_ms: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct PromoteRule {
    pub min_canary_requests: u64,
    /// With the significance guard: promote only when the canary's error
    /// rate is shown to exceed the baseline's by at most this much.
    pub non_inferiority_margin: f64,
}

impl Default for PromoteRule {
    fn default() -> Self {
        PromoteRule {
            min_canary_requests: 100,
            non_inferiority_margin: 0.05,
        }
    }
}

/// How far a field's distribution may move (total variation distance: the
/// share of the canary's answers that would have to change to look like
/// the baseline's).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ShiftLimit {
    pub max_shift: f64,
}

/// The outputs rule (deployments whose proxies read outputs): a field's
/// shift beyond `critical` is CRITICAL, beyond `degraded` DEGRADED, judged
/// once both roles have `min_samples` answers of it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct OutputsRule {
    pub critical: ShiftLimit,
    pub degraded: ShiftLimit,
    pub min_samples: u64,
}

impl Default for OutputsRule {
    fn default() -> Self {
        OutputsRule {
            critical: ShiftLimit { max_shift: 0.25 },
            degraded: ShiftLimit { max_shift: 0.10 },
            min_samples: 50,
        }
    }
}

impl OutputsRule {
    fn validate(&self) -> Result<(), PolicyError> {
        rate("outputs.critical.max_shift", self.critical.max_shift)?;
        rate("outputs.degraded.max_shift", self.degraded.max_shift)?;
        if self.degraded.max_shift > self.critical.max_shift {
            return Err(bad(
                "outputs.degraded.max_shift",
                "must not exceed outputs.critical.max_shift",
            ));
        }
        if !(1..=1_000_000_000).contains(&self.min_samples) {
            return Err(bad(
                "outputs.min_samples",
                format!("must be between 1 and 1000000000, got {}", self.min_samples),
            ));
        }
        Ok(())
    }
}

/// Which way a feedback metric is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Better {
    Higher,
    Lower,
}

/// A feedback metric: a rate (accuracy, conversion …) of 0/1 observations
/// clients post after the fact, compared canary against baseline over its
/// own window of arrivals.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct FeedbackMetric {
    pub better: Better,
    /// The canary worse than the baseline by more than this: CRITICAL.
    pub critical_delta: f64,
    /// … by more than this: DEGRADED.
    pub degraded_delta: f64,
    /// Higher is better: the canary below this is CRITICAL.
    pub min: Option<f64>,
    /// Lower is better: the canary above this is CRITICAL.
    pub max: Option<f64>,
    /// Observations each role needs before the metric is judged.
    pub min_samples: u64,
    pub window_seconds: u64,
}

impl Default for FeedbackMetric {
    fn default() -> Self {
        FeedbackMetric {
            better: Better::Higher,
            critical_delta: 0.05,
            degraded_delta: 0.025,
            min: None,
            max: None,
            min_samples: 30,
            window_seconds: 3600,
        }
    }
}

/// Most feedback metrics a deployment declares.
pub const MAX_FEEDBACK_METRICS: usize = 8;
/// The longest feedback window: a week of arrivals.
pub const MAX_FEEDBACK_WINDOW_SECONDS: u64 = 7 * 86_400;

impl FeedbackMetric {
    fn validate(&self, name: &str) -> Result<(), PolicyError> {
        let field = |f: &str| format!("feedback.{name}.{f}");
        check_metric_name(name).map_err(|m| bad(&format!("feedback.{name}"), m))?;
        rate(&field("critical_delta"), self.critical_delta)?;
        rate(&field("degraded_delta"), self.degraded_delta)?;
        if self.degraded_delta > self.critical_delta {
            return Err(bad(
                &field("degraded_delta"),
                "must not exceed critical_delta",
            ));
        }
        match (self.better, self.min, self.max) {
            (Better::Lower, Some(_), _) => {
                return Err(bad(&field("min"), "applies when higher is better; use max"));
            }
            (Better::Higher, _, Some(_)) => {
                return Err(bad(&field("max"), "applies when lower is better; use min"));
            }
            (_, Some(v), _) => rate(&field("min"), v)?,
            (_, _, Some(v)) => rate(&field("max"), v)?,
            _ => {}
        }
        if !(1..=1_000_000_000).contains(&self.min_samples) {
            return Err(bad(
                &field("min_samples"),
                "must be between 1 and 1000000000",
            ));
        }
        if !(10..=MAX_FEEDBACK_WINDOW_SECONDS).contains(&self.window_seconds) {
            return Err(bad(
                &field("window_seconds"),
                format!(
                    "must be between 10 and {MAX_FEEDBACK_WINDOW_SECONDS}, got {}",
                    self.window_seconds
                ),
            ));
        }
        Ok(())
    }
}

/// A feedback metric's name: `[a-z0-9_]{1,32}` (it is a label in metrics).
pub fn check_metric_name(name: &str) -> Result<(), String> {
    coalmine_protocol::config::check_label_name("metric", name)
}

/// Absolute service levels; a breach counts as CRITICAL.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct Slo {
    pub max_error_rate: Option<f64>,
    pub max_p95_ms: Option<f64>,
}

/// A deployment's policy. Every field is optional in JSON; the defaults are
/// the seed rule set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    pub window_seconds: u64,
    pub check_interval_seconds: u64,
    pub min_requests: u64,
    pub critical: Thresholds,
    pub degraded: Thresholds,
    pub promote: PromoteRule,
    pub slo: Slo,
    pub outputs: OutputsRule,
    /// Feedback metrics by name (`accuracy` is declared by default, higher
    /// is better; judged only once observations arrive).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub feedback: BTreeMap<String, FeedbackMetric>,
    /// How a shadow's agreement with the answers users got is judged.
    pub shadow: ShadowRule,
    /// Canary percentages to step through; the last is 100.
    pub steps: Vec<f64>,
    pub bake_seconds: u64,
    /// A computed ramp instead of `steps` and `bake_seconds` (it wins over
    /// them when set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    pub cooldown_seconds: u64,
    pub auto_rollback: bool,
    pub auto_promote: bool,
    /// How long a promoted baseline stays watched (`policy/post_promotion.rs`).
    pub post_promotion: PostPromotion,
    pub significance: Significance,
    /// Outcome classes that count as errors.
    pub error_classes: Vec<Outcome>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            window_seconds: 300,
            check_interval_seconds: 5,
            min_requests: 20,
            critical: Thresholds {
                error_rate_delta: 0.05,
                p95_delta_ms: 100.0,
            },
            degraded: Thresholds {
                error_rate_delta: 0.025,
                p95_delta_ms: 50.0,
            },
            promote: PromoteRule::default(),
            slo: Slo::default(),
            outputs: OutputsRule::default(),
            feedback: BTreeMap::from([("accuracy".to_string(), FeedbackMetric::default())]),
            shadow: ShadowRule::default(),
            steps: vec![20.0, 50.0, 100.0],
            bake_seconds: 60,
            schedule: None,
            cooldown_seconds: 120,
            auto_rollback: true,
            auto_promote: true,
            post_promotion: PostPromotion::default(),
            significance: Significance::Alpha(0.01),
            error_classes: vec![Outcome::ServerError, Outcome::Reset, Outcome::BadOutput],
        }
    }
}

/// A policy field with a value out of range.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("policy.{field}: {message}")]
pub struct PolicyError {
    pub field: String,
    pub message: String,
}

fn bad(field: &str, message: impl Into<String>) -> PolicyError {
    PolicyError {
        field: field.to_string(),
        message: message.into(),
    }
}

fn rate(field: &str, v: f64) -> Result<(), PolicyError> {
    if v.is_finite() && (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(bad(
            field,
            format!("must be a fraction between 0 and 1, got {v}"),
        ))
    }
}

fn millis(field: &str, v: f64) -> Result<(), PolicyError> {
    if v.is_finite() && (0.0..=3_600_000.0).contains(&v) {
        Ok(())
    } else {
        Err(bad(
            field,
            format!("must be between 0 and 3600000 ms, got {v}"),
        ))
    }
}

impl Policy {
    /// Checks every value is usable; the message names the field.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if !(10..=86_400).contains(&self.window_seconds) {
            return Err(bad(
                "window_seconds",
                format!("must be between 10 and 86400, got {}", self.window_seconds),
            ));
        }
        if !(1..=3600).contains(&self.check_interval_seconds) {
            return Err(bad(
                "check_interval_seconds",
                format!(
                    "must be between 1 and 3600, got {}",
                    self.check_interval_seconds
                ),
            ));
        }
        if self.min_requests == 0 {
            return Err(bad("min_requests", "must be at least 1"));
        }
        rate("critical.error_rate_delta", self.critical.error_rate_delta)?;
        rate("degraded.error_rate_delta", self.degraded.error_rate_delta)?;
        millis("critical.p95_delta_ms", self.critical.p95_delta_ms)?;
        millis("degraded.p95_delta_ms", self.degraded.p95_delta_ms)?;
        if self.degraded.error_rate_delta > self.critical.error_rate_delta {
            return Err(bad(
                "degraded.error_rate_delta",
                "must not exceed critical.error_rate_delta",
            ));
        }
        if self.degraded.p95_delta_ms > self.critical.p95_delta_ms {
            return Err(bad(
                "degraded.p95_delta_ms",
                "must not exceed critical.p95_delta_ms",
            ));
        }
        if let Some(v) = self.slo.max_error_rate {
            rate("slo.max_error_rate", v)?;
        }
        if let Some(v) = self.slo.max_p95_ms {
            millis("slo.max_p95_ms", v)?;
        }
        self.outputs.validate()?;
        if self.feedback.len() > MAX_FEEDBACK_METRICS {
            return Err(bad(
                "feedback",
                format!("must declare at most {MAX_FEEDBACK_METRICS} metrics"),
            ));
        }
        for (name, metric) in &self.feedback {
            metric.validate(name)?;
        }
        self.shadow.validate()?;
        schedule("steps", &self.steps)?;
        check_seconds("bake_seconds", self.bake_seconds)?;
        self.ramp()?;
        check_seconds("cooldown_seconds", self.cooldown_seconds)?;
        self.post_promotion.validate()?;
        if let Significance::Alpha(a) = self.significance
            && !(a > 0.0 && a <= 0.2)
        {
            return Err(bad(
                "significance.alpha",
                format!("must be in (0, 0.2], got {a}"),
            ));
        }
        rate(
            "promote.non_inferiority_margin",
            self.promote.non_inferiority_margin,
        )?;
        if self.error_classes.is_empty() {
            return Err(bad("error_classes", "must name at least one outcome class"));
        }
        Ok(())
    }

    /// The shares a canary steps through and the bake at each: the
    /// `schedule` expanded when there is one, else `steps` and
    /// `bake_seconds`.
    pub fn ramp(&self) -> Result<Ramp, PolicyError> {
        schedule::policy_ramp(self.schedule.as_ref(), &self.steps, self.bake_seconds)
    }
}

/// The longest bake or cooldown accepted (a day).
pub const MAX_WAIT_SECONDS: u64 = 86_400;

/// A bake or cooldown in seconds: at most [`MAX_WAIT_SECONDS`].
pub fn check_seconds(field: &str, seconds: u64) -> Result<(), PolicyError> {
    if seconds > MAX_WAIT_SECONDS {
        return Err(bad(
            field,
            format!("must be at most {MAX_WAIT_SECONDS}, got {seconds}"),
        ));
    }
    Ok(())
}

mod post_promotion;
mod schedule;
mod shadow;
mod significance;

pub use post_promotion::{DEFAULT_WATCH_SECONDS, PostPromotion};
pub use schedule::{Exponential, MAX_RAMP_SHARES, Ramp, Schedule, schedule};
pub use shadow::{FieldMinimum, ShadowRule};
pub use significance::Significance;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn policy_json_defaults_and_validation() {
        let p: Policy = serde_json::from_str("{}").unwrap();
        assert_eq!(p, Policy::default());
        let p: Policy =
            serde_json::from_value(json!({"significance": "none", "steps": [5, 100]})).unwrap();
        assert!(p.validate().is_ok());
        assert!(serde_json::from_value::<Policy>(json!({"windw_seconds": 1})).is_err());
        let field = |v: Value| {
            serde_json::from_value::<Policy>(v)
                .unwrap()
                .validate()
                .unwrap_err()
                .field
        };
        assert_eq!(field(json!({"steps": [50, 20, 100]})), "steps");
        assert_eq!(field(json!({"steps": [20, 50]})), "steps");
        assert_eq!(
            field(json!({"critical": {"error_rate_delta": 2.0, "p95_delta_ms": 100}})),
            "critical.error_rate_delta"
        );
        assert_eq!(
            field(json!({"check_interval_seconds": 0})),
            "check_interval_seconds"
        );
        assert_eq!(
            field(json!({"significance": {"alpha": 0.9}})),
            "significance.alpha"
        );
        let none: Policy = serde_json::from_value(json!({"significance": "none"})).unwrap();
        assert_eq!(none.significance, Significance::None);
        assert_eq!(Policy::default().significance, Significance::Alpha(0.01));
        assert_eq!(
            field(json!({"degraded": {"error_rate_delta": 0.1, "p95_delta_ms": 50}})),
            "degraded.error_rate_delta"
        );
        let round: Policy =
            serde_json::from_str(&serde_json::to_string(&Policy::default()).unwrap()).unwrap();
        assert_eq!(round, Policy::default());
    }

    #[test]
    fn the_shadow_rule_has_defaults_and_is_checked() {
        let p: Policy = serde_json::from_value(json!({"shadow": {"min_agreement": 0.95}})).unwrap();
        assert!(p.validate().is_ok());
        assert_eq!((p.shadow.min_agreement, p.shadow.min_samples), (0.95, 50));
        assert_eq!(Policy::default().shadow, ShadowRule::default());
        assert_eq!(ShadowRule::default().min_agreement, 0.9);
        let field = |v: Value| {
            serde_json::from_value::<Policy>(json!({ "shadow": v }))
                .unwrap()
                .validate()
                .unwrap_err()
        };
        for bad in [0.0, -0.1, 1.01] {
            let e = field(json!({ "min_agreement": bad }));
            assert_eq!(e.field, "shadow.min_agreement");
            assert!(e.message.contains("(0, 1]"), "{e}");
        }
        assert!(
            serde_json::from_value::<Policy>(json!({"shadow": {"min_agreement": 1.0}}))
                .unwrap()
                .validate()
                .is_ok()
        );
        assert_eq!(field(json!({"min_samples": 0})).field, "shadow.min_samples");
        assert!(
            serde_json::from_value::<Policy>(json!({"shadow": {"min_agrement": 0.9}})).is_err()
        );
    }

    #[test]
    fn feedback_metrics_are_declared_with_defaults_and_checked() {
        let p: Policy =
            serde_json::from_value(json!({"feedback": {"accuracy": {"min": 0.85}, "complaints": {"better": "lower", "max": 0.1}}}))
                .unwrap();
        assert!(p.validate().is_ok());
        assert_eq!(p.feedback["accuracy"].min_samples, 30);
        assert_eq!(p.feedback["complaints"].better, Better::Lower);
        assert!(Policy::default().feedback.contains_key("accuracy"));
        let field = |v: Value| {
            serde_json::from_value::<Policy>(json!({ "feedback": v }))
                .unwrap()
                .validate()
                .unwrap_err()
                .field
        };
        assert_eq!(field(json!({"Accuracy!": {}})), "feedback.Accuracy!");
        assert_eq!(
            field(json!({"accuracy": {"better": "lower", "min": 0.5}})),
            "feedback.accuracy.min"
        );
        assert_eq!(
            field(json!({"accuracy": {"max": 0.5}})),
            "feedback.accuracy.max"
        );
        assert_eq!(
            field(json!({"accuracy": {"min": 1.5}})),
            "feedback.accuracy.min"
        );
        assert_eq!(
            field(json!({"accuracy": {"degraded_delta": 0.2}})),
            "feedback.accuracy.degraded_delta"
        );
        assert_eq!(
            field(json!({"accuracy": {"window_seconds": 5}})),
            "feedback.accuracy.window_seconds"
        );
        assert_eq!(
            field(json!({"accuracy": {"min_samples": 0}})),
            "feedback.accuracy.min_samples"
        );
        let nine: serde_json::Map<String, Value> =
            (0..9).map(|i| (format!("m{i}"), json!({}))).collect();
        assert_eq!(field(Value::Object(nine)), "feedback");
        assert!(
            serde_json::from_value::<Policy>(
                json!({"feedback": {"accuracy": {"critcal_delta": 0.1}}})
            )
            .is_err()
        );
    }
}
