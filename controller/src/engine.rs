//! The engine: a deployment's state machine as pure functions.
//!
//! [`step`] takes a deployment, both roles' window statistics and the time,
//! and returns the next state and the events that explain it: roll back on
//! CRITICAL, hold on DEGRADED, step up and finally promote on HEALTHY. The
//! operator's calls go through [`command`], the same machine, which refuses
//! illegal transitions with a sentence. No clock, I/O or database here: the
//! service around it persists the transition and its events in one
//! transaction, and tests drive it with synthetic stats and a fake clock.

use crate::policy::{
    Observations, Policy, PolicyError, Verdict, VerdictKind, evaluate, validate_steps,
};
use coalmine_protocol::config::check_deployment_name;
use coalmine_protocol::{Bps, DeploymentSplit, Target};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// Milliseconds since the UNIX epoch.
pub type Millis = u64;

/// Who made a change: the engine, or an operator.
pub const ENGINE: &str = "engine";
pub const OPERATOR: &str = "operator";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VersionState {
    Registered,
    Canary,
    Production,
    RolledBack,
    Retired,
}

/// A model version in a deployment's registry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Version {
    pub version: String,
    pub cluster: String,
    pub state: VersionState,
    pub healthy: bool,
    /// The last known good version, which a rollback after a promotion
    /// returns to.
    pub pinned: bool,
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub registered_at: Millis,
}

impl Version {
    pub fn target(&self) -> Target {
        Target {
            version: self.version.clone(),
            cluster: self.cluster.clone(),
        }
    }
}

/// Which health events have been emitted for the running canary, so that
/// each is emitted once on entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthMark {
    #[default]
    Ok,
    Degraded,
    Failed,
}

/// A canary in progress.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Canary {
    pub target: Target,
    pub bps: Bps,
    /// The schedule: canary shares to step through, the last being 100 %.
    pub steps: Vec<Bps>,
    pub bake_seconds: u64,
    pub started_at: Millis,
    /// When the current share was set.
    pub step_since: Millis,
    /// Since when every verdict was HEALTHY (none: the last was not).
    pub healthy_since: Option<Millis>,
    pub paused: bool,
    /// A sample-ratio mismatch was reported at the current share.
    #[serde(default)]
    pub mismatch_reported: bool,
}

impl Canary {
    /// The next share of the schedule above the current one.
    pub fn next_step(&self) -> Option<Bps> {
        self.steps.iter().copied().find(|s| *s > self.bps)
    }
}

/// A deployment's whole state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    pub name: String,
    pub policy: Policy,
    pub baseline: Target,
    pub canary: Option<Canary>,
    /// Last known good, for a rollback after a promotion.
    pub pinned: Option<Target>,
    /// No new canary and no automatic step before this time.
    pub cooldown_until: Option<Millis>,
    pub health: HealthMark,
    pub created_at: Millis,
    /// The registry; stored in its own table.
    #[serde(skip)]
    pub versions: Vec<Version>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    DeploymentCreated,
    VersionRegistered,
    CanaryStarted,
    TrafficChanged,
    HealthDegraded,
    HealthRecovered,
    HealthCheckFailed,
    AutoRollbackTriggered,
    RolledBack,
    StepAdvanced,
    Promoted,
    Paused,
    Resumed,
    RevertedToPinned,
    PolicyChanged,
    SampleRatioMismatch,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::DeploymentCreated => "deployment_created",
            EventKind::VersionRegistered => "version_registered",
            EventKind::CanaryStarted => "canary_started",
            EventKind::TrafficChanged => "traffic_changed",
            EventKind::HealthDegraded => "health_degraded",
            EventKind::HealthRecovered => "health_recovered",
            EventKind::HealthCheckFailed => "health_check_failed",
            EventKind::AutoRollbackTriggered => "auto_rollback_triggered",
            EventKind::RolledBack => "rolled_back",
            EventKind::StepAdvanced => "step_advanced",
            EventKind::Promoted => "promoted",
            EventKind::Paused => "paused",
            EventKind::Resumed => "resumed",
            EventKind::RevertedToPinned => "reverted_to_pinned",
            EventKind::PolicyChanged => "policy_changed",
            EventKind::SampleRatioMismatch => "sample_ratio_mismatch",
        }
    }
}

/// Something that happened, why, and the numbers behind it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    pub kind: EventKind,
    pub actor: String,
    pub reason: String,
    #[schema(value_type = Object)]
    pub numbers: Map<String, Value>,
}

