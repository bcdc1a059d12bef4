//! A deployment's recent history, one sample a second, for the dashboard's
//! charts: the split, the verdict the engine last reached, and both roles'
//! window statistics.

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
