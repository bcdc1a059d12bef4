//! The root context wires the others together: it validates the plugin
//! configuration, defines the metrics, builds the worker, hands it to each
//! request context, (with a controller) drives the sync loop from its tick
//! and its HTTP call answers, and sends the copies of requests to shadow
//! versions (calls it makes itself outlive the requests they copy).

use crate::host;
use crate::metrics::{EnvoyMetrics, VmMetrics};
use crate::request::RequestContext;
use crate::shadow::{Cadence, SHADOW_TICK, ShadowAnswer};
use crate::sync::Syncer;
use crate::worker::Worker;
use coalmine_protocol::PluginConfig;
use coalmine_protocol::outputs::BodyCollector;
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
    /// The regular tick (sync interval, or the standalone tick).
    period: Duration,
    /// When the regular work is due while the tick runs faster.
    cadence: Option<Cadence>,
    /// The tick runs at [`SHADOW_TICK`] (a shadow is in force).
    fast: bool,
}

impl Context for CoalmineRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(Ok(mut worker)) = self.worker.as_ref().map(|w| w.try_borrow_mut()) else {
            return;
        };
        if let Some(limit) = worker.copy_answer_limit(token_id) {
            let answer = read_copy_answer(num_headers, body_size, limit);
            worker.copy_answered(token_id, answer);
            send_copies(&mut worker);
            return;
        }
        if let Some(syncer) = self.syncer.as_mut() {
            syncer.on_response(&mut worker, token_id, body_size);
        }
        let fast = worker.shadow_in_force();
        drop(worker);
        self.set_tick(fast);
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
            self.period = STANDALONE_TICK;
            self.cadence = Some(Cadence::new(STANDALONE_TICK));
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
        self.period = interval;
        self.cadence = Some(Cadence::new(interval));
        hostcalls::set_tick_period(interval).map_err(|_| "cannot start the sync timer".to_string())
    }

    /// Ticks at [`SHADOW_TICK`] while a shadow is in force (copies wait at
    /// most that long), at the regular period otherwise.
    fn set_tick(&mut self, fast: bool) {
        if fast == self.fast {
            return;
        }
        let period = if fast { SHADOW_TICK } else { self.period };
        if hostcalls::set_tick_period(period).is_ok() {
            self.fast = fast;
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
        match self.start(config) {
            Ok(()) => true,
            Err(why) => {
                log::error!("{why}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        let Some(Ok(mut worker)) = self.worker.as_ref().map(|w| w.try_borrow_mut()) else {
            return;
        };
        send_copies(&mut worker);
        let due = self.cadence.as_mut().is_none_or(|c| c.due(host::now_ms()));
        if due {
            if let Some(vm) = &self.vm {
                vm.publish_memory();
            }
            worker.flush_metrics();
            worker.expire_copies(host::now_ns());
            if let Some(syncer) = self.syncer.as_mut() {
                syncer.on_tick(&mut worker);
            }
        }
        let fast = worker.shadow_in_force();
        drop(worker);
        self.set_tick(fast);
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(RequestContext::new(self.worker.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Hands every waiting copy to Envoy, from the root context (so the call
/// outlives the request it copies).
fn send_copies(worker: &mut Worker) {
    while let Some((copy, timeout)) = worker.next_copy() {
        let headers: Vec<(&str, &str)> = copy
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let body = Some(copy.body.as_slice()).filter(|b| !b.is_empty());
        let token =
            hostcalls::dispatch_http_call(&copy.cluster, headers, body, vec![], timeout).ok();
        worker.copy_sent(copy, token, host::now_ns());
    }
}

/// What came back for a copy: its status (0 without an answer) and, for a
/// 2xx answer the outputs reader would read (not compressed, at most
/// `limit` bytes), its body.
fn read_copy_answer(num_headers: usize, body_size: usize, limit: usize) -> ShadowAnswer {
    let status = (num_headers > 0)
        .then(|| host::call_response_header(":status"))
        .flatten();
    let code = status
        .as_deref()
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let readable = limit > 0
        && body_size <= limit
        && BodyCollector::for_response(
            status.as_deref(),
            host::call_response_header("content-encoding").as_deref(),
            host::call_response_header("content-length").as_deref(),
            limit,
        )
        .is_ok();
    let body = readable.then(|| host::call_response_body(body_size).unwrap_or_default());
    ShadowAnswer {
        status: code,
        body,
        now_ns: host::now_ns(),
    }
}
