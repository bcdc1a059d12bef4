//! Sync ingest: every proxy worker's report checked, counted exactly once
//! (deduplicated by proxy, instance and sequence number) and merged into
//! the rolling windows the policy reads. A report's shadow part (what each
//! deployment's shadow answered) is deduplicated with it, and counted only
//! for the deployment's current shadow run (its version, since it started).

use super::{Controller, ServiceError};
use crate::clock::Millis;
use crate::metrics::{Dropped, Metrics, SyncResult};
use coalmine_decide::engine::Deployment;
use coalmine_decide::observe::{Observations, observe};
use coalmine_decide::window::{
    Reported, ShadowReported, ShadowRun, ShadowWindowStats, Tally, Windows, bucket_seconds,
    proxy_bucket_seconds,
};
use coalmine_protocol::SplitTable;
use coalmine_protocol::sync::{SyncRequest, SyncResponse};
use lru::LruCache;
use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, RwLock};
use std::time::Duration;

/// Reporting instances not heard from for this long are forgotten.
const INSTANCE_TTL_MS: u64 = 3_600_000;
/// Instances remembered at most (each Envoy worker is one; 32 768
/// two-worker sidecars fit): beyond, the least recently heard from is
/// forgotten (and counted). Bounds memory against made-up instance ids.
pub(super) const MAX_INSTANCES: usize = 65_536;

/// What the controller knows of a deployment, for taking reports in
/// without its state lock: its registered versions and its window's
/// bucket width.
#[derive(Debug)]
struct Known {
    versions: HashSet<String>,
    bucket_seconds: u64,
    /// The width of each proxy's own buckets (`window::proxies`).
    proxy_bucket_seconds: u64,
    /// The shadow's run (version, started at): the only one whose shadow
    /// reports count, into its own series.
    shadow: Option<(String, Millis)>,
}

#[derive(Debug)]
struct Instance {
    seq: u64,
    seen_at: Millis,
}

/// The windows and, per reporting instance, the last sequence number
/// counted.
#[derive(Debug)]
pub(crate) struct Ingest {
    windows: Mutex<Windows>,
    /// Last sequence number counted per (proxy, instance).
    instances: Mutex<LruCache<(String, String), Instance>>,
    /// The deployments reports may be about: others are dropped, so made-up
    /// names cannot grow the windows.
    known: RwLock<HashMap<String, Known>>,
    /// Each proxy's usual report volume: a report far above it is capped.
    volumes: super::volume::Volumes,
}

impl Default for Ingest {
    fn default() -> Self {
        Ingest {
            windows: Mutex::default(),
            instances: Mutex::new(LruCache::new(
                NonZeroUsize::new(MAX_INSTANCES).unwrap_or(NonZeroUsize::MIN),
            )),
            known: RwLock::default(),
            volumes: Default::default(),
        }
    }
}

impl Ingest {
    /// Forgets every window and instance (a replica that takes the lead
    /// counts only what it is sent from then on).
    pub(crate) fn forget(&self) {
        if let Ok(mut w) = self.windows.lock() {
            *w = Windows::default();
        }
        if let Ok(mut i) = self.instances.lock() {
            i.clear();
        }
        self.volumes.forget();
    }

