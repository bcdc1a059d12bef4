//! Debian's Chromium, headless, driven through chromedriver (WebDriver).

use crate::poll;
use anyhow::{Context as _, Result, bail};
use fantoccini::{Client, ClientBuilder};
use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A browser session; chromedriver and every Chromium process it started
/// are stopped when dropped.
#[derive(Debug)]
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub async fn start() -> Result<Browser> {
        for bin in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
            if !Path::new(bin).exists() {
                bail!(
                    "{bin} is missing; run `make setup` (Debian packages chromium, chromium-driver)"
                );
            }
        }
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        // Its own process group: Chromium's processes join it, and outlive
        // chromedriver unless the group is stopped.
        let mut driver = Command::new("/usr/bin/chromedriver")
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting chromedriver")?;
        let url = format!("http://127.0.0.1:{port}");
        let up = poll("chromedriver", Duration::from_secs(20), || {
            let url = format!("{url}/status");
            async move {
                Ok(reqwest::get(&url)
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
                    .map(|_| ()))
            }
        })
        .await;
        if let Err(e) = up {
            let _ = driver.kill();
            return Err(e);
        }
        let profile = tempfile::Builder::new()
            .prefix("coalmine-chromium-")
            .tempdir()?;
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1400,1100",
            // The controller under test serves HTTPS with a certificate of
            // the test's own CA, which this profile does not know.
            "--ignore-certificate-errors",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .collect::<Vec<_>>();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({ "binary": "/usr/bin/chromium", "args": args }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&url)
            .await;
        match client {
            Ok(client) => Ok(Browser {
                client,
                driver,
                _profile: profile,
            }),
            Err(e) => {
                let _ = driver.kill();
                let _ = driver.wait();
                bail!("cannot start a Chromium session: {e}")
            }
        }
    }

    /// Saves a PNG of the page.
    pub async fn screenshot(&self, path: &Path) -> Result<()> {
        let png = self.client.screenshot().await?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png)?;
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // Any that left the group (Chromium's zygotes), by their profile.
        let profile = format!("user-data-dir={}", self._profile.path().display());
        let _ = Command::new("pkill")
            .args(["-KILL", "-f", &profile])
            .status();
    }
}

/// Clicks the element with `id`, found again if the page redrew it
/// between finding and clicking (a stale element).
pub async fn click(b: &Client, id: &str) -> Result<()> {
    poll("a button to click", Duration::from_secs(5), || async {
        let Ok(button) = b.find(fantoccini::Locator::Id(id)).await else {
            return Ok(None);
        };
        Ok(button.click().await.ok().map(|_| ()))
    })
    .await
}

/// The text of the element with `id`; none while it is missing or the
/// page redraws it (a stale element).
pub async fn element_text(b: &Client, id: &str) -> Option<String> {
    b.find(fantoccini::Locator::Id(id))
        .await
        .ok()?
        .text()
        .await
        .ok()
}
