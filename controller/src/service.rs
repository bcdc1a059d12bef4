//! The controller's state and the thin shell around the pure engine.
//!
//! Every change (an operator's command or the engine's own decision) is
//! computed by `coalmine_decide::engine`, committed to the store with its
//! events in one transaction, and only then applied in memory and to the
//! split table the proxies fetch. A store that cannot be written leaves
//! everything as it was. The engine's verdict flows from the step into the
//! metrics and the history; nothing evaluates it again. Time comes from one
//! injected [`Clock`].
//!
//! - `failsafe`: a lowered share applied even when the database cannot be
//!   written, stored later; leases refused while evaluations stall;
//! - `ingest`: sync reports, deduplicated, into the rolling windows;
//! - `feedback`: feedback calls, checked whole, into the windows too;
//! - `retention`: each deployment's oldest events archived and removed;
//! - `history`: one sample a second per deployment, for charts (sampled
//!   here, with the metrics of the moment).

mod failsafe;
mod feedback;
mod history;
mod ingest;
mod leader;
mod reads;
mod retention;
mod volume;

pub use failsafe::{STALLED_AFTER, STORE_TIMEOUT};
pub use history::HISTORY_SAMPLES;
pub use retention::{RETENTION_EVERY, Retention};

use crate::clock::{Clock, Millis, MonotonicClock, SystemClock};
use crate::metrics::Metrics;
use crate::notify::{NoNotifier, Notifier};
use crate::store::{Store, StoreError, StoredEvent};
use coalmine_decide::engine::{self, Command, Deployment, Refusal, Transition};
use coalmine_decide::policy::Policy;
use coalmine_decide::verdict::VerdictKind;
use coalmine_protocol::sync::ReportError;
use coalmine_protocol::{SplitTable, Target};
use history::History;
use ingest::Ingest;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// How often the evaluation loop looks for deployments that are due.
pub const EVALUATION_TICK: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
pub struct Settings {
    /// The lease granted to proxies with each split table.
    pub lease_ms: u64,
    /// How many events each deployment keeps (none: all, for tests).
    pub retention: Option<Retention>,
    /// On a store several replicas share: a leader that stops renewing is
    /// replaced within this long.
    pub leader_lease_ms: u64,
    /// Where operators and proxies reach this replica (followers name the
    /// leader's).
    pub url: String,
    /// Wrong tokens one client address may present in 10 s before its
    /// calls are answered 429 for the rest of the window.
    pub wrong_tokens_per_window: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            lease_ms: 30_000,
            retention: Some(Retention::default()),
            leader_lease_ms: 5_000,
            url: String::new(),
            wrong_tokens_per_window: crate::auth::FAILURES_PER_WINDOW,
        }
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
    /// Something in memory cannot be used; nothing was changed.
    #[error("{0}")]
    Unavailable(String),
}

#[derive(Debug)]
struct State {
    deployments: BTreeMap<String, Deployment>,
    epoch: u64,
    /// When each deployment with a canary is evaluated next.
    next_evaluation: HashMap<String, Millis>,
    /// The verdict of each canary's last evaluation.
    verdicts: HashMap<String, VerdictKind>,
    /// Changes in effect whose events wait for the database.
    unstored: failsafe::Unstored,
}

impl State {
    /// The verdict the engine last reached for `d` (none yet, or no canary:
    /// INSUFFICIENT_DATA).
    fn verdict_of(&self, d: &Deployment) -> VerdictKind {
        match d.canary {
            Some(_) => self.verdicts.get(&d.name).copied(),
            None => None,
        }
        .unwrap_or(VerdictKind::InsufficientData)
    }
}

/// What the controller is given besides its store: metrics, notifications
/// and the clock.
#[derive(Debug, Clone)]
pub struct Services {
    pub metrics: Arc<Metrics>,
    pub notifier: Arc<dyn Notifier>,
    pub clock: Arc<dyn Clock>,
}

impl Default for Services {
    fn default() -> Self {
        Services {
            metrics: Arc::new(Metrics::default()),
            notifier: Arc::new(NoNotifier),
            clock: Arc::new(SystemClock),
        }
    }
}

