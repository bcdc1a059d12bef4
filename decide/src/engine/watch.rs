//! The post-promotion watch: after a promotion, by the engine or an
//! operator, the new baseline stays watched for
//! `post_promotion.watch_seconds`, judged by `rules/watch.rs` on what it
//! served since the promotion (`observe/watch.rs`). An established breach
//! reverts to the pinned version (`reverted_to_pinned`, actor `engine`);
//! with automatic rollback off it is reported once (`health_check_failed`)
//! and nothing moves. A watch held because the proxies disagree
//! (`rules/proxies.rs`: one proxy's numbers alone would revert it, or keep
//! it while the others find a breach) reverts nothing and is reported
//! once per watch (`health_degraded`).
//!
//! The watch ends when its time is up (no event; nothing reverts on its
//! own afterwards, an operator still can), on a revert (the engine's or an
//! operator's rollback), when a new canary starts (the canary is judged
//! against this baseline from then on), and when the policy turns it off.
//! It is part of the deployment's stored state, so it outlives a restart.

use super::command::{Command, command};
use super::model::{
    Deployment, ENGINE, Event, EventKind, Millis, Refusal, Step, Transition, event,
};
use crate::observe::Observations;
use crate::rules::watch::{WatchHealth, WatchReference, evaluate};
use crate::verdict::{Verdict, VerdictKind};
use crate::window::RoleWindowStats;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A running watch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Watch {
    /// The promoted version under watch.
    pub version: String,
    /// When it was promoted, and until when it is watched.
    pub since: Millis,
    pub until: Millis,
    /// The old baseline's numbers over its last window before the promotion.
    pub reference: WatchReference,
    /// A breach was reported without a revert (automatic rollback off).
    #[serde(default)]
    pub breach_reported: bool,
    /// A hold on the proxies' disagreement was reported.
    #[serde(default)]
    pub hold_reported: bool,
}

/// Starts the watch when `next` is `before` promoted: its old baseline's
/// window, `old`, is what the new one will be compared with.
pub(crate) fn on_promotion(
    before: &Deployment,
    next: &mut Deployment,
    old: &RoleWindowStats,
    now: Millis,
) {
    let promoted = before.canary.is_some()
        && next.canary.is_none()
        && next.baseline != before.baseline
        && next.pinned.as_ref() == Some(&before.baseline);
    if !promoted {
        return;
    }
    let seconds = next.policy.post_promotion.watch_seconds;
    next.watch = (seconds > 0).then(|| Watch {
        version: next.baseline.version.clone(),
        since: now,
        until: now.saturating_add(seconds.saturating_mul(1000)),
        reference: WatchReference::of(&before.baseline.version, old),
        breach_reported: false,
        hold_reported: false,
    });
}

/// An operator's command, given what the baseline's window shows at the
/// moment: a promotion starts the watch with these numbers.
pub fn command_seen(
    d: &Deployment,
    cmd: Command,
    actor: &str,
    now: Millis,
    baseline: &RoleWindowStats,
) -> Result<Transition, Refusal> {
    let mut t = command(d, cmd, actor, now)?;
    on_promotion(d, &mut t.deployment, baseline, now);
    Ok(t)
}

/// The watch still applies to `d` at `now`.
fn running(d: &Deployment, now: Millis) -> Option<&Watch> {
    d.watch.as_ref().filter(|w| {
        w.version == d.baseline.version
            && d.canary.is_none()
            && now < w.until
            && d.policy.post_promotion.watch_seconds > 0
    })
}

/// The engine's step without a canary: judges a running watch, reverts on
/// a breach (or reports it once), and ends a watch that no longer applies.
pub(crate) fn watch_step(d: &Deployment, obs: &Observations, now: Millis) -> Step {
    let mut next = d.clone();
    let mut events = Vec::new();
    match (running(d, now), &obs.watched) {
        (None, _) => next.watch = None,
        (Some(w), Some(watched)) => {
            let v = evaluate(&d.policy, &w.version, &w.reference, watched);
            match v.verdict {
                VerdictKind::Critical => events.extend(on_breach(&mut next, &v, now)),
                VerdictKind::Degraded => events.extend(on_hold(&mut next, &v)),
                VerdictKind::Healthy | VerdictKind::InsufficientData => {}
            }
        }
        (Some(_), None) => {}
    }
    Step {
        transition: Transition {
            deployment: next,
            events,
        },
        verdict: None,
    }
}

