//! The policy's rules, each a small function returning its findings, and
//! [`evaluate`], which only combines them into a verdict:
//!
//! 1. [`overwhelming_failure`]: rolls back at once, whatever else holds;
//! 2. [`sample_ratio`]: a broken split is reported and blocks promotion;
//! 3. [`insufficient_data`]: too few requests in either role;
//! 4. [`error_rate`], [`latency`] and [`slo`]: CRITICAL breaches (under the
//!    significance guard, a breach not yet established only holds);
//! 5. [`outputs()`]: each output field's shift, CRITICAL or DEGRADED
//!    (`rules/outputs.rs`);
//! 6. [`feedback()`]: each feedback metric (labels, business outcomes)
//!    against the baseline and its absolute limit (`rules/feedback.rs`);
//! 7. [`error_rate_degraded`], [`latency_degraded`]: the same at the
//!    DEGRADED thresholds;
//! 8. [`promotion`]: whether a healthy canary may advance.
//!
//! When two or more proxies reported canary requests, [`evaluate`] reads
//! the window again without the one that reported the most, and holds a
//! rollback or an advance that the others' reports contradict
//! (`rules/proxies.rs`).
//!
//! Apart from the canary's verdict, [`shadow::judge`] judges a shadow's
//! agreement with the answers users got (`rules/shadow.rs`); it never
//! changes the canary's verdict. After a promotion, [`watch::evaluate`]
//! judges the new baseline during its watch (`rules/watch.rs`).

mod feedback;
mod outputs;
mod proxies;
pub mod shadow;
pub mod watch;

pub use feedback::{FeedbackFindings, feedback};
pub use outputs::{FieldComparison, OutputFindings, Share, compare, outputs};

use crate::observe::Observations;
use crate::policy::Policy;
use crate::significance::{log_evidence_above, log_mixture, lower_bound, upper_bound};
use crate::verdict::{Reason, ReasonCode, Recommendation, Verdict, VerdictKind, ms, pct};
use crate::window::RoleWindowStats;
use serde_json::{Value, json};

/// Overwhelming failure: this share of canary errors over at least
/// [`VALVE_MIN_REQUESTS`] rolls back at once, whatever else is configured.
pub const VALVE_ERROR_RATE: f64 = 0.5;
pub const VALVE_MIN_REQUESTS: u64 = 10;
/// "p95 above baseline p95 + Δ" means more than this share of canary
/// requests slower than baseline p95 + Δ.
pub const SLOW_SHARE: f64 = 0.05;
/// The sample-ratio check's level when the guard is off.
const SRM_ALPHA: f64 = 0.01;

/// Compares canary and baseline over the same window; one proxy's reports
/// cannot alone roll back or advance the canary when the others' disagree.
pub fn evaluate(policy: &Policy, obs: &Observations) -> Verdict {
    let whole = judge(policy, obs);
    match &obs.others {
        Some(o) => proxies::corroborate(
            whole,
            proxies::Subject::Canary,
            (&o.without, &o.obs),
            |obs| judge(policy, obs),
        ),
        None => whole,
    }
}

/// The verdict on every report in the window.
pub(crate) fn judge(policy: &Policy, obs: &Observations) -> Verdict {
    if let Some(r) = overwhelming_failure(&obs.canary) {
        return verdict(VerdictKind::Critical, Recommendation::Rollback, vec![r]);
    }
    let guard = policy.significance.alpha();
    let srm = sample_ratio(obs, guard);
    let with_srm = |mut reasons: Vec<Reason>| {
        reasons.extend(srm.clone());
        reasons
    };
    if let Some(r) = insufficient_data(policy, obs) {
        let reasons = with_srm(vec![r]);
        return verdict(
            VerdictKind::InsufficientData,
            Recommendation::Continue,
            reasons,
        );
    }
    let (established, unproven): (Vec<Finding>, Vec<Finding>) =
        [error_rate(policy, obs, guard), latency(policy, obs, guard)]
            .into_iter()
            .flatten()
            .partition(|f| f.established);
    let mut critical: Vec<Reason> = established.into_iter().map(|f| f.reason).collect();
    critical.extend(slo(policy, &obs.canary));
    let answers = outputs(policy, obs, guard);
    critical.extend(answers.critical);
    let labels = feedback(policy, obs, guard);
    critical.extend(labels.critical);
    if !critical.is_empty() {
        let reasons = with_srm(critical);
        return verdict(VerdictKind::Critical, Recommendation::Rollback, reasons);
    }
    let mut degraded: Vec<Reason> = unproven.into_iter().map(|f| f.reason).collect();
    degraded.extend(answers.degraded);
    degraded.extend(labels.degraded);
    if !degraded.iter().any(|r| r.code.is_error_rate()) {
        degraded.extend(error_rate_degraded(policy, obs));
    }
    if !degraded.iter().any(|r| r.code.is_latency()) {
        degraded.extend(latency_degraded(policy, obs));
    }
    if !degraded.is_empty() {
        let reasons = with_srm(degraded);
        return verdict(VerdictKind::Degraded, Recommendation::Hold, reasons);
    }
    let mut waiting = answers.waiting;
    waiting.extend(labels.waiting);
    promotion(policy, obs, guard, srm, waiting)
}

