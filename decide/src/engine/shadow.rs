//! The shadow in the state machine: an operator starts, changes and stops
//! it; a canary of its version, or its version becoming the baseline, ends
//! it; and [`shadow_step`] reports each field that disagrees with the
//! answers users got, once per field and run.
//!
//! A run begins when a version starts shadowing (again, or in place of
//! another) and when the baseline it is compared with changes; its
//! `started_at` names it, and its window holds only what was reported
//! since.
//!
//! A shadow never answers a user, so nothing here touches the split the
//! users are served by, and no fail-safe applies to it.

use super::model::{
    Deployment, ENGINE, Event, EventKind, Millis, Refusal, Shadow, Transition, event,
};
use crate::rules::shadow::{ShadowHealth, ShadowJudgement, judge};
use crate::window::ShadowWindowStats;
use coalmine_protocol::{Bps, Target};
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// The share copied when a start leaves it out: every request.
pub const DEFAULT_SHADOW_PERCENT: f64 = 100.0;

/// Why a shadow ended without an operator stopping it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ShadowEnd {
    /// Its version was started as the canary: it answers users now.
    BecameCanary,
    /// Its version became the baseline (a revert to the pinned version).
    BecameBaseline,
}

impl ShadowEnd {
    fn cause(self) -> &'static str {
        match self {
            ShadowEnd::BecameCanary => "became_canary",
            ShadowEnd::BecameBaseline => "became_baseline",
        }
    }

    fn sentence(self, version: &str) -> String {
        match self {
            ShadowEnd::BecameCanary => {
                format!("shadow {version} stopped: it became the canary, so it answers users now")
            }
            ShadowEnd::BecameBaseline => format!(
                "shadow {version} stopped: it became the baseline, so it answers every user now"
            ),
        }
    }
}

fn stopped(shadow: &Shadow, actor: &str, reason: String, cause: &str) -> Event {
    event(
        EventKind::ShadowStopped,
        actor,
        reason,
        json!({"version": shadow.target.version, "percent": shadow.bps.as_percent(), "cause": cause}),
    )
}

impl Deployment {
    /// Ends the shadow if it is of `version`: the `shadow_stopped` event.
    pub(super) fn end_shadow_of(
        &mut self,
        version: &str,
        end: ShadowEnd,
        actor: &str,
    ) -> Option<Event> {
        let shadow = self.shadow.take_if(|s| s.target.version == version)?;
        let reason = end.sentence(version);
        Some(stopped(&shadow, actor, reason, end.cause()))
    }

    /// After a change of baseline (a promotion, a revert to the pinned
    /// version) the running shadow starts a new run at `now`: its answers
    /// were compared with the old baseline's until then, and one window
    /// must not mix two baselines. Its window starts over (the run's
    /// `started_at` moves, and the controller keeps a series per run) and
    /// disagreements are reported again. No event: the promotion's or
    /// revert's says what changed.
    pub(super) fn shadow_follows_baseline(&mut self, before: &Target, now: Millis) {
        if self.baseline == *before {
            return;
        }
        if let Some(s) = self.shadow.as_mut() {
            // Strictly later, so the run is a new one even within a millisecond.
            s.started_at = now.max(s.started_at.saturating_add(1));
            s.disagreed.clear();
        }
    }

    /// The shadow in health: its window beside both roles, judged by the
    /// policy (none without a shadow). `stats` are its version's.
    pub fn shadow_health(&self, stats: &ShadowWindowStats) -> Option<ShadowHealth> {
        let s = self.shadow.as_ref()?;
        let judged = judge(&self.policy, stats);
        Some(ShadowHealth::new(
            &s.target.version,
            s.bps.as_percent(),
            stats,
            judged,
        ))
    }
}

