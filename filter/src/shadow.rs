//! A worker's copies to shadow versions (DESIGN.md, "Shadow"), as plain
//! values: which copies wait to be sent, which are under way, and what the
//! shadows answered, until the next report.
//!
//! A request in the shadow's share takes a slot when it is routed
//! ([`Shadows::reserve`]), so the copies being taken, waiting and under way
//! never pass the cap, and hands its copy over when the user's request is
//! done ([`Shadows::enqueue`]): the user's answer is known by then, so the
//! shadow's answer can be compared the moment it arrives. The root context
//! sends waiting copies ([`Shadows::next_to_send`]): a call Envoy makes for
//! a request context is cancelled when that request ends, while the root
//! context lives as long as the worker, so copies are sent from there, on
//! its tick (every [`SHADOW_TICK`] while a shadow is in force) and
//! whenever a copy's answer arrives. Copies being taken, waiting or under
//! way are capped per worker (`shadow.max_in_flight`); further ones are
//! skipped and counted, so a slow or absent shadow costs a bounded amount
//! of memory and never a user's time. A copy Envoy never answers is given
//! up a second after its timeout ([`Shadows::expire`]), so a lost answer
//! cannot hold a slot for good.

use coalmine_protocol::Outcome;
use coalmine_protocol::outputs::{OutputField, Said, read_said};
use coalmine_protocol::shadow::{Compared, ShadowReport, ShadowSkip, ShadowTally, agrees};
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// How often the root context looks for copies to send while a shadow is
/// in force (copies wait at most this long before they go).
pub(crate) const SHADOW_TICK: Duration = Duration::from_millis(20);

/// When the root context's regular work (metrics, sync) is due while its
/// tick runs faster for a shadow: at most once per `period`, and on every
/// tick when the tick is the period itself (a timer that fires a little
/// early still counts).
#[derive(Debug)]
pub(crate) struct Cadence {
    period_ms: u64,
    next_ms: u64,
}

impl Cadence {
    pub(crate) fn new(period: Duration) -> Cadence {
        Cadence {
            period_ms: u64::try_from(period.as_millis()).unwrap_or(u64::MAX),
            next_ms: 0,
        }
    }

    pub(crate) fn due(&mut self, now_ms: u64) -> bool {
        if now_ms.saturating_add(self.period_ms / 4) < self.next_ms {
            return false;
        }
        // Anchored to the schedule, not to the tick that ran it: on a fast
        // tick the work still comes once per period, not every ¾ of one.
        let next = self.next_ms.saturating_add(self.period_ms);
        self.next_ms = if now_ms >= next {
            now_ms.saturating_add(self.period_ms)
        } else {
            next
        };
        true
    }
}

/// One copy of a user's request, ready to go.
#[derive(Debug)]
pub(crate) struct ShadowCopy {
    pub(crate) deployment: usize,
    pub(crate) version: String,
    pub(crate) cluster: String,
    /// The headers it is sent with (see `coalmine_protocol::shadow::copy_headers`).
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
    /// What the user's answer said, when it was read whole.
    pub(crate) user: Option<Vec<Said>>,
}

/// A copy Envoy is sending.
#[derive(Debug)]
struct Sent {
    deployment: usize,
    version: String,
    user: Option<Vec<Said>>,
    sent_ns: u64,
}

/// What came back for a copy.
#[derive(Debug)]
pub(crate) struct ShadowAnswer {
    /// The `:status` (0: no answer, a reset stream; Envoy answers a
    /// timeout with a 504 and a refused connection with a 503).
    pub(crate) status: u64,
    /// The body, when it was read (a 2xx within the size limit, not
    /// compressed).
    pub(crate) body: Option<Vec<u8>>,
    pub(crate) now_ns: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Shadows {
    /// Slots of copies being taken (their requests still under way).
    reserved: usize,
    waiting: VecDeque<ShadowCopy>,
    sent: HashMap<u32, Sent>,
    /// Per deployment and shadow version, since the last report.
    tallies: Vec<(usize, String, ShadowTally)>,
}

impl Shadows {
    /// Copies being taken, waiting or under way.
    pub(crate) fn in_flight(&self) -> usize {
        self.reserved
            .saturating_add(self.waiting.len())
            .saturating_add(self.sent.len())
    }

    /// A slot for a copy about to be taken; `false` (nothing taken) when
    /// `max_in_flight` copies are already being taken, waiting or under way.
    pub(crate) fn reserve(&mut self, max_in_flight: usize) -> bool {
        if self.in_flight() >= max_in_flight {
            return false;
        }
        self.reserved += 1;
        true
    }

    /// A reserved slot given back: its copy was not made.
    pub(crate) fn release(&mut self) {
        self.reserved = self.reserved.saturating_sub(1);
    }

    /// Takes a copy to send, in the slot reserved for it.
    pub(crate) fn enqueue(&mut self, copy: ShadowCopy) {
        self.release();
        self.waiting.push_back(copy);
    }

    /// A copy not made, counted for its deployment and version.
    pub(crate) fn skipped(
        &mut self,
        deployment: usize,
        version: &str,
        fields: &[OutputField],
        skip: ShadowSkip,
    ) {
        if let Some(t) = self.tally(deployment, version, fields) {
            t.skipped(skip);
        }
    }

