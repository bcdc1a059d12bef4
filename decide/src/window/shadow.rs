//! A shadow's answers over the window: per deployment and shadow run (its
//! version and when the run started), per-second buckets of the shadow's outcome counts, its latencies (sparse
//! HdrHistogram buckets, as the roles' windows keep them), per output field
//! how many answers were compared with the user's and how many agreed, the
//! answers that could not be compared, and the copies not made, by why.

use super::{bucket_of, error_rate, prune_buckets};
use coalmine_protocol::Outcome;
use coalmine_protocol::outputs::MAX_FIELDS;
use coalmine_protocol::shadow::{FieldAgreement, ShadowSkips};
use coalmine_protocol::stats::{LATENCY_MAX_US, LATENCY_SIGFIG};
use coalmine_protocol::sync::OutcomeCounts;
use hdrhistogram::Histogram;
use std::collections::{BTreeMap, HashMap, VecDeque};

/// One field's agreement: answers compared (both the user's and the
/// shadow's read whole) and how many of them agreed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Agreement {
    pub compared: u64,
    pub agreed: u64,
}

impl Agreement {
    fn merge(&mut self, other: Agreement) {
        self.compared = self.compared.saturating_add(other.compared);
        self.agreed = self.agreed.saturating_add(other.agreed.min(other.compared));
    }

    /// agreed / compared; none before anything was compared.
    pub fn rate(&self) -> Option<f64> {
        (self.compared > 0).then(|| self.agreed.min(self.compared) as f64 / self.compared as f64)
    }
}

/// A shadow's numbers over a window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShadowWindowStats {
    /// The shadow's answers by outcome class.
    pub counts: OutcomeCounts,
    pub requests: u64,
    /// Answers of the policy's error classes.
    pub errors: u64,
    /// errors / requests; 0 without requests (never NaN).
    pub error_rate: f64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Per output field (at most [`MAX_FIELDS`]), by name.
    pub fields: BTreeMap<String, Agreement>,
    /// Answers that could not be compared (one side not read whole).
    pub uncompared: u64,
    /// Copies not made, by why.
    pub skipped: ShadowSkips,
}

/// One decoded shadow report: what [`ShadowSeries::add`] takes in.
#[derive(Clone, Copy, Debug)]
pub struct ShadowReported<'a> {
    pub counts: &'a OutcomeCounts,
    pub latency: &'a Histogram<u64>,
    pub agreement: &'a [FieldAgreement],
    pub uncompared: u64,
    pub skipped: ShadowSkips,
}

#[derive(Debug, Default)]
struct Bucket {
    second: u64,
    counts: OutcomeCounts,
    /// Highest equivalent value of an HdrHistogram bucket → count.
    latency_us: BTreeMap<u64, u64>,
    fields: BTreeMap<String, Agreement>,
    uncompared: u64,
    skipped: ShadowSkips,
}

/// Adds fields' agreement to `into`: a known field always, a new one
/// while there is room for it (at most [`MAX_FIELDS`]).
fn merge_fields<'a>(
    into: &mut BTreeMap<String, Agreement>,
    fields: impl Iterator<Item = (&'a str, Agreement)>,
) {
    for (field, a) in fields {
        let room = into.len() < MAX_FIELDS;
        match into.get_mut(field) {
            Some(known) => known.merge(a),
            None if room => {
                let mut new = Agreement::default();
                new.merge(a);
                into.insert(field.to_string(), new);
            }
            None => {}
        }
    }
}

impl Bucket {
    fn add(&mut self, r: &ShadowReported<'_>) {
        self.counts.merge(r.counts);
        for v in r.latency.iter_recorded() {
            let c = self.latency_us.entry(v.value_iterated_to()).or_default();
            *c = c.saturating_add(v.count_at_value());
        }
        let fields = r.agreement.iter().map(|f| {
            let a = Agreement {
                compared: f.compared,
                agreed: f.agreed,
            };
            (f.field.as_str(), a)
        });
        merge_fields(&mut self.fields, fields);
        self.uncompared = self.uncompared.saturating_add(r.uncompared);
        self.skipped.merge(&r.skipped);
    }
}

/// One run of a deployment's shadow: its version and when the run started
/// (ms). Starting the same version again, or a change of the baseline it is
/// compared with, is a new run with a series of its own, so a run never
/// counts what an earlier one was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShadowRun<'a> {
    pub deployment: &'a str,
    pub version: &'a str,
    pub started_at: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    deployment: String,
    version: String,
    started_at: u64,
}

impl Key {
    fn of(run: ShadowRun<'_>) -> Key {
        Key {
            deployment: run.deployment.to_string(),
            version: run.version.to_string(),
            started_at: run.started_at,
        }
    }
}

/// Every deployment's shadow runs' buckets.
#[derive(Debug, Default)]
pub struct ShadowSeries {
    series: HashMap<Key, VecDeque<Bucket>>,
}

