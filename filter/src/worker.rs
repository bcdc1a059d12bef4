//! A worker's state and its decisions: what its request contexts and its
//! sync loop share.
//!
//! Envoy runs one VM per worker thread, so a worker is single-threaded: the
//! root context owns it behind `Rc<RefCell<_>>` and lends it to one callback
//! at a time. Every decision here is made on plain values: [`Worker::route`]
//! reads request headers through a closure and returns what to do with
//! them, [`Worker::record`] reads what Envoy says of a finished request
//! through a closure, and metrics go through the [`Metrics`] trait. So
//! `request` and `sync` only carry out host calls, and the decisions are
//! tested natively, without Envoy.

use crate::metrics::{EnvoyMetrics, Metrics};
use crate::random::RandomPool;
use crate::shadow::Shadows;
use coalmine_protocol::active::{ActiveSplits, Observed};
use coalmine_protocol::config::Deployment;
use coalmine_protocol::outputs::{
    FieldValue, OutputField, Outputs, Said, Seen, Skip, binned, read_said,
};
use coalmine_protocol::routing::{find_match, point_from_draw, role_at, sticky_point, tester_role};
use coalmine_protocol::shared::encode_split_table;
use coalmine_protocol::stats::{FinishedRequest, PendingReports, RoleStats};
use coalmine_protocol::sync::Reports;
use coalmine_protocol::{Bps, DeploymentSplit, Outcome, PluginConfig, Role, SplitTable, Target};
use std::rc::Rc;

/// Everything one worker's contexts share.
#[derive(Debug)]
pub(crate) struct Worker<M = EnvoyMetrics> {
    config: PluginConfig,
    splits: ActiveSplits,
    /// Statistics since the last report, per deployment, role and version.
    pending: PendingReports,
    metrics: M,
    random: RandomPool,
    /// Whether any deployment matches on host (else `:authority` is not read).
    match_on_host: bool,
    /// The first deployment takes every request (else `:path` is read).
    first_takes_all: bool,
    /// Copies to shadow versions.
    shadows: Shadows,
}

/// How a request that belongs to a deployment is served.
#[derive(Debug)]
pub(crate) struct Routed {
    deployment: usize,
    role: Role,
    /// The split the decision was made with (the table may change before the
    /// response; the response still names what served it).
    split: Rc<DeploymentSplit>,
    /// A tester chose the role (with the override secret).
    forced: bool,
    /// The answer's outputs are counted (the deployment reads outputs and
    /// this request is in the sampled share).
    read_outputs: bool,
    /// The request is copied to the deployment's shadow (a baseline
    /// request in the shadow's share): its answer is read to compare.
    copy: bool,
}

impl Routed {
    /// The role's target. Always there: a role without one is never chosen.
    fn target(&self) -> Option<&Target> {
        self.split.target(self.role)
    }
}

/// What [`Worker::route`] decided for one request.
#[derive(Debug)]
pub(crate) struct Decision {
    /// The request carried the tester override header, which never goes
    /// upstream whatever it says.
    tester_header: bool,
    /// `None` outside every deployment (or without a split in force).
    routed: Option<Routed>,
}

impl Decision {
    pub(crate) fn into_routed(self) -> Option<Routed> {
        self.routed
    }
}

/// One change to a request's or response's headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderEdit<'a> {
    Set(&'a str, &'a str),
    Remove(&'a str),
}

/// What was read of a request's answer.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Not read (not sampled, not a 2xx, or the stream ended early).
    #[default]
    NotRead,
    /// Sampled but not read, and why.
    Skipped(Skip),
    /// The whole body.
    Body(Vec<u8>),
}

/// What Envoy says of a finished request.
#[derive(Debug, Default)]
pub(crate) struct Finished {
    /// From routing to the end of the stream, by the host's clock, in
    /// nanoseconds.
    pub(crate) duration_ns: u64,
    /// `response.code` (0: no response).
    pub(crate) code: u64,
    /// `response.code_details`.
    pub(crate) details: Vec<u8>,
}

