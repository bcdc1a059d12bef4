//! The outputs rule: does the canary answer differently from the baseline?
//!
//! For each output field both roles reported, the shift is the total
//! variation distance between the canary's and the baseline's distribution
//! of the field over the window (class shares, or score bins): the share
//! of the canary's answers that would have to change to look like the
//! baseline's. Random assignment makes any difference the model's.
//!
//! Without the significance guard, the observed shift is compared with the
//! limits. With it, the shift counts only as far as it is established:
//! the distance between the two roles' anytime-valid confidence sets,
//! `0.5 Σ_k max(0, lower_c(k) − upper_b(k), lower_b(k) − upper_c(k))`, is
//! a lower confidence bound of the true shift, using Robbins' beta-binomial
//! mixture confidence sequence for each role's share of each category at
//! α / 2K (a union bound over both roles' K categories; Howard, Ramdas,
//! McAuliffe, Sekhon, Annals of Statistics 2021). The question is not
//! whether the distributions differ at all (Lindon & Malek, "Anytime-valid
//! inference for multinomial count data", NeurIPS 2022, answer that one):
//! a good retrained model always differs a little (about 0.05), and the
//! observed shift of two samples of one distribution is biased upwards
//! (ten bins over a hundred answers look about 0.2 apart by chance), so
//! the rule asks whether the shift is beyond the limit, which neither noise
//! nor a small honest change can establish.

use crate::observe::Observations;
use crate::policy::Policy;
use crate::significance::{lower_bound, upper_bound};
use crate::verdict::{Reason, ReasonCode, pct};
use coalmine_protocol::outputs::{FieldCounts, OTHER, ScoreBins};
use serde_json::{Value, json};

/// How many of the largest differences a reason names.
const NAMED: usize = 3;

/// The outputs rule's findings: CRITICAL and DEGRADED reasons, and why a
/// promotion must wait (too few answers, or a shift beyond the critical
/// limit not yet established).
#[derive(Debug, Default)]
pub struct OutputFindings {
    pub critical: Vec<Reason>,
    pub degraded: Vec<Reason>,
    pub waiting: Vec<Reason>,
}

/// One category (a label or a score slot): its name and both roles' counts.
#[derive(Debug)]
struct Category {
    name: String,
    canary: u64,
    baseline: u64,
}

/// A field both roles reported, as categories side by side.
#[derive(Debug)]
struct Compared {
    categories: Vec<Category>,
    canary: u64,
    baseline: u64,
}

impl Compared {
    /// `None` when the roles count the field differently (another kind, or
    /// other bins: a configuration changing under way).
    fn of(canary: &FieldCounts, baseline: &FieldCounts) -> Option<Compared> {
        let categories = match (canary, baseline) {
            (
                FieldCounts::Class {
                    labels: c,
                    other: co,
                },
                FieldCounts::Class {
                    labels: b,
                    other: bo,
                },
            ) => {
                let mut names: Vec<&String> = c.keys().chain(b.keys()).collect();
                names.sort();
                names.dedup();
                let mut cats: Vec<Category> = names
                    .into_iter()
                    .map(|l| Category {
                        name: l.clone(),
                        canary: c.get(l).copied().unwrap_or(0),
                        baseline: b.get(l).copied().unwrap_or(0),
                    })
                    .collect();
                if *co > 0 || *bo > 0 {
                    cats.push(Category {
                        name: OTHER.into(),
                        canary: *co,
                        baseline: *bo,
                    });
                }
                cats
            }
            (
                FieldCounts::Score {
                    min,
                    max,
                    counts: c,
                },
                FieldCounts::Score {
                    min: bmin,
                    max: bmax,
                    counts: b,
                },
            ) if min == bmin && max == bmax && c.len() == b.len() && c.len() >= 3 => {
                let bins = ScoreBins {
                    min: *min,
                    max: *max,
                    bins: u16::try_from(c.len() - 2).ok()?,
                    tolerance: 0.05,
                };
                c.iter()
                    .zip(b)
                    .enumerate()
                    .filter(|(_, (c, b))| **c > 0 || **b > 0)
                    .map(|(slot, (&c, &b))| Category {
                        name: bins.slot_range(slot),
                        canary: c,
                        baseline: b,
                    })
                    .collect()
            }
            _ => return None,
        };
        Some(Compared {
            canary: canary.total(),
            baseline: baseline.total(),
            categories,
        })
    }

    fn share(x: u64, n: u64) -> f64 {
        x as f64 / n.max(1) as f64
    }

