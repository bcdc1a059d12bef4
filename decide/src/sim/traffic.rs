//! One simulated second of a deployment's traffic: Poisson arrivals split by
//! the real routing, each request's outcome, latency and (for scenarios
//! with outputs) the answer's probability, recorded with the same
//! statistics and output tallies a filter worker keeps.

use super::Scenario;
use coalmine_protocol::outputs::{
    FieldKind, FieldReport, FieldValue, OutputField, OutputTally, ScoreBins, Skips,
};
use coalmine_protocol::routing::{point_from_draw, role_at};
use coalmine_protocol::stats::RoleStats;
use coalmine_protocol::sync::OutcomeCounts;
use coalmine_protocol::{DeploymentSplit, Outcome, Role};
use rand::{Rng, RngCore};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, LogNormal, Poisson};
use std::collections::VecDeque;

/// The fields a simulated model's answers have: its prediction (1 when the
/// probability is at least 0.5) and the probability in ten bins.
pub fn heart_fields() -> Vec<OutputField> {
    vec![
        OutputField {
            name: "prediction".into(),
            pointer: "/prediction".into(),
            kind: FieldKind::Class,
        },
        OutputField {
            name: "probability".into(),
            pointer: "/probability".into(),
            kind: FieldKind::Score(PROBABILITY),
        },
    ]
}

/// How the probability field is binned: ten bins over [0, 1].
pub const PROBABILITY: ScoreBins = ScoreBins {
    min: 0.0,
    max: 1.0,
    bins: 10,
    tolerance: 0.05,
};

/// What one role reported for a second.
#[derive(Debug)]
pub struct RoleSecond {
    pub counts: OutcomeCounts,
    pub outputs: Vec<FieldReport>,
    pub skipped: Skips,
}

/// The generator of a run's traffic.
#[derive(Debug)]
pub(super) struct Traffic {
    latency: LogNormal<f64>,
    stats: [RoleStats; 2],
    tallies: [OutputTally; 2],
    fields: Vec<OutputField>,
    burst: f64,
    /// Labels on their way: (second they arrive, role, right).
    labels: VecDeque<(u64, Role, bool)>,
}

impl Traffic {
    pub(super) fn new(s: &Scenario) -> Option<Traffic> {
        let fields = if s.outputs.is_some() {
            heart_fields()
        } else {
            Vec::new()
        };
        Some(Traffic {
            latency: LogNormal::new(s.latency_median_ms.ln(), 0.3).ok()?,
            stats: [RoleStats::try_new().ok()?, RoleStats::try_new().ok()?],
            tallies: [OutputTally::new(&fields), OutputTally::new(&fields)],
            fields,
            burst: 1.0,
            labels: VecDeque::new(),
        })
    }

    /// Second `t` of traffic split by `split`: each role's numbers, with
    /// its latency histogram, handed to `report` (which must not keep it).
    pub(super) fn second(
        &mut self,
        s: &Scenario,
        split: &DeploymentSplit,
        t: u64,
        rng: &mut ChaCha8Rng,
        mut report: impl FnMut(Role, &RoleSecond, &RoleStats),
    ) {
        if s.bursty && t.is_multiple_of(30) {
            self.burst = rng.random_range(0.3..2.0);
        }
        let n = Poisson::new(s.rps * self.burst).map_or(0.0, |p| p.sample(rng)) as u64;
        for _ in 0..n {
            let role = role_at(point_from_draw(rng.next_u64()), split.effective_bps());
            self.request(s, role, t, rng);
        }
        for role in Role::ALL {
            let i = role.index();
            let (Some(st), Some(tally)) = (self.stats.get_mut(i), self.tallies.get_mut(i)) else {
                continue;
            };
            let mut counts = OutcomeCounts::default();
            for o in Outcome::ALL {
                counts.add(o, st.count(o));
            }
            let (outputs, skipped) = tally.report(&self.fields);
            let second = RoleSecond {
                counts,
                outputs,
                skipped,
            };
            report(role, &second, st);
            st.clear();
            tally.clear();
        }
    }

    /// The labels arriving at second `t`, by version (as `split` routes the
    /// roles): (version, observations, ones).
    pub(super) fn labels_arriving(
        &mut self,
        t: u64,
        split: &DeploymentSplit,
    ) -> Vec<(String, u64, u64)> {
        let mut counts = [(0u64, 0u64); 2];
        while self.labels.front().is_some_and(|&(at, _, _)| at <= t) {
            if let Some((_, role, right)) = self.labels.pop_front()
                && let Some(c) = counts.get_mut(role.index())
            {
                c.0 += 1;
                c.1 += u64::from(right);
            }
        }
        Role::ALL
            .into_iter()
            .filter_map(|role| {
                let (n, ones) = counts.get(role.index()).copied()?;
                let version = split.target(role)?.version.clone();
                (n > 0).then_some((version, n, ones))
            })
            .collect()
    }

    fn request(&mut self, s: &Scenario, role: Role, t: u64, rng: &mut ChaCha8Rng) {
        let (error_rate, shift) = match role {
            Role::Baseline => (s.baseline_error_rate, 0.0),
            Role::Canary => (s.canary_error_rate, s.canary_latency_shift_ms),
        };
        let outcome = if rng.random_bool(error_rate.clamp(0.0, 1.0)) {
            Outcome::ServerError
        } else {
            Outcome::Success
        };
        let ms = self.latency.sample(rng) + shift;
        let i = role.index();
        if let Some(st) = self.stats.get_mut(i) {
            st.record(outcome, (ms * 1000.0) as u64);
        }
        if let (Outcome::Success, Some(l)) = (outcome, s.labels)
            && rng.random_bool(l.share.clamp(0.0, 1.0))
        {
            let accuracy = match role {
                Role::Baseline => l.baseline_accuracy,
                Role::Canary => l.canary_accuracy,
            };
            let right = rng.random_bool(accuracy.clamp(0.0, 1.0));
            self.labels.push_back((t + l.delay_seconds, role, right));
        }
        let slots = s.outputs.as_ref().map(|o| match role {
            Role::Baseline => &o.baseline,
            Role::Canary => &o.canary,
        });
        if let (Outcome::Success, Some(slots), Some(tally)) =
            (outcome, slots, self.tallies.get_mut(i))
        {
            let slot = draw(slots, rng);
            let prediction = u8::from(slot > usize::from(PROBABILITY.bins) / 2);
            tally.record(&[
                FieldValue::Label(prediction.to_string()),
                FieldValue::Slot(slot),
            ]);
        }
    }
}

/// A slot drawn from `probabilities` (slots of the probability field).
fn draw(probabilities: &[f64], rng: &mut ChaCha8Rng) -> usize {
    let total: f64 = probabilities.iter().sum();
    let mut u = rng.random::<f64>() * total;
    for (slot, &p) in probabilities.iter().enumerate() {
        if u < p {
            return slot;
        }
        u -= p;
    }
    probabilities.len().saturating_sub(1)
}
