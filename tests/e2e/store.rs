//! One store test suite, run against both stores: SQLite (a file) and
//! PostgreSQL (a real server). Then what only a shared store does: the
//! leader's lease, fencing, and contiguous ids across refused writes.

use coalmine_controller::notify::NOTIFIED;
use coalmine_controller::store::{
    Claim, Commit, PgStore, SqliteStore, Store, StoreError, StoredEvent,
};
use coalmine_decide::engine::{self, Command, Event, EventKind, OPERATOR, Transition};
use coalmine_decide::policy::Policy;
use coalmine_e2e::Postgres;
use coalmine_protocol::Target;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// A store the suite opens, reopens, and writes raw SQL to.
enum Backend {
    Sqlite(tempfile::TempDir),
    Postgres(String),
}

impl Backend {
    fn sqlite() -> Backend {
        Backend::Sqlite(tempfile::tempdir().unwrap())
    }

    async fn postgres(pg: &Postgres, db: &str) -> Backend {
        Backend::Postgres(pg.database(db).unwrap())
    }

    /// Opens the store (as a new process would); on PostgreSQL it takes
    /// the lease, so it may write.
    async fn open(&self) -> Arc<dyn Store> {
        match self {
            Backend::Sqlite(dir) => {
                Arc::new(SqliteStore::open(&dir.path().join("c.db")).await.unwrap())
            }
            Backend::Postgres(url) => {
                let store = PgStore::connect(url).await.unwrap();
                let leader = store.lead(&claim("only", 0, 60_000)).await.unwrap();
                assert_eq!(leader.holder, "only");
                Arc::new(store)
            }
        }
    }

    /// Runs `sql` beside the store, as anyone with the database could.
    async fn raw(&self, sql: &str) -> Result<u64, sqlx::Error> {
        match self {
            Backend::Sqlite(dir) => {
                let url = format!("sqlite://{}", dir.path().join("c.db").display());
                let pool = sqlx::SqlitePool::connect(&url).await?;
                Ok(sqlx::query(sql).execute(&pool).await?.rows_affected())
            }
            Backend::Postgres(url) => {
                let pool = sqlx::PgPool::connect(url).await?;
                Ok(sqlx::query(sql).execute(&pool).await?.rows_affected())
            }
        }
    }
}

fn claim(holder: &str, term: u64, lease_ms: u64) -> Claim {
    Claim {
        holder: holder.into(),
        url: format!("http://{holder}.test:8700"),
        term,
        lease_ms,
    }
}

fn target(v: &str) -> Target {
    Target {
        version: v.into(),
        cluster: format!("heart-{v}"),
    }
}

fn event(kind: EventKind) -> Event {
    Event {
        kind,
        actor: OPERATOR.into(),
        reason: "test".into(),
        numbers: serde_json::Map::new(),
    }
}

async fn commit(
    store: &dyn Store,
    t: &Transition,
    epoch: u64,
    at: u64,
) -> Result<Vec<StoredEvent>, StoreError> {
    store
        .commit(Commit {
            deployment: &t.deployment,
            events: &t.events,
            epoch,
            at,
        })
        .await
}

fn created() -> Transition {
    engine::create(
        "heart-prod",
        target("v1"),
        Policy::default(),
        OPERATOR,
        1000,
    )
    .unwrap()
}

