//! Webhooks: every notified event is POSTed as JSON to each receiver, in
//! event-id order, at least once, and exactly once unless the controller
//! dies between a receiver's 2xx and the write of its cursor (the payload's
//! `id` lets a receiver drop that repeat).
//!
//! Each receiver has its own task and its own cursor in the store (the
//! last event it acknowledged). The task reads the events after its cursor
//! from the store, never from memory, so an event that was committed is
//! delivered even across a crash or restart; [`Notifier::notify`] only
//! wakes the tasks. Each delivery is retried with capped exponential
//! backoff until a 2xx (a receiver that is down gets its backlog when it
//! comes back), and only then does the cursor move. A dead receiver holds
//! back nothing but its own backlog. Redirects are not followed. Logs and
//! metrics name a receiver by its redacted form (`https://host/…`).

use super::delivery::{Failure, Resume, RetryPolicy, judge, payload, worth_warning};
use super::receiver::Receiver;
use super::{NOTIFIED, Notifier};
use crate::metrics::{Delivery, Metrics};
use crate::store::{Store, StoreError, StoredEvent};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Events read from the store at once, per receiver.
const BATCH: u32 = 100;
/// How often an idle receiver looks at the store even without a wake-up
/// (events written by another process, a wake-up lost).
const IDLE_POLL: Duration = Duration::from_secs(10);

/// What every receiver shares.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Base of the link in each payload (the dashboard).
    pub public_url: String,
    pub retry: RetryPolicy,
    /// Roots trusted besides the system's (`--ca-file`).
    pub roots: Vec<reqwest::Certificate>,
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("cannot set up the webhook client: {0}")]
    Client(String),
    #[error("reading the webhook cursors: {0}")]
    Store(#[from] StoreError),
}

/// The running receivers' tasks; they stop when this is dropped.
#[derive(Debug)]
pub struct Webhooks {
    wake: watch::Sender<()>,
    tasks: Vec<JoinHandle<()>>,
}

impl Webhooks {
    /// Finds where each receiver resumes (a new one: after the newest
    /// event, stored at once), then starts its task on the current runtime.
    /// Call it before the controller serves, so that no event is committed
    /// between a new receiver's first cursor and its task.
    pub async fn start(
        receivers: Vec<Receiver>,
        settings: WebhookSettings,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
    ) -> Result<Webhooks, WebhookError> {
        let http = http_client(&settings).map_err(|e| WebhookError::Client(cause(&e)))?;
        let (wake, _) = watch::channel(());
        let newest = store.newest_event_id().await?;
        let mut tasks = Vec::with_capacity(receivers.len());
        for receiver in receivers {
            let resume = Resume::from(store.webhook_cursor(receiver.key()).await?, newest);
            match resume {
                Resume::New(id) => {
                    store.set_webhook_cursor(receiver.key(), id).await?;
                    tracing::info!(
                        receiver = receiver.redacted(),
                        "webhook receiver is new: it gets the events after {id}"
                    );
                }
                Resume::Stored(id) => {
                    tracing::info!(
                        receiver = receiver.redacted(),
                        "webhook receiver resumes after event {id}"
                    );
                }
            }
            let task = ReceiverTask {
                receiver,
                http: http.clone(),
                store: store.clone(),
                metrics: metrics.clone(),
                settings: settings.clone(),
                cursor: resume.cursor(),
                wake: wake.subscribe(),
            };
            tasks.push(tokio::spawn(task.run()));
        }
        Ok(Webhooks { wake, tasks })
    }
}

