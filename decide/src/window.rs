//! Rolling windows of per-second buckets, merged from every proxy and worker.
//!
//! Each series is one deployment, role and version. A bucket holds the
//! outcome counts and the latency distribution (HdrHistogram bucket → count,
//! kept sparse: a second of traffic touches few buckets) of everything
//! reported during that second. A window's statistics merge its buckets into
//! one HdrHistogram, so percentiles are exact to the histogram's precision,
//! never averages of per-proxy percentiles. For deployments that read
//! outputs, a bucket also holds each field's counts by label or score slot.
//! A deployment's shadow has its own series (`window/shadow.rs`): its
//! answers, latencies and per-field agreement with the answers users got.

mod feedback;
mod proxies;
mod shadow;

pub use feedback::{FeedbackSeries, FeedbackStats, MAX_BUCKETS, Tally, tally};
pub use proxies::{
    LUMPED, Loudest, MAX_PROXIES, PROXY_BUCKETS, ProxySeries, Span, proxy_bucket_seconds,
};
pub use shadow::{Agreement, ShadowReported, ShadowRun, ShadowSeries, ShadowWindowStats};

use coalmine_protocol::outputs::{FieldCounts, FieldReport, MAX_FIELDS, MAX_LABELS, Skips};
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
    /// Per output field, the answers read by label or score slot (at most
    /// [`MAX_LABELS`] labels, the most frequent; the rest are `other`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub outputs: BTreeMap<String, FieldCounts>,
    /// Answers sampled but not read, by why.
    #[serde(default, skip_serializing_if = "Skips::is_empty")]
    pub outputs_skipped: Skips,
    /// Per declared feedback metric with observations, what arrived over
    /// the metric's own window.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub feedback: BTreeMap<String, FeedbackStats>,
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

/// Labels a bucket keeps per field before counting further ones as
/// `other`: twice what a window shows, so the most frequent survive.
const BUCKET_LABELS: usize = 2 * MAX_LABELS;

#[derive(Debug, Default)]
struct Bucket {
    second: u64,
    counts: OutcomeCounts,
    /// Highest equivalent value of an HdrHistogram bucket → count.
    latency_us: BTreeMap<u64, u64>,
    /// Per output field (at most [`MAX_FIELDS`]).
    outputs: BTreeMap<String, FieldCounts>,
    skipped: Skips,
}

/// One report of one role and version: what [`Windows::add`] takes in.
#[derive(Clone, Copy, Debug)]
pub struct Reported<'a> {
    pub counts: &'a OutcomeCounts,
    pub latency: &'a Histogram<u64>,
    pub outputs: &'a [FieldReport],
    pub skipped: Skips,
}

impl<'a> Reported<'a> {
    /// Counts and latencies only.
    pub fn requests(counts: &'a OutcomeCounts, latency: &'a Histogram<u64>) -> Reported<'a> {
        Reported {
            counts,
            latency,
            outputs: &[],
            skipped: Skips::default(),
        }
    }
}

/// A report's latencies as (highest equivalent value, count): read once
/// from its histogram (a walk of every slot) for every bucket it joins.
fn recorded(latency: &Histogram<u64>) -> Vec<(u64, u64)> {
    latency
        .iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

impl Bucket {
    fn add(&mut self, r: &Reported<'_>, recorded: &[(u64, u64)]) {
        self.counts.merge(r.counts);
        for &(v, n) in recorded {
            let c = self.latency_us.entry(v).or_default();
            *c = c.saturating_add(n);
        }
        let fields = r.outputs.iter().map(|f| (f.field.as_str(), &f.counts));
        merge_outputs(&mut self.outputs, fields, BUCKET_LABELS);
        self.skipped.merge(&r.skipped);
    }
}

/// Adds fields' counts to `into`: a new field while there is room for it,
/// a known one when of the same kind and shape (otherwise dropped).
fn merge_outputs<'a>(
    into: &mut BTreeMap<String, FieldCounts>,
    fields: impl Iterator<Item = (&'a str, &'a FieldCounts)>,
    max_labels: usize,
) {
    for (field, counts) in fields {
        let room = into.len() < MAX_FIELDS;
        match into.get_mut(field) {
            Some(c) => {
                c.merge(counts, max_labels);
            }
            None if room => {
                let mut c = counts.emptied();
                c.merge(counts, max_labels);
                into.insert(field.to_string(), c);
            }
            None => {}
        }
    }
}

