//! The per-request context: carries out the worker's decisions with host
//! calls. Route and tag on the request headers, name the role and version on
//! the response, record the outcome in `on_log`.

use crate::host;
use crate::worker::{Finished, HeaderEdit, Routed, Worker};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::cell::RefCell;
use std::rc::Rc;

#[derive(Debug)]
pub(crate) struct RequestContext {
    worker: Option<Rc<RefCell<Worker>>>,
    routed: Option<Routed>,
}

impl RequestContext {
    pub(crate) fn new(worker: Option<Rc<RefCell<Worker>>>) -> RequestContext {
        RequestContext {
            worker,
            routed: None,
        }
    }
}

impl Context for RequestContext {}

impl HttpContext for RequestContext {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(Ok(mut worker)) = self.worker.as_ref().map(|w| w.try_borrow_mut()) {
            let decision = worker.route(host::request_header);
            for edit in worker.request_edits(&decision) {
                match edit {
                    HeaderEdit::Set(name, value) => host::set_request_header(name, value),
                    HeaderEdit::Remove(name) => host::remove_request_header(name),
                }
            }
            self.routed = decision.into_routed();
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let (Some(routed), Some(Ok(worker))) = (
            self.routed.as_ref(),
            self.worker.as_ref().map(|w| w.try_borrow()),
        ) {
            for (name, value) in worker.response_headers(routed) {
                host::set_response_header(name, value);
            }
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if let (Some(routed), Some(Ok(mut worker))) = (
            self.routed.as_ref(),
            self.worker.as_ref().map(|w| w.try_borrow_mut()),
        ) {
            worker.record(routed, finished);
        }
    }
}

/// What Envoy says of the finished request.
fn finished() -> Finished {
    Finished {
        duration_ns: host::property_u64(&["request", "duration"]).unwrap_or(0),
        code: host::property_u64(&["response", "code"]).unwrap_or(0),
        details: host::property(&["response", "code_details"]).unwrap_or_default(),
    }
}
