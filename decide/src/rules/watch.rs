//! The post-promotion watch's rules: is the newly promoted baseline, since
//! its promotion, worse than it may be?
//!
//! 1. [`slo`]: beyond `slo.max_error_rate` / `slo.max_p95_ms`;
//! 2. [`old_baseline`]: worse than the old baseline was over its last
//!    window before the promotion, by the CRITICAL thresholds (error rate
//!    above the old one plus `critical.error_rate_delta`, p95 above the
//!    old one plus `critical.p95_delta_ms`);
//! 3. [`feedback`]: each feedback metric, judged by [`super::feedback()`]
//!    with the new baseline in the canary's place and the old baseline's
//!    last window in the baseline's.
//!
//! A breach counts when the observed number is beyond the limit and, under
//! the significance guard, it is established anytime-valid (Robbins'
//! beta-binomial mixture, `significance.rs`; Howard et al. 2021), as for a
//! canary: an error rate by the evidence that it is above the limit at
//! α/2 — for the old baseline's rate, above its own upper confidence bound
//! at α/2 (the old window is a sample too; the union bound keeps the total
//! at α) — and a p95 as "more than [`SLOW_SHARE`] of requests slower than
//! the limit", a binomial question. [`judge`] combines the findings;
//! [`evaluate`] holds a revert that rests on one proxy's reports alone
//! (`rules/proxies.rs`).

use super::{RateAbove, SLOW_SHARE};
use crate::observe::{Observations, Watched};
use crate::policy::Policy;
use crate::significance::upper_bound;
use crate::verdict::{Reason, ReasonCode, Recommendation, Verdict, VerdictKind, ms, pct};
use crate::window::{FeedbackStats, RoleWindowStats};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The old baseline's numbers over its last window before the promotion:
/// what the new baseline is compared with during the watch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WatchReference {
    pub version: String,
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub p95_ms: Option<f64>,
    /// Each declared feedback metric over its own window.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub feedback: BTreeMap<String, FeedbackStats>,
}

impl WatchReference {
    /// `version`'s numbers as the window showed them.
    pub fn of(version: &str, stats: &RoleWindowStats) -> WatchReference {
        WatchReference {
            version: version.to_string(),
            requests: stats.requests,
            errors: stats.errors,
            error_rate: stats.error_rate,
            p95_ms: stats.p95_ms,
            feedback: stats.feedback.clone(),
        }
    }
}

/// The watch's verdict, as [`judge`] gives it, except that one proxy's
/// reports cannot alone revert the new baseline when the others' find it
/// HEALTHY: then DEGRADED (`proxies_disagree`), and nothing moves.
pub fn evaluate(policy: &Policy, version: &str, old: &WatchReference, w: &Watched) -> Verdict {
    let whole = judge(policy, version, old, w);
    match &w.others {
        Some(o) => super::proxies::corroborate(
            whole,
            super::proxies::Subject::Watch(version),
            (&o.without, &o.watched),
            |others| judge(policy, version, old, others),
        ),
        None => whole,
    }
}

/// The watch's verdict on the new baseline `version`: CRITICAL (revert)
/// on any established breach, else HEALTHY, or INSUFFICIENT_DATA while it
/// has fewer than `min_requests` since the promotion.
pub fn judge(policy: &Policy, version: &str, old: &WatchReference, w: &Watched) -> Verdict {
    let guard = policy.significance.alpha();
    let enough = w.stats.requests >= policy.min_requests;
    let mut breaches = Vec::new();
    if enough {
        breaches.extend(slo(policy, version, w, guard));
        breaches.extend(old_baseline(policy, version, old, w, guard));
    }
    breaches.extend(feedback(policy, version, old, w, guard));
    let (verdict, recommendation, reasons) = if !breaches.is_empty() {
        (VerdictKind::Critical, Recommendation::Rollback, breaches)
    } else if !enough {
        let r = Reason::new(
            ReasonCode::InsufficientData,
            format!(
                "{version} has served {} requests since its promotion; {} are needed to judge it",
                w.stats.requests, policy.min_requests
            ),
            json!({"requests": w.stats.requests, "min_requests": policy.min_requests}),
        );
        (
            VerdictKind::InsufficientData,
            Recommendation::Continue,
            vec![r],
        )
    } else {
        let r = within(version, old, &w.stats);
        (VerdictKind::Healthy, Recommendation::Continue, vec![r])
    };
    Verdict {
        verdict,
        recommendation,
        reasons,
    }
}

