//! `coalmine-controller`: the controller service.

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use coalmine_controller::auth::{LiveTokens, Tokens};
use coalmine_controller::metrics::Metrics;
use coalmine_controller::notify::{
    NoNotifier, Notifier, RetryPolicy, WebhookSettings, Webhooks, receivers,
};
use coalmine_controller::service::{Retention, Services, Settings};
use coalmine_controller::store::{self, Store};
use coalmine_controller::tls::LiveCert;
use coalmine_controller::{Controller, Limits, Transport, raise_open_files_limit, serve_with};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// The coalmine controller: syncs with every proxy, judges each canary
/// against its baseline, and rolls back or promotes by itself.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "COALMINE_LISTEN", default_value = "127.0.0.1:8700")]
    listen: SocketAddr,
    /// The database: a SQLite file (created if missing), or a
    /// postgres://user:password@host:port/database URL, where several
    /// replicas may run and one leads (give the password in the env var:
    /// flags show in `ps`).
    #[arg(
        long,
        env = "COALMINE_DB",
        default_value = "./coalmine.db",
        hide_env_values = true
    )]
    db: String,
    /// On PostgreSQL: a leader that stops renewing its lease is replaced within this long.
    #[arg(long, env = "COALMINE_LEADER_LEASE_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(500..))]
    leader_lease_ms: u64,
    /// Token operators present for calls that change state (prefer the env var: flags show in `ps`).
    #[arg(long, env = "COALMINE_OPERATOR_TOKEN", hide_env_values = true)]
    operator_token: Option<String>,
    /// Token the proxies present on /v1/sync.
    #[arg(long, env = "COALMINE_SYNC_TOKEN", hide_env_values = true)]
    sync_token: Option<String>,
    /// Token data pipelines present to post feedback (labels, outcomes), and nothing else; optional: the operator token may post feedback too.
    #[arg(long, env = "COALMINE_FEEDBACK_TOKEN", hide_env_values = true)]
    feedback_token: Option<String>,
    /// A JSON file of named tokens, read again on SIGHUP: {"operator": {"alice": "…"}, "feedback": {"labels": "…"}, "sync": {"<proxy node id>": "…"}}. Names are the actors in events; a sync token reports only as its proxy. Each token at least 16 characters, all different.
    #[arg(long, env = "COALMINE_TOKENS_FILE")]
    tokens_file: Option<PathBuf>,
    /// Run without tokens (development only: anyone who reaches the port can change traffic).
    #[arg(long)]
    insecure_dev: bool,
    /// Wrong tokens one client address may present in 10 s; beyond, its authenticated calls are answered 429 until the window ends.
    #[arg(long, env = "COALMINE_WRONG_TOKENS_PER_WINDOW", default_value_t = coalmine_controller::auth::FAILURES_PER_WINDOW, value_parser = clap::value_parser!(u32).range(1..))]
    wrong_tokens_per_window: u32,
    /// The lease granted to proxies: without a successful sync for this long they fall back to baselines.
    #[arg(long, env = "COALMINE_LEASE_MS", default_value_t = 30_000)]
    lease_ms: u64,
    /// POST the events operators must not miss (health_degraded,
    /// auto_rollback_triggered, rolled_back, promoted) to this http(s) URL;
    /// repeatable. Logs and metrics show only its scheme, host and port.
    #[arg(
        long = "webhook",
        env = "COALMINE_WEBHOOKS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    webhooks: Vec<String>,
    /// A PEM file of CA certificates (one or several) that https:// webhooks
    /// may be signed by, besides the system's roots.
    #[arg(long, env = "COALMINE_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Serve HTTPS only, with this PEM certificate chain (the server's
    /// certificate first); needs --tls-key.
    #[arg(long, env = "COALMINE_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert (PKCS#8, RSA or EC); needs --tls-cert.
    #[arg(long, env = "COALMINE_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// How often the certificate and key files are checked for a renewal (a new pair serves new connections; 0: only on SIGHUP; at most 86400).
    #[arg(long, env = "COALMINE_TLS_RELOAD_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    tls_reload_seconds: u64,
    /// The controller's URL as operators and proxies reach it (links in webhooks; on PostgreSQL, followers name the leader by it); default http://<listen>, or https://<listen> with TLS.
    #[arg(long, env = "COALMINE_PUBLIC_URL")]
    public_url: Option<String>,
    /// Events each deployment keeps in the database; older ones are archived (--events-archive) or dropped.
    #[arg(long, env = "COALMINE_EVENTS_KEEP", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(100..))]
    events_keep: u64,
    /// Append events past retention to <DIR>/<deployment>.jsonl before removing them.
    #[arg(long, env = "COALMINE_EVENTS_ARCHIVE")]
    events_archive: Option<PathBuf>,
    /// Connections open at once; beyond, new ones are closed (counted in /metrics).
    #[arg(long, env = "COALMINE_MAX_CONNECTIONS", default_value_t = 4096)]
    max_connections: usize,
    /// Write the bound address to this file once listening (useful with port 0).
    #[arg(long)]
    address_file: Option<PathBuf>,
}

