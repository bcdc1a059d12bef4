//! An operator's commands, through the same state machine as the engine's
//! own steps: each is checked against the deployment's state and either
//! refused with a sentence or turned into the next state and its events.

use super::model::{
    Canary, Deployment, Event, EventKind, HealthMark, Millis, Refusal, Transition, Version,
    VersionState, event,
};
use super::shadow::{ShadowEnd, start_shadow, stop_shadow};
use crate::policy::{Policy, Ramp, Schedule, check_seconds, schedule};
use coalmine_protocol::config::check_deployment_name;
use coalmine_protocol::{Bps, Target};
use serde_json::{Map, Value, json};

/// What an operator can ask for.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    RegisterVersion {
        version: String,
        cluster: String,
        metadata: Value,
    },
    StartCanary {
        version: String,
        percent: Option<f64>,
        steps: Option<Vec<f64>>,
        bake_seconds: Option<u64>,
        /// A computed ramp instead of `steps` and `bake_seconds` (not with
        /// them).
        schedule: Option<Schedule>,
    },
    SetTraffic {
        percent: f64,
    },
    Pause {
        reason: Option<String>,
    },
    Resume {
        reason: Option<String>,
    },
    Promote {
        reason: Option<String>,
    },
    Rollback {
        reason: Option<String>,
    },
    SetPolicy {
        policy: Box<Policy>,
    },
    /// Start a shadow, or change its version or share (percent: 100 when
    /// left out).
    StartShadow {
        version: String,
        percent: Option<f64>,
    },
    StopShadow,
    /// Lift the bar on a version that was rolled back (or marked unhealthy
    /// when a promotion was reverted), so it may be a canary or a shadow
    /// again; the reason is required and goes into the timeline.
    UnbarVersion {
        version: String,
        reason: String,
    },
}

fn check_target_names(version: &str, cluster: &str) -> Result<(), Refusal> {
    Target {
        version: version.to_string(),
        cluster: cluster.to_string(),
    }
    .check()
    .map_err(Refusal::Invalid)
}

/// A new deployment serving `baseline`, registered and pinned.
pub fn create(
    name: &str,
    baseline: Target,
    policy: Policy,
    actor: &str,
    now: Millis,
) -> Result<Transition, Refusal> {
    check_deployment_name(name).map_err(|m| Refusal::Invalid(format!("name: {m}")))?;
    check_target_names(&baseline.version, &baseline.cluster)?;
    policy.validate()?;
    let deployment = Deployment {
        name: name.to_string(),
        policy,
        baseline: baseline.clone(),
        canary: None,
        shadow: None,
        pinned: Some(baseline.clone()),
        watch: None,
        cooldown_until: None,
        health: HealthMark::Ok,
        created_at: now,
        versions: vec![Version {
            version: baseline.version.clone(),
            cluster: baseline.cluster.clone(),
            state: VersionState::Production,
            healthy: true,
            pinned: true,
            metadata: json!({}),
            registered_at: now,
        }],
    };
    let events = vec![
        event(
            EventKind::DeploymentCreated,
            actor,
            format!(
                "deployment {name} created, serving {} from cluster {}",
                baseline.version, baseline.cluster
            ),
            json!({"baseline": baseline.version}),
        ),
        event(
            EventKind::VersionRegistered,
            actor,
            format!("{} registered as the production version", baseline.version),
            json!({"version": baseline.version, "cluster": baseline.cluster}),
        ),
    ];
    Ok(Transition { deployment, events })
}

/// An operator's command, through the same state machine as
/// [`step`](super::step).
pub fn command(
    d: &Deployment,
    cmd: Command,
    actor: &str,
    now: Millis,
) -> Result<Transition, Refusal> {
    let mut next = d.clone();
    let events = match cmd {
        Command::RegisterVersion {
            version,
            cluster,
            metadata,
        } => vec![register_version(
            &mut next, version, cluster, metadata, actor, now,
        )?],
        Command::StartCanary {
            version,
            percent,
            steps,
            bake_seconds,
            schedule,
        } => {
            let start = CanaryStart {
                version: version.clone(),
                percent,
                steps,
                bake_seconds,
                schedule,
            };
            let started = start_canary(&mut next, start, actor, now)?;
            let mut events = vec![started];
            events.extend(next.end_shadow_of(&version, ShadowEnd::BecameCanary, actor));
            events
        }
        Command::SetTraffic { percent } => vec![set_traffic(&mut next, percent, actor, now)?],
        Command::Pause { reason } => vec![pause(&mut next, reason, actor)?],
        Command::Resume { reason } => vec![resume(&mut next, reason, actor, now)?],
        Command::Promote { reason } => vec![promote(&mut next, reason, actor)?],
        Command::Rollback { reason } => vec![rollback(&mut next, reason, actor, now)?],
        Command::SetPolicy { policy } => vec![set_policy(&mut next, *policy, actor)?],
        Command::StartShadow { version, percent } => {
            start_shadow(&mut next, &version, percent, actor, now)?
        }
        Command::StopShadow => vec![stop_shadow(&mut next, actor)?],
        Command::UnbarVersion { version, reason } => {
            vec![unbar_version(&mut next, &version, &reason, actor)?]
        }
    };
    let mut events = events;
    // A shadow whose version now serves every user (a revert to the
    // pinned version it was) has nothing left to show.
    let baseline = next.baseline.version.clone();
    events.extend(next.end_shadow_of(&baseline, ShadowEnd::BecameBaseline, actor));
    // Another baseline (a promotion, a revert): the shadow starts a new run.
    next.shadow_follows_baseline(&d.baseline, now);
    Ok(Transition {
        deployment: next,
        events,
    })
}

