//! Rolling windows of per-second buckets, merged from every proxy and worker.
//!
//! Each series is one deployment, role and version. A bucket holds the
//! outcome counts and the latency distribution (HdrHistogram bucket → count,
//! kept sparse: a second of traffic touches few buckets) of everything
//! reported during that second. A window's statistics merge its buckets into
//! one HdrHistogram, so percentiles are exact to the histogram's precision,
//! never averages of per-proxy percentiles.

use coalmine_protocol::stats::{LATENCY_MAX_US, LATENCY_SIGFIG};
use coalmine_protocol::sync::OutcomeCounts;
use coalmine_protocol::{Outcome, Role};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// One role's numbers over a window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RoleWindowStats {
    pub requests: u64,
    pub errors: u64,
    /// errors / requests; 0 without requests (never NaN).
    pub error_rate: f64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// errors / requests, 0 without requests (never NaN).
pub fn error_rate(errors: u64, requests: u64) -> f64 {
    if requests == 0 {
        0.0
    } else {
        errors as f64 / requests as f64
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SeriesKey {
    deployment: String,
    role: Role,
    version: String,
}

#[derive(Debug, Default)]
struct Bucket {
    second: u64,
    counts: OutcomeCounts,
    /// Highest equivalent value of an HdrHistogram bucket → count.
    latency_us: BTreeMap<u64, u64>,
}

impl Bucket {
    fn add(&mut self, counts: &OutcomeCounts, latency: &Histogram<u64>) {
        self.counts.merge(counts);
        for v in latency.iter_recorded() {
            let c = self.latency_us.entry(v.value_iterated_to()).or_default();
            *c = c.saturating_add(v.count_at_value());
        }
    }
}

/// Every series' buckets.
#[derive(Debug, Default)]
pub struct Windows {
    series: HashMap<SeriesKey, VecDeque<Bucket>>,
}

impl Windows {
    /// Adds one report (counts and latencies of one role and version) to the
    /// bucket of `second`.
    pub fn add(
        &mut self,
        deployment: &str,
        role: Role,
        version: &str,
        second: u64,
        counts: &OutcomeCounts,
        latency: &Histogram<u64>,
    ) {
        let key = SeriesKey {
            deployment: deployment.to_string(),
            role,
            version: version.to_string(),
        };
        let buckets = self.series.entry(key).or_default();
        // Reports arrive in time order; the search only matters after a
        // clock step.
        let at = match buckets.back() {
            Some(b) if b.second == second => buckets.len() - 1,
            Some(b) if b.second < second => {
                buckets.push_back(Bucket {
                    second,
                    ..Bucket::default()
                });
                buckets.len() - 1
            }
            None => {
                buckets.push_back(Bucket {
                    second,
                    ..Bucket::default()
                });
                0
            }
            Some(_) => match buckets.binary_search_by_key(&second, |b| b.second) {
                Ok(i) => i,
                Err(i) => {
                    buckets.insert(
                        i,
                        Bucket {
                            second,
                            ..Bucket::default()
                        },
                    );
                    i
                }
            },
        };
        if let Some(b) = buckets.get_mut(at) {
            b.add(counts, latency);
        }
    }

    /// The buckets of one series within the `window_seconds` ending at
    /// `now_second` (inclusive).
    fn buckets_in<'a>(
        &'a self,
        deployment: &str,
        role: Role,
        version: &str,
        now_second: u64,
        window_seconds: u64,
    ) -> impl Iterator<Item = &'a Bucket> + 'a {
        let key = SeriesKey {
            deployment: deployment.to_string(),
            role,
            version: version.to_string(),
        };
        let from = now_second.saturating_sub(window_seconds.saturating_sub(1));
        self.series
            .get(&key)
            .into_iter()
            .flatten()
            .filter(move |b| (from..=now_second).contains(&b.second))
    }

    /// One role and version's statistics over the `window_seconds` ending at
    /// `now_second` (inclusive).
    pub fn stats(
        &self,
        deployment: &str,
        role: Role,
        version: &str,
        now_second: u64,
        window_seconds: u64,
        error_classes: &[Outcome],
    ) -> RoleWindowStats {
        let mut counts = OutcomeCounts::default();
        let Ok(mut merged) = Histogram::<u64>::new_with_bounds(1, LATENCY_MAX_US, LATENCY_SIGFIG)
        else {
            return RoleWindowStats::default();
        };
        for b in self.buckets_in(deployment, role, version, now_second, window_seconds) {
            counts.merge(&b.counts);
            for (&v, &c) in &b.latency_us {
                merged.saturating_record_n(v, c);
            }
        }
        let requests = counts.total();
        let errors = error_classes
            .iter()
            .fold(0u64, |a, &o| a.saturating_add(counts.get(o)));
        let quantile =
            |q: f64| (!merged.is_empty()).then(|| merged.value_at_quantile(q) as f64 / 1000.0);
        RoleWindowStats {
            requests,
            errors,
            error_rate: error_rate(errors, requests),
            p50_ms: quantile(0.50),
            p95_ms: quantile(0.95),
            p99_ms: quantile(0.99),
        }
    }

    /// How many requests of the series in the window took longer than
    /// `threshold_ms` (to HdrHistogram precision).
    pub fn count_slower(
        &self,
        deployment: &str,
        role: Role,
        version: &str,
        now_second: u64,
        window_seconds: u64,
        threshold_ms: f64,
    ) -> u64 {
        let threshold_us = (threshold_ms * 1000.0).max(0.0) as u64;
        self.buckets_in(deployment, role, version, now_second, window_seconds)
            .flat_map(|b| {
                b.latency_us
                    .range(threshold_us.saturating_add(1)..)
                    .map(|(_, c)| *c)
            })
            .fold(0u64, u64::saturating_add)
    }

    /// Forgets buckets older than `keep_seconds` before `now_second`, and
    /// series left empty.
    pub fn prune(&mut self, now_second: u64, keep_seconds: u64) {
        let oldest = now_second.saturating_sub(keep_seconds);
        self.series.retain(|_, buckets| {
            while buckets.front().is_some_and(|b| b.second < oldest) {
                buckets.pop_front();
            }
            !buckets.is_empty()
        });
    }

    /// Drops every series of a deployment.
    pub fn forget(&mut self, deployment: &str) {
        self.series.retain(|k, _| k.deployment != deployment);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(latencies_us: &[u64]) -> Histogram<u64> {
        let mut h = Histogram::new_with_bounds(1, LATENCY_MAX_US, LATENCY_SIGFIG).unwrap();
        for &l in latencies_us {
            h.record(l).unwrap();
        }
        h
    }

    fn counts(ok: u64, server_errors: u64, resets: u64) -> OutcomeCounts {
        OutcomeCounts {
            success: ok,
            server_error: server_errors,
            reset: resets,
            ..OutcomeCounts::default()
        }
    }

    #[test]
    fn merges_proxies_and_seconds_into_exact_percentiles() {
        let mut w = Windows::default();
        // Two proxies report in the same second, a third a second later.
        let a: Vec<u64> = (1..=50).map(|i| i * 1000).collect();
        let b: Vec<u64> = (51..=100).map(|i| i * 1000).collect();
        w.add("d", Role::Canary, "v2", 100, &counts(49, 1, 0), &hist(&a));
        w.add("d", Role::Canary, "v2", 100, &counts(50, 0, 0), &hist(&b));
        w.add(
            "d",
            Role::Canary,
            "v2",
            101,
            &counts(0, 0, 1),
            &hist(&[500_000]),
        );
        let s = w.stats(
            "d",
            Role::Canary,
            "v2",
            101,
            300,
            &[Outcome::ServerError, Outcome::Reset],
        );
        assert_eq!((s.requests, s.errors), (101, 2));
        assert!((s.error_rate - 2.0 / 101.0).abs() < 1e-12);
        // p50 of 1..100 ms and one 500 ms: 51 ms (within 1 %).
        let p50 = s.p50_ms.unwrap();
        assert!((50.5..=51.6).contains(&p50), "{p50}");
        let p99 = s.p99_ms.unwrap();
        assert!((99.0..=101.0).contains(&p99), "{p99}");
        // 2 of the 101 took longer than 99 ms (100 ms and 500 ms).
        assert_eq!(w.count_slower("d", Role::Canary, "v2", 101, 300, 99.5), 2);
        assert_eq!(w.count_slower("d", Role::Canary, "v2", 101, 300, 1000.0), 0);
        // Which classes are errors is the policy's choice.
        let s = w.stats("d", Role::Canary, "v2", 101, 300, &[Outcome::ServerError]);
        assert_eq!(s.errors, 1);
    }

    #[test]
    fn the_window_slides() {
        let mut w = Windows::default();
        w.add(
            "d",
            Role::Baseline,
            "v1",
            10,
            &counts(5, 5, 0),
            &hist(&[1000; 10]),
        );
        w.add(
            "d",
            Role::Baseline,
            "v1",
            20,
            &counts(10, 0, 0),
            &hist(&[2000; 10]),
        );
        let at = |now, window| {
            w.stats(
                "d",
                Role::Baseline,
                "v1",
                now,
                window,
                &[Outcome::ServerError],
            )
        };
        assert_eq!(at(20, 11).requests, 20);
        assert_eq!(
            at(20, 10).requests,
            10,
            "second 10 is outside a 10 s window ending at 20"
        );
        assert_eq!(at(29, 10).requests, 10);
        assert_eq!(at(30, 10).requests, 0);
        assert_eq!(at(30, 10), RoleWindowStats::default());
        // Versions and roles are separate series.
        assert_eq!(w.stats("d", Role::Baseline, "v2", 20, 60, &[]).requests, 0);
        assert_eq!(w.stats("d", Role::Canary, "v1", 20, 60, &[]).requests, 0);
    }

    #[test]
    fn late_reports_land_in_their_second_and_pruning_forgets() {
        let mut w = Windows::default();
        w.add(
            "d",
            Role::Canary,
            "v2",
            50,
            &counts(1, 0, 0),
            &hist(&[1000]),
        );
        w.add(
            "d",
            Role::Canary,
            "v2",
            40,
            &counts(1, 0, 0),
            &hist(&[1000]),
        );
        w.add(
            "d",
            Role::Canary,
            "v2",
            45,
            &counts(1, 0, 0),
            &hist(&[1000]),
        );
        assert_eq!(w.stats("d", Role::Canary, "v2", 50, 8, &[]).requests, 2);
        w.prune(50, 6);
        assert_eq!(w.stats("d", Role::Canary, "v2", 50, 100, &[]).requests, 2);
        w.prune(1000, 6);
        assert!(w.series.is_empty());
    }
}
