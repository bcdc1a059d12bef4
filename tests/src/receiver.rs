//! A webhook receiver on loopback that records what it is sent, and can
//! fail its first deliveries or never answer.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

#[derive(Debug, Default)]
struct Inner {
    attempts: Vec<Value>,
    fail_first: usize,
    hang: bool,
}

/// Stops when dropped.
#[derive(Debug)]
pub struct Receiver {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    task: tokio::task::JoinHandle<()>,
}

async fn receive(State(inner): State<Arc<Mutex<Inner>>>, body: axum::body::Bytes) -> StatusCode {
    let payload: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (n, fail_first, hang) = match inner.lock() {
        Ok(mut i) => {
            i.attempts.push(payload);
            (i.attempts.len(), i.fail_first, i.hang)
        }
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR,
    };
    if hang {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    if n <= fail_first {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NO_CONTENT
    }
}

impl Receiver {
    /// Answers 500 to the first `fail_first` deliveries, 204 after; with
    /// `hang`, never answers at all.
    pub async fn start(fail_first: usize, hang: bool) -> anyhow::Result<Receiver> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Mutex::new(Inner {
            fail_first,
            hang,
            ..Inner::default()
        }));
        let app = Router::new().fallback(receive).with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Receiver { addr, inner, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Every delivery attempt's payload, in arrival order.
    pub fn attempts(&self) -> Vec<Value> {
        self.inner
            .lock()
            .map(|i| i.attempts.clone())
            .unwrap_or_default()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
