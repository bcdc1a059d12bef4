//! Feedback by arrival: per deployment, metric and version, how many
//! observations arrived each second and how many of them were 1. A metric's
//! window counts what arrived during it, whenever the predictions were
//! made (labels come minutes or days later, and their arrival is what the
//! controller sees).

use crate::engine::{Deployment, Refusal};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// One role's feedback on one metric over its window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FeedbackStats {
    /// Observations that arrived in the window.
    pub observations: u64,
    /// How many of them were 1 (true).
    pub ones: u64,
    /// ones / observations; 0 without observations (never NaN).
    pub rate: f64,
    /// Seconds since the newest observation arrived (none: never).
    pub newest_age_seconds: Option<u64>,
}

/// A metric's arrivals are kept in at most this many buckets over its
/// window (one a second up to an hour; a week-long window counts by the
/// 168 seconds), so memory does not grow with the window.
pub const MAX_BUCKETS: u64 = 3600;

/// The bucket width for a metric windowed over `window_seconds`.
pub(super) fn bucket_seconds(window_seconds: u64) -> u64 {
    (window_seconds / MAX_BUCKETS).max(1)
}

/// One call's observations, checked and counted by version: how many, and
/// how many were 1.
pub type Tally = BTreeMap<String, (u64, u64)>;

/// Checks one feedback call against `d` and counts it by version: the
/// metric must be declared in its policy and every version registered. Any
/// fault refuses the whole call, naming the first bad observation by its
/// index, so nothing of it is counted.
pub fn tally<'a>(
    d: &Deployment,
    metric: &str,
    observations: impl IntoIterator<Item = (&'a str, bool)>,
) -> Result<Tally, Refusal> {
    if !d.policy.feedback.contains_key(metric) {
        let declared: Vec<&str> = d.policy.feedback.keys().map(String::as_str).collect();
        return Err(Refusal::Invalid(format!(
            "metric {metric:?} is not declared in the policy of {} (declared: {}); declare it under \"feedback\" first",
            d.name,
            if declared.is_empty() {
                "none".to_string()
            } else {
                declared.join(", ")
            }
        )));
    }
    let mut counts = Tally::new();
    for (i, (version, value)) in observations.into_iter().enumerate() {
        if d.version(version).is_none() {
            return Err(Refusal::Invalid(format!(
                "observations[{i}]: version {version:?} is not registered for {}; nothing of this call was counted",
                d.name
            )));
        }
        let (n, ones) = counts.entry(version.to_string()).or_default();
        *n += 1;
        *ones += u64::from(value);
    }
    Ok(counts)
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    deployment: String,
    metric: String,
    version: String,
}

#[derive(Debug, Default)]
struct Second {
    second: u64,
    observations: u64,
    ones: u64,
}

/// Every deployment's, metric's and version's arrivals.
#[derive(Debug, Default)]
pub struct FeedbackSeries {
    series: HashMap<Key, VecDeque<Second>>,
}

impl FeedbackSeries {
    /// `observations` that arrived at `second`, `ones` of them 1.
    pub fn add(
        &mut self,
        deployment: &str,
        metric: &str,
        version: &str,
        second: u64,
        observations: u64,
        ones: u64,
    ) {
        let key = Key {
            deployment: deployment.to_string(),
            metric: metric.to_string(),
            version: version.to_string(),
        };
        let seconds = self.series.entry(key).or_default();
        match seconds.back_mut() {
            // Arrivals are stamped by one clock: in order, save after a step back.
            Some(s) if s.second >= second => {
                s.observations = s.observations.saturating_add(observations);
                s.ones = s.ones.saturating_add(ones.min(observations));
            }
            _ => seconds.push_back(Second {
                second,
                observations,
                ones: ones.min(observations),
            }),
        }
    }

    /// One version's feedback on `metric` over the `window_seconds` ending
    /// at `now_second` (inclusive).
    pub fn stats(
        &self,
        deployment: &str,
        metric: &str,
        version: &str,
        now_second: u64,
        window_seconds: u64,
    ) -> FeedbackStats {
        let key = Key {
            deployment: deployment.to_string(),
            metric: metric.to_string(),
            version: version.to_string(),
        };
        let Some(seconds) = self.series.get(&key) else {
            return FeedbackStats::default();
        };
        let from = now_second.saturating_sub(window_seconds.saturating_sub(1));
        // Newest first, up to the window's start: a short window over a
        // long series reads only its own buckets.
        let (observations, ones) = seconds
            .iter()
            .rev()
            .skip_while(|s| s.second > now_second)
            .take_while(|s| s.second >= from)
            .fold((0u64, 0u64), |(n, k), s| {
                (n.saturating_add(s.observations), k.saturating_add(s.ones))
            });
        FeedbackStats {
            observations,
            ones,
            rate: if observations == 0 {
                0.0
            } else {
                ones as f64 / observations as f64
            },
            newest_age_seconds: seconds.back().map(|s| now_second.saturating_sub(s.second)),
        }
    }

