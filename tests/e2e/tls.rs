//! The controller over TLS (`--tls-cert`, `--tls-key`), with a certificate
//! of the test's own CA: clients that do not speak TLS or do not trust the
//! CA get no answer (and the controller counts the failed handshakes), a
//! renewed certificate serves after SIGHUP without a restart, the CLI
//! works with `--ca-file`, and Envoy with `envoy-tls.yaml` syncs over TLS
//! well enough to have a failing canary rolled back. The API contract over
//! TLS is in `api_contract.rs`.

use anyhow::{Context as _, Result, ensure};
use coalmine_client::{Client, ClientError};
use coalmine_e2e::{
    ControllerProc, Envoy, INTERVAL_MS, Load, OPERATOR_TOKEN, SERVER_NAME, Stack, TlsFiles,
    canary_traffic_stops, first_canary_response, kinds, package_bin, poll, prometheus_value,
};
use serde_json::json;
use std::process::Output;
use std::time::{Duration, Instant};

const LEASE_MS: u64 = 10_000;
const FAILURES: &str = "coalmine_controller_tls_handshake_failures_total";

/// Failed handshakes the controller counted, for `reason`.
async fn handshake_failures(c: &ControllerProc, reason: &str) -> Result<f64> {
    let text = c.metrics_text().await?;
    Ok(prometheus_value(&text, FAILURES, &[("reason", reason)]))
}

/// Waits until the controller has counted `n` failed handshakes (it counts
/// after the client has given up, so not always before the client returns).
async fn failures_reach(c: &ControllerProc, n: f64) -> Result<()> {
    poll(
        &format!("{n} failed handshakes counted"),
        Duration::from_secs(10),
        || async { Ok((handshake_failures(c, "error").await? >= n).then_some(())) },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_tls_or_without_the_ca_get_no_answer() -> Result<()> {
    let c = ControllerProc::start_tls(30_000, &[]).await?;
    ensure!(c.url("").starts_with("https://"), "{}", c.url(""));
    ensure!(
        c.log()
            .contains(&format!("listening on https://{}", c.addr)),
        "the log does not say https:\n{}",
        c.log()
    );
    // The client trusting the test's CA is served.
    c.client().healthz().await?;
    ensure!(handshake_failures(&c, "error").await? == 0.0);

    // Plain HTTP to the TLS port: no HTTP answer, the handshake counted.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let url = format!("http://{}/healthz", c.addr);
    let answer = plain.get(&url).send().await;
    ensure!(
        answer.is_err(),
        "plain HTTP was answered: {:?}",
        answer.map(|r| r.status())
    );
    println!(
        "plain HTTP: {}",
        answer.err().map(|e| e.to_string()).unwrap_or_default()
    );
    failures_reach(&c, 1.0).await?;

    // HTTPS trusting only the system's roots: the certificate is refused.
    let err = Client::new(&c.url(""))
        .healthz()
        .await
        .err()
        .context("a client without the CA was served")?;
    println!("https without the CA: {err}");
    ensure!(
        matches!(&err, ClientError::Unreachable { cause, .. } if cause.contains("certificate")),
        "not a certificate error: {err}"
    );
    failures_reach(&c, 2.0).await?;

    // A certificate of another CA is no better.
    let dir = tempfile::tempdir()?;
    let other = TlsFiles::generate(dir.path())?;
    let err = Client::builder(&c.url(""))
        .ca_file(&other.ca)?
        .build()?
        .healthz()
        .await
        .err()
        .context("a client trusting another CA was served")?;
    ensure!(err.to_string().contains("certificate"), "{err}");
    failures_reach(&c, 3.0).await?;

    // The controller is still serving, and timed out no handshake.
    c.client().healthz().await?;
    ensure!(handshake_failures(&c, "timeout").await? == 0.0);
    Ok(())
}

/// A client trusting only the CA at `ca`, on a new connection each call
/// (a client of its own per check: a client's TLS session, resumed, skips
/// the certificate).
fn trusting(ca: &std::path::Path) -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca)?)?)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()?)
}