fn verdict(verdict: VerdictKind, recommendation: Recommendation, reasons: Vec<Reason>) -> Verdict {
    Verdict {
        verdict,
        recommendation,
        reasons,
    }
}

/// A breach of a CRITICAL threshold, and whether it is established (always,
/// without the guard).
#[derive(Debug)]
pub struct Finding {
    pub reason: Reason,
    pub established: bool,
}

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

/// Half or more of at least [`VALVE_MIN_REQUESTS`] canary requests failed.
pub fn overwhelming_failure(canary: &RoleWindowStats) -> Option<Reason> {
    (canary.requests >= VALVE_MIN_REQUESTS && canary.error_rate >= VALVE_ERROR_RATE).then(|| {
        Reason::new(
            ReasonCode::OverwhelmingFailure,
            format!(
                "canary failing {} of {} requests ({}): rolled back without waiting for more data",
                canary.errors,
                canary.requests,
                pct(canary.error_rate)
            ),
            json!({"canary_errors": canary.errors, "canary_requests": canary.requests, "canary_error_rate": canary.error_rate}),
        )
    })
}

/// The split observed since the share was set is not what it was set to,
/// beyond chance (two-sided, anytime-valid).
pub fn sample_ratio(obs: &Observations, guard: Option<f64>) -> Option<Reason> {
    let alpha = guard.unwrap_or(SRM_ALPHA);
    let share = obs.configured_share;
    if obs.step_requests == 0 || share <= 0.0 || share >= 1.0 {
        return None;
    }
    let e = log_mixture(obs.step_canary_requests, obs.step_requests, share);
    if e < (1.0 / alpha).ln() {
        return None;
    }
    let observed = obs.step_canary_requests as f64 / obs.step_requests as f64;
    Some(Reason::new(
        ReasonCode::SampleRatioMismatch,
        format!(
            "sample ratio mismatch: the canary received {} of requests, it was set to {} (e-value {:.0} ≥ 1/α = {:.0}); promotion is blocked",
            pct(observed),
            pct(share),
            e.exp().min(1e12),
            1.0 / alpha
        ),
        json!({"observed_share": observed, "configured_share": share,
               "canary_requests": obs.step_canary_requests, "requests": obs.step_requests,
               "log_e_value": e, "alpha": alpha}),
    ))
}

/// Fewer than `min_requests` in either role.
pub fn insufficient_data(policy: &Policy, obs: &Observations) -> Option<Reason> {
    let (baseline, canary, min) = (&obs.baseline, &obs.canary, policy.min_requests);
    (canary.requests < min || baseline.requests < min).then(|| {
        Reason::new(
            ReasonCode::InsufficientData,
            format!(
                "canary has {} requests and baseline {} in the last {} s; at least {min} each are needed",
                canary.requests, baseline.requests, policy.window_seconds
            ),
            json!({"canary_requests": canary.requests, "baseline_requests": baseline.requests, "min_requests": min}),
        )
    })
}

/// The canary's error rate above the baseline's by more than the critical
/// delta. With the guard: of all errors, the canary's share must be shown to
/// exceed its share of traffic (its error rate above the baseline's).
pub fn error_rate(policy: &Policy, obs: &Observations, guard: Option<f64>) -> Option<Finding> {
    let (baseline, canary, limit) = (&obs.baseline, &obs.canary, policy.critical.error_rate_delta);
    let delta = canary.error_rate - baseline.error_rate;
    if delta <= limit {
        return None;
    }
    let mut numbers = json!({
        "canary_error_rate": canary.error_rate, "baseline_error_rate": baseline.error_rate,
        "canary_errors": canary.errors, "canary_requests": canary.requests,
        "baseline_errors": baseline.errors, "baseline_requests": baseline.requests,
        "estimate": delta, "error_rate_delta_limit": limit,
    });
    let mut message = format!(
        "canary error rate {} exceeds baseline {} by {:.1} pp (limit {:.1} pp)",
        pct(canary.error_rate),
        pct(baseline.error_rate),
        delta * 100.0,
        limit * 100.0
    );
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
    let code = if established {
        ReasonCode::ErrorRateCritical
    } else {
        ReasonCode::ErrorRateUnproven
    };
    Some(Finding {
        reason: Reason::new(code, message, numbers),
        established,
    })
}

