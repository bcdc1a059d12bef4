//! The root context: configuration, the worker's state, request contexts,
//! and (with a controller) the sync loop.

use crate::metrics::{DeploymentMetrics, VmMetrics};
use crate::random::RandomPool;
use crate::request::RequestContext;
use crate::sync::Syncer;
use coalmine_protocol::active::{ActiveSplits, Observed};
use coalmine_protocol::shared::{SPLIT_TABLE_KEY, encode_split_table};
use coalmine_protocol::stats::{PendingReports, RoleStats};
use coalmine_protocol::sync::RoleReport;
use coalmine_protocol::{Outcome, PluginConfig, Role, SplitTable};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

/// Everything a worker's request contexts share. Wasm VMs are single-threaded,
/// so `Rc<RefCell<_>>` is enough; borrows never outlive one callback.
#[derive(Debug)]
pub(crate) struct Worker {
    pub(crate) config: PluginConfig,
    pub(crate) splits: ActiveSplits,
    pub(crate) metrics: Vec<DeploymentMetrics>,
    /// Statistics since the last report, per deployment, role and version.
    pending: PendingReports,
    pub(crate) random: RandomPool,
    /// Whether any deployment matches on host (else `:authority` is not read).
    pub(crate) match_on_host: bool,
}

impl Worker {
    fn new(config: PluginConfig) -> Result<Worker, String> {
        let metrics = config
            .deployments
            .iter()
            .map(DeploymentMetrics::define)
            .collect::<Result<Vec<_>, _>>()?;
        // Fail at load, not on the request path, if histograms cannot be made.
        RoleStats::try_new().map_err(|e| e.to_string())?;
        let splits = ActiveSplits::from_static(&config.deployments);
        let match_on_host = config.deployments.iter().any(|d| d.matcher.host.is_some());
        let worker = Worker {
            config,
            splits,
            metrics,
            pending: PendingReports::default(),
            random: RandomPool::default(),
            match_on_host,
        };
        worker.publish_split_metrics();
        Ok(worker)
    }

    /// With a controller, takes in the split table from shared data when it
    /// changed (decoding only on change). Called on every tick and after this
    /// worker's own sync answer, never per request: the request path reads
    /// no shared data.
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
                log::debug!("split table epoch {epoch} in force");
                self.publish_split_metrics();
            }
            Observed::Rejected(e) => {
                log::warn!("keeping the last good split table: {e}");
            }
        }
    }

    /// The epoch of the controller's table in force (0: none yet).
    pub(crate) fn epoch(&self) -> u64 {
        self.splits.epoch().unwrap_or(0)
    }

    /// Puts this worker's own sync answer in force at once, decoded once;
    /// when the table is new, its stored form for shared data (whose epoch
    /// prefix lets this worker skip it on its next look).
    pub(crate) fn take_answer(&mut self, table: SplitTable) -> Option<Vec<u8>> {
        if self.splits.epoch() == Some(table.epoch) {
            return None;
        }
        let value = encode_split_table(&table);
        let epoch = table.epoch;
        self.splits.apply(&self.config.deployments, table);
        log::debug!("split table epoch {epoch} in force");
        self.publish_split_metrics();
        Some(value)
    }

    /// Enters or leaves the lease fail-safe (baseline only).
    pub(crate) fn set_lease_expired(&mut self, expired: bool) {
        if self.splits.set_lease_expired(expired) {
            self.publish_split_metrics();
        }
    }

    pub(crate) fn sync_failed(&self) {
        for m in &self.metrics {
            m.sync_failed();
        }
    }

    pub(crate) fn lease_expired(&self) {
        for m in &self.metrics {
            m.lease_expired();
        }
    }

    pub(crate) fn publish_split_metrics(&self) {
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
        version: &str,
        outcome: Outcome,
        latency_us: u64,
    ) {
        self.pending
            .record(deployment, role, version, outcome, latency_us);
        if let Some(m) = self.metrics.get(deployment) {
            m.record(role, outcome, latency_us);
        }
    }

    pub(crate) fn record_tester_override(&self, deployment: usize) {
        if let Some(m) = self.metrics.get(deployment) {
            m.tester_override();
        }
    }

    /// The reports of everything recorded since the last call, which starts
    /// afresh. Entries of versions no longer in play are dropped once empty.
    pub(crate) fn drain_reports(&mut self) -> Vec<RoleReport> {
        let deployments = &self.config.deployments;
        let splits = &self.splits;
        self.pending.drain(
            |i| deployments.get(i).map(|d| d.name.as_str()),
            |i, role, version| {
                splits
                    .get(i)
                    .and_then(|s| s.target(role))
                    .is_some_and(|t| t.version == version)
            },
        )
    }
}

/// How often a VM without a controller publishes its memory gauge.
const STANDALONE_TICK: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub(crate) struct CoalmineRoot {
    worker: Option<Rc<RefCell<Worker>>>,
    syncer: Option<Syncer>,
    vm: Option<VmMetrics>,
}

impl Context for CoalmineRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        if let (Some(syncer), Some(Ok(mut worker))) = (
            self.syncer.as_mut(),
            self.worker.as_ref().map(|w| w.try_borrow_mut()),
        ) {
            syncer.on_response(&mut worker, token_id, body_size);
        }
    }
}

impl RootContext for CoalmineRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
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
        let controller = config.controller.clone();
        let count = config.deployments.len();
        match VmMetrics::define() {
            Ok(vm) => {
                vm.publish_memory();
                self.vm = Some(vm);
            }
            Err(e) => {
                log::error!("cannot start: {e}");
                return false;
            }
        }
        let worker = match Worker::new(config) {
            Ok(worker) => worker,
            Err(e) => {
                log::error!("cannot start: {e}");
                return false;
            }
        };
        self.worker = Some(Rc::new(RefCell::new(worker)));
        match controller {
            Some(controller) => {
                let interval = controller.interval;
                log::info!(
                    "configured {count} deployment(s); syncing with cluster {:?} every {} ms",
                    controller.cluster,
                    interval.as_millis()
                );
                self.syncer = Some(Syncer::new(controller));
                if hostcalls::set_tick_period(interval).is_err() {
                    log::error!("cannot start the sync timer");
                    return false;
                }
            }
            None => {
                log::info!("configured {count} deployment(s), standalone mode");
                if hostcalls::set_tick_period(STANDALONE_TICK).is_err() {
                    log::warn!("cannot start the timer; the memory gauge will not be updated");
                }
            }
        }
        true
    }

    fn on_tick(&mut self) {
        if let Some(vm) = &self.vm {
            vm.publish_memory();
        }
        if let (Some(syncer), Some(Ok(mut worker))) = (
            self.syncer.as_mut(),
            self.worker.as_ref().map(|w| w.try_borrow_mut()),
        ) {
            syncer.on_tick(&mut worker);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(RequestContext::new(self.worker.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