async fn commits_load_back_and_history_is_append_only_on(b: &Backend) {
    let store = b.open().await;
    let t = created();
    let stored = commit(store.as_ref(), &t, 1, 1000).await.unwrap();
    assert_eq!(stored.len(), 2);
    let reg = Command::RegisterVersion {
        version: "v2".into(),
        cluster: "heart-v2".into(),
        metadata: json!({"accuracy": 0.71}),
    };
    let t2 = engine::command(&t.deployment, reg, OPERATOR, 2000).unwrap();
    commit(store.as_ref(), &t2, 2, 2000).await.unwrap();
    store.resign().await.unwrap();
    drop(store);

    let store = b.open().await;
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
    let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
    assert_eq!(ids, [1, 2, 3], "ids are contiguous from 1");
    assert_eq!(events[2].event.numbers["metadata"]["accuracy"], json!(0.71));
    assert_eq!(
        store
            .events("heart-prod", events[1].id, 100)
            .await
            .unwrap()
            .len(),
        1
    );
    let newest_first: Vec<i64> = store
        .latest_events("heart-prod", None, 2)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(newest_first, [3, 2]);

    // The database itself refuses to change history.
    for sql in [
        "UPDATE events SET reason = 'rewritten'",
        "DELETE FROM events",
    ] {
        let err = b.raw(sql).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    if let Backend::Postgres(_) = b {
        let err = b.raw("TRUNCATE events").await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{err}");
    }
    assert_eq!(store.events("heart-prod", 0, 100).await.unwrap().len(), 3);

    // Retention removes the oldest, and nothing else; afterwards the log
    // refuses DELETE again.
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
    let err = b.raw("DELETE FROM events").await.unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    assert!(store.size_bytes().await.unwrap_or(1) > 0);
}

async fn notified_events_are_read_by_id_and_cursors_persist_on(b: &Backend) {
    let store = b.open().await;
    assert_eq!(store.newest_event_id().await.unwrap(), 0);
    let t = created();
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
    assert_eq!(
        ids(store.notified_after(3, &NOTIFIED, 100).await.unwrap()),
        [5, 6]
    );
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

    // A receiver's key: the SHA-256 of its URL, in hex. Cursors only move
    // forward.
    let key = format!("{:064x}", 0xfeed_u32);
    assert_eq!(store.webhook_cursor(&key).await.unwrap(), None);
    store.set_webhook_cursor(&key, 3).await.unwrap();
    store.set_webhook_cursor(&key, 5).await.unwrap();
    store.set_webhook_cursor(&key, 4).await.unwrap();
    assert_eq!(store.webhook_cursor(&key).await.unwrap(), Some(5));
    // Only hashes are keys: a URL is refused by the table itself.
    assert!(
        store
            .set_webhook_cursor("https://hooks.example/SECRET", 1)
            .await
            .is_err()
    );
    store.resign().await.unwrap();
    drop(store);

    let store = b.open().await;
    assert_eq!(store.webhook_cursor(&key).await.unwrap(), Some(5));
}

#[tokio::test]
async fn commits_load_back_and_history_is_append_only() {
    commits_load_back_and_history_is_append_only_on(&Backend::sqlite()).await;
    let pg = Postgres::start().await.unwrap();
    commits_load_back_and_history_is_append_only_on(&Backend::postgres(&pg, "history").await).await;
}

#[tokio::test]
async fn notified_events_are_read_by_id_and_cursors_persist() {
    notified_events_are_read_by_id_and_cursors_persist_on(&Backend::sqlite()).await;
    let pg = Postgres::start().await.unwrap();
    notified_events_are_read_by_id_and_cursors_persist_on(&Backend::postgres(&pg, "cursors").await)
        .await;
}

#[tokio::test]
async fn sqlite_always_leads() {
    let b = Backend::sqlite();
    let store = b.open().await;
    assert!(!store.shared());
    assert!(store.leads());
    let leader = store.lead(&claim("a", 0, 1000)).await.unwrap();
    assert_eq!(leader.holder, "a");
}

/// Two replicas on one database: one leads, the other's writes are
/// refused; a lease that runs out is taken over with a new term, and the
/// old holder's writes are refused from then on, by the database.
#[tokio::test]
async fn the_lease_fences_every_write_of_a_replica_that_lost_it() {
    let pg = Postgres::start().await.unwrap();
    let url = pg.database("fencing").unwrap();
    let a = PgStore::connect(&url).await.unwrap();
    let b = PgStore::connect(&url).await.unwrap();
    assert!(a.shared());
    // Nobody leads yet: nobody writes.
    let t = created();
    assert!(matches!(
        commit(&a, &t, 1, 1000).await,
        Err(StoreError::Fenced(0))
    ));

    let lease_ms = 600;
    let got = a.lead(&claim("a", 0, lease_ms)).await.unwrap();
    assert_eq!((got.holder.as_str(), got.term), ("a", 1));
    assert!(a.leads());
    let seen = b.lead(&claim("b", 0, lease_ms)).await.unwrap();
    assert_eq!(seen.holder, "a", "b sees a lead");
    assert_eq!(seen.url, "http://a.test:8700");
    assert!(!b.leads());
    assert_eq!(commit(&a, &t, 1, 1000).await.unwrap().len(), 2);
    assert!(matches!(
        commit(&b, &t, 1, 1000).await,
        Err(StoreError::Fenced(0))
    ));

    // a renews within its lease and keeps its term.
    assert_eq!(a.lead(&claim("a", 1, lease_ms)).await.unwrap().term, 1);

    // a stops renewing (paused); past the lease, b takes over.
    tokio::time::sleep(Duration::from_millis(lease_ms + 200)).await;
    let got = b.lead(&claim("b", 0, lease_ms)).await.unwrap();
    assert_eq!((got.holder.as_str(), got.term), ("b", 2));
    let paused = created().deployment;
    let overwritten = Transition {
        deployment: paused,
        events: vec![event(EventKind::Paused)],
    };
    assert!(matches!(
        commit(&a, &overwritten, 9, 5000).await,
        Err(StoreError::Fenced(1))
    ));
    assert!(matches!(
        a.prune_events("heart-prod", 10).await,
        Err(StoreError::Fenced(1))
    ));
    // b writes; its ids follow a's without a gap (the refused write took none).
    let reg = Command::RegisterVersion {
        version: "v2".into(),
        cluster: "heart-v2".into(),
        metadata: json!({}),
    };
    let t2 = engine::command(&t.deployment, reg, OPERATOR, 2000).unwrap();
    let stored = commit(&b, &t2, 2, 2000).await.unwrap();
    assert_eq!(stored.iter().map(|e| e.id).collect::<Vec<_>>(), [3]);
    // a, renewing with its old term, learns b leads, and stays fenced.
    let seen = a.lead(&claim("a", 1, lease_ms)).await.unwrap();
    assert_eq!((seen.holder.as_str(), seen.term), ("b", 2));
    assert!(!a.leads());
    assert!(matches!(
        commit(&a, &t, 1, 1000).await,
        Err(StoreError::Fenced(0))
    ));
    let snap = a.load().await.unwrap();
    assert_eq!(snap.epoch, 2, "nothing a wrote after losing the lease");
    assert_eq!(snap.deployments, vec![t2.deployment.clone()]);

    // b resigns (a clean shutdown): a takes over at once, with term 3.
    b.resign().await.unwrap();
    let got = a.lead(&claim("a", 0, lease_ms)).await.unwrap();
    assert_eq!((got.holder.as_str(), got.term), ("a", 3));
    assert!(matches!(
        commit(&b, &t2, 2, 2000).await,
        Err(StoreError::Fenced(0))
    ));
    let ids: Vec<i64> = a
        .events("heart-prod", 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids, [1, 2, 3]);
}

/// A takeover waits for a write in progress: the lease row is held by the
/// writing transaction, so no write of the old leader lands after the new
/// one's term begins. And a replica paused inside a transaction does not
/// hold the row for ever: the server ends its idle session.
#[tokio::test]
async fn a_paused_transaction_does_not_block_the_takeover() {
    let pg = Postgres::start().await.unwrap();
    let url = pg.database("paused").unwrap();
    let a = PgStore::connect(&url).await.unwrap();
    assert_eq!(a.lead(&claim("a", 0, 300)).await.unwrap().term, 1);
    // A session like a's writer, stopped inside its transaction, holding
    // the lease row.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(
            url.parse::<sqlx::postgres::PgConnectOptions>()
                .unwrap()
                .options([("idle_in_transaction_session_timeout", "2000")]),
        )
        .await
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT term FROM leader WHERE id = 1 FOR SHARE")
        .execute(&mut *tx)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let b = PgStore::connect(&url).await.unwrap();
    let started = std::time::Instant::now();
    let mut taken = None;
    while started.elapsed() < Duration::from_secs(15) {
        match b.lead(&claim("b", 0, 300)).await {
            Ok(l) if l.holder == "b" => {
                taken = Some(l.term);
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(
        taken,
        Some(2),
        "b took over once the paused session was ended"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "not before the row was released"
    );
    assert!(
        tx.commit().await.is_err(),
        "the paused session was ended by the server"
    );
}
