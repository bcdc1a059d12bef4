//! The SQLite store: one file, WAL, full sync, migrations embedded.

use super::{Commit, Snapshot, Store, StoreError, StoredEvent};
use coalmine_decide::engine::{Deployment, Event, EventKind, Version};
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

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

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
    let kind: String = row.try_get("kind")?;
    let numbers: String = row.try_get("numbers")?;
    Ok(StoredEvent {
        id: row.try_get("id")?,
        deployment: row.try_get("deployment")?,
        at: to_u64(row.try_get("at")?),
        event: Event {
            kind: serde_json::from_value(serde_json::Value::String(kind))
                .map_err(|e| corrupt("event kind", e))?,
            actor: row.try_get("actor")?,
            reason: row.try_get("reason")?,
            numbers: serde_json::from_str(&numbers).map_err(|e| corrupt("event numbers", e))?,
        },
    })
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
                let state: String = v.try_get("state")?;
                let metadata: String = v.try_get("metadata")?;
                d.versions.push(Version {
                    version: v.try_get("version")?,
                    cluster: v.try_get("cluster")?,
                    state: serde_json::from_value(serde_json::Value::String(state))
                        .map_err(|e| corrupt("version state", e))?,
                    healthy: v.try_get("healthy")?,
                    pinned: v.try_get("pinned")?,
                    metadata: serde_json::from_str(&metadata)
                        .map_err(|e| corrupt("version metadata", e))?,
                    registered_at: to_u64(v.try_get("registered_at")?),
                });
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
             ON CONFLICT (receiver) DO UPDATE SET last_event_id = excluded.last_event_id",
        )
        .bind(key)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coalmine_decide::engine::{self, Command, OPERATOR};
    use coalmine_decide::policy::Policy;
    use coalmine_protocol::Target;
    use serde_json::json;

    fn target(v: &str) -> Target {
        Target {
            version: v.into(),
            cluster: format!("heart-{v}"),
        }
    }

    #[tokio::test]
    async fn commits_load_back_and_history_is_append_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let t = engine::create(
            "heart-prod",
            target("v1"),
            Policy::default(),
            OPERATOR,
            1000,
        )
        .unwrap();
        let stored = store
            .commit(Commit {
                deployment: &t.deployment,
                events: &t.events,
                epoch: 1,
                at: 1000,
            })
            .await
            .unwrap();
        assert_eq!(stored.len(), 2);
        let reg = Command::RegisterVersion {
            version: "v2".into(),
            cluster: "heart-v2".into(),
            metadata: json!({"accuracy": 0.71}),
        };
        let t2 = engine::command(&t.deployment, reg, OPERATOR, 2000).unwrap();
        store
            .commit(Commit {
                deployment: &t2.deployment,
                events: &t2.events,
                epoch: 2,
                at: 2000,
            })
            .await
            .unwrap();
        drop(store);

        let store = SqliteStore::open(&path).await.unwrap();
        let snap = store.load().await.unwrap();
        assert_eq!(snap.epoch, 2);
        assert_eq!(snap.deployments, vec![t2.deployment.clone()]);
        let events = store.events("heart-prod", 0, 100).await.unwrap();
        let kinds: Vec<_> = events.iter().map(|e| e.event.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "deployment_created",
                "version_registered",
                "version_registered"
            ]
        );
        assert_eq!(events[2].event.numbers["metadata"]["accuracy"], json!(0.71));
        assert_eq!(
            store
                .events("heart-prod", events[1].id, 100)
                .await
                .unwrap()
                .len(),
            1
        );

        for sql in [
            "UPDATE events SET reason = 'rewritten'",
            "DELETE FROM events",
        ] {
            let err = sqlx::query(sql).execute(&store.pool).await.unwrap_err();
            assert!(err.to_string().contains("append-only"), "{err}");
        }
        assert_eq!(store.events("heart-prod", 0, 100).await.unwrap().len(), 3);

        // Retention removes the oldest, and nothing else; afterwards the
        // log refuses DELETE again.
        assert_eq!(
            store
                .prune_events("heart-prod", events[1].id)
                .await
                .unwrap(),
            2
        );
        assert_eq!(
            store.event_count("heart-prod").await.unwrap(),
            (1, Some(events[2].id))
        );
        let err = sqlx::query("DELETE FROM events")
            .execute(&store.pool)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("append-only"), "{err}");
    }
}

#[cfg(test)]
mod webhook_tests {
    use super::*;
    use crate::notify::NOTIFIED;
    use coalmine_decide::engine::{self, OPERATOR};
    use coalmine_decide::policy::Policy;
    use coalmine_protocol::Target;

    fn event(kind: EventKind) -> Event {
        Event {
            kind,
            actor: OPERATOR.into(),
            reason: "test".into(),
            numbers: serde_json::Map::new(),
        }
    }

    #[tokio::test]
    async fn notified_events_are_read_by_id_and_cursors_persist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let store = SqliteStore::open(&path).await.unwrap();
        assert_eq!(store.newest_event_id().await.unwrap(), 0);
        let target = Target {
            version: "v1".into(),
            cluster: "heart-v1".into(),
        };
        let t = engine::create("heart-prod", target, Policy::default(), OPERATOR, 1000).unwrap();
        let kinds = [
            EventKind::RolledBack,
            EventKind::Paused,
            EventKind::Promoted,
            EventKind::HealthDegraded,
        ];
        for (at, events) in [(1000, t.events.clone()), (2000, kinds.map(event).to_vec())] {
            store
                .commit(Commit {
                    deployment: &t.deployment,
                    events: &events,
                    epoch: 1,
                    at,
                })
                .await
                .unwrap();
        }
        // deployment_created, version_registered, then ids 3 to 6.
        assert_eq!(store.newest_event_id().await.unwrap(), 6);
        let ids = |events: Vec<StoredEvent>| events.iter().map(|e| e.id).collect::<Vec<_>>();
        let all = store.notified_after(0, &NOTIFIED, 100).await.unwrap();
        assert_eq!(ids(all.clone()), [3, 5, 6]);
        assert_eq!(all[0].event.kind, EventKind::RolledBack);
        assert_eq!(all[2].deployment, "heart-prod");
        let after_3 = store.notified_after(3, &NOTIFIED, 100).await.unwrap();
        assert_eq!(ids(after_3), [5, 6]);
        assert_eq!(
            ids(store.notified_after(0, &NOTIFIED, 1).await.unwrap()),
            [3]
        );
        let only_promotions = [EventKind::Promoted];
        assert_eq!(
            ids(store
                .notified_after(0, &only_promotions, 100)
                .await
                .unwrap()),
            [5]
        );
        for (after, waiting) in [(0, 3), (3, 2), (5, 1), (6, 0)] {
            assert_eq!(
                store.count_notified_after(after, &NOTIFIED).await.unwrap(),
                waiting
            );
        }

        // A receiver's key: the SHA-256 of its URL, in hex.
        let key = format!("{:064x}", 0xfeed_u32);
        assert_eq!(store.webhook_cursor(&key).await.unwrap(), None);
        store.set_webhook_cursor(&key, 3).await.unwrap();
        store.set_webhook_cursor(&key, 5).await.unwrap();
        assert_eq!(store.webhook_cursor(&key).await.unwrap(), Some(5));
        // Only hashes are keys: a URL is refused by the table itself.
        assert!(
            store
                .set_webhook_cursor("https://hooks.example/SECRET", 1)
                .await
                .is_err()
        );
        drop(store);

        let store = SqliteStore::open(&path).await.unwrap();
        assert_eq!(store.webhook_cursor(&key).await.unwrap(), Some(5));
    }
}