    /// Learns the deployments as they are now (after every change). A
    /// deployment whose shadow run changed (stopped, started again, another
    /// version, another baseline) forgets its shadow's series: a run counts
    /// only what arrives after it started.
    pub(crate) fn know<'a>(&self, deployments: impl IntoIterator<Item = &'a Deployment>) {
        let known = deployments
            .into_iter()
            .map(|d| {
                let versions = d.versions.iter().map(|v| v.version.clone()).collect();
                let bucket = bucket_seconds(d.policy.window_seconds);
                (
                    d.name.clone(),
                    Known {
                        versions,
                        bucket_seconds: bucket,
                        proxy_bucket_seconds: proxy_bucket_seconds(d.policy.window_seconds),
                        shadow: d
                            .shadow
                            .as_ref()
                            .map(|s| (s.target.version.clone(), s.started_at)),
                    },
                )
            })
            .collect::<HashMap<String, Known>>();
        let Ok(mut k) = self.known.write() else {
            return;
        };
        let ended: Vec<String> = k
            .iter()
            .filter(|(name, old)| {
                old.shadow.is_some() && known.get(*name).map(|new| &new.shadow) != Some(&old.shadow)
            })
            .map(|(name, _)| name.clone())
            .collect();
        *k = known;
        // Reports are counted holding `known`; from here on they count for
        // the new run, and what the ended run was sent is forgotten.
        drop(k);
        if !ended.is_empty()
            && let Ok(mut w) = self.windows.lock()
        {
            for name in &ended {
                w.shadow.forget(name);
            }
        }
    }

    /// Takes in a worker's report at `now`: refused whole when the call or
    /// a role report is bad (nothing is counted), counted once when new,
    /// ignored when resent. A shadow report that is bad is dropped alone
    /// (and counted as dropped): the shadow is optional, the canary's
    /// numbers beside it are not.
    pub(crate) fn take(
        &self,
        req: &SyncRequest,
        now: Millis,
        metrics: &Metrics,
    ) -> Result<(), ServiceError> {
        // Decode everything before touching any state: a bad report changes nothing.
        let checked = req.check().map_err(ServiceError::from).and_then(|()| {
            req.reports
                .iter()
                .map(|r| r.decode().map(|(counts, h)| (r, counts, h)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(ServiceError::from)
        });
        let decoded = match checked {
            Ok(d) => d,
            Err(e) => {
                metrics.sync_report(SyncResult::Rejected);
                tracing::debug!(proxy = %req.proxy, "report refused: {e}");
                return Err(e);
            }
        };
        let mut bad_shadow = 0u64;
        let shadow: Vec<_> = req
            .shadow
            .iter()
            .filter_map(|r| match r.decode() {
                Ok((counts, h)) => Some((r, counts, h)),
                Err(e) => {
                    bad_shadow += 1;
                    tracing::debug!(proxy = %req.proxy, deployment = %r.deployment, "shadow report dropped: {e}");
                    None
                }
            })
            .collect();
        let Ok(mut instances) = self.instances.lock() else {
            return Ok(());
        };
        let key = (req.proxy.clone(), req.instance.clone());
        if !instances.contains(&key) && instances.len() == instances.cap().get() {
            metrics.dropped(Dropped::InstanceEvicted, 1);
        }
        let instance = instances.get_or_insert_mut(key, || Instance {
            seq: 0,
            seen_at: now,
        });
        instance.seen_at = now;
        // Sequence numbers start at 1; a number already counted is a resend.
        if req.seq <= instance.seq {
            metrics.sync_report(SyncResult::Duplicate);
            tracing::debug!(proxy = %req.proxy, instance = %req.instance, seq = req.seq, "report already counted");
            return Ok(());
        }
        instance.seq = req.seq;
        metrics.sync_report(SyncResult::Accepted);
        if bad_shadow > 0 {
            metrics.dropped(Dropped::BadShadowReport, bad_shadow);
        }
        drop(instances);
        let requests: u64 = decoded.iter().map(|(_, c, _)| c.total()).sum();
        if let super::volume::Admitted::Capped { requests, cap } =
            self.volumes.admit(&req.proxy, requests)
        {
            metrics.dropped(Dropped::OverVolumeCap, 1);
            tracing::debug!(proxy = %req.proxy, "report of {requests} requests not counted: above this proxy's cap of {cap}");
            return Ok(());
        }
        let (Ok(known), Ok(mut windows)) = (self.known.read(), self.windows.lock()) else {
            return Ok(());
        };
        let second = now / 1000;
        for (r, counts, h) in &decoded {
            let Some(k) = known.get(&r.deployment) else {
                metrics.dropped(Dropped::UnknownDeployment, 1);
                continue;
            };
            if !k.versions.contains(&r.version) {
                metrics.dropped(Dropped::UnknownVersion, 1);
                continue;
            }
            let reported = Reported {
                counts,
                latency: h,
                outputs: &r.outputs,
                skipped: r.outputs_skipped,
            };
            let seconds = (
                second - second % k.bucket_seconds,
                second - second % k.proxy_bucket_seconds,
            );
            let (d, v) = (&r.deployment, &r.version);
            windows.add_from(&req.proxy, d, r.role, v, seconds, &reported);
        }
        for (r, counts, h) in &shadow {
            let Some(k) = known.get(&r.deployment) else {
                metrics.dropped(Dropped::UnknownDeployment, 1);
                continue;
            };
            let Some((_, started_at)) = k.shadow.as_ref().filter(|(v, _)| *v == r.version) else {
                // Stopped or replaced since the proxy copied it.
                metrics.dropped(Dropped::NotShadow, 1);
                continue;
            };
            let reported = ShadowReported {
                counts,
                latency: h,
                agreement: &r.agreement,
                uncompared: r.uncompared,
                skipped: r.skipped,
            };
            let bucket = second - second % k.bucket_seconds;
            let run = ShadowRun {
                deployment: &r.deployment,
                version: &r.version,
                started_at: *started_at,
            };
            windows.shadow.add(run, bucket, &reported);
            metrics.shadow_report(&r.deployment, counts, &r.skipped);
        }
        Ok(())
    }

    /// `d`'s shadow over the policy's window ending at `now` (none without
    /// a shadow): its current run's reports only.
    pub(crate) fn shadow_stats(&self, d: &Deployment, now: Millis) -> Option<ShadowWindowStats> {
        let s = d.shadow.as_ref()?;
        let w = self.windows.lock().ok()?;
        let run = ShadowRun {
            deployment: &d.name,
            version: &s.target.version,
            started_at: s.started_at,
        };
        Some(w.shadow.stats(
            run,
            now / 1000,
            d.policy.window_seconds,
            &d.policy.error_classes,
        ))
    }

    /// What the policy looks at for `d` at `now`.
    pub(crate) fn observe(&self, d: &Deployment, now: Millis) -> Observations {
        self.windows
            .lock()
            .map(|w| observe(&w, d, now))
            .unwrap_or_default()
    }

    /// Takes in one feedback call's [`Tally`] of `metric` (windowed over
    /// `window_seconds`), arrived at `now`; `false` when the windows cannot
    /// be used (a panic while they were held), and nothing was counted.
    pub(crate) fn feedback(
        &self,
        deployment: &str,
        metric: &str,
        window_seconds: u64,
        tally: &Tally,
        now: Millis,
    ) -> bool {
        let Ok(mut w) = self.windows.lock() else {
            return false;
        };
        w.feedback
            .add_tally(deployment, metric, now / 1000, window_seconds, tally);
        true
    }

    /// Forgets buckets older than `keep_seconds`, feedback older than its
    /// metric's window (`feedback_window`, none: no longer declared), the
    /// series of deployments gone, and instances not heard from for an
    /// hour.
    pub(crate) fn prune(
        &self,
        now: Millis,
        keep_seconds: u64,
        feedback_window: impl Fn(&str, &str) -> Option<u64>,
    ) {
        if let Ok(mut w) = self.windows.lock() {
            w.prune(now / 1000, keep_seconds);
            w.feedback.prune(now / 1000, feedback_window);
        }
        if let Ok(mut i) = self.instances.lock() {
            // Least recently heard from first.
            while i
                .peek_lru()
                .is_some_and(|(_, inst)| now.saturating_sub(inst.seen_at) >= INSTANCE_TTL_MS)
            {
                i.pop_lru();
            }
        }
    }
}

/// A sync call held open, counted while it lives (also when its caller
/// goes away mid-hold).
struct Held<'a>(&'a Metrics);

