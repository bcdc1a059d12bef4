//! Leadership among replicas that share a store (DESIGN.md, "High
//! availability on PostgreSQL").
//!
//! Every `lease / 4` the replica asks the store for the lease (takes it
//! when it is free or expired, renews it when it holds it). Only the
//! leader evaluates, changes state, delivers webhooks and answers
//! `/v1/sync`; followers answer 503 naming the leader.
//!
//! A replica that becomes leader loads the state from the database first
//! and forgets what it had in memory (windows, verdicts, changes waiting
//! to be stored): it decides again only on fresh reports, one check
//! interval after the first (the restart rule), and publishes a split
//! table epoch above any a previous leader can have given out (the term in
//! its upper 32 bits), so every proxy takes its table.
//!
//! A leader that cannot renew (the database gone) steps down once its
//! lease has run out on its own clock, counting from when it sent its last
//! successful renewal; the store's fencing refuses its writes from the
//! moment another replica holds the lease, whatever it believes.

use super::Controller;
use crate::clock::Millis;
use crate::store::{Claim, StoreError};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// This replica's part in the leadership.
#[derive(Debug)]
pub(super) struct Leadership {
    /// Unique to this process.
    holder: String,
    leads: AtomicBool,
    /// The term this replica holds while it leads.
    term: AtomicU64,
    /// The leader's URL as last read from the store, if another leads.
    leader_url: Mutex<Option<String>>,
}

impl Leadership {
    /// A replica on a store of its own leads from the start.
    pub(super) fn new(leads: bool, url: &str) -> Leadership {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        Leadership {
            holder: format!("{url} pid {} started {started}", std::process::id()),
            leads: AtomicBool::new(leads),
            term: AtomicU64::new(0),
            leader_url: Mutex::new(None),
        }
    }
}

/// The split table epoch a leader of `term` starts from: above what it
/// loaded, and above anything an earlier term's leader could have given
/// out without storing it (a lowered share applied before its commit).
pub(super) fn epoch_for_term(stored: u64, term: u64) -> u64 {
    stored.saturating_add(1).max(term.saturating_mul(1 << 32))
}

impl Controller {
    /// Whether this replica leads (always, on a store of its own).
    pub fn leads(&self) -> bool {
        self.leadership.leads.load(Ordering::SeqCst)
    }

    /// Why this replica does not take the call, if it does not lead: the
    /// message names the leader when it is known.
    pub fn follower_reason(&self) -> Option<String> {
        if self.leads() {
            return None;
        }
        let known = self
            .leadership
            .leader_url
            .lock()
            .ok()
            .and_then(|u| u.clone())
            .filter(|u| !u.is_empty());
        Some(match known {
            Some(url) => format!("this controller is a follower; the leader is {url}"),
            None => "this controller is a follower; no leader is known yet (one is being elected)"
                .to_string(),
        })
    }

    /// The leadership loop, until `shutdown` resolves; then the lease is
    /// given up so another replica takes over at once. Nothing to do on a
    /// store of its own.
    pub async fn run_leadership(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        if !self.store.shared() {
            return;
        }
        let lease = Duration::from_millis(self.settings.leader_lease_ms);
        let mut tick = tokio::time::interval((lease / 4).max(Duration::from_millis(50)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        // When the last successful renewal was sent.
        let mut renewed: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tick.tick() => {}
            }
            let sent = Instant::now();
            let claim = Claim {
                holder: self.leadership.holder.clone(),
                url: self.settings.url.clone(),
                term: match self.leads() {
                    true => self.leadership.term.load(Ordering::SeqCst),
                    false => 0,
                },
                lease_ms: self.settings.leader_lease_ms,
            };
            let answer = tokio::time::timeout(lease / 2, self.store.lead(&claim)).await;
            match answer {
                Ok(Ok(leader)) if leader.holder == claim.holder => {
                    renewed = Some(sent);
                    if (!self.leads() || leader.term != claim.term)
                        && let Err(e) = self.take_over(leader.term).await
                    {
                        tracing::warn!(
                            "took the lease (term {}) but could not load the state: {e}",
                            leader.term
                        );
                    }
                }
                Ok(Ok(leader)) => self.follow(Some(leader.url), leader.term),
                Ok(Err(e)) => self.renewal_failed(renewed, lease, &e.to_string()),
                Err(_) => self.renewal_failed(renewed, lease, "no answer in time"),
            }
        }
        self.leadership.leads.store(false, Ordering::SeqCst);
        if let Err(e) = self.store.resign().await {
            tracing::warn!("could not give up the lease: {e}");
        }
    }