/// A field's labels cut to the [`MAX_LABELS`] most frequent (ties by
/// label), the rest counted as `other`.
fn most_frequent(counts: FieldCounts) -> FieldCounts {
    match counts {
        FieldCounts::Class { labels, other } if labels.len() > MAX_LABELS => {
            let mut by_count: Vec<(String, u64)> = labels.into_iter().collect();
            by_count.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            let rest = by_count.split_off(MAX_LABELS);
            let other = rest.iter().fold(other, |a, (_, n)| a.saturating_add(*n));
            FieldCounts::Class {
                labels: by_count.into_iter().collect(),
                other,
            }
        }
        counts => counts,
    }
}

/// A series keeps at most this many buckets over its deployment's window:
/// one a second up to 10 minutes, wider beyond (a day's window counts by
/// the 144 seconds), so memory and the time to read a window do not grow
/// with it.
pub const MAX_WINDOW_BUCKETS: u64 = 600;

/// The bucket width for a deployment judged over `window_seconds`.
pub fn bucket_seconds(window_seconds: u64) -> u64 {
    (window_seconds / MAX_WINDOW_BUCKETS).max(1)
}

/// The bucket of `second` in `buckets` (kept in time order), made by
/// `new` when missing. Reports arrive in time order; the search only
/// matters after a clock step.
pub(crate) fn bucket_of<B>(
    buckets: &mut VecDeque<B>,
    second: u64,
    second_of: impl Fn(&B) -> u64,
    new: impl FnOnce(u64) -> B,
) -> Option<&mut B> {
    let at = match buckets.back().map(&second_of) {
        Some(s) if s == second => buckets.len() - 1,
        Some(s) if s > second => match buckets.binary_search_by_key(&second, &second_of) {
            Ok(i) => i,
            Err(i) => {
                buckets.insert(i, new(second));
                i
            }
        },
        _ => {
            buckets.push_back(new(second));
            buckets.len() - 1
        }
    };
    buckets.get_mut(at)
}

/// Every series' buckets.
#[derive(Debug, Default)]
pub struct Windows {
    series: HashMap<SeriesKey, VecDeque<Bucket>>,
    /// Feedback (delayed labels, business outcomes) by arrival.
    pub feedback: FeedbackSeries,
    /// What each deployment's shadow answered.
    pub shadow: ShadowSeries,
    /// Each proxy's part of the baseline and canary series.
    pub proxies: ProxySeries,
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
        reported: &Reported<'_>,
    ) {
        self.add_recorded(
            deployment,
            role,
            version,
            second,
            reported,
            &recorded(reported.latency),
        );
    }

    /// Adds one of `proxy`'s reports to the bucket of `seconds.0` and to
    /// the proxy's own bucket of `seconds.1` (see [`proxy_bucket_seconds`]).
    pub fn add_from(
        &mut self,
        proxy: &str,
        deployment: &str,
        role: Role,
        version: &str,
        seconds: (u64, u64),
        reported: &Reported<'_>,
    ) {
        let recorded = recorded(reported.latency);
        self.add_recorded(deployment, role, version, seconds.0, reported, &recorded);
        let series = (deployment, role, version);
        self.proxies
            .add_recorded(series, proxy, seconds.1, reported, &recorded);
    }

    fn add_recorded(
        &mut self,
        deployment: &str,
        role: Role,
        version: &str,
        second: u64,
        reported: &Reported<'_>,
        recorded: &[(u64, u64)],
    ) {
        let key = SeriesKey {
            deployment: deployment.to_string(),
            role,
            version: version.to_string(),
        };
        let buckets = self.series.entry(key).or_default();
        if let Some(b) = bucket_of(
            buckets,
            second,
            |b| b.second,
            |second| Bucket {
                second,
                ..Bucket::default()
            },
        ) {
            b.add(reported, recorded);
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
        let buckets = self.buckets_in(deployment, role, version, now_second, window_seconds);
        stats_of(buckets, error_classes)
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
        let buckets = self.buckets_in(deployment, role, version, now_second, window_seconds);
        slower_of(buckets, threshold_ms)
    }

    /// Forgets buckets older than `keep_seconds` before `now_second`, and
    /// series left empty.
    pub fn prune(&mut self, now_second: u64, keep_seconds: u64) {
        self.shadow.prune(now_second, keep_seconds);
        self.proxies.prune(now_second, keep_seconds);
        let oldest = now_second.saturating_sub(keep_seconds);
        prune_buckets(&mut self.series, oldest, |b| b.second);
    }

    /// Drops every series of a deployment.
    pub fn forget(&mut self, deployment: &str) {
        self.shadow.forget(deployment);
        self.proxies.forget(deployment);
        self.series.retain(|k, _| k.deployment != deployment);
    }
}

