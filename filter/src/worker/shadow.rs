//! The worker's side of shadow copies (DESIGN.md, "Shadow"): which routed
//! requests are copied, the copy made when a request is done, and the
//! copies' answers, on top of the bookkeeping in `crate::shadow`.

use super::{Routed, Worker, fields_of, named_fields};
use crate::metrics::Metrics;
use crate::shadow::{ShadowAnswer, ShadowCopy, Shadows};
use coalmine_protocol::outputs::Said;
use coalmine_protocol::shadow::{ShadowReport, ShadowSkip, copy_headers};
use coalmine_protocol::{DeploymentSplit, Role};

/// What a request in the shadow's share left to copy once it was done.
#[derive(Debug)]
pub(crate) enum Taken {
    /// The whole body (empty without one).
    Whole(Vec<u8>),
    /// The body grew past `shadow.max_body_bytes`.
    TooLarge,
    /// The request's end was not seen, or its body could not be read.
    Incomplete,
}

impl<M: Metrics> Worker<M> {
    /// Whether a request of deployment `index` served by `role` is copied
    /// to the split's shadow: the baseline's (the shadow is compared with
    /// production) in the shadow's share, with a free slot. The slot is
    /// taken now, so copies being taken count against the cap and a
    /// request beyond it costs nothing more (counted `busy`).
    pub(super) fn copy_slot(&mut self, index: usize, split: &DeploymentSplit, role: Role) -> bool {
        let Some(shadow) = split.shadow.as_ref().filter(|_| role == Role::Baseline) else {
            return false;
        };
        if !self.sampled(shadow.bps) {
            return false;
        }
        if self.shadows.reserve(self.config.shadow.max_in_flight) {
            return true;
        }
        let fields = fields_of(&self.config.deployments, index);
        self.shadows
            .skipped(index, &shadow.target.version, fields, ShadowSkip::Busy);
        false
    }

    /// The shadow reports of everything recorded since the last call;
    /// tallies of versions no longer a shadow are dropped once reported.
    pub(super) fn drain_shadow_reports(&mut self) -> Vec<ShadowReport> {
        let deployments = &self.config.deployments;
        let splits = &self.splits;
        self.shadows.drain(
            |i| named_fields(deployments, i),
            |i, version| {
                splits
                    .get(i)
                    .and_then(|s| s.shadow.as_ref())
                    .is_some_and(|s| s.target.version == version)
            },
        )
    }

    /// Whether the request is copied to its deployment's shadow.
    pub(crate) fn copies(&self, routed: &Routed) -> bool {
        routed.copy
    }

    /// The largest request body copied to a shadow.
    pub(crate) fn max_copy_bytes(&self) -> usize {
        self.config.shadow.max_body_bytes
    }

    /// Takes the copy of a finished request for its deployment's shadow,
    /// in the slot the request reserved when it was routed: a whole
    /// request is copied with its headers as `headers` reads them (only
    /// then), without coalmine's routing headers and marked as a copy; a
    /// request not seen whole, too large, or with a header the call cannot
    /// carry (`headers` gives `None`) is counted instead. `user` is what
    /// the user's answer said.
    pub(crate) fn copy(
        &mut self,
        routed: &Routed,
        taken: Taken,
        headers: impl FnOnce() -> Option<Vec<(String, String)>>,
        user: Option<Vec<Said>>,
    ) {
        let Some(shadow) = routed.split.shadow.as_ref().filter(|_| routed.copy) else {
            return;
        };
        let d = routed.deployment;
        let fields = fields_of(&self.config.deployments, d);
        let version = &shadow.target.version;
        let skip = |shadows: &mut Shadows, why| {
            shadows.release();
            shadows.skipped(d, version, fields, why);
        };
        let body = match taken {
            Taken::Whole(body) => body,
            Taken::TooLarge => return skip(&mut self.shadows, ShadowSkip::TooLarge),
            Taken::Incomplete => return skip(&mut self.shadows, ShadowSkip::Incomplete),
        };
        let Some(headers) = headers() else {
            return skip(&mut self.shadows, ShadowSkip::Refused);
        };
        let names = &self.config.headers;
        let mut drop = vec![names.role.as_str(), names.cluster.as_str()];
        drop.extend(names.tester_override.as_ref().map(|t| t.header.as_str()));
        self.shadows.enqueue(ShadowCopy {
            deployment: d,
            version: version.clone(),
            cluster: shadow.target.cluster.clone(),
            headers: copy_headers(headers, &drop),
            body,
            user,
        });
    }

    /// A routed request's copy slot given back without a copy (its
    /// request context went away before the request was done).
    pub(crate) fn drop_copy(&mut self, routed: &Routed) {
        if routed.copy {
            self.shadows.release();
        }
    }

    /// The next copy to send to a shadow, and how long to wait for its
    /// answer.
    pub(crate) fn next_copy(&mut self) -> Option<(ShadowCopy, std::time::Duration)> {
        let copy = self.shadows.next_to_send()?;
        Some((copy, self.config.shadow.timeout))
    }

    /// Envoy took a copy (`Some(token)`) or refused it.
    pub(crate) fn copy_sent(&mut self, copy: ShadowCopy, token: Option<u32>, now_ns: u64) {
        match token {
            Some(token) => self.shadows.sending(token, copy, now_ns),
            None => {
                let fields = fields_of(&self.config.deployments, copy.deployment);
                self.shadows
                    .skipped(copy.deployment, &copy.version, fields, ShadowSkip::Refused);
            }
        }
    }

    /// Whether `token` is the answer to a copy; if so, the largest body of
    /// it to read (the deployment's `outputs.max_body_bytes`, 0 without
    /// outputs).
    pub(crate) fn copy_answer_limit(&self, token: u32) -> Option<usize> {
        let d = self.shadows.deployment_of(token)?;
        let limit = self
            .config
            .deployments
            .get(d)
            .and_then(|d| d.outputs.as_ref())
            .map_or(0, |o| o.max_body_bytes);
        Some(limit)
    }

    /// Gives up copies whose answer never came (see [`Shadows::expire`]).
    pub(crate) fn expire_copies(&mut self, now_ns: u64) {
        let deployments = &self.config.deployments;
        self.shadows
            .expire(now_ns, self.config.shadow.timeout, |d| {
                fields_of(deployments, d)
            });
    }

    /// A copy's answer arrived.
    pub(crate) fn copy_answered(&mut self, token: u32, answer: ShadowAnswer) {
        let Some(d) = self.shadows.deployment_of(token) else {
            return;
        };
        let fields = fields_of(&self.config.deployments, d);
        self.shadows.answered(token, answer, fields);
    }

    /// Whether some deployment's split in force has a shadow.
    pub(crate) fn shadow_in_force(&self) -> bool {
        (0..self.config.deployments.len()).any(|i| {
            self.splits
                .get(i)
                .is_some_and(|s| s.shadow.as_ref().is_some_and(|s| s.bps.get() > 0))
        })
    }
}
