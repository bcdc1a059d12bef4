//! The real `coalmine-controller` binary as a test process.

use crate::{TlsFiles, poll};
use anyhow::{Context as _, Result, anyhow, bail};
use coalmine_client::Client;
use coalmine_client::types::{
    CreateDeployment, DeploymentView, RegisterVersion, StartCanary, StoredEvent,
};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const OPERATOR_TOKEN: &str = "e2e-operator-token";
pub const SYNC_TOKEN: &str = "e2e-sync-token";
pub const FEEDBACK_TOKEN: &str = "e2e-feedback-token";

/// A binary of the controller package (`make test-e2e` builds them).
pub fn package_bin(name: &str) -> Result<PathBuf> {
    let bin = crate::workspace_root().join("target/debug").join(name);
    if !bin.exists() {
        bail!(
            "{} is missing; run `cargo build -p coalmine-controller`",
            bin.display()
        );
    }
    Ok(bin)
}

/// The controller binary.
pub fn controller_bin() -> Result<PathBuf> {
    package_bin("coalmine-controller")
}

/// A running controller with its own database; killed on drop.
#[derive(Debug)]
pub struct ControllerProc {
    bin: PathBuf,
    /// A `taskset` CPU list to run on (benchmarks).
    cpus: Option<String>,
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub addr: SocketAddr,
    lease_ms: u64,
    /// A PostgreSQL URL to run on instead of a SQLite file of its own.
    db_url: Option<String>,
    extra_args: Vec<String>,
    /// When set, the whole environment it is configured by (listen address,
    /// database, tokens), as a deployment would give it; no flags then.
    env: Vec<(String, String)>,
    operator_token: String,
    sync_token: String,
    /// Serving HTTPS with these files (its own CA's certificate among them).
    tls: Option<TlsFiles>,
    /// The typed API client, pointed at the running controller.
    api: Client,
}

impl ControllerProc {
    /// Starts on a free port with a fresh database, serving HTTPS as
    /// [`ControllerProc::start_tls`] does: the end-to-end suite runs over
    /// TLS.
    pub async fn start(lease_ms: u64) -> Result<ControllerProc> {
        ControllerProc::start_with(lease_ms, &[]).await
    }

    /// Starts with extra command-line arguments (e.g. `--webhook URL`),
    /// serving HTTPS.
    pub async fn start_with(lease_ms: u64, extra_args: &[&str]) -> Result<ControllerProc> {
        ControllerProc::start_tls(lease_ms, extra_args).await
    }

    /// Starts serving plain HTTP on loopback, as `make demo` runs it (the
    /// browser tests, and the API contract's plain run).
    pub async fn start_plain(lease_ms: u64, extra_args: &[&str]) -> Result<ControllerProc> {
        ControllerProc::start_from(controller_bin()?, None, lease_ms, extra_args).await
    }

    /// Starts the given controller binary (e.g. a release build) serving
    /// plain HTTP, optionally confined to `cpus` (a `taskset` list).
    pub async fn start_from(
        bin: PathBuf,
        cpus: Option<&str>,
        lease_ms: u64,
        extra_args: &[&str],
    ) -> Result<ControllerProc> {
        let mut c = ControllerProc::unstarted(bin, lease_ms)?;
        c.cpus = cpus.map(str::to_string);
        c.extra_args = extra_args.iter().map(|a| a.to_string()).collect();
        c.spawn().await?;
        Ok(c)
    }

    /// Starts serving HTTPS only (`--tls-cert`, `--tls-key`) with a
    /// certificate for `localhost` and `127.0.0.1` signed by a fresh CA of
    /// its own ([`ControllerProc::ca_file`]), which its client trusts.
    pub async fn start_tls(lease_ms: u64, extra_args: &[&str]) -> Result<ControllerProc> {
        let mut c = ControllerProc::unstarted(controller_bin()?, lease_ms)?;
        c.tls = Some(TlsFiles::generate(c.dir.path())?);
        c.extra_args = extra_args.iter().map(|a| a.to_string()).collect();
        c.spawn().await?;
        Ok(c)
    }

