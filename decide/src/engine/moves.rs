//! The three moves both an operator and the engine make: roll a canary
//! back, promote it, and return to the pinned version after a promotion.

use super::model::event;
use super::model::{Deployment, Event, EventKind, HealthMark, Millis, Refusal, VersionState};
use serde_json::{Map, Value, json};

impl Deployment {
    /// The canary to 0 %, its version marked unhealthy, cooldown started.
    /// `None` without a canary.
    pub(crate) fn roll_back_canary(
        &mut self,
        now: Millis,
        actor: &str,
        reason: &str,
        mut numbers: Map<String, Value>,
    ) -> Option<Event> {
        let c = self.canary.take()?;
        self.set_version_state(&c.target.version, VersionState::RolledBack, false);
        self.start_cooldown(now);
        self.health = HealthMark::Ok;
        numbers.insert("version".into(), json!(c.target.version));
        numbers.insert("from_percent".into(), json!(c.bps.as_percent()));
        numbers.insert("to_percent".into(), json!(0.0));
        Some(Event {
            kind: EventKind::RolledBack,
            actor: actor.to_string(),
            reason: format!(
                "{reason}: canary {} to 0 %, marked unhealthy; {} serves all traffic",
                c.target.version, self.baseline.version
            ),
            numbers,
        })
    }

    /// The canary becomes the baseline; the old baseline is pinned as last
    /// known good. `None` without a canary.
    pub(crate) fn promote(
        &mut self,
        actor: &str,
        reason: &str,
        mut numbers: Map<String, Value>,
    ) -> Option<Event> {
        let c = self.canary.take()?;
        let old = std::mem::replace(&mut self.baseline, c.target.clone());
        self.set_version_state(&old.version, VersionState::Retired, true);
        self.set_version_state(&c.target.version, VersionState::Production, true);
        self.pin(&old.version);
        self.pinned = Some(old.clone());
        self.health = HealthMark::Ok;
        numbers.insert("from".into(), json!(old.version));
        numbers.insert("to".into(), json!(c.target.version));
        Some(Event {
            kind: EventKind::Promoted,
            actor: actor.to_string(),
            reason: format!(
                "{reason}: {} is the baseline; {} pinned as last known good",
                c.target.version, old.version
            ),
            numbers,
        })
    }

    /// After a promotion: traffic back to the pinned version, the promoted
    /// one marked unhealthy, cooldown started.
    pub(crate) fn revert_to_pinned(
        &mut self,
        now: Millis,
        actor: &str,
        reason: &str,
    ) -> Result<Event, Refusal> {
        let Some(pinned) = self.pinned.clone().filter(|p| *p != self.baseline) else {
            return Err(Refusal::Conflict(format!(
                "nothing to roll back: {} has no canary in progress and already serves its pinned version {}",
                self.name, self.baseline.version
            )));
        };
        let from = std::mem::replace(&mut self.baseline, pinned.clone());
        self.watch = None;
        self.set_version_state(&from.version, VersionState::RolledBack, false);
        self.set_version_state(&pinned.version, VersionState::Production, true);
        self.start_cooldown(now);
        Ok(event(
            EventKind::RevertedToPinned,
            actor,
            format!(
                "{reason}: traffic back to pinned {}; {} marked unhealthy",
                pinned.version, from.version
            ),
            json!({"from": from.version, "to": pinned.version}),
        ))
    }

    fn start_cooldown(&mut self, now: Millis) {
        let cooldown_ms = self.policy.cooldown_seconds.saturating_mul(1000);
        self.cooldown_until = Some(now.saturating_add(cooldown_ms));
    }
}