    /// The lease could not be renewed: step down once it has run out.
    fn renewal_failed(&self, renewed: Option<Instant>, lease: Duration, why: &str) {
        if !self.leads() {
            tracing::debug!("the lease could not be read: {why}");
            return;
        }
        if renewed.is_none_or(|at| at.elapsed() >= lease) {
            tracing::error!(
                "the lease could not be renewed for {lease:?} ({why}); following until it can"
            );
            self.follow(None, self.leadership.term.load(Ordering::SeqCst));
        } else {
            tracing::warn!("the lease could not be renewed: {why}; leading until it runs out");
        }
    }

    /// Another replica leads (or none is known): stop leading.
    fn follow(&self, leader_url: Option<String>, term: u64) {
        if let Ok(mut known) = self.leadership.leader_url.lock() {
            *known = leader_url.clone();
        }
        if self.leadership.leads.swap(false, Ordering::SeqCst) {
            tracing::warn!(
                "no longer leading; the leader is {}",
                leader_url.as_deref().unwrap_or("unknown")
            );
        }
        self.metrics.leadership(false, term);
    }

    /// The store refused a write: another replica holds the lease.
    pub(super) fn fenced(&self, e: &StoreError) {
        if matches!(e, StoreError::Fenced(_)) {
            tracing::error!("{e}; following");
            self.follow(None, self.leadership.term.load(Ordering::SeqCst));
        }
    }

    /// Leads at `term`: the state as the database has it, nothing of what
    /// this replica knew before, and a new epoch for the proxies.
    async fn take_over(&self, term: u64) -> Result<(), StoreError> {
        let snapshot = self.store.load().await?;
        let now: Millis = self.now();
        let mut state = self.state.lock().await;
        state.deployments = super::loaded(snapshot.deployments);
        state.epoch = epoch_for_term(snapshot.epoch, term);
        state.next_evaluation.clear();
        state.verdicts.clear();
        state.unstored = Default::default();
        self.sync_unstored_count(&state);
        self.ingest.forget();
        self.ingest.know(state.deployments.values());
        for d in state.deployments.values() {
            self.metrics.observe_deployment(d, None);
        }
        self.table
            .send_replace(Arc::new(super::table_of(&state.deployments, state.epoch)));
        self.watchdog.evaluated(now);
        self.leadership.term.store(term, Ordering::SeqCst);
        self.leadership.leads.store(true, Ordering::SeqCst);
        drop(state);
        self.metrics.leadership(true, term);
        self.metrics.took_over();
        tracing::info!(
            "leading (term {term}): the state of {} deployment(s) loaded from the database",
            self.deployments().await.len()
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_terms_epoch_is_above_every_earlier_one() {
        assert_eq!(epoch_for_term(0, 0), 1);
        assert_eq!(epoch_for_term(7, 1), 1 << 32);
        assert_eq!(epoch_for_term((1 << 32) + 5, 1), (1 << 32) + 6);
        // Everything term 1 could have given out stays below term 2's start.
        assert!(epoch_for_term((1 << 32) + 1_000_000, 2) > (1 << 32) + 1_000_000);
        assert_eq!(epoch_for_term(3, u64::MAX), u64::MAX);
    }
}
