//! The root context: configuration, the worker's state, and request contexts.

use crate::metrics::DeploymentMetrics;
use crate::random::RandomPool;
use crate::request::RequestContext;
use coalmine_protocol::active::{ActiveSplits, Observed};
use coalmine_protocol::stats::RoleStats;
use coalmine_protocol::{PluginConfig, Role};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use std::cell::RefCell;
use std::rc::Rc;

/// Where the controller's split table lives in proxy shared data.
pub(crate) const SPLIT_TABLE_KEY: &str = "coalmine.split_table";

/// Everything a worker's request contexts share. Wasm VMs are single-threaded,
/// so `Rc<RefCell<_>>` is enough; borrows never outlive one callback.
#[derive(Debug)]
pub(crate) struct Worker {
    pub(crate) config: PluginConfig,
    pub(crate) splits: ActiveSplits,
    pub(crate) metrics: Vec<DeploymentMetrics>,
    /// Per deployment, `[baseline, canary]` statistics since the last report.
    pub(crate) stats: Vec<[RoleStats; 2]>,
    pub(crate) random: RandomPool,
}

impl Worker {
    fn new(config: PluginConfig) -> Result<Worker, String> {
        let metrics = config
            .deployments
            .iter()
            .map(DeploymentMetrics::define)
            .collect::<Result<Vec<_>, _>>()?;
        let stats = config
            .deployments
            .iter()
            .map(|_| Ok([RoleStats::try_new()?, RoleStats::try_new()?]))
            .collect::<Result<Vec<_>, coalmine_protocol::stats::StatsError>>()
            .map_err(|e| e.to_string())?;
        let splits = ActiveSplits::from_static(&config.deployments);
        let worker = Worker {
            config,
            splits,
            metrics,
            stats,
            random: RandomPool::default(),
        };
        worker.publish_split_metrics();
        Ok(worker)
    }

    /// With a controller, takes in the split table from shared data when it
    /// changed (one host call per request; decoding only on change).
    pub(crate) fn refresh_splits(&mut self) {
        if self.config.controller.is_none() {
            return;
        }
        let (bytes, cas) = crate::host::shared_data(SPLIT_TABLE_KEY);
        match self
            .splits
            .observe(&self.config.deployments, cas, || bytes.as_deref())
        {
            Observed::Unchanged => {}
            Observed::Updated { epoch } => {
                log::info!("split table epoch {epoch} in force");
                self.publish_split_metrics();
            }
            Observed::Rejected(e) => {
                log::warn!("keeping the last good split table: {e}");
            }
        }
    }

    fn publish_split_metrics(&self) {
        let epoch = self.splits.epoch().unwrap_or_default();
        for (i, m) in self.metrics.iter().enumerate() {
            let bps = self.splits.get(i).map_or(0, |s| s.effective_bps().get());
            m.set_split(bps, epoch);
        }
    }

    pub(crate) fn record(
        &mut self,
        deployment: usize,
        role: Role,
        outcome: coalmine_protocol::Outcome,
        latency_us: u64,
    ) {
        if let Some(s) = self
            .stats
            .get_mut(deployment)
            .and_then(|roles| roles.get_mut(role.index()))
        {
            s.record(outcome, latency_us);
        }
        if let Some(m) = self.metrics.get(deployment) {
            m.record(role, outcome, latency_us);
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct CoalmineRoot {
    worker: Option<Rc<RefCell<Worker>>>,
}

impl Context for CoalmineRoot {}

impl RootContext for CoalmineRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = hostcalls::get_buffer(
            proxy_wasm::types::BufferType::PluginConfiguration,
            0,
            usize::MAX,
        )
        .ok()
        .flatten()
        .unwrap_or_default();
        let config = match PluginConfig::parse(&bytes) {
            Ok(config) => config,
            Err(e) => {
                log::error!("invalid plugin configuration: {e}");
                return false;
            }
        };
        let mode = if config.controller.is_some() {
            "controller"
        } else {
            "standalone"
        };
        let count = config.deployments.len();
        match Worker::new(config) {
            Ok(worker) => {
                self.worker = Some(Rc::new(RefCell::new(worker)));
                log::info!("configured {count} deployment(s), {mode} mode");
                true
            }
            Err(e) => {
                log::error!("cannot start: {e}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(RequestContext::new(self.worker.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
