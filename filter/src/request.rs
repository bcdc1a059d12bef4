//! The per-request context: carries out the worker's decisions with host
//! calls. Route and tag on the request headers, name the role and version on
//! the response, collect the answer's body as it passes when its outputs are
//! read (never holding it back or changing it), record the outcome in
//! `on_log`.

use crate::host;
use crate::worker::{Answer, Finished, HeaderEdit, Routed, Taken, Worker};
use coalmine_protocol::Outcome;
use coalmine_protocol::outputs::{BodyCollector, Collected};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::cell::RefCell;
use std::rc::Rc;

#[derive(Debug)]
pub(crate) struct RequestContext {
    worker: Option<Rc<RefCell<Worker>>>,
    routed: Option<Routed>,
    /// The answer's body while it is collected; none unless its outputs are
    /// read.
    collecting: Option<BodyCollector>,
    answer: Answer,
    /// The host's clock when the request was routed, in ns (latency is
    /// measured from there to `on_log`).
    started_ns: u64,
    /// The response's `:status` (0: no response headers seen).
    status: u64,
    /// The response arrived whole (its end seen in the headers, body or
    /// trailers): then a status below 500 says all about the outcome.
    complete: bool,
    /// The copy of the request for the deployment's shadow, while it is
    /// taken (only for a request in the shadow's share).
    copy: Option<RequestCopy>,
}

/// A user's request body as it passes, for its copy to the shadow.
#[derive(Debug)]
struct RequestCopy {
    /// A chunk could not be read: the copy would not be the request.
    failed: bool,
    /// `None` once the body grew past the limit (the copy is skipped).
    body: Option<Vec<u8>>,
    limit: usize,
    /// The request's end was seen: only a whole request is copied.
    whole: bool,
}

impl RequestCopy {
    /// Appends a chunk of the body as it goes upstream (copied, never held).
    fn push(&mut self, size: usize, end_of_stream: bool) {
        self.whole = end_of_stream;
        let Some(body) = self.body.as_mut() else {
            return;
        };
        if body.len().saturating_add(size) > self.limit {
            self.body = None;
            return;
        }
        if size > 0 {
            match host::request_body(size) {
                Some(chunk) => body.extend(chunk),
                None => self.failed = true,
            }
        }
    }

    /// What there is to copy now that the request is done.
    fn taken(self) -> Taken {
        match self.body {
            _ if !self.whole || self.failed => Taken::Incomplete,
            Some(body) => Taken::Whole(body),
            None => Taken::TooLarge,
        }
    }
}

impl Drop for RequestContext {
    /// A request that goes away before `on_log` gives its copy slot back.
    fn drop(&mut self) {
        if let (Some(_), Some(routed), Some(Ok(mut worker))) = (
            self.copy.as_ref(),
            self.routed.as_ref(),
            self.worker.as_ref().map(|w| w.try_borrow_mut()),
        ) {
            worker.drop_copy(routed);
        }
    }
}

impl RequestContext {
    pub(crate) fn new(worker: Option<Rc<RefCell<Worker>>>) -> RequestContext {
        RequestContext {
            worker,
            routed: None,
            collecting: None,
            answer: Answer::NotRead,
            started_ns: 0,
            status: 0,
            complete: false,
            copy: None,
        }
    }
}

/// Whether the answer is read, from its headers (three host calls, made
/// only for a sampled request of a deployment that reads outputs).
fn start_reading(status: Option<&[u8]>, limit: usize) -> Result<BodyCollector, Answer> {
    BodyCollector::for_response(
        status,
        host::response_header("content-encoding").as_deref(),
        host::response_header("content-length").as_deref(),
        limit,
    )
    .map_err(|skip| skip.map_or(Answer::NotRead, Answer::Skipped))
}

impl RequestContext {
    fn collected(&mut self, collected: Collected) {
        match collected {
            Collected::Partial => {}
            Collected::Done(body) => {
                self.collecting = None;
                self.answer = Answer::Body(body);
            }
            Collected::Skipped(skip) => {
                self.collecting = None;
                self.answer = Answer::Skipped(skip);
            }
        }
    }
}

