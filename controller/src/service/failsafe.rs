//! Failing safe when the database cannot be written, or the controller is
//! stuck.
//!
//! Every change is committed before it is applied, except one kind: a
//! change that lowers a canary's share (the engine's rollback, an
//! operator's) takes effect in memory and reaches the proxies even when the
//! commit fails (disk full, locked, a commit that does not return in
//! [`STORE_TIMEOUT`]). Its events wait in [`Unstored`] and are stored, in
//! order and exactly once, as soon as the database takes writes again; only
//! then are they notified. Meanwhile readiness is down and
//! `coalmine_controller_unstored_changes` says how many wait.
//!
//! If evaluations stop (a commit that hangs holds the state), the proxies'
//! leases are not renewed: `/v1/sync` answers 503 once the last evaluation
//! is older than [`STALLED_AFTER`], so every proxy falls back to its
//! baselines within its lease rather than keep a canary nobody watches.

use super::{Controller, ServiceError, State};
use crate::clock::Millis;
use crate::store::{Commit, StoreError, StoredEvent};
use coalmine_decide::engine::{Deployment, Event};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// A commit that takes longer has failed (its change is not applied, or,
/// lowering a share, applied and kept to store later).
pub const STORE_TIMEOUT: Duration = Duration::from_secs(5);
/// Evaluations older than this: the controller is stuck, and says so.
pub const STALLED_AFTER: Duration = Duration::from_secs(10);

/// Events applied in memory whose commit failed, by deployment: groups in
/// the order they happened, each with its time.
#[derive(Debug, Default)]
pub(super) struct Unstored {
    groups: BTreeMap<String, Vec<(Vec<Event>, Millis)>>,
}

impl Unstored {
    fn count(&self) -> usize {
        self.groups.values().map(Vec::len).sum()
    }
}

/// The watchdog's view, readable without the state lock (which a hung
/// commit holds), on the controller's own (monotonic) clock.
#[derive(Debug)]
pub(super) struct Watchdog {
    last_evaluation: AtomicU64,
    unstored: AtomicUsize,
}

impl Watchdog {
    /// Counting from `now`, as if an evaluation had just run.
    pub(super) fn new(now: Millis) -> Watchdog {
        Watchdog {
            last_evaluation: AtomicU64::new(now),
            unstored: AtomicUsize::new(0),
        }
    }

    pub(super) fn evaluated(&self, now: Millis) {
        self.last_evaluation.fetch_max(now, Ordering::SeqCst);
    }

    /// How long evaluations have been stalled at `now`, if they have.
    pub(super) fn stalled(&self, now: Millis) -> Option<Duration> {
        let since =
            Duration::from_millis(now.saturating_sub(self.last_evaluation.load(Ordering::SeqCst)));
        (since > STALLED_AFTER).then_some(since)
    }
}

/// The canary's share of `d`, in basis points (0 without a canary or `d`).
fn canary_bps(d: Option<&Deployment>) -> u16 {
    d.and_then(|d| d.canary.as_ref()).map_or(0, |c| c.bps.get())
}

/// Whether going from `before` to `after` lowers the canary's share: the
/// kind of change that is safe, and urgent, to apply before it is stored.
pub(super) fn lowers_share(before: Option<&Deployment>, after: &Deployment) -> bool {
    canary_bps(before) > canary_bps(Some(after))
}

