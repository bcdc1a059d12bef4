//! The engine's own decision for a deployment with a canary, one
//! evaluation at a time: roll back on CRITICAL, hold on DEGRADED, step up
//! after a healthy bake and promote at the last step. Without a canary,
//! the post-promotion watch (`watch.rs`).

use super::model::event;
use super::model::{
    Deployment, ENGINE, Event, EventKind, HealthMark, Millis, RECOVERY_CHECKS, Step, Transition,
};
use super::watch::{on_promotion, watch_step};
use crate::observe::Observations;
use crate::rules::evaluate;
use crate::verdict::{ReasonCode, Recommendation, Verdict, VerdictKind};
use serde_json::{Map, Value, json};

/// One evaluation: the engine's automatic decision for a deployment. The
/// verdict it was made on comes with it, so nothing evaluates twice.
pub fn step(d: &Deployment, obs: &Observations, now: Millis) -> Step {
    let mut next = d.clone();
    let Some(share) = d.canary.as_ref().map(|c| c.bps.as_percent()) else {
        return watch_step(d, obs, now);
    };
    let verdict = evaluate(&d.policy, obs);
    let mut events: Vec<Event> = report_mismatch(&mut next, &verdict).into_iter().collect();
    let mut numbers = verdict.numbers();
    numbers.insert("canary_percent".into(), json!(share));
    numbers.insert("baseline".into(), json!(obs.baseline));
    numbers.insert("canary".into(), json!(obs.canary));
    numbers.insert("window_seconds".into(), json!(d.policy.window_seconds));
    let why = Why {
        summary: verdict.summary(),
        numbers,
        now,
    };
    match verdict.verdict {
        VerdictKind::Critical => {
            unhealthy(&mut next);
            on_critical(&mut next, why, &mut events);
        }
        VerdictKind::Degraded => {
            unhealthy(&mut next);
            on_degraded(&mut next, why, &mut events);
        }
        VerdictKind::Healthy => {
            let promotable = verdict.recommendation == Recommendation::Promote;
            on_healthy(&mut next, promotable, why, &mut events);
        }
        VerdictKind::InsufficientData => restart_bake(&mut next),
    }
    // A promotion: the shadow is compared with another baseline from now,
    // and the new baseline is watched against the old one's window.
    next.shadow_follows_baseline(&d.baseline, now);
    on_promotion(d, &mut next, &obs.baseline, now);
    Step {
        transition: Transition {
            deployment: next,
            events,
        },
        verdict: Some(verdict),
    }
}

/// What an evaluation's events say: the verdict's reasons as one sentence,
/// the numbers behind them, and when.
struct Why {
    summary: String,
    numbers: Map<String, Value>,
    now: Millis,
}

/// A sample-ratio mismatch is an event once per share.
fn report_mismatch(next: &mut Deployment, verdict: &Verdict) -> Option<Event> {
    let srm = verdict.reason(ReasonCode::SampleRatioMismatch)?;
    let c = next.canary.as_mut().filter(|c| !c.mismatch_reported)?;
    c.mismatch_reported = true;
    Some(event(
        EventKind::SampleRatioMismatch,
        ENGINE,
        srm.message.clone(),
        Value::Object(srm.numbers.clone()),
    ))
}

/// Health checks start over: the canary must be healthy for a whole bake.
fn restart_bake(next: &mut Deployment) {
    if let Some(c) = next.canary.as_mut() {
        c.healthy_since = None;
    }
}

/// A verdict other than HEALTHY: recovery counts from zero again.
fn unhealthy(next: &mut Deployment) {
    if let Some(c) = next.canary.as_mut() {
        c.healthy_streak = 0;
    }
    restart_bake(next);
}

/// CRITICAL: reported once on entry, and the canary rolled back unless
/// automatic rollback is off.
fn on_critical(next: &mut Deployment, why: Why, events: &mut Vec<Event>) {
    if next.health != HealthMark::Failed {
        next.health = HealthMark::Failed;
        events.push(event(
            EventKind::HealthCheckFailed,
            ENGINE,
            why.summary.clone(),
            Value::Object(why.numbers.clone()),
        ));
    }
    restart_bake(next);
    if !next.policy.auto_rollback {
        return;
    }
    events.push(event(
        EventKind::AutoRollbackTriggered,
        ENGINE,
        format!("CRITICAL: {}", why.summary),
        Value::Object(why.numbers.clone()),
    ));
    events.extend(next.roll_back_canary(why.now, ENGINE, "automatic rollback", why.numbers));
}