impl Context for RequestContext {}

impl HttpContext for RequestContext {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if let Some(Ok(mut worker)) = self.worker.as_ref().map(|w| w.try_borrow_mut()) {
            let decision = worker.route(host::request_header);
            for edit in worker.request_edits(&decision) {
                match edit {
                    HeaderEdit::Set(name, value) => host::set_request_header(name, value),
                    HeaderEdit::Remove(name) => host::remove_request_header(name),
                }
            }
            self.routed = decision.into_routed();
            if let Some(routed) = self.routed.as_ref() {
                self.started_ns = host::now_ns();
                if worker.copies(routed) {
                    self.copy = Some(RequestCopy {
                        failed: false,
                        body: Some(Vec::new()),
                        limit: worker.max_copy_bytes(),
                        whole: end_of_stream,
                    });
                }
            }
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if let Some(copy) = self.copy.as_mut() {
            copy.push(body_size, end_of_stream);
        }
        Action::Continue
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        // Trailers end the request (the copy goes without them).
        if let Some(copy) = self.copy.as_mut() {
            copy.whole = true;
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.complete = end_of_stream;
        if let (Some(routed), Some(Ok(worker))) = (
            self.routed.as_ref(),
            self.worker.as_ref().map(|w| w.try_borrow()),
        ) {
            let status = host::response_header(":status");
            self.status = status.as_deref().map_or(0, parse_status);
            for (name, value) in worker.response_headers(routed) {
                host::set_response_header(name, value);
            }
            if let Some(outputs) = worker.outputs_to_read(routed) {
                match start_reading(status.as_deref(), outputs.max_body_bytes) {
                    // No body will follow: the answer is empty.
                    Ok(_) if end_of_stream => self.answer = Answer::Body(Vec::new()),
                    Ok(c) => self.collecting = Some(c),
                    Err(answer) => self.answer = answer,
                }
            }
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.complete = end_of_stream;
        // Each chunk goes on to the user at once: it is copied, never held.
        if let Some(c) = self.collecting.as_mut() {
            let chunk = c.wants(body_size).then(|| host::response_body(body_size));
            let collected = c.push(chunk.flatten().as_deref(), body_size, end_of_stream);
            self.collected(collected);
        }
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        // Trailers end the body.
        self.complete = true;
        if let Some(c) = self.collecting.as_mut() {
            let collected = c.push(None, 0, true);
            self.collected(collected);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if let (Some(routed), Some(Ok(mut worker))) = (
            self.routed.as_ref(),
            self.worker.as_ref().map(|w| w.try_borrow_mut()),
        ) {
            let (status, complete, started_ns) = (self.status, self.complete, self.started_ns);
            let answer = std::mem::take(&mut self.answer);
            let user = worker.record(routed, || finished(status, complete, started_ns), answer);
            // A request the user gave up on before its end is not copied
            // (counted). Its headers are read now, as the route changed them on their
            // way to the baseline (a `prefix_rewrite`, a `host_rewrite`),
            // so the shadow gets the request the baseline got.
            if let Some(copy) = self.copy.take() {
                worker.copy(routed, copy.taken(), host::request_headers, user);
            }
        }
    }
}

/// A `:status` value as a number (0 when it is not one).
fn parse_status(value: &[u8]) -> u64 {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// What is known of the finished request: its status as the response
/// headers gave it and its latency from the host's clock (from routing to
/// the end of the stream). Envoy's `response.code` is read only when no
/// response headers were seen, and why the request ended
/// (`response.code_details`) only when the status alone cannot tell the
/// outcome: no status, a 5xx (sent by the model, or by Envoy for want of
/// one), or a response cut off before its end.
fn finished(status: u64, complete: bool, started_ns: u64) -> Finished {
    let code = match status {
        0 => host::property_u64(&["response", "code"]).unwrap_or(0),
        seen => seen,
    };
    let details = if Outcome::status_suffices(code, complete) {
        Vec::new()
    } else {
        host::property(&["response", "code_details"]).unwrap_or_default()
    };
    Finished {
        duration_ns: host::now_ns().saturating_sub(started_ns),
        code,
        details,
    }
}
