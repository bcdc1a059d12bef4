//! The policy: per-deployment thresholds and schedule, and the pure
//! evaluation of both roles' window statistics into a verdict with reasons.
//!
//! Defaults are the seed rule set of DESIGN.md. Every verdict carries reasons
//! whose numbers are the ones that decided it, so an operator (and the event
//! log) can see exactly why a canary was held or rolled back.

use crate::window::RoleWindowStats;
use coalmine_protocol::Outcome;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// Thresholds a canary is compared against its baseline with.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// Canary error rate above baseline's by more than this (0.05 = 5 pp).
    pub error_rate_delta: f64,
    /// Canary p95 above baseline's by more than this many milliseconds.
    pub p95_delta_ms: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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

/// Absolute service levels; a breach counts as CRITICAL.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Slo {
    pub max_error_rate: Option<f64>,
    pub max_p95_ms: Option<f64>,
}

/// The statistical guard on CRITICAL breaches and promotions.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Significance {
    /// The bare seed rules: thresholds on the observed numbers.
    #[default]
    None,
    /// Anytime-valid tests at this level (see `significance`).
    Alpha(f64),
}

impl Serialize for Significance {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Significance::None => s.serialize_str("none"),
            Significance::Alpha(a) => json!({ "alpha": a }).serialize(s),
        }
    }
}

/// As JSON: `"none"` or `{"alpha": 0.01}`.
impl utoipa::PartialSchema for Significance {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(["none"])),
            )
            .item(
                ObjectBuilder::new()
                    .property("alpha", ObjectBuilder::new().schema_type(Type::Number))
                    .required("alpha")
                    .additional_properties(Some(
                        utoipa::openapi::schema::AdditionalProperties::FreeForm(false),
                    )),
            )
            .description(Some(
                "The statistical guard: \"none\" (the bare thresholds) or {\"alpha\": level}",
            ))
            .into()
    }
}

impl utoipa::ToSchema for Significance {}

impl<'de> Deserialize<'de> for Significance {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Alpha {
            alpha: f64,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Name(String),
            Alpha(Alpha),
        }
        match Raw::deserialize(d)? {
            Raw::Name(n) if n == "none" => Ok(Significance::None),
            Raw::Name(n) => Err(serde::de::Error::custom(format!(
                "unknown significance {n:?}; use \"none\" or {{\"alpha\": 0.01}}"
            ))),
            Raw::Alpha(a) => Ok(Significance::Alpha(a.alpha)),
        }
    }
}

/// A deployment's policy. Every field is optional in JSON; the defaults are
/// the seed rule set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    pub window_seconds: u64,
    pub check_interval_seconds: u64,
    pub min_requests: u64,
    pub critical: Thresholds,
    pub degraded: Thresholds,
    pub promote: PromoteRule,
    pub slo: Slo,
    /// Canary percentages to step through; the last is 100.
    pub steps: Vec<f64>,
    pub bake_seconds: u64,
    pub cooldown_seconds: u64,
    pub auto_rollback: bool,
    pub auto_promote: bool,
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
            steps: vec![20.0, 50.0, 100.0],
            bake_seconds: 60,
            cooldown_seconds: 120,
            auto_rollback: true,
            auto_promote: true,
            significance: Significance::Alpha(0.01),
            error_classes: vec![Outcome::ServerError, Outcome::Reset],
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
        validate_steps("steps", &self.steps)?;
        if self.bake_seconds > 86_400 {
            return Err(bad("bake_seconds", "must be at most 86400"));
        }
        if self.cooldown_seconds > 86_400 {
            return Err(bad("cooldown_seconds", "must be at most 86400"));
        }
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
}

