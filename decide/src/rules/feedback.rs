//! The feedback rule: is the canary worse by what clients report after the
//! fact (labels, conversions)?
//!
//! Each declared metric is a rate of 0/1 observations that arrived over the
//! metric's window, per role. Its bad outcomes are the 0s when higher is
//! better (a wrong diagnosis) and the 1s when lower is better (a
//! complaint). CRITICAL when the canary's rate of bad outcomes exceeds the
//! baseline's by more than `critical_delta`, or the canary is beyond the
//! absolute `min` (or `max`); DEGRADED at `degraded_delta`.
//!
//! Under the significance guard, as for errors: a breach of the delta
//! counts once the canary's share of all bad outcomes is shown to exceed
//! its share of observations (its bad rate above the baseline's), at α/2
//! with Robbins' mixture; the absolute limit once the canary's anytime-valid
//! confidence bound is beyond it, at α/2. A breach observed but not yet
//! established holds promotion, not the canary: a metric of a few dozen
//! labels swings by several points on its own.

use super::RateAbove;
use crate::observe::Observations;
use crate::policy::{Better, FeedbackMetric, Policy};
use crate::significance::{lower_bound, upper_bound};
use crate::verdict::{Reason, ReasonCode, pct};
use crate::window::FeedbackStats;
use serde_json::{Value, json};

/// The feedback rule's findings: CRITICAL and DEGRADED reasons, and why a
/// promotion must wait.
#[derive(Debug, Default)]
pub struct FeedbackFindings {
    pub critical: Vec<Reason>,
    pub degraded: Vec<Reason>,
    pub waiting: Vec<Reason>,
}

/// Every declared metric with enough observations, judged.
pub fn feedback(policy: &Policy, obs: &Observations, guard: Option<f64>) -> FeedbackFindings {
    let mut found = FeedbackFindings::default();
    for (metric, rule) in &policy.feedback {
        let (Some(b), Some(c)) = (
            obs.baseline.feedback.get(metric),
            obs.canary.feedback.get(metric),
        ) else {
            continue;
        };
        if c.observations < rule.min_samples {
            // The baseline is labelled: the canary's labels are worth waiting for.
            if b.observations >= rule.min_samples {
                found.waiting.push(collecting(metric, rule, b, c));
            }
            continue;
        }
        let compared = Compared::new(metric, rule, b, c);
        // The absolute limit needs only the canary's labels (at the last
        // step the baseline serves nothing and its labels age out).
        if let Some(r) = compared.beyond_limit(guard) {
            found.critical.push(r);
        }
        if b.observations < rule.min_samples {
            continue;
        }
        match compared.worse(guard) {
            Worse::No => {}
            Worse::Critical(r) => found.critical.push(r),
            Worse::Degraded(r) => found.degraded.push(r),
            Worse::Unproven(r) => found.waiting.push(r),
        }
    }
    found
}

fn collecting(metric: &str, rule: &FeedbackMetric, b: &FeedbackStats, c: &FeedbackStats) -> Reason {
    Reason::new(
        ReasonCode::FeedbackCollecting,
        format!(
            "{metric}: {} canary and {} baseline observations arrived; {} each are needed to judge it",
            c.observations, b.observations, rule.min_samples
        ),
        json!({"metric": metric, "canary_observations": c.observations,
               "baseline_observations": b.observations, "min_samples": rule.min_samples}),
    )
}

/// How much worse the canary is by a metric.
enum Worse {
    No,
    Critical(Reason),
    Degraded(Reason),
    Unproven(Reason),
}

/// One metric, both roles.
struct Compared<'a> {
    metric: &'a str,
    rule: &'a FeedbackMetric,
    baseline: &'a FeedbackStats,
    canary: &'a FeedbackStats,
}

impl<'a> Compared<'a> {
    fn new(
        metric: &'a str,
        rule: &'a FeedbackMetric,
        b: &'a FeedbackStats,
        c: &'a FeedbackStats,
    ) -> Self {
        Compared {
            metric,
            rule,
            baseline: b,
            canary: c,
        }
    }

    /// A role's bad outcomes: the 0s when higher is better, else the 1s.
    fn bad(&self, s: &FeedbackStats) -> u64 {
        match self.rule.better {
            Better::Higher => s.observations.saturating_sub(s.ones),
            Better::Lower => s.ones,
        }
    }

    fn bad_rate(&self, s: &FeedbackStats) -> f64 {
        self.bad(s) as f64 / s.observations.max(1) as f64
    }

    /// The sentence's start and the numbers every reason carries.
    fn head(&self) -> (String, Value) {
        let (b, c) = (self.baseline, self.canary);
        let head = format!(
            "{}: {:.3} on the canary over {} observations vs {:.3} on the baseline over {}",
            self.metric, c.rate, c.observations, b.rate, b.observations
        );
        let numbers = json!({
            "metric": self.metric, "canary_rate": c.rate, "baseline_rate": b.rate,
            "canary_observations": c.observations, "baseline_observations": b.observations,
        });
        (head, numbers)
    }