impl<M: Metrics> Worker<M> {
    pub(crate) fn new(config: PluginConfig, metrics: M) -> Result<Worker<M>, String> {
        // Fail at load, not on the request path, if histograms cannot be made.
        RoleStats::try_new().map_err(|e| e.to_string())?;
        let splits = ActiveSplits::from_static(&config.deployments);
        let match_on_host = config.deployments.iter().any(|d| d.matcher.host.is_some());
        let first_takes_all = config
            .deployments
            .first()
            .is_some_and(|d| d.matcher.matches_every_request());
        let worker = Worker {
            config,
            splits,
            pending: PendingReports::default(),
            metrics,
            random: RandomPool::default(),
            match_on_host,
            first_takes_all,
            shadows: Shadows::default(),
        };
        worker.publish_split_metrics();
        Ok(worker)
    }

    /// Chooses the role of a request: finds its deployment, then takes the
    /// tester's choice (with the secret), the user's sticky point, or a
    /// random draw. `header` reads a request header; headers are read only
    /// when the decision needs them (`:authority` only if some deployment
    /// matches on host, the sticky header only in a sticky deployment).
    pub(crate) fn route(&mut self, mut header: impl FnMut(&str) -> Option<Vec<u8>>) -> Decision {
        let tester = self.config.headers.tester_override.as_ref();
        let tester_value = tester.and_then(|t| header(&t.header));
        let forced = tester
            .zip(tester_value.as_deref())
            .and_then(|(t, value)| tester_role(value, &t.secret));
        // No `:path` read when the first deployment takes every request
        // (Envoy's routes then decide which requests reach the filter), and
        // no `:authority` read when no deployment matches on host.
        let index = if self.first_takes_all {
            Some(0)
        } else {
            let path = header(":path").unwrap_or_default();
            let authority = self.match_on_host.then(|| header(":authority")).flatten();
            find_match(
                self.config.deployments.iter().map(|d| &d.matcher),
                &path,
                authority.as_deref(),
            )
        };
        Decision {
            tester_header: tester_value.is_some(),
            routed: index.and_then(|index| self.choose(index, forced, header)),
        }
    }

    /// The role for a request of deployment `index`.
    fn choose(
        &mut self,
        index: usize,
        forced: Option<Role>,
        mut header: impl FnMut(&str) -> Option<Vec<u8>>,
    ) -> Option<Routed> {
        let deployment = self.config.deployments.get(index)?;
        let split = self.splits.get(index)?.clone();
        let sticky = deployment.sticky_header.as_deref().and_then(&mut header);
        let point = match sticky {
            Some(key) => Some(sticky_point(deployment.sticky_seed, &key)),
            // No entropy: fail safe to the baseline.
            None => self.random.next_u64().map(point_from_draw),
        };
        let drawn = || point.map_or(Role::Baseline, |p| role_at(p, split.effective_bps()));
        // A forced role the deployment does not have (no canary) is ignored.
        let forced = forced.filter(|&r| split.target(r).is_some());
        let role = forced.unwrap_or_else(drawn);
        // A tester's request is not part of the comparison: never read.
        let sample = deployment.outputs.as_ref().map(|o| o.sample);
        let read_outputs = forced.is_none() && sample.is_some_and(|s| self.sampled(s));
        let copy = forced.is_none() && self.copy_slot(index, &split, role);
        Some(Routed {
            deployment: index,
            role,
            forced: forced.is_some(),
            read_outputs,
            copy,
            split,
        })
    }

    /// Whether a request falls in a share (all or none without a draw).
    fn sampled(&mut self, share: Bps) -> bool {
        match share {
            Bps::FULL => true,
            Bps::ZERO => false,
            share => self
                .random
                .next_u64()
                .is_some_and(|d| point_from_draw(d) < share.get()),
        }
    }

    /// The outputs a request's answer is read for: its deployment's, when
    /// it is in the sampled share or copied to the shadow.
    pub(crate) fn outputs_to_read(&self, routed: &Routed) -> Option<&Outputs> {
        let d = self.config.deployments.get(routed.deployment)?;
        d.outputs
            .as_ref()
            .filter(|_| routed.read_outputs || routed.copy)
    }

