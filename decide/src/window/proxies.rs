//! Each proxy's part of the baseline and canary series, so the policy can
//! be read again without the proxy that reported the most canary requests
//! (`rules/proxies.rs`: one proxy's reports cannot alone roll back or
//! promote when the others disagree), and a post-promotion watch without
//! the proxy that reported the most of the new baseline's requests (one
//! proxy cannot alone revert it).
//!
//! A proxy's buckets are coarser than the whole's: [`PROXY_BUCKETS`] per
//! window, so memory grows with the number of proxies by a small constant.
//! The window read without a proxy therefore starts at the beginning of the
//! coarse bucket the window starts in (up to a thirtieth of the window
//! earlier than the whole's).

use super::{Bucket, Reported, RoleWindowStats, SeriesKey, bucket_of, bucket_seconds, recorded};
use super::{prune_buckets, slower_of, stats_of};
use coalmine_protocol::{Outcome, Role};
use std::collections::{HashMap, VecDeque};

/// A proxy's buckets per window.
pub const PROXY_BUCKETS: u64 = 30;
/// Proxies told apart per series; the reports of any further proxy are
/// counted together under [`LUMPED`], as one proxy. It bounds the memory
/// made-up proxy names could take with the shared sync token, and the
/// work of reading the window without one proxy at every check: with
/// 1 024, `make bench`'s sync capacity (4 workers per proxy) fell from
/// 12 000 to 2 000 reports/s; with 64 it sustains 8 000.
pub const MAX_PROXIES: usize = 64;
/// Where the proxies beyond [`MAX_PROXIES`] are counted.
pub const LUMPED: &str = "(other proxies)";

/// The width of a proxy's buckets for a deployment judged over
/// `window_seconds`.
pub fn proxy_bucket_seconds(window_seconds: u64) -> u64 {
    (window_seconds / PROXY_BUCKETS).max(bucket_seconds(window_seconds))
}

/// The proxy that reported the most requests of a role and version in a
/// span (the canary's in a window, or the new baseline's since its
/// promotion).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loudest {
    pub proxy: String,
    /// Its requests in the span.
    pub requests: u64,
    /// Every proxy's requests in the span.
    pub total: u64,
    /// Proxies that reported requests in the span (at least 2).
    pub proxies: usize,
}

/// The seconds a reading of the proxies' buckets covers, inclusive: from
/// the start of the proxy bucket the first second falls in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub from: u64,
    pub to: u64,
}

impl Span {
    /// The `window_seconds` ending at `now_second`.
    pub fn window(now_second: u64, window_seconds: u64) -> Span {
        let first = now_second.saturating_sub(window_seconds.saturating_sub(1));
        Span::since(first, now_second, window_seconds)
    }

    /// From `first_second` to `now_second`, for a deployment judged over
    /// `window_seconds` (whose proxy buckets are that wide).
    pub fn since(first_second: u64, now_second: u64, window_seconds: u64) -> Span {
        let width = proxy_bucket_seconds(window_seconds).max(1);
        Span {
            from: first_second - first_second % width,
            to: now_second,
        }
    }
}

/// Per series, each proxy's buckets.
#[derive(Debug, Default)]
pub struct ProxySeries {
    series: HashMap<SeriesKey, HashMap<String, VecDeque<Bucket>>>,
}

fn key(deployment: &str, role: Role, version: &str) -> SeriesKey {
    SeriesKey {
        deployment: deployment.to_string(),
        role,
        version: version.to_string(),
    }
}

impl ProxySeries {
    /// Adds one of `proxy`'s reports to its bucket of `second` (aligned to
    /// [`proxy_bucket_seconds`]).
    pub fn add(
        &mut self,
        deployment: &str,
        role: Role,
        version: &str,
        proxy: &str,
        second: u64,
        reported: &Reported<'_>,
    ) {
        let series = (deployment, role, version);
        self.add_recorded(series, proxy, second, reported, &recorded(reported.latency));
    }

    pub(super) fn add_recorded(
        &mut self,
        (deployment, role, version): (&str, Role, &str),
        proxy: &str,
        second: u64,
        reported: &Reported<'_>,
        recorded: &[(u64, u64)],
    ) {
        let proxies = self
            .series
            .entry(key(deployment, role, version))
            .or_default();
        let name = if proxies.contains_key(proxy) || proxies.len() < MAX_PROXIES {
            proxy
        } else {
            LUMPED
        };
        if !proxies.contains_key(name) {
            proxies.insert(name.to_string(), VecDeque::new());
        }
        let Some(buckets) = proxies.get_mut(name) else {
            return;
        };
        let new = |second| Bucket {
            second,
            ..Bucket::default()
        };
        if let Some(b) = bucket_of(buckets, second, |b| b.second, new) {
            b.add(reported, recorded);
        }
    }

