//! The controller's own health in `/metrics`: its store, its evaluations,
//! its connections and what it refuses.

use super::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct RoleLabel {
    pub(super) role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ReasonLabel {
    pub(super) reason: String,
}

/// Why part of a sync report was not counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// A deployment the controller does not have.
    UnknownDeployment,
    /// A version the deployment has not registered.
    UnknownVersion,
    /// A shadow report of a version that is not the deployment's shadow
    /// (stopped or replaced since the proxy made the copies).
    NotShadow,
    /// A shadow report that does not check out (e.g. more agreed than
    /// compared, counts the latency histogram does not hold): dropped
    /// alone, the call's role reports are counted.
    BadShadowReport,
    /// The instance table was full; the oldest instance was forgotten.
    InstanceEvicted,
    /// A report far above its proxy's usual volume (`service/volume.rs`).
    OverVolumeCap,
}

impl Metrics {
    /// The controller's own health: its store, its evaluations, its
    /// connections and what it refuses.
    pub(super) fn register_runtime(&self, registry: &mut Registry) {
        registry.register(
            "store_errors",
            "Database writes that failed or timed out",
            self.store_errors.clone(),
        );
        registry.register(
            "unstored_changes",
            "Changes in effect (lowered canary shares) whose events wait for the database",
            self.unstored.clone(),
        );
        registry.register(
            "last_evaluation_timestamp_seconds",
            "When the evaluation loop last completed (controller time, seconds since the UNIX epoch)",
            self.last_evaluation.clone(),
        );
        registry.register(
            "held_syncs",
            "Sync calls held open until the split table changes",
            self.held_syncs.clone(),
        );
        registry.register(
            "open_connections",
            "Client connections open to the API",
            self.open_connections.clone(),
        );
        registry.register(
            "refused_connections",
            "Connections closed at once because the connection limit was reached",
            self.refused_connections.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "Connections closed because their TLS handshake failed (error: not TLS, or a client that does not trust the certificate) or was not done within the header timeout (timeout)",
            self.tls_handshake_failures.clone(),
        );
        registry.register(
            "dropped_reports",
            "Parts of sync reports not counted, by reason",
            self.dropped_reports.clone(),
        );
        registry.register(
            "auth_failures",
            "Calls with a wrong token, by the role it was presented for (missing tokens are not counted)",
            self.auth_failures.clone(),
        );
        registry.register(
            "auth_rate_limited",
            "Calls answered 429: their address presented too many wrong tokens in the window",
            self.auth_limited.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica leads (always, on SQLite), 0 while it follows",
            self.leader.clone(),
        );
        registry.register(
            "leader_term",
            "The fencing term of the lease this replica last held or saw",
            self.leader_term.clone(),
        );
        registry.register(
            "takeovers",
            "Times this replica took the lead and loaded the state from the database",
            self.takeovers.clone(),
        );
        registry.register(
            "database_size_bytes",
            "The database's size on disk",
            self.database_bytes.clone(),
        );
    }

    pub fn store_error(&self) {
        self.store_errors.inc();
    }

    pub fn unstored_changes(&self, n: usize) {
        self.unstored.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The evaluation loop completed at `now` (ms).
    pub fn evaluated(&self, now: u64) {
        self.last_evaluation.set(now as f64 / 1000.0);
    }

    /// A sync call starts (`true`) or stops (`false`) being held.
    pub fn held_sync(&self, held: bool) {
        if held {
            self.held_syncs.inc();
        } else {
            self.held_syncs.dec();
        }
    }

    /// A connection opens (`true`) or closes (`false`).
    pub fn connection(&self, open: bool) {
        if open {
            self.open_connections.inc();
        } else {
            self.open_connections.dec();
        }
    }

    pub fn connection_refused(&self) {
        self.refused_connections.inc();
    }

    /// A TLS handshake failed, or (`timed_out`) did not end in time.
    pub fn tls_handshake_failed(&self, timed_out: bool) {
        let reason = if timed_out { "timeout" } else { "error" };
        self.tls_handshake_failures
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn dropped(&self, why: Dropped, n: u64) {
        let reason = match why {
            Dropped::UnknownDeployment => "unknown_deployment",
            Dropped::UnknownVersion => "unknown_version",
            Dropped::NotShadow => "not_shadow",
            Dropped::BadShadowReport => "bad_shadow_report",
            Dropped::InstanceEvicted => "instance_evicted",
            Dropped::OverVolumeCap => "over_volume_cap",
        };
        self.dropped_reports
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc_by(n);
    }

    /// This replica leads (`true`) or follows, at `term`.
    pub fn leadership(&self, leads: bool, term: u64) {
        self.leader.set(i64::from(leads));
        self.leader_term
            .set(i64::try_from(term).unwrap_or(i64::MAX));
    }

    pub fn auth_failure(&self, role: &str) {
        self.auth_failures
            .get_or_create(&RoleLabel { role: role.into() })
            .inc();
    }

    pub fn auth_limited(&self) {
        self.auth_limited.inc();
    }

    pub fn took_over(&self) {
        self.takeovers.inc();
    }

    pub fn database_size(&self, bytes: u64) {
        self.database_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
}
