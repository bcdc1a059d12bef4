//! What the policy looks at for a deployment at a moment: both roles over
//! the same window, the canary's slow requests, and the split observed
//! since the current share was set, all read from the [`Windows`]. The
//! controller and the simulator call [`observe`] alike. During a
//! post-promotion watch, the new baseline since its promotion
//! (`observe/watch.rs`).

mod watch;

pub use watch::{Watched, WatchedOthers, watched};

use crate::engine::Deployment;
use crate::engine::Millis;
use crate::window::{Loudest, RoleWindowStats, Span, Windows};
use coalmine_protocol::Role;

/// Seconds after a change of share before the observed split is compared
/// with it (the proxies' sync interval and reporting lag, with margin).
pub const SPLIT_SETTLE_SECONDS: u64 = 5;

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
    /// During a post-promotion watch: the new baseline since its promotion.
    pub watched: Option<Watched>,
    /// When two or more proxies reported canary requests in the window:
    /// the same window without the one that reported the most.
    pub others: Option<Box<Others>>,
}

/// The window read again without the proxy that reported the most canary
/// requests (feedback is not a proxy's, and is the same in both).
#[derive(Clone, Debug, PartialEq)]
pub struct Others {
    pub without: Loudest,
    /// Both roles without it; no split check.
    pub obs: Observations,
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

/// Each declared feedback metric, for the baseline and (during a canary)
/// the canary, over the metric's own window (zero counts before any
/// arrive: health shows every declared metric).
fn feedback_of(
    windows: &Windows,
    d: &Deployment,
    now: Millis,
    baseline: &mut RoleWindowStats,
    mut canary: Option<(&String, &mut RoleWindowStats)>,
) {
    let second = now / 1000;
    for (metric, rule) in &d.policy.feedback {
        let of = |version: &str| {
            windows
                .feedback
                .stats(&d.name, metric, version, second, rule.window_seconds)
        };
        baseline
            .feedback
            .insert(metric.clone(), of(&d.baseline.version));
        if let Some((version, stats)) = canary.as_mut() {
            stats.feedback.insert(metric.clone(), of(version));
        }
    }
}

/// What the policy looks at for `d` at `now`.
pub fn observe(windows: &Windows, d: &Deployment, now: Millis) -> Observations {
    let (second, window, classes) = (now / 1000, d.policy.window_seconds, &d.policy.error_classes);
    let baseline = windows.stats(
        &d.name,
        Role::Baseline,
        &d.baseline.version,
        second,
        window,
        classes,
    );
    let Some(c) = &d.canary else {
        let mut baseline = baseline;
        feedback_of(windows, d, now, &mut baseline, None);
        return Observations {
            watched: watched(windows, d, now),
            ..Observations::of(baseline, RoleWindowStats::default())
        };
    };
    let v = &c.target.version;
    let mut baseline = baseline;
    let mut canary = windows.stats(&d.name, Role::Canary, v, second, window, classes);
    feedback_of(windows, d, now, &mut baseline, Some((v, &mut canary)));
    let canary_slow = baseline.p95_ms.map_or(0, |p95| {
        windows.count_slower(
            &d.name,
            Role::Canary,
            v,
            second,
            window,
            p95 + d.policy.critical.p95_delta_ms,
        )
    });
    // The split since the share was set, after it settled: for a few
    // seconds, proxies still route by the old table and report traffic they
    // split before the change.
    let from = c.step_since / 1000 + SPLIT_SETTLE_SECONDS + 1;
    let to = second.saturating_sub(1);
    let (step_canary, step_all) = if to < from {
        (0, 0)
    } else {
        let span = (to - from + 1).min(window);
        let b = windows.stats(
            &d.name,
            Role::Baseline,
            &d.baseline.version,
            to,
            span,
            classes,
        );
        let k = windows.stats(&d.name, Role::Canary, v, to, span, classes);
        (k.requests, k.requests.saturating_add(b.requests))
    };
    let others = others(windows, d, now, &baseline, &canary);
    Observations {
        baseline,
        canary,
        canary_slow,
        step_canary_requests: step_canary,
        step_requests: step_all,
        configured_share: c.bps.as_percent() / 100.0,
        watched: None,
        others,
    }
}

/// During a canary, the window without the proxy that reported the most
/// canary requests, when two or more reported some.
fn others(
    windows: &Windows,
    d: &Deployment,
    now: Millis,
    baseline: &RoleWindowStats,
    canary: &RoleWindowStats,
) -> Option<Box<Others>> {
    let c = d.canary.as_ref()?;
    let (second, window, classes) = (now / 1000, d.policy.window_seconds, &d.policy.error_classes);
    let v = &c.target.version;
    let (p, span) = (&windows.proxies, Span::window(second, window));
    let loudest = p.loudest(&d.name, Role::Canary, v, span)?;
    let without = loudest.proxy.as_str();
    let (b, name) = (&d.baseline.version, d.name.as_str());
    let mut others_baseline = p.stats_without((name, Role::Baseline, b), without, span, classes);
    let mut others_canary = p.stats_without((name, Role::Canary, v), without, span, classes);
    others_baseline.feedback = baseline.feedback.clone();
    others_canary.feedback = canary.feedback.clone();
    let canary_slow = others_baseline.p95_ms.map_or(0, |p95| {
        let threshold = p95 + d.policy.critical.p95_delta_ms;
        p.count_slower_without((name, Role::Canary, v), without, span, threshold)
    });
    Some(Box::new(Others {
        without: loudest,
        obs: Observations {
            canary_slow,
            ..Observations::of(others_baseline, others_canary)
        },
    }))
}