/// The canary's p95 above the baseline's by more than the critical delta.
/// With the guard, a binomial question: more than [`SLOW_SHARE`] of canary
/// requests slower than the baseline's p95 plus the delta.
pub fn latency(policy: &Policy, obs: &Observations, guard: Option<f64>) -> Option<Finding> {
    let limit = policy.critical.p95_delta_ms;
    let (Some(c), Some(b)) = (obs.canary.p95_ms, obs.baseline.p95_ms) else {
        return None;
    };
    if c <= b + limit {
        return None;
    }
    let mut numbers = json!({"canary_p95_ms": c, "baseline_p95_ms": b, "p95_delta_limit_ms": limit, "estimate": c - b});
    let mut message = format!(
        "canary p95 {} exceeds baseline p95 {} by {} (limit {})",
        ms(c),
        ms(b),
        ms(c - b),
        ms(limit)
    );
    let established = match guard {
        None => true,
        Some(a) => {
            let (x, n) = (obs.canary_slow, obs.canary.requests);
            let test = RateAbove::test(x, n, SLOW_SHARE, a / 2.0);
            test.record(&mut numbers, "canary_slow_share");
            message.push_str(&format!(
                "; {x} of {n} canary requests ({}, lower bound {}) slower than {}: more than {} {}",
                pct(test.estimate),
                pct(test.bound),
                ms(b + limit),
                pct(SLOW_SHARE),
                test.conclusion()
            ));
            test.established
        }
    };
    let code = if established {
        ReasonCode::LatencyCritical
    } else {
        ReasonCode::LatencyUnproven
    };
    Some(Finding {
        reason: Reason::new(code, message, numbers),
        established,
    })
}