    /// Starts on the PostgreSQL database at `db_url`, which other
    /// controllers may share (one of them leads), serving HTTPS.
    pub async fn start_on(
        db_url: &str,
        lease_ms: u64,
        extra_args: &[&str],
    ) -> Result<ControllerProc> {
        let mut c = ControllerProc::unstarted(controller_bin()?, lease_ms)?;
        c.tls = Some(TlsFiles::generate(c.dir.path())?);
        c.db_url = Some(db_url.to_string());
        c.extra_args = extra_args.iter().map(|a| a.to_string()).collect();
        c.spawn().await?;
        Ok(c)
    }

    /// Another replica of `peer` on the database at `db_url`: the same
    /// certificate and key (copied), as replicas mounting one Secret.
    pub async fn start_replica(
        peer: &ControllerProc,
        db_url: &str,
        extra_args: &[&str],
    ) -> Result<ControllerProc> {
        let mut c = ControllerProc::unstarted(controller_bin()?, peer.lease_ms)?;
        if let Some(tls) = &peer.tls {
            c.tls = Some(tls.copy_to(c.dir.path())?);
        }
        c.db_url = Some(db_url.to_string());
        c.extra_args = extra_args.iter().map(|a| a.to_string()).collect();
        c.spawn().await?;
        Ok(c)
    }

    /// [`ControllerProc::start_on`] with the given binary serving plain
    /// HTTP, optionally confined to `cpus`.
    pub async fn start_from_on(
        bin: PathBuf,
        cpus: Option<&str>,
        db_url: &str,
        lease_ms: u64,
        extra_args: &[&str],
    ) -> Result<ControllerProc> {
        let mut c = ControllerProc::unstarted(bin, lease_ms)?;
        c.cpus = cpus.map(str::to_string);
        c.db_url = Some(db_url.to_string());
        c.extra_args = extra_args.iter().map(|a| a.to_string()).collect();
        c.spawn().await?;
        Ok(c)
    }

    /// Starts configured by a container's environment alone (no flags), as
    /// its image would run it, except that `COALMINE_LISTEN` becomes a
    /// loopback address and `COALMINE_DB` a file of its own; both must be
    /// there.
    pub async fn start_env(env: &[(String, String)]) -> Result<ControllerProc> {
        let var = |name: &str| {
            env.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .ok_or_else(|| anyhow!("no {name} in the controller's environment"))
        };
        var("COALMINE_LISTEN")?;
        var("COALMINE_DB")?;
        let mut c = ControllerProc::unstarted(controller_bin()?, 0)?;
        c.operator_token = var("COALMINE_OPERATOR_TOKEN")?;
        c.sync_token = var("COALMINE_SYNC_TOKEN")?;
        c.env = env.to_vec();
        c.spawn().await?;
        Ok(c)
    }

    fn unstarted(bin: PathBuf, lease_ms: u64) -> Result<ControllerProc> {
        Ok(ControllerProc {
            bin,
            cpus: None,
            child: None,
            dir: tempfile::Builder::new()
                .prefix("coalmine-controller-")
                .tempdir()?,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            lease_ms,
            db_url: None,
            extra_args: Vec::new(),
            env: Vec::new(),
            operator_token: OPERATOR_TOKEN.to_string(),
            sync_token: SYNC_TOKEN.to_string(),
            tls: None,
            api: Client::new("http://127.0.0.1:0"),
        })
    }

