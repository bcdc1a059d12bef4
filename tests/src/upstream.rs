//! A small upstream that names itself and remembers what it was sent.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// The coalmine headers one request arrived with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeenHeaders {
    pub path: String,
    pub role: Option<String>,
    pub cluster: Option<String>,
    /// The names of every `x-coalmine-*` header it arrived with.
    pub coalmine_headers: Vec<String>,
}

#[derive(Debug, Clone)]
struct Shared {
    name: &'static str,
    /// Remember every request's headers (off for benchmarks: count only).
    record: bool,
    count: Arc<AtomicU64>,
    seen: Arc<Mutex<Vec<SeenHeaders>>>,
    /// Every n-th request is answered with a 500 (0: never).
    error_every: Arc<AtomicU64>,
}

/// An upstream on `127.0.0.1:0`; stops when dropped.
#[derive(Debug)]
pub struct Upstream {
    pub name: &'static str,
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<SeenHeaders>>>,
    error_every: Arc<AtomicU64>,
    count: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    /// Serves every path with `200 {"served_by": name}` (or a 500 when told
    /// to fail) and an `x-served-by: name` header.
    pub async fn start(name: &'static str) -> anyhow::Result<Upstream> {
        Upstream::start_on(name, true).await
    }

    /// The same server, counting requests without remembering them (for
    /// benchmarks, where the upstream must cost as little as possible).
    pub async fn start_counting(name: &'static str) -> anyhow::Result<Upstream> {
        Upstream::start_on(name, false).await
    }

    async fn start_on(name: &'static str, record: bool) -> anyhow::Result<Upstream> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let error_every = Arc::new(AtomicU64::new(0));
        let count = Arc::new(AtomicU64::new(0));
        let app = Router::new().fallback(serve).with_state(Shared {
            name,
            record,
            count: count.clone(),
            seen: seen.clone(),
            error_every: error_every.clone(),
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Upstream {
            name,
            addr,
            seen,
            error_every,
            count,
            task,
        })
    }

    /// From now on, answer every `n`-th request with a 500 (0: none).
    pub fn fail_every(&self, n: u64) {
        self.error_every.store(n, Ordering::SeqCst);
    }

    /// How many requests arrived so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<SeenHeaders> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    State(s): State<Shared>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> impl IntoResponse {
    let get = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let count = s.count.fetch_add(1, Ordering::SeqCst) + 1;
    if s.record
        && let Ok(mut seen) = s.seen.lock()
    {
        seen.push(SeenHeaders {
            path: uri.path().to_string(),
            role: get("x-coalmine-role"),
            cluster: get("x-coalmine-cluster"),
            coalmine_headers: headers
                .keys()
                .map(|k| k.as_str().to_string())
                .filter(|k| k.starts_with("x-coalmine-"))
                .collect(),
        });
    }
    let every = s.error_every.load(Ordering::SeqCst);
    let status = if every > 0 && count % every == 0 {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    (
        status,
        [("x-served-by", HeaderValue::from_static(s.name))],
        // Answers like a model, so a deployment reading outputs reads these.
        axum::Json(
            serde_json::json!({ "served_by": s.name, "prediction": 1, "probability": 0.75 }),
        ),
    )
}
