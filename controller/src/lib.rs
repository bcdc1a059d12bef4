//! The coalmine controller: the I/O shell around the pure decisions of
//! `coalmine-decide` (windows, policy, engine).
//!
//! - [`clock`]: the one clock every decision is stamped from;
//! - [`store`]: persistence behind a small trait (SQLite in `store/sqlite.rs`),
//!   with an append-only event log;
//! - [`service`]: the controller's state in memory, the evaluation loop, and
//!   every change committed to the store before it takes effect;
//! - [`api`]: the REST API (operator calls and `/v1/sync` for the filters),
//!   `/metrics`, and the dashboard (`dashboard/`, embedded);
//! - [`metrics`]: the controller's Prometheus metrics;
//! - [`notify`]: webhooks for the events operators must not miss;
//! - [`auth`]: which tokens the API checks.
//!
//! The API's types live in `coalmine-client`, which the CLI, the demo, the
//! tests and the benchmarks use to call it.

pub mod api;
pub mod auth;
pub mod clock;
pub mod metrics;
pub mod notify;
pub mod service;
pub mod store;

pub use service::{Controller, Services};

use auth::Tokens;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// In-flight requests get this long to finish after shutdown is requested.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the API and runs the evaluation loop until `shutdown` resolves,
/// then drains in-flight requests for at most [`DRAIN_TIMEOUT`].
pub async fn serve(
    listener: TcpListener,
    controller: Arc<Controller>,
    tokens: Tokens,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop, stopped) = watch::channel(false);
    let releasing = controller.clone();
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
        // Held sync calls would otherwise keep the drain waiting.
        releasing.release_held_syncs();
    });
    let until_stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|&s| s).await;
    };
    let evaluations = tokio::spawn(
        controller
            .clone()
            .run_evaluations(until_stopped(stopped.clone())),
    );
    let server = axum::serve(listener, api::router(controller, tokens))
        .with_graceful_shutdown(until_stopped(stopped.clone()));
    let drain_deadline = {
        let stopped = stopped.clone();
        async move {
            until_stopped(stopped).await;
            tokio::time::sleep(DRAIN_TIMEOUT).await;
        }
    };
    tokio::select! {
        result = server => result?,
        () = drain_deadline => tracing::warn!("requests still in flight after {DRAIN_TIMEOUT:?}; stopping anyway"),
    }
    let _ = evaluations.await;
    Ok(())
}
