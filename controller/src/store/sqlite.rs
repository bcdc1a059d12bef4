//! The SQLite store: one file, WAL, full sync, migrations embedded.

use super::{
    Commit, Snapshot, Store, StoreError, StoredEvent, corrupt, event_of, to_i64, to_u64, version_of,
};
use coalmine_decide::engine::{Deployment, EventKind};
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// The one writer (writes are serialised by the service anyway).
    pool: SqlitePool,
    /// Readers for what anyone may ask (events): with WAL they never wait
    /// for the writer, and the writer never waits for them.
    reader: SqlitePool,
}

/// Read-only connections for the API's reads.
const READERS: u32 = 4;

impl SqliteStore {
    /// Opens (creating if needed) the database file and migrates it.
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(2));
        let store = Self::with_options(options.clone()).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .acquire_timeout(Duration::from_secs(3))
            .connect_with(options.read_only(true))
            .await?;
        Ok(SqliteStore { reader, ..store })
    }

    /// A private in-memory database (tests).
    pub async fn in_memory() -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")?.foreign_keys(true);
        Self::with_options(options).await
    }

    async fn with_options(options: SqliteConnectOptions) -> Result<SqliteStore, StoreError> {
        // One connection: writes are serialised by the service anyway, and an
        // in-memory database lives in its connection.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(3))
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Unavailable(e.into()))?;
        // In memory the database lives in its one connection: it reads too.
        Ok(SqliteStore {
            reader: pool.clone(),
            pool,
        })
    }
}

fn event_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<StoredEvent, StoreError> {
    event_of(
        row.try_get("id")?,
        row.try_get("deployment")?,
        row.try_get("at")?,
        row.try_get("kind")?,
        row.try_get("actor")?,
        row.try_get("reason")?,
        row.try_get("numbers")?,
    )
}

