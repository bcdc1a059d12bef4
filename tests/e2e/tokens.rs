//! Named tokens on the real controller: two operators act under their own
//! names, tokens rotate on SIGHUP without failing a call or a sync, a
//! proxy's own sync token cannot report as another proxy, one proxy's
//! made-up numbers cannot alone roll back a canary or revert a promoted
//! version. Wrong tokens and their limit: `wrong_tokens.rs`.

use anyhow::{Context as _, Result, ensure};
use coalmine_client::Client;
use coalmine_client::types::{CreateDeployment, RegisterVersion};
use coalmine_e2e::{
    ControllerProc, Envoy, EnvoyConfig, Load, Upstream, first_canary_response, kinds, plugin, poll,
    prometheus_value,
};
use coalmine_protocol::Role;
use coalmine_protocol::stats::RoleStats;
use coalmine_protocol::sync::{RoleReport, SyncRequest};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

const LEASE_MS: u64 = 30_000;
const ALICE: &str = "alice-operator-token-1";
const ALICE_NEW: &str = "alice-operator-token-2";
const BOB: &str = "bob-operator-token-0001";
const PROXY_A: &str = "proxy-a-sync-token-0001";
const PROXY_A_NEW: &str = "proxy-a-sync-token-0002";
const PROXY_B: &str = "proxy-b-sync-token-0001";