    /// The request header edits of a decision: the role and cluster headers
    /// overwritten inside a deployment and removed outside every one (a
    /// client never chooses an upstream), the tester header removed.
    ///
    /// Each edit makes Envoy choose the route again, the largest cost the
    /// filter adds to a request, so where a filter ahead of coalmine has
    /// already removed the clients' role and cluster headers
    /// (`client_headers_stripped`), nothing is removed, and a request sent to
    /// its deployment's `default_cluster` goes out untagged: the route sends
    /// it there without the header.
    pub(crate) fn request_edits<'a>(
        &'a self,
        decision: &'a Decision,
    ) -> impl Iterator<Item = HeaderEdit<'a>> {
        let names = &self.config.headers;
        let tester = names
            .tester_override
            .as_ref()
            .filter(|_| decision.tester_header)
            .map(|t| HeaderEdit::Remove(&t.header));
        let served = decision.routed.as_ref().and_then(|r| {
            let target = r.target()?;
            let default = self
                .config
                .deployments
                .get(r.deployment)?
                .default_cluster
                .as_ref();
            let untagged = names.client_headers_stripped && default == Some(&target.cluster);
            Some((r.role, target, untagged))
        });
        let (role, cluster) = match served {
            Some((_, _, true)) => (None, None),
            Some((role, target, false)) => (
                Some(HeaderEdit::Set(&names.role, role.as_str())),
                Some(HeaderEdit::Set(&names.cluster, &target.cluster)),
            ),
            None if names.client_headers_stripped => (None, None),
            None => (
                Some(HeaderEdit::Remove(&names.role)),
                Some(HeaderEdit::Remove(&names.cluster)),
            ),
        };
        [tester, role, cluster].into_iter().flatten()
    }

    /// The response headers naming the role and version that served a
    /// request (none with `respond_with_role` off).
    pub(crate) fn response_headers<'a>(
        &'a self,
        routed: &'a Routed,
    ) -> impl Iterator<Item = (&'a str, &'a str)> {
        let names = &self.config.headers;
        let target = routed.target().filter(|_| names.respond_with_role);
        target.into_iter().flat_map(move |t| {
            [
                (names.role.as_str(), routed.role.as_str()),
                (names.version.as_str(), t.version.as_str()),
            ]
        })
    }

    /// Records a finished request into the pending statistics and Envoy's
    /// metrics. `finished` is read only when the request counts: a tester's
    /// request is counted apart and kept out of the comparison. An answer
    /// read whole gives a value per output field, or makes the request a
    /// `bad_output`.
    ///
    /// What the answer said, when it was read whole, for the comparison
    /// with the shadow.
    pub(crate) fn record(
        &mut self,
        routed: &Routed,
        finished: impl FnOnce() -> Finished,
        answer: Answer,
    ) -> Option<Vec<Said>> {
        if routed.forced {
            self.metrics.tester_override(routed.deployment);
            return None;
        }
        let target = routed.target()?;
        let finished = finished();
        let served = Outcome::classify(finished.code, &finished.details);
        let latency_us = finished.duration_ns / 1000;
        let (d, role) = (routed.deployment, routed.role);
        let fields = self
            .config
            .deployments
            .get(d)
            .and_then(|dep| dep.outputs.as_ref())
            .map_or(&[][..], |o| &o.fields);
        let (outcome, seen, said) = judge(served, answer, fields);
        // An answer read only for the shadow's comparison is not counted:
        // the roles' output counts stay in proportion to their traffic.
        let (outcome, seen) = if routed.read_outputs {
            (outcome, seen)
        } else {
            (served, Judged::NotRead)
        };
        let outputs = match &seen {
            Judged::Read(values) => Seen::Read(values),
            Judged::Skipped(skip) => Seen::Skipped(*skip),
            Judged::NotRead => Seen::NotRead,
        };
        let request = FinishedRequest {
            outcome,
            latency_us,
            outputs,
        };
        self.pending
            .record(d, role, &target.version, fields, request);
        self.metrics.request(d, role, outcome, latency_us);
        match seen {
            Judged::Read(values) => {
                for (i, v) in values.iter().enumerate() {
                    self.metrics.output(d, role, i, v);
                }
            }
            Judged::Skipped(skip) => self.metrics.output_skipped(d, role, skip),
            Judged::NotRead => {}
        }
        said
    }

    /// The reports of everything recorded since the last call, which starts
    /// afresh. Entries of versions no longer in play are dropped once empty.
    pub(crate) fn drain_reports(&mut self) -> Reports {
        let shadow = self.drain_shadow_reports();
        let deployments = &self.config.deployments;
        let splits = &self.splits;
        let roles = self.pending.drain(
            |i| named_fields(deployments, i),
            |i, role, version| {
                splits
                    .get(i)
                    .and_then(|s| s.target(role))
                    .is_some_and(|t| t.version == version)
            },
        );
        Reports { roles, shadow }
    }

    /// The epoch of the controller's table in force (0: none yet).
    pub(crate) fn epoch(&self) -> u64 {
        self.splits.epoch().unwrap_or(0)
    }

    /// Takes in the split table shared data holds (`value` under `cas`),
    /// decoding only a new table of another epoch. A value that does not
    /// decode leaves the last good table in force. Called on the sync tick,
    /// never per request: the request path reads no shared data.
    pub(crate) fn take_shared_table(&mut self, value: Option<&[u8]>, cas: Option<u32>) {
        match self.splits.observe(&self.config.deployments, cas, || value) {
            Observed::Unchanged => {}
            Observed::Updated { epoch } => {
                log::debug!("split table epoch {epoch} in force");
                self.publish_split_metrics();
            }
            Observed::Rejected(e) => {
                log::warn!("keeping the last good split table: {e}");
            }
        }
    }

    /// Puts this worker's own sync answer in force at once, decoded once.
    /// When the table is new, its stored form for shared data, whose epoch
    /// prefix lets every worker that has it skip decoding it again.
    pub(crate) fn take_answer(&mut self, table: SplitTable) -> Option<Vec<u8>> {
        if self.splits.epoch() == Some(table.epoch) {
            return None;
        }
        let value = encode_split_table(&table);
        let epoch = table.epoch;
        self.splits.apply(&self.config.deployments, table);
        log::debug!("split table epoch {epoch} in force");
        self.publish_split_metrics();
        Some(value)
    }

    /// Enters or leaves the lease fail-safe (baseline only).
    pub(crate) fn set_lease_expired(&mut self, expired: bool) {
        if self.splits.set_lease_expired(expired) {
            self.publish_split_metrics();
        }
    }

    pub(crate) fn sync_failed(&self) {
        self.metrics.sync_failed();
    }

    pub(crate) fn lease_expired(&self) {
        self.metrics.lease_expired();
    }

    /// The controller refused a report for good; it was dropped.
    pub(crate) fn report_dropped(&self) {
        self.metrics.report_dropped();
    }

    /// Hands the request counts gathered since the last tick to Envoy.
    pub(crate) fn flush_metrics(&mut self) {
        self.metrics.flush();
    }

    /// The split gauges of every deployment: canary share in force, epoch.
    fn publish_split_metrics(&self) {
        let epoch = self.epoch();
        for i in 0..self.config.deployments.len() {
            let bps = self.splits.get(i).map_or(0, |s| s.effective_bps().get());
            self.metrics.split(i, bps, epoch);
        }
    }
}