/// The canary against the absolute service levels (each a CRITICAL breach).
pub fn slo(policy: &Policy, canary: &RoleWindowStats) -> Vec<Reason> {
    let mut out = Vec::new();
    if let Some(max) = policy.slo.max_error_rate
        && canary.error_rate > max
    {
        out.push(Reason::new(
            ReasonCode::SloErrorRate,
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
        out.push(Reason::new(
            ReasonCode::SloP95,
            format!("canary p95 {} breaks the SLO of {}", ms(c), ms(max)),
            json!({"canary_p95_ms": c, "slo_max_p95_ms": max}),
        ));
    }
    out
}

/// The error-rate rule at the DEGRADED threshold.
pub fn error_rate_degraded(policy: &Policy, obs: &Observations) -> Option<Reason> {
    let (baseline, canary, limit) = (&obs.baseline, &obs.canary, policy.degraded.error_rate_delta);
    let delta = canary.error_rate - baseline.error_rate;
    (delta > limit).then(|| {
        Reason::new(
            ReasonCode::ErrorRateDegraded,
            format!(
                "canary error rate {} exceeds baseline {} by {:.1} pp (limit {:.1} pp)",
                pct(canary.error_rate),
                pct(baseline.error_rate),
                delta * 100.0,
                limit * 100.0
            ),
            json!({"canary_error_rate": canary.error_rate, "baseline_error_rate": baseline.error_rate, "error_rate_delta_limit": limit}),
        )
    })
}

/// The latency rule at the DEGRADED threshold.
pub fn latency_degraded(policy: &Policy, obs: &Observations) -> Option<Reason> {
    let limit = policy.degraded.p95_delta_ms;
    let (Some(c), Some(b)) = (obs.canary.p95_ms, obs.baseline.p95_ms) else {
        return None;
    };
    (c > b + limit).then(|| {
        Reason::new(
            ReasonCode::LatencyDegraded,
            format!(
                "canary p95 {} exceeds baseline p95 {} by {} (limit {})",
                ms(c),
                ms(b),
                ms(c - b),
                ms(limit)
            ),
            json!({"canary_p95_ms": c, "baseline_p95_ms": b, "p95_delta_limit_ms": limit}),
        )
    })
}

/// A canary within every threshold: PROMOTE when it has enough requests,
/// no more errors than the baseline, outputs judged (`waiting` empty), a
/// split that is what it was set to and (with the guard) is shown
/// non-inferior; otherwise CONTINUE (or HOLD on a sample-ratio mismatch).
pub fn promotion(
    policy: &Policy,
    obs: &Observations,
    guard: Option<f64>,
    srm: Option<Reason>,
    waiting: Vec<Reason>,
) -> Verdict {
    let (baseline, canary) = (&obs.baseline, &obs.canary);
    let mut numbers = json!({
        "canary_requests": canary.requests, "canary_error_rate": canary.error_rate,
        "baseline_error_rate": baseline.error_rate, "min_canary_requests": policy.promote.min_canary_requests,
    });
    let keep_going = |code, message, numbers| {
        let r = Reason::new(code, message, numbers);
        verdict(VerdictKind::Healthy, Recommendation::Continue, vec![r])
    };
    if canary.requests < policy.promote.min_canary_requests {
        let message = format!(
            "within thresholds; canary has {} of the {} requests needed to advance",
            canary.requests, policy.promote.min_canary_requests
        );
        return keep_going(ReasonCode::HealthyCollecting, message, numbers);
    }
    if canary.error_rate > baseline.error_rate {
        let message = format!(
            "within thresholds, but canary error rate {} is above baseline {}",
            pct(canary.error_rate),
            pct(baseline.error_rate)
        );
        return keep_going(ReasonCode::HealthyNotBetter, message, numbers);
    }
    if !waiting.is_empty() {
        return verdict(VerdictKind::Healthy, Recommendation::Continue, waiting);
    }
    if let Some(r) = srm {
        return verdict(VerdictKind::Healthy, Recommendation::Hold, vec![r]);
    }
    let mut message = format!(
        "canary error rate {} ≤ baseline {} over {} canary requests; p95 {} vs {}",
        pct(canary.error_rate),
        pct(baseline.error_rate),
        canary.requests,
        canary.p95_ms.map_or("-".into(), ms),
        baseline.p95_ms.map_or("-".into(), ms)
    );
    if let Some(a) = guard {
        match non_inferiority(policy, obs, a, &mut numbers) {
            Ok(shown) => message.push_str(&shown),
            Err(not_yet) => {
                return keep_going(ReasonCode::HealthyNotYetNonInferior, not_yet, numbers);
            }
        }
    }
    let r = Reason::new(ReasonCode::Healthy, message, numbers);
    verdict(VerdictKind::Healthy, Recommendation::Promote, vec![r])
}

/// Non-inferiority at level `alpha`: the upper bound of the canary's error
/// rate minus the lower bound of the baseline's, each at α/2, within the
/// margin. `Ok`: the clause that says so; `Err`: why not yet.
fn non_inferiority(
    policy: &Policy,
    obs: &Observations,
    alpha: f64,
    numbers: &mut Value,
) -> Result<String, String> {
    let (baseline, canary) = (&obs.baseline, &obs.canary);
    let worst = upper_bound(canary.errors, canary.requests, alpha / 2.0)
        - lower_bound(baseline.errors, baseline.requests, alpha / 2.0);
    let margin = policy.promote.non_inferiority_margin;
    if let Value::Object(m) = numbers {
        m.insert("worst_case_delta".into(), json!(worst));
        m.insert("non_inferiority_margin".into(), json!(margin));
        m.insert("alpha".into(), json!(alpha));
    }
    if worst > margin {
        return Err(format!(
            "within thresholds; not yet shown non-inferior: the canary's error rate may still exceed the baseline's by up to {:.1} pp (margin {:.1} pp, α = {alpha})",
            worst * 100.0,
            margin * 100.0
        ));
    }
    Ok(format!(
        "; non-inferior: at most {:.1} pp worse (margin {:.1} pp, α = {alpha})",
        worst.max(0.0) * 100.0,
        margin * 100.0
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::policy::Significance;
    use proptest::prelude::*;

    pub(crate) fn role(requests: u64, errors: u64, p95: f64) -> RoleWindowStats {
        RoleWindowStats {
            requests,
            errors,
            error_rate: crate::window::error_rate(errors, requests),
            p50_ms: Some(p95 / 2.0),
            p95_ms: Some(p95),
            p99_ms: Some(p95 * 1.2),
            ..RoleWindowStats::default()
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
            assert_eq!(v.reasons[0].code.as_str(), code);
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
        assert_eq!(codes(&v), ["slo_error_rate", "slo_p95"]);
    }

    fn codes(v: &Verdict) -> Vec<&'static str> {
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
                ..Observations::default()
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
