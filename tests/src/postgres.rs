//! A real PostgreSQL server for the tests: Debian's `postgresql` package
//! (`make setup` installs it), `initdb` into a temporary directory, the
//! server on a free loopback port, stopped and removed when dropped.
//!
//! PostgreSQL refuses to run as root: as root, the data directory is given
//! to the `postgres` user the package creates and the server runs as it.

use crate::poll;
use anyhow::{Context as _, Result, anyhow, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The superuser the tests connect as (trust authentication, loopback only).
const USER: &str = "coalmine";

/// A running PostgreSQL server.
#[derive(Debug)]
pub struct Postgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    server: Option<Child>,
}

/// The newest PostgreSQL installed (`/usr/lib/postgresql/<version>/bin`).
fn bin_dir() -> Result<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| anyhow!("PostgreSQL is not installed ({e}); run `make setup`"))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| anyhow!("no initdb under /usr/lib/postgresql; run `make setup`"))
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

impl Postgres {
    /// initdb and start on a free port.
    pub async fn start() -> Result<Postgres> {
        let bin = bin_dir()?;
        let dir = tempfile::Builder::new().prefix("coalmine-pg-").tempdir()?;
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()?;
            if !status.success() {
                bail!("chown of the data directory to postgres failed: {status}");
            }
        }
        let mut pg = Postgres {
            bin,
            port: crate::free_port()?,
            dir,
            server: None,
        };
        let data = pg.data();
        let out = pg
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                USER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()
            .context("running initdb")?;
        if !out.status.success() {
            bail!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        pg.spawn().await?;
        Ok(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A command from the server's bin directory, as the user it runs as.
    fn command(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        if is_root() {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=postgres",
                "--regid=postgres",
                "--clear-groups",
                "--",
            ])
            .arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    async fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("postgres.log"))?;
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data())
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "max_connections=200"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting postgres")?;
        self.server = Some(child);
        let bin = self.bin.clone();
        let port = self.port.to_string();
        poll(
            "PostgreSQL to accept connections",
            Duration::from_secs(30),
            || {
                let ready = Command::new(bin.join("pg_isready"))
                    .args(["-h", "127.0.0.1", "-p", &port, "-U", USER, "-q"])
                    .status()
                    .map(|s| s.success());
                let exited = self.server.as_mut().map(|c| c.try_wait());
                let r = match (ready, exited) {
                    (_, Some(Ok(Some(status)))) => {
                        Err(anyhow!("postgres exited with {status}:\n{}", self.log()))
                    }
                    (Ok(true), _) => Ok(Some(())),
                    _ => Ok(None),
                };
                async move { r }
            },
        )
        .await
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// Creates a database of its own for a test; returns its URL.
    pub fn database(&self, name: &str) -> Result<String> {
        let out = Command::new(self.bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                USER,
                name,
            ])
            .output()?;
        if !out.status.success() {
            bail!("createdb {name}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(self.url(name))
    }

    /// The URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{name}", self.port)
    }

    /// Runs `sql` in database `name` with psql; returns what it prints
    /// (unaligned, tuples only).
    pub fn psql(&self, name: &str, sql: &str) -> Result<String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER])
            .args(["-d", name, "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()?;
        if !out.status.success() {
            bail!("psql: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Stops the server (a fast shutdown: connections are closed, what is
    /// committed stays).
    pub async fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.server.take() else {
            return Ok(());
        };
        signal(&child, "-INT")?;
        let waited = poll("PostgreSQL to stop", Duration::from_secs(30), || {
            let r = child.try_wait().map_err(anyhow::Error::from);
            async move { r }
        })
        .await;
        if waited.is_err() {
            let _ = child.kill();
            let _ = child.wait();
        }
        waited.map(|_| ())
    }

    /// Starts the server again on the same port and data.
    pub async fn start_again(&mut self) -> Result<()> {
        self.spawn().await
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

fn signal(child: &Child, signal: &str) -> Result<()> {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()?;
    if !status.success() {
        bail!("kill {signal}: {status}");
    }
    Ok(())
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.server.take() {
            // An immediate shutdown: the data is thrown away anyway.
            let _ = signal(&child, "-QUIT");
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