fn event(kind: EventKind, actor: &str, reason: impl Into<String>, numbers: Value) -> Event {
    Event {
        kind,
        actor: actor.to_string(),
        reason: reason.into(),
        numbers: match numbers {
            Value::Object(m) => m,
            _ => Map::new(),
        },
    }
}

/// A new state and the events that led to it.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    pub deployment: Deployment,
    pub events: Vec<Event>,
}

/// What [`step`] decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub transition: Transition,
    /// The verdict evaluated (none without a canary).
    pub verdict: Option<Verdict>,
}

/// Why a command was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Bad input (HTTP 400).
    #[error("{0}")]
    Invalid(String),
    /// A version that does not exist (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// Not allowed in the current state (HTTP 409).
    #[error("{0}")]
    Conflict(String),
}

impl From<PolicyError> for Refusal {
    fn from(e: PolicyError) -> Self {
        Refusal::Invalid(e.to_string())
    }
}

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
        policy: Policy,
    },
}

impl Deployment {
    /// The split the proxies route by.
    pub fn split(&self) -> DeploymentSplit {
        DeploymentSplit {
            name: self.name.clone(),
            baseline: self.baseline.clone(),
            canary: self.canary.as_ref().map(|c| c.target.clone()),
            canary_bps: self.canary.as_ref().map_or(Bps::ZERO, |c| c.bps),
        }
    }

    pub fn version(&self, version: &str) -> Option<&Version> {
        self.versions.iter().find(|v| v.version == version)
    }

    fn version_mut(&mut self, version: &str) -> Option<&mut Version> {
        self.versions.iter_mut().find(|v| v.version == version)
    }

    fn set_version_state(&mut self, version: &str, state: VersionState, healthy: bool) {
        if let Some(v) = self.version_mut(version) {
            v.state = state;
            v.healthy = healthy;
        }
    }

    fn pin(&mut self, version: &str) {
        for v in &mut self.versions {
            v.pinned = v.version == version;
        }
    }

    fn in_cooldown(&self, now: Millis) -> Option<u64> {
        self.cooldown_until
            .filter(|&until| until > now)
            .map(|until| (until - now).div_ceil(1000))
    }
}

