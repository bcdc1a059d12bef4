//! The controller's state and the thin shell around the pure engine.
//!
//! Every change (an operator's command or the engine's own decision) is
//! computed by `engine`, committed to the store with its events in one
//! transaction, and only then applied in memory and to the split table the
//! proxies fetch. A store that cannot be written leaves everything as it was.

use crate::engine::{self, Command, Deployment, Millis, Refusal, Transition};
use crate::metrics::{Metrics, SyncResult};
use crate::notify::{NoNotifier, Notifier};
use crate::policy::{Observations, Policy, Reason, Recommendation, Verdict, VerdictKind, evaluate};
use crate::store::{Commit, Store, StoreError, StoredEvent};
use crate::window::{RoleWindowStats, Windows};
use coalmine_protocol::sync::{ReportError, SyncRequest, SyncResponse};
use coalmine_protocol::{Role, SplitTable, Target};
use serde::Serialize;
use serde_json::Map;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// Seconds after a change of share before the observed split is compared
/// with it (the proxies' sync interval and reporting lag, with margin).
pub const SPLIT_SETTLE_SECONDS: u64 = 5;

/// What the policy looks at for `d` at `now`, read from the windows: both
/// roles over the window, the canary's slow requests, and the split since the
/// current share was set. The simulator calls this too.
pub fn observe(windows: &Windows, d: &Deployment, now: Millis) -> Observations {
    let (second, window, classes) = (now / 1000, d.policy.window_seconds, &d.policy.error_classes);
    let baseline = windows.stats(
        &d.name,
        Role::Baseline,
        &d.baseline.version,
        second,
        window,
        classes,
    );
    let Some(c) = &d.canary else {
        return Observations::of(baseline, RoleWindowStats::default());
    };
    let v = &c.target.version;
    let canary = windows.stats(&d.name, Role::Canary, v, second, window, classes);
    let canary_slow = baseline.p95_ms.map_or(0, |p95| {
        windows.count_slower(
            &d.name,
            Role::Canary,
            v,
            second,
            window,
            p95 + d.policy.critical.p95_delta_ms,
        )
    });
    // The split since the share was set, after it settled: for a few
    // seconds, proxies still route by the old table and report traffic they
    // split before the change.
    let from = c.step_since / 1000 + SPLIT_SETTLE_SECONDS + 1;
    let to = second.saturating_sub(1);
    let (step_canary, step_all) = if to < from {
        (0, 0)
    } else {
        let span = (to - from + 1).min(window);
        let b = windows.stats(
            &d.name,
            Role::Baseline,
            &d.baseline.version,
            to,
            span,
            classes,
        );
        let k = windows.stats(&d.name, Role::Canary, v, to, span, classes);
        (k.requests, k.requests.saturating_add(b.requests))
    };
    Observations {
        baseline,
        canary,
        canary_slow,
        step_canary_requests: step_canary,
        step_requests: step_all,
        configured_share: c.bps.as_percent() / 100.0,
    }
}

/// The wall clock in milliseconds since the UNIX epoch.
pub fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// How often the evaluation loop looks for deployments that are due.
pub const EVALUATION_TICK: Duration = Duration::from_millis(250);
/// Reporting instances not heard from for this long are forgotten.
const INSTANCE_TTL_MS: u64 = 3_600_000;
/// History samples kept per deployment (one a second: 15 minutes).
pub const HISTORY_SAMPLES: usize = 900;

/// One point of a deployment's history, for charts.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Sample {
    pub at: Millis,
    pub canary_percent: f64,
    pub canary_version: Option<String>,
    pub verdict: VerdictKind,
    pub baseline: RoleWindowStats,
    pub canary: RoleWindowStats,
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// The lease granted to proxies with each split table.
    pub lease_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { lease_ms: 30_000 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("deployment {0:?} does not exist")]
    NotFound(String),
    #[error("deployment {0:?} already exists")]
    Exists(String),
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("report refused: {0}")]
    BadReport(#[from] ReportError),
}

/// A verdict with the statistics it was made from.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Health {
    pub verdict: VerdictKind,
    pub recommendation: Recommendation,
    pub reasons: Vec<Reason>,
    pub window_seconds: u64,
    pub baseline: RoleWindowStats,
    pub canary: RoleWindowStats,
}

#[derive(Debug)]
struct State {
    deployments: BTreeMap<String, Deployment>,
    epoch: u64,
    /// When each deployment with a canary is evaluated next.
    next_evaluation: HashMap<String, Millis>,
}

