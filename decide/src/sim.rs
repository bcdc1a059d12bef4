//! A decision simulator: synthetic traffic through the real routing, windows,
//! policy and engine, evaluated every simulated second.
//!
//! Each run starts a canary at t = 0 and feeds Poisson arrivals (optionally
//! bursty: the rate jumps every 30 s) split by `coalmine_protocol::routing`,
//! with per-role error rates, log-normal latencies and, for scenarios with
//! outputs, answers drawn from each role's distribution of the probability
//! (`sim/traffic.rs`), into [`Windows`] one second at a time, and, for
//! scenarios with labels, a share of the answers labelled right or wrong
//! and posted as `accuracy` feedback a few seconds later; then
//! `engine::step` decides on what [`observe`] reads, exactly as the
//! controller does. A run ends at a rollback, a promotion, or after its
//! duration. `sim/watch.rs` runs a promotion and its watch instead.

mod traffic;
mod watch;

pub use traffic::{PROBABILITY, RoleSecond, heart_fields};
pub use watch::{WatchOutcome, WatchScenario, run_watch, run_watch_many};

use crate::engine::{self, Command, Deployment, EventKind, Millis, OPERATOR};
use crate::observe::observe;
use crate::policy::{Exponential, Policy, Schedule};
use crate::verdict::VerdictKind;
use crate::window::{Reported, Windows};
use coalmine_protocol::Target;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use traffic::Traffic;

/// What a simulated deployment sees.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Scenario {
    pub name: String,
    pub rps: f64,
    /// Every 30 s the rate is multiplied by a factor drawn from [0.3, 2].
    pub bursty: bool,
    pub baseline_error_rate: f64,
    pub canary_error_rate: f64,
    /// Median latency of both roles; the canary's is shifted by this much.
    pub latency_median_ms: f64,
    pub canary_latency_shift_ms: f64,
    pub canary_percent: f64,
    pub steps: Vec<f64>,
    pub bake_seconds: u64,
    /// A computed ramp instead of `steps` and `bake_seconds`.
    pub schedule: Option<Schedule>,
    pub duration_seconds: u64,
    /// What each role's answers say (none: outputs are not read).
    pub outputs: Option<OutputsModel>,
    /// Ground truth fed back for a share of the answers (none: no feedback).
    pub labels: Option<LabelsModel>,
}

/// Delayed labels: `share` of the answered requests are labelled right (1)
/// or wrong (0) with each role's accuracy, and the label arrives
/// `delay_seconds` after the answer, as `accuracy` feedback.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LabelsModel {
    pub baseline_accuracy: f64,
    pub canary_accuracy: f64,
    pub share: f64,
    pub delay_seconds: u64,
}

/// Each role's distribution of the probability its answers give, over the
/// slots of [`PROBABILITY`] (below, ten bins, above).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OutputsModel {
    pub baseline: Vec<f64>,
    pub canary: Vec<f64>,
}

impl Scenario {
    /// A/A: both roles alike, bursty traffic, 10 % canary held for 10 minutes.
    pub fn aa() -> Scenario {
        Scenario {
            name: "aa".into(),
            rps: 100.0,
            bursty: true,
            baseline_error_rate: 0.01,
            canary_error_rate: 0.01,
            latency_median_ms: 40.0,
            canary_latency_shift_ms: 0.0,
            canary_percent: 10.0,
            steps: vec![10.0, 100.0],
            bake_seconds: 3600,
            schedule: None,
            duration_seconds: 600,
            outputs: None,
            labels: None,
        }
    }

    /// A/A with delayed labels: both roles 85 % accurate, 10 % of answers
    /// labelled 2 s later, 20 % canary of 100 requests/s held for 10
    /// minutes (a look every second).
    pub fn feedback_aa() -> Scenario {
        Scenario {
            name: "feedback_aa".into(),
            bursty: true,
            canary_percent: 20.0,
            steps: vec![20.0, 100.0],
            labels: Some(LabelsModel {
                baseline_accuracy: 0.85,
                canary_accuracy: 0.85,
                share: 0.1,
                delay_seconds: 2,
            }),
            ..Scenario::aa()
        }
    }