/// A healthy watch's one sentence.
fn within(version: &str, old: &WatchReference, s: &RoleWindowStats) -> Reason {
    let p95 = |v: Option<f64>| v.map_or("-".into(), ms);
    Reason::new(
        ReasonCode::Healthy,
        format!(
            "{version} within limits since its promotion: error rate {} and p95 {} over {} requests ({} before: {} and {})",
            pct(s.error_rate),
            p95(s.p95_ms),
            s.requests,
            old.version,
            pct(old.error_rate),
            p95(old.p95_ms)
        ),
        numbers(s, old),
    )
}

/// The numbers every watch reason carries: both versions'.
fn numbers(s: &RoleWindowStats, old: &WatchReference) -> Value {
    json!({
        "new_requests": s.requests, "new_errors": s.errors, "new_error_rate": s.error_rate,
        "new_p95_ms": s.p95_ms, "old_version": old.version, "old_requests": old.requests,
        "old_errors": old.errors, "old_error_rate": old.error_rate, "old_p95_ms": old.p95_ms,
    })
}

fn with(mut numbers: Value, more: Value) -> Value {
    if let (Value::Object(m), Value::Object(more)) = (&mut numbers, more) {
        m.extend(more);
    }
    numbers
}

/// A rate above `p0`: by the observation alone, or shown anytime-valid at
/// α/2; the clause saying so and whether it holds.
fn rate_above(x: u64, n: u64, p0: f64, guard: Option<f64>, numbers: &mut Value) -> (String, bool) {
    let Some(a) = guard else {
        return (String::new(), true);
    };
    let test = RateAbove::test(x, n, p0, a / 2.0);
    test.record(numbers, "estimate");
    let clause = format!(
        "; {x} of {n} (lower bound {}) above {}, {}",
        pct(test.bound),
        pct(p0),
        test.conclusion()
    );
    (clause, test.established)
}

/// The absolute service levels.
pub fn slo(policy: &Policy, version: &str, w: &Watched, guard: Option<f64>) -> Vec<Reason> {
    let s = &w.stats;
    let mut out = Vec::new();
    if let Some(max) = policy.slo.max_error_rate
        && s.error_rate > max
    {
        let mut n = json!({"rule": "slo_error_rate", "error_rate": s.error_rate, "slo_max_error_rate": max});
        let (clause, established) = rate_above(s.errors, s.requests, max, guard, &mut n);
        let message = format!(
            "SLO: {version} error rate {} since its promotion breaks the SLO of {}{clause}",
            pct(s.error_rate),
            pct(max)
        );
        if established {
            out.push(Reason::new(ReasonCode::SloErrorRate, message, n));
        }
    }
    if let (Some(max), Some(p95)) = (policy.slo.max_p95_ms, s.p95_ms)
        && p95 > max
    {
        let mut n = json!({"rule": "slo_p95", "p95_ms": p95, "slo_max_p95_ms": max});
        let (x, requests) = (w.slower_than_slo, s.requests);
        let (clause, established) = rate_above(x, requests, SLOW_SHARE, guard, &mut n);
        let message = format!(
            "SLO: {version} p95 {} since its promotion breaks the SLO of {}{clause}",
            ms(p95),
            ms(max)
        );
        if established {
            out.push(Reason::new(ReasonCode::SloP95, message, n));
        }
    }
    out
}