/// The tokens the flags, the environment and the tokens file give (the
/// file read again on every call: at start and on SIGHUP).
fn tokens(args: &Args) -> Result<Tokens> {
    fn given_as(t: &Option<String>) -> Option<&str> {
        t.as_deref().filter(|t| !t.trim().is_empty())
    }
    let mut tokens = Tokens::single(
        given_as(&args.operator_token),
        given_as(&args.sync_token),
        given_as(&args.feedback_token),
    );
    if let Some(path) = &args.tokens_file {
        tokens = tokens
            .with_file(path)
            .map_err(|e| anyhow!("--tokens-file: {e}"))?;
    }
    fn given(t: &Option<String>) -> Option<&str> {
        t.as_deref().map(str::trim).filter(|t| !t.is_empty())
    }
    if let Some(f) = given(&args.feedback_token)
        && [given(&args.operator_token), given(&args.sync_token)].contains(&Some(f))
    {
        bail!("the feedback token must differ from the operator and sync tokens: it grants less");
    }
    if args.insecure_dev {
        tracing::warn!(
            "--insecure-dev: tokens that were not given are not checked; do not expose this port"
        );
        return Ok(tokens);
    }
    let mut missing = Vec::new();
    if tokens.operator.is_empty() {
        missing
            .push("--operator-token (COALMINE_OPERATOR_TOKEN) or operator tokens in --tokens-file");
    }
    if tokens.sync_open() {
        missing.push("--sync-token (COALMINE_SYNC_TOKEN) or sync tokens in --tokens-file");
    }
    if !missing.is_empty() {
        bail!(
            "refusing to start without {}; give the tokens, or pass --insecure-dev on a development machine",
            missing.join(" and ")
        );
    }
    Ok(tokens)
}

/// The webhooks (none without a `--webhook`), started before the API
/// serves: the URLs must be http(s), the CA file must hold certificates.
async fn notifier(
    args: &Args,
    public_url: String,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
) -> Result<Arc<dyn Notifier>> {
    let receivers = receivers(&args.webhooks).map_err(|e| anyhow!("--webhook: {e}"))?;
    let roots = match &args.ca_file {
        Some(path) => {
            coalmine_client::roots::read_ca_file(path).map_err(|e| anyhow!("--ca-file: {e}"))?
        }
        None => Vec::new(),
    };
    if receivers.is_empty() {
        return Ok(Arc::new(NoNotifier));
    }
    let shown: Vec<&str> = receivers.iter().map(|r| r.redacted()).collect();
    tracing::info!("webhooks: {}", shown.join(", "));
    let settings = WebhookSettings {
        public_url,
        retry: RetryPolicy::default(),
        roots,
    };
    let webhooks = Webhooks::start(receivers, settings, store, metrics)
        .await
        .context("starting the webhooks")?;
    Ok(Arc::new(webhooks))
}

/// Where operators reach this controller.
fn public_url(args: &Args, addr: SocketAddr, transport: &Transport) -> String {
    args.public_url
        .clone()
        .unwrap_or_else(|| format!("{}://{addr}", transport.scheme()))
}

/// HTTPS with --tls-cert and --tls-key (both or neither; the files read
/// and checked now, and the handle that reads them again), else plain
/// HTTP, with a warning off loopback.
fn transport(args: &Args) -> Result<(Transport, Option<Arc<LiveCert>>)> {
    match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let (acceptor, live) = coalmine_controller::tls::acceptor(cert, key)
                .map_err(|e| anyhow!("--tls-cert/--tls-key: {e}"))?;
            Ok((Transport::Tls(acceptor), Some(live)))
        }
        (Some(_), None) => {
            bail!("--tls-cert needs --tls-key (COALMINE_TLS_KEY): the certificate's private key")
        }
        (None, Some(_)) => {
            bail!("--tls-key needs --tls-cert (COALMINE_TLS_CERT): the certificate chain")
        }
        (None, None) => {
            if !args.listen.ip().is_loopback() {
                tracing::warn!(
                    "listening on {} without TLS: tokens cross the network in clear; give --tls-cert and --tls-key unless a mesh encrypts this hop",
                    args.listen
                );
            }
            Ok((Transport::Plain, None))
        }
    }
}