impl Controller {
    /// Commits `events` of `d` (its state as it is now) with a deadline.
    async fn commit_with_deadline(
        &self,
        d: &Deployment,
        events: &[Event],
        epoch: u64,
        at: Millis,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let commit = Commit {
            deployment: d,
            events,
            epoch,
            at,
        };
        let result = match tokio::time::timeout(STORE_TIMEOUT, self.store.commit(commit)).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::TimedOut(STORE_TIMEOUT)),
        };
        if let Err(e) = &result {
            self.metrics.store_error();
            self.fenced(e);
        }
        result
    }

    /// Stores what waits for `name`, oldest first, with `d` as its state;
    /// stops at the first failure. Notifies what it stored.
    pub(super) async fn store_unstored(
        &self,
        state: &mut State,
        name: &str,
        d: &Deployment,
    ) -> Result<(), StoreError> {
        let epoch = state.epoch;
        while let Some((events, at)) = state.unstored.groups.get(name).and_then(|g| g.first()) {
            let stored = self.commit_with_deadline(d, events, epoch, *at).await?;
            if let Some(groups) = state.unstored.groups.get_mut(name) {
                groups.remove(0);
                if groups.is_empty() {
                    state.unstored.groups.remove(name);
                }
            }
            self.published(&stored);
            tracing::info!(deployment = %name, "stored {} event(s) that waited for the database", stored.len());
        }
        self.sync_unstored_count(state);
        Ok(())
    }

    /// Stores everything that waits (each tick of the evaluation loop).
    pub(super) async fn retry_unstored(&self, state: &mut State) {
        let names: Vec<String> = state.unstored.groups.keys().cloned().collect();
        for name in names {
            let Some(d) = state.deployments.get(&name).cloned() else {
                continue;
            };
            if self.store_unstored(state, &name, &d).await.is_err() {
                return;
            }
        }
    }

    /// Commits a transition of `after` (the deployment as it will be) with
    /// `events`; what waits for it is stored first, as it is now. A failure
    /// that lowers the share keeps the events to store later and says
    /// `Ok(None)`: the caller applies the change all the same.
    pub(super) async fn commit_transition(
        &self,
        state: &mut State,
        after: &Deployment,
        events: &[Event],
        epoch: u64,
        now: Millis,
    ) -> Result<Option<Vec<StoredEvent>>, ServiceError> {
        let before = state.deployments.get(&after.name).cloned();
        let waited = match &before {
            Some(d) => self.store_unstored(state, &after.name, d).await,
            None => Ok(()),
        };
        let result = match waited {
            Ok(()) => self.commit_with_deadline(after, events, epoch, now).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(stored) => Ok(Some(stored)),
            // Another replica leads: what this one would lower is not its
            // to change.
            Err(e @ StoreError::Fenced(_)) => Err(e.into()),
            Err(e) if lowers_share(before.as_ref(), after) => {
                tracing::error!(
                    deployment = %after.name,
                    "the database cannot be written ({e}); the canary's share is lowered now and the change is stored once it can be"
                );
                state
                    .unstored
                    .groups
                    .entry(after.name.clone())
                    .or_default()
                    .push((events.to_vec(), now));
                self.sync_unstored_count(state);
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    pub(super) fn sync_unstored_count(&self, state: &State) {
        let n = state.unstored.count();
        self.watchdog.unstored.store(n, Ordering::SeqCst);
        self.metrics.unstored_changes(n);
    }

    /// Logs, counts and notifies events that are stored.
    pub(super) fn published(&self, stored: &[StoredEvent]) {
        for e in stored {
            tracing::info!(
                deployment = %e.deployment, event = e.event.kind.as_str(), actor = %e.event.actor,
                "{}", e.event.reason
            );
            self.metrics
                .count_event(&e.deployment, e.event.kind, &e.event.actor);
            self.notifier.notify(e);
        }
    }

    /// `Ok` when the controller can be relied on: every change stored and
    /// evaluations running; else why not (`GET /readyz` answers 503).
    pub fn readiness(&self) -> Result<(), String> {
        if let Some(reason) = self.follower_reason() {
            return Err(reason);
        }
        let unstored = self.watchdog.unstored.load(Ordering::SeqCst);
        if unstored > 0 {
            return Err(format!(
                "{unstored} change(s) are in effect but not stored: the database cannot be written"
            ));
        }
        if let Some(for_) = self.watchdog.stalled(self.now()) {
            return Err(format!("evaluations have stalled for {} s", for_.as_secs()));
        }
        Ok(())
    }

    /// Refuses to renew leases while evaluations are stalled.
    pub(super) fn check_not_stalled(&self) -> Result<(), ServiceError> {
        match self.watchdog.stalled(self.now()) {
            Some(for_) => Err(ServiceError::Unavailable(format!(
                "evaluations have stalled for {} s; the lease is not renewed, so proxies fall back to their baselines",
                for_.as_secs()
            ))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coalmine_decide::engine::{Command, OPERATOR, command, create};
    use coalmine_decide::policy::Policy;
    use coalmine_protocol::Target;

    #[test]
    fn only_a_lower_share_is_applied_before_it_is_stored() {
        let t = |v: &str| Target {
            version: v.into(),
            cluster: format!("c-{v}"),
        };
        let d = create("d", t("v1"), Policy::default(), OPERATOR, 0)
            .unwrap()
            .deployment;
        let reg = Command::RegisterVersion {
            version: "v2".into(),
            cluster: "c-v2".into(),
            metadata: serde_json::json!({}),
        };
        let d = command(&d, reg, OPERATOR, 0).unwrap().deployment;
        let start = Command::StartCanary {
            version: "v2".into(),
            percent: Some(20.0),
            steps: None,
            bake_seconds: None,
            schedule: None,
        };
        let at_20 = command(&d, start, OPERATOR, 0).unwrap().deployment;
        let at_5 = command(&at_20, Command::SetTraffic { percent: 5.0 }, OPERATOR, 0)
            .unwrap()
            .deployment;
        let rollback = Command::Rollback { reason: None };
        let rolled_back = command(&at_20, rollback, OPERATOR, 0).unwrap().deployment;
        assert!(lowers_share(Some(&at_20), &rolled_back));
        assert!(lowers_share(Some(&at_20), &at_5));
        assert!(!lowers_share(Some(&d), &at_20), "starting a canary");
        assert!(!lowers_share(Some(&at_5), &at_20), "stepping up");
        assert!(!lowers_share(None, &d), "creating");
    }
}
