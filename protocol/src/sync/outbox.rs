//! The report a worker has sent and not yet seen acknowledged.
//!
//! A report that was not acknowledged (the call failed or timed out) is sent
//! again byte for byte, with the same sequence number, so the controller can
//! count it exactly once; new requests accumulate in the live statistics
//! meanwhile.

use super::{Reports, SyncRequest};

/// A worker's outgoing reports: one in flight or waiting to be resent, until
/// the controller acknowledges it. Memory is bounded: one encoded report plus
/// the live statistics it will be built from next.
#[derive(Debug, Clone)]
pub struct Outbox {
    proxy: String,
    instance: String,
    seq: u64,
    pending: Option<Vec<u8>>,
}

impl Outbox {
    pub fn new(proxy: String, instance: String) -> Outbox {
        Outbox {
            proxy,
            instance,
            seq: 0,
            pending: None,
        }
    }

    /// The body to send now: the unacknowledged report again, or a new one
    /// (next sequence number) from `reports()`, which drains the live stats.
    pub fn body<R: Into<Reports>>(&mut self, epoch: u64, reports: impl FnOnce() -> R) -> &[u8] {
        let Outbox {
            proxy,
            instance,
            seq,
            pending,
        } = self;
        pending.get_or_insert_with(|| {
            *seq += 1;
            let Reports { roles, shadow } = reports().into();
            serde_json::to_vec(&SyncRequest {
                proxy: proxy.clone(),
                instance: instance.clone(),
                seq: *seq,
                epoch,
                reports: roles,
                shadow,
            })
            .unwrap_or_default()
        })
    }

    /// The controller has the pending report.
    pub fn acknowledged(&mut self) {
        self.pending = None;
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn has_pending(&self) -> bool {
        self.pending.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Outcome;
    use crate::split::Role;
    use crate::stats::RoleStats;
    use crate::sync::RoleReport;

    fn report() -> RoleReport {
        let mut s = RoleStats::try_new().unwrap();
        s.record(Outcome::Success, 5);
        RoleReport::from_stats("d", Role::Canary, "v2", &s)
    }

    #[test]
    fn the_outbox_resends_until_acknowledged() {
        let mut out = Outbox::new("p".into(), "i".into());
        let mut drained = 0;

        let first = out
            .body(0, || {
                drained += 1;
                vec![report()]
            })
            .to_vec();
        // The call failed: the same bytes go again, the live stats are not drained.
        let again = out
            .body(7, || {
                drained += 1;
                vec![]
            })
            .to_vec();
        assert_eq!(first, again);
        assert_eq!(drained, 1);
        let parsed: SyncRequest = serde_json::from_slice(&first).unwrap();
        assert_eq!((parsed.seq, parsed.reports.len()), (1, 1));
        out.acknowledged();
        let next: SyncRequest = serde_json::from_slice(out.body(7, Vec::new)).unwrap();
        assert_eq!((next.seq, next.epoch), (2, 7));
    }
}
