//! The PostgreSQL store: the same tables as SQLite (its own migrations,
//! `migrations-postgres/`), shared by several controllers, one of which
//! leads.
//!
//! Leadership is a lease row on the database's clock with a fencing term
//! (DESIGN.md, "High availability on PostgreSQL"). [`Store::lead`] takes
//! the lease when it is free or expired (the term grows by one) or renews
//! it for its holder. Every write transaction starts by reading the lease
//! row `FOR SHARE` with the term this store was given: a replica that lost
//! the lease (paused past it, then overtaken) writes nothing, and a
//! takeover waits for a write in progress to end, so no write lands after
//! it. Sessions idle inside a transaction are ended by the server, so a
//! paused replica cannot hold the row and block the takeover.
//!
//! Event ids come from a counter row updated in the writing transaction,
//! not a sequence: a transaction that rolls back gives its ids back, so the
//! timeline's ids stay contiguous.

use super::{
    Claim, Commit, Leader, Snapshot, Store, StoreError, StoredEvent, corrupt, event_of, to_i64,
    to_u64, version_of,
};
use coalmine_decide::engine::{Deployment, EventKind};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Connections per controller: the writer, the lease, webhooks and reads.
const CONNECTIONS: u32 = 8;
/// A session idle inside a transaction this long is ended by the server
/// (and its locks released): a paused controller cannot hold the lease
/// row. Far longer than any transaction of ours takes between statements.
const IDLE_IN_TRANSACTION_MS: u64 = 2_000;
/// A statement that waits this long for a lock gives up (the lease's
/// renewal behind a stuck transaction, say) and is tried again later.
const LOCK_TIMEOUT_MS: u64 = 2_000;

#[derive(Debug)]
pub struct PgStore {
    pool: PgPool,
    /// The term this store's writes carry (0: it does not lead).
    term: AtomicU64,
}

impl PgStore {
    /// Connects to `url` (`postgres://user:password@host:port/database`)
    /// and migrates the database (several controllers may start at once:
    /// migrations take a lock).
    pub async fn connect(url: &str) -> Result<PgStore, StoreError> {
        let options = PgConnectOptions::from_str(url)?
            .application_name("coalmine-controller")
            .options([
                (
                    "idle_in_transaction_session_timeout",
                    IDLE_IN_TRANSACTION_MS.to_string(),
                ),
                ("lock_timeout", LOCK_TIMEOUT_MS.to_string()),
            ]);
        let pool = PgPoolOptions::new()
            .max_connections(CONNECTIONS)
            .acquire_timeout(Duration::from_secs(3))
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations-postgres")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Unavailable(e.into()))?;
        Ok(PgStore {
            pool,
            term: AtomicU64::new(0),
        })
    }

    /// Begins a write: fails with [`StoreError::Fenced`] unless this store
    /// holds the lease, unexpired, with its term; the lease row stays
    /// locked against a takeover until the transaction ends.
    async fn begin_fenced(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        let term = self.term.load(Ordering::SeqCst);
        let mut tx = self.pool.begin().await?;
        let held: Option<i64> = sqlx::query_scalar(
            "SELECT term FROM leader
             WHERE id = 1 AND term = $1 AND term > 0 AND expires_at > clock_timestamp()
             FOR SHARE",
        )
        .bind(to_i64(term))
        .fetch_optional(&mut *tx)
        .await?;
        if held.is_none() {
            return Err(StoreError::Fenced(term));
        }
        Ok(tx)
    }
}