    /// The canary beyond the absolute limit (`min`, or `max`).
    fn beyond_limit(&self, guard: Option<f64>) -> Option<Reason> {
        let c = self.canary;
        let (limit, beyond, bound) = match (self.rule.better, self.rule.min, self.rule.max) {
            (Better::Higher, Some(min), _) => {
                let ub = guard.map(|a| upper_bound(c.ones, c.observations, a / 2.0));
                (min, ub.unwrap_or(c.rate) < min, ub)
            }
            (Better::Lower, _, Some(max)) => {
                let lb = guard.map(|a| lower_bound(c.ones, c.observations, a / 2.0));
                (max, lb.unwrap_or(c.rate) > max, lb)
            }
            _ => return None,
        };
        if !beyond {
            return None;
        }
        let (head, mut numbers) = self.head();
        let side = if self.rule.better == Better::Higher {
            "below the minimum"
        } else {
            "above the maximum"
        };
        let mut message = format!("{head}: the canary is {side} of {limit}");
        if let (Some(bound), Some(a), Value::Object(m)) = (bound, guard, &mut numbers) {
            message.push_str(&format!(
                " (its bound {bound:.3}, established at α = {})",
                a / 2.0
            ));
            m.insert("bound".into(), json!(bound));
            m.insert("alpha".into(), json!(a / 2.0));
        }
        if let Value::Object(m) = &mut numbers {
            m.insert("limit".into(), json!(limit));
        }
        Some(Reason::new(ReasonCode::FeedbackLimit, message, numbers))
    }

