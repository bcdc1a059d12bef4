//! What the policy concludes: a verdict, a recommendation, and reasons that
//! carry a [`ReasonCode`] (for the engine and for programs), a sentence (for
//! people) and the numbers behind it (for the event log).

use crate::rules::shadow::ShadowHealth;
use crate::rules::watch::WatchHealth;
use crate::window::RoleWindowStats;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VerdictKind {
    Critical,
    Degraded,
    Healthy,
    InsufficientData,
}

impl VerdictKind {
    pub const ALL: [VerdictKind; 4] = [
        VerdictKind::Critical,
        VerdictKind::Degraded,
        VerdictKind::Healthy,
        VerdictKind::InsufficientData,
    ];

    /// The verdict as JSON and metrics write it.
    pub fn as_str(self) -> &'static str {
        match self {
            VerdictKind::Critical => "CRITICAL",
            VerdictKind::Degraded => "DEGRADED",
            VerdictKind::Healthy => "HEALTHY",
            VerdictKind::InsufficientData => "INSUFFICIENT_DATA",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Recommendation {
    Rollback,
    Hold,
    Promote,
    Continue,
}

impl Recommendation {
    pub const ALL: [Recommendation; 4] = [
        Recommendation::Rollback,
        Recommendation::Hold,
        Recommendation::Promote,
        Recommendation::Continue,
    ];

    /// The recommendation as JSON writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Recommendation::Rollback => "ROLLBACK",
            Recommendation::Hold => "HOLD",
            Recommendation::Promote => "PROMOTE",
            Recommendation::Continue => "CONTINUE",
        }
    }
}

/// Which rule found what. The engine decides on these, never on a
/// reason's sentence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ReasonCode {
    /// Half or more of at least ten canary requests failed.
    OverwhelmingFailure,
    /// The observed split is not the configured one.
    SampleRatioMismatch,
    InsufficientData,
    ErrorRateCritical,
    /// The critical error-rate threshold is crossed but not yet established.
    ErrorRateUnproven,
    ErrorRateDegraded,
    LatencyCritical,
    /// The critical latency threshold is crossed but not yet established.
    LatencyUnproven,
    LatencyDegraded,
    SloErrorRate,
    SloP95,
    /// An output field's shift beyond the critical limit (established,
    /// with the guard).
    OutputsCritical,
    /// An output field's shift beyond the degraded limit.
    OutputsDegraded,
    /// An output field's shift beyond the critical limit, not established
    /// yet: promotion waits.
    OutputsUnproven,
    /// Too few answers read to judge an output field: promotion waits.
    OutputsCollecting,
    /// A feedback metric worse on the canary by more than the critical
    /// delta (established, with the guard).
    FeedbackCritical,
    /// A feedback metric on the canary beyond its absolute `min` / `max`.
    FeedbackLimit,
    /// A feedback metric worse by more than the degraded delta.
    FeedbackDegraded,
    /// A feedback metric worse by more than the critical delta, not
    /// established yet: promotion waits.
    FeedbackUnproven,
    /// The baseline has feedback, the canary too little yet: promotion waits.
    FeedbackCollecting,
    /// One proxy's reports alone would roll back or advance the canary;
    /// without them the other proxies' reports say otherwise: hold.
    ProxiesDisagree,
    /// Within thresholds, too few canary requests to advance yet.
    HealthyCollecting,
    /// Within thresholds, but more canary errors than baseline errors.
    HealthyNotBetter,
    /// Within thresholds, not yet shown non-inferior.
    HealthyNotYetNonInferior,
    Healthy,
    /// No canary is in progress.
    NoCanary,
}

impl ReasonCode {
    pub const ALL: [ReasonCode; 26] = [
        ReasonCode::OverwhelmingFailure,
        ReasonCode::SampleRatioMismatch,
        ReasonCode::InsufficientData,
        ReasonCode::ErrorRateCritical,
        ReasonCode::ErrorRateUnproven,
        ReasonCode::ErrorRateDegraded,
        ReasonCode::LatencyCritical,
        ReasonCode::LatencyUnproven,
        ReasonCode::LatencyDegraded,
        ReasonCode::SloErrorRate,
        ReasonCode::SloP95,
        ReasonCode::OutputsCritical,
        ReasonCode::OutputsDegraded,
        ReasonCode::OutputsUnproven,
        ReasonCode::OutputsCollecting,
        ReasonCode::FeedbackCritical,
        ReasonCode::FeedbackLimit,
        ReasonCode::FeedbackDegraded,
        ReasonCode::FeedbackUnproven,
        ReasonCode::FeedbackCollecting,
        ReasonCode::ProxiesDisagree,
        ReasonCode::HealthyCollecting,
        ReasonCode::HealthyNotBetter,
        ReasonCode::HealthyNotYetNonInferior,
        ReasonCode::Healthy,
        ReasonCode::NoCanary,
    ];