/// The operator's reason, or what the event says without one.
fn reason_or(reason: Option<String>, default: &str) -> String {
    reason
        .filter(|r| !r.trim().is_empty())
        .unwrap_or_else(|| default.to_string())
}

fn register_version(
    d: &mut Deployment,
    version: String,
    cluster: String,
    metadata: Value,
    actor: &str,
    now: Millis,
) -> Result<Event, Refusal> {
    check_target_names(&version, &cluster)?;
    if !metadata.is_object() {
        return Err(Refusal::Invalid("metadata must be a JSON object".into()));
    }
    if d.version(&version).is_some() {
        return Err(Refusal::Conflict(format!(
            "version {version} is already registered for {}; versions are immutable, register a new name",
            d.name
        )));
    }
    d.versions.push(Version {
        version: version.clone(),
        cluster: cluster.clone(),
        state: VersionState::Registered,
        healthy: true,
        pinned: false,
        metadata: metadata.clone(),
        registered_at: now,
    });
    Ok(event(
        EventKind::VersionRegistered,
        actor,
        format!("{version} registered (cluster {cluster})"),
        json!({"version": version, "cluster": cluster, "metadata": metadata}),
    ))
}

/// What starting a canary asks for (defaults from the policy).
struct CanaryStart {
    version: String,
    percent: Option<f64>,
    steps: Option<Vec<f64>>,
    bake_seconds: Option<u64>,
    schedule: Option<Schedule>,
}

impl CanaryStart {
    /// The ramp this canary climbs: its own `schedule`, else its own
    /// `steps` and `bake_seconds`, each falling back to the policy's ramp
    /// (where a `schedule` wins over `steps`).
    fn ramp(&self, policy: &Policy) -> Result<Ramp, Refusal> {
        if let Some(s) = &self.schedule {
            if self.steps.is_some() || self.bake_seconds.is_some() {
                return Err(Refusal::Invalid(
                    "schedule replaces steps and bake_seconds (its every_seconds is the bake); give either schedule or steps and bake_seconds".into(),
                ));
            }
            return Ok(s.ramp()?);
        }
        let planned = policy.ramp()?;
        let shares = match &self.steps {
            Some(steps) => schedule("steps", steps)?,
            None => planned.shares,
        };
        let bake_seconds = self.bake_seconds.unwrap_or(planned.bake_seconds);
        check_seconds("bake_seconds", bake_seconds)?;
        Ok(Ramp {
            shares,
            bake_seconds,
        })
    }
}

/// Why `version` cannot be a canary of `d` now, if it cannot.
fn refuse_canary(d: &Deployment, version: &str, now: Millis) -> Result<Target, Refusal> {
    if let Some(c) = &d.canary {
        return Err(Refusal::Conflict(format!(
            "{} already has canary {} at {} %; promote or roll it back first",
            d.name,
            c.target.version,
            c.bps.as_percent()
        )));
    }
    if let Some(left) = d.in_cooldown(now) {
        return Err(Refusal::Conflict(format!(
            "{} is cooling down after a rollback for another {left} s; no new canary until then",
            d.name
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
            "{version} is already the baseline of {}",
            d.name
        )));
    }
    v.refuse_barred()?;
    Ok(v.target())
}

