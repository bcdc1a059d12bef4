//! A proxy-wasm filter that does nothing, built with the same SDK, toolchain
//! and profile as the coalmine filter. `make bench` runs it in the same place
//! as coalmine: the difference between Envoy without a filter and Envoy with
//! this one is what the wasm VM itself costs per request (creating the
//! context, entering the VM for each callback), before coalmine does any work.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

struct EmptyRoot;

impl Context for EmptyRoot {}

impl RootContext for EmptyRoot {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(EmptyRequest))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Takes the same callbacks as coalmine's request context, and does nothing.
struct EmptyRequest;

impl Context for EmptyRequest {}

impl HttpContext for EmptyRequest {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> proxy_wasm::types::Action {
        proxy_wasm::types::Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> proxy_wasm::types::Action {
        proxy_wasm::types::Action::Continue
    }

    fn on_log(&mut self) {}
}

#[allow(unsafe_code)]
mod entry {
    proxy_wasm::main! {{
        proxy_wasm::set_root_context(|_| Box::new(crate::EmptyRoot));
    }}
}
