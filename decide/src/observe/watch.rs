//! What a post-promotion watch looks at: the new baseline's own numbers
//! since its promotion, nothing older.
//!
//! Windows keep a series per deployment, role and version, and feedback a
//! series per version. Before the promotion the promoted version served as
//! the canary (its own series) and the old baseline under its own version,
//! so reading the baseline role of the promoted version, and its feedback,
//! from the second after the promotion on, leaves every pre-promotion
//! observation out, whoever made it. (Windows wider than 600 s keep
//! buckets of several seconds; the bucket holding the promotion may then
//! count a few seconds before it — of a version that was not serving as
//! the baseline then, so only after a revert and a second promotion.)
//!
//! When two or more proxies reported the new baseline's requests in the
//! watch's window, the watch is also read without the proxy that reported
//! the most of them (from the start of the proxy bucket the window's first
//! second falls in: right after the promotion, the promoted version served
//! no baseline requests before it), so one proxy cannot alone revert it or
//! drown a breach the others see (`rules/watch.rs`).

use crate::engine::{Deployment, Millis};
use crate::window::{Loudest, RoleWindowStats, Span, Windows};
use coalmine_protocol::Role;

/// The new baseline during its watch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Watched {
    /// Its numbers since the promotion (at most the policy's window), with
    /// each declared feedback metric's arrivals since the promotion (at
    /// most the metric's window).
    pub stats: RoleWindowStats,
    /// Its requests slower than the old baseline's p95 plus
    /// `critical.p95_delta_ms` (0 without an old p95).
    pub slower_than_old: u64,
    /// Its requests slower than `slo.max_p95_ms` (0 without that SLO).
    pub slower_than_slo: u64,
    /// When two or more proxies reported its requests in the watch's window:
    /// the same without the one that reported the most.
    pub others: Option<Box<WatchedOthers>>,
}

/// The watch read again without the proxy that reported the most of the
/// new baseline's requests (feedback is not a proxy's, and is the same).
#[derive(Clone, Debug, PartialEq)]
pub struct WatchedOthers {
    pub without: Loudest,
    pub watched: Watched,
}

/// The watched baseline of `d` at `now`, if a watch runs and has begun.
pub fn watched(windows: &Windows, d: &Deployment, now: Millis) -> Option<Watched> {
    let w = d
        .watch
        .as_ref()
        .filter(|w| w.version == d.baseline.version)?;
    let (second, policy) = (now / 1000, &d.policy);
    // From the second after the promotion's, up to now.
    let since = (second.saturating_sub(w.since / 1000)).min(policy.window_seconds);
    let (name, version) = (&d.name, &d.baseline.version);
    // Within the promotion's own second, nothing counts yet (a window of
    // 0 s would read that second).
    let mut stats = match since {
        0 => RoleWindowStats::default(),
        _ => windows.stats(
            name,
            Role::Baseline,
            version,
            second,
            since,
            &policy.error_classes,
        ),
    };
    for (metric, rule) in &policy.feedback {
        let span = since.min(rule.window_seconds);
        let f = match span {
            0 => Default::default(),
            _ => windows.feedback.stats(name, metric, version, second, span),
        };
        stats.feedback.insert(metric.clone(), f);
    }
    let slower = |threshold: Option<f64>| {
        threshold.filter(|_| since > 0).map_or(0, |ms| {
            windows.count_slower(name, Role::Baseline, version, second, since, ms)
        })
    };
    let old_p95 = w.reference.p95_ms;
    let thresholds = [
        old_p95.map(|p| p + policy.critical.p95_delta_ms),
        policy.slo.max_p95_ms,
    ];
    let others = match since {
        0 => None,
        _ => others(
            windows,
            d,
            Span::since(second + 1 - since, second, policy.window_seconds),
            &stats,
            thresholds,
        ),
    };
    Some(Watched {
        slower_than_old: slower(thresholds[0]),
        slower_than_slo: slower(thresholds[1]),
        stats,
        others,
    })
}

