//! Feedback calls: ground truth and business outcomes posted after the
//! fact, checked whole against the deployment (declared metric, registered
//! versions) and counted by arrival into the windows the policy reads.
//!
//! Like the request windows, feedback lives in memory: a controller that
//! restarts judges on what arrives after it (its windows start empty).

use super::{Controller, ServiceError};
use coalmine_decide::window::tally;

impl Controller {
    /// Counts one call's observations of `metric` (version, outcome) for
    /// deployment `name`, all of them or, on any fault, none. Returns how
    /// many were counted.
    pub async fn feedback<'a>(
        &self,
        name: &str,
        metric: &str,
        observations: impl IntoIterator<Item = (&'a str, bool)>,
    ) -> Result<u64, ServiceError> {
        let d = self.deployment(name).await?;
        let counted = tally(&d, metric, observations)?;
        let n = counted.values().map(|&(n, _)| n).sum();
        let window = d
            .policy
            .feedback
            .get(metric)
            .map_or(3600, |m| m.window_seconds);
        if !self
            .ingest
            .feedback(name, metric, window, &counted, self.now())
        {
            return Err(ServiceError::Unavailable(
                "the controller's windows cannot be used; nothing was counted, retry later".into(),
            ));
        }
        self.metrics.feedback_received(name, metric, n);
        Ok(n)
    }
}