fn start_canary(
    d: &mut Deployment,
    start: CanaryStart,
    actor: &str,
    now: Millis,
) -> Result<Event, Refusal> {
    let target = refuse_canary(d, &start.version, now)?;
    let Ramp {
        shares: steps,
        bake_seconds,
    } = start.ramp(&d.policy)?;
    let bps = match start.percent {
        Some(p) => Bps::parse_percent(p).map_err(|m| Refusal::Invalid(format!("percent {m}")))?,
        None => steps.first().copied().unwrap_or(Bps::ZERO),
    };
    d.canary = Some(Canary {
        target,
        bps,
        steps,
        bake_seconds,
        started_at: now,
        step_since: now,
        healthy_since: None,
        paused: false,
        mismatch_reported: false,
        healthy_streak: 0,
    });
    d.health = HealthMark::Ok;
    // The canary is judged against this baseline: its watch ends.
    d.watch = None;
    d.set_version_state(&start.version, VersionState::Canary, true);
    let (version, percent, baseline) = (start.version, bps.as_percent(), &d.baseline.version);
    Ok(event(
        EventKind::CanaryStarted,
        actor,
        format!("canary {version} started at {percent} % (baseline {baseline})"),
        json!({"version": version, "canary_percent": percent, "baseline": baseline}),
    ))
}

/// The canary in progress, or why there is none to `what`.
fn canary_to<'a>(d: &'a mut Deployment, what: &str) -> Result<&'a mut Canary, Refusal> {
    let name = d.name.clone();
    d.canary
        .as_mut()
        .ok_or_else(|| Refusal::Conflict(format!("{name} has no canary in progress{what}")))
}

fn set_traffic(
    d: &mut Deployment,
    percent: f64,
    actor: &str,
    now: Millis,
) -> Result<Event, Refusal> {
    let bps =
        Bps::parse_percent(percent).map_err(|m| Refusal::Invalid(format!("canary_percent {m}")))?;
    let c = canary_to(d, "; start one first")?;
    let from = c.bps;
    c.bps = bps;
    c.step_since = now;
    c.mismatch_reported = false;
    let (from, to) = (from.as_percent(), bps.as_percent());
    Ok(event(
        EventKind::TrafficChanged,
        actor,
        format!("canary {} set from {from} % to {to} %", c.target.version),
        json!({"version": c.target.version, "from_percent": from, "to_percent": to}),
    ))
}

fn pause(d: &mut Deployment, reason: Option<String>, actor: &str) -> Result<Event, Refusal> {
    let name = d.name.clone();
    let c = canary_to(d, " to pause")?;
    if c.paused {
        return Err(Refusal::Conflict(format!(
            "the canary of {name} is already paused"
        )));
    }
    c.paused = true;
    Ok(event(
        EventKind::Paused,
        actor,
        reason_or(reason, "paused by the operator"),
        json!({"version": c.target.version, "canary_percent": c.bps.as_percent()}),
    ))
}

fn resume(
    d: &mut Deployment,
    reason: Option<String>,
    actor: &str,
    now: Millis,
) -> Result<Event, Refusal> {
    let name = d.name.clone();
    let c = canary_to(d, " to resume")?;
    if !c.paused {
        return Err(Refusal::Conflict(format!(
            "the canary of {name} is not paused"
        )));
    }
    c.paused = false;
    // The bake starts over: the pause may have hidden a bad spell.
    c.step_since = now;
    Ok(event(
        EventKind::Resumed,
        actor,
        reason_or(reason, "resumed by the operator"),
        json!({"version": c.target.version, "canary_percent": c.bps.as_percent()}),
    ))
}

fn promote(d: &mut Deployment, reason: Option<String>, actor: &str) -> Result<Event, Refusal> {
    canary_to(d, " to promote")?;
    let reason = reason_or(reason, "promoted by the operator");
    d.promote(actor, &reason, Map::new())
        .ok_or_else(|| Refusal::Conflict(format!("{} has no canary in progress", d.name)))
}

fn rollback(
    d: &mut Deployment,
    reason: Option<String>,
    actor: &str,
    now: Millis,
) -> Result<Event, Refusal> {
    if d.canary.is_none() {
        return d.revert_to_pinned(now, actor, &reason_or(reason, "reverted by the operator"));
    }
    let reason = reason_or(reason, "rolled back by the operator");
    d.roll_back_canary(now, actor, &reason, Map::new())
        .ok_or_else(|| Refusal::Conflict(format!("{} has no canary in progress", d.name)))
}

