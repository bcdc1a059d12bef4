//! A proxy-wasm filter that does nothing, built with the same SDK, toolchain
//! and profile as the coalmine filter. `make bench` runs it in the same place
//! as coalmine: the difference between Envoy without a filter and Envoy with
//! this one is what the wasm VM itself costs per request (creating the
//! context, entering the VM for each callback), before coalmine does any work.
//!
//! To price one kind of host call, a plugin configuration holding
//! `{"calibrate": {"call": "<kind>", "per_request": N}}` makes it do N calls
//! of that kind per request and nothing else (any other configuration, such
//! as coalmine's own, is ignored). The kinds are the calls coalmine makes on
//! its request path: `header_read` (`:path`) and `header_write` (a request
//! header) and `time` (the host's clock) when the request headers arrive;
//! `property` (`request.duration`), `counter` (an increment) and `histogram`
//! (a value recorded) in `on_log`. A bad `calibrate` block is refused at
//! load. The bench's `calibrate` section compares each with N = 0.
//!
//! The kind `coalmine` (with N = 1) makes, per request, the host calls that
//! coalmine's shipped configuration makes without reading outputs, and
//! nothing else: read `:path` and the clock; on every fifth request (the
//! canary's 20 %) set the role and cluster request headers, so Envoy
//! chooses the route again as it does for coalmine's canary; read
//! `:status` and set the two response headers; in `on_log` read the clock
//! and record a latency. The data-plane section runs it beside coalmine:
//! the floor of any filter that makes those calls.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, MapType, MetricType};

/// One kind of host call.
#[derive(Clone, Copy, Debug)]
enum Call {
    HeaderRead,
    HeaderWrite,
    Time,
    Property,
    Counter(u32),
    Histogram(u32),
    /// coalmine's calls for one request; the histogram's id.
    Coalmine(u32),
}

/// N calls of one kind per request.
#[derive(Clone, Copy, Debug)]
struct Calibration {
    call: Call,
    per_request: u32,
}

impl Calibration {
    /// From the plugin configuration: `None` without a `calibrate` block.
    fn parse(config: &[u8]) -> Result<Option<Calibration>, String> {
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(config) else {
            return Ok(None);
        };
        let Some(c) = value.get("calibrate") else {
            return Ok(None);
        };
        let per_request = c
            .get("per_request")
            .and_then(serde_json::Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or("calibrate.per_request: a whole number is required")?;
        let metric = |kind, name| {
            hostcalls::define_metric(kind, name)
                .map_err(|e| format!("calibrate: cannot define {name}: {e:?}"))
        };
        let call = match c.get("call").and_then(serde_json::Value::as_str) {
            Some("header_read") => Call::HeaderRead,
            Some("header_write") => Call::HeaderWrite,
            Some("time") => Call::Time,
            Some("property") => Call::Property,
            Some("counter") => Call::Counter(metric(MetricType::Counter, "calibrate.counter")?),
            Some("histogram") => {
                Call::Histogram(metric(MetricType::Histogram, "calibrate.histogram")?)
            }
            Some("coalmine") if per_request <= 1 => {
                Call::Coalmine(metric(MetricType::Histogram, "calibrate.latency_us")?)
            }
            Some("coalmine") => {
                return Err(
                    "calibrate.per_request: coalmine's calls are made once per request (0 or 1)"
                        .into(),
                );
            }
            other => {
                return Err(format!(
                    "calibrate.call: {other:?} is not one of header_read, header_write, time, property, counter, histogram, coalmine"
                ));
            }
        };
        Ok(Some(Calibration { call, per_request }))
    }

    /// The calls made when the request headers arrive.
    fn on_request_headers(self) {
        for _ in 0..self.per_request {
            match self.call {
                Call::HeaderRead => {
                    let _ = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, ":path");
                }
                Call::HeaderWrite => {
                    let _ = hostcalls::set_map_value(
                        MapType::HttpRequestHeaders,
                        "x-calibrate",
                        Some("1"),
                    );
                }
                Call::Time => {
                    let _ = hostcalls::get_current_time();
                }
                _ => return,
            }
        }
    }

    /// coalmine's calls when the request headers arrive: whether the
    /// request went to the canary.
    fn coalmine_request(self, nth: u32) -> bool {
        if !matches!(self.call, Call::Coalmine(_)) || self.per_request == 0 {
            return false;
        }
        let _ = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, ":path");
        let canary = nth.is_multiple_of(5);
        if canary {
            for (name, value) in [
                ("x-coalmine-role", "canary"),
                ("x-coalmine-cluster", "heart-v2"),
            ] {
                let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
            }
        }
        let _ = hostcalls::get_current_time();
        canary
    }

    /// coalmine's calls when the response headers arrive.
    fn coalmine_response(self, canary: bool) {
        if !matches!(self.call, Call::Coalmine(_)) || self.per_request == 0 {
            return;
        }
        let _ = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status");
        let (role, version) = if canary {
            ("canary", "v2")
        } else {
            ("baseline", "v1")
        };
        for (name, value) in [("x-coalmine-role", role), ("x-coalmine-version", version)] {
            let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(value));
        }
    }

    /// The calls made when the request is logged.
    fn on_log(self) {
        for i in 0..self.per_request {
            match self.call {
                Call::Property => {
                    let _ = hostcalls::get_property(vec!["request", "duration"]);
                }
                Call::Counter(id) => {
                    let _ = hostcalls::increment_metric(id, 1);
                }
                Call::Histogram(id) => {
                    let _ = hostcalls::record_metric(id, u64::from(i));
                }
                Call::Coalmine(id) => {
                    let _ = hostcalls::get_current_time();
                    let _ = hostcalls::record_metric(id, 250);
                }
                _ => return,
            }
        }
    }
}

#[derive(Default)]
struct EmptyRoot {
    calibration: Option<Calibration>,
    /// Requests seen (for coalmine's calls: every fifth is a canary's).
    requests: std::cell::Cell<u32>,
}

impl Context for EmptyRoot {}

impl RootContext for EmptyRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        match Calibration::parse(&config) {
            Ok(c) => {
                self.calibration = c;
                true
            }
            Err(e) => {
                let _ = hostcalls::log(proxy_wasm::types::LogLevel::Error, &e);
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let nth = self.requests.get().wrapping_add(1);
        self.requests.set(nth);
        Some(Box::new(EmptyRequest {
            calibration: self.calibration,
            nth,
            canary: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Takes the same callbacks as coalmine's request context, and does nothing
/// (or, calibrating, the calls asked for).
struct EmptyRequest {
    calibration: Option<Calibration>,
    nth: u32,
    canary: bool,
}

impl Context for EmptyRequest {}

impl HttpContext for EmptyRequest {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> proxy_wasm::types::Action {
        if let Some(c) = self.calibration {
            c.on_request_headers();
            self.canary = c.coalmine_request(self.nth);
        }
        proxy_wasm::types::Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> proxy_wasm::types::Action {
        if let Some(c) = self.calibration {
            c.coalmine_response(self.canary);
        }
        proxy_wasm::types::Action::Continue
    }

    fn on_log(&mut self) {
        if let Some(c) = self.calibration {
            c.on_log();
        }
    }
}

#[allow(unsafe_code)]
mod entry {
    proxy_wasm::main! {{
        proxy_wasm::set_root_context(|_| Box::<crate::EmptyRoot>::default());
    }}
}