/// A schedule: strictly increasing percentages in (0, 100], ending at 100.
pub fn validate_steps(field: &str, steps: &[f64]) -> Result<(), PolicyError> {
    if steps.is_empty() || steps.len() > 20 {
        return Err(bad(field, "must list 1 to 20 percentages"));
    }
    let mut last = 0.0;
    for &s in steps {
        if !(s.is_finite() && s > last && s <= 100.0) {
            return Err(bad(
                field,
                format!("must increase strictly within (0, 100]; {s} does not follow {last}"),
            ));
        }
        last = s;
    }
    if last != 100.0 {
        return Err(bad(field, "must end at 100"));
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VerdictKind {
    Critical,
    Degraded,
    Healthy,
    InsufficientData,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Recommendation {
    Rollback,
    Hold,
    Promote,
    Continue,
}

/// One finding, with the numbers behind it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Reason {
    pub code: String,
    pub message: String,
    #[schema(value_type = Object)]
    pub numbers: Map<String, Value>,
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
}

fn pct(rate: f64) -> String {
    format!("{:.1} %", rate * 100.0)
}

fn ms(v: f64) -> String {
    if v.abs() < 100.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.0} ms")
    }
}

fn reason(code: &str, message: String, numbers: Value) -> Reason {
    Reason {
        code: code.to_string(),
        message,
        numbers: match numbers {
            Value::Object(m) => m,
            _ => Map::new(),
        },
    }
}

/// What the policy looks at.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observations {
    /// Both roles over the same window.
    pub baseline: RoleWindowStats,
    pub canary: RoleWindowStats,
    /// Canary requests in the window slower than the baseline's p95 plus
    /// `critical.p95_delta_ms` (read from the canary's histogram).
    pub canary_slow: u64,
    /// Since the current share was set: canary and all requests, and that
    /// share (0 ..= 1), for the sample-ratio check.
    pub step_canary_requests: u64,
    pub step_requests: u64,
    pub configured_share: f64,
}

impl Observations {
    /// Both roles' numbers only (no latency test input, no ratio check).
    pub fn of(baseline: RoleWindowStats, canary: RoleWindowStats) -> Observations {
        Observations {
            baseline,
            canary,
            ..Observations::default()
        }
    }
}

/// Overwhelming failure: this share of canary errors over at least
/// [`VALVE_MIN_REQUESTS`] rolls back at once, whatever else is configured.
pub const VALVE_ERROR_RATE: f64 = 0.5;
pub const VALVE_MIN_REQUESTS: u64 = 10;
/// "p95 above baseline p95 + Δ" means more than this share of canary
/// requests slower than baseline p95 + Δ.
pub const SLOW_SHARE: f64 = 0.05;

/// The guard's one-sided test that a rate exceeds `p0` (at `alpha`), with
/// what the verdict's reasons show of it.
struct RateAbove {
    estimate: f64,
    bound: f64,
    log_e: f64,
    alpha: f64,
    established: bool,
}

impl RateAbove {
    fn test(x: u64, n: u64, p0: f64, alpha: f64) -> RateAbove {
        use crate::significance::{log_evidence_above, lower_bound};
        let log_e = log_evidence_above(x, n, p0);
        RateAbove {
            estimate: x as f64 / n.max(1) as f64,
            bound: lower_bound(x, n, alpha),
            log_e,
            alpha,
            established: log_e >= (1.0 / alpha).ln(),
        }
    }

    /// Adds the estimate (under `estimate_key`), the bound, the e-value and
    /// the α spent to a reason's numbers.
    fn record(&self, numbers: &mut Value, estimate_key: &str) {
        if let Value::Object(m) = numbers {
            m.insert(estimate_key.into(), json!(self.estimate));
            m.insert("lower_bound".into(), json!(self.bound));
            m.insert("log_e_value".into(), json!(self.log_e));
            m.insert("alpha".into(), json!(self.alpha));
        }
    }

    fn conclusion(&self) -> String {
        let state = if self.established {
            "established"
        } else {
            "not yet established"
        };
        format!("{state} at α = {}", self.alpha)
    }
}

fn alpha_of(policy: &Policy) -> Option<f64> {
    match policy.significance {
        Significance::None => None,
        Significance::Alpha(a) => Some(a),
    }
}