    /// Each proxy's buckets of a series within `span`.
    fn by_proxy<'a>(
        &'a self,
        deployment: &str,
        role: Role,
        version: &str,
        span: Span,
    ) -> impl Iterator<Item = (&'a str, impl Iterator<Item = &'a Bucket> + 'a)> + 'a {
        let Span {
            from,
            to: now_second,
        } = span;
        self.series
            .get(&key(deployment, role, version))
            .into_iter()
            .flatten()
            .map(move |(proxy, buckets)| {
                let within = buckets
                    .iter()
                    .filter(move |b| (from..=now_second).contains(&b.second));
                (proxy.as_str(), within)
            })
    }

    /// The proxy with the most requests of `role` and `version` in `span`,
    /// when at least two proxies reported some (ties: the first name).
    pub fn loudest(
        &self,
        deployment: &str,
        role: Role,
        version: &str,
        span: Span,
    ) -> Option<Loudest> {
        let mut per_proxy: Vec<(&str, u64)> = self
            .by_proxy(deployment, role, version, span)
            .map(|(proxy, buckets)| {
                let n = buckets.fold(0u64, |a, b| a.saturating_add(b.counts.total()));
                (proxy, n)
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        if per_proxy.len() < 2 {
            return None;
        }
        per_proxy.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let total = per_proxy
            .iter()
            .fold(0u64, |a, (_, n)| a.saturating_add(*n));
        let (proxy, requests) = per_proxy.first().copied()?;
        Some(Loudest {
            proxy: proxy.to_string(),
            requests,
            total,
            proxies: per_proxy.len(),
        })
    }

    /// The buckets in `span` of every proxy but `without`.
    fn others<'a>(
        &'a self,
        deployment: &str,
        role: Role,
        version: &str,
        without: &'a str,
        span: Span,
    ) -> impl Iterator<Item = &'a Bucket> + 'a {
        self.by_proxy(deployment, role, version, span)
            .filter(move |(proxy, _)| *proxy != without)
            .flat_map(|(_, buckets)| buckets)
    }

    /// A role and version's statistics over `span`, from every proxy but
    /// `without`.
    pub fn stats_without(
        &self,
        (deployment, role, version): (&str, Role, &str),
        without: &str,
        span: Span,
        error_classes: &[Outcome],
    ) -> RoleWindowStats {
        let buckets = self.others(deployment, role, version, without, span);
        stats_of(buckets, error_classes)
    }

    /// Requests slower than `threshold_ms` over `span`, from every proxy
    /// but `without`.
    pub fn count_slower_without(
        &self,
        (deployment, role, version): (&str, Role, &str),
        without: &str,
        span: Span,
        threshold_ms: f64,
    ) -> u64 {
        let buckets = self.others(deployment, role, version, without, span);
        slower_of(buckets, threshold_ms)
    }

    /// Forgets buckets that end more than `keep_seconds` before
    /// `now_second` (a coarse bucket the window starts in is kept whole),
    /// and proxies and series left empty.
    pub(super) fn prune(&mut self, now_second: u64, keep_seconds: u64) {
        let width = (keep_seconds / PROXY_BUCKETS).saturating_add(1);
        let oldest = now_second.saturating_sub(keep_seconds.saturating_add(width));
        self.series.retain(|_, proxies| {
            prune_buckets(proxies, oldest, |b| b.second);
            !proxies.is_empty()
        });
    }

    /// Drops every series of a deployment.
    pub(super) fn forget(&mut self, deployment: &str) {
        self.series.retain(|k, _| k.deployment != deployment);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::{Windows, twenty_ms};

    fn report(w: &mut Windows, proxy: &str, role: Role, second: u64, ok: u64, errors: u64) {
        let (counts, h) = twenty_ms(ok, errors);
        let r = Reported::requests(&counts, &h);
        let version = if role == Role::Canary { "v2" } else { "v1" };
        let at = second - second % proxy_bucket_seconds(300);
        w.proxies.add("d", role, version, proxy, at, &r);
    }

    #[test]
    fn the_window_is_read_again_without_the_loudest_proxy() {
        let mut w = Windows::default();
        for s in 1000..1060 {
            report(&mut w, "a", Role::Canary, s, 10, 0);
            report(&mut w, "b", Role::Canary, s, 9, 0);
            report(&mut w, "a", Role::Baseline, s, 90, 1);
        }
        report(&mut w, "c", Role::Canary, 1059, 1000, 1000);
        let span = Span::window(1059, 300);
        let loudest = w.proxies.loudest("d", Role::Canary, "v2", span).unwrap();
        assert_eq!(
            loudest,
            Loudest {
                proxy: "c".into(),
                requests: 2000,
                total: 3140,
                proxies: 3
            }
        );
        let classes = [Outcome::ServerError];
        let canary = w
            .proxies
            .stats_without(("d", Role::Canary, "v2"), "c", span, &classes);
        assert_eq!((canary.requests, canary.errors), (1140, 0));
        let baseline = w
            .proxies
            .stats_without(("d", Role::Baseline, "v1"), "c", span, &classes);
        assert_eq!((baseline.requests, baseline.errors), (5460, 60));
        let slow = w
            .proxies
            .count_slower_without(("d", Role::Canary, "v2"), "a", span, 10.0);
        assert_eq!(slow, 540 + 2000);
        // Out of the window, and with one proxy left, there is no one to leave out.
        let later = Span::window(1059 + 400, 300);
        assert_eq!(w.proxies.loudest("d", Role::Canary, "v2", later), None);
        w.prune(1059 + 400, 300);
        report(&mut w, "a", Role::Canary, 1500, 10, 0);
        let at = Span::window(1500, 300);
        assert_eq!(w.proxies.loudest("d", Role::Canary, "v2", at), None);
    }

    #[test]
    fn proxies_beyond_the_bound_are_counted_as_one() {
        let mut w = Windows::default();
        for p in 0..MAX_PROXIES + 5 {
            report(&mut w, &format!("p{p}"), Role::Canary, 1000, 1, 0);
        }
        report(&mut w, "p0", Role::Canary, 1000, 1, 0);
        let at = Span::window(1000, 300);
        let loudest = w.proxies.loudest("d", Role::Canary, "v2", at).unwrap();
        assert_eq!(loudest.proxies, MAX_PROXIES + 1);
        assert_eq!((loudest.proxy.as_str(), loudest.requests), (LUMPED, 5));
    }
}