/// A barred version back to `registered` and healthy. The cooldown after
/// a rollback is not lifted: it protects the deployment, not the version.
fn unbar_version(
    d: &mut Deployment,
    version: &str,
    reason: &str,
    actor: &str,
) -> Result<Event, Refusal> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(Refusal::Invalid(
            "reason: say why the version may be tried again (it goes into the timeline)".into(),
        ));
    }
    // 409 as for a canary of an unregistered version: the deployment
    // exists, the call does not fit its registry.
    let v = d.version(version).ok_or_else(|| {
        Refusal::Conflict(format!(
            "version {version} is not registered for {}",
            d.name
        ))
    })?;
    if !v.barred() {
        return Err(Refusal::Conflict(format!(
            "{version} is not barred (it is {} and healthy)",
            v.state.as_str()
        )));
    }
    let was = v.state;
    d.set_version_state(version, VersionState::Registered, true);
    Ok(event(
        EventKind::VersionUnbarred,
        actor,
        format!("{version} may be a canary again: {reason}"),
        json!({"version": version, "was": was.as_str()}),
    ))
}

fn set_policy(d: &mut Deployment, policy: Policy, actor: &str) -> Result<Event, Refusal> {
    policy.validate()?;
    d.policy = policy;
    Ok(event(
        EventKind::PolicyChanged,
        actor,
        "policy updated",
        serde_json::to_value(&d.policy).unwrap_or(Value::Null),
    ))
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{Deployment, OPERATOR, Refusal, VersionState};
    use super::*;
    use crate::policy::Policy;

    #[test]
    fn cooldown_blocks_a_new_canary_and_then_lifts() {
        let d = with_canary(Policy::default());
        let d = step(&d, &stats(1000, 0, 50.0), &stats(100, 25, 50.0), T0)
            .transition
            .deployment;
        let reg = Command::RegisterVersion {
            version: "v3".into(),
            cluster: "heart-v3".into(),
            metadata: json!({}),
        };
        let d = command(&d, reg, OPERATOR, T0).unwrap().deployment;
        let start = || Command::StartCanary {
            version: "v3".into(),
            percent: Some(10.0),
            steps: None,
            bake_seconds: None,
            schedule: None,
        };
        let err = command(&d, start(), OPERATOR, T0 + 60_000).unwrap_err();
        assert!(
            matches!(&err, Refusal::Conflict(m) if m.contains("cooling down") && m.contains("60 s")),
            "{err}"
        );
        let t = command(&d, start(), OPERATOR, T0 + 120_000).unwrap();
        assert_eq!(kinds(&t), ["canary_started"]);
        // The rolled-back version cannot come back.
        let again = Command::StartCanary {
            version: "v2".into(),
            percent: None,
            steps: None,
            bake_seconds: None,
            schedule: None,
        };
        let d = command(
            &t.deployment,
            Command::Rollback { reason: None },
            OPERATOR,
            T0 + 121_000,
        )
        .unwrap()
        .deployment;
        assert!(
            matches!(command(&d, again, OPERATOR, T0 + 999_000), Err(Refusal::Conflict(m)) if m.contains("rolled back"))
        );
    }

    #[test]
    fn an_operator_lifts_the_bar_with_a_reason() {
        let d = with_canary(Policy::default());
        let d = step(&d, &stats(1000, 0, 50.0), &stats(100, 25, 50.0), T0)
            .transition
            .deployment;
        assert!(d.version("v2").unwrap().barred());
        let unbar = |reason: &str, version: &str| Command::UnbarVersion {
            version: version.into(),
            reason: reason.into(),
        };
        let err = command(&d, unbar("  ", "v2"), "alice", T0).unwrap_err();
        assert!(
            matches!(&err, Refusal::Invalid(m) if m.contains("reason")),
            "{err}"
        );
        let err = command(&d, unbar("fixed", "v9"), "alice", T0).unwrap_err();
        assert!(
            matches!(&err, Refusal::Conflict(m) if m.contains("v9")),
            "{err}"
        );
        let err = command(&d, unbar("fixed", "v1"), "alice", T0).unwrap_err();
        assert!(
            matches!(&err, Refusal::Conflict(m) if m.contains("not barred")),
            "{err}"
        );
        let t = command(&d, unbar("the feature store was down", "v2"), "alice", T0).unwrap();
        assert_eq!(kinds(&t), ["version_unbarred"]);
        let e = &t.events[0];
        assert_eq!(e.actor, "alice");
        assert!(
            e.reason.contains("the feature store was down"),
            "{}",
            e.reason
        );
        assert_eq!(e.numbers["was"], "rolled_back");
        let v = t.deployment.version("v2").unwrap();
        assert_eq!((v.state, v.healthy), (VersionState::Registered, true));
        // The bar is lifted; the deployment's cooldown is not.
        let start = Command::StartCanary {
            version: "v2".into(),
            percent: Some(5.0),
            steps: None,
            bake_seconds: None,
            schedule: None,
        };
        let err = command(&t.deployment, start.clone(), OPERATOR, T0 + 1).unwrap_err();
        assert!(
            matches!(&err, Refusal::Conflict(m) if m.contains("cooling down")),
            "{err}"
        );
        let t = command(&t.deployment, start, OPERATOR, T0 + 120_000).unwrap();
        assert_eq!(kinds(&t), ["canary_started"]);
        let err = command(&t.deployment, unbar("again", "v2"), OPERATOR, T0).unwrap_err();
        assert!(
            matches!(&err, Refusal::Conflict(m) if m.contains("not barred")),
            "{err}"
        );
    }

    #[test]
    fn manual_traffic_promote_rollback_and_revert() {
        let d = with_canary(Policy::default());
        let t = command(&d, Command::SetTraffic { percent: 35.0 }, OPERATOR, T0 + 1).unwrap();
        assert_eq!(kinds(&t), ["traffic_changed"]);
        let d = t.deployment;
        assert_eq!(d.canary.as_ref().unwrap().next_step(), Bps::new(5000));
        let t = command(&d, Command::Promote { reason: None }, OPERATOR, T0 + 2).unwrap();
        assert_eq!(kinds(&t), ["promoted"]);
        let d = t.deployment;
        assert_eq!(d.baseline.version, "v2");
        // Rollback after a promotion: back to the pinned v1.
        let t = command(
            &d,
            Command::Rollback {
                reason: Some("bad outputs".into()),
            },
            OPERATOR,
            T0 + 3,
        )
        .unwrap();
        assert_eq!(kinds(&t), ["reverted_to_pinned"]);
        let d = t.deployment;
        assert_eq!(d.baseline.version, "v1");
        assert_eq!(d.version("v2").unwrap().state, VersionState::RolledBack);
        assert!(t.events[0].reason.starts_with("bad outputs"));
    }

    #[test]
    fn illegal_transitions_are_refused_with_a_sentence() {
        let d = create("heart-prod", target("v1"), Policy::default(), OPERATOR, T0)
            .unwrap()
            .deployment;
        let conflict = |d: &Deployment, c: Command| match command(d, c, OPERATOR, T0) {
            Err(Refusal::Conflict(m)) => m,
            other => panic!("expected a conflict, got {other:?}"),
        };
        assert!(
            conflict(&d, Command::SetTraffic { percent: 10.0 }).contains("no canary in progress")
        );
        assert!(conflict(&d, Command::Pause { reason: None }).contains("no canary"));
        assert!(conflict(&d, Command::Resume { reason: None }).contains("no canary"));
        assert!(conflict(&d, Command::Promote { reason: None }).contains("no canary"));
        assert!(conflict(&d, Command::Rollback { reason: None }).contains("nothing to roll back"));
        let start_v1 = Command::StartCanary {
            version: "v1".into(),
            percent: None,
            steps: None,
            bake_seconds: None,
            schedule: None,
        };
        assert!(conflict(&d, start_v1).contains("already the baseline"));
        let missing = Command::StartCanary {
            version: "v9".into(),
            percent: None,
            steps: None,
            bake_seconds: None,
            schedule: None,
        };
        assert!(matches!(
            command(&d, missing, OPERATOR, T0),
            Err(Refusal::Conflict(_))
        ));
        let dup = Command::RegisterVersion {
            version: "v1".into(),
            cluster: "x".into(),
            metadata: json!({}),
        };
        assert!(conflict(&d, dup).contains("already registered"));

        let d = with_canary(Policy::default());
        let start = Command::StartCanary {
            version: "v2".into(),
            percent: None,
            steps: None,
            bake_seconds: None,
            schedule: None,
        };
        assert!(conflict(&d, start).contains("already has canary v2"));
        assert!(conflict(&d, Command::Resume { reason: None }).contains("not paused"));
        assert!(matches!(
            command(&d, Command::SetTraffic { percent: 101.0 }, OPERATOR, T0),
            Err(Refusal::Invalid(_))
        ));
        let bad_steps = Command::StartCanary {
            version: "v2".into(),
            percent: None,
            steps: Some(vec![50.0, 10.0]),
            bake_seconds: None,
            schedule: None,
        };
        let d0 = create("x", target("v1"), Policy::default(), OPERATOR, T0)
            .unwrap()
            .deployment;
        let reg = Command::RegisterVersion {
            version: "v2".into(),
            cluster: "c2".into(),
            metadata: json!({}),
        };
        let d0 = command(&d0, reg, OPERATOR, T0).unwrap().deployment;
        assert!(matches!(
            command(&d0, bad_steps, OPERATOR, T0),
            Err(Refusal::Invalid(_))
        ));
    }
}