#[derive(Debug)]
struct Instance {
    seq: u64,
    seen_at: Millis,
}

/// The controller.
#[derive(Debug)]
pub struct Controller {
    store: Arc<dyn Store>,
    settings: Settings,
    state: tokio::sync::Mutex<State>,
    windows: Mutex<Windows>,
    /// Last sequence number counted per (proxy, instance).
    instances: Mutex<HashMap<(String, String), Instance>>,
    /// The split table; held sync calls wait for it to change.
    table: watch::Sender<Arc<SplitTable>>,
    /// Set on shutdown: held sync calls answer at once.
    closing: AtomicBool,
    history: Mutex<HashMap<String, VecDeque<Sample>>>,
    metrics: Arc<Metrics>,
    notifier: Arc<dyn Notifier>,
}

fn table_of(deployments: &BTreeMap<String, Deployment>, epoch: u64) -> SplitTable {
    SplitTable {
        epoch,
        deployments: deployments.values().map(Deployment::split).collect(),
    }
}

impl Controller {
    /// Loads the stored state; no notifications.
    pub async fn open(
        store: Arc<dyn Store>,
        settings: Settings,
    ) -> Result<Arc<Controller>, StoreError> {
        Controller::open_with(
            store,
            settings,
            Arc::new(Metrics::default()),
            Arc::new(NoNotifier),
        )
        .await
    }