    /// One call's [`tally`], arrived at `second`, for a metric windowed
    /// over `window_seconds` (counted in its bucket).
    pub fn add_tally(
        &mut self,
        deployment: &str,
        metric: &str,
        second: u64,
        window_seconds: u64,
        tally: &Tally,
    ) {
        let bucket = bucket_seconds(window_seconds);
        for (version, &(n, ones)) in tally {
            self.add(
                deployment,
                metric,
                version,
                second - second % bucket,
                n,
                ones,
            );
        }
    }

    /// Forgets each series' arrivals older than its metric's window
    /// (`window_of(deployment, metric)`, in seconds) before `now_second`,
    /// and whole series whose metric is no longer declared (`None`).
    pub fn prune(&mut self, now_second: u64, window_of: impl Fn(&str, &str) -> Option<u64>) {
        self.series.retain(|key, seconds| {
            let Some(window) = window_of(&key.deployment, &key.metric) else {
                return false;
            };
            let oldest = now_second.saturating_sub(window);
            while seconds.front().is_some_and(|s| s.second < oldest) {
                seconds.pop_front();
            }
            !seconds.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_add_up_over_the_window_and_age() {
        let mut f = FeedbackSeries::default();
        f.add("d", "accuracy", "v2", 100, 10, 6);
        f.add("d", "accuracy", "v2", 100, 5, 5);
        f.add("d", "accuracy", "v2", 130, 5, 0);
        f.add("d", "accuracy", "v1", 130, 4, 9);
        let s = f.stats("d", "accuracy", "v2", 140, 60);
        assert_eq!((s.observations, s.ones), (20, 11));
        assert!((s.rate - 0.55).abs() < 1e-12);
        assert_eq!(s.newest_age_seconds, Some(10));
        // The first second leaves a 30 s window; ones never exceed observations.
        assert_eq!(f.stats("d", "accuracy", "v2", 140, 30).observations, 5);
        assert_eq!(f.stats("d", "accuracy", "v1", 140, 30).ones, 4);
        assert_eq!(
            f.stats("d", "conversion", "v2", 140, 60),
            FeedbackStats::default()
        );
        f.prune(180, |_, _| Some(60));
        assert_eq!(f.stats("d", "accuracy", "v2", 180, 3600).observations, 5);
        // Each metric is kept for its own window; an undeclared one goes.
        f.add("d", "conversion", "v2", 990, 1, 1);
        let windows = |_: &str, m: &str| (m == "conversion").then_some(86_400);
        f.prune(1000, windows);
        assert_eq!(f.stats("d", "accuracy", "v2", 1000, 3600).observations, 0);
        assert_eq!(f.stats("d", "conversion", "v2", 1000, 3600).observations, 1);
        f.prune(1000, |_, _| None);
        assert!(f.series.is_empty());
    }

    #[test]
    fn a_week_long_window_keeps_at_most_its_buckets() {
        let mut f = FeedbackSeries::default();
        let week = 7 * 86_400;
        let t = Tally::from([("v1".to_string(), (1, 1))]);
        for second in (0..week).step_by(7) {
            f.add_tally("d", "conversion", second, week, &t);
        }
        let kept: usize = f.series.values().map(VecDeque::len).sum();
        assert!(kept as u64 <= MAX_BUCKETS, "{kept} buckets");
        let s = f.stats("d", "conversion", "v1", week - 1, week);
        assert_eq!(s.observations, week.div_ceil(7));
        assert_eq!(bucket_seconds(3600), 1);
    }

    #[test]
    fn a_call_is_counted_whole_or_refused_naming_the_observation() {
        use crate::engine::{Command, OPERATOR, command, create};
        use crate::policy::Policy;
        use coalmine_protocol::Target;
        let v1 = Target {
            version: "v1".into(),
            cluster: "heart-v1".into(),
        };
        let d = create("heart", v1, Policy::default(), OPERATOR, 0)
            .unwrap()
            .deployment;
        let register = Command::RegisterVersion {
            version: "v2".into(),
            cluster: "heart-v2".into(),
            metadata: serde_json::json!({}),
        };
        let d = command(&d, register, OPERATOR, 0).unwrap().deployment;
        let t = tally(
            &d,
            "accuracy",
            [("v1", true), ("v2", false), ("v2", true), ("v1", true)],
        )
        .unwrap();
        assert_eq!(
            t,
            Tally::from([("v1".into(), (2, 2)), ("v2".into(), (2, 1))])
        );
        let e = tally(&d, "accuracy", [("v1", true), ("v9", true)]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("observations[1]: version \"v9\" is not registered"),
            "{e}"
        );
        let e = tally(&d, "conversion", [("v1", true)]).unwrap_err();
        assert!(e.to_string().contains("declared: accuracy"), "{e}");
    }
}
