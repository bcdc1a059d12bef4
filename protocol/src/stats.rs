//! Per-role request statistics: outcome counters and a latency HdrHistogram
//! in microseconds.
//!
//! - [`RoleStats`]: what one role of one deployment saw.
//! - `histogram`: the wire form of a latency histogram ([`encode_histogram`],
//!   [`decode_histogram`]), strict about what it accepts from outside.
//! - `pending`: a worker's [`PendingReports`], per deployment, role and
//!   version, until a sync drains them into [`crate::sync::RoleReport`]s.

mod histogram;
mod pending;

pub use histogram::{HistogramError, MAX_HISTOGRAM_BYTES, decode_histogram, encode_histogram};
pub use pending::{FinishedRequest, PendingReports};

use crate::outcome::Outcome;
use hdrhistogram::Histogram;

/// Latencies above one hour are recorded as one hour.
pub const LATENCY_MAX_US: u64 = 3_600_000_000;
/// Two significant digits: percentiles within 1 %, in about 26 KiB per histogram.
pub const LATENCY_SIGFIG: u8 = 2;

#[derive(Debug, thiserror::Error)]
#[error("cannot create the latency histogram: {0}")]
pub struct StatsError(#[from] hdrhistogram::CreationError);

/// What one role of one deployment saw.
#[derive(Clone, Debug)]
pub struct RoleStats {
    counts: [u64; Outcome::ALL.len()],
    latency_us: Histogram<u64>,
}

impl RoleStats {
    pub fn try_new() -> Result<RoleStats, StatsError> {
        Ok(RoleStats {
            counts: [0; Outcome::ALL.len()],
            latency_us: Histogram::new_with_bounds(1, LATENCY_MAX_US, LATENCY_SIGFIG)?,
        })
    }

    /// Records one finished request. Never fails: latencies outside the
    /// histogram's range are clamped into it.
    pub fn record(&mut self, outcome: Outcome, latency_us: u64) {
        if let Some(c) = self.counts.get_mut(outcome.index()) {
            *c = c.saturating_add(1);
        }
        self.latency_us.saturating_record(latency_us.max(1));
    }

    pub fn count(&self, outcome: Outcome) -> u64 {
        self.counts.get(outcome.index()).copied().unwrap_or(0)
    }

    pub fn requests(&self) -> u64 {
        self.counts.iter().fold(0, |a, &c| a.saturating_add(c))
    }

    pub fn latency_us(&self) -> &Histogram<u64> {
        &self.latency_us
    }

    /// Forgets everything recorded so far (keeps the allocation).
    pub fn clear(&mut self) {
        self.counts = [0; Outcome::ALL.len()];
        self.latency_us.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_counts_and_latency() {
        let mut s = RoleStats::try_new().unwrap();
        for i in 1..=100u64 {
            let outcome = if i % 10 == 0 {
                Outcome::ServerError
            } else {
                Outcome::Success
            };
            s.record(outcome, i * 1000);
        }
        s.record(Outcome::Reset, 0);
        s.record(Outcome::ClientError, u64::MAX);
        assert_eq!(s.requests(), 102);
        assert_eq!(s.count(Outcome::ServerError), 10);
        assert_eq!(s.count(Outcome::Reset), 1);
        assert_eq!(s.latency_us().len(), 102);
        // p50 of 0, 1ms..100ms, max → ~50 ms within the histogram's 1 %.
        let p50 = s.latency_us().value_at_quantile(0.5);
        assert!((49_000..=51_000).contains(&p50), "{p50}");
        assert!(s.latency_us().max() >= LATENCY_MAX_US);
        s.clear();
        assert_eq!(s.requests(), 0);
        assert_eq!(s.latency_us().len(), 0);
    }

    /// Pinned quantiles: identical on 64-bit hosts and wasm32.
    #[test]
    fn golden_quantiles_are_platform_independent() {
        let mut s = RoleStats::try_new().unwrap();
        for i in 0..10_000u64 {
            s.record(Outcome::Success, (i * 7919) % 250_000 + 1);
        }
        let q: Vec<u64> = [0.5, 0.95, 0.99]
            .iter()
            .map(|&q| s.latency_us().value_at_quantile(q))
            .collect();
        assert_eq!(q, GOLDEN_QUANTILES);
    }
    const GOLDEN_QUANTILES: [u64; 3] = [124927, 237567, 247807];
}
