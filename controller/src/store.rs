//! Persistence: the deployments, their version registries, the split table
//! epoch and the append-only event log.
//!
//! A [`Store`] commits a transition (new state + its events + epoch) as one
//! transaction: either all of it is durable or none. SQLite is the default
//! implementation (`store/sqlite.rs`).
//!
//! Webhook receivers read the events to deliver from here, each from its
//! own cursor (the last event it acknowledged), so what is stored is
//! delivered even across a restart.
//!
//! A store several controllers share (PostgreSQL, `store/postgres.rs`)
//! also holds the leadership: a lease with a fencing term. Only the
//! replica holding the lease may write; every write checks the term, so a
//! replica paused past its lease cannot write once another has taken over
//! ([`StoreError::Fenced`]). A store of one process (SQLite) always leads.

use coalmine_decide::engine::{Deployment, Event, EventKind, Millis, Version};

pub use coalmine_client::types::StoredEvent;

mod postgres;
mod sqlite;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// Opens the store `db` names: a `postgres://` (or `postgresql://`) URL,
/// else a SQLite file (created if missing).
pub async fn open(db: &str) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    if db.starts_with("postgres://") || db.starts_with("postgresql://") {
        Ok(std::sync::Arc::new(PgStore::connect(db).await?))
    } else {
        Ok(std::sync::Arc::new(
            SqliteStore::open(std::path::Path::new(db)).await?,
        ))
    }
}

/// A replica's claim to lead: who it is, where it is reached, and the
/// term it holds (0: none).
#[derive(Debug, Clone)]
pub struct Claim {
    /// Unique to this process (two replicas never share it).
    pub holder: String,
    /// The URL operators and proxies reach this replica at.
    pub url: String,
    /// The term this replica holds, if it leads (0 otherwise).
    pub term: u64,
    pub lease_ms: u64,
}

/// Who leads, as the store says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    pub holder: String,
    pub url: String,
    /// The fencing term: it grows by one with every change of leader.
    pub term: u64,
    /// How long the lease has left, on the database's clock (0: expired).
    pub expires_in_ms: u64,
}

/// Everything the controller needs at start.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub deployments: Vec<Deployment>,
    pub epoch: u64,
}

/// One transition to persist.
#[derive(Debug)]
pub struct Commit<'a> {
    pub deployment: &'a Deployment,
    pub events: &'a [Event],
    /// The split table epoch after this commit.
    pub epoch: u64,
    pub at: Millis,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be read or written (locked, read-only, gone).
    #[error("the database is unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("stored data does not decode: {0}")]
    Corrupt(String),
    /// A commit that did not return in time (a stuck disk).
    #[error("the database did not answer within {0:?}")]
    TimedOut(std::time::Duration),
    /// This replica no longer holds the lease (another leads, or its
    /// lease ran out): nothing was written.
    #[error("this controller does not hold the leader's lease (term {0}); nothing was written")]
    Fenced(u64),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Unavailable(e)
    }
}

#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Every deployment with its registry, and the epoch.
    async fn load(&self) -> Result<Snapshot, StoreError>;
    /// Persists a transition atomically; returns the events as stored.
    async fn commit(&self, commit: Commit<'_>) -> Result<Vec<StoredEvent>, StoreError>;
    /// A deployment's events with an id above `since`, oldest first.
    async fn events(
        &self,
        deployment: &str,
        since: i64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError>;
    /// Removes `deployment`'s events with ids up to `through` (retention:
    /// only the oldest, only once archived); returns how many.
    async fn prune_events(&self, deployment: &str, through: i64) -> Result<u64, StoreError>;
    /// How many events `deployment` has, and the id of the oldest.
    async fn event_count(&self, deployment: &str) -> Result<(u64, Option<i64>), StoreError>;
    /// The database's size on disk, if it has one.
    async fn size_bytes(&self) -> Option<u64> {
        None
    }
    /// A deployment's newest events (below `before`, if given), newest first.
    async fn latest_events(
        &self,
        deployment: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError>;
    /// Events of these `kinds`, of every deployment, with an id above
    /// `after`, oldest first, at most `limit`.
    async fn notified_after(
        &self,
        after: i64,
        kinds: &[EventKind],
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError>;
    /// How many events of these `kinds` have an id above `after`.
    async fn count_notified_after(
        &self,
        after: i64,
        kinds: &[EventKind],
    ) -> Result<u64, StoreError>;
    /// The id of the newest event (0 before the first).
    async fn newest_event_id(&self) -> Result<i64, StoreError>;
    /// The id of the last event the webhook receiver with this `key` (a
    /// hash of its URL) acknowledged; `None` for a receiver never seen.
    async fn webhook_cursor(&self, key: &str) -> Result<Option<i64>, StoreError>;
    /// Records that the receiver with this `key` acknowledged every
    /// notified event up to `id`.
    async fn set_webhook_cursor(&self, key: &str, id: i64) -> Result<(), StoreError>;
    /// Whether several controllers may share this store (and so take
    /// turns leading).
    fn shared(&self) -> bool {
        false
    }
    /// Takes or renews the lease for `claim`, if it is free, expired or
    /// already `claim`'s; returns who leads now. Writes are accepted from
    /// now on only with the term returned, when it is `claim`'s.
    async fn lead(&self, claim: &Claim) -> Result<Leader, StoreError> {
        Ok(Leader {
            holder: claim.holder.clone(),
            url: claim.url.clone(),
            term: claim.term,
            expires_in_ms: claim.lease_ms,
        })
    }
    /// Whether this store's writes are accepted (it holds a lease that has
    /// not been taken over).
    fn leads(&self) -> bool {
        true
    }
    /// Gives the lease up now (a clean shutdown), so another replica takes
    /// over at once.
    async fn resign(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

pub(crate) fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A version as a row stores it (state and metadata as text).
pub(crate) fn version_of(
    version: String,
    cluster: String,
    state: String,
    healthy: bool,
    pinned: bool,
    metadata: String,
    registered_at: i64,
) -> Result<Version, StoreError> {
    Ok(Version {
        version,
        cluster,
        state: serde_json::from_value(serde_json::Value::String(state))
            .map_err(|e| corrupt("version state", e))?,
        healthy,
        pinned,
        metadata: serde_json::from_str(&metadata).map_err(|e| corrupt("version metadata", e))?,
        registered_at: to_u64(registered_at),
    })
}

/// An event as a row stores it (kind and numbers as text).
pub(crate) fn event_of(
    id: i64,
    deployment: String,
    at: i64,
    kind: String,
    actor: String,
    reason: String,
    numbers: String,
) -> Result<StoredEvent, StoreError> {
    Ok(StoredEvent {
        id,
        deployment,
        at: to_u64(at),
        event: Event {
            kind: serde_json::from_value(serde_json::Value::String(kind))
                .map_err(|e| corrupt("event kind", e))?,
            actor,
            reason,
            numbers: serde_json::from_str(&numbers).map_err(|e| corrupt("event numbers", e))?,
        },
    })
}