/// A deployment's name and output fields, as its reports name them.
fn named_fields(deployments: &[Deployment], deployment: usize) -> Option<(&str, &[OutputField])> {
    let d = deployments.get(deployment)?;
    Some((d.name.as_str(), fields_of(deployments, deployment)))
}

/// A deployment's output fields (none without `outputs`).
fn fields_of(deployments: &[Deployment], deployment: usize) -> &[OutputField] {
    deployments
        .get(deployment)
        .and_then(|d| d.outputs.as_ref())
        .map_or(&[][..], |o| &o.fields)
}

/// What a served request's answer turned out to be.
#[derive(Debug)]
enum Judged {
    NotRead,
    Skipped(Skip),
    Read(Vec<FieldValue>),
}

/// A served request's outcome once its answer is judged: a 2xx answer read
/// whole gives a value per field, or is a `bad_output`; a skipped one is
/// counted as such. Any other answer stays what Envoy said.
///
/// Also what the answer said, when it was read whole.
fn judge(
    served: Outcome,
    answer: Answer,
    fields: &[OutputField],
) -> (Outcome, Judged, Option<Vec<Said>>) {
    if served != Outcome::Success {
        return (served, Judged::NotRead, None);
    }
    match answer {
        Answer::NotRead => (served, Judged::NotRead, None),
        Answer::Skipped(skip) => (served, Judged::Skipped(skip), None),
        Answer::Body(body) => match read_said(&body, fields) {
            Ok(said) => (
                served,
                Judged::Read(binned(said.clone(), fields)),
                Some(said),
            ),
            Err(_) => (Outcome::BadOutput, Judged::NotRead, None),
        },
    }
}

mod shadow;

pub(crate) use shadow::Taken;

#[cfg(test)]
mod tests;