    /// Accuracy 0.85 → `canary_accuracy`, 10 % of answers labelled 2 s
    /// later, at `percent` of 100 requests/s held for 5 minutes: fast, no
    /// errors, and wrong.
    pub fn accuracy_drop(percent: f64, canary_accuracy: f64) -> Scenario {
        Scenario {
            name: format!("accuracy_0.85_to_{canary_accuracy}_{percent}pct"),
            bursty: false,
            baseline_error_rate: 0.0,
            canary_error_rate: 0.0,
            canary_percent: percent,
            steps: vec![percent, 100.0],
            duration_seconds: 300,
            labels: Some(LabelsModel {
                baseline_accuracy: 0.85,
                canary_accuracy,
                share: 0.1,
                delay_seconds: 2,
            }),
            ..Scenario::aa()
        }
    }

    /// A/A with outputs: the same model on both roles at 20 % of 100
    /// requests/s, stepping 20 → 50 → 100 % with 30 s bakes, 10 minutes.
    pub fn outputs_aa(model: &[f64]) -> Scenario {
        Scenario {
            name: "outputs_aa".into(),
            canary_percent: 20.0,
            steps: vec![20.0, 50.0, 100.0],
            bake_seconds: 30,
            outputs: Some(OutputsModel {
                baseline: model.to_vec(),
                canary: model.to_vec(),
            }),
            ..Scenario::aa()
        }
    }

    /// A model that answers fast, without errors, and differently (e.g.
    /// underfit) at `percent` of 100 requests/s, held there for 2 minutes.
    pub fn outputs_shift(percent: f64, baseline: &[f64], canary: &[f64]) -> Scenario {
        Scenario {
            name: format!("outputs_shift_{percent}pct"),
            bursty: false,
            canary_percent: percent,
            steps: vec![percent, 100.0],
            duration_seconds: 120,
            outputs: Some(OutputsModel {
                baseline: baseline.to_vec(),
                canary: canary.to_vec(),
            }),
            ..Scenario::aa()
        }
    }

    /// The seed's effect: canary 18.9 % errors vs 0 %, 20 % of 200 rps.
    pub fn seed_demo() -> Scenario {
        Scenario {
            name: "seed_demo".into(),
            rps: 200.0,
            bursty: false,
            baseline_error_rate: 0.0,
            canary_error_rate: 0.189,
            canary_percent: 20.0,
            steps: vec![20.0, 50.0, 100.0],
            bake_seconds: 60,
            duration_seconds: 300,
            ..Scenario::aa()
        }
    }

    /// Baseline 1 % vs canary 6 % errors at 100 rps with 10 % canary.
    pub fn error_1_to_6pct() -> Scenario {
        Scenario {
            name: "error_1_to_6pct_100rps_10pct".into(),
            bursty: false,
            canary_error_rate: 0.06,
            steps: vec![10.0, 100.0],
            duration_seconds: 300,
            ..Scenario::aa()
        }
    }

    /// Canary latency shifted by 150 ms at 10 canary requests a second.
    pub fn p95_plus_100ms() -> Scenario {
        Scenario {
            name: "p95_plus_100ms".into(),
            bursty: false,
            canary_error_rate: 0.01,
            canary_latency_shift_ms: 150.0,
            duration_seconds: 300,
            ..Scenario::aa()
        }
    }

    /// A healthy canary (both roles alike and error-free, so only the ramp
    /// and the evidence it gathers set the pace; 100 requests/s) on the
    /// default ramp, 20 → 50 → 100 % with a minute's bake, for up to 30
    /// minutes: how long it takes to be promoted.
    pub fn ramp_steps() -> Scenario {
        Scenario {
            name: "ramp_steps_20_50_100".into(),
            bursty: false,
            baseline_error_rate: 0.0,
            canary_error_rate: 0.0,
            canary_percent: 20.0,
            steps: vec![20.0, 50.0, 100.0],
            bake_seconds: 60,
            duration_seconds: 1800,
            ..Scenario::aa()
        }
    }