/// Compares canary and baseline over the same window.
pub fn evaluate(policy: &Policy, obs: &Observations) -> Verdict {
    use crate::significance::{log_mixture, lower_bound, upper_bound};
    let (baseline, canary) = (&obs.baseline, &obs.canary);
    let guard = alpha_of(policy);
    if canary.requests >= VALVE_MIN_REQUESTS && canary.error_rate >= VALVE_ERROR_RATE {
        return Verdict {
            verdict: VerdictKind::Critical,
            recommendation: Recommendation::Rollback,
            reasons: vec![reason(
                "overwhelming_failure",
                format!(
                    "canary failing {} of {} requests ({}): rolled back without waiting for more data",
                    canary.errors,
                    canary.requests,
                    pct(canary.error_rate)
                ),
                json!({"canary_errors": canary.errors, "canary_requests": canary.requests, "canary_error_rate": canary.error_rate}),
            )],
        };
    }
    // Sample-ratio mismatch: the split observed since the share was set is
    // not what it was set to, beyond chance (two-sided, anytime-valid).
    let srm_alpha = guard.unwrap_or(0.01);
    let srm = (obs.step_requests > 0 && obs.configured_share > 0.0 && obs.configured_share < 1.0)
        .then(|| log_mixture(obs.step_canary_requests, obs.step_requests, obs.configured_share))
        .filter(|&e| e >= (1.0 / srm_alpha).ln())
        .map(|e| {
            let observed = obs.step_canary_requests as f64 / obs.step_requests as f64;
            reason(
                "sample_ratio_mismatch",
                format!(
                    "sample ratio mismatch: the canary received {} of requests, it was set to {} (e-value {:.0} ≥ 1/α = {:.0}); promotion is blocked",
                    pct(observed),
                    pct(obs.configured_share),
                    e.exp().min(1e12),
                    1.0 / srm_alpha
                ),
                json!({"observed_share": observed, "configured_share": obs.configured_share,
                       "canary_requests": obs.step_canary_requests, "requests": obs.step_requests,
                       "log_e_value": e, "alpha": srm_alpha}),
            )
        });
    let min = policy.min_requests;
    if canary.requests < min || baseline.requests < min {
        return Verdict {
            verdict: VerdictKind::InsufficientData,
            recommendation: Recommendation::Continue,
            reasons: std::iter::once(reason(
                "insufficient_data",
                format!(
                    "canary has {} requests and baseline {} in the last {} s; at least {min} each are needed",
                    canary.requests, baseline.requests, policy.window_seconds
                ),
                json!({"canary_requests": canary.requests, "baseline_requests": baseline.requests, "min_requests": min}),
            ))
            .chain(srm)
            .collect(),
        };
    }
    let mut critical = Vec::new();
    let mut unproven = Vec::new();
    let t = &policy.critical;
    let delta = canary.error_rate - baseline.error_rate;
    if delta > t.error_rate_delta {
        let mut numbers = json!({
            "canary_error_rate": canary.error_rate, "baseline_error_rate": baseline.error_rate,
            "canary_errors": canary.errors, "canary_requests": canary.requests,
            "baseline_errors": baseline.errors, "baseline_requests": baseline.requests,
            "estimate": delta, "error_rate_delta_limit": t.error_rate_delta,
        });
        let mut message = format!(
            "canary error rate {} exceeds baseline {} by {:.1} pp (limit {:.1} pp)",
            pct(canary.error_rate),
            pct(baseline.error_rate),
            delta * 100.0,
            t.error_rate_delta * 100.0
        );
        // With the guard: of all errors, the canary's share must be shown to
        // exceed its share of traffic (its error rate above the baseline's).
        let established = match guard {
            None => true,
            Some(a) => {
                let (x, n) = (canary.errors, canary.errors.saturating_add(baseline.errors));
                let share =
                    canary.requests as f64 / (canary.requests as f64 + baseline.requests as f64);
                let test = RateAbove::test(x, n, share, a / 2.0);
                test.record(&mut numbers, "canary_share_of_errors");
                if let Value::Object(m) = &mut numbers {
                    m.insert("canary_share_of_traffic".into(), json!(share));
                }
                message.push_str(&format!(
                    "; the canary made {x} of {n} errors ({}, lower bound {}) on {} of the traffic, {}",
                    pct(test.estimate),
                    pct(test.bound),
                    pct(share),
                    test.conclusion()
                ));
                test.established
            }
        };
        let r = reason(
            if established {
                "error_rate_critical"
            } else {
                "error_rate_unproven"
            },
            message,
            numbers,
        );
        if established {
            critical.push(r)
        } else {
            unproven.push(r)
        }
    }
    if let (Some(c), Some(b)) = (canary.p95_ms, baseline.p95_ms)
        && c > b + t.p95_delta_ms
    {
        let mut numbers = json!({"canary_p95_ms": c, "baseline_p95_ms": b, "p95_delta_limit_ms": t.p95_delta_ms, "estimate": c - b});
        let mut message = format!(
            "canary p95 {} exceeds baseline p95 {} by {} (limit {})",
            ms(c),
            ms(b),
            ms(c - b),
            ms(t.p95_delta_ms)
        );
        let established = match guard {
            None => true,
            Some(a) => {
                let (x, n) = (obs.canary_slow, canary.requests);
                let test = RateAbove::test(x, n, SLOW_SHARE, a / 2.0);
                test.record(&mut numbers, "canary_slow_share");
                message.push_str(&format!(
                    "; {x} of {n} canary requests ({}, lower bound {}) slower than {}: more than {} {}",
                    pct(test.estimate),
                    pct(test.bound),
                    ms(b + t.p95_delta_ms),
                    pct(SLOW_SHARE),
                    test.conclusion()
                ));
                test.established
            }
        };
        let r = reason(
            if established {
                "latency_critical"
            } else {
                "latency_unproven"
            },
            message,
            numbers,
        );
        if established {
            critical.push(r)
        } else {
            unproven.push(r)
        }
    }
    if let Some(max) = policy.slo.max_error_rate
        && canary.error_rate > max
    {
        critical.push(reason(
            "slo_error_rate",
            format!(
                "canary error rate {} breaks the SLO of {}",
                pct(canary.error_rate),
                pct(max)
            ),
            json!({"canary_error_rate": canary.error_rate, "slo_max_error_rate": max}),
        ));
    }
    if let (Some(max), Some(c)) = (policy.slo.max_p95_ms, canary.p95_ms)
        && c > max
    {
        critical.push(reason(
            "slo_p95",
            format!("canary p95 {} breaks the SLO of {}", ms(c), ms(max)),
            json!({"canary_p95_ms": c, "slo_max_p95_ms": max}),
        ));
    }
    if !critical.is_empty() {
        return Verdict {
            verdict: VerdictKind::Critical,
            recommendation: Recommendation::Rollback,
            reasons: critical.into_iter().chain(srm).collect(),
        };
    }
    // DEGRADED: the seed rules at half the thresholds, and any breach of the
    // critical thresholds not yet established (hold while evidence gathers).
    let d = &policy.degraded;
    let mut degraded = unproven;
    if !degraded.iter().any(|r| r.code.starts_with("error_rate")) && delta > d.error_rate_delta {
        degraded.push(reason(
            "error_rate_degraded",
            format!(
                "canary error rate {} exceeds baseline {} by {:.1} pp (limit {:.1} pp)",
                pct(canary.error_rate),
                pct(baseline.error_rate),
                delta * 100.0,
                d.error_rate_delta * 100.0
            ),
            json!({"canary_error_rate": canary.error_rate, "baseline_error_rate": baseline.error_rate, "error_rate_delta_limit": d.error_rate_delta}),
        ));
    }
    if !degraded.iter().any(|r| r.code.starts_with("latency"))
        && let (Some(c), Some(b)) = (canary.p95_ms, baseline.p95_ms)
        && c > b + d.p95_delta_ms
    {
        degraded.push(reason(
            "latency_degraded",
            format!(
                "canary p95 {} exceeds baseline p95 {} by {} (limit {})",
                ms(c),
                ms(b),
                ms(c - b),
                ms(d.p95_delta_ms)
            ),
            json!({"canary_p95_ms": c, "baseline_p95_ms": b, "p95_delta_limit_ms": d.p95_delta_ms}),
        ));
    }
    if !degraded.is_empty() {
        return Verdict {
            verdict: VerdictKind::Degraded,
            recommendation: Recommendation::Hold,
            reasons: degraded.into_iter().chain(srm).collect(),
        };
    }
    let numbers = json!({
        "canary_requests": canary.requests, "canary_error_rate": canary.error_rate,
        "baseline_error_rate": baseline.error_rate, "min_canary_requests": policy.promote.min_canary_requests,
    });
    let continue_because = |code: &str, message: String, numbers: Value| Verdict {
        verdict: VerdictKind::Healthy,
        recommendation: Recommendation::Continue,
        reasons: vec![reason(code, message, numbers)],
    };
    if canary.requests < policy.promote.min_canary_requests {
        return continue_because(
            "healthy_collecting",
            format!(
                "within thresholds; canary has {} of the {} requests needed to advance",
                canary.requests, policy.promote.min_canary_requests
            ),
            numbers,
        );
    }
    if canary.error_rate > baseline.error_rate {
        return continue_because(
            "healthy_not_better",
            format!(
                "within thresholds, but canary error rate {} is above baseline {}",
                pct(canary.error_rate),
                pct(baseline.error_rate)
            ),
            numbers,
        );
    }
    if let Some(r) = srm {
        return Verdict {
            verdict: VerdictKind::Healthy,
            recommendation: Recommendation::Hold,
            reasons: vec![r],
        };
    }
    let mut message = format!(
        "canary error rate {} ≤ baseline {} over {} canary requests; p95 {} vs {}",
        pct(canary.error_rate),
        pct(baseline.error_rate),
        canary.requests,
        canary.p95_ms.map_or("-".into(), ms),
        baseline.p95_ms.map_or("-".into(), ms)
    );
    let mut numbers = numbers;
    if let Some(a) = guard {
        // Non-inferiority: upper bound of the canary's rate minus the lower
        // bound of the baseline's, each at α/2.
        let worst = upper_bound(canary.errors, canary.requests, a / 2.0)
            - lower_bound(baseline.errors, baseline.requests, a / 2.0);
        let margin = policy.promote.non_inferiority_margin;
        if let Value::Object(m) = &mut numbers {
            m.insert("worst_case_delta".into(), json!(worst));
            m.insert("non_inferiority_margin".into(), json!(margin));
            m.insert("alpha".into(), json!(a));
        }
        if worst > margin {
            return continue_because(
                "healthy_not_yet_non_inferior",
                format!(
                    "within thresholds; not yet shown non-inferior: the canary's error rate may still exceed the baseline's by up to {:.1} pp (margin {:.1} pp, α = {a})",
                    worst * 100.0,
                    margin * 100.0
                ),
                numbers,
            );
        }
        message.push_str(&format!(
            "; non-inferior: at most {:.1} pp worse (margin {:.1} pp, α = {a})",
            worst.max(0.0) * 100.0,
            margin * 100.0
        ));
    }
    Verdict {
        verdict: VerdictKind::Healthy,
        recommendation: Recommendation::Promote,
        reasons: vec![reason("healthy", message, numbers)],
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn role(requests: u64, errors: u64, p95: f64) -> RoleWindowStats {
        RoleWindowStats {
            requests,
            errors,
            error_rate: crate::window::error_rate(errors, requests),
            p50_ms: Some(p95 / 2.0),
            p95_ms: Some(p95),
            p99_ms: Some(p95 * 1.2),
        }
    }

    fn eval(p: &Policy, b: &RoleWindowStats, c: &RoleWindowStats) -> Verdict {
        evaluate(p, &Observations::of(b.clone(), c.clone()))
    }

    fn seed() -> Policy {
        Policy {
            significance: Significance::None,
            ..Policy::default()
        }
    }

    #[test]
    fn counts_at_the_limit_of_u64_do_not_overflow() {
        // Found by the policy fuzz target: the significance guard added both
        // roles' counts.
        let p = Policy::default();
        let v = eval(
            &p,
            &role(u64::MAX, u64::MAX, 10.0),
            &role(u64::MAX, u64::MAX, 10.0),
        );
        assert!(!v.reasons.is_empty());
        let v = eval(
            &p,
            &role(u64::MAX, 0, 10.0),
            &role(u64::MAX, u64::MAX / 10, 10.0),
        );
        assert_eq!(v.verdict, VerdictKind::Critical, "{v:?}");
    }

    #[test]
    fn the_seed_rules() {
        let p = seed();
        let base = role(1000, 10, 100.0);
        let cases = [
            (
                role(10, 4, 100.0),
                VerdictKind::InsufficientData,
                Recommendation::Continue,
                "insufficient_data",
            ),
            (
                role(200, 14, 100.0),
                VerdictKind::Critical,
                Recommendation::Rollback,
                "error_rate_critical",
            ),
            (
                role(200, 2, 201.0),
                VerdictKind::Critical,
                Recommendation::Rollback,
                "latency_critical",
            ),
            (
                role(200, 8, 100.0),
                VerdictKind::Degraded,
                Recommendation::Hold,
                "error_rate_degraded",
            ),
            (
                role(200, 2, 151.0),
                VerdictKind::Degraded,
                Recommendation::Hold,
                "latency_degraded",
            ),
            (
                role(200, 2, 150.0),
                VerdictKind::Healthy,
                Recommendation::Promote,
                "healthy",
            ),
            (
                role(50, 0, 100.0),
                VerdictKind::Healthy,
                Recommendation::Continue,
                "healthy_collecting",
            ),
            (
                role(200, 4, 100.0),
                VerdictKind::Healthy,
                Recommendation::Continue,
                "healthy_not_better",
            ),
        ];
        for (canary, verdict, rec, code) in cases {
            let v = eval(&p, &base, &canary);
            assert_eq!(
                (v.verdict, v.recommendation),
                (verdict, rec),
                "{canary:?}: {v:?}"
            );
            assert_eq!(v.reasons[0].code, code);
        }
    }

    #[test]
    fn reasons_carry_the_numbers() {
        let v = eval(
            &Policy::default(),
            &role(1000, 0, 50.0),
            &role(100, 25, 50.0),
        );
        assert_eq!(v.verdict, VerdictKind::Critical);
        let r = &v.reasons[0];
        assert_eq!(r.numbers["canary_error_rate"], json!(0.25));
        assert_eq!(r.numbers["baseline_error_rate"], json!(0.0));
        assert!(
            r.message.contains("25.0 %") && r.message.contains("0.0 %"),
            "{}",
            r.message
        );
    }

    #[test]
    fn slos_act_like_critical() {
        let mut p = seed();
        p.slo.max_error_rate = Some(0.01);
        p.slo.max_p95_ms = Some(120.0);
        // Both roles equally bad: no relative breach, but the SLOs catch it.
        let v = eval(&p, &role(1000, 20, 130.0), &role(200, 4, 130.0));
        assert_eq!(v.verdict, VerdictKind::Critical);
        let codes: Vec<_> = v.reasons.iter().map(|r| r.code.as_str()).collect();
        assert_eq!(codes, ["slo_error_rate", "slo_p95"]);
    }

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

    fn codes(v: &Verdict) -> Vec<&str> {
        v.reasons.iter().map(|r| r.code.as_str()).collect()
    }

    #[test]
    fn the_guard_holds_an_unproven_error_breach_and_rolls_back_a_proven_one() {
        let p = Policy::default();
        // 3 of 20 canary errors against 2 of 100: 13 pp observed, but 3 of 5
        // errors on a sixth of the traffic proves nothing yet.
        let v = eval(&p, &role(100, 2, 50.0), &role(20, 3, 50.0));
        assert_eq!(
            (v.verdict, codes(&v)),
            (VerdictKind::Degraded, vec!["error_rate_unproven"])
        );
        assert!(
            v.reasons[0].message.contains("not yet established"),
            "{}",
            v.reasons[0].message
        );
        // The same rates on ten times the traffic: established.
        let v = eval(&p, &role(1000, 20, 50.0), &role(200, 30, 50.0));
        assert_eq!(
            (v.verdict, codes(&v)),
            (VerdictKind::Critical, vec!["error_rate_critical"])
        );
        let n = &v.reasons[0].numbers;
        for key in ["estimate", "lower_bound", "log_e_value", "alpha"] {
            assert!(n.contains_key(key), "{key} missing: {n:?}");
        }
        assert_eq!(n["alpha"], json!(0.005));
        assert!(
            n["lower_bound"].as_f64().unwrap() > n["canary_share_of_traffic"].as_f64().unwrap()
        );
    }

    #[test]
    fn latency_breaches_are_a_binomial_question() {
        let p = Policy::default();
        let obs = |slow| Observations {
            canary_slow: slow,
            ..Observations::of(role(1000, 0, 80.0), role(400, 0, 250.0))
        };
        // 30 of 400 slower than baseline p95 + 100 ms: 7.5 % but not shown > 5 %.
        let v = evaluate(&p, &obs(30));
        assert_eq!(
            (v.verdict, codes(&v)),
            (VerdictKind::Degraded, vec!["latency_unproven"])
        );
        let v = evaluate(&p, &obs(100));
        assert_eq!(
            (v.verdict, codes(&v)),
            (VerdictKind::Critical, vec!["latency_critical"])
        );
    }

    #[test]
    fn overwhelming_failure_rolls_back_at_once() {
        // Below min_requests and without significance: half of 10 failing is enough.
        let v = eval(&Policy::default(), &role(5, 0, 50.0), &role(10, 5, 50.0));
        assert_eq!(
            (v.verdict, codes(&v)),
            (VerdictKind::Critical, vec!["overwhelming_failure"])
        );
        let v = eval(&Policy::default(), &role(5, 0, 50.0), &role(9, 9, 50.0));
        assert_eq!(v.verdict, VerdictKind::InsufficientData);
    }

    #[test]
    fn promotion_needs_non_inferiority() {
        let p = Policy::default();
        let v = eval(&p, &role(5000, 10, 50.0), &role(100, 0, 50.0));
        assert_eq!(
            (v.recommendation, codes(&v)),
            (
                Recommendation::Continue,
                vec!["healthy_not_yet_non_inferior"]
            )
        );
        let v = eval(&p, &role(5000, 10, 50.0), &role(1000, 0, 50.0));
        assert_eq!(
            (v.recommendation, codes(&v)),
            (Recommendation::Promote, vec!["healthy"])
        );
        assert!(v.reasons[0].numbers["worst_case_delta"].as_f64().unwrap() <= 0.05);
    }

    #[test]
    fn a_sample_ratio_mismatch_is_reported_and_blocks_promotion() {
        let base = Observations::of(role(5000, 10, 50.0), role(1000, 0, 50.0));
        let split = |canary, all| Observations {
            step_canary_requests: canary,
            step_requests: all,
            configured_share: 0.2,
            ..base.clone()
        };
        let v = evaluate(&Policy::default(), &split(2010, 10_000));
        assert_eq!(
            v.recommendation,
            Recommendation::Promote,
            "20.1 % of 10 000 is chance"
        );
        let v = evaluate(&Policy::default(), &split(2600, 10_000));
        assert_eq!(
            (v.recommendation, codes(&v)),
            (Recommendation::Hold, vec!["sample_ratio_mismatch"])
        );
        assert!(
            v.reasons[0].message.contains("26.0 %"),
            "{}",
            v.reasons[0].message
        );
    }

    proptest! {
        #[test]
        fn never_nan_never_panics(
            br in 0u64..1_000_000, be in 0u64..1_000_000, cr in 0u64..1_000_000, ce in 0u64..1_000_000,
            bp in 0.0f64..100_000.0, cp in 0.0f64..100_000.0,
            slow in 0u64..2_000_000, step_all in 0u64..u64::MAX / 4, step_share in 0.0f64..=1.0,
            share in 0.0f64..=1.0, guard in any::<bool>(),
        ) {
            let obs = Observations {
                baseline: role(br, be.min(br), bp),
                canary: role(cr, ce.min(cr), cp),
                canary_slow: slow,
                step_requests: step_all,
                step_canary_requests: (step_all as f64 * step_share) as u64,
                configured_share: share,
            };
            let p = if guard { Policy::default() } else { seed() };
            let v = evaluate(&p, &obs);
            let json = serde_json::to_string(&v).unwrap();
            prop_assert!(!json.contains("NaN") && !json.contains("null") && !json.contains("inf"), "{json}");
        }

        #[test]
        fn tiny_and_empty_counts_are_fine(br in 0u64..3, be in 0u64..3, cr in 0u64..3, ce in 0u64..3) {
            let obs = Observations {
                step_requests: br + cr,
                step_canary_requests: cr,
                configured_share: 0.2,
                ..Observations::of(role(br, be.min(br), 1.0), role(cr, ce.min(cr), 1.0))
            };
            let v = evaluate(&Policy::default(), &obs);
            prop_assert!(!serde_json::to_string(&v).unwrap().contains("NaN"));
        }
    }
}