/// `?, ?, …`: one placeholder per kind.
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn load(&self) -> Result<Snapshot, StoreError> {
        let epoch: i64 = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'epoch'")
            .fetch_one(&self.pool)
            .await?;
        let rows = sqlx::query("SELECT name, state FROM deployments ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        let mut deployments = Vec::with_capacity(rows.len());
        for row in rows {
            let name: String = row.try_get("name")?;
            let state: String = row.try_get("state")?;
            let mut d: Deployment = serde_json::from_str(&state)
                .map_err(|e| corrupt(&format!("deployment {name}"), e))?;
            let versions = sqlx::query(
                "SELECT version, cluster, state, healthy, pinned, metadata, registered_at
                 FROM versions WHERE deployment = ? ORDER BY registered_at, version",
            )
            .bind(&name)
            .fetch_all(&self.pool)
            .await?;
            for v in versions {
                d.versions.push(version_of(
                    v.try_get("version")?,
                    v.try_get("cluster")?,
                    v.try_get("state")?,
                    v.try_get("healthy")?,
                    v.try_get("pinned")?,
                    v.try_get("metadata")?,
                    v.try_get("registered_at")?,
                )?);
            }
            deployments.push(d);
        }
        Ok(Snapshot {
            deployments,
            epoch: to_u64(epoch),
        })
    }

    async fn commit(&self, c: Commit<'_>) -> Result<Vec<StoredEvent>, StoreError> {
        let d = c.deployment;
        let state = serde_json::to_string(d).map_err(|e| corrupt("deployment", e))?;
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO deployments (name, state, created_at, updated_at) VALUES (?, ?, ?, ?)
             ON CONFLICT (name) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
        )
        .bind(&d.name)
        .bind(&state)
        .bind(to_i64(d.created_at))
        .bind(to_i64(c.at))
        .execute(&mut *tx)
        .await?;
        for v in &d.versions {
            let state = serde_json::to_value(v.state).map_err(|e| corrupt("version state", e))?;
            sqlx::query(
                "INSERT INTO versions (deployment, version, cluster, state, healthy, pinned, metadata, registered_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (deployment, version) DO UPDATE SET
                   state = excluded.state, healthy = excluded.healthy, pinned = excluded.pinned",
            )
            .bind(&d.name)
            .bind(&v.version)
            .bind(&v.cluster)
            .bind(state.as_str().unwrap_or_default())
            .bind(v.healthy)
            .bind(v.pinned)
            .bind(v.metadata.to_string())
            .bind(to_i64(v.registered_at))
            .execute(&mut *tx)
            .await?;
        }
        let mut stored = Vec::with_capacity(c.events.len());
        for e in c.events {
            let numbers =
                serde_json::to_string(&e.numbers).map_err(|e| corrupt("event numbers", e))?;
            let id = sqlx::query(
                "INSERT INTO events (deployment, at, kind, actor, reason, numbers) VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(&d.name)
            .bind(to_i64(c.at))
            .bind(e.kind.as_str())
            .bind(&e.actor)
            .bind(&e.reason)
            .bind(numbers)
            .execute(&mut *tx)
            .await?
            .last_insert_rowid();
            stored.push(StoredEvent {
                id,
                deployment: d.name.clone(),
                at: c.at,
                event: e.clone(),
            });
        }
        sqlx::query("UPDATE meta SET value = ? WHERE key = 'epoch'")
            .bind(to_i64(c.epoch))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn events(
        &self,
        deployment: &str,
        since: i64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, deployment, at, kind, actor, reason, numbers FROM events
             WHERE deployment = ? AND id > ? ORDER BY id LIMIT ?",
        )
        .bind(deployment)
        .bind(since)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn prune_events(&self, deployment: &str, through: i64) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE meta SET value = ? WHERE key = 'prunable_through'")
            .bind(through)
            .execute(&mut *tx)
            .await?;
        let removed = sqlx::query("DELETE FROM events WHERE deployment = ? AND id <= ?")
            .bind(deployment)
            .bind(through)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("UPDATE meta SET value = 0 WHERE key = 'prunable_through'")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(removed)
    }

    async fn event_count(&self, deployment: &str) -> Result<(u64, Option<i64>), StoreError> {
        let (n, oldest): (i64, Option<i64>) =
            sqlx::query_as("SELECT COUNT(*), MIN(id) FROM events WHERE deployment = ?")
                .bind(deployment)
                .fetch_one(&self.reader)
                .await?;
        Ok((to_u64(n), oldest))
    }

    async fn size_bytes(&self) -> Option<u64> {
        sqlx::query_scalar::<_, i64>(
            "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
        )
        .fetch_one(&self.reader)
        .await
        .ok()
        .map(to_u64)
    }

    async fn latest_events(
        &self,
        deployment: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, deployment, at, kind, actor, reason, numbers FROM events
             WHERE deployment = ? AND id < ? ORDER BY id DESC LIMIT ?",
        )
        .bind(deployment)
        .bind(before.unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn notified_after(
        &self,
        after: i64,
        kinds: &[EventKind],
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let sql = format!(
            "SELECT id, deployment, at, kind, actor, reason, numbers FROM events
             WHERE id > ? AND kind IN ({}) ORDER BY id LIMIT ?",
            placeholders(kinds.len())
        );
        let mut query = sqlx::query(&sql).bind(after);
        for k in kinds {
            query = query.bind(k.as_str());
        }
        let rows = query.bind(i64::from(limit)).fetch_all(&self.pool).await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn count_notified_after(
        &self,
        after: i64,
        kinds: &[EventKind],
    ) -> Result<u64, StoreError> {
        let sql = format!(
            "SELECT COUNT(*) FROM events WHERE id > ? AND kind IN ({})",
            placeholders(kinds.len())
        );
        let mut query = sqlx::query_scalar::<_, i64>(&sql).bind(after);
        for k in kinds {
            query = query.bind(k.as_str());
        }
        Ok(to_u64(query.fetch_one(&self.pool).await?))
    }

    async fn newest_event_id(&self) -> Result<i64, StoreError> {
        let id: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM events")
            .fetch_one(&self.pool)
            .await?;
        Ok(id.unwrap_or(0))
    }

    async fn webhook_cursor(&self, key: &str) -> Result<Option<i64>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT last_event_id FROM webhook_cursors WHERE receiver = ?")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn set_webhook_cursor(&self, key: &str, id: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO webhook_cursors (receiver, last_event_id) VALUES (?, ?)
             ON CONFLICT (receiver) DO UPDATE
               SET last_event_id = max(webhook_cursors.last_event_id, excluded.last_event_id)",
        )
        .bind(key)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
