//! The sync loop of one filter worker, as a state machine.
//!
//! Every `interval_ms` the worker sends its next report (or the
//! unacknowledged one again), asking the controller to hold the answer until
//! shortly before the next tick unless the split table changes first
//! (`wait_ms`). So a change reaches every worker as soon as the controller
//! makes it, not on the next tick. A good answer renews the lease and brings
//! the table; an answer that came early (the table changed) is followed at
//! once by the next held call. A failed, timed-out or unparsable answer
//! keeps the last good table and the pending report, except a refusal of
//! the report itself (400, 413, 422: a newer or older controller that will
//! never take it): that report is dropped, counted and logged, so the next
//! one can get through, rather than sent again forever.
//!
//! [`SyncLoop`] takes every decision of that loop: whether a call is in
//! flight or lost, how long to ask the controller to hold, how many calls a
//! tick allows, when the lease runs out, what an answer means, and which
//! failure deserves a log line. It is given the time and what the host
//! said; the filter's tick and HTTP callbacks carry out what it decides
//! (dispatch the call, write shared data, count, log). No clock, no I/O.

use super::lease::{Lease, LeaseChange};
use super::{MAX_WAIT_MS, Outbox, Reports, SyncResponse, sync_path};
use crate::config::ControllerConfig;
use crate::split::SplitTable;
use std::time::Duration;

/// At most this many sync calls per tick interval (one regular, the rest
/// following early answers), so a controller that never holds is not
/// called in a loop.
pub const MAX_CALLS_PER_TICK: u32 = 4;
/// A held sync call comes back this long before the worker's next tick, so
/// the tick finds no call in flight and sends the next report on time.
pub const HOLD_MARGIN_MS: u64 = 100;
/// Below this a hold is not worth a call of its own.
pub const MIN_HOLD_MS: u64 = 100;

/// How long the controller may hold a sync call sent `since_tick_ms` after
/// the worker's last tick (`?wait_ms=`): until shortly before the next tick.
/// The controller answers at once when the split table differs from the
/// worker's epoch and otherwise as soon as it changes, so operator changes
/// and rollbacks reach every worker without waiting for its next tick.
/// 0 (an ordinary call) when too little time is left.
pub fn hold_ms(interval_ms: u64, since_tick_ms: u64) -> u64 {
    let hold = interval_ms
        .saturating_sub(since_tick_ms)
        .saturating_sub(HOLD_MARGIN_MS)
        .min(MAX_WAIT_MS);
    if hold < MIN_HOLD_MS { 0 } else { hold }
}

/// One worker's side of the sync protocol.
#[derive(Debug)]
pub struct SyncLoop {
    interval_ms: u64,
    lease_ms: u64,
    timeout: Duration,
    path: String,
    outbox: Outbox,
    in_flight: Option<InFlight>,
    last_tick_ms: u64,
    /// Calls sent since the last tick; bounds early re-sends.
    calls_this_tick: u32,
    /// The last sync failed (its first failure was logged).
    failing: bool,
    lease: Lease,
}

/// The call under way: its token, when it was sent and how long the
/// controller may hold it.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    token: u32,
    sent_ms: u64,
    wait_ms: u64,
}

/// A call [`SyncLoop`] decided to make; [`SyncLoop::send`] makes it.
#[must_use]
#[derive(Debug, PartialEq, Eq)]
pub struct Call {
    at_ms: u64,
    wait_ms: u64,
}

/// What to send to the controller.
#[derive(Debug)]
pub struct Request<'a> {
    /// The sync path, with the hold as `?wait_ms=` when there is one.
    pub path: String,
    pub body: &'a [u8],
    /// The controller's timeout plus the hold.
    pub timeout: Duration,
}

/// A sync that did not succeed. Each one counts as a sync failure; only the
/// first of a run deserves a log line.
#[derive(Debug, PartialEq, Eq)]
pub struct Failure {
    pub reason: String,
    pub first: bool,
    /// The controller refused the report itself; it was dropped.
    pub dropped_report: bool,
}

/// Why an answer is not a table.
#[derive(Debug, PartialEq, Eq)]
pub struct Unanswered {
    pub reason: String,
    /// The controller refused the report for what it is (it would refuse it
    /// again): drop it.
    pub refused_report: bool,
}

impl Unanswered {
    fn retry(reason: String) -> Unanswered {
        Unanswered {
            reason,
            refused_report: false,
        }
    }
}

/// What a tick decided.
#[derive(Debug)]
pub struct Tick {
    /// The worker's fail-safe flips.
    pub lease: Option<LeaseChange>,
    /// The call in flight is given up as lost.
    pub lost: Option<Failure>,
    /// The next report goes out.
    pub call: Option<Call>,
}

/// What an answer from the controller means.
#[derive(Debug)]
pub enum Answer {
    /// Not the call in flight (one given up as lost): ignored.
    Stale,
    Refused(Failure),
    Accepted(Accepted),
}

/// A good answer: the report is acknowledged.
#[derive(Debug)]
pub struct Accepted {
    /// The controller's table, decoded and validated.
    pub table: SplitTable,
    /// The renewed lease, for every worker of the proxy.
    pub lease_until_ms: u64,
    /// The worker's fail-safe flips.
    pub lease: Option<LeaseChange>,
    /// Sync works again after failures: the sequence number it resumed with.
    pub restored_seq: Option<u64>,
    /// The answer came early (the table changed): the next held call.
    pub again: Option<Call>,
}

impl SyncLoop {
    pub fn new(
        controller: &ControllerConfig,
        proxy: String,
        instance: String,
        now_ms: u64,
    ) -> SyncLoop {
        let lease_ms = millis(controller.lease);
        SyncLoop {
            interval_ms: millis(controller.interval),
            lease_ms,
            timeout: controller.timeout,
            path: controller.path.clone(),
            outbox: Outbox::new(proxy, instance),
            in_flight: None,
            last_tick_ms: 0,
            calls_this_tick: 0,
            failing: false,
            lease: Lease::new(now_ms, lease_ms),
        }
    }

