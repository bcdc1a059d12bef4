//! The root context wires the others together: it validates the plugin
//! configuration, defines the metrics, builds the worker, hands it to each
//! request context, and (with a controller) drives the sync loop from its
//! tick and its HTTP call answers.

use crate::metrics::{EnvoyMetrics, VmMetrics};
use crate::request::RequestContext;
use crate::sync::Syncer;
use crate::worker::Worker;
use coalmine_protocol::PluginConfig;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

/// How often a VM without a controller hands its counts to Envoy and
/// publishes its memory gauge.
const STANDALONE_TICK: Duration = Duration::from_secs(1);

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

impl CoalmineRoot {
    /// Defines the metrics, builds the worker and starts the timer; the
    /// log line to refuse the configuration with when any of it fails.
    fn start(&mut self, config: PluginConfig) -> Result<(), String> {
        let vm = VmMetrics::define().map_err(|e| format!("cannot start: {e}"))?;
        vm.publish_memory();
        self.vm = Some(vm);
        let controller = config.controller.clone();
        let count = config.deployments.len();
        let worker = EnvoyMetrics::define(&config.deployments)
            .and_then(|metrics| Worker::new(config, metrics))
            .map_err(|e| format!("cannot start: {e}"))?;
        self.worker = Some(Rc::new(RefCell::new(worker)));
        let Some(controller) = controller else {
            log::info!("configured {count} deployment(s), standalone mode");
            return hostcalls::set_tick_period(STANDALONE_TICK)
                .map_err(|_| "cannot start the timer".to_string());
        };
        let interval = controller.interval;
        log::info!(
            "configured {count} deployment(s); syncing with cluster {:?} every {} ms",
            controller.cluster,
            interval.as_millis()
        );
        self.syncer = Some(Syncer::new(controller));
        hostcalls::set_tick_period(interval).map_err(|_| "cannot start the sync timer".to_string())
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
        match self.start(config) {
            Ok(()) => true,
            Err(why) => {
                log::error!("{why}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let Some(vm) = &self.vm {
            vm.publish_memory();
        }
        let Some(Ok(mut worker)) = self.worker.as_ref().map(|w| w.try_borrow_mut()) else {
            return;
        };
        worker.flush_metrics();
        if let Some(syncer) = self.syncer.as_mut() {
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