impl Drop for Webhooks {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

impl Notifier for Webhooks {
    fn notify(&self, e: &StoredEvent) {
        if NOTIFIED.contains(&e.event.kind) {
            // Always succeeds; the tasks read the event from the store.
            self.wake.send_modify(|_| {});
        }
    }
}

/// The HTTP client of every delivery: rustls with the system's roots and
/// `settings.roots`, a timeout per attempt, no redirects.
fn http_client(settings: &WebhookSettings) -> Result<reqwest::Client, reqwest::Error> {
    settings
        .roots
        .iter()
        .fold(reqwest::Client::builder(), |b, cert| {
            b.add_root_certificate(cert.clone())
        })
        .timeout(settings.retry.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("coalmine-controller/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Why a request got no answer: its innermost cause ("Connection refused",
/// "invalid peer certificate: UnknownIssuer"), never the URL (reqwest's
/// own message holds it).
fn cause(e: &reqwest::Error) -> String {
    let Some(mut cause) = std::error::Error::source(e) else {
        return "no answer".to_string();
    };
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

/// One receiver's deliveries.
struct ReceiverTask {
    receiver: Receiver,
    http: reqwest::Client,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    settings: WebhookSettings,
    /// The last event delivered.
    cursor: i64,
    wake: watch::Receiver<()>,
}

impl ReceiverTask {
    async fn run(mut self) {
        let mut store_failures = 0;
        // Only the leader delivers (several replicas may share the store);
        // one that becomes leader resumes from the stored cursor, which the
        // previous leader advanced.
        let mut following = false;
        loop {
            if !self.store.leads() {
                following = true;
                if !self.idle().await {
                    return;
                }
                continue;
            }
            if std::mem::take(&mut following)
                && let Ok(Some(cursor)) = self.store.webhook_cursor(self.receiver.key()).await
            {
                self.cursor = self.cursor.max(cursor);
            }
            // Seen before reading, so an event committed meanwhile wakes us.
            self.wake.borrow_and_update();
            let batch = match self.backlog().await {
                Ok(backlog) => backlog,
                Err(e) => {
                    store_failures += 1;
                    let wait = self.settings.retry.backoff(store_failures);
                    if worth_warning(store_failures) {
                        tracing::warn!(
                            receiver = self.receiver.redacted(),
                            "webhook backlog unreadable: {e}; again in {wait:?}"
                        );
                    }
                    tokio::time::sleep(wait).await;
                    continue;
                }
            };
            store_failures = 0;
            if batch.is_empty() && !self.idle().await {
                return;
            }
            for e in batch {
                self.deliver(&e).await;
                self.advance(e.id).await;
                let _ = self.count_backlog().await;
            }
        }
    }

    /// The next events to deliver (the backlog gauge updated).
    async fn backlog(&self) -> Result<Vec<StoredEvent>, StoreError> {
        if self.count_backlog().await? == 0 {
            return Ok(Vec::new());
        }
        self.store
            .notified_after(self.cursor, &NOTIFIED, BATCH)
            .await
    }

    /// How many notified events wait for this receiver, also shown by the
    /// backlog gauge.
    async fn count_backlog(&self) -> Result<u64, StoreError> {
        let waiting = self
            .store
            .count_notified_after(self.cursor, &NOTIFIED)
            .await?;
        self.metrics
            .webhook_backlog(self.receiver.redacted(), waiting);
        Ok(waiting)
    }

    /// Sleeps `wait` before the next attempt; events notified meanwhile
    /// update the backlog gauge (they are delivered after this one).
    async fn pause(&mut self, wait: Duration) {
        let until = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(until) => return,
                changed = self.wake.changed() => match changed {
                    Ok(()) => {
                        let _ = self.count_backlog().await;
                    }
                    Err(_) => {
                        tokio::time::sleep_until(until).await;
                        return;
                    }
                },
            }
        }
    }

    /// Waits for a wake-up or the idle poll; false once nothing can wake
    /// it any more.
    async fn idle(&mut self) -> bool {
        tokio::select! {
            changed = self.wake.changed() => changed.is_ok(),
            () = tokio::time::sleep(IDLE_POLL) => true,
        }
    }

    /// POSTs `e` until the receiver answers 2xx.
    async fn deliver(&mut self, e: &StoredEvent) {
        let body = payload(e, &self.settings.public_url);
        let mut failures = 0;
        loop {
            match self.attempt(&body).await {
                Ok(()) => {
                    self.metrics.webhook(Delivery::Delivered);
                    if failures > 0 {
                        tracing::info!(
                            receiver = self.receiver.redacted(),
                            id = e.id,
                            "webhook delivered after {failures} failed attempt(s)"
                        );
                    }
                    return;
                }
                Err(why) => {
                    failures += 1;
                    self.metrics.webhook(Delivery::Retried);
                    let wait = self.settings.retry.backoff(failures);
                    if worth_warning(failures) {
                        tracing::warn!(receiver = self.receiver.redacted(), deployment = %e.deployment, event = e.event.kind.as_str(), id = e.id, failures, "webhook {why}; retrying in {wait:?}");
                    } else {
                        tracing::debug!(
                            receiver = self.receiver.redacted(),
                            id = e.id,
                            failures,
                            "webhook {why}; retrying in {wait:?}"
                        );
                    }
                    self.pause(wait).await;
                }
            }
        }
    }

    async fn attempt(&self, body: &serde_json::Value) -> Result<(), Failure> {
        let sent = self
            .http
            .post(self.receiver.url().clone())
            .json(body)
            .send()
            .await;
        match sent {
            Ok(answer) => judge(answer.status().as_u16()),
            Err(e) if e.is_timeout() => Err(Failure::TimedOut),
            Err(e) => Err(Failure::Unreachable(cause(&e))),
        }
    }

    /// Counts every event up to `id` as delivered, in memory and in the
    /// store. A failed write is only logged: the next one stores a later
    /// id, and until then a restart repeats a few deliveries.
    async fn advance(&mut self, id: i64) {
        self.cursor = id;
        if let Err(e) = self.store.set_webhook_cursor(self.receiver.key(), id).await {
            tracing::warn!(
                receiver = self.receiver.redacted(),
                "webhook cursor not saved ({e}); after a restart, events up to {id} may be sent again"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    //! The shell against real HTTP receivers on loopback and a real
    //! (in-memory) SQLite store.

    use super::*;
    use crate::store::{Commit, SqliteStore};
    use axum::http::{HeaderMap, StatusCode, header};
    use coalmine_decide::engine::{self, Event, EventKind, OPERATOR};
    use coalmine_decide::policy::Policy;
    use coalmine_protocol::Target;
    use serde_json::Value;
    use std::sync::Mutex;
    use std::time::Instant;

    /// Answers 503 to its first `refuse` requests, then `answer`; keeps the
    /// ids it was sent.
    #[derive(Clone)]
    struct Hook {
        seen: Arc<Mutex<Vec<i64>>>,
        refuse: usize,
        answer: StatusCode,
        location: Option<String>,
    }

    async fn serve(hook: Hook) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback(move |body: axum::Json<Value>| {
            let hook = hook.clone();
            async move {
                let mut seen = hook.seen.lock().unwrap();
                seen.push(body["id"].as_i64().unwrap_or(-1));
                let mut headers = HeaderMap::new();
                if let Some(to) = &hook.location {
                    headers.insert(header::LOCATION, to.parse().unwrap());
                }
                match seen.len() <= hook.refuse {
                    true => (StatusCode::SERVICE_UNAVAILABLE, headers),
                    false => (hook.answer, headers),
                }
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}/hook/SECRET-PATH")
    }

    fn hook(refuse: usize, answer: StatusCode, location: Option<String>) -> Hook {
        Hook {
            seen: Arc::default(),
            refuse,
            answer,
            location,
        }
    }

    async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(v) = check().await {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Commits `kinds` as events of heart-prod; returns their ids.
    async fn commit(store: &SqliteStore, kinds: &[EventKind]) -> Vec<StoredEvent> {
        let target = Target {
            version: "v1".into(),
            cluster: "heart-v1".into(),
        };
        let t = engine::create("heart-prod", target, Policy::default(), OPERATOR, 1).unwrap();
        let events: Vec<Event> = kinds
            .iter()
            .map(|&kind| Event {
                kind,
                actor: OPERATOR.into(),
                reason: "test".into(),
                numbers: serde_json::Map::new(),
            })
            .collect();
        let c = Commit {
            deployment: &t.deployment,
            events: &events,
            epoch: 1,
            at: 1,
        };
        store.commit(c).await.unwrap()
    }

    fn settings() -> WebhookSettings {
        WebhookSettings {
            public_url: "http://coalmine.example".into(),
            retry: RetryPolicy {
                first_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(40),
                timeout: Duration::from_secs(2),
            },
            roots: Vec::new(),
        }
    }

    #[tokio::test]
    async fn each_receiver_gets_the_stored_backlog_in_order_and_no_redirect() {
        let store = Arc::new(SqliteStore::in_memory().await.unwrap());
        // Before the receivers exist: history they are never sent.
        commit(&store, &[EventKind::RolledBack]).await;

        let flaky = hook(3, StatusCode::NO_CONTENT, None);
        let flaky_url = serve(flaky.clone()).await;
        let moved = hook(0, StatusCode::TEMPORARY_REDIRECT, Some(flaky_url.clone()));
        let moved_url = serve(moved.clone()).await;
        let receivers = crate::notify::receivers(&[flaky_url.clone(), moved_url]).unwrap();
        let keys: Vec<String> = receivers.iter().map(|r| r.key().to_string()).collect();
        let metrics = Arc::new(Metrics::default());
        let webhooks = Webhooks::start(receivers, settings(), store.clone(), metrics.clone())
            .await
            .unwrap();
        let start = store.newest_event_id().await.unwrap();
        assert_eq!(store.webhook_cursor(&keys[0]).await.unwrap(), Some(start));

        // Committed but never announced: found in the store all the same
        // once another event wakes the task.
        let quiet = commit(&store, &[EventKind::Promoted, EventKind::Paused]).await;
        let loud = commit(&store, &[EventKind::HealthDegraded]).await;
        webhooks.notify(&loud[0]);
        let want = [quiet[0].id, loud[0].id];
        let seen = eventually("both events delivered", async || {
            let seen = flaky.seen.lock().unwrap().clone();
            (seen.len() == 3 + want.len()).then_some(seen)
        })
        .await;
        // 3 refusals of the first event, then each once, in id order.
        assert_eq!(seen, [want[0], want[0], want[0], want[0], want[1]]);
        let label = |url: &str| Receiver::parse(url).unwrap().redacted().to_string();
        let empty = format!(
            "coalmine_controller_webhook_backlog{{receiver=\"{}\"}} 0",
            label(&flaky_url)
        );
        let text = eventually("the cursor stored, the backlog empty", async || {
            let stored = store.webhook_cursor(&keys[0]).await.unwrap();
            let text = metrics.encode();
            (stored == Some(want[1]) && text.contains(&empty)).then_some(text)
        })
        .await;
        assert!(!text.contains("SECRET-PATH"), "{text}");

        // The redirecting receiver is retried, never followed, and its
        // cursor does not move.
        eventually("the redirect retried", async || {
            (moved.seen.lock().unwrap().len() >= 3).then_some(())
        })
        .await;
        assert_eq!(
            flaky.seen.lock().unwrap().len(),
            5,
            "a redirect was followed"
        );
        assert_eq!(store.webhook_cursor(&keys[1]).await.unwrap(), Some(start));
        assert!(
            text.contains("coalmine_controller_webhook_deliveries_total{result=\"retried\"}"),
            "{text}"
        );
    }
}