impl ShadowSeries {
    /// Adds one report of `run` to the bucket of `second`. The first report
    /// of a run forgets the deployment's earlier runs: a deployment has one
    /// shadow, and an ended run is never read again.
    pub fn add(&mut self, run: ShadowRun<'_>, second: u64, reported: &ShadowReported<'_>) {
        let key = Key::of(run);
        if !self.series.contains_key(&key) {
            self.series
                .retain(|k, _| k.deployment != run.deployment || *k == key);
        }
        let buckets = self.series.entry(key).or_default();
        let new = |second| Bucket {
            second,
            ..Bucket::default()
        };
        if let Some(b) = bucket_of(buckets, second, |b| b.second, new) {
            b.add(reported);
        }
    }

    /// The shadow `run` over the `window_seconds` ending at `now_second`
    /// (inclusive): only what was added to this run; `error_classes` are
    /// the errors.
    pub fn stats(
        &self,
        run: ShadowRun<'_>,
        now_second: u64,
        window_seconds: u64,
        error_classes: &[Outcome],
    ) -> ShadowWindowStats {
        let key = Key::of(run);
        let Ok(mut merged) = Histogram::<u64>::new_with_bounds(1, LATENCY_MAX_US, LATENCY_SIGFIG)
        else {
            return ShadowWindowStats::default();
        };
        let from = now_second.saturating_sub(window_seconds.saturating_sub(1));
        let mut s = ShadowWindowStats::default();
        let buckets = self.series.get(&key).into_iter().flatten();
        for b in buckets.filter(|b| (from..=now_second).contains(&b.second)) {
            s.counts.merge(&b.counts);
            for (&v, &c) in &b.latency_us {
                merged.saturating_record_n(v, c);
            }
            merge_fields(
                &mut s.fields,
                b.fields.iter().map(|(f, a)| (f.as_str(), *a)),
            );
            s.uncompared = s.uncompared.saturating_add(b.uncompared);
            s.skipped.merge(&b.skipped);
        }
        s.requests = s.counts.total();
        s.errors = error_classes
            .iter()
            .fold(0u64, |a, &o| a.saturating_add(s.counts.get(o)));
        s.error_rate = error_rate(s.errors, s.requests);
        let quantile =
            |q: f64| (!merged.is_empty()).then(|| merged.value_at_quantile(q) as f64 / 1000.0);
        s.p50_ms = quantile(0.50);
        s.p95_ms = quantile(0.95);
        s.p99_ms = quantile(0.99);
        s
    }

    /// Forgets buckets older than `keep_seconds` before `now_second`, and
    /// series left empty.
    pub fn prune(&mut self, now_second: u64, keep_seconds: u64) {
        let oldest = now_second.saturating_sub(keep_seconds);
        prune_buckets(&mut self.series, oldest, |b| b.second);
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

    fn agreement(field: &str, compared: u64, agreed: u64) -> FieldAgreement {
        FieldAgreement {
            field: field.into(),
            compared,
            agreed,
        }
    }

    /// `ok` 2xx answers at `latency_us` and `failed` 5xx, `fields` compared.
    fn add(
        s: &mut ShadowSeries,
        version: &str,
        second: u64,
        (ok, failed): (u64, u64),
        latency_us: u64,
        fields: &[FieldAgreement],
        skipped: ShadowSkips,
    ) {
        let counts = OutcomeCounts {
            success: ok,
            server_error: failed,
            ..OutcomeCounts::default()
        };
        let h = hist(&vec![latency_us; usize::try_from(ok + failed).unwrap()]);
        let r = ShadowReported {
            counts: &counts,
            latency: &h,
            agreement: fields,
            uncompared: failed,
            skipped,
        };
        s.add(run(version, 0), second, &r);
    }

    /// `compared` 2xx answers of `at`, `agreed` of them agreeing.
    fn report(s: &mut ShadowSeries, at: ShadowRun<'_>, second: u64, compared: u64, agreed: u64) {
        let counts = OutcomeCounts {
            success: compared,
            ..OutcomeCounts::default()
        };
        let h = hist(&vec![1000; usize::try_from(compared).unwrap()]);
        let fields = [agreement("prediction", compared, agreed)];
        let r = ShadowReported {
            counts: &counts,
            latency: &h,
            agreement: &fields,
            uncompared: 0,
            skipped: ShadowSkips::default(),
        };
        s.add(at, second, &r);
    }

    /// heart-prod's shadow `version`, its run started at `started_at`.
    fn run(version: &str, started_at: u64) -> ShadowRun<'_> {
        ShadowRun {
            deployment: "heart-prod",
            version,
            started_at,
        }
    }

    const ERRORS: [Outcome; 2] = [Outcome::ServerError, Outcome::Reset];

