//! What each configured deployment routes by right now.
//!
//! The filter asks proxy shared data for the split table on every sync tick
//! (never per request), but decodes it only when the shared-data CAS changed
//! since the last look and the stored epoch is not the one already in force
//! (a worker puts its own answer in force directly, decoded once, and finds
//! its own value in shared data on the next look); a table that does not
//! decode is remembered as seen (so it is not decoded again) and the last
//! good splits stay in force.

use crate::config::Deployment;
use crate::shared::{decode_split_table, split_table_epoch};
use crate::split::{DeploymentSplit, SplitTable, SplitTableError};
use std::rc::Rc;

/// Per configured deployment (by index), the split in force.
#[derive(Debug, Clone)]
pub struct ActiveSplits {
    seen_cas: Option<u32>,
    epoch: Option<u64>,
    /// The splits as configured or last received.
    splits: Vec<Option<Rc<DeploymentSplit>>>,
    /// While the controller's lease has expired: the same splits with the
    /// canary share at 0 (fail safe to the baseline).
    lease_expired: bool,
    baseline_only: Vec<Option<Rc<DeploymentSplit>>>,
}

/// What [`ActiveSplits::observe`] did.
#[derive(Debug)]
pub enum Observed {
    /// Same CAS as before, nothing stored, or the epoch already in force:
    /// nothing decoded.
    Unchanged,
    /// A new table was decoded and is now in force.
    Updated { epoch: u64 },
    /// A new value could not be decoded; the previous splits stay in force.
    Rejected(SplitTableError),
}

impl ActiveSplits {
    /// The static splits of the configuration (standalone mode, or until the
    /// controller's first table).
    pub fn from_static(deployments: &[Deployment]) -> ActiveSplits {
        let mut active = ActiveSplits {
            seen_cas: None,
            epoch: None,
            splits: deployments
                .iter()
                .map(|d| d.static_split.clone().map(Rc::new))
                .collect(),
            lease_expired: false,
            baseline_only: Vec::new(),
        };
        active.rebuild_baseline_only();
        active
    }

    /// The split in force for the deployment at `index` in the configuration
    /// (baseline only while the lease has expired).
    pub fn get(&self, index: usize) -> Option<&Rc<DeploymentSplit>> {
        let splits = if self.lease_expired {
            &self.baseline_only
        } else {
            &self.splits
        };
        splits.get(index).and_then(Option::as_ref)
    }

    /// Enters or leaves the fail-safe state; returns whether it changed.
    pub fn set_lease_expired(&mut self, expired: bool) -> bool {
        let changed = self.lease_expired != expired;
        self.lease_expired = expired;
        changed
    }

    pub fn lease_expired(&self) -> bool {
        self.lease_expired
    }

    fn rebuild_baseline_only(&mut self) {
        self.baseline_only = self
            .splits
            .iter()
            .map(|s| {
                s.as_ref().map(|s| {
                    // No copies either: a stop the controller could not
                    // pass on must not leave a shadow running for good.
                    Rc::new(DeploymentSplit {
                        canary_bps: crate::split::Bps::ZERO,
                        shadow: None,
                        ..DeploymentSplit::clone(s)
                    })
                })
            })
            .collect();
    }

    /// The epoch of the controller table in force, if any.
    pub fn epoch(&self) -> Option<u64> {
        self.epoch
    }

