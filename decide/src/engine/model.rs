//! The engine's model: a deployment, its canary and version registry, the
//! events that explain every change, and why a command may be refused.

use super::watch::Watch;
use crate::policy::{Policy, PolicyError};
use crate::verdict::Verdict;
use coalmine_protocol::shadow::ShadowSplit;
use coalmine_protocol::{Bps, DeploymentSplit, Target};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeSet;

pub type Millis = u64;

/// Who made a change: the engine, or an operator.
pub const ENGINE: &str = "engine";
pub const OPERATOR: &str = "operator";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum VersionState {
    Registered,
    Canary,
    Production,
    RolledBack,
    Retired,
}

impl VersionState {
    pub const ALL: [VersionState; 5] = [
        VersionState::Registered,
        VersionState::Canary,
        VersionState::Production,
        VersionState::RolledBack,
        VersionState::Retired,
    ];

    /// The state as JSON writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            VersionState::Registered => "registered",
            VersionState::Canary => "canary",
            VersionState::Production => "production",
            VersionState::RolledBack => "rolled_back",
            VersionState::Retired => "retired",
        }
    }
}

/// A model version in a deployment's registry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Version {
    pub version: String,
    pub cluster: String,
    pub state: VersionState,
    pub healthy: bool,
    /// The last known good version, which a rollback after a promotion
    /// returns to.
    pub pinned: bool,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
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

    /// Rolled back, or marked unhealthy: not a canary or a shadow again
    /// until an operator lifts the bar.
    pub fn barred(&self) -> bool {
        self.state == VersionState::RolledBack || !self.healthy
    }

    /// Refuses a barred version, saying how to go on.
    pub(crate) fn refuse_barred(&self) -> Result<(), Refusal> {
        if self.barred() {
            return Err(Refusal::Conflict(format!(
                "{0} was rolled back and is marked unhealthy; register a fixed build under a new version, or lift the bar with a reason (coalmine versions unbar <deployment> {0} --reason …)",
                self.version
            )));
        }
        Ok(())
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
    /// The planned ramp: canary shares to step through, strictly
    /// increasing. A healthy bake at the last (100 %, or a lower `max` of
    /// an exponential schedule) promotes the canary.
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
    /// HEALTHY verdicts in a row since the health mark left OK (recovery
    /// is declared after [`RECOVERY_CHECKS`]).
    #[serde(default)]
    pub healthy_streak: u32,
}

/// HEALTHY verdicts in a row before a DEGRADED (or failed) canary counts
/// as recovered: a canary hovering at a threshold holds and reports once,
/// instead of an event on every check.
pub const RECOVERY_CHECKS: u32 = 3;

impl Canary {
    /// The next share of the schedule above the current one.
    pub fn next_step(&self) -> Option<Bps> {
        self.steps.iter().copied().find(|s| *s > self.bps)
    }
}

/// A shadow: a version that gets a copy of a share of the baseline's
/// requests and never answers a user (DESIGN.md, "Shadow").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Shadow {
    pub target: Target,
    /// The share of the baseline's requests copied to it.
    pub bps: Bps,
    pub started_at: Millis,
    /// Fields whose disagreement was reported in this run (each once).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub disagreed: BTreeSet<String>,
}

/// A deployment's whole state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    pub name: String,
    pub policy: Policy,
    pub baseline: Target,
    pub canary: Option<Canary>,
    /// A version shadowing the baseline, if any (it coexists with a canary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<Shadow>,
    /// Last known good, for a rollback after a promotion.
    pub pinned: Option<Target>,
    /// The new baseline's watch after a promotion (`watch.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<Watch>,
    /// No new canary and no automatic step before this time.
    pub cooldown_until: Option<Millis>,
    pub health: HealthMark,
    pub created_at: Millis,
    /// The registry; stored in its own table.
    #[serde(skip)]
    pub versions: Vec<Version>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    ShadowStarted,
    ShadowStopped,
    ShadowDisagrees,
    VersionUnbarred,
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
            EventKind::ShadowStarted => "shadow_started",
            EventKind::ShadowStopped => "shadow_stopped",
            EventKind::ShadowDisagrees => "shadow_disagrees",
            EventKind::VersionUnbarred => "version_unbarred",
        }
    }
}

/// Something that happened, why, and the numbers behind it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Event {
    pub kind: EventKind,
    pub actor: String,
    pub reason: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub numbers: Map<String, Value>,
}

pub(crate) fn event(
    kind: EventKind,
    actor: &str,
    reason: impl Into<String>,
    numbers: Value,
) -> Event {
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

/// What [`step`](super::step) decided.
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

impl Deployment {
    /// The deployment as a controller that just started holds it: its
    /// windows are empty, so a canary's healthy bake starts over on fresh
    /// data (a stored `healthy_since` would count the downtime as healthy).
    pub fn resumed(mut self) -> Deployment {
        if let Some(c) = self.canary.as_mut() {
            c.healthy_since = None;
        }
        self
    }

    /// The split the proxies route by.
    pub fn split(&self) -> DeploymentSplit {
        DeploymentSplit {
            name: self.name.clone(),
            baseline: self.baseline.clone(),
            canary: self.canary.as_ref().map(|c| c.target.clone()),
            canary_bps: self.canary.as_ref().map_or(Bps::ZERO, |c| c.bps),
            shadow: self.shadow.as_ref().map(|s| ShadowSplit {
                target: s.target.clone(),
                bps: s.bps,
            }),
        }
    }

    pub fn version(&self, version: &str) -> Option<&Version> {
        self.versions.iter().find(|v| v.version == version)
    }

    pub(crate) fn version_mut(&mut self, version: &str) -> Option<&mut Version> {
        self.versions.iter_mut().find(|v| v.version == version)
    }

    pub(crate) fn set_version_state(&mut self, version: &str, state: VersionState, healthy: bool) {
        if let Some(v) = self.version_mut(version) {
            v.state = state;
            v.healthy = healthy;
        }
    }

    pub(crate) fn pin(&mut self, version: &str) {
        for v in &mut self.versions {
            v.pinned = v.version == version;
        }
    }

    pub(crate) fn in_cooldown(&self, now: Millis) -> Option<u64> {
        self.cooldown_until
            .filter(|&until| until > now)
            .map(|until| (until - now).div_ceil(1000))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_as_json_writes_them() {
        for s in VersionState::ALL {
            assert_eq!(serde_json::to_value(s).unwrap().as_str(), Some(s.as_str()));
        }
    }
}