    #[test]
    fn proxies_and_seconds_merge_into_one_window() {
        let mut s = ShadowSeries::default();
        let busy = ShadowSkips {
            busy: 3,
            ..ShadowSkips::default()
        };
        let large = ShadowSkips {
            too_large: 2,
            ..ShadowSkips::default()
        };
        // Two proxies in second 10, one in second 11 naming a second field.
        add(
            &mut s,
            "v3",
            10,
            (40, 0),
            10_000,
            &[agreement("prediction", 40, 38)],
            busy,
        );
        add(
            &mut s,
            "v3",
            10,
            (50, 10),
            20_000,
            &[agreement("prediction", 50, 40)],
            large,
        );
        add(
            &mut s,
            "v3",
            11,
            (10, 0),
            30_000,
            &[
                agreement("prediction", 10, 10),
                agreement("probability", 10, 7),
            ],
            ShadowSkips::default(),
        );
        let w = s.stats(run("v3", 0), 11, 300, &ERRORS);
        assert_eq!((w.requests, w.errors, w.uncompared), (110, 10, 10));
        assert!((w.error_rate - 10.0 / 110.0).abs() < 1e-12);
        assert_eq!(
            w.fields["prediction"],
            Agreement {
                compared: 100,
                agreed: 88
            }
        );
        assert_eq!(w.fields["probability"].rate(), Some(0.7));
        assert_eq!(
            w.skipped,
            ShadowSkips {
                busy: 3,
                too_large: 2,
                ..ShadowSkips::default()
            }
        );
        let p50 = w.p50_ms.unwrap();
        assert!((19.9..=20.1).contains(&p50), "{p50}");
        assert!((29.9..=30.1).contains(&w.p99_ms.unwrap()));
        // A 1 s window ending at 11 holds only that second.
        let last = s.stats(run("v3", 0), 11, 1, &ERRORS);
        assert_eq!(
            (last.requests, last.fields["prediction"].compared),
            (10, 10)
        );
        // Versions are separate series; an unknown one is empty, never NaN.
        let other = s.stats(run("v4", 0), 11, 300, &ERRORS);
        assert_eq!(other, ShadowWindowStats::default());
        assert_eq!(Agreement::default().rate(), None);
    }

    #[test]
    fn fields_are_bounded_and_old_buckets_pruned() {
        let mut s = ShadowSeries::default();
        let many: Vec<FieldAgreement> = (0..MAX_FIELDS + 3)
            .map(|i| agreement(&format!("f{i:02}"), 1, 1))
            .collect();
        for chunk in many.chunks(MAX_FIELDS) {
            add(&mut s, "v3", 5, (1, 0), 1000, chunk, ShadowSkips::default());
        }
        assert_eq!(
            s.stats(run("v3", 0), 5, 60, &ERRORS).fields.len(),
            MAX_FIELDS
        );
        // A late report lands in its own second.
        add(&mut s, "v3", 3, (1, 0), 1000, &[], ShadowSkips::default());
        assert_eq!(s.stats(run("v3", 0), 3, 1, &ERRORS).requests, 1);
        s.prune(100, 60);
        assert_eq!(s.stats(run("v3", 0), 100, 1000, &ERRORS).requests, 0);
        assert!(s.series.is_empty());
        add(&mut s, "v3", 100, (1, 0), 1000, &[], ShadowSkips::default());
        s.forget("heart-prod");
        assert!(s.series.is_empty());
    }

    #[test]
    fn a_new_run_of_the_same_version_starts_empty() {
        let mut s = ShadowSeries::default();
        // v3's first run (started at 1 000 ms) disagrees badly in second 10.
        let first = run("v3", 1_000);
        report(&mut s, first, 10, 500, 350);
        assert_eq!(s.stats(first, 10, 300, &ERRORS).requests, 500);
        // Stopped and started again at 20 000 ms, well within the window:
        // the new run sees none of it.
        let second = run("v3", 20_000);
        assert_eq!(
            s.stats(second, 20, 300, &ERRORS),
            ShadowWindowStats::default()
        );
        report(&mut s, second, 21, 100, 99);
        let w = s.stats(second, 21, 300, &ERRORS);
        assert_eq!(
            (w.requests, w.fields["prediction"]),
            (
                100,
                Agreement {
                    compared: 100,
                    agreed: 99
                }
            )
        );
        // Its first report forgot the earlier run of the deployment.
        assert_eq!(s.series.len(), 1);
        assert_eq!(s.stats(first, 21, 300, &ERRORS).requests, 0);
        // Another deployment's shadow is not touched.
        let other = ShadowRun {
            deployment: "lungs-prod",
            version: "v3",
            started_at: 1_000,
        };
        report(&mut s, other, 21, 10, 10);
        report(&mut s, run("v3", 30_000), 31, 10, 10);
        assert_eq!(s.stats(other, 31, 300, &ERRORS).requests, 10);
        assert_eq!(s.series.len(), 2);
    }
}
