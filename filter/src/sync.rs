//! The sync loop of one worker (driven by the root context's tick).
//!
//! Every `interval_ms`: check the lease, take in the table other workers put
//! into shared data, then send the next report (or the unacknowledged one
//! again) to the controller, asking it to hold the answer until shortly
//! before the next tick unless the split table changes first (`wait_ms`).
//! So a change reaches every worker as soon as the controller makes it, not
//! on the next tick. A good answer renews the lease for all workers and puts
//! a new table into shared data; an answer that came early (the table
//! changed) is followed at once by the next held call. A failed, timed-out
//! or unparsable answer keeps the last good table and the pending report.

use crate::host;
use crate::root::Worker;
use coalmine_protocol::config::ControllerConfig;
use coalmine_protocol::shared::{
    LEASE_EXPIRED, LEASE_OK, LEASE_STATE_KEY, LEASE_UNTIL_KEY, SPLIT_TABLE_KEY, decode_lease_until,
    encode_lease_until, encode_split_table,
};
use coalmine_protocol::sync::{Outbox, SyncResponse, hold_ms, lease_expired, sync_path};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType};
use std::time::{Duration, UNIX_EPOCH};

/// At most this many sync calls per tick interval (one regular, the rest
/// following early answers).
const MAX_CALLS_PER_TICK: u32 = 4;

#[derive(Debug)]
pub(crate) struct Syncer {
    controller: ControllerConfig,
    outbox: Outbox,
    /// The call under way: its token, when it was sent and how long the
    /// controller may hold it.
    in_flight: Option<(u32, u64, u64)>,
    started_ms: u64,
    last_tick_ms: u64,
    /// Calls sent since the last tick; bounds early re-sends.
    calls_this_tick: u32,
    failing: bool,
}

fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn instance_id() -> String {
    let mut bytes = [0u8; 8];
    match getrandom::fill(&mut bytes) {
        Ok(()) => format!("{:016x}", u64::from_le_bytes(bytes)),
        // Unique enough per proxy: the VM's start time.
        Err(_) => format!("t{}", now_ms()),
    }
}

impl Syncer {
    pub(crate) fn new(controller: ControllerConfig) -> Syncer {
        let proxy = host::property(&["node", "id"])
            .and_then(|b| String::from_utf8(b).ok())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown-proxy".to_string());
        Syncer {
            controller,
            outbox: Outbox::new(proxy, instance_id()),
            in_flight: None,
            started_ms: now_ms(),
            last_tick_ms: 0,
            calls_this_tick: 0,
            failing: false,
        }
    }

    pub(crate) fn on_tick(&mut self, worker: &mut Worker) {
        let now = now_ms();
        self.last_tick_ms = now;
        self.calls_this_tick = 0;
        self.check_lease(worker, now);
        worker.refresh_splits();
        if let Some((_, sent, wait)) = self.in_flight {
            // Envoy answers every call (a timeout is an answer); this only
            // guards against a lost callback.
            let limit = self.controller.timeout + self.controller.interval;
            let limit = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
            if now.saturating_sub(sent) < limit.saturating_add(wait) {
                return;
            }
            self.in_flight = None;
            self.failed(worker, "no answer");
        }
        self.send(worker, now);
    }

    /// Sends the next report, held until shortly before the next tick.
    fn send(&mut self, worker: &mut Worker, now: u64) {
        let interval = u64::try_from(self.controller.interval.as_millis()).unwrap_or(u64::MAX);
        let wait = hold_ms(interval, now.saturating_sub(self.last_tick_ms));
        let epoch = worker.splits.epoch().unwrap_or(0);
        let body = self.outbox.body(epoch, || worker.drain_reports()).to_vec();
        let c = &self.controller;
        let path = sync_path(&c.path, wait);
        let auth = c.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut headers = vec![
            (":method", "POST"),
            (":path", path.as_str()),
            (":authority", c.authority.as_str()),
            ("content-type", "application/json"),
        ];
        if let Some(auth) = auth.as_deref() {
            headers.push(("authorization", auth));
        }
        let timeout = c.timeout + Duration::from_millis(wait);
        self.calls_this_tick = self.calls_this_tick.saturating_add(1);
        match hostcalls::dispatch_http_call(&c.cluster, headers, Some(&body), vec![], timeout) {
            Ok(token) => self.in_flight = Some((token, now, wait)),
            Err(status) => {
                let why = format!("cannot call cluster {:?}: {status:?}", c.cluster);
                self.failed(worker, &why);
            }
        }
    }