    /// Takes in what shared data holds now (a value in the form of
    /// [`crate::shared::encode_split_table`]). `read` is called only when
    /// `cas` differs from the last one seen.
    pub fn observe<'a>(
        &mut self,
        deployments: &[Deployment],
        cas: Option<u32>,
        read: impl FnOnce() -> Option<&'a [u8]>,
    ) -> Observed {
        if cas.is_none() || cas == self.seen_cas {
            return Observed::Unchanged;
        }
        self.seen_cas = cas;
        let Some(bytes) = read() else {
            return Observed::Unchanged;
        };
        if self.epoch.is_some() && split_table_epoch(bytes) == self.epoch {
            return Observed::Unchanged;
        }
        match decode_split_table(bytes) {
            Ok(table) => {
                self.apply(deployments, table);
                Observed::Updated {
                    epoch: self.epoch.unwrap_or_default(),
                }
            }
            Err(e) => Observed::Rejected(e),
        }
    }

    /// Puts a decoded controller table in force. Deployments the table does
    /// not mention keep no split (their traffic is not split); the table's
    /// entries for deployments this proxy does not serve are ignored.
    pub fn apply(&mut self, deployments: &[Deployment], table: SplitTable) {
        let mut by_name = table.deployments;
        self.splits = deployments
            .iter()
            .map(|d| {
                by_name
                    .iter()
                    .position(|s| s.name == d.name)
                    .map(|i| Rc::new(by_name.swap_remove(i)))
            })
            .collect();
        self.epoch = Some(table.epoch);
        self.rebuild_baseline_only();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PluginConfig;
    use crate::split::{Bps, Target};

    fn deployments() -> Vec<Deployment> {
        PluginConfig::parse(
            br#"{"controller":{"cluster":"ctl"},"deployments":[
              {"name":"a","match":{"path_prefix":"/a"},"static":{"baseline":{"version":"v1","cluster":"a1"}}},
              {"name":"b","match":{"path_prefix":"/b"}}]}"#,
        )
        .unwrap()
        .deployments
    }

    fn table(epoch: u64, bps: u16) -> Vec<u8> {
        crate::shared::encode_split_table(&decoded(epoch, bps))
    }

    fn decoded(epoch: u64, bps: u16) -> SplitTable {
        SplitTable {
            epoch,
            deployments: vec![DeploymentSplit {
                name: "b".into(),
                baseline: Target {
                    version: "v1".into(),
                    cluster: "b1".into(),
                },
                canary: Some(Target {
                    version: "v2".into(),
                    cluster: "b2".into(),
                }),
                canary_bps: Bps::new(bps).unwrap(),
                shadow: None,
            }],
        }
    }

    #[test]
    fn decodes_only_when_the_cas_changes() {
        let ds = deployments();
        let mut active = ActiveSplits::from_static(&ds);
        assert_eq!(active.get(0).unwrap().baseline.cluster, "a1");
        assert!(active.get(1).is_none());

        let t1 = table(1, 2000);
        assert!(matches!(
            active.observe(&ds, None, || panic!("no value, no read")),
            Observed::Unchanged
        ));
        assert!(matches!(
            active.observe(&ds, Some(7), || Some(&t1)),
            Observed::Updated { epoch: 1 }
        ));
        assert_eq!(active.get(1).unwrap().canary_bps.get(), 2000);
        assert!(
            active.get(0).is_none(),
            "the controller's table rules once it arrives"
        );
        assert!(matches!(
            active.observe(&ds, Some(7), || panic!("same cas must not be read")),
            Observed::Unchanged
        ));

        // A broken value keeps the last good table and is not decoded twice.
        assert!(matches!(
            active.observe(&ds, Some(8), || Some(b"{not json")),
            Observed::Rejected(_)
        ));
        assert_eq!(active.get(1).unwrap().canary_bps.get(), 2000);
        assert!(matches!(
            active.observe(&ds, Some(8), || panic!("seen already")),
            Observed::Unchanged
        ));

        let t2 = table(2, 5000);
        assert!(matches!(
            active.observe(&ds, Some(9), || Some(&t2)),
            Observed::Updated { epoch: 2 }
        ));
        assert_eq!(active.get(1).unwrap().canary_bps.get(), 5000);
        assert_eq!(active.epoch(), Some(2));

        // Lease expired: the same targets, canary share 0, until it is renewed.
        assert!(active.set_lease_expired(true));
        assert!(!active.set_lease_expired(true));
        let fallback = active.get(1).unwrap();
        assert_eq!(fallback.canary_bps.get(), 0);
        assert_eq!(fallback.baseline.cluster, "b1");
        assert!(active.set_lease_expired(false));
        assert_eq!(active.get(1).unwrap().canary_bps.get(), 5000);
    }

    #[test]
    fn a_table_put_in_force_directly_is_not_decoded_again() {
        let ds = deployments();
        let mut active = ActiveSplits::from_static(&ds);
        active.apply(&ds, decoded(3, 2500));
        // Its own value (or another worker's of the same epoch) under a new
        // CAS: the prefix says epoch 3, which is in force already. The JSON
        // behind it is deliberately broken: it must not be read.
        let mut own = 3u64.to_le_bytes().to_vec();
        own.extend_from_slice(b"{never decoded");
        assert!(matches!(
            active.observe(&ds, Some(1), || Some(&own)),
            Observed::Unchanged
        ));
        assert_eq!(active.get(1).unwrap().canary_bps.get(), 2500);
        // Another epoch is decoded; a damaged one keeps the table in force.
        let mut damaged = 4u64.to_le_bytes().to_vec();
        damaged.extend_from_slice(b"{not json");
        assert!(matches!(
            active.observe(&ds, Some(2), || Some(&damaged)),
            Observed::Rejected(_)
        ));
        assert_eq!(active.epoch(), Some(3));
        let t4 = table(4, 7500);
        assert!(matches!(
            active.observe(&ds, Some(3), || Some(&t4)),
            Observed::Updated { epoch: 4 }
        ));
        assert_eq!(active.get(1).unwrap().canary_bps.get(), 7500);
    }
}
