//! The sync loop of one worker (driven by the root context's tick): a thin
//! shell around `coalmine_protocol::sync::worker_loop::SyncLoop`, which
//! takes every decision. Here the host is read (clock, shared data, the
//! controller's answer), the machine is called, and what it decided is
//! carried out (the call dispatched, shared data written, failures counted,
//! transitions logged).
//!
//! Each worker syncs on its own; the lease and the split table are shared
//! through shared data, so one worker's good answer renews the lease for
//! all, and its table reaches the others on their next tick (decoded once
//! per change).

use crate::host;
use crate::worker::Worker;
use coalmine_protocol::config::ControllerConfig;
use coalmine_protocol::shared::{
    LEASE_STATE_KEY, LEASE_UNTIL_KEY, SPLIT_TABLE_KEY, decode_lease_until, encode_lease_until,
};
use coalmine_protocol::sync::SyncResponse;
use coalmine_protocol::sync::lease::LeaseChange;
use coalmine_protocol::sync::worker_loop::{
    Accepted, Answer, Call, Failure, Request, SyncLoop, Unanswered, parse_answer,
};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType};

#[derive(Debug)]
pub(crate) struct Syncer {
    controller: ControllerConfig,
    machine: SyncLoop,
}

impl Syncer {
    pub(crate) fn new(controller: ControllerConfig) -> Syncer {
        // Envoy's node id: `xds.node` in Envoy's attributes (the older
        // `node` path is not answered in every context).
        let proxy = [&["xds", "node", "id"][..], &["node", "id"][..]]
            .iter()
            .find_map(|path| {
                host::property(path)
                    .and_then(|b| String::from_utf8(b).ok())
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| "unknown-proxy".to_string());
        let machine = SyncLoop::new(&controller, proxy, instance_id(), host::now_ms());
        Syncer {
            controller,
            machine,
        }
    }

    /// Every `interval_ms`: the lease, the table other workers put into
    /// shared data, then the next report (unless a call is under way).
    pub(crate) fn on_tick(&mut self, worker: &mut Worker) {
        let (lease, _) = host::shared_data(LEASE_UNTIL_KEY);
        let tick = self.machine.tick(
            host::now_ms(),
            lease.as_deref().and_then(decode_lease_until),
        );
        self.lease_changed(worker, tick.lease);
        let (table, cas) = host::shared_data(SPLIT_TABLE_KEY);
        worker.take_shared_table(table.as_deref(), cas);
        if let Some(failure) = tick.lost {
            self.failed(worker, &failure);
        }
        if let Some(call) = tick.call {
            self.send(worker, call);
        }
    }

    pub(crate) fn on_response(&mut self, worker: &mut Worker, token: u32, body_size: usize) {
        match self
            .machine
            .answer(token, host::now_ms(), || read_answer(body_size))
        {
            Answer::Stale => {}
            Answer::Refused(failure) => self.failed(worker, &failure),
            Answer::Accepted(accepted) => self.accepted(worker, accepted),
        }
    }

    /// A good answer: its table in force here at once and, when new, in
    /// shared data for the other workers; the lease renewed for all.
    fn accepted(&mut self, worker: &mut Worker, accepted: Accepted) {
        if let Some(value) = worker.take_answer(accepted.table) {
            host::set_shared_data(SPLIT_TABLE_KEY, &value, None);
        }
        let until = encode_lease_until(accepted.lease_until_ms);
        host::set_shared_data(LEASE_UNTIL_KEY, &until, None);
        self.lease_changed(worker, accepted.lease);
        if let Some(seq) = accepted.restored_seq {
            log::info!("sync with the controller restored (seq {seq})");
        }
        if let Some(call) = accepted.again {
            self.send(worker, call);
        }
    }

    fn send(&mut self, worker: &mut Worker, call: Call) {
        let controller = &self.controller;
        let epoch = worker.epoch();
        let sent = self.machine.send(
            call,
            epoch,
            || worker.drain_reports(),
            |request| dispatch(controller, request),
        );
        if let Err(failure) = sent {
            self.failed(worker, &failure);
        }
    }

    fn failed(&self, worker: &Worker, failure: &Failure) {
        worker.sync_failed();
        if failure.dropped_report {
            worker.report_dropped();
        }
        if failure.first && failure.dropped_report {
            log::warn!(
                "{}; reports the controller refuses are dropped (counted in sync_reports_dropped) until one is taken",
                failure.reason
            );
        } else if failure.first {
            log::warn!(
                "sync with the controller failing: {}; keeping the last split table and the unsent report",
                failure.reason
            );
        }
    }

    /// Falls back to baseline only when no worker synced for the lease, and
    /// back again once one does. One worker per proxy wins the CAS on the
    /// lease state and speaks for the proxy.
    fn lease_changed(&self, worker: &mut Worker, change: Option<LeaseChange>) {
        let Some(change) = change else {
            return;
        };
        worker.set_lease_expired(change.expired());
        let (stored, cas) = host::shared_data(LEASE_STATE_KEY);
        let Some(state) = change.claim(stored.as_deref()) else {
            return;
        };
        if !host::set_shared_data(LEASE_STATE_KEY, state, cas.or(Some(0))) {
            return;
        }
        match change {
            LeaseChange::Expired => {
                worker.lease_expired();
                log::warn!(
                    "no successful sync with the controller for {} ms: every deployment falls back to its baseline until the controller answers",
                    self.controller.lease.as_millis()
                );
            }
            LeaseChange::Renewed => {
                log::info!("controller lease renewed: canary splits are back in force");
            }
        }
    }
}

/// Hands one sync call to Envoy; its token, or why it could not go.
fn dispatch(c: &ControllerConfig, request: &Request<'_>) -> Result<u32, String> {
    let auth = c.token.as_ref().map(|t| format!("Bearer {t}"));
    let mut headers = vec![
        (":method", "POST"),
        (":path", request.path.as_str()),
        (":authority", c.authority.as_str()),
        ("content-type", "application/json"),
    ];
    if let Some(auth) = auth.as_deref() {
        headers.push(("authorization", auth));
    }
    hostcalls::dispatch_http_call(
        &c.cluster,
        headers,
        Some(request.body),
        vec![],
        request.timeout,
    )
    .map_err(|status| format!("cannot call cluster {:?}: {status:?}", c.cluster))
}

/// The controller's answer to the call in flight (the body is read only
/// after a 200).
fn read_answer(body_size: usize) -> Result<SyncResponse, Unanswered> {
    let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
        .ok()
        .flatten();
    parse_answer(status.as_deref(), || {
        hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default()
    })
}

fn instance_id() -> String {
    let mut bytes = [0u8; 8];
    match getrandom::fill(&mut bytes) {
        Ok(()) => format!("{:016x}", u64::from_le_bytes(bytes)),
        // Unique enough per proxy: the VM's start time.
        Err(_) => format!("t{}", host::now_ms()),
    }
}
