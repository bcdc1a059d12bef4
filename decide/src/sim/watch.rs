//! The post-promotion watch in the simulator: v2 runs as a canary at 50 %
//! for a minute of healthy traffic, an operator promotes it, and from then
//! on it serves everything; in the degrading scenario its error rate jumps
//! some seconds after the promotion. Each second the engine steps on what
//! the windows show, as the controller does; a run ends at a revert or
//! when the watch is over.

use super::traffic::Traffic;
use super::{Scenario, T0, policy_for, started};
use crate::engine::{self, Command, Deployment, EventKind, OPERATOR};
use crate::observe::observe;
use crate::policy::Policy;
use crate::window::{Reported, Windows};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// Seconds of healthy canary traffic before the promotion.
const WARM_UP_SECONDS: u64 = 60;

/// A promotion and what the promoted version does after it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WatchScenario {
    pub name: String,
    /// Traffic, latency and both versions' error rate before the promotion.
    pub traffic: Scenario,
    /// Seconds after the promotion when the promoted version degrades
    /// (none: it never does, an A/A comparison).
    pub degrades_after_s: Option<u64>,
    pub degraded_error_rate: f64,
    pub watch_seconds: u64,
}

impl WatchScenario {
    /// v2 at 1 % errors like v1, never degrading, watched for 10 minutes.
    pub fn healthy() -> WatchScenario {
        WatchScenario {
            name: "watch_aa".into(),
            traffic: Scenario {
                canary_percent: 50.0,
                steps: vec![50.0, 100.0],
                ..Scenario::aa()
            },
            degrades_after_s: None,
            degraded_error_rate: 0.01,
            watch_seconds: 600,
        }
    }

    /// v2 healthy for two minutes after its promotion, then at 20 % errors
    /// (the healthy minutes stay in the window and dilute it at first).
    pub fn degrading() -> WatchScenario {
        WatchScenario {
            name: "watch_1_to_20pct_after_120s".into(),
            degrades_after_s: Some(120),
            degraded_error_rate: 0.20,
            ..WatchScenario::healthy()
        }
    }
}

/// How a watched run ended: reverted, seconds after the degradation began
/// (or after the promotion, when it never degrades).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchOutcome {
    pub reverted_after_s: Option<u64>,
}

/// Feeds one second of traffic through `d`'s split into the windows.
fn feed(
    s: &Scenario,
    d: &Deployment,
    traffic: &mut Traffic,
    t: u64,
    rng: &mut ChaCha8Rng,
    w: &mut Windows,
) {
    let split = d.split();
    traffic.second(s, &split, t, rng, |role, second, stats| {
        if let Some(target) = split.target(role) {
            let reported = Reported {
                counts: &second.counts,
                latency: stats.latency_us(),
                outputs: &second.outputs,
                skipped: second.skipped,
            };
            w.add("sim", role, &target.version, T0 / 1000 + t, &reported);
        }
    });
}

/// One run of `s` under `policy` with the scenario's watch.
pub fn run_watch(s: &WatchScenario, policy: &Policy, seed: u64) -> WatchOutcome {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut policy = policy_for(policy, &s.traffic);
    policy.post_promotion.watch_seconds = s.watch_seconds;
    let out = WatchOutcome::default();
    let (Some(mut d), Some(mut traffic)) = (started(policy, &s.traffic), Traffic::new(&s.traffic))
    else {
        return out;
    };
    let mut windows = Windows::default();
    for t in 0..WARM_UP_SECONDS {
        feed(&s.traffic, &d, &mut traffic, t, &mut rng, &mut windows);
    }
    let now = T0 + WARM_UP_SECONDS * 1000;
    let old = observe(&windows, &d, now).baseline;
    let promote = Command::Promote { reason: None };
    let Ok(t) = engine::command_seen(&d, promote, OPERATOR, now, &old) else {
        return out;
    };
    d = t.deployment;
    let mut after = s.traffic.clone();
    for k in 0..s.watch_seconds + 5 {
        let t = WARM_UP_SECONDS + k;
        // The promoted version serves as the baseline now.
        after.baseline_error_rate = match s.degrades_after_s {
            Some(at) if k >= at => s.degraded_error_rate,
            _ => s.traffic.canary_error_rate,
        };
        feed(&after, &d, &mut traffic, t, &mut rng, &mut windows);
        let now = T0 + (t + 1) * 1000;
        let step = engine::step(&d, &observe(&windows, &d, now), now);
        if step
            .transition
            .events
            .iter()
            .any(|e| e.kind == EventKind::RevertedToPinned)
        {
            let from = s.degrades_after_s.unwrap_or(0);
            return WatchOutcome {
                reverted_after_s: Some((k + 1).saturating_sub(from)),
            };
        }
        d = step.transition.deployment;
        if d.watch.is_none() {
            break;
        }
        if k % 60 == 0 {
            windows.prune(now / 1000, d.policy.window_seconds + 5);
        }
    }
    out
}

/// Runs `runs` seeds of `s` (on one thread each of up to `threads`).
pub fn run_watch_many(
    s: &WatchScenario,
    policy: &Policy,
    runs: u64,
    threads: usize,
) -> Vec<WatchOutcome> {
    let threads = threads.max(1) as u64;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|k| {
                scope.spawn(move || {
                    (0..runs)
                        .filter(|i| i % threads == k)
                        .map(|i| run_watch(s, policy, 7_000 + i))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_degrading_promotion_is_reverted_within_the_watch_a_healthy_one_never() {
        let p = Policy::default();
        let bad = run_watch(&WatchScenario::degrading(), &p, 1);
        let took = bad.reverted_after_s.expect("reverted");
        assert!(took <= 90, "reverted {took} s after it degraded");
        for seed in 0..3 {
            assert_eq!(
                run_watch(&WatchScenario::healthy(), &p, seed).reverted_after_s,
                None
            );
        }
    }
}
