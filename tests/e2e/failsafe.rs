//! Failing safe and staying bounded, on the real controller and Envoy: a
//! database that cannot be written while a canary fails, a flood of
//! made-up and oversized reports and slow clients, a restart after the
//! bake's time, a report from a newer release, and a timeline that would
//! grow without end.

use anyhow::{Context as _, Result, ensure};
use coalmine_client::{Action, Auth, Method, paths};
use coalmine_e2e::{
    ControllerProc, DbLock, INTERVAL_MS, Load, Receiver, SYNC_TOKEN, Stack, canary_traffic_stops,
    first_canary_response, kinds, poll, prometheus_value, rss_bytes, settled_role_counts,
};
use coalmine_protocol::Role;
use coalmine_protocol::stats::RoleStats;
use coalmine_protocol::sync::{RoleReport, SyncRequest};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt as _;

const LEASE_MS: u64 = 10_000;

fn count(events: &[&str], kind: &str) -> usize {
    events.iter().filter(|k| **k == kind).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_failing_while_the_database_cannot_be_written_is_rolled_back_everywhere()
-> Result<()> {
    let receiver = Receiver::start(0, false).await?;
    let s = Stack::start_with(LEASE_MS, &["--webhook", &receiver.url()]).await?;
    let (a, b) = (
        s.envoy("proxy-a", LEASE_MS).await?,
        s.envoy("proxy-b", LEASE_MS).await?,
    );
    s.deployment(json!({"check_interval_seconds": 1, "min_requests": 20}))
        .await?;
    s.start_canary(30.0).await?;
    let loads = [
        Load::start(a.url("/predict/heart"), 100),
        Load::start(b.url("/predict/heart"), 100),
    ];
    for load in &loads {
        first_canary_response(load, Instant::now()).await?;
    }
    let api = s.controller.client();
    let before = kinds(&api.events("heart-prod", None, None).await?).len();

    // The database cannot be written; then the canary fails.
    let lock = DbLock::take(&s.controller.db_path()).await?;
    s.v2.fail_every(1);
    let failed = Instant::now();
    for load in &loads {
        let deadline = Duration::from_millis(LEASE_MS + INTERVAL_MS);
        canary_traffic_stops(load, Duration::from_secs(1), 50, deadline).await?;
    }
    println!(
        "the canary failed with the database locked: every proxy at 0 % after {:.1} s",
        failed.elapsed().as_secs_f64()
    );
    let metrics = s.controller.metrics_text().await?;
    let store_errors = prometheus_value(&metrics, "coalmine_controller_store_errors_total", &[]);
    ensure!(store_errors >= 1.0, "no store error counted:\n{metrics}");
    let unready = api
        .readyz()
        .await
        .err()
        .context("ready with the rollback unstored")?;
    ensure!(unready.status() == Some(503), "{unready}");
    ensure!(
        receiver.attempts().is_empty(),
        "notified before it was stored"
    );

    drop(lock);
    poll("the rollback stored", Duration::from_secs(20), || async {
        Ok(api.readyz().await.is_ok().then_some(()))
    })
    .await?;
    let events = api.events("heart-prod", None, None).await?;
    let all = kinds(&events);
    let added = &all[before..];
    println!("stored once writable: {added:?}");
    for kind in [
        "health_check_failed",
        "auto_rollback_triggered",
        "rolled_back",
    ] {
        ensure!(
            count(added, kind) == 1,
            "{kind} stored {} times: {added:?}",
            count(added, kind)
        );
    }
    // Delivered, and nothing left to send: every receiver's backlog is 0.
    poll("the webhooks", Duration::from_secs(15), || async {
        let text = s.controller.metrics_text().await?;
        let backlogs: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("coalmine_controller_webhook_backlog{"))
            .collect();
        let drained = !backlogs.is_empty() && backlogs.iter().all(|l| l.ends_with(" 0"));
        Ok((drained && receiver.attempts().len() >= 2).then_some(()))
    })
    .await?;
    let sent: Vec<String> = receiver
        .attempts()
        .iter()
        .filter_map(|p| p["event"].as_str().map(str::to_string))
        .collect();
    ensure!(
        sent == ["auto_rollback_triggered", "rolled_back"],
        "webhooks: {sent:?}"
    );
    Ok(())
}

/// A report with empty statistics for `deployment`.
fn empty_report(deployment: &str) -> Result<RoleReport> {
    let stats = RoleStats::try_new().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(RoleReport::from_stats(
        deployment,
        Role::Baseline,
        "v1",
        &stats,
    ))
}

/// A sync body of about 4 MiB (valid JSON, mostly white space).
fn four_mib(n: usize) -> String {
    let head = format!(r#"{{"proxy":"big","instance":"big-{n}","seq":1,"epoch":0,"reports":[]"#);
    format!("{head}{}}}", " ".repeat(4 * 1024 * 1024 - head.len() - 64))
}

/// Over plain HTTP, then over TLS (one after the other: each measures
/// its controller's memory). Over TLS the same abuse takes more memory
/// (about 70 MiB against 30–40 here), so it is shown bounded by what more
/// abuse adds: 100 more rounds of made-up reports must not grow it
/// further.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn made_up_reports_huge_bodies_and_slow_clients_stay_bounded() -> Result<()> {
    abuse(Stack::start_plain(LEASE_MS).await?).await?;
    abuse(Stack::start(LEASE_MS).await?).await
}