/// `url` answered 200 to `client`.
async fn answers(client: &reqwest::Client, url: &str) -> bool {
    client
        .get(url)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_serves_without_a_restart() -> Result<()> {
    // Only SIGHUP reloads here (no periodic check to race it).
    let c = ControllerProc::start_tls(30_000, &["--tls-reload-seconds", "0"]).await?;
    let files = c.tls_files().context("no TLS files")?.clone();
    let (url, pid) = (c.url("/healthz"), c.pid());
    let old_ca = trusting(&files.ca)?;
    ensure!(answers(&old_ca, &url).await, "not served at start");
    // A half-written certificate: refused, the old one keeps serving.
    std::fs::write(&files.cert, "-----BEGIN CERTIFICATE-----\nMIIB")?;
    c.hangup()?;
    poll(
        "the refused reload logged",
        Duration::from_secs(10),
        || async {
            Ok(c.log()
                .contains("TLS certificate not reloaded, the old one keeps serving")
                .then_some(()))
        },
    )
    .await?;
    ensure!(
        answers(&trusting(&files.ca)?, &url).await,
        "a bad certificate file broke the listener"
    );
    // Renewed: a certificate of another CA written over the same files.
    let renewed_dir = tempfile::tempdir()?;
    let renewed = TlsFiles::generate(renewed_dir.path())?;
    std::fs::copy(&renewed.cert, &files.cert)?;
    std::fs::copy(&renewed.key, &files.key)?;
    let new_ca = trusting(&renewed.ca)?;
    ensure!(
        !answers(&new_ca, &url).await,
        "the renewed certificate served before SIGHUP"
    );
    c.hangup()?;
    poll(
        "the renewed certificate served",
        Duration::from_secs(10),
        || async { Ok(answers(&new_ca, &url).await.then_some(())) },
    )
    .await?;
    ensure!(
        !answers(&trusting(&files.ca)?, &url).await,
        "the old certificate still served after the reload"
    );
    ensure!(c.pid() == pid, "the controller restarted");
    ensure!(
        c.log().contains("TLS certificate reloaded from"),
        "{}",
        c.log()
    );
    println!("renewed certificate served after SIGHUP, same process");

    // Checked every second: a renewal is found without a signal (as when
    // cert-manager renews a mounted Secret).
    let c = ControllerProc::start_tls(30_000, &["--tls-reload-seconds", "1"]).await?;
    let files = c.tls_files().context("no TLS files")?.clone();
    let url = c.url("/healthz");
    let renewed = TlsFiles::generate(renewed_dir.path())?;
    std::fs::copy(&renewed.cert, &files.cert)?;
    std::fs::copy(&renewed.key, &files.key)?;
    let started = Instant::now();
    poll(
        "the renewal found without a signal",
        Duration::from_secs(10),
        || async { Ok(answers(&trusting(&renewed.ca)?, &url).await.then_some(())) },
    )
    .await?;
    ensure!(
        c.log().contains("TLS certificate renewed in"),
        "{}",
        c.log()
    );
    println!(
        "renewal found by the periodic check after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs `coalmine` against the controller, with `--ca-file ca` if given.
fn cli(c: &ControllerProc, ca: Option<&std::path::Path>, args: &[&str]) -> Result<Output> {
    let mut cmd = std::process::Command::new(package_bin("coalmine")?);
    cmd.arg("--url")
        .arg(c.url(""))
        .arg("--token")
        .arg(OPERATOR_TOKEN)
        .args(args)
        .env_remove("COALMINE_TOKEN")
        .env_remove("COALMINE_URL")
        .env_remove("COALMINE_CA_FILE")
        .current_dir(std::env::temp_dir());
    if let Some(ca) = ca {
        cmd.arg("--ca-file").arg(ca);
    }
    Ok(cmd.output()?)
}

fn ok(out: &Output) -> Result<String> {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_works_over_tls_with_its_ca_file_and_says_why_not_without() -> Result<()> {
    let c = ControllerProc::start_tls(30_000, &[]).await?;
    let ca = c.ca_file().context("no CA file")?.to_path_buf();
    let create = [
        "deployments",
        "create",
        "heart-prod",
        "--baseline-version",
        "v1",
        "--baseline-cluster",
        "heart-v1",
    ];
    let out = ok(&cli(&c, Some(&ca), &create)?)?;
    ensure!(out.contains("deployment heart-prod"), "{out}");
    let register = [
        "versions",
        "register",
        "heart-prod",
        "v2",
        "--cluster",
        "heart-v2",
    ];
    ok(&cli(&c, Some(&ca), &register)?)?;
    let out = ok(&cli(
        &c,
        Some(&ca),
        &["canary", "start", "heart-prod", "v2", "--percent", "10"],
    )?)?;
    ensure!(out.contains("v2 @ 10 %"), "{out}");
    let status = ok(&cli(&c, Some(&ca), &["status", "heart-prod"])?)?;
    ensure!(
        status.contains("baseline") && status.contains("canary"),
        "{status}"
    );
    // The same call through the environment variable.
    let mut cmd = std::process::Command::new(package_bin("coalmine")?);
    let out = cmd
        .args(["--url", &c.url(""), "deployments", "list"])
        .env("COALMINE_CA_FILE", &ca)
        .env_remove("COALMINE_TOKEN")
        .current_dir(std::env::temp_dir())
        .output()?;
    ensure!(ok(&out)?.contains("heart-prod"));

    // Without the CA: exit 3, one sentence naming the certificate and the
    // flag that fixes it.
    let out = cli(&c, None, &["status", "heart-prod"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("without --ca-file: {stderr}");
    ensure!(
        out.status.code() == Some(3),
        "exit {:?}: {stderr}",
        out.status
    );
    ensure!(
        stderr.starts_with("coalmine: ")
            && stderr.contains("certificate")
            && stderr.contains("--ca-file")
            && stderr.trim_end().lines().count() == 1,
        "{stderr:?}"
    );
    ensure!(out.stdout.is_empty());
    // A CA file that is not one: exit 2, naming it.
    let bogus = c
        .ca_file()
        .context("no CA file")?
        .with_file_name("server.key");
    let out = cli(&c, Some(&bogus), &["status", "heart-prod"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(2),
        "exit {:?}: {stderr}",
        out.status
    );
    ensure!(stderr.contains("server.key"), "{stderr}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn envoy_syncs_over_tls_and_a_failing_canary_is_rolled_back() -> Result<()> {
    let s = Stack::start_tls(LEASE_MS).await?;
    let envoy = s.envoy("proxy-tls", LEASE_MS).await?;
    s.deployment(json!({"check_interval_seconds": 1, "min_requests": 20}))
        .await?;
    s.start_canary(30.0).await?;
    let load = Load::start(envoy.url("/predict/heart"), 100);
    // The canary gets traffic only once a sync over TLS brought the split.
    first_canary_response(&load, Instant::now()).await?;
    s.v2.fail_every(1);
    let failed = Instant::now();
    let deadline = Duration::from_millis(LEASE_MS + 10 * INTERVAL_MS);
    canary_traffic_stops(&load, Duration::from_secs(1), 50, deadline).await?;
    println!(
        "over TLS: the failing canary got no traffic after {:.1} s",
        failed.elapsed().as_secs_f64()
    );
    let (events, _) = s.controller.canary_ended(Duration::from_secs(10)).await?;
    let kinds = kinds(&events);
    ensure!(
        kinds.contains(&"auto_rollback_triggered") && kinds.contains(&"rolled_back"),
        "{kinds:?}"
    );
    // The syncs went over TLS: Envoy made handshakes to the controller and
    // the controller refused none.
    let stats = envoy.prometheus().await?;
    let cluster = [("envoy_cluster_name", "coalmine_controller")];
    let handshakes = prometheus_value(&stats, "envoy_cluster_ssl_handshake", &cluster);
    println!("envoy's TLS handshakes with the controller: {handshakes}");
    ensure!(handshakes >= 1.0, "no TLS handshake to the controller");
    ensure!(handshake_failures(&s.controller, "error").await? == 0.0);

    // An Envoy trusting another CA cannot sync: it refuses the certificate.
    let dir = tempfile::tempdir()?;
    let other = TlsFiles::generate(dir.path())?;
    let config =
        s.envoy_config(LEASE_MS)?
            .upstream_tls("coalmine_controller", &other.ca, SERVER_NAME)?;
    let stranger = Envoy::start_as(config, "proxy-stranger").await?;
    poll(
        "the stranger's certificate check to fail",
        Duration::from_secs(15),
        || async {
            let stats = stranger.prometheus().await?;
            let refused = prometheus_value(&stats, "envoy_cluster_ssl_fail_verify_error", &cluster);
            Ok((refused >= 1.0).then_some(()))
        },
    )
    .await?;
    failures_reach(&s.controller, 1.0).await?;
    Ok(())
}