/// A breach: back to the pinned version, or (automatic rollback off, or
/// nothing pinned to go back to) reported once.
fn on_breach(next: &mut Deployment, v: &Verdict, now: Millis) -> Option<Event> {
    let why = format!("post-promotion watch: {}", v.summary());
    let numbers = v.numbers();
    if next.policy.auto_rollback {
        let mut reverted = next.clone();
        if let Ok(mut e) = reverted.revert_to_pinned(now, ENGINE, &why) {
            e.numbers.extend(numbers);
            *next = reverted;
            return Some(e);
        }
    }
    let w = next.watch.as_mut().filter(|w| !w.breach_reported)?;
    w.breach_reported = true;
    let reason = if next.policy.auto_rollback {
        format!("{why}; no pinned version to revert to")
    } else {
        format!(
            "{why}; automatic rollback is off, {} keeps serving",
            w.version
        )
    };
    Some(event(
        EventKind::HealthCheckFailed,
        ENGINE,
        reason,
        Value::Object(numbers),
    ))
}

/// A watch held because the proxies disagree: reported once per watch.
fn on_hold(next: &mut Deployment, v: &Verdict) -> Option<Event> {
    let w = next.watch.as_mut().filter(|w| !w.hold_reported)?;
    w.hold_reported = true;
    Some(event(
        EventKind::HealthDegraded,
        ENGINE,
        format!("post-promotion watch of {}: {}", w.version, v.summary()),
        Value::Object(v.numbers()),
    ))
}