    /// The regular tick: the lease as shared data has it
    /// (`lease_until_ms`), the call in flight, the next call.
    pub fn tick(&mut self, now_ms: u64, lease_until_ms: Option<u64>) -> Tick {
        self.last_tick_ms = now_ms;
        self.calls_this_tick = 0;
        let lease = self.lease.observe(now_ms, lease_until_ms);
        let mut lost = None;
        if let Some(call) = self.in_flight {
            if !self.is_lost(call, now_ms) {
                return Tick {
                    lease,
                    lost,
                    call: None,
                };
            }
            self.in_flight = None;
            lost = Some(self.fail("no answer".to_string()));
        }
        Tick {
            lease,
            lost,
            call: Some(self.call(now_ms)),
        }
    }

    /// Makes a call: the pending report again, or a new one from `reports`
    /// (which drains the live statistics; `epoch` is the table in force),
    /// handed to `dispatch`, which answers with the host's token for it.
    pub fn send<R: Into<Reports>>(
        &mut self,
        call: Call,
        epoch: u64,
        reports: impl FnOnce() -> R,
        dispatch: impl FnOnce(&Request<'_>) -> Result<u32, String>,
    ) -> Result<(), Failure> {
        let dispatched = dispatch(&Request {
            path: sync_path(&self.path, call.wait_ms),
            body: self.outbox.body(epoch, reports),
            timeout: self.timeout + Duration::from_millis(call.wait_ms),
        });
        match dispatched {
            Ok(token) => {
                self.in_flight = Some(InFlight {
                    token,
                    sent_ms: call.at_ms,
                    wait_ms: call.wait_ms,
                });
                Ok(())
            }
            Err(why) => Err(self.fail(why)),
        }
    }

    /// The host's answer to call `token`; `read` (called only for the call
    /// in flight) gives the controller's response or why it is refused, as
    /// [`parse_answer`] does.
    pub fn answer(
        &mut self,
        token: u32,
        now_ms: u64,
        read: impl FnOnce() -> Result<SyncResponse, Unanswered>,
    ) -> Answer {
        match self.in_flight {
            Some(call) if call.token == token => self.in_flight = None,
            _ => return Answer::Stale,
        }
        match read() {
            Ok(response) => Answer::Accepted(self.accept(response, now_ms)),
            Err(u) => {
                if u.refused_report {
                    self.outbox.acknowledged();
                }
                let mut failure = self.fail(u.reason);
                failure.dropped_report = u.refused_report;
                Answer::Refused(failure)
            }
        }
    }

    fn accept(&mut self, response: SyncResponse, now_ms: u64) -> Accepted {
        // The controller has the report; from here on this sync succeeded.
        self.outbox.acknowledged();
        let lease_until_ms = now_ms.saturating_add(self.lease_ms.min(response.lease_ms));
        let lease = self.lease.observe(now_ms, Some(lease_until_ms));
        let restored_seq = std::mem::take(&mut self.failing).then(|| self.outbox.seq());
        // An answer that came early (the table changed): hold the next call
        // now, so a further change also arrives at once.
        let early = self.calls_this_tick < MAX_CALLS_PER_TICK
            && hold_ms(self.interval_ms, now_ms.saturating_sub(self.last_tick_ms)) > 0;
        Accepted {
            table: response.table,
            lease_until_ms,
            lease,
            restored_seq,
            again: early.then(|| self.call(now_ms)),
        }
    }

    /// Envoy answers every call (a timeout is an answer); this only guards
    /// against a lost callback.
    fn is_lost(&self, call: InFlight, now_ms: u64) -> bool {
        let limit = millis(self.timeout)
            .saturating_add(self.interval_ms)
            .saturating_add(call.wait_ms);
        now_ms.saturating_sub(call.sent_ms) >= limit
    }

    /// The next call, held until shortly before the next tick.
    fn call(&mut self, now_ms: u64) -> Call {
        self.calls_this_tick = self.calls_this_tick.saturating_add(1);
        Call {
            at_ms: now_ms,
            wait_ms: hold_ms(self.interval_ms, now_ms.saturating_sub(self.last_tick_ms)),
        }
    }

    fn fail(&mut self, reason: String) -> Failure {
        let first = !self.failing;
        self.failing = true;
        Failure {
            reason,
            first,
            dropped_report: false,
        }
    }
}

/// Statuses that refuse the report itself: sending it again cannot help.
pub const REFUSING_STATUSES: [&str; 3] = ["400", "413", "422"];

/// The controller's answer, from the HTTP status and the body (read only
/// for a 200), or why there is none.
pub fn parse_answer(
    status: Option<&str>,
    body: impl FnOnce() -> Vec<u8>,
) -> Result<SyncResponse, Unanswered> {
    match status {
        Some("200") => {}
        Some(s) if REFUSING_STATUSES.contains(&s) => {
            return Err(Unanswered {
                reason: format!("controller refused the report ({s}); it is dropped"),
                refused_report: true,
            });
        }
        Some(s) => return Err(Unanswered::retry(format!("controller answered {s}"))),
        None => {
            return Err(Unanswered::retry(
                "no response (timeout or connection failure)".to_string(),
            ));
        }
    }
    let response = serde_json::from_slice::<SyncResponse>(&body())
        .map_err(|e| Unanswered::retry(format!("response does not parse: {e}")))?;
    response
        .table
        .validate()
        .map_err(|e| Unanswered::retry(e.to_string()))?;
    Ok(response)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
