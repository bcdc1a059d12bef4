//! The controller's lease as one worker sees it.
//!
//! A successful sync (of any worker of the proxy) renews the lease in shared
//! data; until the first one, the lease counts from the worker's start. When
//! it runs out, every deployment routes to its baseline only, until a sync
//! succeeds again. Each worker flips its own fail-safe, but only one worker
//! per proxy speaks for the transition: the one that wins a compare-and-swap
//! on the lease state in shared data.

use crate::shared::{LEASE_EXPIRED, LEASE_OK};

/// One worker's view of the lease.
#[derive(Debug, Clone)]
pub struct Lease {
    started_ms: u64,
    lease_ms: u64,
    expired: bool,
}

/// The worker's fail-safe flips.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseChange {
    /// No successful sync for the lease: baseline only from now on.
    Expired,
    /// A sync succeeded again: the controller's splits are back in force.
    Renewed,
}

impl Lease {
    pub fn new(started_ms: u64, lease_ms: u64) -> Lease {
        Lease {
            started_ms,
            lease_ms,
            expired: false,
        }
    }

    pub fn expired(&self) -> bool {
        self.expired
    }

    /// Takes in the lease at `now_ms`: `renewed_until_ms` is what the last
    /// successful sync of any worker granted (none yet: the lease counts
    /// from the worker's start). A change when the fail-safe flips.
    pub fn observe(&mut self, now_ms: u64, renewed_until_ms: Option<u64>) -> Option<LeaseChange> {
        let until =
            renewed_until_ms.unwrap_or_else(|| self.started_ms.saturating_add(self.lease_ms));
        let expired = now_ms > until;
        if expired == self.expired {
            return None;
        }
        self.expired = expired;
        Some(if expired {
            LeaseChange::Expired
        } else {
            LeaseChange::Renewed
        })
    }
}

impl LeaseChange {
    pub fn expired(self) -> bool {
        self == LeaseChange::Expired
    }

    /// What this worker writes to the proxy's lease state (with
    /// compare-and-swap against `stored`) to speak for the transition, or
    /// `None` when there is nothing to say: another worker said it already,
    /// or the lease is renewed without ever having been reported expired.
    /// The worker that wins the swap logs the transition.
    pub fn claim(self, stored: Option<&[u8]>) -> Option<&'static [u8]> {
        let state = if self.expired() {
            LEASE_EXPIRED
        } else {
            LEASE_OK
        };
        (stored != Some(state) && (stored.is_some() || self.expired())).then_some(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_runs_from_start_then_from_each_renewal() {
        let mut lease = Lease::new(0, 30_000);
        assert_eq!(lease.observe(1_000, None), None);
        assert_eq!(lease.observe(30_000, None), None);
        assert_eq!(lease.observe(30_001, None), Some(LeaseChange::Expired));
        assert!(lease.expired());
        // Still expired: no second transition.
        assert_eq!(lease.observe(35_000, None), None);
        assert_eq!(
            lease.observe(40_000, Some(45_000)),
            Some(LeaseChange::Renewed)
        );
        assert_eq!(lease.observe(45_000, Some(45_000)), None);
        assert_eq!(
            lease.observe(45_001, Some(45_000)),
            Some(LeaseChange::Expired)
        );
    }

    #[test]
    fn one_worker_per_proxy_speaks_for_a_transition() {
        use LeaseChange::{Expired, Renewed};
        // The first worker to see the expiry says so; the others find it said.
        assert_eq!(Expired.claim(None), Some(LEASE_EXPIRED));
        assert_eq!(Expired.claim(Some(LEASE_OK)), Some(LEASE_EXPIRED));
        assert_eq!(Expired.claim(Some(LEASE_EXPIRED)), None);
        // A renewal is news only after an expiry was reported.
        assert_eq!(Renewed.claim(Some(LEASE_EXPIRED)), Some(LEASE_OK));
        assert_eq!(Renewed.claim(Some(LEASE_OK)), None);
        assert_eq!(Renewed.claim(None), None);
        assert!(Expired.expired() && !Renewed.expired());
    }
}