    /// Loads the stored state, with these metrics and notifications.
    pub async fn open_with(
        store: Arc<dyn Store>,
        settings: Settings,
        metrics: Arc<Metrics>,
        notifier: Arc<dyn Notifier>,
    ) -> Result<Arc<Controller>, StoreError> {
        let snapshot = store.load().await?;
        let deployments: BTreeMap<String, Deployment> = snapshot
            .deployments
            .into_iter()
            .map(|d| (d.name.clone(), d))
            .collect();
        let table = table_of(&deployments, snapshot.epoch);
        for d in deployments.values() {
            metrics.observe_deployment(d, None);
        }
        Ok(Arc::new(Controller {
            store,
            settings,
            state: tokio::sync::Mutex::new(State {
                deployments,
                epoch: snapshot.epoch,
                next_evaluation: HashMap::new(),
            }),
            windows: Mutex::new(Windows::default()),
            instances: Mutex::new(HashMap::new()),
            table: watch::Sender::new(Arc::new(table)),
            closing: AtomicBool::new(false),
            history: Mutex::new(HashMap::new()),
            metrics,
            notifier,
        }))
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The split table as the proxies receive it.
    pub fn table(&self) -> Arc<SplitTable> {
        self.table.borrow().clone()
    }

    /// Answers held sync calls now and holds no more (on shutdown).
    pub fn release_held_syncs(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.table.send_modify(|_| {});
    }

    /// Commits a transition, then applies it. The epoch moves when the split
    /// the proxies route by changed.
    async fn apply(
        &self,
        state: &mut State,
        t: Transition,
        now: Millis,
    ) -> Result<Vec<StoredEvent>, ServiceError> {
        let before = state
            .deployments
            .get(&t.deployment.name)
            .map(Deployment::split);
        let epoch = if before.as_ref() == Some(&t.deployment.split()) {
            state.epoch
        } else {
            state.epoch + 1
        };
        let stored = self
            .store
            .commit(Commit {
                deployment: &t.deployment,
                events: &t.events,
                epoch,
                at: now,
            })
            .await?;
        for e in &stored {
            tracing::info!(
                deployment = %e.deployment, event = e.event.kind.as_str(), actor = %e.event.actor,
                "{}", e.event.reason
            );
            self.metrics
                .count_event(&e.deployment, e.event.kind, &e.event.actor);
            self.notifier.notify(e);
        }
        let verdict = self.health_of(&t.deployment, now).verdict;
        self.metrics
            .observe_deployment(&t.deployment, Some(verdict));
        state
            .deployments
            .insert(t.deployment.name.clone(), t.deployment);
        if epoch != state.epoch {
            state.epoch = epoch;
            let table = Arc::new(table_of(&state.deployments, epoch));
            self.table.send_replace(table);
        }
        Ok(stored)
    }

    pub async fn create(
        &self,
        name: &str,
        baseline: Target,
        policy: Policy,
        actor: &str,
    ) -> Result<Deployment, ServiceError> {
        let mut state = self.state.lock().await;
        if state.deployments.contains_key(name) {
            return Err(ServiceError::Exists(name.to_string()));
        }
        let now = now_ms();
        let t = engine::create(name, baseline, policy, actor, now)?;
        let d = t.deployment.clone();
        self.apply(&mut state, t, now).await?;
        Ok(d)
    }

    /// An operator's command.
    pub async fn command(
        &self,
        name: &str,
        cmd: Command,
        actor: &str,
    ) -> Result<Deployment, ServiceError> {
        let mut state = self.state.lock().await;
        let d = state
            .deployments
            .get(name)
            .ok_or_else(|| ServiceError::NotFound(name.to_string()))?;
        let now = now_ms();
        let starts_canary = matches!(cmd, Command::StartCanary { .. });
        let t = engine::command(d, cmd, actor, now)?;
        let next = t.deployment.clone();
        self.apply(&mut state, t, now).await?;
        if starts_canary {
            let first = now + next.policy.check_interval_seconds * 1000;
            state.next_evaluation.insert(name.to_string(), first);
        }
        Ok(next)
    }

    pub async fn deployments(&self) -> Vec<Deployment> {
        self.state
            .lock()
            .await
            .deployments
            .values()
            .cloned()
            .collect()
    }

    pub async fn deployment(&self, name: &str) -> Result<Deployment, ServiceError> {
        self.state
            .lock()
            .await
            .deployments
            .get(name)
            .cloned()
            .ok_or_else(|| ServiceError::NotFound(name.to_string()))
    }

    pub async fn epoch(&self) -> u64 {
        self.state.lock().await.epoch
    }

    pub async fn events(
        &self,
        name: &str,
        since: i64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, ServiceError> {
        self.deployment(name).await?;
        Ok(self.store.events(name, since, limit).await?)
    }

    /// What the policy looks at for a deployment, ending now.
    pub fn observations(&self, d: &Deployment, now: Millis) -> Observations {
        let Ok(windows) = self.windows.lock() else {
            return Observations::default();
        };
        observe(&windows, d, now)
    }

    /// The current verdict and statistics.
    pub async fn health(&self, name: &str) -> Result<Health, ServiceError> {
        let d = self.deployment(name).await?;
        Ok(self.health_of(&d, now_ms()))
    }

    pub fn health_of(&self, d: &Deployment, now: Millis) -> Health {
        let obs = self.observations(d, now);
        let verdict = match &d.canary {
            Some(_) => evaluate(&d.policy, &obs),
            None => Verdict {
                verdict: VerdictKind::InsufficientData,
                recommendation: Recommendation::Continue,
                reasons: vec![Reason {
                    code: "no_canary".into(),
                    message: format!(
                        "no canary in progress; {} serves all traffic",
                        d.baseline.version
                    ),
                    numbers: Map::new(),
                }],
            },
        };
        Health {
            verdict: verdict.verdict,
            recommendation: verdict.recommendation,
            reasons: verdict.reasons,
            window_seconds: d.policy.window_seconds,
            baseline: obs.baseline,
            canary: obs.canary,
        }
    }

    /// A filter worker's sync: counts its report once, answers the table.
    /// [`Controller::sync`], then, when the worker already holds the
    /// current table, holds the answer for up to `wait` until the table
    /// changes (or shutdown). The report is counted before the hold.
    pub async fn sync_held(
        &self,
        req: &SyncRequest,
        now: Millis,
        wait: Duration,
    ) -> Result<SyncResponse, ServiceError> {
        // Subscribed before the report is taken in, so no change is missed.
        let mut changes = self.table.subscribe();
        let answer = self.sync(req, now)?;
        if wait.is_zero() || answer.table.epoch != req.epoch || self.closing.load(Ordering::SeqCst)
        {
            return Ok(answer);
        }
        if tokio::time::timeout(wait, changes.changed()).await.is_err() {
            return Ok(answer);
        }
        Ok(SyncResponse {
            table: SplitTable::clone(&self.table()),
            ..answer
        })
    }

    pub fn sync(&self, req: &SyncRequest, now: Millis) -> Result<SyncResponse, ServiceError> {
        let checked = req.check().and_then(|()| {
            // Decode everything before touching any state: a bad report changes nothing.
            req.reports
                .iter()
                .map(|r| r.decode().map(|(counts, h)| (r, counts, h)))
                .collect::<Result<Vec<_>, _>>()
        });
        let decoded = match checked {
            Ok(d) => d,
            Err(e) => {
                self.metrics.sync_report(SyncResult::Rejected);
                tracing::debug!(proxy = %req.proxy, "report refused: {e}");
                return Err(e.into());
            }
        };
        let key = (req.proxy.clone(), req.instance.clone());
        if let Ok(mut instances) = self.instances.lock() {
            let instance = instances.entry(key).or_insert(Instance {
                seq: 0,
                seen_at: now,
            });
            instance.seen_at = now;
            // Sequence numbers start at 1; a number already counted is a resend.
            if req.seq > instance.seq {
                instance.seq = req.seq;
                self.metrics.sync_report(SyncResult::Accepted);
                if let Ok(mut windows) = self.windows.lock() {
                    for (r, counts, h) in &decoded {
                        windows.add(&r.deployment, r.role, &r.version, now / 1000, counts, h);
                    }
                }
            } else {
                self.metrics.sync_report(SyncResult::Duplicate);
                tracing::debug!(proxy = %req.proxy, instance = %req.instance, seq = req.seq, "report already counted");
            }
        }
        Ok(SyncResponse {
            table: SplitTable::clone(&self.table()),
            lease_ms: self.settings.lease_ms,
        })
    }

    /// Evaluates every deployment whose check interval has come.
    pub async fn evaluate_due(&self, now: Millis) {
        let mut state = self.state.lock().await;
        let due: Vec<String> = state
            .deployments
            .values()
            .filter(|d| d.canary.is_some())
            .map(|d| d.name.clone())
            .filter(|n| state.next_evaluation.get(n).is_none_or(|&at| now >= at))
            .collect();
        for name in due {
            let Some(d) = state.deployments.get(&name).cloned() else {
                continue;
            };
            let interval = d.policy.check_interval_seconds * 1000;
            let first_sight = state
                .next_evaluation
                .insert(name.clone(), now + interval)
                .is_none();
            if first_sight {
                // E.g. after a restart: give the proxies one interval to report.
                continue;
            }
            let started = std::time::Instant::now();
            let obs = self.observations(&d, now);
            let s = engine::step(&d, &obs, now);
            if let Some(v) = &s.verdict {
                self.metrics.observe_deployment(&d, Some(v.verdict));
            }
            if !(s.transition.deployment == d && s.transition.events.is_empty())
                && let Err(e) = self.apply(&mut state, s.transition, now).await
            {
                tracing::warn!(deployment = %name, "evaluation not applied: {e}");
            }
            self.metrics.evaluation(started.elapsed().as_secs_f64());
        }
        drop(state);
        self.prune(now).await;
    }

    /// Records one history sample per deployment.
    pub async fn sample(&self, now: Millis) {
        let deployments = self.deployments().await;
        let samples: Vec<(String, Sample)> = deployments
            .iter()
            .map(|d| {
                let h = self.health_of(d, now);
                self.metrics.observe_deployment(d, Some(h.verdict));
                let sample = Sample {
                    at: now,
                    canary_percent: d.canary.as_ref().map_or(0.0, |c| c.bps.as_percent()),
                    canary_version: d.canary.as_ref().map(|c| c.target.version.clone()),
                    verdict: h.verdict,
                    baseline: h.baseline,
                    canary: h.canary,
                };
                (d.name.clone(), sample)
            })
            .collect();
        if let Ok(mut history) = self.history.lock() {
            history.retain(|name, _| deployments.iter().any(|d| d.name == *name));
            for (name, sample) in samples {
                let h = history.entry(name).or_default();
                if h.len() == HISTORY_SAMPLES {
                    h.pop_front();
                }
                h.push_back(sample);
            }
        }
    }

    /// A deployment's history samples after `since` (ms), oldest first.
    pub async fn history(&self, name: &str, since: Millis) -> Result<Vec<Sample>, ServiceError> {
        self.deployment(name).await?;
        Ok(self
            .history
            .lock()
            .map(|h| {
                h.get(name)
                    .map(|s| s.iter().filter(|s| s.at > since).cloned().collect())
            })
            .ok()
            .flatten()
            .unwrap_or_default())
    }

    async fn prune(&self, now: Millis) {
        let keep = {
            let state = self.state.lock().await;
            state
                .deployments
                .values()
                .map(|d| d.policy.window_seconds)
                .max()
                .unwrap_or(300)
                + 60
        };
        if let Ok(mut w) = self.windows.lock() {
            w.prune(now / 1000, keep);
        }
        if let Ok(mut i) = self.instances.lock() {
            i.retain(|_, inst| now.saturating_sub(inst.seen_at) < INSTANCE_TTL_MS);
        }
    }

    /// The evaluation loop, until `shutdown` resolves.
    pub async fn run_evaluations(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let mut tick = tokio::time::interval(EVALUATION_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        let mut sampled_second = 0;
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => {
                    let now = now_ms();
                    self.evaluate_due(now).await;
                    if now / 1000 != sampled_second {
                        sampled_second = now / 1000;
                        self.sample(now).await;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;
    use coalmine_protocol::Outcome;
    use coalmine_protocol::stats::RoleStats;
    use coalmine_protocol::sync::RoleReport;

    fn target(v: &str) -> Target {
        Target {
            version: v.into(),
            cluster: format!("heart-{v}"),
        }
    }

    fn report(role: Role, version: &str, ok: u64, errors: u64) -> RoleReport {
        let mut s = RoleStats::try_new().unwrap();
        for _ in 0..ok {
            s.record(Outcome::Success, 10_000);
        }
        for _ in 0..errors {
            s.record(Outcome::ServerError, 10_000);
        }
        RoleReport::from_stats("heart-prod", role, version, &s)
    }

    async fn controller() -> Arc<Controller> {
        let store = Arc::new(SqliteStore::in_memory().await.unwrap());
        Controller::open(store, Settings::default()).await.unwrap()
    }

    #[tokio::test]
    async fn a_resent_report_is_counted_once() {
        let c = controller().await;
        c.create("heart-prod", target("v1"), Policy::default(), "operator")
            .await
            .unwrap();
        let req = SyncRequest {
            proxy: "envoy-1".into(),
            instance: "a".into(),
            seq: 1,
            epoch: 0,
            reports: vec![report(Role::Baseline, "v1", 30, 2)],
        };
        let now = now_ms();
        let resp = c.sync(&req, now).unwrap();
        assert_eq!(resp.table.epoch, 1);
        assert_eq!(resp.table.deployments[0].baseline, target("v1"));
        c.sync(&req, now).unwrap();
        let mut older = req.clone();
        older.seq = 0;
        c.sync(&older, now).unwrap();
        // Another instance of the same proxy counts separately.
        let mut other = req.clone();
        other.instance = "b".into();
        c.sync(&other, now).unwrap();
        let h = c.health("heart-prod").await.unwrap();
        assert_eq!((h.baseline.requests, h.baseline.errors), (64, 4));
    }

    #[tokio::test]
    async fn a_bad_report_changes_nothing() {
        let c = controller().await;
        c.create("heart-prod", target("v1"), Policy::default(), "operator")
            .await
            .unwrap();
        let mut bad = report(Role::Baseline, "v1", 5, 0);
        bad.counts.success = 999;
        let req = SyncRequest {
            proxy: "p".into(),
            instance: "i".into(),
            seq: 1,
            epoch: 0,
            reports: vec![report(Role::Baseline, "v1", 10, 0), bad],
        };
        assert!(matches!(
            c.sync(&req, now_ms()),
            Err(ServiceError::BadReport(_))
        ));
        assert_eq!(c.health("heart-prod").await.unwrap().baseline.requests, 0);
        // The same seq with a good report is then accepted: nothing was recorded.
        let good = SyncRequest {
            reports: vec![report(Role::Baseline, "v1", 10, 0)],
            ..req
        };
        c.sync(&good, now_ms()).unwrap();
        assert_eq!(c.health("heart-prod").await.unwrap().baseline.requests, 10);
    }

    async fn register_v2(c: &Controller) {
        let reg = Command::RegisterVersion {
            version: "v2".into(),
            cluster: "heart-v2".into(),
            metadata: serde_json::json!({}),
        };
        c.command("heart-prod", reg, "operator").await.unwrap();
    }

    async fn start_v2(c: &Controller, percent: Option<f64>) {
        let start = Command::StartCanary {
            version: "v2".into(),
            percent,
            steps: None,
            bake_seconds: None,
        };
        c.command("heart-prod", start, "operator").await.unwrap();
    }

    fn held_request(epoch: u64) -> SyncRequest {
        SyncRequest {
            proxy: "envoy-1".into(),
            instance: format!("worker-at-epoch-{epoch}"),
            seq: 1,
            epoch,
            reports: vec![report(Role::Baseline, "v1", 3, 0)],
        }
    }

    /// Holds are 30 s; each step must end long before that, so an answer
    /// that only came from the hold running out fails the test.
    const HOLD: Duration = Duration::from_secs(30);
    const PROMPT: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn a_held_sync_answers_when_the_table_changes() {
        let c = controller().await;
        c.create("heart-prod", target("v1"), Policy::default(), "operator")
            .await
            .unwrap();
        let current = c.epoch().await;

        // A worker behind the table gets its answer at once.
        let behind = held_request(0);
        let behind = tokio::time::timeout(PROMPT, c.sync_held(&behind, now_ms(), HOLD));
        assert_eq!(behind.await.unwrap().unwrap().table.epoch, current);

        // A current worker is held until the table changes, then gets it.
        let held = {
            let c = c.clone();
            tokio::spawn(async move { c.sync_held(&held_request(current), now_ms(), HOLD).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!held.is_finished());
        register_v2(&c).await;
        start_v2(&c, Some(20.0)).await;
        let answer = tokio::time::timeout(PROMPT, held)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(answer.table.epoch, current + 1);
        assert_eq!(answer.table.deployments[0].canary_bps.get(), 2000);
        // The report was counted when the call came in, not when it ended.
        assert_eq!(c.health("heart-prod").await.unwrap().baseline.requests, 6);
    }

    #[tokio::test]
    async fn a_held_sync_ends_after_its_wait_or_at_shutdown() {
        let c = controller().await;
        c.create("heart-prod", target("v1"), Policy::default(), "operator")
            .await
            .unwrap();
        let current = c.epoch().await;
        let t0 = std::time::Instant::now();
        let short = Duration::from_millis(200);
        let unchanged = c.sync_held(&held_request(current), now_ms(), short).await;
        assert_eq!(unchanged.unwrap().table.epoch, current);
        assert!(t0.elapsed() >= short);

        let held = {
            let c = c.clone();
            tokio::spawn(async move { c.sync_held(&held_request(current), now_ms(), HOLD).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!held.is_finished());
        c.release_held_syncs();
        let released = tokio::time::timeout(PROMPT, held).await.unwrap().unwrap();
        assert_eq!(released.unwrap().table.epoch, current);
        // After shutdown began nothing is held.
        let late = held_request(current);
        let late = tokio::time::timeout(PROMPT, c.sync_held(&late, now_ms(), HOLD));
        assert_eq!(late.await.unwrap().unwrap().table.epoch, current);
    }

    #[tokio::test]
    async fn the_epoch_moves_only_when_the_split_does() {
        let c = controller().await;
        c.create("heart-prod", target("v1"), Policy::default(), "operator")
            .await
            .unwrap();
        let e1 = c.epoch().await;
        register_v2(&c).await;
        assert_eq!(c.epoch().await, e1);
        start_v2(&c, Some(20.0)).await;
        assert_eq!(c.epoch().await, e1 + 1);
        assert_eq!(c.table().deployments[0].canary_bps.get(), 2000);
    }

    #[tokio::test]
    async fn evaluation_rolls_back_from_reported_stats() {
        let c = controller().await;
        let policy = Policy {
            check_interval_seconds: 1,
            ..Policy::default()
        };
        c.create("heart-prod", target("v1"), policy, "operator")
            .await
            .unwrap();
        register_v2(&c).await;
        start_v2(&c, None).await;
        let now = now_ms();
        let req = SyncRequest {
            proxy: "p".into(),
            instance: "i".into(),
            seq: 1,
            epoch: 2,
            reports: vec![
                report(Role::Baseline, "v1", 400, 0),
                report(Role::Canary, "v2", 75, 25),
            ],
        };
        c.sync(&req, now).unwrap();
        c.evaluate_due(now + 1000).await;
        let d = c.deployment("heart-prod").await.unwrap();
        assert!(d.canary.is_none());
        let kinds: Vec<_> = c
            .events("heart-prod", 0, 100)
            .await
            .unwrap()
            .iter()
            .map(|e| e.event.kind.as_str())
            .collect();
        assert_eq!(
            kinds,
            [
                "deployment_created",
                "version_registered",
                "version_registered",
                "canary_started",
                "health_check_failed",
                "auto_rollback_triggered",
                "rolled_back"
            ]
        );
        assert_eq!(c.table().deployments[0].canary_bps.get(), 0);
    }
}