fn event_from_row(row: &PgRow) -> Result<StoredEvent, StoreError> {
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

fn kind_names(kinds: &[EventKind]) -> Vec<String> {
    kinds.iter().map(|k| k.as_str().to_string()).collect()
}

#[async_trait::async_trait]
impl Store for PgStore {
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
                 FROM versions WHERE deployment = $1 ORDER BY registered_at, version",
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
        let mut tx = self.begin_fenced().await?;
        sqlx::query(
            "INSERT INTO deployments (name, state, created_at, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO UPDATE SET state = EXCLUDED.state, updated_at = EXCLUDED.updated_at",
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
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (deployment, version) DO UPDATE SET
                   state = EXCLUDED.state, healthy = EXCLUDED.healthy, pinned = EXCLUDED.pinned",
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
        if !c.events.is_empty() {
            let n = i64::try_from(c.events.len()).unwrap_or(i64::MAX);
            let last: i64 = sqlx::query_scalar(
                "UPDATE meta SET value = value + $1 WHERE key = 'event_id' RETURNING value",
            )
            .bind(n)
            .fetch_one(&mut *tx)
            .await?;
            for (id, e) in (last - n + 1..).zip(c.events) {
                let numbers =
                    serde_json::to_string(&e.numbers).map_err(|e| corrupt("event numbers", e))?;
                sqlx::query(
                    "INSERT INTO events (id, deployment, at, kind, actor, reason, numbers)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(id)
                .bind(&d.name)
                .bind(to_i64(c.at))
                .bind(e.kind.as_str())
                .bind(&e.actor)
                .bind(&e.reason)
                .bind(numbers)
                .execute(&mut *tx)
                .await?;
                stored.push(StoredEvent {
                    id,
                    deployment: d.name.clone(),
                    at: c.at,
                    event: e.clone(),
                });
            }
        }
        sqlx::query("UPDATE meta SET value = $1 WHERE key = 'epoch'")
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
             WHERE deployment = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(deployment)
        .bind(since)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn prune_events(&self, deployment: &str, through: i64) -> Result<u64, StoreError> {
        let mut tx = self.begin_fenced().await?;
        sqlx::query("UPDATE meta SET value = $1 WHERE key = 'prunable_through'")
            .bind(through)
            .execute(&mut *tx)
            .await?;
        let removed = sqlx::query("DELETE FROM events WHERE deployment = $1 AND id <= $2")
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
            sqlx::query_as("SELECT COUNT(*), MIN(id) FROM events WHERE deployment = $1")
                .bind(deployment)
                .fetch_one(&self.pool)
                .await?;
        Ok((to_u64(n), oldest))
    }

    async fn size_bytes(&self) -> Option<u64> {
        sqlx::query_scalar::<_, i64>("SELECT pg_database_size(current_database())")
            .fetch_one(&self.pool)
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
             WHERE deployment = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
        )
        .bind(deployment)
        .bind(before.unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn notified_after(
        &self,
        after: i64,
        kinds: &[EventKind],
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, deployment, at, kind, actor, reason, numbers FROM events
             WHERE id > $1 AND kind = ANY($2) ORDER BY id LIMIT $3",
        )
        .bind(after)
        .bind(kind_names(kinds))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn count_notified_after(
        &self,
        after: i64,
        kinds: &[EventKind],
    ) -> Result<u64, StoreError> {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE id > $1 AND kind = ANY($2)")
                .bind(after)
                .bind(kind_names(kinds))
                .fetch_one(&self.pool)
                .await?;
        Ok(to_u64(n))
    }

    async fn newest_event_id(&self) -> Result<i64, StoreError> {
        let id: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM events")
            .fetch_one(&self.pool)
            .await?;
        Ok(id.unwrap_or(0))
    }

    async fn webhook_cursor(&self, key: &str) -> Result<Option<i64>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT last_event_id FROM webhook_cursors WHERE receiver = $1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Not fenced, but a cursor only moves forward: a replica that lost the
    /// lease cannot make the leader deliver again what it delivered.
    async fn set_webhook_cursor(&self, key: &str, id: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO webhook_cursors (receiver, last_event_id) VALUES ($1, $2)
             ON CONFLICT (receiver) DO UPDATE
               SET last_event_id = GREATEST(webhook_cursors.last_event_id, EXCLUDED.last_event_id)",
        )
        .bind(key)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    fn shared(&self) -> bool {
        true
    }

    async fn lead(&self, claim: &Claim) -> Result<Leader, StoreError> {
        let taken: Option<i64> = sqlx::query_scalar(
            "UPDATE leader SET
               term = CASE WHEN holder = $1 AND term = $4 THEN term ELSE term + 1 END,
               holder = $1,
               url = $2,
               expires_at = clock_timestamp() + make_interval(secs => $3)
             WHERE id = 1 AND ((holder = $1 AND term = $4 AND term > 0) OR expires_at <= clock_timestamp())
             RETURNING term",
        )
        .bind(&claim.holder)
        .bind(&claim.url)
        .bind(claim.lease_ms as f64 / 1000.0)
        .bind(to_i64(claim.term))
        .fetch_optional(&self.pool)
        .await?;
        if let Some(term) = taken {
            self.term.store(to_u64(term), Ordering::SeqCst);
            return Ok(Leader {
                holder: claim.holder.clone(),
                url: claim.url.clone(),
                term: to_u64(term),
                expires_in_ms: claim.lease_ms,
            });
        }
        self.term.store(0, Ordering::SeqCst);
        let row = sqlx::query(
            "SELECT holder, url, term,
                    GREATEST(0, EXTRACT(EPOCH FROM expires_at - clock_timestamp()) * 1000)::BIGINT AS left_ms
             FROM leader WHERE id = 1",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(Leader {
            holder: row.try_get("holder")?,
            url: row.try_get("url")?,
            term: to_u64(row.try_get("term")?),
            expires_in_ms: to_u64(row.try_get("left_ms")?),
        })
    }

    fn leads(&self) -> bool {
        self.term.load(Ordering::SeqCst) > 0
    }

    async fn resign(&self) -> Result<(), StoreError> {
        let term = self.term.swap(0, Ordering::SeqCst);
        if term > 0 {
            sqlx::query(
                "UPDATE leader SET expires_at = '-infinity' WHERE id = 1 AND term = $1 AND expires_at > clock_timestamp()",
            )
            .bind(to_i64(term))
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }
}
