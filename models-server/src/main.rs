//! `coalmine-models-server`: train a heart-disease model, or serve one.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use coalmine_models_server::model::Model;
use coalmine_models_server::serve::{Faults, router};
use coalmine_models_server::train::{Options, load, train};
use coalmine_protocol::secret::Secret;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    version,
    about = "Train a heart-disease model, or serve one with switchable faults."
)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train a logistic regression on the UCI Cleveland data and write the artifact.
    Train {
        /// The tab-separated data (header line, 13 features, `diagnosis`).
        #[arg(long)]
        data: PathBuf,
        /// Where to write the model artifact (JSON).
        #[arg(long)]
        out: PathBuf,
        /// The version label recorded in the artifact.
        #[arg(long, default_value = "v1")]
        version: String,
        /// Train an intentionally weak model (few features, few epochs).
        #[arg(long)]
        underfit: bool,
        /// Seed of the train/test split.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Serve a model artifact over HTTP.
    Serve {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8501")]
        listen: SocketAddr,
        /// Share of predictions answered with a 500 (0 ..= 1).
        #[arg(long, default_value_t = 0.0)]
        error_rate: f64,
        /// Milliseconds added to every prediction.
        #[arg(long, default_value_t = 0)]
        extra_latency_ms: u64,
        /// Answer malformed input with a 500, as a fragile model would.
        #[arg(long)]
        crash_on_malformed: bool,
        /// Token for POST /admin/faults (disabled without one).
        #[arg(long, env = "COALMINE_MODELS_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        /// Write the address actually bound (useful with port 0) to this file.
        #[arg(long)]
        address_file: Option<PathBuf>,
    },
}

async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! { _ = tokio::signal::ctrl_c() => {}, () = term => {} }
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("COALMINE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Args::parse().command {
        Cmd::Train {
            data,
            out,
            version,
            underfit,
            seed,
        } => {
            let text = std::fs::read_to_string(&data)
                .with_context(|| format!("reading {}", data.display()))?;
            let dataset = load(&text).with_context(|| format!("loading {}", data.display()))?;
            let model = train(
                &dataset,
                &Options {
                    seed,
                    ..Options::new(&version, underfit)
                },
            );
            if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&out, serde_json::to_vec_pretty(&model)?)
                .with_context(|| format!("writing {}", out.display()))?;
            println!(
                "trained {} ({}): test accuracy {:.3} on {} held-out rows (train {:.3}); {} rows with missing values left out; sha256 {}",
                model.version,
                if underfit { "underfit" } else { "full" },
                model.test_accuracy,
                model.training.test_rows,
                model.train_accuracy,
                model.training.rows_dropped_missing,
                model.sha256
            );
        }
        Cmd::Serve {
            model,
            listen,
            error_rate,
            extra_latency_ms,
            crash_on_malformed,
            admin_token,
            address_file,
        } => {
            let bytes =
                std::fs::read(&model).with_context(|| format!("reading {}", model.display()))?;
            let m =
                Model::from_json(&bytes).with_context(|| format!("loading {}", model.display()))?;
            let faults = Faults {
                error_rate,
                extra_latency_ms,
                crash_on_malformed,
            };
            if let Err(e) = faults.check() {
                bail!("{e}");
            }
            let token = admin_token
                .filter(|t| !t.trim().is_empty())
                .map(Secret::new);
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("listening on {listen}"))?;
            if let Some(path) = &address_file {
                std::fs::write(path, listener.local_addr()?.to_string())
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            tracing::info!(
                "serving model {} (test accuracy {:.3}) on http://{}; faults {:?}; fault switch {}",
                m.version,
                m.test_accuracy,
                listener.local_addr()?,
                faults,
                if token.is_some() {
                    "enabled"
                } else {
                    "disabled"
                }
            );
            axum::serve(listener, router(m, faults, token))
                .with_graceful_shutdown(shutdown())
                .await?;
        }
    }
    Ok(())
}