    /// The observed shift (total variation distance).
    fn shift(&self) -> f64 {
        0.5 * self
            .categories
            .iter()
            .map(|k| {
                (Self::share(k.canary, self.canary) - Self::share(k.baseline, self.baseline)).abs()
            })
            .sum::<f64>()
    }

    /// A lower confidence bound of the true shift at level `alpha`
    /// (anytime-valid; see the module's documentation). Never above
    /// [`Compared::shift`].
    fn shift_lower_bound(&self, alpha: f64) -> f64 {
        let a = alpha / (2.0 * self.categories.len().max(1) as f64);
        let interval = |x, n| (lower_bound(x, n, a), upper_bound(x, n, a));
        0.5 * self
            .categories
            .iter()
            .map(|k| {
                let (cl, cu) = interval(k.canary, self.canary);
                let (bl, bu) = interval(k.baseline, self.baseline);
                (cl - bu).max(bl - cu).max(0.0)
            })
            .sum::<f64>()
    }

    /// The categories that differ most, as a clause and as numbers.
    fn largest(&self) -> (String, Value) {
        let mut by_diff: Vec<(&Category, f64, f64)> = self
            .categories
            .iter()
            .map(|k| {
                let (c, b) = (
                    Self::share(k.canary, self.canary),
                    Self::share(k.baseline, self.baseline),
                );
                (k, c, b)
            })
            .collect();
        by_diff.sort_by(|x, y| (y.1 - y.2).abs().total_cmp(&(x.1 - x.2).abs()));
        by_diff.truncate(NAMED);
        let clause = by_diff
            .iter()
            .map(|(k, c, b)| {
                format!(
                    "share of {} is {} on the canary vs {} on the baseline",
                    k.name,
                    pct(*c),
                    pct(*b)
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let numbers = by_diff
            .iter()
            .map(|(k, c, b)| json!({"value": k.name, "canary_share": c, "baseline_share": b}))
            .collect();
        (clause, Value::Array(numbers))
    }
}

/// One value of a field (a label or a score slot's range) and each role's
/// share of its answers.
#[derive(Clone, Debug, PartialEq)]
pub struct Share {
    pub value: String,
    pub canary: f64,
    pub baseline: f64,
}

/// A field's two distributions side by side, for people and metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldComparison {
    pub shares: Vec<Share>,
    /// The observed shift (total variation distance).
    pub shift: f64,
    pub canary_samples: u64,
    pub baseline_samples: u64,
}

/// Both roles' distribution of a field (`None` if they count it
/// differently); a role that has not reported it counts as empty.
pub fn compare(
    canary: Option<&FieldCounts>,
    baseline: Option<&FieldCounts>,
) -> Option<FieldComparison> {
    let (c, b) = match (canary, baseline) {
        (Some(c), Some(b)) => (c.clone(), b.clone()),
        (Some(c), None) => (c.clone(), c.emptied()),
        (None, Some(b)) => (b.emptied(), b.clone()),
        (None, None) => return None,
    };
    let cmp = Compared::of(&c, &b)?;
    Some(FieldComparison {
        shares: cmp
            .categories
            .iter()
            .map(|k| Share {
                value: k.name.clone(),
                canary: Compared::share(k.canary, cmp.canary),
                baseline: Compared::share(k.baseline, cmp.baseline),
            })
            .collect(),
        shift: cmp.shift(),
        canary_samples: cmp.canary,
        baseline_samples: cmp.baseline,
    })
}

/// Every field both roles reported, judged.
pub fn outputs(policy: &Policy, obs: &Observations, guard: Option<f64>) -> OutputFindings {
    let rule = &policy.outputs;
    let mut found = OutputFindings::default();
    for (field, canary) in &obs.canary.outputs {
        let Some(c) = obs
            .baseline
            .outputs
            .get(field)
            .and_then(|baseline| Compared::of(canary, baseline))
        else {
            continue;
        };
        if c.canary.min(c.baseline) < rule.min_samples {
            found.waiting.push(collecting(field, &c, rule.min_samples));
            continue;
        }
        let shift = c.shift();
        if shift <= rule.degraded.max_shift {
            continue;
        }
        let bound = guard.map(|a| (c.shift_lower_bound(a), a));
        let judged = bound.map_or(shift, |(lb, _)| lb);
        let (code, limit, into) = if judged > rule.critical.max_shift {
            (
                ReasonCode::OutputsCritical,
                rule.critical.max_shift,
                &mut found.critical,
            )
        } else if judged > rule.degraded.max_shift {
            (
                ReasonCode::OutputsDegraded,
                rule.degraded.max_shift,
                &mut found.degraded,
            )
        } else if shift > rule.critical.max_shift {
            (
                ReasonCode::OutputsUnproven,
                rule.critical.max_shift,
                &mut found.waiting,
            )
        } else {
            continue;
        };
        into.push(reason(code, field, &c, shift, limit, bound));
    }
    found
}

fn collecting(field: &str, c: &Compared, min: u64) -> Reason {
    Reason::new(
        ReasonCode::OutputsCollecting,
        format!(
            "{field}: {} canary and {} baseline answers read; {min} each are needed to judge the outputs",
            c.canary, c.baseline
        ),
        json!({"field": field, "canary_samples": c.canary, "baseline_samples": c.baseline, "min_samples": min}),
    )
}

fn reason(
    code: ReasonCode,
    field: &str,
    c: &Compared,
    shift: f64,
    limit: f64,
    bound: Option<(f64, f64)>,
) -> Reason {
    let (clause, largest) = c.largest();
    let mut message = format!("{field}: {clause} (shift {shift:.2}, limit {limit:.2})");
    let mut numbers = json!({
        "field": field, "shift": shift, "max_shift": limit, "largest": largest,
        "canary_samples": c.canary, "baseline_samples": c.baseline,
    });
    if let Some((lb, alpha)) = bound {
        let state = if code == ReasonCode::OutputsUnproven {
            "not yet established"
        } else {
            "established"
        };
        message.push_str(&format!(
            "; at least {lb:.2} beyond chance, {state} at α = {alpha}, over {} canary and {} baseline answers",
            c.canary, c.baseline
        ));
        if let Value::Object(m) = &mut numbers {
            m.insert("shift_lower_bound".into(), json!(lb));
            m.insert("alpha".into(), json!(alpha));
        }
    }
    Reason::new(code, message, numbers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::evaluate;
    use crate::rules::tests::role;
    use crate::verdict::{Recommendation, VerdictKind};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// A probability field's counts: `n` answers spread by `shares` over
    /// ten bins of [0, 1] (none below or above).
    fn probability(n: u64, shares: &[f64; 10]) -> FieldCounts {
        let mut counts = vec![0u64; 12];
        for (i, s) in shares.iter().enumerate() {
            counts[i + 1] = (s * n as f64).round() as u64;
        }
        FieldCounts::Score {
            min: 0.0,
            max: 1.0,
            counts,
        }
    }

    /// The demo's production model: confident, bimodal.
    const BIMODAL: [f64; 10] = [0.30, 0.12, 0.05, 0.04, 0.03, 0.03, 0.04, 0.06, 0.13, 0.20];
    /// Its underfit rival: everything between 0.4 and 0.6.
    const UNDERFIT: [f64; 10] = [0.0, 0.0, 0.0, 0.0, 0.55, 0.45, 0.0, 0.0, 0.0, 0.0];
    /// A retrained good model: a small honest change.
    const RETRAINED: [f64; 10] = [0.28, 0.13, 0.06, 0.04, 0.03, 0.03, 0.04, 0.05, 0.14, 0.20];

    fn obs(baseline: FieldCounts, canary: FieldCounts) -> Observations {
        let mut b = role(5000, 10, 50.0);
        let mut c = role(2000, 2, 50.0);
        b.outputs = BTreeMap::from([("probability".to_string(), baseline)]);
        c.outputs = BTreeMap::from([("probability".to_string(), canary)]);
        Observations::of(b, c)
    }

    fn codes(v: &crate::verdict::Verdict) -> Vec<&'static str> {
        v.reasons.iter().map(|r| r.code.as_str()).collect()
    }

    #[test]
    fn an_underfit_model_is_critical_with_the_largest_differences_named() {
        let o = obs(probability(1000, &BIMODAL), probability(120, &UNDERFIT));
        let v = evaluate(&Policy::default(), &o);
        assert_eq!(
            (v.verdict, codes(&v)),
            (VerdictKind::Critical, vec!["outputs_critical"])
        );
        let r = &v.reasons[0];
        assert!(
            r.message.starts_with(
                "probability: share of [0.4, 0.5) is 55.0 % on the canary vs 3.0 % on the baseline"
            ),
            "{}",
            r.message
        );
        assert!(
            r.message.contains("(shift 0.94, limit 0.25)"),
            "{}",
            r.message
        );
        let lb = r.numbers["shift_lower_bound"].as_f64().unwrap();
        assert!(lb > 0.25 && lb <= r.numbers["shift"].as_f64().unwrap());
        assert_eq!(r.numbers["largest"].as_array().unwrap().len(), NAMED);
    }

    #[test]
    fn a_retrained_model_is_promoted_and_noise_holds_nothing() {
        // Large samples, a small honest change: within the limits.
        let o = obs(probability(5000, &BIMODAL), probability(2000, &RETRAINED));
        let v = evaluate(&Policy::default(), &o);
        assert_eq!(
            (v.verdict, v.recommendation),
            (VerdictKind::Healthy, Recommendation::Promote)
        );
        // The same model on both sides over few answers: the observed shift
        // is noise; with the guard it is not established, so nothing holds.
        let mut noisy = probability(60, &BIMODAL);
        if let FieldCounts::Score { counts, .. } = &mut noisy {
            counts[1] -= 8;
            counts[10] += 8;
        }
        let o = obs(probability(60, &BIMODAL), noisy);
        let c = Compared::of(
            &o.canary.outputs["probability"],
            &o.baseline.outputs["probability"],
        )
        .unwrap();
        assert!(c.shift() > 0.10, "observed {}", c.shift());
        let v = evaluate(&Policy::default(), &o);
        assert_eq!(v.verdict, VerdictKind::Healthy, "{v:?}");
        // The bare rules hold on it.
        let bare = Policy {
            significance: crate::policy::Significance::None,
            ..Policy::default()
        };
        assert_eq!(evaluate(&bare, &o).verdict, VerdictKind::Degraded);
    }

    #[test]
    fn promotion_waits_for_enough_answers_and_for_an_unproven_shift() {
        let o = obs(probability(1000, &BIMODAL), probability(30, &BIMODAL));
        let v = evaluate(&Policy::default(), &o);
        assert_eq!(
            (v.recommendation, codes(&v)),
            (Recommendation::Continue, vec!["outputs_collecting"])
        );
        let m = &v.reasons[0].message;
        assert!(m.contains("canary and 1000 baseline answers read"), "{m}");
        // A big shift over few answers: not established, but no promotion.
        let o = obs(
            probability(50, &BIMODAL),
            probability(50, &RETRAINED.map(|_| 0.1)),
        );
        let v = evaluate(&Policy::default(), &o);
        assert_eq!(
            (v.verdict, v.recommendation, codes(&v)),
            (
                VerdictKind::Healthy,
                Recommendation::Continue,
                vec!["outputs_unproven"]
            )
        );
    }

    #[test]
    fn labels_compare_by_name_and_other_fields_are_left_alone() {
        let class = |pairs: &[(&str, u64)], other| FieldCounts::Class {
            labels: pairs.iter().map(|&(l, n)| (l.to_string(), n)).collect(),
            other,
        };
        let c = Compared::of(
            &class(&[("1", 30), ("2", 70)], 0),
            &class(&[("0", 50), ("1", 50)], 10),
        )
        .unwrap();
        let names: Vec<&str> = c.categories.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["0", "1", "2", "other"]);
        assert!(
            (c.shift()
                - 0.5 * (50.0 / 110.0 + (0.3 - 50.0 / 110.0_f64).abs() + 0.7 + 10.0 / 110.0))
                .abs()
                < 1e-12
        );
        assert!(Compared::of(&class(&[], 0), &probability(10, &BIMODAL)).is_none());
        let other_range = FieldCounts::Score {
            min: 0.0,
            max: 2.0,
            counts: vec![0; 12],
        };
        assert!(Compared::of(&other_range, &probability(10, &BIMODAL)).is_none());
    }

    proptest! {
        #[test]
        fn the_bound_never_exceeds_the_observed_shift(
            c in prop::collection::vec(0u64..500, 12),
            b in prop::collection::vec(0u64..500, 12),
            alpha in 0.001f64..0.2,
        ) {
            let score = |counts: Vec<u64>| FieldCounts::Score { min: 0.0, max: 1.0, counts };
            if let Some(cmp) = Compared::of(&score(c), &score(b)) {
                let (shift, lb) = (cmp.shift(), cmp.shift_lower_bound(alpha));
                prop_assert!(shift.is_finite() && (0.0..=1.0 + 1e-9).contains(&shift));
                prop_assert!(lb >= 0.0 && lb <= shift + 1e-9, "{lb} > {shift}");
            }
        }
    }
}