/// Starts a shadow of `version` (or changes the running one's version or
/// share): refused for a version that is not registered, is the baseline
/// or the canary, or was rolled back. The same version and share again
/// changes nothing.
pub(super) fn start_shadow(
    d: &mut Deployment,
    version: &str,
    percent: Option<f64>,
    actor: &str,
    now: u64,
) -> Result<Vec<Event>, Refusal> {
    let percent = percent.unwrap_or(DEFAULT_SHADOW_PERCENT);
    let bps = Bps::parse_percent(percent).map_err(|m| Refusal::Invalid(format!("percent {m}")))?;
    if bps == Bps::ZERO {
        return Err(Refusal::Invalid(format!(
            "percent must be above 0, got {percent}; stop the shadow instead"
        )));
    }
    let v = d.version(version).ok_or_else(|| {
        Refusal::Conflict(format!(
            "version {version} is not registered for {}; register it first",
            d.name
        ))
    })?;
    if version == d.baseline.version {
        return Err(Refusal::Conflict(format!(
            "{version} is the baseline; it already answers every user"
        )));
    }
    if d.canary
        .as_ref()
        .is_some_and(|c| c.target.version == version)
    {
        return Err(Refusal::Conflict(format!(
            "{version} is the canary of {}; it already answers users, and health compares it with the baseline",
            d.name
        )));
    }
    v.refuse_barred()?;
    let target = v.target();
    let baseline = d.baseline.version.clone();
    let mut events = Vec::new();
    match d.shadow.as_mut() {
        Some(s) if s.target.version == version => {
            if s.bps == bps {
                return Ok(events);
            }
            let from = s.bps.as_percent();
            s.bps = bps;
            events.push(event(
                EventKind::ShadowStarted,
                actor,
                format!(
                    "shadow {version} changed from {from} % to {percent} % of the requests {baseline} serves"
                ),
                json!({"version": version, "cluster": target.cluster, "percent": bps.as_percent(),
                       "from_percent": from, "baseline": baseline}),
            ));
            return Ok(events);
        }
        _ => {}
    }
    // Another version replaces the running one: one event, naming it; its
    // run (and what it reported) ends here.
    let replaced = d.shadow.take().map(|old| old.target.version);
    let percent = bps.as_percent();
    let instead = replaced
        .as_ref()
        .map_or(String::new(), |old| format!(" in place of {old}"));
    let mut numbers = json!({"version": version, "cluster": target.cluster, "percent": percent, "baseline": baseline});
    if let (Some(old), Value::Object(m)) = (&replaced, &mut numbers) {
        m.insert("replaced".into(), json!(old));
    }
    events.push(event(
        EventKind::ShadowStarted,
        actor,
        format!(
            "shadow {version} started{instead}: {percent} % of the requests {baseline} serves are copied to it (cluster {}); its answers are compared with the users', never returned",
            target.cluster
        ),
        numbers,
    ));
    d.shadow = Some(Shadow {
        target,
        bps,
        started_at: now,
        disagreed: BTreeSet::new(),
    });
    Ok(events)
}

/// Stops the running shadow; refused without one.
pub(super) fn stop_shadow(d: &mut Deployment, actor: &str) -> Result<Event, Refusal> {
    let shadow = d
        .shadow
        .take()
        .ok_or_else(|| Refusal::Conflict(format!("{} has no shadow running", d.name)))?;
    let reason = format!("shadow {} stopped by the operator", shadow.target.version);
    Ok(stopped(&shadow, actor, reason, "operator"))
}

/// What [`shadow_step`] decided.
#[derive(Clone, Debug, PartialEq)]
pub struct ShadowStep {
    pub transition: Transition,
    /// The judgement it was made on (none without a shadow).
    pub judgement: Option<ShadowJudgement>,
}

