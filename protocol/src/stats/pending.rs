//! One worker's statistics since its last report, kept per deployment, role
//! and version until a sync drains them into reports.

use super::RoleStats;
use crate::outcome::Outcome;
use crate::outputs::{OutputField, OutputTally, Seen};
use crate::split::Role;
use crate::sync::RoleReport;

/// One worker's statistics since its last report, per deployment (by its
/// index in the configuration), role and version.
#[derive(Debug, Default)]
pub struct PendingReports {
    entries: Vec<PendingEntry>,
}

#[derive(Debug)]
struct PendingEntry {
    deployment: usize,
    role: Role,
    version: String,
    stats: RoleStats,
    outputs: OutputTally,
}

/// One finished request, as a worker records it.
#[derive(Clone, Copy, Debug)]
pub struct FinishedRequest<'a> {
    pub outcome: Outcome,
    pub latency_us: u64,
    pub outputs: Seen<'a>,
}

impl PendingReports {
    /// Records one finished request. Allocates only for a version not seen
    /// since its entry was last dropped (with empty output counts for
    /// `fields`, the deployment's); a histogram that cannot be made loses
    /// the request rather than failing it.
    pub fn record(
        &mut self,
        deployment: usize,
        role: Role,
        version: &str,
        fields: &[OutputField],
        request: FinishedRequest<'_>,
    ) {
        let at = self
            .entries
            .iter()
            .position(|e| e.deployment == deployment && e.role == role && e.version == version);
        let entry = match at {
            Some(i) => self.entries.get_mut(i),
            None => {
                let Ok(stats) = RoleStats::try_new() else {
                    return;
                };
                self.entries.push(PendingEntry {
                    deployment,
                    role,
                    version: version.to_string(),
                    stats,
                    outputs: OutputTally::new(fields),
                });
                self.entries.last_mut()
            }
        };
        if let Some(e) = entry {
            e.stats.record(request.outcome, request.latency_us);
            match request.outputs {
                Seen::NotRead => {}
                Seen::Skipped(skip) => e.outputs.skipped(skip),
                Seen::Read(values) => e.outputs.record(values),
            }
        }
    }

    /// The reports of everything recorded since the last call, which starts
    /// afresh. `name` gives a deployment's name and output fields by index;
    /// entries for which
    /// `in_play` is false are dropped once reported (their histograms are not
    /// kept for versions that no longer serve).
    pub fn drain<'a>(
        &mut self,
        name: impl Fn(usize) -> Option<(&'a str, &'a [OutputField])>,
        in_play: impl Fn(usize, Role, &str) -> bool,
    ) -> Vec<RoleReport> {
        let mut reports = Vec::new();
        for e in &mut self.entries {
            if e.stats.requests() == 0 {
                continue;
            }
            if let Some((n, fields)) = name(e.deployment) {
                let mut report = RoleReport::from_stats(n, e.role, &e.version, &e.stats);
                (report.outputs, report.outputs_skipped) = e.outputs.report(fields);
                reports.push(report);
            }
            e.stats.clear();
            e.outputs.clear();
        }
        self.entries
            .retain(|e| in_play(e.deployment, e.role, &e.version));
        reports
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(outcome: Outcome, latency_us: u64) -> FinishedRequest<'static> {
        FinishedRequest {
            outcome,
            latency_us,
            outputs: Seen::NotRead,
        }
    }

    #[test]
    fn pending_reports_drain_once_and_forget_versions_out_of_play() {
        let mut p = PendingReports::default();
        p.record(0, Role::Baseline, "v1", &[], plain(Outcome::Success, 1_000));
        p.record(
            0,
            Role::Canary,
            "v2",
            &[],
            plain(Outcome::ServerError, 2_000),
        );
        p.record(0, Role::Canary, "v2", &[], plain(Outcome::Success, 3_000));
        p.record(1, Role::Baseline, "b1", &[], plain(Outcome::Success, 500));
        let names = ["heart", "fraud"];
        let name = |i: usize| names.get(i).map(|n| (*n, &[][..]));
        // v2 is no longer in play after this report.
        let reports = p.drain(name, |_, _, v| v != "v2");
        let summary: Vec<(&str, Role, &str, u64)> = reports
            .iter()
            .map(|r| {
                (
                    r.deployment.as_str(),
                    r.role,
                    r.version.as_str(),
                    r.counts.total(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("heart", Role::Baseline, "v1", 1),
                ("heart", Role::Canary, "v2", 2),
                ("fraud", Role::Baseline, "b1", 1)
            ]
        );
        assert_eq!(reports[1].counts.server_error, 1);
        // Nothing new: nothing to report; v2's entry is gone.
        assert!(p.drain(name, |_, _, _| true).is_empty());
        assert_eq!(p.entries.len(), 2);
        p.record(0, Role::Baseline, "v1", &[], plain(Outcome::Success, 1_000));
        assert_eq!(p.drain(name, |_, _, _| true).len(), 1);
    }
}
