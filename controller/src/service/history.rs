//! A deployment's recent history, one sample a second, for the dashboard's
//! charts: the split, the verdict the engine last reached, and both roles'
//! window statistics.

use super::ServiceError;
use crate::clock::Millis;
use coalmine_client::types::Sample;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// History samples kept per deployment (one a second: 15 minutes).
pub const HISTORY_SAMPLES: usize = 900;

#[derive(Debug, Default)]
pub(crate) struct History {
    samples: Mutex<HashMap<String, VecDeque<Sample>>>,
}

impl History {
    /// Appends one sample per deployment; deployments not in `samples` are
    /// forgotten.
    pub(crate) fn record(&self, samples: Vec<(String, Sample)>) {
        let Ok(mut history) = self.samples.lock() else {
            return;
        };
        history.retain(|name, _| samples.iter().any(|(n, _)| n == name));
        for (name, sample) in samples {
            let h = history.entry(name).or_default();
            if h.len() == HISTORY_SAMPLES {
                h.pop_front();
            }
            h.push_back(sample);
        }
    }

    /// A deployment's samples after `since` (ms), oldest first.
    pub(crate) fn since(&self, name: &str, since: Millis) -> Vec<Sample> {
        self.samples
            .lock()
            .ok()
            .and_then(|h| {
                h.get(name)
                    .map(|s| s.iter().filter(|s| s.at > since).cloned().collect())
            })
            .unwrap_or_default()
    }
}

impl super::Controller {
    /// Records one history sample per deployment: its split, the verdict
    /// the engine last reached, and both roles' numbers now.
    pub async fn sample(&self) {
        let now = self.now();
        let state = self.state.lock().await;
        let samples: Vec<(String, Sample)> = state
            .deployments
            .values()
            .map(|d| {
                let verdict = state.verdict_of(d);
                self.metrics.observe_deployment(d, Some(verdict));
                let mut obs = self.ingest.observe(d, now);
                self.metrics
                    .observe_outputs(&d.name, &obs.baseline, &obs.canary);
                self.metrics.observe_feedback(d, &obs.baseline, &obs.canary);
                let shadow = self.ingest.shadow_stats(d, now);
                self.metrics.observe_shadow(d, shadow.as_ref());
                // The charts draw requests, errors and latency; a second's
                // output mix and feedback are in health and /metrics, not
                // in history.
                for role in [&mut obs.baseline, &mut obs.canary] {
                    role.outputs.clear();
                    role.feedback.clear();
                }
                let sample = Sample {
                    at: now,
                    canary_percent: d.canary.as_ref().map_or(0.0, |c| c.bps.as_percent()),
                    canary_version: d.canary.as_ref().map(|c| c.target.version.clone()),
                    verdict,
                    baseline: obs.baseline,
                    canary: obs.canary,
                };
                (d.name.clone(), sample)
            })
            .collect();
        drop(state);
        self.history.record(samples);
    }

    /// A deployment's history samples after `since` (ms), oldest first.
    pub async fn history(&self, name: &str, since: Millis) -> Result<Vec<Sample>, ServiceError> {
        self.deployment(name).await?;
        Ok(self.history.since(name, since))
    }
}