/// The controller.
#[derive(Debug)]
pub struct Controller {
    store: Arc<dyn Store>,
    settings: Settings,
    clock: Arc<dyn Clock>,
    state: tokio::sync::Mutex<State>,
    ingest: Ingest,
    /// The split table; held sync calls wait for it to change.
    table: watch::Sender<Arc<SplitTable>>,
    /// Set on shutdown: held sync calls answer at once.
    closing: AtomicBool,
    history: History,
    metrics: Arc<Metrics>,
    notifier: Arc<dyn Notifier>,
    watchdog: failsafe::Watchdog,
    leadership: leader::Leadership,
}

/// Deployments as stored, resumed (their bakes start over on fresh data).
fn loaded(deployments: Vec<Deployment>) -> BTreeMap<String, Deployment> {
    deployments
        .into_iter()
        .map(|d| (d.name.clone(), d.resumed()))
        .collect()
}

fn table_of(deployments: &BTreeMap<String, Deployment>, epoch: u64) -> SplitTable {
    SplitTable {
        epoch,
        deployments: deployments.values().map(Deployment::split).collect(),
    }
}

impl Controller {
    /// Loads the stored state; no notifications, the wall clock.
    pub async fn open(
        store: Arc<dyn Store>,
        settings: Settings,
    ) -> Result<Arc<Controller>, StoreError> {
        Controller::open_with(store, settings, Services::default()).await
    }