    /// [`Scenario::ramp_steps`] on the exponential ramp 1 → 2 → 4 → … →
    /// 100 %, a minute at each share: a bad canary meets fewer users, a
    /// healthy one takes longer.
    pub fn ramp_exponential() -> Scenario {
        let ramp = Exponential {
            start: 1.0,
            factor: 2.0,
            every_seconds: 60,
            max: 100.0,
        };
        Scenario {
            name: "ramp_exponential_1_2_4_to_100".into(),
            canary_percent: ramp.start,
            schedule: Some(Schedule::Exponential(ramp)),
            ..Scenario::ramp_steps()
        }
    }

    /// The 1 % → 6 % effect while the split steps 5 → 10 → 25 → 100 %.
    pub fn error_with_steps() -> Scenario {
        Scenario {
            name: "error_1_to_6pct_stepping_5_10_25".into(),
            canary_percent: 5.0,
            steps: vec![5.0, 10.0, 25.0, 100.0],
            bake_seconds: 20,
            ..Scenario::error_1_to_6pct()
        }
    }
}

/// How a run ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunOutcome {
    /// Seconds after the canary started.
    pub rolled_back_at: Option<u64>,
    pub promoted_at: Option<u64>,
    /// The longest stretch of DEGRADED verdicts in a row (a hold), seconds.
    pub longest_hold_s: u64,
}

const T0: Millis = 1_700_000_000_000;

/// The policy a scenario runs under: `base`, with its schedule.
pub fn policy_for(base: &Policy, s: &Scenario) -> Policy {
    Policy {
        check_interval_seconds: 1,
        steps: s.steps.clone(),
        bake_seconds: s.bake_seconds,
        schedule: s.schedule,
        ..base.clone()
    }
}

fn started(policy: Policy, s: &Scenario) -> Option<Deployment> {
    let target = |v: &str| Target {
        version: v.into(),
        cluster: format!("c-{v}"),
    };
    let d = engine::create("sim", target("v1"), policy, OPERATOR, T0)
        .ok()?
        .deployment;
    let register = Command::RegisterVersion {
        version: "v2".into(),
        cluster: "c-v2".into(),
        metadata: serde_json::json!({}),
    };
    let d = engine::command(&d, register, OPERATOR, T0).ok()?.deployment;
    let start = Command::StartCanary {
        version: "v2".into(),
        percent: Some(s.canary_percent),
        steps: None,
        bake_seconds: None,
        schedule: None,
    };
    Some(engine::command(&d, start, OPERATOR, T0).ok()?.deployment)
}

/// One run of `s` under `policy` (its schedule comes from the scenario).
pub fn run(s: &Scenario, policy: &Policy, seed: u64) -> RunOutcome {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = RunOutcome::default();
    let (Some(mut d), Some(mut traffic)) = (started(policy_for(policy, s), s), Traffic::new(s))
    else {
        return out;
    };
    let mut windows = Windows::default();
    let mut hold = 0;
    for t in 0..s.duration_seconds {
        let split = d.split();
        traffic.second(s, &split, t, &mut rng, |role, second, stats| {
            if let Some(target) = split.target(role) {
                let reported = Reported {
                    counts: &second.counts,
                    latency: stats.latency_us(),
                    outputs: &second.outputs,
                    skipped: second.skipped,
                };
                windows.add("sim", role, &target.version, T0 / 1000 + t, &reported);
            }
        });
        for (version, n, ones) in traffic.labels_arriving(t, &split) {
            windows
                .feedback
                .add("sim", "accuracy", &version, T0 / 1000 + t, n, ones);
        }
        let now = T0 + (t + 1) * 1000;
        let step = engine::step(&d, &observe(&windows, &d, now), now);
        let degraded = step
            .verdict
            .as_ref()
            .is_some_and(|v| v.verdict == VerdictKind::Degraded);
        hold = if degraded { hold + 1 } else { 0 };
        out.longest_hold_s = out.longest_hold_s.max(hold);
        for e in &step.transition.events {
            match e.kind {
                EventKind::AutoRollbackTriggered => out.rolled_back_at = Some(t + 1),
                EventKind::Promoted => out.promoted_at = Some(t + 1),
                _ => {}
            }
        }
        d = step.transition.deployment;
        if out.rolled_back_at.is_some() || out.promoted_at.is_some() {
            break;
        }
        if t % 60 == 0 {
            windows.prune(now / 1000, d.policy.window_seconds + 5);
        }
    }
    out
}