type Entries<'a> = &'a [(&'a str, &'a [&'a str])];

fn write_tokens(path: &Path, operators: Entries, sync: Entries) -> Result<()> {
    let map = |entries: Entries| -> serde_json::Map<String, serde_json::Value> {
        entries
            .iter()
            .map(|(n, t)| (n.to_string(), json!(t)))
            .collect()
    };
    let file = json!({"operator": map(operators), "sync": map(sync)});
    // Written whole, then renamed: a reload never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&file)?)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// SIGHUP, then waits until the controller logged the reload.
async fn reload(c: &ControllerProc) -> Result<()> {
    let before = c.log().matches("tokens reloaded").count();
    c.hangup()?;
    poll("the tokens to reload", Duration::from_secs(10), || async {
        Ok((c.log().matches("tokens reloaded").count() > before).then_some(()))
    })
    .await
}

fn operator(c: &ControllerProc, token: &str) -> Result<Client> {
    Ok(c.bare_client()?.operator_token(Some(token.to_string())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_operators_act_under_their_names_and_rotation_fails_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("tokens.json");
    write_tokens(
        &file,
        &[("alice", &[ALICE]), ("bob", &[BOB])],
        &[("proxy-a", &[PROXY_A])],
    )?;
    let path = file.display().to_string();
    let c = ControllerProc::start_with(LEASE_MS, &["--tokens-file", &path]).await?;
    let (v1, v2) = (
        Upstream::start("heart-v1").await?,
        Upstream::start("heart-v2").await?,
    );

    // Two operators, each under their own name.
    let policy = serde_json::from_value(json!({"check_interval_seconds": 1, "min_requests": 20}))?;
    operator(&c, ALICE)?
        .create_deployment(&CreateDeployment::new(
            "heart-prod",
            "v1",
            "heart-v1",
            Some(policy),
        ))
        .await?;
    let v2_version = RegisterVersion {
        version: "v2".into(),
        cluster: "heart-v2".into(),
        metadata: None,
    };
    operator(&c, BOB)?
        .register_version("heart-prod", &v2_version)
        .await?;
    let events = c.events_after(0).await?;
    let actors: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.event.kind.as_str(), e.event.actor.as_str()))
        .collect();
    println!("timeline: {actors:?}");
    ensure!(
        actors
            == [
                ("deployment_created", "alice"),
                ("version_registered", "alice"),
                ("version_registered", "bob")
            ],
        "{actors:?}"
    );
    let log = c.log();
    ensure!(
        log.contains("actor=\"alice\"") || log.contains("actor=alice"),
        "no access log line names alice:\n{log}"
    );
    ensure!(
        !log.contains(ALICE) && !log.contains(PROXY_A),
        "a token in the log"
    );

    // A proxy syncing with its own token, under load, on a canary.
    let mut p = plugin(LEASE_MS)?;
    p["controller"]["token"] = json!(PROXY_A);
    let config = |p: &serde_json::Value| -> Result<EnvoyConfig> {
        EnvoyConfig::shipped("envoy.yaml")?
            .upstream("heart-v1", v1.addr)?
            .upstream("heart-v2", v2.addr)?
            .controller(&c)?
            .plugin_config(p)
    };
    let envoy = Envoy::start_as(config(&p)?, "proxy-a").await?;
    operator(&c, ALICE)?
        .start_canary(
            "heart-prod",
            &coalmine_client::types::StartCanary {
                version: "v2".into(),
                percent: Some(20.0),
                ..Default::default()
            },
        )
        .await?;
    let load = Load::start(envoy.url("/predict/heart"), 40);
    first_canary_response(&load, Instant::now())
        .await
        .with_context(|| format!("controller log:\n{}\nenvoy log:\n{}", c.log(), envoy.log()))?;

    // Rotation while an operator calls without pause: add the new tokens,
    // reload, switch the callers to them, remove the old ones, reload.
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let token = std::sync::Arc::new(std::sync::Mutex::new(ALICE.to_string()));
    let made = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let caller = {
        let (bare, token, made) = (c.bare_client()?, token.clone(), made.clone());
        tokio::spawn(async move {
            let mut calls = 0u32;
            while !*stopped.borrow_and_update() {
                let t = token.lock().map(|t| t.clone()).unwrap_or_default();
                let client = bare.clone().operator_token(Some(t));
                // An authenticated call that changes nothing: registering
                // a version twice is refused with 409, after the token.
                let v = RegisterVersion {
                    version: "v2".into(),
                    cluster: "heart-v2".into(),
                    metadata: None,
                };
                match client.register_version("heart-prod", &v).await {
                    Err(e) if e.status() == Some(409) => {
                        calls += 1;
                        made.store(calls, std::sync::atomic::Ordering::SeqCst);
                    }
                    other => {
                        return Err(anyhow::anyhow!("call {calls} during rotation: {other:?}"));
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(calls)
        })
    };
    let both: &[&str] = &[ALICE, ALICE_NEW];
    write_tokens(
        &file,
        &[("alice", both), ("bob", &[BOB])],
        &[("proxy-a", &[PROXY_A])],
    )?;
    reload(&c).await?;
    *token.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = ALICE_NEW.to_string();
    // Two more calls: the one under way may carry the old token, the next
    // carries the new one.
    let switched = made.load(std::sync::atomic::Ordering::SeqCst);
    poll(
        "a call with the new token",
        Duration::from_secs(10),
        || async {
            Ok((made.load(std::sync::atomic::Ordering::SeqCst) >= switched + 2).then_some(()))
        },
    )
    .await?;
    write_tokens(
        &file,
        &[("alice", &[ALICE_NEW]), ("bob", &[BOB])],
        &[("proxy-a", &[PROXY_A])],
    )?;
    reload(&c).await?;
    // The proxy's token: the new one added, the proxy given it (a config
    // push: here a new Envoy with the same node id), the old one removed.
    let both: &[&str] = &[PROXY_A, PROXY_A_NEW];
    write_tokens(
        &file,
        &[("alice", &[ALICE_NEW]), ("bob", &[BOB])],
        &[("proxy-a", both)],
    )?;
    reload(&c).await?;
    p["controller"]["token"] = json!(PROXY_A_NEW);
    let renewed = Envoy::start_as(config(&p)?, "proxy-a").await?;
    drop(load);
    drop(envoy);
    write_tokens(
        &file,
        &[("alice", &[ALICE_NEW]), ("bob", &[BOB])],
        &[("proxy-a", &[PROXY_A_NEW])],
    )?;
    reload(&c).await?;
    let accepted = |text: &str| {
        prometheus_value(
            text,
            "coalmine_controller_sync_reports_total",
            &[("result", "accepted")],
        )
    };
    let before = accepted(&c.metrics_text().await?);
    poll(
        "the renewed proxy to sync",
        Duration::from_secs(10),
        || async { Ok((accepted(&c.metrics_text().await?) >= before + 2.0).then_some(())) },
    )
    .await?;
    let _ = stop.send(true);
    let calls = caller.await??;
    println!("{calls} operator calls during the rotation, none refused");
    ensure!(calls > 10, "only {calls} calls");
    ensure!(
        operator(&c, ALICE)?
            .register_version("heart-prod", &v2_version)
            .await
            .err()
            .and_then(|e| e.status())
            == Some(401),
        "the removed token still works"
    );
    let metrics = c.metrics_text().await?;
    let unauthorized = prometheus_value(
        &metrics,
        "coalmine_controller_sync_reports_total",
        &[("result", "unauthorized")],
    );
    ensure!(
        unauthorized == 0.0,
        "syncs refused during the rotation: {unauthorized}"
    );
    // The name stays the actor across its tokens.
    operator(&c, ALICE_NEW)?
        .act("heart-prod", coalmine_client::Action::Pause, None)
        .await?;
    let events = c.events_after(0).await?;
    let last = events.last().context("no events")?;
    ensure!(
        (last.event.kind.as_str(), last.event.actor.as_str()) == ("paused", "alice"),
        "{:?}",
        kinds(&events)
    );
    drop(renewed);
    drop(dir);
    Ok(())
}

/// `n` requests with `outcome`, each taking 3 ms.
fn stats(n: u64, outcome: coalmine_protocol::Outcome) -> Result<RoleStats> {
    let mut s = RoleStats::try_new().map_err(|e| anyhow::anyhow!("{e}"))?;
    for _ in 0..n {
        s.record(outcome, 3_000);
    }
    Ok(s)
}

/// `n` requests of v2 serving as the baseline (after its promotion),
/// failing or not, in one report.
fn promoted_report(n: u64, failing: bool) -> Result<Vec<RoleReport>> {
    let outcome = match failing {
        true => coalmine_protocol::Outcome::ServerError,
        false => coalmine_protocol::Outcome::Success,
    };
    let s = stats(n, outcome)?;
    Ok(vec![RoleReport::from_stats(
        "heart-prod",
        Role::Baseline,
        "v2",
        &s,
    )])
}

/// `canary` canary requests (failing or not) and `baseline` good baseline
/// ones, in one report.
fn report(canary: u64, failing: bool, baseline: u64) -> Result<Vec<RoleReport>> {
    let outcome = match failing {
        true => coalmine_protocol::Outcome::ServerError,
        false => coalmine_protocol::Outcome::Success,
    };
    Ok(vec![
        RoleReport::from_stats("heart-prod", Role::Canary, "v2", &stats(canary, outcome)?),
        RoleReport::from_stats(
            "heart-prod",
            Role::Baseline,
            "v1",
            &stats(baseline, coalmine_protocol::Outcome::Success)?,
        ),
    ])
}

/// Ten failing canary requests in one report.
fn failing_report() -> Result<Vec<RoleReport>> {
    report(10, true, 0)
}

/// A controller with tokens of its own for alice, proxy-a and proxy-b (in
/// the returned directory), heart-prod judged every second from 10
/// requests, and a canary of v2 at 20 %.
async fn two_proxies_and_a_canary() -> Result<(tempfile::TempDir, ControllerProc)> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("tokens.json");
    write_tokens(
        &file,
        &[("alice", &[ALICE])],
        &[("proxy-a", &[PROXY_A]), ("proxy-b", &[PROXY_B])],
    )?;
    let path = file.display().to_string();
    let c = ControllerProc::start_with(LEASE_MS, &["--tokens-file", &path]).await?;
    c.heart_prod(json!({"check_interval_seconds": 1, "min_requests": 10}))
        .await?;
    c.start_canary(Some(20.0)).await?;
    Ok((dir, c))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_proxy_cannot_report_as_another() -> Result<()> {
    let (_dir, c) = two_proxies_and_a_canary().await?;
    let b = c.bare_client()?.sync_token(Some(PROXY_B.to_string()));
    let forged = SyncRequest {
        proxy: "proxy-a".into(),
        instance: "worker-0".into(),
        seq: 1,
        epoch: 0,
        reports: failing_report()?,
        shadow: Vec::new(),
    };
    let refused = b
        .sync(&forged, 0)
        .await
        .err()
        .context("a forged report was taken")?;
    ensure!(refused.status() == Some(401), "{refused}");
    println!("forged report refused: {refused}");
    // Its own name works (an empty report).
    let own = SyncRequest {
        proxy: "proxy-b".into(),
        reports: Vec::new(),
        ..forged.clone()
    };
    b.sync(&own, 0).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let d = c.client().deployment("heart-prod").await?;
    ensure!(
        d.canary.is_some(),
        "the canary was rolled back on a forged report"
    );
    let metrics = c.metrics_text().await?;
    let counted = prometheus_value(
        &metrics,
        "coalmine_controller_sync_reports_total",
        &[("result", "forged")],
    );
    ensure!(counted == 1.0, "forged reports counted: {counted}");

    // proxy-b, under its own name: its usual volume (2 000 requests a
    // report, a busy worker's second), then ten times that, all failing
    // canary requests.
    for seq in 1..=8 {
        let usual = SyncRequest {
            seq,
            instance: "worker-1".into(),
            reports: report(400, false, 1_600)?,
            ..own.clone()
        };
        b.sync(&usual, 0).await?;
    }
    let flood = SyncRequest {
        seq: 9,
        instance: "worker-1".into(),
        reports: report(20_000, true, 0)?,
        ..own.clone()
    };
    b.sync(&flood, 0).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let d = c.client().deployment("heart-prod").await?;
    ensure!(
        d.canary.is_some(),
        "a healthy canary rolled back on one proxy's flood"
    );
    let metrics = c.metrics_text().await?;
    let capped = prometheus_value(
        &metrics,
        "coalmine_controller_dropped_reports_total",
        &[("reason", "over_volume_cap")],
    );
    ensure!(capped == 1.0, "capped reports counted: {capped}");
    println!("one proxy's report of 10x its usual volume: capped, counted, canary kept");

    // Within its cap, proxy-b alone claims 2 000 failing canary requests
    // while proxy-a serves the canary without errors: the verdict without
    // proxy-b (the proxy with the most canary requests) is HEALTHY, so the
    // canary holds instead of rolling back.
    let a = c.bare_client()?.sync_token(Some(PROXY_A.to_string()));
    let from_a = |seq, reports| SyncRequest {
        proxy: "proxy-a".into(),
        instance: "worker-0".into(),
        seq,
        epoch: 0,
        reports,
        shadow: Vec::new(),
    };
    for seq in 1..=8 {
        a.sync(&from_a(seq, report(400, false, 1_600)?), 0).await?;
    }
    let claim = SyncRequest {
        seq: 10,
        instance: "worker-1".into(),
        reports: report(2_000, true, 0)?,
        ..own.clone()
    };
    b.sync(&claim, 0).await?;
    let held = poll(
        "a hold on proxy-b's claim",
        Duration::from_secs(10),
        || async {
            let h = c.client().health("heart-prod").await?;
            let disagree = h
                .reasons
                .iter()
                .find(|r| r.code.as_str() == "proxies_disagree");
            Ok(disagree.map(|r| (h.verdict, r.message.clone())))
        },
    )
    .await?;
    println!("{} : {}", held.0.as_str(), held.1);
    ensure!(
        held.0.as_str() == "DEGRADED" && held.1.starts_with("proxy proxy-b "),
        "{held:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        c.client().deployment("heart-prod").await?.canary.is_some(),
        "one proxy's claim rolled the canary back"
    );
    // When proxy-a sees the canary fail too, the proxies agree: rolled back.
    a.sync(&from_a(9, report(2_000, true, 0)?), 0).await?;
    poll("the rollback", Duration::from_secs(10), || async {
        Ok(c.client()
            .deployment("heart-prod")
            .await?
            .canary
            .is_none()
            .then_some(()))
    })
    .await?;
    println!("both proxies see the canary fail: rolled back");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_proxy_cannot_alone_revert_a_promoted_version() -> Result<()> {
    let (dir, c) = two_proxies_and_a_canary().await?;
    let sync = |token: &str, proxy: &str| -> Result<_> {
        let client = c.bare_client()?.sync_token(Some(token.to_string()));
        let proxy = proxy.to_string();
        Ok(move |seq, reports| {
            let client = client.clone();
            let req = SyncRequest {
                proxy: proxy.clone(),
                instance: "worker-0".into(),
                seq,
                epoch: 0,
                reports,
                shadow: Vec::new(),
            };
            async move { client.sync(&req, 0).await }
        })
    };
    let (a, b) = (sync(PROXY_A, "proxy-a")?, sync(PROXY_B, "proxy-b")?);
    // Both proxies serve v1 and the canary without errors: v1's numbers
    // are what the promoted v2 is compared with.
    for seq in 1..=4 {
        a(seq, report(400, false, 1_600)?).await?;
        b(seq, report(400, false, 1_600)?).await?;
    }
    operator(&c, ALICE)?
        .act("heart-prod", coalmine_client::Action::Promote, None)
        .await?;
    // The watch counts from the second after the promotion's.
    let h = c.client().health("heart-prod").await?;
    let since = h.watch.context("no watch after the promotion")?.since;
    poll(
        "the second after the promotion's",
        Duration::from_secs(5),
        || async {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
            Ok((now.as_secs() > since / 1000).then_some(()))
        },
    )
    .await?;
    // proxy-a serves v2 without errors; proxy-b alone claims 4 000 of its
    // requests failed, more than proxy-a's 3 200 (it is the loudest).
    for seq in 5..=12 {
        a(seq, promoted_report(400, false)?).await?;
    }
    b(5, promoted_report(4_000, true)?).await?;
    let held = poll(
        "a hold on proxy-b's claim",
        Duration::from_secs(10),
        || async {
            let h = c.client().health("heart-prod").await?;
            let w = h.watch.context("no watch after the promotion")?;
            let disagree = w
                .reasons
                .iter()
                .find(|r| r.code.as_str() == "proxies_disagree");
            Ok(disagree.map(|r| (w.verdict, r.message.clone())))
        },
    )
    .await?;
    println!("watch {} : {}", held.0.as_str(), held.1);
    ensure!(
        held.0.as_str() == "DEGRADED" && held.1.starts_with("proxy proxy-b (4000 of 7200 requests of v2 in its watch's window) alone would revert v2"),
        "{held:?}"
    );
    // The step that holds writes the hold: once it is in the timeline, that
    // step has not reverted.
    let is_hold = |e: &coalmine_client::types::StoredEvent| {
        e.event.kind.as_str() == "health_degraded"
            && e.event
                .reason
                .starts_with("post-promotion watch of v2: proxy proxy-b")
    };
    poll(
        "the hold in the timeline",
        Duration::from_secs(10),
        || async { Ok(c.events_after(0).await?.iter().any(is_hold).then_some(())) },
    )
    .await?;
    let d = c.client().deployment("heart-prod").await?;
    let events = c.events_after(0).await?;
    ensure!(
        d.baseline.version == "v2",
        "one proxy's claim reverted the promoted version: {:?}",
        kinds(&events)
    );
    // The hold is in the timeline, once.
    let holds = events.iter().filter(|e| is_hold(e)).count();
    ensure!(holds == 1, "{:?}", kinds(&events));
    // When proxy-a sees v2 fail too, the proxies agree: reverted.
    a(13, promoted_report(4_000, true)?).await?;
    poll("the revert", Duration::from_secs(10), || async {
        let d = c.client().deployment("heart-prod").await?;
        Ok((d.baseline.version == "v1").then_some(()))
    })
    .await?;
    let events = c.events_after(0).await?;
    ensure!(
        kinds(&events)
            .iter()
            .filter(|k| **k == "reverted_to_pinned")
            .count()
            == 1,
        "{:?}",
        kinds(&events)
    );
    println!("both proxies see v2 fail: reverted to v1");
    drop(dir);
    Ok(())
}
