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
//! - [`auth`]: which tokens the API checks;
//! - [`tls`]: the certificate and key HTTPS serves with.
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
pub mod tls;

pub use service::{Controller, Services};

use auth::{ClientAddr, LiveTokens, Tokens};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

/// In-flight requests get this long to finish after shutdown is requested.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What one client may hold of the controller.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections open at once; beyond, new ones are closed at once (and
    /// counted), so a flood cannot take every file descriptor.
    pub max_connections: usize,
    /// A request's headers must arrive within this long, and an idle
    /// keep-alive connection is closed after it (slow clients hold nothing).
    pub header_timeout: Duration,
    /// A request's body must arrive within this long.
    pub body_timeout: Duration,
}

/// How connections are spoken to: plain HTTP, or HTTPS only.
#[derive(Clone, Default)]
pub enum Transport {
    /// HTTP in clear (loopback development, or behind a mesh's TLS).
    #[default]
    Plain,
    /// Every connection completes a TLS handshake (within the header
    /// timeout) before HTTP; one that fails is closed and counted.
    Tls(TlsAcceptor),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Plain => "Plain",
            Transport::Tls(_) => "Tls",
        })
    }
}

impl Transport {
    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        match self {
            Transport::Plain => "http",
            Transport::Tls(_) => "https",
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            header_timeout: Duration::from_secs(20),
            body_timeout: Duration::from_secs(30),
        }
    }
}

/// Raises the soft limit on open files to the hard limit; returns the limit
/// in force (a held sync is one connection per Envoy worker).
pub fn raise_open_files_limit() -> Option<u64> {
    rlimit::increase_nofile_limit(u64::MAX).ok()
}

/// [`serve_with`] the default [`Limits`], with these tokens for good.
pub async fn serve(
    listener: TcpListener,
    controller: Arc<Controller>,
    tokens: Tokens,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let tokens = Arc::new(LiveTokens::new(tokens));
    let (limits, transport) = (Limits::default(), Transport::Plain);
    serve_with(listener, controller, tokens, limits, transport, shutdown).await
}

/// Serves the API over `transport` and runs the evaluation loop until
/// `shutdown` resolves, then drains in-flight requests for at most
/// [`DRAIN_TIMEOUT`].
pub async fn serve_with(
    listener: TcpListener,
    controller: Arc<Controller>,
    tokens: Arc<LiveTokens>,
    limits: Limits,
    transport: Transport,
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
    let leadership = tokio::spawn(
        controller
            .clone()
            .run_leadership(until_stopped(stopped.clone())),
    );
    let app = api::router_live(controller.clone(), tokens).layer(
        tower_http::timeout::RequestBodyTimeoutLayer::new(limits.body_timeout),
    );
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let stopping = until_stopped(stopped.clone());
    tokio::pin!(stopping);
    loop {
        let accepted = tokio::select! {
            () = &mut stopping => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: try again shortly.
                tracing::warn!("accepting a connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            controller.metrics().connection_refused();
            drop(stream);
            continue;
        };
        // Who is calling, for the limit on wrong tokens and the access log.
        let app = tower::Layer::layer(&axum::Extension(ClientAddr(peer.ip())), app.clone());
        let service = hyper_util::service::TowerToHyperService::new(app);
        let http = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            // A connection buffers little of a body nobody reads yet (a
            // sync waiting for its slot).
            .max_buf_size(64 * 1024)
            .to_owned();
        let c = controller.clone();
        c.metrics().connection(true);
        match &transport {
            Transport::Plain => {
                let connection = http.serve_connection(TokioIo::new(stream), service);
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    let _ = connection.await;
                    c.metrics().connection(false);
                    drop(slot);
                });
            }
            Transport::Tls(acceptor) => {
                // The handshake runs in the connection's own task, bounded
                // like a request's headers: a client that sends nothing,
                // or not TLS, holds its slot no longer than that.
                let handshake = acceptor.accept(stream);
                let watcher = graceful.watcher();
                let timeout = limits.header_timeout;
                tokio::spawn(async move {
                    match tokio::time::timeout(timeout, handshake).await {
                        Ok(Ok(tls)) => {
                            let io = TokioIo::new(tls::Lingering::new(tls));
                            let connection = http.serve_connection(io, service);
                            let _ = watcher.watch(connection).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!("TLS handshake failed: {e}");
                            c.metrics().tls_handshake_failed(false);
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake not done within {timeout:?}");
                            c.metrics().tls_handshake_failed(true);
                        }
                    }
                    c.metrics().connection(false);
                    drop(slot);
                });
            }
        }
    }
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(DRAIN_TIMEOUT) => {
            tracing::warn!("requests still in flight after {DRAIN_TIMEOUT:?}; stopping anyway");
        }
    }
    let _ = evaluations.await;
    let _ = leadership.await;
    Ok(())
}
