//! Webhooks: each notified event is POSTed as JSON to every configured URL.
//!
//! Deliveries run in background tasks fed by a bounded queue: a slow or dead
//! receiver delays nothing but its own deliveries. A failed attempt (error,
//! timeout, non-2xx) is retried with exponential backoff up to a bound; every
//! outcome is counted in `/metrics` and failures are logged.

use super::{NOTIFIED, Notifier};
use crate::metrics::{Delivery, Metrics};
use crate::store::StoredEvent;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};

/// How hard to try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub first_backoff: Duration,
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            first_backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Events waiting for delivery; beyond this they are dropped (and counted).
const QUEUE: usize = 1024;
/// Deliveries in flight at once.
const CONCURRENCY: usize = 16;

#[derive(Debug)]
pub struct Webhooks {
    queue: mpsc::Sender<Value>,
    metrics: Arc<Metrics>,
    /// Base of the link in each payload (the dashboard).
    public_url: String,
}

impl Webhooks {
    /// Starts the delivery worker on the current runtime.
    pub fn start(
        urls: Vec<String>,
        public_url: String,
        retry: RetryPolicy,
        metrics: Arc<Metrics>,
    ) -> Webhooks {
        let (queue, mut rx) = mpsc::channel::<Value>(QUEUE);
        let client = reqwest::Client::builder()
            .timeout(retry.timeout)
            .build()
            .unwrap_or_default();
        let worker_metrics = metrics.clone();
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(CONCURRENCY));
            while let Some(payload) = rx.recv().await {
                for url in &urls {
                    let Ok(permit) = slots.clone().acquire_owned().await else {
                        return;
                    };
                    let (client, url, payload, metrics) = (
                        client.clone(),
                        url.clone(),
                        payload.clone(),
                        worker_metrics.clone(),
                    );
                    tokio::spawn(async move {
                        deliver(&client, &url, &payload, retry, &metrics).await;
                        drop(permit);
                    });
                }
            }
        });
        Webhooks {
            queue,
            metrics,
            public_url: public_url.trim_end_matches('/').to_string(),
        }
    }
}

async fn deliver(
    client: &reqwest::Client,
    url: &str,
    payload: &Value,
    retry: RetryPolicy,
    metrics: &Metrics,
) {
    let mut backoff = retry.first_backoff;
    for attempt in 1..=retry.attempts.max(1) {
        let outcome = match client.post(url).json(payload).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("answered {}", r.status())),
            Err(e) => Err(if e.is_timeout() {
                "timed out".to_string()
            } else {
                "unreachable".to_string()
            }),
        };
        match outcome {
            Ok(()) => {
                metrics.webhook(Delivery::Delivered);
                return;
            }
            Err(why) if attempt < retry.attempts => {
                metrics.webhook(Delivery::Retried);
                tracing::debug!(%url, attempt, "webhook {why}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2);
            }
            Err(why) => {
                metrics.webhook(Delivery::Failed);
                tracing::warn!(%url, event = %payload["event"], "webhook delivery failed after {attempt} attempts: {why}");
            }
        }
    }
}

impl Notifier for Webhooks {
    fn notify(&self, e: &StoredEvent) {
        if !NOTIFIED.contains(&e.event.kind) {
            return;
        }
        let payload = json!({
            "deployment": e.deployment,
            "event": e.event.kind.as_str(),
            "id": e.id,
            "at": e.at,
            "actor": e.event.actor,
            "reason": e.event.reason,
            "numbers": e.event.numbers,
            "link": format!("{}/#/deployments/{}", self.public_url, e.deployment),
        });
        if self.queue.try_send(payload).is_err() {
            self.metrics.webhook(Delivery::Dropped);
            tracing::warn!(deployment = %e.deployment, event = e.event.kind.as_str(), "webhook queue full; notification dropped");
        }
    }
}
