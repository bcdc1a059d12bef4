//! The engine: a deployment's state machine as pure functions.
//!
//! - [`model`]: the deployment, its canary and registry, events, refusals;
//! - [`step`]: the engine's own decision on both roles' window statistics
//!   and the time: roll back on CRITICAL, hold on DEGRADED, step up and
//!   finally promote on HEALTHY;
//! - [`command`]: an operator's calls through the same machine, which
//!   refuses illegal transitions with a sentence;
//! - `moves`: rollback, promotion and revert, which both of them make;
//! - [`shadow`]: the shadow's start, change and stop, its end when its
//!   version becomes the canary or the baseline, and [`shadow_step`],
//!   which reports a field that disagrees with the users' answers once;
//! - [`watch`]: the post-promotion watch, which reverts a promoted
//!   baseline that breaks its limits within `post_promotion.watch_seconds`.
//!
//! No clock, I/O or database here: the service around it persists each
//! transition and its events in one transaction, and tests drive it with
//! synthetic stats and a fake clock.

pub mod command;
pub mod model;
mod moves;
pub mod shadow;
pub mod step;
pub mod watch;

pub use command::{Command, command, create};
pub use model::{
    Canary, Deployment, ENGINE, Event, EventKind, HealthMark, Millis, OPERATOR, Refusal, Shadow,
    Step, Transition, Version, VersionState,
};
pub use shadow::{DEFAULT_SHADOW_PERCENT, ShadowStep, shadow_step};
pub use step::step;
pub use watch::{Watch, command_seen, watch_health};

#[cfg(test)]
pub(crate) mod testing {
    //! What the engine's tests share: a deployment with a canary, the
    //! engine on both roles' numbers, the kinds of a transition's events.
    use super::*;
    use crate::observe::Observations;
    use crate::policy::Policy;
    use coalmine_protocol::Target;
    use serde_json::json;

    pub(crate) const T0: Millis = 1_700_000_000_000;

    pub(crate) fn target(v: &str) -> Target {
        Target {
            version: v.into(),
            cluster: format!("heart-{v}"),
        }
    }

    pub(crate) use crate::rules::tests::role as stats;
    use crate::window::RoleWindowStats;

    /// The engine on both roles' numbers only.
    pub(crate) fn step(
        d: &Deployment,
        b: &RoleWindowStats,
        c: &RoleWindowStats,
        now: Millis,
    ) -> Step {
        super::step(d, &Observations::of(b.clone(), c.clone()), now)
    }

    pub(crate) fn kinds(t: &Transition) -> Vec<&'static str> {
        t.events.iter().map(|e| e.kind.as_str()).collect()
    }

    /// heart-prod serving v1, v2 registered, canary v2 at 20 % started at T0.
    pub(crate) fn with_canary(policy: Policy) -> Deployment {
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
            schedule: None,
        };
        command(&d, start, OPERATOR, T0).unwrap().deployment
    }

    /// Healthy and, with the guard, shown non-inferior.
    pub(crate) fn good() -> (RoleWindowStats, RoleWindowStats) {
        (stats(10_000, 50, 100.0), stats(2000, 2, 105.0))
    }
}