/// One evaluation of the shadow on its version's window: each field
/// established below the minimum is a `shadow_disagrees` event, once per
/// field and run. It never touches the canary or the split.
pub fn shadow_step(d: &Deployment, stats: &ShadowWindowStats) -> ShadowStep {
    let mut next = d.clone();
    let mut events = Vec::new();
    let judgement = next.shadow.as_mut().map(|s| {
        let j = judge(&d.policy, stats);
        for f in &j.findings {
            if s.disagreed.insert(f.field.clone()) {
                let version = &s.target.version;
                events.push(event(
                    EventKind::ShadowDisagrees,
                    ENGINE,
                    f.message(version),
                    Value::Object(f.numbers(version)),
                ));
            }
        }
        j
    });
    ShadowStep {
        transition: Transition {
            deployment: next,
            events,
        },
        judgement,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{Command, OPERATOR, command, create};
    use super::*;
    use crate::policy::{Policy, Significance};
    use crate::rules::shadow::ShadowVerdict;
    use crate::window::Agreement;

    /// heart-prod on v1 with v2 and v3 registered, no canary.
    fn registered() -> Deployment {
        let mut d = create("heart-prod", target("v1"), Policy::default(), OPERATOR, T0)
            .unwrap()
            .deployment;
        for v in ["v2", "v3"] {
            let reg = Command::RegisterVersion {
                version: v.into(),
                cluster: format!("heart-{v}"),
                metadata: json!({}),
            };
            d = command(&d, reg, OPERATOR, T0).unwrap().deployment;
        }
        d
    }

    fn start(version: &str, percent: Option<f64>) -> Command {
        Command::StartShadow {
            version: version.into(),
            percent,
        }
    }

    fn conflict(d: &Deployment, c: Command) -> String {
        match command(d, c, OPERATOR, T0) {
            Err(Refusal::Conflict(m)) => m,
            other => panic!("expected a conflict, got {other:?}"),
        }
    }

    #[test]
    fn start_change_and_stop_with_their_events() {
        let d = registered();
        let t = command(&d, start("v3", None), "alice", T0 + 1).unwrap();
        assert_eq!(kinds(&t), ["shadow_started"]);
        let e = &t.events[0];
        assert_eq!(e.actor, "alice");
        assert_eq!(e.numbers["version"], "v3");
        assert_eq!(e.numbers["percent"], 100.0);
        let d = t.deployment;
        let s = d.shadow.as_ref().unwrap();
        assert_eq!((s.bps, s.started_at), (Bps::FULL, T0 + 1));
        // The split the proxies get carries it, the users' split unchanged.
        let split = d.split();
        let shadow = split.shadow.unwrap();
        assert_eq!((shadow.target, shadow.bps), (target("v3"), Bps::FULL));
        assert_eq!((split.canary, split.canary_bps), (None, Bps::ZERO));
        // The same again changes nothing; another share is a change.
        let same = command(&d, start("v3", Some(100.0)), OPERATOR, T0 + 2).unwrap();
        assert!(same.events.is_empty());
        assert_eq!(same.deployment, d);
        let t = command(&d, start("v3", Some(25.0)), OPERATOR, T0 + 3).unwrap();
        assert_eq!(kinds(&t), ["shadow_started"]);
        assert_eq!(t.events[0].numbers["from_percent"], 100.0);
        let d = t.deployment;
        assert_eq!(d.shadow.as_ref().unwrap().bps, Bps::new(2500).unwrap());
        assert_eq!(d.shadow.as_ref().unwrap().started_at, T0 + 1, "same run");
        // Another version replaces it: one event, naming the one replaced.
        let t = command(&d, start("v2", Some(10.0)), OPERATOR, T0 + 4).unwrap();
        assert_eq!(kinds(&t), ["shadow_started"]);
        assert_eq!(t.events[0].numbers["replaced"], "v3");
        assert!(
            t.events[0]
                .reason
                .starts_with("shadow v2 started in place of v3: 10 %"),
            "{}",
            t.events[0].reason
        );
        let d = t.deployment;
        assert_eq!(d.shadow.as_ref().unwrap().started_at, T0 + 4, "a new run");
        let t = command(&d, Command::StopShadow, "bob", T0 + 5).unwrap();
        assert_eq!(kinds(&t), ["shadow_stopped"]);
        assert_eq!(
            (
                t.events[0].actor.as_str(),
                t.events[0].numbers["cause"].as_str()
            ),
            ("bob", Some("operator"))
        );
        assert!(
            t.events[0]
                .reason
                .contains("shadow v2 stopped by the operator")
        );
        assert!(t.deployment.shadow.is_none());
        assert!(t.deployment.split().shadow.is_none());
    }

    #[test]
    fn refusals_say_why() {
        let d = registered();
        assert!(conflict(&d, start("v9", None)).contains("v9 is not registered"));
        assert_eq!(
            conflict(&d, start("v1", None)),
            "v1 is the baseline; it already answers every user"
        );
        assert!(conflict(&d, Command::StopShadow).contains("no shadow running"));
        for bad in [0.0, -1.0, 101.0] {
            assert!(
                matches!(command(&d, start("v3", Some(bad)), OPERATOR, T0), Err(Refusal::Invalid(m)) if m.starts_with("percent")),
                "{bad}"
            );
        }
        // The canary already answers users.
        let d = with_canary(Policy::default());
        assert!(conflict(&d, start("v2", None)).contains("v2 is the canary of heart-prod"));
        // A rolled-back version is not shadowed.
        let d = command(&d, Command::Rollback { reason: None }, OPERATOR, T0)
            .unwrap()
            .deployment;
        assert!(conflict(&d, start("v2", None)).contains("rolled back"));
    }

    #[test]
    fn a_canary_of_the_shadows_version_stops_the_shadow() {
        let d = registered();
        let d = command(&d, start("v3", Some(50.0)), OPERATOR, T0)
            .unwrap()
            .deployment;
        // A canary of another version coexists with the shadow.
        let canary = |v: &str| Command::StartCanary {
            version: v.into(),
            percent: Some(10.0),
            steps: None,
            bake_seconds: None,
            schedule: None,
        };
        let t = command(&d, canary("v2"), OPERATOR, T0 + 1).unwrap();
        assert_eq!(kinds(&t), ["canary_started"]);
        assert!(t.deployment.shadow.is_some());
        // Promoting it does not stop the shadow.
        let t = command(
            &t.deployment,
            Command::Promote { reason: None },
            OPERATOR,
            T0 + 2,
        )
        .unwrap();
        assert_eq!(kinds(&t), ["promoted"]);
        assert_eq!(t.deployment.shadow.as_ref().unwrap().target.version, "v3");
        // A canary of the shadow's version ends it.
        let t = command(&t.deployment, canary("v3"), "carol", T0 + 3).unwrap();
        assert_eq!(kinds(&t), ["canary_started", "shadow_stopped"]);
        let stop = &t.events[1];
        assert_eq!(stop.actor, "carol");
        assert_eq!(stop.numbers["cause"], "became_canary");
        assert!(stop.reason.contains("became the canary"), "{}", stop.reason);
        assert!(t.deployment.shadow.is_none());
    }

    #[test]
    fn a_shadow_of_the_pinned_version_stops_when_traffic_returns_to_it() {
        // v2 promoted, v1 pinned; v1 shadowed; a rollback reverts to v1.
        let d = with_canary(Policy::default());
        let d = command(&d, Command::Promote { reason: None }, OPERATOR, T0)
            .unwrap()
            .deployment;
        let d = command(&d, start("v1", None), OPERATOR, T0)
            .unwrap()
            .deployment;
        let t = command(&d, Command::Rollback { reason: None }, OPERATOR, T0 + 1).unwrap();
        assert_eq!(kinds(&t), ["reverted_to_pinned", "shadow_stopped"]);
        assert_eq!(t.events[1].numbers["cause"], "became_baseline");
        assert!(t.deployment.shadow.is_none());
    }

    fn stats(fields: &[(&str, u64, u64)]) -> ShadowWindowStats {
        ShadowWindowStats {
            fields: fields
                .iter()
                .map(|&(f, compared, agreed)| (f.to_string(), Agreement { compared, agreed }))
                .collect(),
            ..ShadowWindowStats::default()
        }
    }

    #[test]
    fn a_disagreement_is_reported_once_per_field_and_run() {
        let d = command(&registered(), start("v3", None), OPERATOR, T0)
            .unwrap()
            .deployment;
        // Too few compared answers yet: nothing.
        let s = shadow_step(&d, &stats(&[("prediction", 30, 10)]));
        assert!(s.transition.events.is_empty());
        assert_eq!(
            s.judgement.unwrap().verdict,
            ShadowVerdict::InsufficientData
        );
        let bad = stats(&[("prediction", 500, 350), ("probability", 500, 495)]);
        let s = shadow_step(&d, &bad);
        assert_eq!(kinds(&s.transition), ["shadow_disagrees"]);
        let e = &s.transition.events[0];
        assert_eq!(e.actor, ENGINE);
        assert_eq!(
            (
                e.numbers["field"].as_str(),
                e.numbers["agreed"].as_u64(),
                e.numbers["compared"].as_u64()
            ),
            (Some("prediction"), Some(350), Some(500))
        );
        assert_eq!(e.numbers["rate"], 0.7);
        assert_eq!(e.numbers["min_agreement"], 0.9);
        assert!(e.numbers["bound"].as_f64().unwrap() < 0.9);
        let mut d = s.transition.deployment;
        // The canary's split is untouched; the epoch need not move.
        assert_eq!(d.split().canary_bps, Bps::ZERO);
        for _ in 0..10 {
            let s = shadow_step(&d, &bad);
            assert!(s.transition.events.is_empty(), "once");
            d = s.transition.deployment;
        }
        // Another field falling below is news.
        let worse = stats(&[("prediction", 500, 350), ("probability", 500, 300)]);
        let s = shadow_step(&d, &worse);
        assert_eq!(kinds(&s.transition), ["shadow_disagrees"]);
        assert_eq!(s.transition.events[0].numbers["field"], "probability");
        // A new run (another version) reports again.
        let d = command(&s.transition.deployment, start("v2", None), OPERATOR, T0)
            .unwrap()
            .deployment;
        assert_eq!(
            kinds(&shadow_step(&d, &bad).transition),
            ["shadow_disagrees"]
        );
    }

    #[test]
    fn without_the_guard_the_plain_rate_decides_and_without_a_shadow_nothing_happens() {
        let policy = Policy {
            significance: Significance::None,
            ..Policy::default()
        };
        let d = create("heart-prod", target("v1"), policy, OPERATOR, T0)
            .unwrap()
            .deployment;
        let s = shadow_step(&d, &stats(&[("prediction", 60, 52)]));
        assert!(s.judgement.is_none() && s.transition.events.is_empty());
        assert_eq!(s.transition.deployment, d);
        let reg = Command::RegisterVersion {
            version: "v3".into(),
            cluster: "heart-v3".into(),
            metadata: json!({}),
        };
        let d = command(&d, reg, OPERATOR, T0).unwrap().deployment;
        let d = command(&d, start("v3", None), OPERATOR, T0)
            .unwrap()
            .deployment;
        // 52 of 60 (86.7 %): below 90 %, which is enough without the guard.
        let s = shadow_step(&d, &stats(&[("prediction", 60, 52)]));
        assert_eq!(kinds(&s.transition), ["shadow_disagrees"]);
        assert!(s.transition.events[0].numbers["bound"].is_null());
        // With the guard (the default), the same numbers only wait.
        let mut guarded = d.clone();
        guarded.policy.significance = Policy::default().significance;
        assert!(
            shadow_step(&guarded, &stats(&[("prediction", 60, 52)]))
                .transition
                .events
                .is_empty()
        );
    }

    #[test]
    fn health_shows_the_shadow_judged() {
        let d = command(&registered(), start("v3", Some(20.0)), OPERATOR, T0)
            .unwrap()
            .deployment;
        let h = d
            .shadow_health(&stats(&[("prediction", 500, 495)]))
            .unwrap();
        assert_eq!((h.version.as_str(), h.percent), ("v3", 20.0));
        assert_eq!(h.verdict, ShadowVerdict::Agrees);
        assert!(registered().shadow_health(&stats(&[])).is_none());
    }

    #[test]
    fn a_change_of_baseline_starts_a_new_run() {
        // v3 shadows v1 while canary v2 runs; its disagreement is reported.
        let d = with_canary(Policy::default());
        let reg = Command::RegisterVersion {
            version: "v3".into(),
            cluster: "heart-v3".into(),
            metadata: json!({}),
        };
        let d = command(&d, reg, OPERATOR, T0).unwrap().deployment;
        let d = command(&d, start("v3", None), OPERATOR, T0 + 1)
            .unwrap()
            .deployment;
        let bad = stats(&[("prediction", 500, 350)]);
        let d = shadow_step(&d, &bad).transition.deployment;
        assert!(shadow_step(&d, &bad).transition.events.is_empty());
        // v2 promoted: v3 is compared with v2's answers from now on, a new
        // run with its own window, and the disagreement is news again.
        let t = command(&d, Command::Promote { reason: None }, OPERATOR, T0 + 9).unwrap();
        assert_eq!(kinds(&t), ["promoted"], "no event of its own");
        let s = t.deployment.shadow.as_ref().unwrap();
        assert_eq!((s.started_at, s.disagreed.len()), (T0 + 9, 0));
        let d = t.deployment;
        assert_eq!(
            kinds(&shadow_step(&d, &bad).transition),
            ["shadow_disagrees"]
        );
        let d = shadow_step(&d, &bad).transition.deployment;
        // A revert to the pinned v1, in the same millisecond: a new run all the same.
        let t = command(&d, Command::Rollback { reason: None }, OPERATOR, T0 + 9).unwrap();
        assert_eq!(kinds(&t), ["reverted_to_pinned"]);
        let s = t.deployment.shadow.as_ref().unwrap();
        assert_eq!((s.started_at, s.disagreed.len()), (T0 + 10, 0));
        // Anything else leaves the run as it is.
        let d = t.deployment;
        let d = shadow_step(&d, &bad).transition.deployment;
        let t = command(&d, start("v3", Some(50.0)), OPERATOR, T0 + 20).unwrap();
        let s = t.deployment.shadow.as_ref().unwrap();
        assert_eq!((s.started_at, s.disagreed.len()), (T0 + 10, 1));
    }

    #[test]
    fn the_engines_own_promotion_starts_a_new_run() {
        let d = with_canary(Policy {
            bake_seconds: 60,
            ..Policy::default()
        });
        let reg = Command::RegisterVersion {
            version: "v3".into(),
            cluster: "heart-v3".into(),
            metadata: json!({}),
        };
        let d = command(&d, reg, OPERATOR, T0).unwrap().deployment;
        let d = command(&d, start("v3", None), OPERATOR, T0)
            .unwrap()
            .deployment;
        let d = shadow_step(&d, &stats(&[("prediction", 500, 350)]))
            .transition
            .deployment;
        let (b, c) = good();
        let mut d = d;
        let mut promoted = None;
        for at in [5_000, 65_000, 125_000, 185_000] {
            let s = super::super::testing::step(&d, &b, &c, T0 + at);
            if kinds(&s.transition) == ["promoted"] {
                promoted = Some(T0 + at);
            }
            d = s.transition.deployment;
        }
        assert_eq!(d.baseline.version, "v2");
        let s = d.shadow.as_ref().unwrap();
        assert_eq!(Some(s.started_at), promoted);
        assert!(s.disagreed.is_empty());
    }
}