/// `ok` successes and `errors` server errors, all taking 20 ms: a
/// report's counts and latencies in tests.
#[cfg(test)]
pub(crate) fn twenty_ms(ok: u64, errors: u64) -> (OutcomeCounts, Histogram<u64>) {
    let mut counts = OutcomeCounts::default();
    counts.add(Outcome::Success, ok);
    counts.add(Outcome::ServerError, errors);
    let mut h = Histogram::new_with_bounds(1, LATENCY_MAX_US, LATENCY_SIGFIG)
        .unwrap_or_else(|e| panic!("{e}"));
    h.saturating_record_n(20_000, ok + errors);
    (counts, h)
}

/// The statistics of `buckets` merged: counts, percentiles from one
/// HdrHistogram, outputs cut to the most frequent labels.
fn stats_of<'a>(
    buckets: impl Iterator<Item = &'a Bucket>,
    error_classes: &[Outcome],
) -> RoleWindowStats {
    let mut counts = OutcomeCounts::default();
    let Ok(mut merged) = Histogram::<u64>::new_with_bounds(1, LATENCY_MAX_US, LATENCY_SIGFIG)
    else {
        return RoleWindowStats::default();
    };
    let mut outputs = BTreeMap::new();
    let mut outputs_skipped = Skips::default();
    for b in buckets {
        counts.merge(&b.counts);
        for (&v, &c) in &b.latency_us {
            merged.saturating_record_n(v, c);
        }
        let fields = b.outputs.iter().map(|(f, c)| (f.as_str(), c));
        merge_outputs(&mut outputs, fields, usize::MAX);
        outputs_skipped.merge(&b.skipped);
    }
    let outputs = outputs
        .into_iter()
        .map(|(f, c)| (f, most_frequent(c)))
        .collect();
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
        outputs,
        outputs_skipped,
        feedback: BTreeMap::new(),
    }
}

/// How many requests in `buckets` took longer than `threshold_ms`.
fn slower_of<'a>(buckets: impl Iterator<Item = &'a Bucket>, threshold_ms: f64) -> u64 {
    let threshold_us = (threshold_ms * 1000.0).max(0.0) as u64;
    buckets
        .flat_map(|b| {
            b.latency_us
                .range(threshold_us.saturating_add(1)..)
                .map(|(_, c)| *c)
        })
        .fold(0u64, u64::saturating_add)
}