/// 8 calls at once of 1 024 reports about made-up deployments, each call
/// a new instance at seq u64::MAX, `rounds` times; answered 200 each.
async fn made_up_reports(
    http: &reqwest::Client,
    url: &str,
    rounds: std::ops::Range<u64>,
    statuses: &mut std::collections::BTreeMap<u16, u64>,
) -> Result<()> {
    let template: Vec<RoleReport> = (0..1024)
        .map(|i| empty_report(&format!("made-up-{i}")))
        .collect::<Result<_>>()?;
    for round in rounds {
        let calls: Vec<_> = (0..8)
            .map(|k| {
                let body = SyncRequest {
                    proxy: "abuser".into(),
                    instance: format!("fresh-{round}-{k}"),
                    seq: u64::MAX,
                    epoch: 0,
                    reports: template.clone(),
                    shadow: Vec::new(),
                };
                let req = http.post(url).bearer_auth(SYNC_TOKEN).json(&body);
                tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()) })
            })
            .collect();
        for c in calls {
            *statuses.entry(c.await??).or_default() += 1;
        }
    }
    Ok(())
}

const MIB: f64 = 1_048_576.0;

/// Slow clients, huge bodies and made-up reports against `s`'s
/// controller while an honest proxy syncs: memory stays bounded, the
/// slow clients are cut off, the proxy never notices.
async fn abuse(s: Stack) -> Result<()> {
    let envoy = s.envoy("proxy-a", LEASE_MS).await?;
    s.deployment(json!({"check_interval_seconds": 1, "min_requests": 20}))
        .await?;
    s.start_canary(20.0).await?;
    let load = Load::start(envoy.url("/predict/heart"), 100);
    first_canary_response(&load, Instant::now()).await?;
    let pid = s.controller.pid().context("no controller pid")?;
    let rss_before = rss_bytes(pid)?;
    let url = s.controller.url(&paths::sync(0));

    // 300 clients that never finish their headers.
    let mut slow = Vec::new();
    for _ in 0..300 {
        let mut socket = s.controller.connect().await?;
        socket
            .write_all(b"POST /v1/sync HTTP/1.1\r\nhost: coalmine\r\n")
            .await?;
        slow.push(socket);
    }
    let http = s.controller.http()?;
    // 64 bodies of 4 MiB at once.
    let big: Vec<_> = (0..64)
        .map(|n| {
            let req = http
                .post(&url)
                .bearer_auth(SYNC_TOKEN)
                .header("content-type", "application/json")
                .body(four_mib(n));
            tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    // 400 000 reports about 1 024 made-up deployments.
    let started = Instant::now();
    let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
    made_up_reports(&http, &url, 0..50, &mut statuses).await?;
    for b in big {
        *statuses.entry(b.await??).or_default() += 1;
    }
    println!(
        "{} made-up reports and 64 bodies of 4 MiB in {:.1} s: {statuses:?}",
        50 * 8 * 1024,
        started.elapsed().as_secs_f64()
    );
    ensure!(statuses.get(&200) == Some(&(400 + 64)), "{statuses:?}");
    let rss_after = rss_bytes(pid)?;
    let grew = rss_after.saturating_sub(rss_before) as f64 / MIB;
    println!(
        "controller RSS {:.1} MiB → {:.1} MiB (+{grew:.1} MiB)",
        rss_before as f64 / MIB,
        rss_after as f64 / MIB
    );
    if s.controller.ca_file().is_none() {
        ensure!(grew < 48.0, "RSS grew by {grew:.1} MiB");
    } else {
        made_up_reports(&http, &url, 50..150, &mut statuses).await?;
        ensure!(statuses.get(&200) == Some(&(1200 + 64)), "{statuses:?}");
        let more = rss_bytes(pid)?.saturating_sub(rss_after) as f64 / MIB;
        println!("over TLS, 800 more calls of made-up reports: +{more:.1} MiB more");
        ensure!(more < 8.0, "RSS kept growing: +{more:.1} MiB more");
    }
    let metrics = s.controller.metrics_text().await?;
    let dropped = prometheus_value(
        &metrics,
        "coalmine_controller_dropped_reports_total",
        &[("reason", "unknown_deployment")],
    );
    ensure!(dropped >= 400.0 * 1024.0, "dropped {dropped}");

    // The slow clients were cut off; the honest proxy never noticed.
    // (Headers must arrive within 20 s.)
    poll(
        "the slow clients to be cut off",
        Duration::from_secs(30),
        || async {
            let open = prometheus_value(
                &s.controller.metrics_text().await?,
                "coalmine_controller_open_connections",
                &[],
            );
            Ok((open < 50.0).then_some(()))
        },
    )
    .await?;
    drop(slow);
    drop(load);
    let proxy = settled_role_counts(std::slice::from_ref(&envoy)).await?;
    let counted = poll(
        "the controller to count what Envoy did",
        Duration::from_secs(10),
        || async {
            let counts = s.controller.role_counts().await?;
            Ok((proxy == [counts]).then_some(counts))
        },
    )
    .await?;
    println!("Envoy and the controller both counted {counted:?} (baseline, canary)");
    let envoy_stats = envoy.prometheus().await?;
    let expiries = prometheus_value(
        &envoy_stats,
        "coalmine_lease_expiries",
        &[("deployment", "heart-prod")],
    );
    ensure!(expiries == 0.0, "the proxy lost its lease {expiries} times");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_restart_no_step_before_a_bake_of_fresh_data() -> Result<()> {
    let mut s = Stack::start(LEASE_MS * 6).await?;
    let envoy = s.envoy("proxy-a", LEASE_MS * 6).await?;
    s.deployment(json!({
        "check_interval_seconds": 1, "min_requests": 20, "bake_seconds": 8,
        "significance": "none", "steps": [20, 50, 100]
    }))
    .await?;
    s.start_canary(20.0).await?;
    let load = Load::start(envoy.url("/predict/heart"), 100);
    first_canary_response(&load, Instant::now()).await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Killed mid-bake; back after longer than a bake.
    s.controller.kill9();
    tokio::time::sleep(Duration::from_secs(10)).await;
    s.controller.restart().await?;
    let back = Instant::now();
    let api = s.controller.client();
    let stepped = poll("the first step", Duration::from_secs(40), || async {
        let d = api.deployment("heart-prod").await?;
        let at = d.canary.map(|c| c.percent);
        Ok((at != Some(20.0)).then(Instant::now))
    })
    .await?;
    let after = stepped.duration_since(back).as_secs_f64();
    println!("restarted after the bake's time: stepped {after:.1} s later (bake 8 s)");
    ensure!(after >= 8.0, "stepped {after:.1} s after the restart");
    drop(load);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_from_a_newer_release_is_taken_and_the_lease_holds() -> Result<()> {
    let c = ControllerProc::start(LEASE_MS).await?;
    c.heart_prod(json!({})).await?;
    let report = serde_json::to_value(empty_report("heart-prod")?)?;
    let mut newer = report.clone();
    newer["shard"] = json!(7);
    newer["counts"]["throttled"] = json!(3);
    let body = json!({"proxy": "p", "instance": "i", "seq": 1, "epoch": 0,
                      "reports": [newer], "filter_version": "9.9.9"});
    let (status, answer) = c
        .client()
        .send_json(Method::POST, &paths::sync(0), Some(&body), Auth::Sync)
        .await?;
    ensure!(status == 200, "{status} {answer}");
    ensure!(answer["lease_ms"] == json!(LEASE_MS), "{answer}");
    ensure!(
        answer["table"]["deployments"][0]["name"] == "heart-prod",
        "{answer}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeline_of_thousands_of_events_stays_within_its_retention() -> Result<()> {
    let archive = tempfile::tempdir()?;
    let dir = archive.path().to_string_lossy().to_string();
    let c = ControllerProc::start_with(
        LEASE_MS,
        &["--events-keep", "500", "--events-archive", &dir],
    )
    .await?;
    c.heart_prod(json!({})).await?;
    c.start_canary(Some(20.0)).await?;
    let api = c.client();
    for _ in 0..1000 {
        api.act("heart-prod", Action::Pause, None).await?;
        api.act("heart-prod", Action::Resume, None).await?;
    }
    let newest = api.latest_events("heart-prod", None, Some(1)).await?;
    let last_id = newest.first().map(|e| e.id).context("no events")?;
    let kept = poll("retention", Duration::from_secs(30), || async {
        let kept = api.latest_events("heart-prod", None, Some(10_000)).await?;
        Ok((kept.len() <= 500).then_some(kept))
    })
    .await?;
    let archived: Vec<Value> = std::fs::read_to_string(archive.path().join("heart-prod.jsonl"))?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let mut ids: Vec<i64> = archived.iter().filter_map(|e| e["id"].as_i64()).collect();
    ids.extend(kept.iter().rev().map(|e| e.id));
    println!(
        "{} events: {} kept, {} archived",
        ids.len(),
        kept.len(),
        archived.len()
    );
    ensure!(
        ids.len() as i64 == last_id,
        "{} of {last_id} events",
        ids.len()
    );
    ensure!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "ids not contiguous"
    );
    let metrics = c.metrics_text().await?;
    let size = prometheus_value(&metrics, "coalmine_controller_database_size_bytes", &[]);
    ensure!(size > 0.0, "no database size in /metrics");
    check_metrics(&metrics)?;
    Ok(())
}

/// `promtool check metrics` finds nothing to say about `/metrics`.
fn check_metrics(text: &str) -> Result<()> {
    use std::io::Write as _;
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running promtool (make setup installs it)")?;
    promtool
        .stdin
        .take()
        .context("stdin")?
        .write_all(text.as_bytes())?;
    let out = promtool.wait_with_output()?;
    ensure!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
