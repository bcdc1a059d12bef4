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

use coalmine_decide::engine::{Deployment, Event, EventKind, Millis};

pub use coalmine_client::types::StoredEvent;

mod sqlite;
pub use sqlite::SqliteStore;

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
}