/// Runs `runs` seeds on up to `threads` threads.
pub fn run_many(
    s: &Scenario,
    policy: &Policy,
    runs: u64,
    first_seed: u64,
    threads: usize,
) -> Vec<RunOutcome> {
    let threads = threads.max(1) as u64;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|k| {
                scope.spawn(move || {
                    (0..runs)
                        .filter(|i| i % threads == k)
                        .map(|i| (i, run(s, policy, first_seed + i)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<(u64, RunOutcome)> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect();
        all.sort_by_key(|(i, _)| *i);
        all.into_iter().map(|(_, o)| o).collect()
    })
}

/// Detection statistics of runs with an effect.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Detection {
    pub scenario: String,
    pub policy: String,
    pub runs: u64,
    pub detected_rate: f64,
    pub median_s: Option<f64>,
    pub p95_s: Option<f64>,
}

fn quantile(sorted: &[u64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted.get(i).map(|&v| v as f64)
}

pub fn detection(scenario: &str, policy: &str, outcomes: &[RunOutcome]) -> Detection {
    let mut times: Vec<u64> = outcomes.iter().filter_map(|o| o.rolled_back_at).collect();
    times.sort_unstable();
    Detection {
        scenario: scenario.to_string(),
        policy: policy.to_string(),
        runs: outcomes.len() as u64,
        detected_rate: times.len() as f64 / outcomes.len().max(1) as f64,
        median_s: quantile(&times, 0.5),
        p95_s: quantile(&times, 0.95),
    }
}

/// How fast healthy canaries were promoted.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Promotion {
    pub scenario: String,
    pub runs: u64,
    pub promoted_rate: f64,
    pub rolled_back_rate: f64,
    /// Seconds from the canary's start to its promotion.
    pub median_s: Option<f64>,
    pub p95_s: Option<f64>,
}

pub fn promotion(scenario: &str, outcomes: &[RunOutcome]) -> Promotion {
    let mut times: Vec<u64> = outcomes.iter().filter_map(|o| o.promoted_at).collect();
    times.sort_unstable();
    Promotion {
        scenario: scenario.to_string(),
        runs: outcomes.len() as u64,
        promoted_rate: times.len() as f64 / outcomes.len().max(1) as f64,
        rolled_back_rate: rollback_rate(outcomes),
        median_s: quantile(&times, 0.5),
        p95_s: quantile(&times, 0.95),
    }
}

/// The share of runs with a hold (DEGRADED in a row) longer than `seconds`
/// (in an A/A comparison: all of them false).
pub fn held_longer_than(outcomes: &[RunOutcome], seconds: u64) -> f64 {
    outcomes
        .iter()
        .filter(|o| o.longest_hold_s > seconds)
        .count() as f64
        / outcomes.len().max(1) as f64
}

/// The share of runs rolled back (in an A/A comparison: all of them false).
pub fn rollback_rate(outcomes: &[RunOutcome]) -> f64 {
    outcomes
        .iter()
        .filter(|o| o.rolled_back_at.is_some())
        .count() as f64
        / outcomes.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Significance;

    #[test]
    fn runs_are_reproducible_and_detect_the_seed_failure() {
        let s = Scenario::seed_demo();
        let p = Policy::default();
        let a = run(&s, &p, 1);
        assert_eq!(a, run(&s, &p, 1));
        let t = a.rolled_back_at.expect("the seed failure is caught");
        assert!(t <= 10, "caught after {t} s");
        let naive = Policy {
            significance: Significance::None,
            ..Policy::default()
        };
        assert!(run(&s, &naive, 1).rolled_back_at.is_some());
    }

    /// Slots of the probability: below, ten bins, above.
    const CONFIDENT: [f64; 12] = [
        0.0, 0.30, 0.12, 0.05, 0.04, 0.03, 0.03, 0.04, 0.06, 0.13, 0.20, 0.0,
    ];
    const UNDERFIT: [f64; 12] = [0.0, 0.0, 0.0, 0.0, 0.0, 0.55, 0.45, 0.0, 0.0, 0.0, 0.0, 0.0];

    #[test]
    fn an_underfit_model_is_caught_by_its_outputs_and_a_same_one_is_not() {
        let p = Policy::default();
        let shift = Scenario::outputs_shift(20.0, &CONFIDENT, &UNDERFIT);
        for seed in 1..=3 {
            let o = run(&shift, &p, seed);
            let t = o.rolled_back_at.expect("caught");
            assert!(t <= 15, "caught after {t} s");
        }
        let aa = Scenario::outputs_aa(&CONFIDENT);
        for seed in 1..=3 {
            let o = run(&aa, &p, seed);
            assert!(o.rolled_back_at.is_none(), "{o:?}");
            assert!(o.longest_hold_s <= aa.bake_seconds, "{o:?}");
        }
    }

    #[test]
    fn a_less_accurate_model_is_caught_by_its_labels_and_an_equal_one_is_not() {
        let mut p = Policy::default();
        let drop = Scenario::accuracy_drop(20.0, 0.60);
        let delta_only: Vec<u64> = (1..=3)
            .map(|seed| run(&drop, &p, seed).rolled_back_at.expect("caught"))
            .collect();
        p.feedback.get_mut("accuracy").unwrap().min = Some(0.85);
        for (seed, &slower) in (1..=3).zip(&delta_only) {
            let t = run(&drop, &p, seed).rolled_back_at.expect("caught");
            assert!(t <= 60, "caught after {t} s");
            assert!(
                t <= slower,
                "the absolute minimum only adds a way to be caught"
            );
        }
        let mut aa = Scenario::feedback_aa();
        aa.duration_seconds = 300;
        for seed in 1..=3 {
            assert_eq!(run(&aa, &p, seed).rolled_back_at, None);
        }
    }

    #[test]
    fn a_healthy_canary_climbs_either_ramp_to_promotion() {
        let p = Policy::default();
        let steps = run(&Scenario::ramp_steps(), &p, 1);
        let exponential = run(&Scenario::ramp_exponential(), &p, 1);
        let (Some(s), Some(e)) = (steps.promoted_at, exponential.promoted_at) else {
            panic!("both promoted: {steps:?} {exponential:?}");
        };
        // Three bakes against eight, each at least a minute.
        assert!(s >= 180 && e >= 480 && e > s, "{s} s vs {e} s");
        let stats = promotion("x", &[steps, RunOutcome::default()]);
        assert_eq!((stats.promoted_rate, stats.median_s), (0.5, Some(s as f64)));
    }

    #[test]
    fn quantiles_and_rates() {
        assert_eq!(quantile(&[1, 2, 3, 4], 0.5), Some(2.0));
        assert_eq!(quantile(&[1, 2, 3, 4], 0.95), Some(4.0));
        assert_eq!(quantile(&[], 0.5), None);
        let o = [
            RunOutcome {
                rolled_back_at: Some(3),
                promoted_at: None,
                longest_hold_s: 40,
            },
            RunOutcome::default(),
        ];
        assert_eq!(held_longer_than(&o, 30), 0.5);
        assert_eq!(rollback_rate(&o), 0.5);
        let d = detection("x", "guard", &o);
        assert_eq!((d.detected_rate, d.median_s), (0.5, Some(3.0)));
    }
}