    async fn spawn(&mut self) -> Result<()> {
        let address_file = self.dir.path().join("address");
        let _ = std::fs::remove_file(&address_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("controller.log"))?;
        let mut command = match &self.cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpus]).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        if self.env.is_empty() {
            command
                .arg("--listen")
                .arg(self.addr.to_string())
                .arg("--db")
                .arg(match &self.db_url {
                    Some(url) => url.into(),
                    None => self.db_path().into_os_string(),
                })
                .arg("--lease-ms")
                .arg(self.lease_ms.to_string())
                .env("COALMINE_OPERATOR_TOKEN", OPERATOR_TOKEN)
                .env("COALMINE_SYNC_TOKEN", SYNC_TOKEN)
                .env("COALMINE_FEEDBACK_TOKEN", FEEDBACK_TOKEN);
        } else {
            command
                .envs(self.env.iter().cloned())
                .env("COALMINE_LISTEN", self.addr.to_string())
                .env("COALMINE_DB", self.db_path());
        }
        if let Some(tls) = &self.tls {
            command
                .arg("--tls-cert")
                .arg(&tls.cert)
                .arg("--tls-key")
                .arg(&tls.key);
        }
        let child = command
            .arg("--address-file")
            .arg(&address_file)
            .args(&self.extra_args)
            .env("COALMINE_LOG", "info,coalmine_controller=debug,sqlx=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting coalmine-controller")?;
        self.child = Some(child);
        let log_path = self.dir.path().join("controller.log");
        let addr: SocketAddr = poll("the controller to listen", Duration::from_secs(30), || {
            let exited = self.child.as_mut().map(|c| c.try_wait());
            let r = match exited {
                Some(Ok(Some(status))) => Err(anyhow!(
                    "controller exited with {status}:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                )),
                _ => Ok(std::fs::read_to_string(&address_file)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())),
            };
            async move { r }
        })
        .await?;
        self.addr = addr;
        let feedback_token = match self.env.is_empty() {
            true => Some(FEEDBACK_TOKEN.to_string()),
            false => None,
        };
        let mut api = Client::builder(&self.url(""));
        if let Some(tls) = &self.tls {
            api = api.ca_file(&tls.ca)?;
        }
        self.api = api
            .build()?
            .operator_token(Some(self.operator_token.clone()))
            .sync_token(Some(self.sync_token.clone()))
            .feedback_token(feedback_token);
        Ok(())
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9`: no shutdown, no flush.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits (up to `timeout`) for the exit status.
    pub async fn terminate(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let mut child = self.child.take().ok_or_else(|| anyhow!("not running"))?;
        let pid = child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let status = poll("the controller to exit", timeout, || {
            let r = child.try_wait().map_err(anyhow::Error::from);
            async move { r }
        })
        .await;
        if status.is_err() {
            let _ = child.kill();
            let _ = child.wait();
        }
        status
    }

    /// Freezes the process (SIGSTOP): it holds its port and connections but
    /// answers nothing, like a controller stuck or starved of CPU.
    pub fn freeze(&self) -> Result<()> {
        self.signal("-STOP")
    }

    /// SIGHUP: the controller reads its tokens again.
    pub fn hangup(&self) -> Result<()> {
        self.signal("-HUP")
    }

    /// Lets a frozen process run again (SIGCONT).
    pub fn thaw(&self) -> Result<()> {
        self.signal("-CONT")
    }

    fn signal(&self, signal: &str) -> Result<()> {
        let pid = self.pid().ok_or_else(|| anyhow!("not running"))?;
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()?;
        if !status.success() {
            bail!("kill {signal} {pid}: {status}");
        }
        Ok(())
    }

    /// The SQLite database file.
    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("coalmine.db")
    }

    /// Starts again on the same address and database (after a SIGKILL, if
    /// it is still running).
    pub async fn restart(&mut self) -> Result<()> {
        self.kill9();
        self.spawn().await
    }

    /// Starts again on the same address and database, with these extra
    /// arguments instead of the first ones.
    pub async fn restart_with(&mut self, extra_args: &[&str]) -> Result<()> {
        self.extra_args = extra_args.iter().map(|a| a.to_string()).collect();
        self.restart().await
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("controller.log")).unwrap_or_default()
    }

    /// `http://` or (with TLS) `https://` + its address + `path`.
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.addr)
    }

    /// The PEM file of the CA that signed its certificate, when it serves
    /// HTTPS.
    pub fn ca_file(&self) -> Option<&Path> {
        self.tls.as_ref().map(|t| t.ca.as_path())
    }

    /// Its CA, certificate and key files, when it serves HTTPS.
    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// The typed API client, with the operator and sync tokens.
    pub fn client(&self) -> &Client {
        &self.api
    }

    /// heart-prod on v1 (cluster heart-v1) with `policy`, and v2 (heart-v2)
    /// registered.
    pub async fn heart_prod(&self, policy: Value) -> Result<()> {
        let policy = serde_json::from_value(policy).context("the test's policy")?;
        let create = CreateDeployment::new("heart-prod", "v1", "heart-v1", Some(policy));
        self.api.create_deployment(&create).await?;
        self.api
            .register_version(
                "heart-prod",
                &RegisterVersion {
                    version: "v2".into(),
                    cluster: "heart-v2".into(),
                    metadata: Some(json!({"test_accuracy": 0.72})),
                },
            )
            .await?;
        Ok(())
    }

    /// v2 on a canary of heart-prod, at `percent` (default: the schedule's
    /// first step).
    pub async fn start_canary(&self, percent: Option<f64>) -> Result<DeploymentView> {
        let start = StartCanary {
            version: "v2".into(),
            percent,
            ..StartCanary::default()
        };
        Ok(self.api.start_canary("heart-prod", &start).await?)
    }

    /// The requests per role (baseline, canary) in heart-prod's window, as
    /// the controller judges them.
    pub async fn role_counts(&self) -> Result<(f64, f64)> {
        let h = self.api.health("heart-prod").await?;
        Ok((h.baseline.requests as f64, h.canary.requests as f64))
    }

    /// The controller's Prometheus metrics, as text.
    pub async fn metrics_text(&self) -> Result<String> {
        Ok(self.api.metrics().await?)
    }

    /// heart-prod's events after `after` (an event id), oldest first.
    pub async fn events_after(&self, after: i64) -> Result<Vec<StoredEvent>> {
        Ok(self.api.events("heart-prod", Some(after), None).await?)
    }

    /// Waits (up to `timeout`) until heart-prod's canary is gone (rolled
    /// back or promoted); returns the events from the first, and how long
    /// it took.
    pub async fn canary_ended(&self, timeout: Duration) -> Result<(Vec<StoredEvent>, Duration)> {
        let started = std::time::Instant::now();
        poll("the canary to end", timeout, || async {
            let d = self.api.deployment("heart-prod").await?;
            Ok(d.canary.is_none().then_some(()))
        })
        .await?;
        Ok((self.events_after(0).await?, started.elapsed()))
    }

    /// Registers `version` on `cluster` for heart-prod, starts its canary
    /// as soon as the cooldown allows, and waits (up to `timeout`) for its
    /// promotion. Returns the events from the registration on, and how long
    /// the canary took.
    pub async fn promote_new(
        &self,
        version: &str,
        cluster: &str,
        metadata: Value,
        timeout: Duration,
    ) -> Result<(Vec<StoredEvent>, Duration)> {
        let after = self.events_after(0).await?.last().map_or(0, |e| e.id);
        let register = RegisterVersion {
            version: version.into(),
            cluster: cluster.into(),
            metadata: Some(metadata),
        };
        self.api.register_version("heart-prod", &register).await?;
        let start = StartCanary {
            version: version.into(),
            ..StartCanary::default()
        };
        poll("the cooldown to end", Duration::from_secs(10), || async {
            Ok(self.api.start_canary("heart-prod", &start).await.ok())
        })
        .await?;
        let started = std::time::Instant::now();
        poll(&format!("{version} promoted"), timeout, || async {
            let d = self.api.deployment("heart-prod").await?;
            Ok((d.baseline.version == version).then_some(()))
        })
        .await?;
        Ok((self.events_after(after).await?, started.elapsed()))
    }

    /// The kinds of a deployment's events, oldest first.
    pub async fn event_kinds(&self, deployment: &str) -> Result<Vec<String>> {
        let events = self.api.events(deployment, None, None).await?;
        Ok(events
            .iter()
            .map(|e| e.event.kind.as_str().to_string())
            .collect())
    }
}

impl Drop for ControllerProc {
    fn drop(&mut self) {
        self.kill9();
    }
}