    /// The next copy to send.
    pub(crate) fn next_to_send(&mut self) -> Option<ShadowCopy> {
        self.waiting.pop_front()
    }

    /// Envoy took the copy (`token` names its answer).
    pub(crate) fn sending(&mut self, token: u32, copy: ShadowCopy, now_ns: u64) {
        self.sent.insert(
            token,
            Sent {
                deployment: copy.deployment,
                version: copy.version,
                user: copy.user,
                sent_ns: now_ns,
            },
        );
    }

    /// The deployment a copy under way belongs to (`None`: `token` is not
    /// a copy's).
    pub(crate) fn deployment_of(&self, token: u32) -> Option<usize> {
        self.sent.get(&token).map(|s| s.deployment)
    }

    /// Records a copy's answer: its outcome and latency, and, when both
    /// its and the user's answers were read whole, field by field whether
    /// they agree. `fields` are the deployment's output fields (empty: it
    /// reads no outputs, nothing is compared).
    pub(crate) fn answered(&mut self, token: u32, answer: ShadowAnswer, fields: &[OutputField]) {
        let Some(sent) = self.sent.remove(&token) else {
            return;
        };
        let latency_us = answer.now_ns.saturating_sub(sent.sent_ns) / 1000;
        let (outcome, compared) = judge(&answer, sent.user.as_deref(), fields);
        let compared_ref = match &compared {
            Judged::Fields(agreed) => Compared::Fields(agreed),
            Judged::Uncompared => Compared::Uncompared,
            Judged::NoOutputs => Compared::NoOutputs,
        };
        if let Some(t) = self.tally(sent.deployment, &sent.version, fields) {
            t.record(outcome, latency_us, compared_ref);
        }
    }

    /// Gives up copies sent more than `timeout` and a second ago (Envoy
    /// answers every call by its timeout, so only a lost answer gets
    /// here): each is counted as a `reset`. `fields` gives a deployment's
    /// output fields.
    pub(crate) fn expire<'a>(
        &mut self,
        now_ns: u64,
        timeout: Duration,
        fields: impl Fn(usize) -> &'a [OutputField],
    ) {
        let grace = u64::try_from(timeout.as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(1_000_000_000);
        let lost: Vec<u32> = self
            .sent
            .iter()
            .filter(|(_, s)| now_ns.saturating_sub(s.sent_ns) > grace)
            .map(|(&token, _)| token)
            .collect();
        for token in lost {
            let Some(d) = self.deployment_of(token) else {
                continue;
            };
            let answer = ShadowAnswer {
                status: 0,
                body: None,
                now_ns,
            };
            self.answered(token, answer, fields(d));
        }
    }

    fn tally(
        &mut self,
        deployment: usize,
        version: &str,
        fields: &[OutputField],
    ) -> Option<&mut ShadowTally> {
        let at = self
            .tallies
            .iter()
            .position(|(d, v, _)| *d == deployment && v == version);
        let at = match at {
            Some(at) => at,
            None => {
                let tally = ShadowTally::try_new(fields.len()).ok()?;
                self.tallies.push((deployment, version.to_string(), tally));
                self.tallies.len() - 1
            }
        };
        self.tallies.get_mut(at).map(|(_, _, t)| t)
    }

    /// The reports of everything recorded since the last call, which
    /// starts afresh. `deployment` gives a deployment's name and output
    /// fields; `current` whether a version is still its shadow (tallies of
    /// other versions are dropped once reported).
    pub(crate) fn drain<'a>(
        &mut self,
        deployment: impl Fn(usize) -> Option<(&'a str, &'a [OutputField])>,
        current: impl Fn(usize, &str) -> bool,
    ) -> Vec<ShadowReport> {
        let mut reports = Vec::new();
        for (d, version, tally) in &mut self.tallies {
            if tally.is_empty() {
                continue;
            }
            if let Some((name, fields)) = deployment(*d) {
                reports.push(tally.report(name, version, fields));
            }
            tally.clear();
        }
        self.tallies
            .retain(|(d, version, tally)| !tally.is_empty() || current(*d, version));
        reports
    }
}

enum Judged {
    Fields(Vec<bool>),
    Uncompared,
    NoOutputs,
}

/// A shadow's answer: its outcome class, and what comparing it with the
/// user's answer gave.
fn judge(
    answer: &ShadowAnswer,
    user: Option<&[Said]>,
    fields: &[OutputField],
) -> (Outcome, Judged) {
    let served = Outcome::classify(answer.status, b"");
    if fields.is_empty() {
        return (served, Judged::NoOutputs);
    }
    if served != Outcome::Success {
        return (served, Judged::Uncompared);
    }
    let Some(body) = answer.body.as_deref() else {
        // A 2xx answer not read (too large, compressed).
        return (served, Judged::Uncompared);
    };
    let Ok(said) = read_said(body, fields) else {
        return (Outcome::BadOutput, Judged::Uncompared);
    };
    let Some(user) = user else {
        return (served, Judged::Uncompared);
    };
    let agreed = fields
        .iter()
        .zip(user.iter().zip(&said))
        .map(|(f, (u, s))| agrees(f, u, s))
        .collect();
    (served, Judged::Fields(agreed))
}

#[cfg(test)]
mod tests;
