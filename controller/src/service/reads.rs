//! What the API reads: deployments as they are in memory, their events
//! from the store, and their health on the window as of now.

use super::{Controller, ServiceError};
use crate::store::StoredEvent;
use coalmine_decide::engine::{self, Deployment};
use coalmine_decide::observe::Observations;
use coalmine_decide::rules::evaluate;
use coalmine_decide::verdict::{Health, Verdict};

impl Controller {
    pub async fn deployments(&self) -> Vec<Deployment> {
        self.state
            .lock()
            .await
            .deployments
            .values()
            .cloned()
            .collect()
    }

    pub async fn deployment(&self, name: &str) -> Result<Deployment, ServiceError> {
        self.state
            .lock()
            .await
            .deployments
            .get(name)
            .cloned()
            .ok_or_else(|| ServiceError::NotFound(name.to_string()))
    }

    pub async fn epoch(&self) -> u64 {
        self.state.lock().await.epoch
    }

    pub async fn events(
        &self,
        name: &str,
        since: i64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, ServiceError> {
        self.deployment(name).await?;
        Ok(self.store.events(name, since, limit).await?)
    }

    /// A deployment's newest events (below `before`), newest first.
    pub async fn latest_events(
        &self,
        name: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, ServiceError> {
        self.deployment(name).await?;
        Ok(self.store.latest_events(name, before, limit).await?)
    }

    /// What the policy looks at for a deployment, ending now.
    pub fn observations(&self, d: &Deployment) -> Observations {
        self.ingest.observe(d, self.now())
    }

    /// The verdict and statistics on the window as of now (the API's health
    /// body; the engine acts on its own evaluations, every check interval).
    pub async fn health(&self, name: &str) -> Result<Health, ServiceError> {
        let d = self.deployment(name).await?;
        Ok(self.health_of(&d))
    }

    /// [`Controller::health`] of a deployment at hand.
    pub fn health_of(&self, d: &Deployment) -> Health {
        let now = self.now();
        let obs = self.ingest.observe(d, now);
        let verdict = match &d.canary {
            Some(_) => evaluate(&d.policy, &obs),
            None => Verdict::no_canary(&d.baseline.version),
        };
        let shadow = self
            .ingest
            .shadow_stats(d, now)
            .and_then(|stats| d.shadow_health(&stats));
        let watch = engine::watch_health(d, &obs, now);
        Health::new(verdict, d.policy.window_seconds, obs.baseline, obs.canary)
            .with_shadow(shadow)
            .with_watch(watch)
    }
}