/// Worse than the old baseline was, by the CRITICAL thresholds (judged
/// when the old window had `min_requests` too).
pub fn old_baseline(
    policy: &Policy,
    version: &str,
    old: &WatchReference,
    w: &Watched,
    guard: Option<f64>,
) -> Vec<Reason> {
    let (s, limit) = (&w.stats, &policy.critical);
    let mut out = Vec::new();
    if old.requests < policy.min_requests {
        return out;
    }
    let delta = s.error_rate - old.error_rate;
    if delta > limit.error_rate_delta {
        // The old rate as high as its window allows, at α/2.
        let p0 = guard.map_or(old.error_rate, |a| {
            upper_bound(old.errors, old.requests, a / 2.0)
        });
        let mut n = with(
            numbers(s, old),
            json!({"rule": "old_baseline_error_rate", "error_rate_delta_limit": limit.error_rate_delta, "old_error_rate_bound": p0}),
        );
        let (clause, established) = rate_above(s.errors, s.requests, p0, guard, &mut n);
        let message = format!(
            "against {} before the promotion: {version} error rate {} exceeds {} by {:.1} pp (limit {:.1} pp){clause}",
            old.version,
            pct(s.error_rate),
            pct(old.error_rate),
            delta * 100.0,
            limit.error_rate_delta * 100.0
        );
        if established {
            out.push(Reason::new(ReasonCode::ErrorRateCritical, message, n));
        }
    }
    if let (Some(p95), Some(old_p95)) = (s.p95_ms, old.p95_ms)
        && p95 > old_p95 + limit.p95_delta_ms
    {
        let mut n = with(
            numbers(s, old),
            json!({"rule": "old_baseline_p95", "p95_delta_limit_ms": limit.p95_delta_ms}),
        );
        let (x, requests) = (w.slower_than_old, s.requests);
        let (clause, established) = rate_above(x, requests, SLOW_SHARE, guard, &mut n);
        let message = format!(
            "against {} before the promotion: {version} p95 {} exceeds {} by {} (limit {}){clause}",
            old.version,
            ms(p95),
            ms(old_p95),
            ms(p95 - old_p95),
            ms(limit.p95_delta_ms)
        );
        if established {
            out.push(Reason::new(ReasonCode::LatencyCritical, message, n));
        }
    }
    out
}

/// The feedback metrics, by the canary's feedback rule: the new baseline's
/// arrivals since its promotion in the canary's place, the old baseline's
/// last window in the baseline's. Only CRITICAL findings count.
pub fn feedback(
    policy: &Policy,
    version: &str,
    old: &WatchReference,
    w: &Watched,
    guard: Option<f64>,
) -> Vec<Reason> {
    let roles = |feedback: &BTreeMap<String, FeedbackStats>| RoleWindowStats {
        feedback: feedback.clone(),
        ..RoleWindowStats::default()
    };
    let obs = Observations::of(roles(&old.feedback), roles(&w.stats.feedback));
    super::feedback(policy, &obs, guard)
        .critical
        .into_iter()
        .map(|r| {
            let message = format!(
                "feedback: {version} since its promotion (as the canary) against {} before it (as the baseline): {}",
                old.version, r.message
            );
            let mut numbers = Value::Object(r.numbers);
            if let Value::Object(m) = &mut numbers {
                m.insert("rule".into(), json!("feedback"));
            }
            Reason::new(r.code, message, numbers)
        })
        .collect()
}

/// A running watch as health shows it: until when, what the new baseline
/// is compared with, and where it stands now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WatchHealth {
    /// The promoted version under watch (the baseline).
    pub version: String,
    /// When it was promoted and until when it is watched (ms since the
    /// UNIX epoch).
    pub since: u64,
    pub until: u64,
    pub seconds_left: u64,
    /// The old baseline's numbers over its last window before the promotion.
    pub reference: WatchReference,
    /// The new baseline since its promotion.
    pub current: RoleWindowStats,
    /// CRITICAL: an established breach (reverted, or reported when
    /// automatic rollback is off); HEALTHY; INSUFFICIENT_DATA; DEGRADED: a
    /// breach in one proxy's reports alone that the others' contradict
    /// (`proxies_disagree`; held, nothing reverted).
    pub verdict: VerdictKind,
    pub reasons: Vec<Reason>,
    /// A breach was reported without a revert (automatic rollback off).
    pub breach_reported: bool,
}