    pub(crate) fn on_response(&mut self, worker: &mut Worker, token: u32, body_size: usize) {
        match self.in_flight {
            Some((t, _, _)) if t == token => self.in_flight = None,
            _ => return,
        }
        let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten();
        if status.as_deref() != Some("200") {
            let why = match status {
                Some(s) => format!("controller answered {s}"),
                None => "no response (timeout or connection failure)".to_string(),
            };
            self.failed(worker, &why);
            return;
        }
        let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        let response = match serde_json::from_slice::<SyncResponse>(&body) {
            Ok(r) => r,
            Err(e) => return self.failed(worker, &format!("response does not parse: {e}")),
        };
        if let Err(e) = response.table.validate() {
            return self.failed(worker, &e.to_string());
        }
        // The controller has the report; from here on this sync succeeded.
        self.outbox.acknowledged();
        worker.refresh_splits();
        if worker.splits.epoch() != Some(response.table.epoch) {
            let value = encode_split_table(&response.table);
            let _ = hostcalls::set_shared_data(SPLIT_TABLE_KEY, Some(&value), None);
            worker.refresh_splits();
        }
        let lease = self
            .controller
            .lease
            .min(Duration::from_millis(response.lease_ms));
        let until = now_ms().saturating_add(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX));
        let _ = hostcalls::set_shared_data(LEASE_UNTIL_KEY, Some(&encode_lease_until(until)), None);
        self.check_lease(worker, now_ms());
        if self.failing {
            self.failing = false;
            log::info!(
                "sync with the controller restored (seq {})",
                self.outbox.seq()
            );
        }
        // An answer that came early (the table changed): hold the next call
        // now, so a further change also arrives at once. The bound keeps a
        // controller that never holds from being called in a loop.
        let now = now_ms();
        let interval = u64::try_from(self.controller.interval.as_millis()).unwrap_or(u64::MAX);
        if self.calls_this_tick < MAX_CALLS_PER_TICK
            && hold_ms(interval, now.saturating_sub(self.last_tick_ms)) > 0
        {
            self.send(worker, now);
        }
    }

    fn failed(&mut self, worker: &Worker, why: &str) {
        for m in &worker.metrics {
            m.sync_failed();
        }
        if !self.failing {
            self.failing = true;
            log::warn!(
                "sync with the controller failing: {why}; keeping the last split table and the unsent report"
            );
        }
    }

    /// Falls back to baseline only when no worker synced for the lease, and
    /// back again once one does.
    fn check_lease(&mut self, worker: &mut Worker, now: u64) {
        let (bytes, _) = host::shared_data(LEASE_UNTIL_KEY);
        let until = bytes.as_deref().and_then(decode_lease_until);
        let lease_ms = u64::try_from(self.controller.lease.as_millis()).unwrap_or(u64::MAX);
        let expired = lease_expired(now, until, self.started_ms, lease_ms);
        if !worker.splits.set_lease_expired(expired) {
            return;
        }
        worker.publish_split_metrics();
        // One worker per proxy wins the CAS and speaks for the proxy.
        let state = if expired { LEASE_EXPIRED } else { LEASE_OK };
        let (current, cas) = host::shared_data(LEASE_STATE_KEY);
        let first = current.as_deref() != Some(state)
            && (current.is_some() || expired)
            && hostcalls::set_shared_data(LEASE_STATE_KEY, Some(state), cas.or(Some(0))).is_ok();
        if !first {
            return;
        }
        if expired {
            for m in &worker.metrics {
                m.lease_expired();
            }
            log::warn!(
                "no successful sync with the controller for {lease_ms} ms: every deployment falls back to its baseline until the controller answers"
            );
        } else {
            log::info!("controller lease renewed: canary splits are back in force");
        }
    }
}