/// DEGRADED: hold the current share; reported once on entry.
fn on_degraded(next: &mut Deployment, why: Why, events: &mut Vec<Event>) {
    if next.health == HealthMark::Ok {
        let share = next.canary.as_ref().map_or(0.0, |c| c.bps.as_percent());
        events.push(event(
            EventKind::HealthDegraded,
            ENGINE,
            format!("holding at {share} %: {}", why.summary),
            Value::Object(why.numbers),
        ));
    }
    next.health = HealthMark::Degraded;
    restart_bake(next);
}

/// HEALTHY: recovery is reported once, after [`RECOVERY_CHECKS`] healthy
/// verdicts in a row (until then the canary still holds); after a healthy
/// bake (not paused, not cooling down) a promotable canary steps up, and at
/// the last step is promoted when the policy allows.
fn on_healthy(next: &mut Deployment, promotable: bool, why: Why, events: &mut Vec<Event>) {
    if next.health != HealthMark::Ok {
        let streak = next.canary.as_mut().map_or(RECOVERY_CHECKS, |c| {
            c.healthy_streak = c.healthy_streak.saturating_add(1);
            c.healthy_streak
        });
        if streak < RECOVERY_CHECKS {
            restart_bake(next);
            return;
        }
        next.health = HealthMark::Ok;
        events.push(event(
            EventKind::HealthRecovered,
            ENGINE,
            why.summary.clone(),
            Value::Object(why.numbers.clone()),
        ));
    }
    let cooling = next.in_cooldown(why.now).is_some();
    let auto_promote = next.policy.auto_promote;
    let Some(c) = next.canary.as_mut() else {
        return;
    };
    let since = *c.healthy_since.get_or_insert(why.now);
    let bake_ms = c.bake_seconds.saturating_mul(1000);
    let baked = why.now >= c.step_since.max(since).saturating_add(bake_ms);
    let may_advance = promotable && baked && !c.paused && !cooling;
    if !may_advance {
        return;
    }
    let Some(to) = c.next_step() else {
        if auto_promote {
            let reason = format!("healthy at the last step: {}", why.summary);
            events.extend(next.promote(ENGINE, &reason, why.numbers));
        }
        return;
    };
    let from = c.bps;
    c.bps = to;
    c.step_since = why.now;
    c.mismatch_reported = false;
    let (from, to) = (from.as_percent(), to.as_percent());
    let mut numbers = why.numbers;
    numbers.insert("from_percent".into(), json!(from));
    numbers.insert("to_percent".into(), json!(to));
    events.push(event(
        EventKind::StepAdvanced,
        ENGINE,
        format!(
            "canary {} stepped from {from} % to {to} % after {} s healthy: {}",
            c.target.version, c.bake_seconds, why.summary
        ),
        Value::Object(numbers),
    ));
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{Command, ENGINE, OPERATOR, VersionState, command, create};
    use crate::observe::Observations;
    use crate::policy::Policy;
    use crate::verdict::VerdictKind;
    use coalmine_protocol::Bps;
    use serde_json::json;

    #[test]
    fn critical_by_error_rate_rolls_back() {
        let d = with_canary(Policy::default());
        let s = step(&d, &stats(1000, 0, 50.0), &stats(100, 25, 50.0), T0 + 5000);
        assert_eq!(
            kinds(&s.transition),
            [
                "health_check_failed",
                "auto_rollback_triggered",
                "rolled_back"
            ]
        );
        let next = &s.transition.deployment;
        assert!(next.canary.is_none());
        assert_eq!(next.split().canary_bps, Bps::ZERO);
        let v2 = next.version("v2").unwrap();
        assert_eq!((v2.state, v2.healthy), (VersionState::RolledBack, false));
        assert_eq!(next.cooldown_until, Some(T0 + 5000 + 120_000));
        let failed = &s.transition.events[0];
        assert_eq!(failed.actor, ENGINE);
        assert_eq!(failed.numbers["canary_error_rate"], json!(0.25));
        assert!(failed.reason.contains("25.0 %"), "{}", failed.reason);
    }

    #[test]
    fn critical_by_latency_rolls_back() {
        let d = with_canary(Policy::default());
        let obs = Observations {
            canary_slow: 40,
            ..Observations::of(stats(1000, 0, 80.0), stats(100, 0, 250.0))
        };
        let s = super::step(&d, &obs, T0 + 5000);
        assert_eq!(
            kinds(&s.transition),
            [
                "health_check_failed",
                "auto_rollback_triggered",
                "rolled_back"
            ]
        );
        assert!(s.transition.events[0].reason.contains("p95"));
    }

    #[test]
    fn critical_without_auto_rollback_only_reports_once() {
        let d = with_canary(Policy {
            auto_rollback: false,
            ..Policy::default()
        });
        let s = step(&d, &stats(1000, 0, 50.0), &stats(100, 25, 50.0), T0 + 5000);
        assert_eq!(kinds(&s.transition), ["health_check_failed"]);
        let d = s.transition.deployment;
        assert!(d.canary.is_some());
        let again = step(
            &d,
            &stats(1000, 0, 50.0),
            &stats(100, 25, 50.0),
            T0 + 10_000,
        );
        assert!(again.transition.events.is_empty(), "once on entry");
    }

    #[test]
    fn degraded_holds_and_recovers_once() {
        let d = with_canary(Policy {
            bake_seconds: 0,
            ..Policy::default()
        });
        let s = step(&d, &stats(1000, 0, 50.0), &stats(200, 6, 50.0), T0 + 5000);
        assert_eq!(kinds(&s.transition), ["health_degraded"]);
        assert_eq!(
            s.transition.deployment.canary.as_ref().unwrap().bps,
            Bps::new(2000).unwrap(),
            "held"
        );
        let d = s.transition.deployment;
        let s = step(&d, &stats(1000, 0, 50.0), &stats(200, 6, 50.0), T0 + 10_000);
        assert!(s.transition.events.is_empty());
        let mut d = s.transition.deployment;
        let (b, c) = good();
        // Recovered after three healthy checks in a row, not before.
        for at in [15_000, 16_000] {
            let s = step(&d, &b, &c, T0 + at);
            assert!(s.transition.events.is_empty(), "{:?}", kinds(&s.transition));
            d = s.transition.deployment;
        }
        let s = step(&d, &b, &c, T0 + 17_000);
        assert_eq!(kinds(&s.transition), ["health_recovered", "step_advanced"]);
    }

    #[test]
    fn a_canary_hovering_at_a_threshold_reports_once() {
        let mut d = with_canary(Policy {
            bake_seconds: 0,
            ..Policy::default()
        });
        let (b, c) = good();
        let mut all = Vec::new();
        for i in 0..100u64 {
            let s = if i % 2 == 0 {
                step(
                    &d,
                    &stats(1000, 0, 50.0),
                    &stats(200, 6, 50.0),
                    T0 + 5000 + i * 1000,
                )
            } else {
                step(&d, &b, &c, T0 + 5000 + i * 1000)
            };
            all.extend(kinds(&s.transition));
            d = s.transition.deployment;
        }
        assert_eq!(all, ["health_degraded"]);
    }

    #[test]
    fn healthy_steps_after_bake_then_promotes() {
        let d = with_canary(Policy {
            bake_seconds: 60,
            ..Policy::default()
        });
        let (b, c) = good();
        // Healthy from T0+5 s; not baked before T0+65 s.
        let s = step(&d, &b, &c, T0 + 5_000);
        assert!(s.transition.events.is_empty());
        let d = s.transition.deployment;
        let s = step(&d, &b, &c, T0 + 64_000);
        assert!(s.transition.events.is_empty(), "{:?}", kinds(&s.transition));
        let d = s.transition.deployment;
        let s = step(&d, &b, &c, T0 + 65_000);
        assert_eq!(kinds(&s.transition), ["step_advanced"]);
        assert_eq!(
            s.transition.deployment.canary.as_ref().unwrap().bps,
            Bps::new(5000).unwrap()
        );
        let d = s.transition.deployment;
        let s = step(&d, &b, &c, T0 + 125_000);
        assert_eq!(kinds(&s.transition), ["step_advanced"]);
        let d = s.transition.deployment;
        assert_eq!(d.canary.as_ref().unwrap().bps, Bps::FULL);
        let s = step(&d, &b, &c, T0 + 185_000);
        assert_eq!(kinds(&s.transition), ["promoted"]);
        let d = s.transition.deployment;
        assert_eq!(d.baseline.version, "v2");
        assert!(d.canary.is_none());
        assert_eq!(d.pinned.as_ref().unwrap().version, "v1");
        assert_eq!(d.version("v1").unwrap().state, VersionState::Retired);
        assert!(d.version("v1").unwrap().pinned && !d.version("v2").unwrap().pinned);
        assert_eq!(d.version("v2").unwrap().state, VersionState::Production);
    }

    #[test]
    fn a_bad_verdict_restarts_the_bake() {
        let d = with_canary(Policy {
            bake_seconds: 60,
            ..Policy::default()
        });
        let (b, c) = good();
        let d = step(&d, &b, &c, T0 + 1_000).transition.deployment;
        let d = step(&d, &b, &stats(5, 0, 100.0), T0 + 50_000)
            .transition
            .deployment;
        let d = step(&d, &b, &c, T0 + 55_000).transition.deployment;
        let s = step(&d, &b, &c, T0 + 100_000);
        assert!(s.transition.events.is_empty(), "healthy only since 55 s");
        assert_eq!(
            kinds(&step(&d, &b, &c, T0 + 115_000).transition),
            ["step_advanced"]
        );
    }

    #[test]
    fn healthy_but_not_promotable_continues() {
        let d = with_canary(Policy {
            bake_seconds: 0,
            ..Policy::default()
        });
        // Too few canary requests, or more errors than the baseline.
        for c in [stats(50, 0, 100.0), stats(200, 2, 100.0)] {
            let s = step(&d, &stats(1000, 5, 100.0), &c, T0 + 5000);
            assert!(s.transition.events.is_empty());
            assert_eq!(s.verdict.unwrap().verdict, VerdictKind::Healthy);
        }
    }

    #[test]
    fn insufficient_data_does_nothing() {
        let d = with_canary(Policy {
            bake_seconds: 0,
            ..Policy::default()
        });
        let s = step(&d, &stats(1000, 0, 50.0), &stats(19, 5, 50.0), T0 + 5000);
        assert!(s.transition.events.is_empty());
        assert_eq!(s.verdict.unwrap().verdict, VerdictKind::InsufficientData);
        assert_eq!(s.transition.deployment.canary, d.canary);
    }

    #[test]
    fn slo_breach_rolls_back() {
        let mut policy = Policy::default();
        policy.slo.max_p95_ms = Some(120.0);
        let d = with_canary(policy);
        let s = step(&d, &stats(1000, 0, 119.0), &stats(100, 0, 130.0), T0 + 5000);
        assert_eq!(
            kinds(&s.transition),
            [
                "health_check_failed",
                "auto_rollback_triggered",
                "rolled_back"
            ]
        );
    }

    #[test]
    fn cooldown_blocks_automatic_steps() {
        // A canary started before a revert's cooldown ended (allowed only
        // through an earlier start) must not step during cooldown.
        let mut d = with_canary(Policy {
            bake_seconds: 0,
            ..Policy::default()
        });
        d.cooldown_until = Some(T0 + 100_000);
        let (b, c) = good();
        assert!(step(&d, &b, &c, T0 + 50_000).transition.events.is_empty());
        assert_eq!(
            kinds(&step(&d, &b, &c, T0 + 100_000).transition),
            ["step_advanced"]
        );
    }

    #[test]
    fn pause_stops_steps_but_not_rollback() {
        let d = with_canary(Policy {
            bake_seconds: 0,
            ..Policy::default()
        });
        let paused = command(
            &d,
            Command::Pause {
                reason: Some("investigating".into()),
            },
            OPERATOR,
            T0,
        )
        .unwrap();
        assert_eq!(paused.events[0].reason, "investigating");
        let d = paused.deployment;
        let (b, c) = good();
        assert!(step(&d, &b, &c, T0 + 10_000).transition.events.is_empty());
        let s = step(
            &d,
            &stats(1000, 0, 50.0),
            &stats(100, 25, 50.0),
            T0 + 10_000,
        );
        assert_eq!(
            kinds(&s.transition),
            [
                "health_check_failed",
                "auto_rollback_triggered",
                "rolled_back"
            ]
        );
        let resumed = command(&d, Command::Resume { reason: None }, OPERATOR, T0 + 20_000)
            .unwrap()
            .deployment;
        assert_eq!(
            kinds(&step(&resumed, &b, &c, T0 + 20_000).transition),
            ["step_advanced"]
        );
    }

    #[test]
    fn a_sample_ratio_mismatch_is_an_event_once_per_step() {
        let d = with_canary(Policy::default());
        let (b, c) = good();
        let obs = Observations {
            step_canary_requests: 3000,
            step_requests: 10_000,
            configured_share: 0.2,
            ..Observations::of(b, c)
        };
        let s = super::step(&d, &obs, T0 + 100_000);
        assert_eq!(
            kinds(&s.transition),
            ["sample_ratio_mismatch"],
            "reported, and no step while it lasts"
        );
        let d = s.transition.deployment;
        assert!(
            super::step(&d, &obs, T0 + 101_000)
                .transition
                .events
                .is_empty()
        );
    }

    #[test]
    fn no_canary_no_verdict() {
        let d = create("d", target("v1"), Policy::default(), OPERATOR, T0)
            .unwrap()
            .deployment;
        let s = step(&d, &stats(100, 0, 1.0), &stats(0, 0, 0.0), T0);
        assert!(s.verdict.is_none() && s.transition.events.is_empty());
        assert_eq!(s.transition.deployment, d);
    }
}

#[cfg(test)]
mod ramp;