    /// The canary against the baseline, by the deltas.
    fn worse(&self, guard: Option<f64>) -> Worse {
        let delta = self.bad_rate(self.canary) - self.bad_rate(self.baseline);
        if delta <= self.rule.degraded_delta {
            return Worse::No;
        }
        let (head, mut numbers) = self.head();
        let critical = delta > self.rule.critical_delta;
        let limit = if critical {
            self.rule.critical_delta
        } else {
            self.rule.degraded_delta
        };
        let mut message = format!("{head} (canary worse by {delta:.3}, limit {limit:.3})");
        if let Value::Object(m) = &mut numbers {
            m.insert("delta".into(), json!(delta));
            m.insert("delta_limit".into(), json!(limit));
        }
        let established = match guard {
            None => true,
            Some(a) => {
                let (x, n) = (
                    self.bad(self.canary),
                    self.bad(self.canary)
                        .saturating_add(self.bad(self.baseline)),
                );
                let (c, b) = (
                    self.canary.observations as f64,
                    self.baseline.observations as f64,
                );
                let share = c / (c + b);
                let test = RateAbove::test(x, n, share, a / 2.0);
                test.record(&mut numbers, "canary_share_of_bad");
                message.push_str(&format!(
                    "; the canary had {x} of {n} bad outcomes ({}, lower bound {}) on {} of the observations, {}",
                    pct(test.estimate),
                    pct(test.bound),
                    pct(share),
                    test.conclusion()
                ));
                test.established
            }
        };
        let reason = |code| Reason::new(code, message.clone(), numbers.clone());
        match (critical, established) {
            (true, true) => Worse::Critical(reason(ReasonCode::FeedbackCritical)),
            (true, false) => Worse::Unproven(reason(ReasonCode::FeedbackUnproven)),
            (false, true) => Worse::Degraded(reason(ReasonCode::FeedbackDegraded)),
            (false, false) => Worse::No,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Significance;
    use crate::rules::evaluate;
    use crate::rules::tests::role;
    use crate::verdict::{Recommendation, Verdict, VerdictKind};
    use proptest::prelude::*;

    fn labelled(n: u64, ones: u64) -> FeedbackStats {
        FeedbackStats {
            observations: n,
            ones,
            rate: ones as f64 / n.max(1) as f64,
            newest_age_seconds: Some(1),
        }
    }

    /// Healthy traffic on both roles, with `accuracy` feedback.
    fn obs(baseline: FeedbackStats, canary: FeedbackStats) -> Observations {
        let mut b = role(5000, 10, 50.0);
        let mut c = role(2000, 2, 50.0);
        b.feedback.insert("accuracy".into(), baseline);
        c.feedback.insert("accuracy".into(), canary);
        Observations::of(b, c)
    }

    fn codes(v: &Verdict) -> Vec<&'static str> {
        v.reasons.iter().map(|r| r.code.as_str()).collect()
    }

    #[test]
    fn a_canary_much_less_accurate_is_rolled_back_with_both_rates() {
        // 0.60 against 0.85 over 100 and 500 labels: 40 of 115 wrong
        // answers came from a sixth of the labels.
        let v = evaluate(
            &Policy::default(),
            &obs(labelled(500, 425), labelled(100, 60)),
        );
        assert_eq!(
            (v.verdict, v.recommendation, codes(&v)),
            (
                VerdictKind::Critical,
                Recommendation::Rollback,
                vec!["feedback_critical"]
            )
        );
        let r = &v.reasons[0];
        assert!(r.message.starts_with("accuracy: 0.600 on the canary over 100 observations vs 0.850 on the baseline over 500"), "{}", r.message);
        assert_eq!(r.numbers["canary_observations"], 100);
        assert_eq!(r.numbers["baseline_rate"], 0.85);
        assert!(r.numbers["lower_bound"].as_f64().unwrap() > 100.0 / 600.0);
    }

    #[test]
    fn a_drop_on_few_labels_only_holds_promotion() {
        // 0.70 against 0.85 on 30 labels each: worse by 0.15, not proven.
        let v = evaluate(&Policy::default(), &obs(labelled(30, 26), labelled(30, 21)));
        assert_eq!(
            (v.verdict, v.recommendation, codes(&v)),
            (
                VerdictKind::Healthy,
                Recommendation::Continue,
                vec!["feedback_unproven"]
            )
        );
        // Without the guard the same numbers roll back.
        let seed = Policy {
            significance: Significance::None,
            ..Policy::default()
        };
        let v = evaluate(&seed, &obs(labelled(30, 26), labelled(30, 21)));
        assert_eq!(codes(&v), vec!["feedback_critical"]);
    }

    #[test]
    fn a_small_drop_is_degraded_and_a_gain_is_healthy() {
        let seed = Policy {
            significance: Significance::None,
            ..Policy::default()
        };
        let v = evaluate(&seed, &obs(labelled(1000, 850), labelled(1000, 815)));
        assert_eq!(
            (v.verdict, codes(&v)),
            (VerdictKind::Degraded, vec!["feedback_degraded"])
        );
        let v = evaluate(
            &Policy::default(),
            &obs(labelled(1000, 850), labelled(1000, 900)),
        );
        assert_eq!(
            (v.recommendation, codes(&v)),
            (Recommendation::Promote, vec!["healthy"])
        );
    }

    #[test]
    fn the_absolute_minimum_counts_once_the_bound_is_below_it() {
        let mut p = Policy::default();
        p.feedback.get_mut("accuracy").unwrap().min = Some(0.85);
        // Both at 0.80: no worse than the baseline, but below the minimum.
        let v = evaluate(&p, &obs(labelled(2000, 1600), labelled(2000, 1600)));
        assert_eq!(codes(&v), vec!["feedback_limit"]);
        assert!(
            v.reasons[0].message.contains("below the minimum of 0.85"),
            "{}",
            v.reasons[0].message
        );
        // 0.83 on 60 labels: below 0.85 but well within its bound.
        let v = evaluate(&p, &obs(labelled(2000, 1700), labelled(60, 50)));
        assert_eq!(codes(&v), vec!["healthy"]);
    }

    #[test]
    fn the_minimum_is_judged_without_a_labelled_baseline() {
        // At the last step the baseline serves nothing; its labels age out.
        let mut p = Policy::default();
        p.feedback.get_mut("accuracy").unwrap().min = Some(0.85);
        let v = evaluate(&p, &obs(labelled(0, 0), labelled(400, 240)));
        assert_eq!(codes(&v), vec!["feedback_limit"]);
        // Without a minimum there is nothing to compare with: no finding.
        let v = evaluate(&Policy::default(), &obs(labelled(0, 0), labelled(400, 240)));
        assert_eq!(codes(&v), vec!["healthy"]);
    }

    #[test]
    fn lower_is_better_counts_the_ones_as_bad() {
        let mut p = Policy {
            significance: Significance::None,
            ..Policy::default()
        };
        p.feedback.insert(
            "complaints".into(),
            FeedbackMetric {
                better: Better::Lower,
                max: Some(0.2),
                ..FeedbackMetric::default()
            },
        );
        let mut o = obs(labelled(1000, 900), labelled(1000, 900));
        o.baseline
            .feedback
            .insert("complaints".into(), labelled(1000, 20));
        o.canary
            .feedback
            .insert("complaints".into(), labelled(1000, 250));
        let v = evaluate(&p, &o);
        assert_eq!(codes(&v), vec!["feedback_limit", "feedback_critical"]);
    }

    #[test]
    fn a_labelled_baseline_makes_promotion_wait_for_the_canarys_labels() {
        let v = evaluate(
            &Policy::default(),
            &obs(labelled(500, 425), labelled(12, 12)),
        );
        assert_eq!(
            (v.recommendation, codes(&v)),
            (Recommendation::Continue, vec!["feedback_collecting"])
        );
        assert_eq!(v.reasons[0].numbers["min_samples"], 30);
        // Nobody posts feedback: nothing waits for it.
        let v = evaluate(
            &Policy::default(),
            &Observations::of(role(5000, 10, 50.0), role(2000, 2, 50.0)),
        );
        assert_eq!(codes(&v), vec!["healthy"]);
    }

    proptest! {
        /// Under the guard, the same accuracy on both roles is never CRITICAL
        /// by the delta, whatever the counts.
        #[test]
        fn equal_rates_never_roll_back(n_b in 30u64..100_000, n_c in 30u64..100_000, rate in 0.0f64..=1.0) {
            let (b, c) = (labelled(n_b, (n_b as f64 * rate) as u64), labelled(n_c, (n_c as f64 * rate) as u64));
            let v = evaluate(&Policy::default(), &obs(b, c));
            prop_assert!(!codes(&v).contains(&"feedback_critical"), "{:?}", v.reasons);
        }
    }
}