/// Drops the buckets of each series older than `oldest` (buckets are in
/// time order), and the series left empty.
fn prune_buckets<K, B>(
    series: &mut HashMap<K, VecDeque<B>>,
    oldest: u64,
    second: impl Fn(&B) -> u64,
) {
    series.retain(|_, buckets| {
        while buckets.front().is_some_and(|b| second(b) < oldest) {
            buckets.pop_front();
        }
        !buckets.is_empty()
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_windows_keep_a_bounded_number_of_buckets() {
        assert_eq!(bucket_seconds(300), 1);
        assert_eq!(bucket_seconds(3600), 6);
        assert_eq!(bucket_seconds(86_400), 144);
        assert!(86_400 / bucket_seconds(86_400) <= MAX_WINDOW_BUCKETS);
    }

    fn hist(latencies_us: &[u64]) -> Histogram<u64> {
        let mut h = Histogram::new_with_bounds(1, LATENCY_MAX_US, LATENCY_SIGFIG).unwrap();
        for &l in latencies_us {
            h.record(l).unwrap();
        }
        h
    }

    fn add(
        w: &mut Windows,
        role: Role,
        version: &str,
        second: u64,
        counts: OutcomeCounts,
        latency: Histogram<u64>,
    ) {
        let r = Reported::requests(&counts, &latency);
        w.add("d", role, version, second, &r);
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
        add(&mut w, Role::Canary, "v2", 100, counts(49, 1, 0), hist(&a));
        add(&mut w, Role::Canary, "v2", 100, counts(50, 0, 0), hist(&b));
        add(
            &mut w,
            Role::Canary,
            "v2",
            101,
            counts(0, 0, 1),
            hist(&[500_000]),
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
        add(
            &mut w,
            Role::Baseline,
            "v1",
            10,
            counts(5, 5, 0),
            hist(&[1000; 10]),
        );
        add(
            &mut w,
            Role::Baseline,
            "v1",
            20,
            counts(10, 0, 0),
            hist(&[2000; 10]),
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
        add(
            &mut w,
            Role::Canary,
            "v2",
            50,
            counts(1, 0, 0),
            hist(&[1000]),
        );
        add(
            &mut w,
            Role::Canary,
            "v2",
            40,
            counts(1, 0, 0),
            hist(&[1000]),
        );
        add(
            &mut w,
            Role::Canary,
            "v2",
            45,
            counts(1, 0, 0),
            hist(&[1000]),
        );
        assert_eq!(w.stats("d", Role::Canary, "v2", 50, 8, &[]).requests, 2);
        w.prune(50, 6);
        assert_eq!(w.stats("d", Role::Canary, "v2", 50, 100, &[]).requests, 2);
        w.prune(1000, 6);
        assert!(w.series.is_empty());
    }

    fn class(labels: &[(&str, u64)]) -> FieldReport {
        FieldReport {
            field: "prediction".into(),
            counts: FieldCounts::Class {
                labels: labels.iter().map(|&(l, n)| (l.to_string(), n)).collect(),
                other: 0,
            },
        }
    }

    #[test]
    fn outputs_merge_over_the_window_keeping_the_most_frequent_labels() {
        let mut w = Windows::default();
        let ok = counts(100, 0, 0);
        let h = hist(&[1000; 100]);
        fn reported<'a>(
            counts: &'a OutcomeCounts,
            latency: &'a Histogram<u64>,
            outputs: &'a [FieldReport],
            skipped: Skips,
        ) -> Reported<'a> {
            Reported {
                counts,
                latency,
                outputs,
                skipped,
            }
        }
        let first = [class(&[("0", 30), ("1", 20)])];
        let none = Skips::default();
        w.add(
            "d",
            Role::Canary,
            "v2",
            10,
            &reported(&ok, &h, &first, none),
        );
        let skipped = Skips {
            too_large: 2,
            encoded: 1,
        };
        let second = [class(&[("1", 5), ("2", 1)])];
        w.add(
            "d",
            Role::Canary,
            "v2",
            11,
            &reported(&ok, &h, &second, skipped),
        );
        // Twenty more labels, each seen once, in another second.
        let many: Vec<(String, u64)> = (0..20).map(|i| (format!("x{i}"), 1)).collect();
        let many: Vec<(&str, u64)> = many.iter().map(|(l, n)| (l.as_str(), *n)).collect();
        let third = [class(&many)];
        w.add(
            "d",
            Role::Canary,
            "v2",
            12,
            &reported(&ok, &h, &third, none),
        );
        let s = w.stats("d", Role::Canary, "v2", 12, 60, &[]);
        let FieldCounts::Class { labels, other } = &s.outputs["prediction"] else {
            panic!("{s:?}")
        };
        assert_eq!(labels.len(), MAX_LABELS);
        assert_eq!((labels["0"], labels["1"], labels["2"]), (30, 25, 1));
        assert_eq!(
            s.outputs["prediction"].total(),
            76,
            "nothing lost: {other} other"
        );
        assert_eq!(s.outputs_skipped, skipped);
        // The first second leaves a 2 s window.
        let s = w.stats("d", Role::Canary, "v2", 12, 2, &[]);
        assert_eq!(s.outputs["prediction"].total(), 26);
        // Without outputs, the statistics show none.
        assert!(
            w.stats("d", Role::Baseline, "v1", 12, 60, &[])
                .outputs
                .is_empty()
        );
    }
}