/// The database as logs may show it: a URL without its password.
fn shown_db(db: &str) -> String {
    match reqwest::Url::parse(db) {
        Ok(mut url) if url.scheme().starts_with("postgres") => {
            if url.password().is_some() {
                let _ = url.set_password(Some("***"));
            }
            url.to_string()
        }
        _ => db.to_string(),
    }
}

/// On SIGHUP, reads the tokens again: the new set replaces the old at
/// once, whole; and the TLS certificate and key, which serve the
/// connections that come after. Files that do not check out change
/// nothing (logged).
fn reload_on_sighup(args: Args, live: Arc<LiveTokens>, cert: Option<Arc<LiveCert>>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("SIGHUP cannot be caught: tokens and certificates are not reloaded");
            return;
        };
        while hup.recv().await.is_some() {
            match tokens(&args) {
                Ok(t) => {
                    tracing::info!("tokens reloaded: {}", t.summary());
                    live.set(t);
                }
                Err(e) => tracing::error!("tokens not reloaded, the old ones stay: {e:#}"),
            }
            if let Some(cert) = &cert {
                let (c, k) = cert.files();
                match cert.reload() {
                    Ok(()) => tracing::info!(
                        "TLS certificate reloaded from {} and {}: new connections are served with it",
                        c.display(),
                        k.display()
                    ),
                    Err(e) => tracing::error!(
                        "TLS certificate not reloaded, the old one keeps serving: {e}"
                    ),
                }
            }
        }
    });
    #[cfg(not(unix))]
    let _ = (args, live, cert);
}

/// Every `seconds` (0: never), reads the certificate and key files and,
/// when they changed, serves the new pair (cert-manager renewing a mounted
/// Secret, say); a changed pair that does not check out is logged once
/// and the old one keeps serving.
fn reload_cert_when_renewed(cert: Option<Arc<LiveCert>>, seconds: u64) {
    let Some(cert) = cert.filter(|_| seconds > 0) else {
        return;
    };
    tokio::spawn(async move {
        let period = std::time::Duration::from_secs(seconds);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (c, k) = cert.files();
            match cert.reload_if_changed() {
                Ok(false) => {}
                Ok(true) => tracing::info!(
                    "TLS certificate renewed in {} and {}: new connections are served with it",
                    c.display(),
                    k.display()
                ),
                Err(e) => {
                    tracing::error!("TLS certificate not reloaded, the old one keeps serving: {e}")
                }
            }
        }
    });
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
    tracing::info!("shutting down");
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("COALMINE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn")),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: log files and collectors get text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let tokens = Arc::new(LiveTokens::new(tokens(&args)?));
    tracing::info!("tokens: {}", tokens.get().summary());
    if args.lease_ms < 1000 {
        bail!("--lease-ms must be at least 1000, got {}", args.lease_ms);
    }
    let (transport, cert) = transport(&args)?;
    let store = store::open(&args.db)
        .await
        .with_context(|| format!("opening the database {}", shown_db(&args.db)))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let metrics = Arc::new(Metrics::default());
    let url = public_url(&args, addr, &transport);
    let notifier = notifier(&args, url.clone(), store.clone(), metrics.clone()).await?;
    let settings = Settings {
        leader_lease_ms: args.leader_lease_ms,
        wrong_tokens_per_window: args.wrong_tokens_per_window,
        url,
        lease_ms: args.lease_ms,
        retention: Some(Retention {
            keep: args.events_keep,
            archive: args.events_archive.clone(),
        }),
    };
    let services = Services {
        metrics,
        notifier,
        ..Services::default()
    };
    let controller = Controller::open_with(store, settings, services)
        .await
        .context("loading the stored state")?;
    if let Some(path) = &args.address_file {
        std::fs::write(path, addr.to_string())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    tracing::info!(
        "coalmine controller listening on {}://{addr} (dashboard at /, database {}, {} deployment(s))",
        transport.scheme(),
        shown_db(&args.db),
        controller.deployments().await.len()
    );
    let mut limits = Limits {
        max_connections: args.max_connections.max(1),
        ..Limits::default()
    };
    match raise_open_files_limit() {
        // Room for the database, logs and webhooks besides the connections.
        Some(files) => {
            let room = usize::try_from(files.saturating_sub(256)).unwrap_or(usize::MAX);
            if room < limits.max_connections {
                tracing::warn!(
                    "only {files} open files allowed: at most {room} connections instead of {}",
                    limits.max_connections
                );
                limits.max_connections = room.max(16);
            }
        }
        None => tracing::warn!("the open-files limit could not be read or raised"),
    }
    reload_cert_when_renewed(cert.clone(), args.tls_reload_seconds);
    reload_on_sighup(args, tokens.clone(), cert);
    serve_with(
        listener,
        controller,
        tokens,
        limits,
        transport,
        shutdown_signal(),
    )
    .await?;
    tracing::info!("stopped");
    Ok(())
}
