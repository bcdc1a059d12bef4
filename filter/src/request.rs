//! The per-request context: route, tag, record.

use crate::host;
use crate::root::Worker;
use coalmine_protocol::routing::{find_match, point_from_draw, role_at, sticky_point, tester_role};
use coalmine_protocol::{DeploymentSplit, Outcome, Role};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::cell::RefCell;
use std::rc::Rc;

#[derive(Debug)]
pub(crate) struct RequestContext {
    worker: Option<Rc<RefCell<Worker>>>,
    routed: Option<Routed>,
}

/// The decision taken for a request that belongs to a deployment.
#[derive(Debug)]
struct Routed {
    deployment: usize,
    role: Role,
    /// The split the decision was made with (the table may change before the
    /// response; the response still names what served it).
    split: Rc<DeploymentSplit>,
    /// A tester chose the role (with the override secret).
    forced: bool,
}

impl RequestContext {
    pub(crate) fn new(worker: Option<Rc<RefCell<Worker>>>) -> RequestContext {
        RequestContext {
            worker,
            routed: None,
        }
    }
}

/// The role a tester asked for with the override header, if configured;
/// the header itself never goes upstream.
fn tester_override(worker: &Worker) -> Option<Role> {
    let t = worker.config.headers.tester_override.as_ref()?;
    let value = host::request_header(&t.header)?;
    host::remove_request_header(&t.header);
    tester_role(&value, &t.secret)
}

/// Chooses the role for a request of deployment `index` and overwrites the
/// role and cluster headers; outside every deployment, strips them.
fn route(worker: &mut Worker) -> Option<Routed> {
    let forced = tester_override(worker);
    let path = host::request_header(":path").unwrap_or_default();
    // One host call fewer per request when no deployment matches on host.
    let authority = if worker.match_on_host {
        host::request_header(":authority")
    } else {
        None
    };
    let index = find_match(
        worker.config.deployments.iter().map(|d| &d.matcher),
        &path,
        authority.as_deref(),
    );
    let routed = index.and_then(|index| {
        let Worker {
            config,
            splits,
            random,
            ..
        } = worker;
        let deployment = config.deployments.get(index)?;
        let split = splits.get(index)?.clone();
        let sticky = deployment
            .sticky_header
            .as_deref()
            .and_then(host::request_header);
        let point = match sticky {
            Some(key) => Some(sticky_point(deployment.sticky_seed, &key)),
            // No entropy: fail safe to the baseline.
            None => random.next_u64().map(point_from_draw),
        };
        let drawn = || point.map_or(Role::Baseline, |p| role_at(p, split.effective_bps()));
        // A forced role the deployment does not have (no canary) is ignored.
        let forced = forced.filter(|&r| split.target(r).is_some());
        Some(Routed {
            deployment: index,
            role: forced.unwrap_or_else(drawn),
            forced: forced.is_some(),
            split,
        })
    });
    let names = &worker.config.headers;
    match routed
        .as_ref()
        .and_then(|r| Some((r.role, r.split.target(r.role)?)))
    {
        Some((role, target)) => {
            host::set_request_header(&names.role, role.as_str());
            host::set_request_header(&names.cluster, &target.cluster);
        }
        None => {
            host::remove_request_header(&names.role);
            host::remove_request_header(&names.cluster);
        }
    }
    routed
}

impl Context for RequestContext {}

impl HttpContext for RequestContext {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(Ok(mut worker)) = self.worker.as_ref().map(|w| w.try_borrow_mut()) {
            self.routed = route(&mut worker);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let (Some(routed), Some(Ok(worker))) = (
            self.routed.as_ref(),
            self.worker.as_ref().map(|w| w.try_borrow()),
        ) else {
            return Action::Continue;
        };
        let names = &worker.config.headers;
        if let Some(target) = routed.split.target(routed.role)
            && names.respond_with_role
        {
            host::set_response_header(&names.role, routed.role.as_str());
            host::set_response_header(&names.version, &target.version);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        let (Some(routed), Some(Ok(mut worker))) = (
            self.routed.as_ref(),
            self.worker.as_ref().map(|w| w.try_borrow_mut()),
        ) else {
            return;
        };
        if routed.forced {
            worker.record_tester_override(routed.deployment);
            return;
        }
        let latency_us = host::property_u64(&["request", "duration"]).unwrap_or(0) / 1000;
        let code = host::property_u64(&["response", "code"]).unwrap_or(0);
        let details = host::property(&["response", "code_details"]).unwrap_or_default();
        let outcome = Outcome::classify(code, &details);
        if let Some(target) = routed.split.target(routed.role) {
            worker.record(
                routed.deployment,
                routed.role,
                &target.version,
                outcome,
                latency_us,
            );
        }
    }
}
