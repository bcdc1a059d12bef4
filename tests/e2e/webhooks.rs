//! Webhooks end to end: the real controller POSTs to a real HTTPS receiver
//! whose self-signed certificate (made here) it trusts through `--ca-file`.
//! Every notified event arrives once, in id order, also when the receiver
//! refused them while the controller was stopped (SIGTERM) and killed
//! (SIGKILL) and started again on the same database; a receiver added later
//! gets no history; and the receiver's URL (its secret path and query)
//! never appears in the controller's log. Over plain HTTP: a failed
//! delivery is retried with the same payload, and a receiver that never
//! answers slows neither the API nor the others.

use anyhow::{Context, Result, ensure};
use coalmine_client::types::{RegisterVersion, StartCanary};
use coalmine_client::{Action, Client};
use coalmine_e2e::{ControllerProc, Receiver, poll, prometheus_value};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The part of the receiver's URL that is a secret, as in a Slack hook.
const SECRET: &str = "T0PS3CRET";
/// The events the controller sends out (`NOTIFIED`).
const NOTIFIED: [&str; 5] = [
    "health_degraded",
    "auto_rollback_triggered",
    "rolled_back",
    "promoted",
    "reverted_to_pinned",
];

/// The receiver's certificate for 127.0.0.1 and its key, and a CA file
/// holding an unrelated certificate first and the receiver's after it.
struct Tls {
    _dir: tempfile::TempDir,
    ca_file: PathBuf,
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
}

impl Tls {
    fn new() -> Result<Tls> {
        let receiver = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])?;
        let unrelated = rcgen::generate_simple_self_signed(vec!["other.example".to_string()])?;
        let dir = tempfile::tempdir()?;
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(
            &ca_file,
            format!("{}{}", unrelated.cert.pem(), receiver.cert.pem()),
        )?;
        Ok(Tls {
            _dir: dir,
            ca_file,
            cert_der: receiver.cert.der().to_vec(),
            key_der: receiver.signing_key.serialize_der(),
        })
    }

    fn ca_file(&self) -> &str {
        self.ca_file.to_str().unwrap_or_default()
    }

    async fn receiver(&self) -> Result<Receiver> {
        Receiver::start_https(self.cert_der.clone(), self.key_der.clone()).await
    }
}

/// The receiver's URL with a secret path and query.
fn secret_url(r: &Receiver) -> String {
    format!("{}/{SECRET}-path?key={SECRET}-query", r.url())
}

/// How logs and metrics must name the receiver.
fn redacted(r: &Receiver) -> String {
    format!(
        "{}://{}/…",
        &r.url()[..r.url().find(':').unwrap_or(0)],
        r.addr
    )
}

/// `version` (not v2: `heart_prod` registers that one) registered, on a canary, then rolled back or promoted by the
/// operator; with `pause_first`, paused and resumed before (neither of
/// which is notified).
async fn canary_of(
    c: &ControllerProc,
    version: &str,
    end: Action,
    pause_first: bool,
) -> Result<()> {
    let api = c.client();
    let register = RegisterVersion {
        version: version.into(),
        cluster: format!("heart-{version}"),
        metadata: None,
    };
    api.register_version("heart-prod", &register).await?;
    let start = StartCanary {
        version: version.into(),
        ..StartCanary::default()
    };
    api.start_canary("heart-prod", &start).await?;
    if pause_first {
        api.act("heart-prod", Action::Pause, None).await?;
        api.act("heart-prod", Action::Resume, None).await?;
    }
    api.act("heart-prod", end, Some(format!("{version}: by hand")))
        .await?;
    Ok(())
}

/// heart-prod on v1 without a cooldown, so canaries can follow each other.
async fn heart_prod(c: &ControllerProc) -> Result<()> {
    c.heart_prod(json!({"cooldown_seconds": 0})).await
}

/// The ids of heart-prod's notified events, oldest first.
async fn notified_ids(c: &ControllerProc) -> Result<Vec<i64>> {
    let events = c.client().events("heart-prod", None, None).await?;
    Ok(events
        .iter()
        .filter(|e| NOTIFIED.contains(&e.event.kind.as_str()))
        .map(|e| e.id)
        .collect())
}

fn ids(payloads: &[Value]) -> Vec<i64> {
    payloads.iter().filter_map(|p| p["id"].as_i64()).collect()
}