    /// Loads the stored state, with these metrics, notifications and clock.
    pub async fn open_with(
        store: Arc<dyn Store>,
        settings: Settings,
        services: Services,
    ) -> Result<Arc<Controller>, StoreError> {
        let snapshot = store.load().await?;
        let deployments = loaded(snapshot.deployments);
        let table = table_of(&deployments, snapshot.epoch);
        for d in deployments.values() {
            services.metrics.observe_deployment(d, None);
        }
        let ingest = Ingest::default();
        ingest.know(deployments.values());
        // Schedules and windows never run backwards with the wall clock.
        let clock: Arc<dyn Clock> = Arc::new(MonotonicClock::new(services.clock));
        let watchdog = failsafe::Watchdog::new(clock.now());
        // On a shared store, the leadership loop decides who leads.
        let leadership = leader::Leadership::new(!store.shared(), &settings.url);
        services.metrics.leadership(!store.shared(), 0);
        Ok(Arc::new(Controller {
            store,
            settings,
            clock,
            state: tokio::sync::Mutex::new(State {
                deployments,
                epoch: snapshot.epoch,
                next_evaluation: HashMap::new(),
                verdicts: HashMap::new(),
                unstored: failsafe::Unstored::default(),
            }),
            ingest,
            table: watch::Sender::new(Arc::new(table)),
            closing: AtomicBool::new(false),
            history: History::default(),
            metrics: services.metrics,
            notifier: services.notifier,
            watchdog,
            leadership,
        }))
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Wrong tokens one client address may present in a window.
    pub fn wrong_tokens_per_window(&self) -> u32 {
        self.settings.wrong_tokens_per_window
    }

    /// The controller's time (ms since the UNIX epoch).
    pub fn now(&self) -> Millis {
        self.clock.now()
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

    /// Commits a transition, then applies it; a transition that lowers the
    /// canary's share is applied even when the commit fails (its events
    /// are stored later, `failsafe.rs`). The epoch moves when the split
    /// the proxies route by changed. `verdict` is the evaluation the
    /// transition came from, if it came from one. Returns the events stored.
    async fn apply(
        &self,
        state: &mut State,
        t: Transition,
        verdict: Option<VerdictKind>,
        now: Millis,
    ) -> Result<Vec<StoredEvent>, ServiceError> {
        let name = t.deployment.name.clone();
        let before = state.deployments.get(&name).map(Deployment::split);
        let epoch = if before.as_ref() == Some(&t.deployment.split()) {
            state.epoch
        } else {
            state.epoch + 1
        };
        let stored = self
            .commit_transition(state, &t.deployment, &t.events, epoch, now)
            .await?
            .unwrap_or_default();
        self.published(&stored);
        match verdict {
            Some(v) if t.deployment.canary.is_some() => state.verdicts.insert(name.clone(), v),
            _ => state.verdicts.remove(&name),
        };
        let shown = state.verdict_of(&t.deployment);
        self.metrics.observe_deployment(&t.deployment, Some(shown));
        state.deployments.insert(name, t.deployment);
        self.ingest.know(state.deployments.values());
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
        let now = self.now();
        let t = engine::create(name, baseline, policy, actor, now)?;
        let d = t.deployment.clone();
        self.apply(&mut state, t, None, now).await?;
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
        let now = self.now();
        let starts_canary = matches!(cmd, Command::StartCanary { .. });
        // A promotion keeps the old baseline's window for the watch.
        let old = match cmd {
            Command::Promote { .. } => self.ingest.observe(d, now).baseline,
            _ => Default::default(),
        };
        let t = engine::command_seen(d, cmd, actor, now, &old)?;
        let next = t.deployment.clone();
        // A new canary has no verdict yet; any other command keeps the last.
        let kept = (!starts_canary)
            .then(|| state.verdicts.get(name).copied())
            .flatten();
        self.apply(&mut state, t, kept, now).await?;
        if starts_canary {
            let first = now + next.policy.check_interval_seconds * 1000;
            state.next_evaluation.insert(name.to_string(), first);
        }
        Ok(next)
    }

    /// Evaluates every deployment whose check interval has come.
    pub async fn evaluate_due(&self) {
        if !self.leads() {
            return;
        }
        let now = self.now();
        let mut state = self.state.lock().await;
        self.retry_unstored(&mut state).await;
        let due: Vec<Deployment> = state
            .deployments
            .values()
            .filter(|d| d.canary.is_some() || d.shadow.is_some() || d.watch.is_some())
            .filter(|d| {
                state
                    .next_evaluation
                    .get(&d.name)
                    .is_none_or(|&at| now >= at)
            })
            .cloned()
            .collect();
        for d in due {
            let interval = d.policy.check_interval_seconds * 1000;
            let first_sight = state
                .next_evaluation
                .insert(d.name.clone(), now + interval)
                .is_none();
            if first_sight {
                // E.g. after a restart: give the proxies one interval to report.
                continue;
            }
            let started = std::time::Instant::now();
            let s = engine::step(&d, &self.ingest.observe(&d, now), now);
            let verdict = s.verdict.as_ref().map(|v| v.verdict);
            // The shadow is judged on the state the canary's step left.
            let mut t = s.transition;
            if let Some(stats) = self.ingest.shadow_stats(&t.deployment, now) {
                let shadowed = engine::shadow_step(&t.deployment, &stats).transition;
                t.deployment = shadowed.deployment;
                t.events.extend(shadowed.events);
            }
            if t.deployment == d && t.events.is_empty() {
                if let Some(v) = verdict {
                    state.verdicts.insert(d.name.clone(), v);
                }
                self.metrics.observe_deployment(&d, verdict);
            } else if let Err(e) = self.apply(&mut state, t, verdict, now).await {
                tracing::warn!(deployment = %d.name, "evaluation not applied: {e}");
            }
            self.metrics.evaluation(started.elapsed().as_secs_f64());
        }
        drop(state);
        self.watchdog.evaluated(now);
        self.metrics.evaluated(now);
        self.prune(now).await;
    }

    async fn prune(&self, now: Millis) {
        let (keep, feedback) = {
            let state = self.state.lock().await;
            let keep = state
                .deployments
                .values()
                .map(|d| d.policy.window_seconds)
                .max();
            // Each feedback metric's window, by deployment and metric.
            let feedback: HashMap<(String, String), u64> = state
                .deployments
                .values()
                .flat_map(|d| {
                    d.policy.feedback.iter().map(|(metric, m)| {
                        ((d.name.clone(), metric.clone()), m.window_seconds + 60)
                    })
                })
                .collect();
            (keep.unwrap_or(300) + 60, feedback)
        };
        let window_of = |d: &str, m: &str| feedback.get(&(d.to_string(), m.to_string())).copied();
        self.ingest.prune(now, keep, window_of);
    }

    /// The evaluation loop, until `shutdown` resolves.
    pub async fn run_evaluations(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let mut tick = tokio::time::interval(EVALUATION_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        let mut sampled_second = 0;
        let mut retained_at = std::time::Instant::now() - RETENTION_EVERY;
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => {
                    self.evaluate_due().await;
                    let second = self.now() / 1000;
                    if second != sampled_second {
                        sampled_second = second;
                        self.sample().await;
                        if retained_at.elapsed() >= RETENTION_EVERY && self.leads() {
                            retained_at = std::time::Instant::now();
                            if let Err(e) = self.apply_retention().await {
                                tracing::warn!("event retention: {e}");
                            }
                            if let Some(bytes) = self.store.size_bytes().await {
                                self.metrics.database_size(bytes);
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::SqliteStore;
    use coalmine_protocol::stats::RoleStats;
    use coalmine_protocol::sync::{RoleReport, SyncRequest};
    use coalmine_protocol::{Outcome, Role};

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

    const T0: Millis = 1_700_000_000_000;

    /// A controller on an in-memory database and a clock the test moves.
    async fn controller_at(clock: Arc<ManualClock>) -> Arc<Controller> {
        let store = Arc::new(SqliteStore::in_memory().await.unwrap());
        let services = Services {
            clock,
            ..Services::default()
        };
        Controller::open_with(store, Settings::default(), services)
            .await
            .unwrap()
    }

    async fn controller() -> Arc<Controller> {
        controller_at(Arc::new(ManualClock::new(T0))).await
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
            shadow: Vec::new(),
        };
        let resp = c.sync(&req).unwrap();
        assert_eq!(resp.table.epoch, 1);
        assert_eq!(resp.table.deployments[0].baseline, target("v1"));
        c.sync(&req).unwrap();
        let mut older = req.clone();
        older.seq = 0;
        c.sync(&older).unwrap();
        // Another instance of the same proxy counts separately.
        let mut other = req.clone();
        other.instance = "b".into();
        c.sync(&other).unwrap();
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
            shadow: Vec::new(),
        };
        assert!(matches!(c.sync(&req), Err(ServiceError::BadReport(_))));
        assert_eq!(c.health("heart-prod").await.unwrap().baseline.requests, 0);
        // The same seq with a good report is then accepted: nothing was recorded.
        let good = SyncRequest {
            reports: vec![report(Role::Baseline, "v1", 10, 0)],
            ..req
        };
        c.sync(&good).unwrap();
        assert_eq!(c.health("heart-prod").await.unwrap().baseline.requests, 10);
    }

    /// Reports about deployments or versions the controller does not have
    /// are dropped and counted; made-up instances beyond the cap push out
    /// the least recently heard from, never an active one.
    #[tokio::test]
    async fn reports_of_unknown_deployments_and_versions_are_dropped() {
        let c = controller().await;
        c.create("heart-prod", target("v1"), Policy::default(), "operator")
            .await
            .unwrap();
        let mut made_up = report(Role::Baseline, "v1", 7, 0);
        made_up.deployment = "nobody".into();
        let req = SyncRequest {
            proxy: "p".into(),
            instance: "i".into(),
            seq: 1,
            epoch: 0,
            reports: vec![
                report(Role::Baseline, "v1", 10, 0),
                report(Role::Canary, "v9", 5, 0),
                made_up,
            ],
            shadow: Vec::new(),
        };
        c.sync(&req).unwrap();
        let h = c.health("heart-prod").await.unwrap();
        assert_eq!((h.baseline.requests, h.canary.requests), (10, 0));
        let text = c.metrics().encode();
        for line in [
            "coalmine_controller_dropped_reports_total{reason=\"unknown_deployment\"} 1",
            "coalmine_controller_dropped_reports_total{reason=\"unknown_version\"} 1",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        for n in 0..(ingest::MAX_INSTANCES as u64 + 10) {
            let made_up = SyncRequest {
                instance: format!("made-up-{n}"),
                reports: vec![],
                ..req.clone()
            };
            c.sync(&made_up).unwrap();
            if n % 1000 == 0 {
                // The honest instance keeps reporting: it is never the oldest.
                let honest = SyncRequest {
                    seq: 2 + n,
                    reports: vec![report(Role::Baseline, "v1", 1, 0)],
                    ..req.clone()
                };
                c.sync(&honest).unwrap();
            }
        }
        // Its resent report is still known as counted.
        let resent = SyncRequest {
            seq: 2,
            reports: vec![report(Role::Baseline, "v1", 1, 0)],
            ..req.clone()
        };
        c.sync(&resent).unwrap();
        let h = c.health("heart-prod").await.unwrap();
        assert_eq!(h.baseline.requests, 10 + 66);
        let text = c.metrics().encode();
        assert!(text.contains("reason=\"instance_evicted\"} 11"), "{text}");
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
            schedule: None,
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
            shadow: Vec::new(),
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
        let behind = tokio::time::timeout(PROMPT, c.sync_held(&behind, HOLD, ()));
        assert_eq!(behind.await.unwrap().unwrap().table.epoch, current);

        // A current worker is held until the table changes, then gets it.
        let held = {
            let c = c.clone();
            tokio::spawn(async move { c.sync_held(&held_request(current), HOLD, ()).await })
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
        let unchanged = c.sync_held(&held_request(current), short, ()).await;
        assert_eq!(unchanged.unwrap().table.epoch, current);
        assert!(t0.elapsed() >= short);

        let held = {
            let c = c.clone();
            tokio::spawn(async move { c.sync_held(&held_request(current), HOLD, ()).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!held.is_finished());
        c.release_held_syncs();
        let released = tokio::time::timeout(PROMPT, held).await.unwrap().unwrap();
        assert_eq!(released.unwrap().table.epoch, current);
        // After shutdown began nothing is held.
        let late = held_request(current);
        let late = tokio::time::timeout(PROMPT, c.sync_held(&late, HOLD, ()));
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

    /// heart-prod with `policy` and canary v2 at the first step, on a
    /// clock the test moves.
    async fn with_canary(policy: Policy) -> (Arc<Controller>, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(T0));
        let c = controller_at(clock.clone()).await;
        c.create("heart-prod", target("v1"), policy, "operator")
            .await
            .unwrap();
        register_v2(&c).await;
        start_v2(&c, None).await;
        (c, clock)
    }

    /// Report `seq` of one worker: v1's and v2's (successes, errors).
    fn both_roles(seq: u64, v1: (u64, u64), v2: (u64, u64)) -> SyncRequest {
        SyncRequest {
            proxy: "p".into(),
            instance: "i".into(),
            seq,
            epoch: 2,
            reports: vec![
                report(Role::Baseline, "v1", v1.0, v1.1),
                report(Role::Canary, "v2", v2.0, v2.1),
            ],
            shadow: Vec::new(),
        }
    }

    #[tokio::test]
    async fn evaluation_rolls_back_from_reported_stats() {
        let policy = Policy {
            check_interval_seconds: 1,
            ..Policy::default()
        };
        let (c, clock) = with_canary(policy).await;
        c.sync(&both_roles(1, (400, 0), (75, 25))).unwrap();
        clock.advance(1000);
        c.evaluate_due().await;
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

    /// A controller killed once its canary's bake had passed, and started
    /// again: it steps only after a whole bake of fresh healthy data.
    #[tokio::test]
    async fn after_a_restart_the_bake_starts_over_on_fresh_data() {
        let policy = Policy {
            check_interval_seconds: 1,
            bake_seconds: 5,
            significance: coalmine_decide::policy::Significance::None,
            ..Policy::default()
        };
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().await.unwrap());
        let clock = Arc::new(ManualClock::new(T0));
        let services = Services {
            clock: clock.clone(),
            ..Services::default()
        };
        let c = Controller::open_with(store.clone(), Settings::default(), services.clone())
            .await
            .unwrap();
        c.create("heart-prod", target("v1"), policy, "operator")
            .await
            .unwrap();
        register_v2(&c).await;
        start_v2(&c, None).await;
        let healthy = |seq| both_roles(seq, (800, 0), (200, 0));
        for seq in 1..=4 {
            c.sync(&healthy(seq)).unwrap();
            clock.advance(1000);
            c.evaluate_due().await;
        }
        let percent = |d: &Deployment| d.canary.as_ref().map(|c| c.bps.as_percent());
        assert_eq!(
            percent(&c.deployment("heart-prod").await.unwrap()),
            Some(20.0)
        );
        // Killed; a minute later it is back, its windows empty.
        drop(c);
        clock.advance(60_000);
        let c = Controller::open_with(store, Settings::default(), services)
            .await
            .unwrap();
        let mut stepped_at = None;
        for seq in 1..=10 {
            c.sync(&SyncRequest {
                instance: "after-restart".into(),
                ..healthy(seq)
            })
            .unwrap();
            clock.advance(1000);
            c.evaluate_due().await;
            let d = c.deployment("heart-prod").await.unwrap();
            if stepped_at.is_none() && percent(&d) != Some(20.0) {
                stepped_at = Some(seq);
            }
        }
        let stepped_at = stepped_at.expect("it never stepped");
        assert!(stepped_at > 5, "stepped after {stepped_at} s of fresh data");
    }

    /// The wall clock stepped back an hour: evaluations go on, and a
    /// canary that fails is still rolled back within two intervals.
    #[tokio::test]
    async fn a_clock_stepped_back_still_rolls_back_in_two_intervals() {
        let policy = Policy {
            check_interval_seconds: 1,
            ..Policy::default()
        };
        let (c, clock) = with_canary(policy).await;
        for seq in 1..=3 {
            c.sync(&both_roles(seq, (400, 0), (100, 0))).unwrap();
            clock.advance(1000);
            c.evaluate_due().await;
        }
        assert!(c.deployment("heart-prod").await.unwrap().canary.is_some());
        clock.set(T0 + 3000 - 3_600_000);
        for seq in 4..=5 {
            c.sync(&both_roles(seq, (400, 0), (50, 50))).unwrap();
            clock.advance(1000);
            c.evaluate_due().await;
        }
        let d = c.deployment("heart-prod").await.unwrap();
        assert!(d.canary.is_none(), "still at {:?}", d.canary);
        assert_eq!(c.table().deployments[0].canary_bps.get(), 0);
    }

    /// Evaluations stop (the loop stuck, the state lock held): after
    /// `STALLED_AFTER` leases are no longer renewed, so the proxies fall
    /// back to their baselines, and readiness says why; the next
    /// evaluation renews them again.
    #[tokio::test]
    async fn stalled_evaluations_stop_renewing_leases() {
        let policy = Policy {
            check_interval_seconds: 1,
            ..Policy::default()
        };
        let (c, clock) = with_canary(policy).await;
        c.sync(&both_roles(1, (400, 0), (100, 0))).unwrap();
        assert!(c.readiness().is_ok());
        clock.advance(failsafe::STALLED_AFTER.as_millis() as u64 - 1000);
        c.sync(&both_roles(2, (400, 0), (100, 0))).unwrap();
        clock.advance(2000);
        let refused = c.sync(&both_roles(3, (400, 0), (100, 0)));
        assert!(
            matches!(refused, Err(ServiceError::Unavailable(ref m)) if m.contains("not renewed")),
            "{refused:?}"
        );
        let why = c.readiness().unwrap_err();
        assert!(why.contains("stalled"), "{why}");
        c.evaluate_due().await;
        c.sync(&both_roles(4, (400, 0), (100, 0))).unwrap();
        assert!(c.readiness().is_ok());
    }

    /// The history shows the verdict the engine reached, not one made
    /// again from newer numbers: without an evaluation in between, a sample
    /// keeps the last step's CRITICAL although the window now looks healthy.
    #[tokio::test]
    async fn the_history_keeps_the_engines_verdict() {
        let policy = Policy {
            check_interval_seconds: 1,
            window_seconds: 10,
            auto_rollback: false,
            ..Policy::default()
        };
        let (c, clock) = with_canary(policy).await;
        c.sync(&both_roles(1, (400, 0), (50, 50))).unwrap();
        clock.advance(1000);
        c.evaluate_due().await;
        c.sample().await;
        let last = |h: Vec<coalmine_client::types::Sample>| h.last().map(|s| s.verdict);
        assert_eq!(
            last(c.history("heart-prod", 0).await.unwrap()),
            Some(VerdictKind::Critical)
        );
        // The bad second leaves the window; healthy numbers arrive (taken
        // as the ingest takes them: 20 s without an evaluation would be a
        // stall, and a sync would be refused).
        clock.advance(20_000);
        c.ingest
            .take(&both_roles(2, (400, 0), (400, 0)), c.now(), &c.metrics)
            .unwrap();
        let d = c.deployment("heart-prod").await.unwrap();
        assert_eq!(c.health_of(&d).verdict, VerdictKind::Healthy);
        c.sample().await;
        assert_eq!(
            last(c.history("heart-prod", 0).await.unwrap()),
            Some(VerdictKind::Critical),
            "a sample must not evaluate again"
        );
        clock.advance(1000);
        c.evaluate_due().await;
        c.sample().await;
        assert_eq!(
            last(c.history("heart-prod", 0).await.unwrap()),
            Some(VerdictKind::Healthy)
        );
    }
}