    /// The code as JSON writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            ReasonCode::OverwhelmingFailure => "overwhelming_failure",
            ReasonCode::SampleRatioMismatch => "sample_ratio_mismatch",
            ReasonCode::InsufficientData => "insufficient_data",
            ReasonCode::ErrorRateCritical => "error_rate_critical",
            ReasonCode::ErrorRateUnproven => "error_rate_unproven",
            ReasonCode::ErrorRateDegraded => "error_rate_degraded",
            ReasonCode::LatencyCritical => "latency_critical",
            ReasonCode::LatencyUnproven => "latency_unproven",
            ReasonCode::LatencyDegraded => "latency_degraded",
            ReasonCode::SloErrorRate => "slo_error_rate",
            ReasonCode::SloP95 => "slo_p95",
            ReasonCode::OutputsCritical => "outputs_critical",
            ReasonCode::OutputsDegraded => "outputs_degraded",
            ReasonCode::OutputsUnproven => "outputs_unproven",
            ReasonCode::OutputsCollecting => "outputs_collecting",
            ReasonCode::FeedbackCritical => "feedback_critical",
            ReasonCode::FeedbackLimit => "feedback_limit",
            ReasonCode::FeedbackDegraded => "feedback_degraded",
            ReasonCode::FeedbackUnproven => "feedback_unproven",
            ReasonCode::FeedbackCollecting => "feedback_collecting",
            ReasonCode::ProxiesDisagree => "proxies_disagree",
            ReasonCode::HealthyCollecting => "healthy_collecting",
            ReasonCode::HealthyNotBetter => "healthy_not_better",
            ReasonCode::HealthyNotYetNonInferior => "healthy_not_yet_non_inferior",
            ReasonCode::Healthy => "healthy",
            ReasonCode::NoCanary => "no_canary",
        }
    }

    /// A finding about the error rate (any severity).
    pub fn is_error_rate(self) -> bool {
        matches!(
            self,
            ReasonCode::ErrorRateCritical
                | ReasonCode::ErrorRateUnproven
                | ReasonCode::ErrorRateDegraded
        )
    }

    /// A finding about latency (any severity).
    pub fn is_latency(self) -> bool {
        matches!(
            self,
            ReasonCode::LatencyCritical | ReasonCode::LatencyUnproven | ReasonCode::LatencyDegraded
        )
    }
}

/// One finding, with the numbers behind it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Reason {
    pub code: ReasonCode,
    pub message: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub numbers: Map<String, Value>,
}

impl Reason {
    /// A reason; `numbers` is a JSON object (anything else gives none).
    pub fn new(code: ReasonCode, message: String, numbers: Value) -> Reason {
        Reason {
            code,
            message,
            numbers: match numbers {
                Value::Object(m) => m,
                _ => Map::new(),
            },
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub verdict: VerdictKind,
    pub recommendation: Recommendation,
    pub reasons: Vec<Reason>,
}

impl Verdict {
    /// The reasons as one sentence, for event logs.
    pub fn summary(&self) -> String {
        self.reasons
            .iter()
            .map(|r| r.message.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Every reason's numbers, merged (for event logs).
    pub fn numbers(&self) -> Map<String, Value> {
        let mut all = Map::new();
        for r in &self.reasons {
            all.extend(r.numbers.clone());
        }
        all
    }

    /// What there is to say about a deployment without a canary.
    pub fn no_canary(baseline_version: &str) -> Verdict {
        Verdict {
            verdict: VerdictKind::InsufficientData,
            recommendation: Recommendation::Continue,
            reasons: vec![Reason::new(
                ReasonCode::NoCanary,
                format!("no canary in progress; {baseline_version} serves all traffic"),
                Value::Null,
            )],
        }
    }

    /// The reason with this code, if the verdict has one.
    pub fn reason(&self, code: ReasonCode) -> Option<&Reason> {
        self.reasons.iter().find(|r| r.code == code)
    }
}

/// A verdict with the statistics it was made from (the API's health body).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Health {
    pub verdict: VerdictKind,
    pub recommendation: Recommendation,
    pub reasons: Vec<Reason>,
    pub window_seconds: u64,
    pub baseline: RoleWindowStats,
    pub canary: RoleWindowStats,
    /// The deployment's shadow over the same window (null without one).
    #[serde(default)]
    pub shadow: Option<ShadowHealth>,
    /// The new baseline's watch after a promotion (null without one).
    #[serde(default)]
    pub watch: Option<WatchHealth>,
}

impl Health {
    /// `verdict` on the numbers it was made from.
    pub fn new(
        verdict: Verdict,
        window_seconds: u64,
        baseline: RoleWindowStats,
        canary: RoleWindowStats,
    ) -> Health {
        Health {
            verdict: verdict.verdict,
            recommendation: verdict.recommendation,
            reasons: verdict.reasons,
            window_seconds,
            baseline,
            canary,
            shadow: None,
            watch: None,
        }
    }

    /// With the deployment's shadow beside both roles.
    pub fn with_shadow(self, shadow: Option<ShadowHealth>) -> Health {
        Health { shadow, ..self }
    }

    /// With the new baseline's watch after a promotion.
    pub fn with_watch(self, watch: Option<WatchHealth>) -> Health {
        Health { watch, ..self }
    }
}

/// A rate as a percentage with one decimal, for sentences.
pub(crate) fn pct(rate: f64) -> String {
    format!("{:.1} %", rate * 100.0)
}

/// Milliseconds for sentences: one decimal below 100 ms.
pub(crate) fn ms(v: f64) -> String {
    if v.abs() < 100.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.0} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_as_json_writes_them() {
        for code in ReasonCode::ALL {
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json.as_str(), Some(code.as_str()));
            assert_eq!(serde_json::from_value::<ReasonCode>(json).unwrap(), code);
        }
        for v in VerdictKind::ALL {
            assert_eq!(serde_json::to_value(v).unwrap().as_str(), Some(v.as_str()));
        }
        for r in Recommendation::ALL {
            assert_eq!(serde_json::to_value(r).unwrap().as_str(), Some(r.as_str()));
        }
    }
}
