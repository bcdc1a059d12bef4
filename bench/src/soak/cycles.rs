//! The soak's cycles, each on a freshly registered version: promotion,
//! automatic rollback under an injected fault, an operator's changes, and a
//! controller killed and restarted mid-canary.

use super::{CANARY_ERROR_RATE, Cycle, CycleKind, DEPLOYMENT};
use crate::Bench;
use crate::stats::round;
use anyhow::Result;
use coalmine_client::Action;
use coalmine_client::types::{DeploymentView, RegisterVersion, StartCanary, StoredEvent};
use coalmine_e2e::{ControllerProc, Load, ModelServer, poll};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub(super) const CLUSTERS: [&str; 2] = ["heart-v1", "heart-v2"];

/// The soak under way: the stack, the cycles done, the faults injected,
/// and the events each cycle must have left.
pub(super) struct Run<'a> {
    pub(super) b: &'a Bench,
    pub(super) controller: ControllerProc,
    pub(super) servers: [ModelServer; 2],
    pub(super) client: reqwest::Client,
    pub(super) started: Instant,
    pub(super) versions: usize,
    pub(super) cycles: Vec<Cycle>,
    pub(super) faults: Vec<(Instant, Instant)>,
    pub(super) restarts: usize,
    /// The newest event id seen.
    pub(super) last_id: i64,
    /// Events each cycle must have left: kind → count.
    pub(super) expected: BTreeMap<&'static str, usize>,
}

impl Run<'_> {
    pub(super) fn at(&self, t: Instant) -> f64 {
        round(t.duration_since(self.started).as_secs_f64(), 1)
    }

    async fn state(&self) -> Result<DeploymentView> {
        Ok(self.controller.client().deployment(DEPLOYMENT).await?)
    }

    /// Registers a new version on the cluster not serving the baseline and
    /// starts it at 20 %; returns it and the index of its model server.
    async fn new_canary(&mut self) -> Result<(String, usize)> {
        let baseline = self.state().await?.baseline.cluster;
        let server = usize::from(baseline == CLUSTERS[0]);
        self.versions += 1;
        let version = format!("s{}", self.versions);
        let api = self.controller.client();
        let register = RegisterVersion {
            version: version.clone(),
            cluster: CLUSTERS[server].to_string(),
            metadata: None,
        };
        api.register_version(DEPLOYMENT, &register).await?;
        let start = StartCanary {
            version: version.clone(),
            percent: Some(20.0),
            ..StartCanary::default()
        };
        api.start_canary(DEPLOYMENT, &start).await?;
        *self.expected.entry("version_registered").or_default() += 1;
        *self.expected.entry("canary_started").or_default() += 1;
        Ok((version, server))
    }

    /// Waits for an event of `kind` with an id above `after`, asking only
    /// for the events after it (the log grows all through the soak).
    async fn wait_event(&self, kind: &str, after: i64) -> Result<()> {
        poll(
            &format!("a {kind} event"),
            Duration::from_secs(90),
            || async {
                let events = self.events_after(after).await?;
                Ok(events
                    .iter()
                    .any(|e| e.event.kind.as_str() == kind)
                    .then_some(()))
            },
        )
        .await
    }

    async fn events_after(&self, after: i64) -> Result<Vec<StoredEvent>> {
        let api = self.controller.client();
        Ok(api.events(DEPLOYMENT, Some(after), None).await?)
    }

    /// The id of the newest event.
    async fn last_event_id(&mut self) -> Result<i64> {
        let newer = self.events_after(self.last_id).await?;
        if let Some(id) = newer.last().map(|e| e.id) {
            self.last_id = id;
        }
        Ok(self.last_id)
    }

    async fn canary_traffic(&self, load: &Load, from: Instant, n: usize) -> Result<()> {
        poll("canary traffic", Duration::from_secs(30), || {
            let seen = load
                .since(from)
                .iter()
                .filter(|s| s.role.as_deref() == Some("canary"))
                .count();
            async move { Ok((seen >= n).then_some(())) }
        })
        .await
    }

    async fn operator(&self, action: Action) -> Result<()> {
        let reason = matches!(action, Action::Pause | Action::Rollback).then(|| "soak".to_string());
        self.controller
            .client()
            .act(DEPLOYMENT, action, reason)
            .await?;
        Ok(())
    }

    pub(super) async fn cycle(&mut self, kind: CycleKind, load: &Load) -> Result<()> {
        let t = Instant::now();
        let before = self.last_event_id().await?;
        let (version, server) = self.new_canary().await?;
        match kind {
            CycleKind::Promote => {
                self.wait_event("promoted", before).await?;
                *self.expected.entry("step_advanced").or_default() += 2;
                *self.expected.entry("promoted").or_default() += 1;
            }
            CycleKind::AutoRollback => {
                self.canary_traffic(load, t, 50).await?;
                let from = Instant::now();
                self.servers[server]
                    .set_error_rate(&self.client, CANARY_ERROR_RATE)
                    .await?;
                let waited = self.wait_event("rolled_back", before).await;
                // The fault ends once no request can reach the canary.
                self.servers[server]
                    .set_error_rate(&self.client, 0.0)
                    .await?;
                self.faults.push((from, Instant::now()));
                waited?;
                *self.expected.entry("auto_rollback_triggered").or_default() += 1;
                *self.expected.entry("rolled_back").or_default() += 1;
            }
            CycleKind::Operator => {
                self.canary_traffic(load, t, 20).await?;
                self.operator(Action::Pause).await?;
                self.controller
                    .client()
                    .set_traffic(DEPLOYMENT, 35.0)
                    .await?;
                self.operator(Action::Resume).await?;
                self.canary_traffic(load, Instant::now(), 20).await?;
                self.operator(Action::Rollback).await?;
                for k in ["paused", "traffic_changed", "resumed", "rolled_back"] {
                    *self.expected.entry(k).or_default() += 1;
                }
            }
            CycleKind::ControllerRestart => {
                self.canary_traffic(load, t, 20).await?;
                self.controller.restart().await?;
                self.restarts += 1;
                self.wait_event("promoted", before).await?;
                *self.expected.entry("step_advanced").or_default() += 2;
                *self.expected.entry("promoted").or_default() += 1;
            }
        }
        let took = t.elapsed().as_secs_f64();
        self.b.progress(&format!(
            "soak: {kind:?} cycle on {version} done in {took:.1} s"
        ));
        self.cycles.push(Cycle {
            kind,
            version,
            started_s: self.at(t),
            took_s: round(took, 1),
        });
        Ok(())
    }
}