/// A running watch as health shows it.
pub fn watch_health(d: &Deployment, obs: &Observations, now: Millis) -> Option<WatchHealth> {
    let (w, watched) = (running(d, now)?, obs.watched.as_ref()?);
    let v = evaluate(&d.policy, &w.version, &w.reference, watched);
    Some(WatchHealth {
        version: w.version.clone(),
        since: w.since,
        until: w.until,
        seconds_left: w.until.saturating_sub(now).div_ceil(1000),
        reference: w.reference.clone(),
        current: watched.stats.clone(),
        verdict: v.verdict,
        reasons: v.reasons,
        breach_reported: w.breach_reported,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{Command, ENGINE, OPERATOR, VersionState, command};
    use super::*;
    use crate::observe::Watched;
    use crate::policy::{Policy, Significance};
    use crate::window::FeedbackStats;

    /// When v2 is promoted by the operator.
    const PROMOTED: Millis = T0 + 1_000;

    /// The old baseline v1's last window: 1 % errors, p95 100 ms.
    fn old() -> RoleWindowStats {
        stats(1000, 10, 100.0)
    }

    /// heart-prod with v2 promoted by the operator at [`PROMOTED`].
    fn promoted_with(policy: Policy, old: &RoleWindowStats) -> Deployment {
        let d = with_canary(policy);
        let promote = Command::Promote { reason: None };
        command_seen(&d, promote, OPERATOR, PROMOTED, old)
            .unwrap()
            .deployment
    }

    fn promoted(policy: Policy) -> Deployment {
        promoted_with(policy, &old())
    }

    /// The new baseline since its promotion.
    fn seen(requests: u64, errors: u64, p95: f64) -> Watched {
        Watched {
            stats: stats(requests, errors, p95),
            ..Watched::default()
        }
    }

    /// The engine's step on the watched baseline at `now`.
    fn watch(d: &Deployment, w: Watched, now: Millis) -> Step {
        let obs = Observations {
            watched: Some(w),
            ..Observations::default()
        };
        super::super::step(d, &obs, now)
    }

    fn seed() -> Policy {
        Policy {
            significance: Significance::None,
            ..Policy::default()
        }
    }

    #[test]
    fn a_promotion_starts_the_watch_with_the_old_baselines_numbers() {
        let d = promoted(Policy::default());
        let w = d.watch.as_ref().unwrap();
        assert_eq!((w.version.as_str(), w.since), ("v2", PROMOTED));
        assert_eq!(w.until, PROMOTED + 600_000);
        assert_eq!(w.reference.version, "v1");
        assert_eq!((w.reference.requests, w.reference.errors), (1000, 10));
        assert_eq!(w.reference.p95_ms, Some(100.0));
    }

    #[test]
    fn the_engines_own_promotion_starts_the_watch_too() {
        let d = with_canary(Policy {
            steps: vec![100.0],
            bake_seconds: 0,
            ..Policy::default()
        });
        let (b, c) = good();
        let s = step(&d, &b, &c, T0 + 5_000);
        assert_eq!(kinds(&s.transition), ["promoted"]);
        let w = s.transition.deployment.watch.unwrap();
        assert_eq!(w.reference, WatchReference::of("v1", &b));
        assert_eq!(w.since, T0 + 5_000);
    }

    #[test]
    fn a_breach_within_the_watch_reverts_once() {
        let d = promoted(Policy::default());
        let s = watch(&d, seen(200, 60, 100.0), PROMOTED + 30_000);
        assert_eq!(kinds(&s.transition), ["reverted_to_pinned"]);
        let e = &s.transition.events[0];
        assert_eq!(e.actor, ENGINE);
        assert!(e.reason.starts_with("post-promotion watch: against v1 before the promotion: v2 error rate 30.0 % exceeds 1.0 %"), "{}", e.reason);
        assert!(e.reason.contains("established at α"), "{}", e.reason);
        assert!(
            e.reason
                .ends_with("traffic back to pinned v1; v2 marked unhealthy")
        );
        assert_eq!(e.numbers["new_error_rate"], 0.3);
        assert_eq!(e.numbers["old_error_rate"], 0.01);
        assert_eq!(e.numbers["rule"], "old_baseline_error_rate");
        let next = &s.transition.deployment;
        assert_eq!(next.baseline.version, "v1");
        assert!(next.watch.is_none());
        let v2 = next.version("v2").unwrap();
        assert_eq!((v2.state, v2.healthy), (VersionState::RolledBack, false));
        let again = watch(next, seen(200, 60, 100.0), PROMOTED + 35_000);
        assert!(again.transition.events.is_empty(), "once");
    }

    #[test]
    fn a_healthy_new_baseline_is_never_reverted_and_the_watch_ends() {
        let mut d = promoted(Policy::default());
        for i in 1..=130u64 {
            let s = watch(&d, seen(40 * i, i / 3, 102.0), PROMOTED + i * 5_000);
            assert!(s.transition.events.is_empty(), "{:?}", kinds(&s.transition));
            d = s.transition.deployment;
        }
        assert!(d.watch.is_none(), "ended after 600 s, without an event");
        assert_eq!(d.baseline.version, "v2");
    }

    #[test]
    fn after_the_watch_nothing_reverts() {
        let d = promoted(Policy::default());
        let s = watch(&d, seen(200, 150, 900.0), PROMOTED + 600_000);
        assert!(s.transition.events.is_empty());
        assert_eq!(s.transition.deployment.baseline.version, "v2");
        assert!(s.transition.deployment.watch.is_none());
        // An operator still can.
        let back = command(
            &s.transition.deployment,
            Command::Rollback { reason: None },
            OPERATOR,
            PROMOTED + 601_000,
        )
        .unwrap();
        assert_eq!(kinds(&back), ["reverted_to_pinned"]);
    }

    #[test]
    fn the_slo_rule() {
        let mut policy = seed();
        policy.slo.max_error_rate = Some(0.02);
        // 4.5 % is within 1 % + 5 pp of the old baseline, not within the SLO.
        let s = watch(&promoted(policy), seen(200, 9, 100.0), PROMOTED + 9_000);
        assert_eq!(kinds(&s.transition), ["reverted_to_pinned"]);
        let e = &s.transition.events[0];
        assert!(
            e.reason
                .contains("SLO: v2 error rate 4.5 % since its promotion breaks the SLO of 2.0 %"),
            "{}",
            e.reason
        );
        assert_eq!(e.numbers["rule"], "slo_error_rate");
        let mut policy = Policy::default();
        policy.slo.max_p95_ms = Some(150.0);
        let slow = Watched {
            slower_than_slo: 40,
            ..seen(200, 0, 180.0)
        };
        let s = watch(&promoted(policy), slow, PROMOTED + 9_000);
        assert_eq!(kinds(&s.transition), ["reverted_to_pinned"]);
        assert!(s.transition.events[0].reason.contains("SLO: v2 p95 180 ms"));
    }

    #[test]
    fn the_old_baseline_latency_rule() {
        let slow = Watched {
            slower_than_old: 60,
            ..seen(200, 0, 260.0)
        };
        let s = watch(&promoted(Policy::default()), slow, PROMOTED + 9_000);
        assert_eq!(kinds(&s.transition), ["reverted_to_pinned"]);
        let e = &s.transition.events[0];
        assert!(
            e.reason
                .contains("v2 p95 260 ms exceeds 100 ms by 160 ms (limit 100 ms)"),
            "{}",
            e.reason
        );
        assert_eq!(
            (
                e.numbers["new_p95_ms"].clone(),
                e.numbers["old_p95_ms"].clone()
            ),
            (260.0.into(), 100.0.into())
        );
        // Slower than the old p95, within the delta: kept.
        let s = watch(
            &promoted(Policy::default()),
            seen(200, 0, 190.0),
            PROMOTED + 9_000,
        );
        assert!(s.transition.events.is_empty());
    }

    #[test]
    fn the_feedback_rule() {
        let labelled = |n: u64, ones: u64| FeedbackStats {
            observations: n,
            ones,
            rate: ones as f64 / n as f64,
            newest_age_seconds: Some(1),
        };
        let mut old = old();
        old.feedback.insert("accuracy".into(), labelled(500, 425));
        let d = promoted_with(Policy::default(), &old);
        let mut w = seen(200, 2, 100.0);
        w.stats
            .feedback
            .insert("accuracy".into(), labelled(100, 60));
        let s = watch(&d, w.clone(), PROMOTED + 60_000);
        assert_eq!(kinds(&s.transition), ["reverted_to_pinned"]);
        let e = &s.transition.events[0];
        assert!(
            e.reason.contains("feedback: v2 since its promotion"),
            "{}",
            e.reason
        );
        assert!(e.reason.contains(
            "accuracy: 0.600 on the canary over 100 observations vs 0.850 on the baseline over 500"
        ));
        assert_eq!(e.numbers["rule"], "feedback");
        // As accurate as before: kept.
        w.stats
            .feedback
            .insert("accuracy".into(), labelled(100, 86));
        assert!(watch(&d, w, PROMOTED + 60_000).transition.events.is_empty());
    }

    #[test]
    fn the_guard_waits_for_evidence_the_bare_rule_does_not() {
        // 2 errors in 20 (10 %) against 1 %: beyond 5 pp on its face,
        // not established on 20 requests.
        let guarded = watch(
            &promoted(Policy::default()),
            seen(20, 2, 100.0),
            PROMOTED + 3_000,
        );
        assert!(guarded.transition.events.is_empty());
        let h = watch_health(
            &guarded.transition.deployment,
            &Observations {
                watched: Some(seen(20, 2, 100.0)),
                ..Observations::default()
            },
            PROMOTED + 3_000,
        )
        .unwrap();
        assert_eq!(h.verdict, VerdictKind::Healthy);
        let bare = watch(&promoted(seed()), seen(20, 2, 100.0), PROMOTED + 3_000);
        assert_eq!(kinds(&bare.transition), ["reverted_to_pinned"]);
        // Fewer than min_requests: never judged.
        let few = watch(&promoted(seed()), seen(19, 19, 100.0), PROMOTED + 3_000);
        assert!(few.transition.events.is_empty());
    }

    #[test]
    fn watch_seconds_zero_turns_the_watch_off() {
        let mut policy = Policy::default();
        policy.post_promotion.watch_seconds = 0;
        let d = promoted(policy);
        assert!(d.watch.is_none());
        let s = watch(&d, seen(200, 150, 100.0), PROMOTED + 5_000);
        assert!(s.transition.events.is_empty());
    }

    #[test]
    fn without_auto_rollback_a_breach_is_reported_once() {
        let d = promoted(Policy {
            auto_rollback: false,
            ..Policy::default()
        });
        let s = watch(&d, seen(200, 60, 100.0), PROMOTED + 5_000);
        assert_eq!(kinds(&s.transition), ["health_check_failed"]);
        let e = &s.transition.events[0];
        assert!(
            e.reason
                .contains("automatic rollback is off, v2 keeps serving"),
            "{}",
            e.reason
        );
        let d = s.transition.deployment;
        assert_eq!(d.baseline.version, "v2");
        let again = watch(&d, seen(300, 90, 100.0), PROMOTED + 10_000);
        assert!(again.transition.events.is_empty());
        assert!(again.transition.deployment.watch.unwrap().breach_reported);
    }

    #[test]
    fn the_watch_survives_a_restart() {
        let d = promoted(Policy::default());
        let stored = serde_json::to_string(&d).unwrap();
        let mut back: Deployment = serde_json::from_str(&stored).unwrap();
        back.versions = d.versions.clone(); // the registry has its own table
        let back = back.resumed();
        assert_eq!(back.watch, d.watch);
        let s = watch(&back, seen(200, 60, 100.0), PROMOTED + 30_000);
        assert_eq!(kinds(&s.transition), ["reverted_to_pinned"]);
        // A state stored before the watch existed reads without one.
        let mut old: serde_json::Value = serde_json::from_str(&stored).unwrap();
        old.as_object_mut().unwrap().remove("watch");
        let old: Deployment = serde_json::from_value(old).unwrap();
        assert!(old.watch.is_none());
    }

    /// One report of `proxy` on the new baseline v2 at `second`, counted as
    /// the controller counts it: into the whole window and the proxy's own.
    fn served(w: &mut crate::window::Windows, proxy: &str, second: u64, ok: u64, errors: u64) {
        use crate::window::{Reported, bucket_seconds, proxy_bucket_seconds, twenty_ms};
        let (counts, h) = twenty_ms(ok, errors);
        let window = Policy::default().window_seconds;
        let seconds = (
            second - second % bucket_seconds(window),
            second - second % proxy_bucket_seconds(window),
        );
        let r = Reported::requests(&counts, &h);
        let role = coalmine_protocol::Role::Baseline;
        w.add_from(proxy, "heart-prod", role, "v2", seconds, &r);
    }

    /// A minute after the promotion: `proxies` each serve v2 100 requests
    /// a second, the given number of them failing (v1 failed 1 %), and
    /// `forger` makes up requests in the last second (more than any other
    /// proxy's): 7 000 failing, or 200 000 successful; the engine's step
    /// and the watch's health then.
    fn minute_with(proxies: &[(&str, u64)], forger: Option<(&str, bool)>) -> (Step, WatchHealth) {
        let d = promoted(Policy::default());
        let mut w = crate::window::Windows::default();
        let first = PROMOTED / 1000 + 1;
        for s in first..first + 60 {
            for &(p, failing) in proxies {
                served(&mut w, p, s, 100 - failing, failing);
            }
        }
        match forger {
            Some((f, true)) => served(&mut w, f, first + 59, 0, 7000),
            Some((f, false)) => served(&mut w, f, first + 59, 200_000, 0),
            None => {}
        }
        let now = (first + 59) * 1000 + 500;
        let obs = crate::observe::observe(&w, &d, now);
        let health = watch_health(&d, &obs, now).unwrap();
        (super::super::step(&d, &obs, now), health)
    }

    #[test]
    fn one_proxy_cannot_alone_revert_a_promoted_version() {
        let (s, health) = minute_with(&[("a", 1), ("b", 1)], Some(("c", true)));
        assert_eq!(kinds(&s.transition), ["health_degraded"], "reported");
        let e = &s.transition.events[0];
        assert!(
            e.reason
                .starts_with("post-promotion watch of v2: proxy c (7000 of 19000"),
            "{}",
            e.reason
        );
        let next = &s.transition.deployment;
        assert_eq!(next.baseline.version, "v2");
        assert!(next.watch.as_ref().is_some_and(|w| w.hold_reported));
        // Once per watch.
        let obs = Observations {
            watched: Some(Watched {
                others: Some(Box::new(crate::observe::WatchedOthers {
                    without: crate::window::Loudest {
                        proxy: "c".into(),
                        requests: 7000,
                        total: 19000,
                        proxies: 3,
                    },
                    watched: seen(12000, 120, 20.0),
                })),
                ..seen(19000, 7120, 20.0)
            }),
            ..Observations::default()
        };
        let again = super::super::step(next, &obs, PROMOTED + 90_000);
        assert!(again.transition.events.is_empty(), "once");
        assert_eq!(health.verdict, VerdictKind::Degraded, "{health:?}");
        let r = &health.reasons[0];
        assert_eq!(r.code, crate::verdict::ReasonCode::ProxiesDisagree);
        assert!(
            r.message.starts_with(
                "proxy c (7000 of 19000 requests of v2 in its watch's window) alone would revert v2 (CRITICAL"
            ) && r.message.contains("the other 2 proxies say HEALTHY"),
            "{}",
            r.message
        );
        assert_eq!(r.numbers["proxy_requests"], 7000);
        assert_eq!(r.numbers["without_proxy"], "HEALTHY");
    }

    #[test]
    fn a_breach_every_proxy_sees_or_the_only_proxy_reports_reverts() {
        // The same failures from the only proxy serving v2.
        let (s, health) = minute_with(&[], Some(("c", true)));
        assert_eq!(health.verdict, VerdictKind::Critical);
        assert_eq!(kinds(&s.transition), ["reverted_to_pinned"]);
        // 30 % failing on every proxy: they agree.
        let (s, _) = minute_with(&[("a", 30), ("b", 30), ("c", 30)], None);
        assert_eq!(kinds(&s.transition), ["reverted_to_pinned"]);
        // Healthy everywhere: nothing to hold.
        let (s, health) = minute_with(&[("a", 1), ("b", 1)], None);
        assert_eq!(health.verdict, VerdictKind::Healthy);
        assert!(s.transition.events.is_empty());
    }

    #[test]
    fn one_proxy_cannot_drown_a_breach_the_others_see() {
        // a and b see 30 % of v2 failing; c makes up 200 000 successes.
        let (s, health) = minute_with(&[("a", 30), ("b", 30)], Some(("c", false)));
        assert_eq!(health.verdict, VerdictKind::Degraded, "{health:?}");
        let r = &health.reasons[0];
        assert!(
            r.message.contains("alone would keep v2 (HEALTHY")
                && r.message.contains("the other 2 proxies say CRITICAL"),
            "{}",
            r.message
        );
        // Held, not reverted on the others' word alone, and reported.
        assert_eq!(kinds(&s.transition), ["health_degraded"]);
        assert_eq!(s.transition.deployment.baseline.version, "v2");
    }

    #[test]
    fn a_new_canary_or_a_rollback_ends_the_watch() {
        let mut d = promoted(Policy::default());
        d.versions.push(crate::engine::Version {
            version: "v3".into(),
            cluster: "heart-v3".into(),
            state: VersionState::Registered,
            healthy: true,
            pinned: false,
            metadata: serde_json::json!({}),
            registered_at: T0,
        });
        let start = Command::StartCanary {
            version: "v3".into(),
            percent: None,
            steps: None,
            bake_seconds: None,
            schedule: None,
        };
        let t = command(&d, start, OPERATOR, PROMOTED + 5_000).unwrap();
        assert!(t.deployment.watch.is_none());
        let t = command(
            &d,
            Command::Rollback { reason: None },
            OPERATOR,
            PROMOTED + 5_000,
        )
        .unwrap();
        assert!(t.deployment.watch.is_none());
        assert_eq!(t.deployment.baseline.version, "v1");
    }
}