/// Waits until the controller's backlog gauge for `r` reads `waiting`.
async fn backlog_is(c: &ControllerProc, r: &Receiver, waiting: f64) -> Result<()> {
    let label = redacted(r);
    poll(
        &format!("a backlog of {waiting} for {label}"),
        Duration::from_secs(30),
        || async {
            let text = c.metrics_text().await?;
            let value = prometheus_value(
                &text,
                "coalmine_controller_webhook_backlog",
                &[("receiver", &label)],
            );
            Ok((value == waiting && text.contains(&label)).then_some(()))
        },
    )
    .await
}

fn never_logs_the_url(c: &ControllerProc) -> Result<()> {
    let log = c.log();
    ensure!(
        !log.contains(SECRET),
        "the receiver's URL was logged:\n{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_receiver_gets_every_notified_event_and_its_url_stays_secret() -> Result<()> {
    let tls = Tls::new()?;
    let receiver = tls.receiver().await?;
    let url = secret_url(&receiver);
    let c = ControllerProc::start_with(30_000, &["--webhook", &url, "--ca-file", tls.ca_file()])
        .await?;
    heart_prod(&c).await?;
    canary_of(&c, "v3", Action::Rollback, true).await?;
    canary_of(&c, "v4", Action::Promote, false).await?;
    canary_of(&c, "v5", Action::Rollback, true).await?;
    let want = notified_ids(&c).await?;
    ensure!(want.len() == 3, "three notified events: {want:?}");

    let accepted = poll("every notified event", Duration::from_secs(30), || {
        let accepted = receiver.accepted();
        let enough = accepted.len() >= want.len();
        async move { Ok(enough.then_some(accepted)) }
    })
    .await?;
    backlog_is(&c, &receiver, 0.0).await?;
    let accepted_now = receiver.accepted();
    ensure!(
        ids(&accepted_now) == want,
        "delivered {:?}, notified {want:?}",
        ids(&accepted_now)
    );
    let kinds: Vec<&str> = accepted
        .iter()
        .filter_map(|p| p["event"].as_str())
        .collect();
    ensure!(
        kinds == ["rolled_back", "promoted", "rolled_back"],
        "{kinds:?}"
    );
    let first = &accepted[0];
    ensure!(
        first["deployment"] == "heart-prod"
            && first["actor"] == "operator"
            && first["reason"]
                .as_str()
                .unwrap_or("")
                .starts_with("v3: by hand")
            && first["numbers"]["version"] == "v3",
        "{first}"
    );
    ensure!(
        receiver.attempts().len() == want.len(),
        "each delivered once, at the first attempt: {:?}",
        receiver.attempts()
    );
    let metrics = c.metrics_text().await?;
    ensure!(
        metrics.contains("coalmine_controller_webhook_deliveries_total{result=\"delivered\"} 3"),
        "{metrics}"
    );
    ensure!(!metrics.contains(SECRET), "{metrics}");
    ensure!(
        c.log().contains(&redacted(&receiver)),
        "the log names the receiver by its redacted form"
    );
    never_logs_the_url(&c)?;

    // Without the CA file the same receiver is not trusted: the handshake
    // fails, the delivery is retried and never counted as delivered.
    let untrusting = ControllerProc::start_with(30_000, &["--webhook", &url]).await?;
    heart_prod(&untrusting).await?;
    canary_of(&untrusting, "v3", Action::Rollback, false).await?;
    poll("a refused handshake", Duration::from_secs(15), || {
        let failed = receiver.failed_handshakes();
        async move { Ok((failed >= 1).then_some(())) }
    })
    .await?;
    poll("the failure in the log", Duration::from_secs(15), || {
        let log = untrusting.log();
        async move { Ok(log.contains("invalid peer certificate").then_some(())) }
    })
    .await?;
    backlog_is(&untrusting, &receiver, 1.0).await?;
    ensure!(
        receiver.accepted().len() == want.len(),
        "an untrusted connection delivered something"
    );
    never_logs_the_url(&untrusting)?;

    // The CLI trusts the same file for an https:// URL.
    let client = Client::builder(&receiver.url())
        .ca_file(&tls.ca_file)?
        .build()?;
    client
        .text("/")
        .await
        .context("the client with --ca-file")?;
    let err = Client::new(&receiver.url()).text("/").await.unwrap_err();
    ensure!(
        err.to_string().contains("invalid peer certificate"),
        "without the CA file: {err}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_backlog_survives_sigterm_and_sigkill_and_arrives_once_in_order() -> Result<()> {
    let tls = Tls::new()?;
    let receiver = tls.receiver().await?;
    receiver.refuse(true);
    let url = secret_url(&receiver);
    let args = ["--webhook", url.as_str(), "--ca-file", tls.ca_file()];
    let mut c = ControllerProc::start_with(30_000, &args).await?;
    heart_prod(&c).await?;
    canary_of(&c, "v3", Action::Rollback, false).await?;
    canary_of(&c, "v4", Action::Promote, false).await?;
    backlog_is(&c, &receiver, 2.0).await?;
    poll("a refused attempt", Duration::from_secs(15), || {
        let n = receiver.attempts().len();
        async move { Ok((n >= 1).then_some(())) }
    })
    .await?;

    let status = c.terminate(Duration::from_secs(15)).await?;
    ensure!(status.success(), "SIGTERM: {status}");
    c.restart().await?;
    backlog_is(&c, &receiver, 2.0).await?;
    canary_of(&c, "v5", Action::Rollback, false).await?;
    backlog_is(&c, &receiver, 3.0).await?;

    // Killed with its backlog; started again with a second receiver, which
    // is new: it gets what happens from now on, not the history.
    c.kill9();
    let late = Receiver::start(0, false).await?;
    let late_url = format!("{}/{SECRET}-late", late.url());
    let with_late = [&args[..], &["--webhook", late_url.as_str()][..]].concat();
    c.restart_with(&with_late).await?;
    backlog_is(&c, &receiver, 3.0).await?;
    canary_of(&c, "v6", Action::Promote, false).await?;
    let want = notified_ids(&c).await?;
    ensure!(want.len() == 4, "four notified events: {want:?}");

    receiver.refuse(false);
    poll("the whole backlog", Duration::from_secs(60), || {
        let enough = receiver.accepted().len() >= want.len();
        async move { Ok(enough.then_some(())) }
    })
    .await?;
    backlog_is(&c, &receiver, 0.0).await?;
    backlog_is(&c, &late, 0.0).await?;
    let delivered = ids(&receiver.accepted());
    ensure!(
        delivered == want,
        "delivered {delivered:?}, notified {want:?} (each once, in id order)"
    );
    let late_got = ids(&late.accepted());
    ensure!(
        late_got == want[3..],
        "the new receiver got {late_got:?}, only {:?} happened since it was added",
        &want[3..]
    );
    ensure!(
        receiver.attempts().len() > want.len(),
        "the receiver refused some attempts"
    );
    never_logs_the_url(&c)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_delivered_retried_and_never_block() -> Result<()> {
    let flaky = Receiver::start(1, false).await?; // the first delivery fails
    let dead = Receiver::start(0, true).await?; // never answers
    let c = ControllerProc::start_with(
        30_000,
        &[
            "--webhook",
            &flaky.url(),
            "--webhook",
            &dead.url(),
            "--public-url",
            "http://coalmine.example:8700",
        ],
    )
    .await?;
    c.heart_prod(json!({})).await?;
    c.start_canary(None).await?;
    // With one receiver hanging, changes still answer at once.
    let t = Instant::now();
    c.client()
        .act("heart-prod", Action::Rollback, Some("bad outputs".into()))
        .await?;
    c.client().deployment("heart-prod").await?;
    ensure!(
        t.elapsed() < Duration::from_secs(2),
        "the API waited on a webhook: {:?}",
        t.elapsed()
    );

    let delivered = poll("the retried delivery", Duration::from_secs(15), || {
        let attempts = flaky.attempts();
        async move { Ok((attempts.len() >= 2).then_some(attempts)) }
    })
    .await?;
    ensure!(
        delivered[0] == delivered[1],
        "a retry sends the same payload"
    );
    let p = &delivered[1];
    ensure!(
        p["deployment"] == "heart-prod" && p["event"] == "rolled_back",
        "{p}"
    );
    ensure!(
        p["reason"]
            .as_str()
            .unwrap_or("")
            .starts_with("bad outputs"),
        "{p}"
    );
    ensure!(
        p["numbers"]["version"] == "v2" && p["numbers"]["from_percent"] == 20.0,
        "{p}"
    );
    ensure!(
        p["link"] == "http://coalmine.example:8700/#/deployments/heart-prod",
        "{p}"
    );
    ensure!(p["actor"] == "operator", "{p}");
    // canary_started and the registrations are not notified.
    ensure!(flaky.attempts().iter().all(|a| a["event"] == "rolled_back"));
    ensure!(
        dead.attempts().len() == 1,
        "the hanging receiver got its delivery attempt"
    );
    let metrics = c.metrics_text().await?;
    ensure!(
        metrics.contains("coalmine_controller_webhook_deliveries_total{result=\"retried\"} 1"),
        "{metrics}"
    );
    ensure!(
        metrics.contains("coalmine_controller_webhook_deliveries_total{result=\"delivered\"} 1"),
        "{metrics}"
    );
    Ok(())
}
