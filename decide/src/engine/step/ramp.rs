//! The exponential ramp through the engine: the schedule is expanded into
//! the canary's planned shares when it starts, and the same stepping as
//! for `steps` climbs them on a fake clock.

use super::super::testing::*;
use super::super::{Command, Deployment, OPERATOR, Refusal, command, create};
use crate::policy::Policy;
use coalmine_protocol::Bps;
use serde_json::{Value, json};

/// 1 → 2 → 4 → … → 64 → 100 %, a minute at each share.
fn doubling() -> Policy {
    serde_json::from_value(json!({
        "schedule": {"exponential": {"start": 1, "factor": 2, "every_seconds": 60, "max": 100}}
    }))
    .unwrap()
}

fn share(d: &Deployment) -> f64 {
    d.canary.as_ref().map_or(0.0, |c| c.bps.as_percent())
}

/// heart-prod serving v1 with v2 registered, no canary yet.
fn registered(policy: Policy) -> Deployment {
    let d = create("heart-prod", target("v1"), policy, OPERATOR, T0)
        .unwrap()
        .deployment;
    let reg = Command::RegisterVersion {
        version: "v2".into(),
        cluster: "heart-v2".into(),
        metadata: json!({}),
    };
    command(&d, reg, OPERATOR, T0).unwrap().deployment
}

fn start(percent: Option<f64>, steps: Option<Vec<f64>>, bake: Option<u64>, s: Value) -> Command {
    Command::StartCanary {
        version: "v2".into(),
        percent,
        steps,
        bake_seconds: bake,
        schedule: (!s.is_null()).then(|| serde_json::from_value(s).unwrap()),
    }
}

#[test]
fn an_exponential_canary_doubles_after_each_healthy_bake_then_promotes() {
    let mut d = with_canary(doubling());
    let c = d.canary.as_ref().unwrap();
    let planned: Vec<f64> = c.steps.iter().map(|s| s.as_percent()).collect();
    assert_eq!(planned, [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 100.0]);
    assert_eq!((c.bps, c.bake_seconds), (Bps::new(100).unwrap(), 60));
    let (b, c) = good();
    // Healthy from T0 + 1 s: each share is left a minute after it was set.
    let s = step(&d, &b, &c, T0 + 1_000);
    assert!(s.transition.events.is_empty());
    d = s.transition.deployment;
    let mut advanced = Vec::new();
    for i in 1..=7 {
        let due = T0 + 1_000 + i * 60_000;
        let early = step(&d, &b, &c, due - 1);
        assert!(early.transition.events.is_empty(), "not baked at {i}");
        let s = step(&d, &b, &c, due);
        assert_eq!(kinds(&s.transition), ["step_advanced"], "at {i}");
        let n = &s.transition.events[0].numbers;
        advanced.push((n["from_percent"].clone(), n["to_percent"].clone()));
        d = s.transition.deployment;
    }
    let expected: Vec<(Value, Value)> = [1, 2, 4, 8, 16, 32, 64, 100]
        .windows(2)
        .map(|w| (json!(f64::from(w[0])), json!(f64::from(w[1]))))
        .collect();
    assert_eq!(advanced, expected);
    assert_eq!(share(&d), 100.0);
    let at_full = T0 + 1_000 + 7 * 60_000;
    assert!(
        step(&d, &b, &c, at_full + 59_999)
            .transition
            .events
            .is_empty()
    );
    let s = step(&d, &b, &c, at_full + 60_000);
    assert_eq!(kinds(&s.transition), ["promoted"]);
    assert_eq!(s.transition.deployment.baseline.version, "v2");
}

#[test]
fn below_100_the_canary_is_promoted_from_max() {
    let policy: Policy = serde_json::from_value(json!({
        "schedule": {"exponential": {"start": 10, "factor": 3, "every_seconds": 0, "max": 50}}
    }))
    .unwrap();
    let mut d = with_canary(policy);
    let (b, c) = good();
    let mut seen = Vec::new();
    for i in 1..=4 {
        let s = step(&d, &b, &c, T0 + i * 1_000);
        seen.extend(kinds(&s.transition));
        d = s.transition.deployment;
    }
    assert_eq!(seen, ["step_advanced", "step_advanced", "promoted"]);
}

#[test]
fn degraded_holds_an_exponential_canary() {
    let d = with_canary(doubling());
    let (b, c) = good();
    let d = step(&d, &b, &c, T0 + 1_000).transition.deployment;
    let d = step(&d, &b, &c, T0 + 61_000).transition.deployment;
    assert_eq!(share(&d), 2.0);
    let mut d = d;
    for at in [121_000, 200_000, 400_000] {
        let s = step(&d, &stats(1000, 0, 50.0), &stats(200, 6, 50.0), T0 + at);
        let want: &[&str] = if at == 121_000 {
            &["health_degraded"]
        } else {
            &[]
        };
        assert_eq!(kinds(&s.transition), want);
        d = s.transition.deployment;
        assert_eq!(share(&d), 2.0, "held at {at}");
    }
}

#[test]
fn the_start_request_may_bring_its_own_schedule() {
    let d = registered(Policy::default());
    let exp = json!({"exponential": {"start": 2, "factor": 4, "every_seconds": 30}});
    // percent, when given, is the first share; the ramp goes on above it.
    let t = command(&d, start(Some(5.0), None, None, exp.clone()), OPERATOR, T0).unwrap();
    let c = t.deployment.canary.unwrap();
    assert_eq!((c.bps.as_percent(), c.bake_seconds), (5.0, 30));
    assert_eq!(c.next_step(), Bps::new(800));
    // Not together with steps or bake_seconds.
    for (steps, bake) in [(Some(vec![10.0, 100.0]), None), (None, Some(5))] {
        let err = command(&d, start(None, steps, bake, exp.clone()), OPERATOR, T0).unwrap_err();
        assert!(
            matches!(&err, Refusal::Invalid(m) if m.contains("schedule replaces steps and bake_seconds")),
            "{err}"
        );
    }
    let bad = json!({"exponential": {"factor": 1.0001}});
    let err = command(&d, start(None, None, None, bad), OPERATOR, T0).unwrap_err();
    assert!(
        matches!(&err, Refusal::Invalid(m) if m.contains("schedule.exponential.factor") && m.contains("would take")),
        "{err}"
    );
    // A request's steps win over the policy's schedule, with its bake.
    let d = registered(doubling());
    let t = command(
        &d,
        start(None, Some(vec![30.0, 100.0]), None, Value::Null),
        OPERATOR,
        T0,
    );
    let c = t.unwrap().deployment.canary.unwrap();
    assert_eq!((c.steps.len(), c.bake_seconds), (2, 60));
}