/// The watched baseline over `span` without the proxy that reported the
/// most of its requests, when two or more reported some; `whole` gives
/// the feedback, `thresholds` the latencies the old baseline's p95 and the
/// SLO make slow.
fn others(
    windows: &Windows,
    d: &Deployment,
    span: Span,
    whole: &RoleWindowStats,
    thresholds: [Option<f64>; 2],
) -> Option<Box<WatchedOthers>> {
    let p = &windows.proxies;
    let series = (d.name.as_str(), Role::Baseline, d.baseline.version.as_str());
    let loudest = p.loudest(series.0, series.1, series.2, span)?;
    let without = loudest.proxy.as_str();
    let mut stats = p.stats_without(series, without, span, &d.policy.error_classes);
    stats.feedback = whole.feedback.clone();
    let slower = |threshold: Option<f64>| {
        threshold.map_or(0, |ms| p.count_slower_without(series, without, span, ms))
    };
    let watched = Watched {
        slower_than_old: slower(thresholds[0]),
        slower_than_slo: slower(thresholds[1]),
        stats,
        others: None,
    };
    Some(Box::new(WatchedOthers {
        without: loudest,
        watched,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Command, OPERATOR, command_seen};
    use crate::policy::Policy;
    use crate::window::Reported;
    use coalmine_protocol::stats::{LATENCY_MAX_US, LATENCY_SIGFIG};
    use coalmine_protocol::sync::OutcomeCounts;
    use hdrhistogram::Histogram;

    fn report(w: &mut Windows, role: Role, version: &str, second: u64, ok: u64, failed: u64) {
        let counts = OutcomeCounts {
            success: ok,
            server_error: failed,
            ..OutcomeCounts::default()
        };
        let mut h = Histogram::new_with_bounds(1, LATENCY_MAX_US, LATENCY_SIGFIG).unwrap();
        h.record_n(50_000, ok + failed).unwrap();
        w.add(
            "heart-prod",
            role,
            version,
            second,
            &Reported::requests(&counts, &h),
        );
    }

    #[test]
    fn only_what_the_new_baseline_served_after_its_promotion_counts() {
        let t0 = crate::engine::testing::T0;
        let d = crate::engine::testing::with_canary(Policy::default());
        let (s0, promoted_s) = (t0 / 1000, t0 / 1000 + 60);
        let mut w = Windows::default();
        for s in s0..promoted_s {
            // Before: v2 as the canary (failing), v1 as the baseline.
            report(&mut w, Role::Canary, "v2", s, 0, 5);
            report(&mut w, Role::Baseline, "v1", s, 20, 0);
            w.feedback.add("heart-prod", "accuracy", "v2", s, 10, 0);
        }
        // The promotion's own second still carries v1's and v2's old roles.
        report(&mut w, Role::Canary, "v2", promoted_s, 0, 5);
        w.feedback
            .add("heart-prod", "accuracy", "v2", promoted_s, 10, 0);
        report(&mut w, Role::Baseline, "v1", promoted_s, 20, 0);
        let promote = Command::Promote { reason: None };
        let d = command_seen(
            &d,
            promote,
            OPERATOR,
            promoted_s * 1000,
            &Default::default(),
        )
        .unwrap()
        .deployment;
        for s in promoted_s + 1..=promoted_s + 10 {
            report(&mut w, Role::Baseline, "v2", s, 9, 1);
            w.feedback.add("heart-prod", "accuracy", "v2", s, 2, 2);
        }
        let seen = watched(&w, &d, (promoted_s + 10) * 1000 + 500).unwrap();
        assert_eq!((seen.stats.requests, seen.stats.errors), (100, 10));
        let acc = seen.stats.feedback["accuracy"];
        assert_eq!((acc.observations, acc.ones), (20, 20));
        // Right after the promotion: nothing yet.
        let first = watched(&w, &d, promoted_s * 1000 + 900).unwrap();
        assert_eq!(first.stats.requests, 0);
        assert_eq!(first.stats.feedback["accuracy"].observations, 0);
    }
}