impl<'a> Held<'a> {
    fn new(metrics: &'a Metrics) -> Held<'a> {
        metrics.held_sync(true);
        Held(metrics)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.held_sync(false);
    }
}

impl Controller {
    /// A filter worker's sync: [`Controller::sync`], then, when the worker
    /// already holds the current table, holds the answer for up to `wait`
    /// until the table changes (or shutdown). The report is counted before
    /// the hold, and `slot` (whatever bounds the reports read at once) is
    /// released then.
    pub async fn sync_held<S>(
        &self,
        req: &SyncRequest,
        wait: Duration,
        slot: S,
    ) -> Result<SyncResponse, ServiceError> {
        // Subscribed before the report is taken in, so no change is missed.
        let mut changes = self.table.subscribe();
        let answer = self.sync(req)?;
        // The report is counted: its slot goes to the next one.
        drop(slot);
        if wait.is_zero() || answer.table.epoch != req.epoch || self.closing.load(Ordering::SeqCst)
        {
            return Ok(answer);
        }
        let _held = Held::new(&self.metrics);
        if tokio::time::timeout(wait, changes.changed()).await.is_err() {
            return Ok(answer);
        }
        Ok(SyncResponse {
            table: SplitTable::clone(&self.table()),
            ..answer
        })
    }

    /// A filter worker's sync: counts its report once, answers the table;
    /// refused (the lease not renewed) while evaluations are stalled.
    pub fn sync(&self, req: &SyncRequest) -> Result<SyncResponse, ServiceError> {
        if let Some(reason) = self.follower_reason() {
            self.metrics.sync_report(SyncResult::Follower);
            return Err(ServiceError::Unavailable(reason));
        }
        if let Err(e) = self.check_not_stalled() {
            self.metrics
                .sync_report(crate::metrics::SyncResult::Stalled);
            return Err(e);
        }
        self.ingest.take(req, self.now(), &self.metrics)?;
        Ok(SyncResponse {
            table: SplitTable::clone(&self.table()),
            lease_ms: self.settings.lease_ms,
        })
    }
}
