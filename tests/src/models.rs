//! Real model servers (`coalmine-models-server`) for tests and benchmarks.

use crate::poll;
use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::json;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How a model is trained (`coalmine-models-server train`'s options).
#[derive(Debug, Clone, Copy, Default)]
pub struct Training {
    /// Few features, few epochs: a weak model.
    pub underfit: bool,
    /// The train/test split's seed (none: the trainer's default).
    pub seed: Option<u64>,
}

impl Training {
    pub const FULL: Training = Training {
        underfit: false,
        seed: None,
    };
    pub const UNDERFIT: Training = Training {
        underfit: true,
        seed: None,
    };
    /// Retrained on another split (seed 7): as good as the full model.
    pub const RETRAINED: Training = Training {
        underfit: false,
        seed: Some(7),
    };
}

/// Trains `version` on the heart-disease data into `dir/<version>.json`.
pub fn train(bin: &Path, dir: &Path, version: &str, how: Training) -> Result<PathBuf> {
    let model = dir.join(format!("{version}.json"));
    let mut train = Command::new(bin);
    train
        .arg("train")
        .arg("--data")
        .arg(crate::workspace_root().join("data/uci-heart-cleveland/cleveland.tsv"))
        .arg("--out")
        .arg(&model)
        .args(["--version", version]);
    if how.underfit {
        train.arg("--underfit");
    }
    if let Some(seed) = how.seed {
        train.arg("--seed").arg(seed.to_string());
    }
    let out = train.output().context("training a model")?;
    if !out.status.success() {
        bail!(
            "training {version} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(model)
}

/// A `coalmine-models-server serve` process; killed on drop.
#[derive(Debug)]
pub struct ModelServer {
    child: Child,
    pub addr: SocketAddr,
    admin_token: String,
}

impl ModelServer {
    /// Runs `command` (optionally under `taskset -c cpus`) with `serve_args`,
    /// which must include `--listen` on port 0; its address is learned from
    /// an address file in `dir`, where its log also goes (`<name>.log`).
    pub async fn serve(
        bin: &Path,
        cpus: Option<&str>,
        serve_args: &[String],
        env: &[(String, String)],
        dir: &Path,
        name: &str,
    ) -> Result<ModelServer> {
        let address_file = dir.join(format!("{name}.address"));
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        let mut command = match cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpus]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let mut child = command
            .args(serve_args)
            .arg("--address-file")
            .arg(&address_file)
            .env("COALMINE_LOG", "warn")
            .envs(env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the models server")?;
        let addr = poll(
            "the models server to listen",
            Duration::from_secs(30),
            || {
                let r = match child.try_wait() {
                    Ok(Some(status)) => Err(anyhow!(
                        "models server {name} exited with {status}: {}",
                        std::fs::read_to_string(dir.join(format!("{name}.log")))
                            .unwrap_or_default()
                    )),
                    _ => Ok(std::fs::read_to_string(&address_file)
                        .ok()
                        .and_then(|s| s.trim().parse().ok())),
                };
                async move { r }
            },
        )
        .await?;
        let admin_token = env
            .iter()
            .find(|(k, _)| k == "COALMINE_MODELS_ADMIN_TOKEN")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        Ok(ModelServer {
            child,
            addr,
            admin_token,
        })
    }

    /// A model trained `how` into `dir` as `version`, served on a free
    /// loopback port.
    pub async fn trained(dir: &Path, version: &str, how: Training) -> Result<ModelServer> {
        ModelServer::trained_with(dir, version, how, &[]).await
    }

    /// [`ModelServer::trained`] with its fault switch on (see
    /// [`ModelServer::set_faults`]).
    pub async fn trained_with_faults(
        dir: &Path,
        version: &str,
        how: Training,
    ) -> Result<ModelServer> {
        let token = [(
            "COALMINE_MODELS_ADMIN_TOKEN".to_string(),
            format!("{version}-faults-token"),
        )];
        ModelServer::trained_with(dir, version, how, &token).await
    }

    async fn trained_with(
        dir: &Path,
        version: &str,
        how: Training,
        env: &[(String, String)],
    ) -> Result<ModelServer> {
        let bin = crate::package_bin("coalmine-models-server")?;
        let model = train(&bin, dir, version, how)?;
        let args: Vec<String> = ["serve", "--model", &model.display().to_string()]
            .iter()
            .chain(&["--listen", "127.0.0.1:0"])
            .map(|a| a.to_string())
            .collect();
        ModelServer::serve(&bin, None, &args, env, dir, version).await
    }

    /// Sets the share of predictions answered with a 500 (the fault switch).
    pub async fn set_error_rate(&self, client: &reqwest::Client, rate: f64) -> Result<()> {
        self.set_faults(client, json!({"error_rate": rate})).await
    }

    /// Sets faults: `error_rate`, `extra_latency_ms`, `crash_on_malformed`.
    pub async fn set_faults(
        &self,
        client: &reqwest::Client,
        faults: serde_json::Value,
    ) -> Result<()> {
        client
            .post(format!("http://{}/admin/faults", self.addr))
            .bearer_auth(&self.admin_token)
            .json(&faults)
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