fn percent_of(bps: Bps) -> f64 {
    bps.as_percent()
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
        pinned: Some(baseline.clone()),
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

/// An operator's command, through the same state machine as [`step`].
pub fn command(
    d: &Deployment,
    cmd: Command,
    actor: &str,
    now: Millis,
) -> Result<Transition, Refusal> {
    let mut next = d.clone();
    let mut events = Vec::new();
    let reason_or = |r: Option<String>, default: &str| {
        r.filter(|r| !r.trim().is_empty())
            .unwrap_or_else(|| default.to_string())
    };
    match cmd {
        Command::RegisterVersion {
            version,
            cluster,
            metadata,
        } => {
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
            next.versions.push(Version {
                version: version.clone(),
                cluster: cluster.clone(),
                state: VersionState::Registered,
                healthy: true,
                pinned: false,
                metadata: metadata.clone(),
                registered_at: now,
            });
            events.push(event(
                EventKind::VersionRegistered,
                actor,
                format!("{version} registered (cluster {cluster})"),
                json!({"version": version, "cluster": cluster, "metadata": metadata}),
            ));
        }
        Command::StartCanary {
            version,
            percent,
            steps,
            bake_seconds,
        } => {
            if let Some(c) = &d.canary {
                return Err(Refusal::Conflict(format!(
                    "{} already has canary {} at {} %; promote or roll it back first",
                    d.name,
                    c.target.version,
                    percent_of(c.bps)
                )));
            }
            if let Some(left) = d.in_cooldown(now) {
                return Err(Refusal::Conflict(format!(
                    "{} is cooling down after a rollback for another {left} s; no new canary until then",
                    d.name
                )));
            }
            let v = d.version(&version).ok_or_else(|| {
                Refusal::Conflict(format!(
                    "version {version} is not registered for {}; register it with POST /v1/deployments/{}/versions",
                    d.name, d.name
                ))
            })?;
            if version == d.baseline.version {
                return Err(Refusal::Conflict(format!(
                    "{version} is already the baseline of {}",
                    d.name
                )));
            }
            if v.state == VersionState::RolledBack || !v.healthy {
                return Err(Refusal::Conflict(format!(
                    "{version} was rolled back and is marked unhealthy; register a fixed build under a new version"
                )));
            }
            let steps = steps.unwrap_or_else(|| d.policy.steps.clone());
            validate_steps("steps", &steps)?;
            let steps: Vec<Bps> = steps.iter().filter_map(|&s| Bps::from_percent(s)).collect();
            let bps = match percent {
                Some(p) => Bps::from_percent(p).ok_or_else(|| {
                    Refusal::Invalid(format!("percent must be between 0 and 100, got {p}"))
                })?,
                None => steps.first().copied().unwrap_or(Bps::ZERO),
            };
            let bake_seconds = bake_seconds.unwrap_or(d.policy.bake_seconds);
            if bake_seconds > 86_400 {
                return Err(Refusal::Invalid(
                    "bake_seconds must be at most 86400".into(),
                ));
            }
            let target = v.target();
            next.canary = Some(Canary {
                target: target.clone(),
                bps,
                steps,
                bake_seconds,
                started_at: now,
                step_since: now,
                healthy_since: None,
                paused: false,
                mismatch_reported: false,
            });
            next.health = HealthMark::Ok;
            next.set_version_state(&version, VersionState::Canary, true);
            events.push(event(
                EventKind::CanaryStarted,
                actor,
                format!("canary {version} started at {} % (baseline {})", percent_of(bps), d.baseline.version),
                json!({"version": version, "canary_percent": percent_of(bps), "baseline": d.baseline.version}),
            ));
        }
        Command::SetTraffic { percent } => {
            let bps = Bps::from_percent(percent).ok_or_else(|| {
                Refusal::Invalid(format!(
                    "canary_percent must be between 0 and 100, got {percent}"
                ))
            })?;
            let Some(c) = next.canary.as_mut() else {
                return Err(Refusal::Conflict(format!(
                    "{} has no canary in progress; start one with POST /v1/deployments/{}/canary",
                    d.name, d.name
                )));
            };
            let from = c.bps;
            c.bps = bps;
            c.step_since = now;
            c.mismatch_reported = false;
            events.push(event(
                EventKind::TrafficChanged,
                actor,
                format!("canary {} set from {} % to {} %", c.target.version, percent_of(from), percent_of(bps)),
                json!({"version": c.target.version, "from_percent": percent_of(from), "to_percent": percent_of(bps)}),
            ));
        }
        Command::Pause { reason } => {
            let Some(c) = next.canary.as_mut() else {
                return Err(Refusal::Conflict(format!(
                    "{} has no canary in progress to pause",
                    d.name
                )));
            };
            if c.paused {
                return Err(Refusal::Conflict(format!(
                    "the canary of {} is already paused",
                    d.name
                )));
            }
            c.paused = true;
            let reason = reason_or(reason, "paused by the operator");
            events.push(event(
                EventKind::Paused,
                actor,
                reason,
                json!({"version": c.target.version, "canary_percent": percent_of(c.bps)}),
            ));
        }
        Command::Resume { reason } => {
            let Some(c) = next.canary.as_mut() else {
                return Err(Refusal::Conflict(format!(
                    "{} has no canary in progress to resume",
                    d.name
                )));
            };
            if !c.paused {
                return Err(Refusal::Conflict(format!(
                    "the canary of {} is not paused",
                    d.name
                )));
            }
            c.paused = false;
            // The bake starts over: the pause may have hidden a bad spell.
            c.step_since = now;
            let reason = reason_or(reason, "resumed by the operator");
            events.push(event(
                EventKind::Resumed,
                actor,
                reason,
                json!({"version": c.target.version, "canary_percent": percent_of(c.bps)}),
            ));
        }
        Command::Promote { reason } => {
            if d.canary.is_none() {
                return Err(Refusal::Conflict(format!(
                    "{} has no canary in progress to promote",
                    d.name
                )));
            }
            promote(
                &mut next,
                actor,
                reason_or(reason, "promoted by the operator"),
                Map::new(),
                &mut events,
            );
        }
        Command::Rollback { reason } => {
            if d.canary.is_some() {
                let reason = reason_or(reason, "rolled back by the operator");
                roll_back_canary(&mut next, now, actor, reason, Map::new(), &mut events);
            } else {
                revert_to_pinned(
                    &mut next,
                    now,
                    actor,
                    reason_or(reason, "reverted by the operator"),
                    &mut events,
                )?;
            }
        }
        Command::SetPolicy { policy } => {
            policy.validate()?;
            next.policy = policy;
            events.push(event(
                EventKind::PolicyChanged,
                actor,
                "policy updated",
                serde_json::to_value(&next.policy).unwrap_or(Value::Null),
            ));
        }
    }
    Ok(Transition {
        deployment: next,
        events,
    })
}

fn roll_back_canary(
    next: &mut Deployment,
    now: Millis,
    actor: &str,
    reason: String,
    mut numbers: Map<String, Value>,
    events: &mut Vec<Event>,
) {
    let Some(c) = next.canary.take() else { return };
    next.set_version_state(&c.target.version, VersionState::RolledBack, false);
    next.cooldown_until =
        Some(now.saturating_add(next.policy.cooldown_seconds.saturating_mul(1000)));
    next.health = HealthMark::Ok;
    numbers.insert("version".into(), json!(c.target.version));
    numbers.insert("from_percent".into(), json!(percent_of(c.bps)));
    numbers.insert("to_percent".into(), json!(0.0));
    events.push(Event {
        kind: EventKind::RolledBack,
        actor: actor.to_string(),
        reason: format!(
            "{reason}: canary {} to 0 %, marked unhealthy; {} serves all traffic",
            c.target.version, next.baseline.version
        ),
        numbers,
    });
}

fn promote(
    next: &mut Deployment,
    actor: &str,
    reason: String,
    mut numbers: Map<String, Value>,
    events: &mut Vec<Event>,
) {
    let Some(c) = next.canary.take() else { return };
    let old = std::mem::replace(&mut next.baseline, c.target.clone());
    next.set_version_state(&old.version, VersionState::Retired, true);
    next.set_version_state(&c.target.version, VersionState::Production, true);
    next.pin(&old.version);
    next.pinned = Some(old.clone());
    next.health = HealthMark::Ok;
    numbers.insert("from".into(), json!(old.version));
    numbers.insert("to".into(), json!(c.target.version));
    events.push(Event {
        kind: EventKind::Promoted,
        actor: actor.to_string(),
        reason: format!(
            "{reason}: {} is the baseline; {} pinned as last known good",
            c.target.version, old.version
        ),
        numbers,
    });
}

fn revert_to_pinned(
    next: &mut Deployment,
    now: Millis,
    actor: &str,
    reason: String,
    events: &mut Vec<Event>,
) -> Result<(), Refusal> {
    let Some(pinned) = next.pinned.clone().filter(|p| *p != next.baseline) else {
        return Err(Refusal::Conflict(format!(
            "nothing to roll back: {} has no canary in progress and already serves its pinned version {}",
            next.name, next.baseline.version
        )));
    };
    let from = std::mem::replace(&mut next.baseline, pinned.clone());
    next.set_version_state(&from.version, VersionState::RolledBack, false);
    next.set_version_state(&pinned.version, VersionState::Production, true);
    next.cooldown_until =
        Some(now.saturating_add(next.policy.cooldown_seconds.saturating_mul(1000)));
    events.push(event(
        EventKind::RevertedToPinned,
        actor,
        format!(
            "{reason}: traffic back to pinned {}; {} marked unhealthy",
            pinned.version, from.version
        ),
        json!({"from": from.version, "to": pinned.version}),
    ));
    Ok(())
}

/// One evaluation: the engine's automatic decision for a deployment.
pub fn step(d: &Deployment, obs: &Observations, now: Millis) -> Step {
    let mut next = d.clone();
    let mut events = Vec::new();
    let Some(c) = d.canary.as_ref() else {
        return Step {
            transition: Transition {
                deployment: next,
                events,
            },
            verdict: None,
        };
    };
    let verdict = evaluate(&d.policy, obs);
    let mut numbers = verdict.numbers();
    numbers.insert("canary_percent".into(), json!(percent_of(c.bps)));
    numbers.insert("baseline".into(), json!(obs.baseline));
    numbers.insert("canary".into(), json!(obs.canary));
    if let Some(srm) = verdict
        .reasons
        .iter()
        .find(|r| r.code == "sample_ratio_mismatch")
        && !c.mismatch_reported
    {
        events.push(event(
            EventKind::SampleRatioMismatch,
            ENGINE,
            srm.message.clone(),
            Value::Object(srm.numbers.clone()),
        ));
        if let Some(nc) = next.canary.as_mut() {
            nc.mismatch_reported = true;
        }
    }
    numbers.insert("window_seconds".into(), json!(d.policy.window_seconds));
    let summary = verdict.summary();
    match verdict.verdict {
        VerdictKind::Critical => {
            if next.health != HealthMark::Failed {
                next.health = HealthMark::Failed;
                events.push(event(
                    EventKind::HealthCheckFailed,
                    ENGINE,
                    summary.clone(),
                    Value::Object(numbers.clone()),
                ));
            }
            if let Some(nc) = next.canary.as_mut() {
                nc.healthy_since = None;
            }
            if d.policy.auto_rollback {
                events.push(event(
                    EventKind::AutoRollbackTriggered,
                    ENGINE,
                    format!("CRITICAL: {summary}"),
                    Value::Object(numbers.clone()),
                ));
                roll_back_canary(
                    &mut next,
                    now,
                    ENGINE,
                    "automatic rollback".into(),
                    numbers,
                    &mut events,
                );
            }
        }
        VerdictKind::Degraded => {
            if next.health == HealthMark::Ok {
                events.push(event(
                    EventKind::HealthDegraded,
                    ENGINE,
                    format!("holding at {} %: {summary}", percent_of(c.bps)),
                    Value::Object(numbers),
                ));
            }
            next.health = HealthMark::Degraded;
            if let Some(nc) = next.canary.as_mut() {
                nc.healthy_since = None;
            }
        }
        VerdictKind::Healthy => {
            if next.health != HealthMark::Ok {
                next.health = HealthMark::Ok;
                events.push(event(
                    EventKind::HealthRecovered,
                    ENGINE,
                    summary.clone(),
                    Value::Object(numbers.clone()),
                ));
            }
            let cooling = d.in_cooldown(now).is_some();
            let promote_now = verdict.recommendation == crate::policy::Recommendation::Promote;
            if let Some(nc) = next.canary.as_mut() {
                let since = *nc.healthy_since.get_or_insert(now);
                let baked = now
                    >= nc
                        .step_since
                        .max(since)
                        .saturating_add(nc.bake_seconds.saturating_mul(1000));
                if promote_now && baked && !nc.paused && !cooling {
                    match nc.next_step() {
                        Some(to) => {
                            let from = nc.bps;
                            nc.bps = to;
                            nc.step_since = now;
                            nc.mismatch_reported = false;
                            numbers.insert("from_percent".into(), json!(percent_of(from)));
                            numbers.insert("to_percent".into(), json!(percent_of(to)));
                            events.push(event(
                                EventKind::StepAdvanced,
                                ENGINE,
                                format!(
                                    "canary {} stepped from {} % to {} % after {} s healthy: {summary}",
                                    nc.target.version,
                                    percent_of(from),
                                    percent_of(to),
                                    nc.bake_seconds
                                ),
                                Value::Object(numbers),
                            ));
                        }
                        None if d.policy.auto_promote => {
                            promote(
                                &mut next,
                                ENGINE,
                                format!("healthy at the last step: {summary}"),
                                numbers,
                                &mut events,
                            );
                        }
                        None => {}
                    }
                }
            }
        }
        VerdictKind::InsufficientData => {
            if let Some(nc) = next.canary.as_mut() {
                nc.healthy_since = None;
            }
        }
    }
    Step {
        transition: Transition {
            deployment: next,
            events,
        },
        verdict: Some(verdict),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Millis = 1_700_000_000_000;

    fn target(v: &str) -> Target {
        Target {
            version: v.into(),
            cluster: format!("heart-{v}"),
        }
    }

    use crate::policy::tests::role as stats;
    use crate::window::RoleWindowStats;

    /// The engine on both roles' numbers only.
    fn step(d: &Deployment, b: &RoleWindowStats, c: &RoleWindowStats, now: Millis) -> Step {
        super::step(d, &Observations::of(b.clone(), c.clone()), now)
    }

    fn kinds(t: &Transition) -> Vec<&'static str> {
        t.events.iter().map(|e| e.kind.as_str()).collect()
    }

    /// heart-prod serving v1, v2 registered, canary v2 at 20 % started at T0.
    fn with_canary(policy: Policy) -> Deployment {
        let d = create("heart-prod", target("v1"), policy, OPERATOR, T0)
            .unwrap()
            .deployment;
        let reg = Command::RegisterVersion {
            version: "v2".into(),
            cluster: "heart-v2".into(),
            metadata: json!({"accuracy": 0.7}),
        };
        let d = command(&d, reg, OPERATOR, T0).unwrap().deployment;
        let start = Command::StartCanary {
            version: "v2".into(),
            percent: None,
            steps: None,
            bake_seconds: None,
        };
        command(&d, start, OPERATOR, T0).unwrap().deployment
    }

    /// Healthy and, with the guard, shown non-inferior.
    fn good() -> (RoleWindowStats, RoleWindowStats) {
        (stats(10_000, 50, 100.0), stats(2000, 2, 105.0))
    }

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
        let d = s.transition.deployment;
        let (b, c) = good();
        let s = step(&d, &b, &c, T0 + 15_000);
        assert_eq!(kinds(&s.transition), ["health_recovered", "step_advanced"]);
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
        };
        assert!(conflict(&d, start_v1).contains("already the baseline"));
        let missing = Command::StartCanary {
            version: "v9".into(),
            percent: None,
            steps: None,
            bake_seconds: None,
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
