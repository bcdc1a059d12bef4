//! One worker's statistics since its last report, kept per deployment, role
//! and version until a sync drains them into reports.

use super::RoleStats;
use crate::outcome::Outcome;
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
}

impl PendingReports {
    /// Records one finished request. Allocates only for a version not seen
    /// since its entry was last dropped; a histogram that cannot be made
    /// loses the request rather than failing it.
    pub fn record(
        &mut self,
        deployment: usize,
        role: Role,
        version: &str,
        outcome: Outcome,
        latency_us: u64,
    ) {
        let found = self
            .entries
            .iter_mut()
            .find(|e| e.deployment == deployment && e.role == role && e.version == version);
        match found {
            Some(e) => e.stats.record(outcome, latency_us),
            None => {
                if let Ok(mut stats) = RoleStats::try_new() {
                    stats.record(outcome, latency_us);
                    self.entries.push(PendingEntry {
                        deployment,
                        role,
                        version: version.to_string(),
                        stats,
                    });
                }
            }
        }
    }

    /// The reports of everything recorded since the last call, which starts
    /// afresh. `name` gives a deployment's name by index; entries for which
    /// `in_play` is false are dropped once reported (their histograms are not
    /// kept for versions that no longer serve).
    pub fn drain<'a>(
        &mut self,
        name: impl Fn(usize) -> Option<&'a str>,
        in_play: impl Fn(usize, Role, &str) -> bool,
    ) -> Vec<RoleReport> {
        let mut reports = Vec::new();
        for e in &mut self.entries {
            if e.stats.requests() == 0 {
                continue;
            }
            if let Some(n) = name(e.deployment) {
                reports.push(RoleReport::from_stats(n, e.role, &e.version, &e.stats));
            }
            e.stats.clear();
        }
        self.entries
            .retain(|e| in_play(e.deployment, e.role, &e.version));
        reports
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_reports_drain_once_and_forget_versions_out_of_play() {
        let mut p = PendingReports::default();
        p.record(0, Role::Baseline, "v1", Outcome::Success, 1_000);
        p.record(0, Role::Canary, "v2", Outcome::ServerError, 2_000);
        p.record(0, Role::Canary, "v2", Outcome::Success, 3_000);
        p.record(1, Role::Baseline, "b1", Outcome::Success, 500);
        let names = ["heart", "fraud"];
        let name = |i: usize| names.get(i).copied();
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
        p.record(0, Role::Baseline, "v1", Outcome::Success, 1_000);
        assert_eq!(p.drain(name, |_, _, _| true).len(), 1);
    }
}
