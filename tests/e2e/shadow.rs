//! A shadow on live traffic (real Envoy, controller and model servers): how
//! often a retrained and an underfit model agree with production, judged by
//! the controller; copies marked and stripped of routing headers; and a
//! slow or failing shadow that changes nothing for users.

use anyhow::{Context as _, Result, ensure};
use coalmine_client::types::RegisterVersion;
use coalmine_e2e::models::Training;
use coalmine_e2e::{
    ControllerProc, Envoy, EnvoyConfig, Load, ModelServer, Upstream, patients,
    plugin_reading_outputs, poll,
};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const LEASE_MS: u64 = 30_000;

/// The users' latencies with and without a shadow are compared within one
/// run: that test runs alone, the others side by side.
static QUIET: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());
const DEPLOYMENT: &str = "heart-prod";

/// Starts (or changes) heart-prod's shadow; the controller's answer.
async fn start_shadow(c: &ControllerProc, version: &str, percent: f64) -> Result<Value> {
    let d = c
        .client()
        .start_shadow(DEPLOYMENT, version, Some(percent))
        .await
        .with_context(|| format!("starting shadow {version}"))?;
    Ok(serde_json::to_value(d)?)
}

async fn stop_shadow(c: &ControllerProc) -> Result<()> {
    c.client().stop_shadow(DEPLOYMENT).await?;
    Ok(())
}

/// heart-prod's health, as JSON.
async fn health(c: &ControllerProc) -> Result<Value> {
    Ok(serde_json::to_value(c.client().health(DEPLOYMENT).await?)?)
}

/// Registers v3 on cluster heart-v3.
async fn register_v3(c: &ControllerProc) -> Result<()> {
    let v3 = RegisterVersion {
        version: "v3".into(),
        cluster: "heart-v3".into(),
        metadata: None,
    };
    c.client().register_version(DEPLOYMENT, &v3).await?;
    Ok(())
}

/// One field of the shadow's health block.
fn field<'a>(health: &'a Value, name: &str) -> Option<&'a Value> {
    health["shadow"]["fields"]
        .as_array()?
        .iter()
        .find(|f| f["field"] == name)
}

/// Waits until `version`'s shadow has `n` predictions compared; its health.
async fn compared(c: &ControllerProc, version: &str, n: u64) -> Result<Value> {
    poll(
        &format!("{n} of {version}'s predictions compared"),
        Duration::from_secs(90),
        || async {
            let h = health(c).await?;
            let done = h["shadow"]["version"] == version
                && field(&h, "prediction")
                    .and_then(|f| f["compared"].as_u64())
                    .is_some_and(|m| m >= n);
            Ok(done.then_some(h))
        },
    )
    .await
}

fn agreement(health: &Value) -> Result<f64> {
    let f = field(health, "prediction").context("no prediction field")?;
    let (agreed, compared) = (
        f["agreed"].as_f64().context("agreed")?,
        f["compared"].as_f64().context("compared")?,
    );
    Ok(agreed / compared)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shadow_is_judged_by_how_often_it_agrees_with_production() -> Result<()> {
    let _shared = QUIET.read().await;
    let dir = tempfile::tempdir()?;
    let v1 = ModelServer::trained(dir.path(), "v1", Training::FULL).await?;
    let v2 = ModelServer::trained(dir.path(), "v2", Training::UNDERFIT).await?;
    let v3 = ModelServer::trained(dir.path(), "v3", Training::RETRAINED).await?;
    let c = ControllerProc::start(LEASE_MS).await?;
    let config = EnvoyConfig::shipped("envoy.yaml")?
        .upstream("heart-v1", v1.addr)?
        .upstream("heart-v2", v2.addr)?
        .upstream("heart-v3", v3.addr)?
        .controller(&c)?
        .plugin_config(&plugin_reading_outputs(LEASE_MS)?)?;
    let envoy = Envoy::start_as(config, "proxy-a").await?;
    // A retrained model's probabilities often differ by more than the
    // tolerance (0.05) while its predictions agree: the predictions decide.
    c.heart_prod(json!({"check_interval_seconds": 1, "window_seconds": 600,
        "shadow": {"fields": {"probability": {"min_agreement": 0.5}}}}))
        .await?;
    register_v3(&c).await?;
    // Every complete patient of the data set, in turn, as production sees
    // them; no canary: every request is the baseline's.
    let load = Load::cycling(envoy.url("/predict/heart"), 100, patients()?);

    // The retrained v3 (split seed 7): 98.3 % of v1's predictions over
    // the 297 patients.
    start_shadow(&c, "v3", 100.0).await?;
    let h = compared(&c, "v3", 1000).await?;
    let v3_agrees = agreement(&h)?;
    println!(
        "v3 as shadow: prediction agreement {:.1} % over {} answers; shadow {}",
        v3_agrees * 100.0,
        field(&h, "prediction").map_or(Value::Null, |f| f["compared"].clone()),
        h["shadow"]
    );
    ensure!(
        (v3_agrees - 0.983).abs() <= 0.02,
        "v3 agrees on {v3_agrees}, expected 0.983 ± 0.02"
    );
    ensure!(h["shadow"]["errors"] == 0, "{}", h["shadow"]);
    ensure!(h["shadow"]["verdict"] == "AGREES", "{}", h["shadow"]);

    // The underfit v2 as the shadow instead: 61.3 % agreement, below the
    // policy's minimum of 90 %.
    start_shadow(&c, "v2", 100.0).await?;
    let h = compared(&c, "v2", 1000).await?;
    let v2_agrees = agreement(&h)?;
    println!(
        "v2 as shadow: prediction agreement {:.1} %; shadow {}",
        v2_agrees * 100.0,
        h["shadow"]
    );
    ensure!(
        (v2_agrees - 0.613).abs() <= 0.03,
        "v2 agrees on {v2_agrees}, expected 0.613 ± 0.03"
    );
    let is_disagreement = |e: &coalmine_client::types::StoredEvent, field: &str| {
        e.event.kind.as_str() == "shadow_disagrees" && e.event.numbers["field"] == field
    };
    let events = poll("shadow_disagrees", Duration::from_secs(30), || async {
        let events = c.events_after(0).await?;
        let found = events.iter().any(|e| is_disagreement(e, "prediction"));
        Ok(found.then_some(events))
    })
    .await?;
    let kinds = coalmine_e2e::kinds(&events);
    println!("events: {kinds:?}");
    let v2_started = kinds
        .iter()
        .rposition(|k| *k == "shadow_started")
        .context("no shadow_started")?;
    ensure!(
        !kinds[..v2_started].contains(&"shadow_disagrees"),
        "v3 never disagreed: {kinds:?}"
    );
    let disagrees = events
        .iter()
        .find(|e| is_disagreement(e, "prediction"))
        .context("no disagreement on the prediction")?;
    println!("{}: {:?}", disagrees.event.reason, disagrees.event.numbers);
    ensure!(disagrees.event.actor == "engine");
    ensure!(
        health(&c).await?["shadow"]["verdict"] == "DISAGREES",
        "the verdict says so"
    );

    stop_shadow(&c).await?;
    ensure!(health(&c).await?["shadow"].is_null());
    let kinds = c.event_kinds(DEPLOYMENT).await?;
    let count = |k: &str| kinds.iter().filter(|e| *e == k).count();
    ensure!(
        kinds
            .iter()
            .all(|k| !k.contains("canary") && k != "promoted"),
        "a shadow never touches the split: {kinds:?}"
    );
    ensure!(
        count("shadow_started") == 2 && count("shadow_stopped") == 1,
        "{kinds:?}"
    );
    // Users were answered by production alone.
    let samples = load.samples();
    ensure!(
        samples.iter().all(|s| s.status == 200),
        "a user got an error"
    );
    // Requests before the first sync pass through untagged; every other
    // was the baseline's.
    ensure!(
        samples
            .iter()
            .all(|s| s.role.is_none() || s.role.as_deref() == Some("baseline")),
        "a user was answered by another role"
    );
    ensure!(samples.iter().filter(|s| s.role.is_some()).count() >= 2000);
    drop(load);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copies_reach_the_shadow_marked_and_without_routing_headers() -> Result<()> {
    let _shared = QUIET.read().await;
    let v1 = Upstream::start("heart-v1").await?;
    let v3 = Upstream::start("heart-v3").await?;
    let c = ControllerProc::start(LEASE_MS).await?;
    let config = EnvoyConfig::shipped("envoy.yaml")?
        .upstream("heart-v1", v1.addr)?
        .upstream("heart-v3", v3.addr)?
        .controller(&c)?
        .plugin_config(&plugin_reading_outputs(LEASE_MS)?)?;
    let envoy = Envoy::start_as(config, "proxy-a").await?;
    c.heart_prod(json!({"check_interval_seconds": 1})).await?;
    register_v3(&c).await?;
    start_shadow(&c, "v3", 100.0).await?;
    let client = reqwest::Client::new();
    // The split with the shadow reaches the proxy within a sync or two.
    poll("the first copy", Duration::from_secs(15), || async {
        client
            .post(envoy.url("/predict/heart"))
            .json(&json!({"age": 63}))
            .send()
            .await?;
        Ok((v3.count() > 0).then_some(()))
    })
    .await?;
    let before = (v1.count(), v3.count());
    for i in 0..50 {
        let resp = client
            .post(envoy.url("/predict/heart?from=user"))
            // A client trying to pass for a copy, or to choose the shadow.
            .header("x-coalmine-shadow", "1")
            .header("x-coalmine-cluster", "heart-v3")
            .header("x-user-id", format!("user-{i}"))
            .json(&json!({"age": 63}))
            .send()
            .await?;
        ensure!(resp.status() == 200);
        let h = |n: &str| resp.headers().get(n).and_then(|v| v.to_str().ok());
        ensure!(
            h("x-served-by") == Some("heart-v1"),
            "a user got {:?}",
            h("x-served-by")
        );
        ensure!(h("x-coalmine-version") == Some("v1"));
        ensure!(
            h("x-coalmine-shadow").is_none(),
            "a copy's header reached a user"
        );
    }
    let copies = poll("50 copies", Duration::from_secs(10), || async {
        Ok((v3.count() >= before.1 + 50).then(|| v3.seen()))
    })
    .await?;
    ensure!(v1.count() == before.0 + 50, "each user request served once");
    ensure!(!copies.is_empty());
    for seen in &copies {
        // As the baseline got it: the route's prefix_rewrite applied.
        ensure!(seen.path == "/predict", "a copy went to {}", seen.path);
        ensure!(
            seen.coalmine_headers == ["x-coalmine-shadow"],
            "a copy carried {:?}",
            seen.coalmine_headers
        );
    }
    // A header value that is not UTF-8 (Envoy lets bytes 0x80-0xff
    // through): the user is served, the copy is counted, nothing breaks.
    let latin1 = reqwest::header::HeaderValue::from_bytes(b"caf\xe9")?;
    for _ in 0..3 {
        let resp = client
            .post(envoy.url("/predict/heart"))
            .header("x-note", latin1.clone())
            .json(&json!({"age": 63}))
            .send()
            .await?;
        ensure!(resp.status() == 200, "{}", resp.status());
    }
    let h = poll(
        "the copies counted refused",
        Duration::from_secs(15),
        || async {
            let h = health(&c).await?;
            Ok((h["shadow"]["skipped"]["refused"].as_u64() >= Some(3)).then_some(h))
        },
    )
    .await?;
    println!("shadow after non-UTF-8 headers: {}", h["shadow"]);
    let log = envoy.log();
    ensure!(
        !log.contains("panicked") && !log.contains("wasm trap"),
        "the filter failed:\n{log}"
    );
    Ok(())
}

/// Latencies and errors users saw over `n` requests, one after another.
struct Seen {
    p50_ms: f64,
    p99_ms: f64,
    errors: usize,
    /// Answers whose version or body was not production's.
    foreign: usize,
}

async fn users(
    client: &reqwest::Client,
    envoy: &Envoy,
    bodies: &[Value],
    n: usize,
) -> Result<Seen> {
    let mut ms = Vec::with_capacity(n);
    let (mut errors, mut foreign) = (0, 0);
    for body in bodies.iter().cycle().take(n) {
        let t = Instant::now();
        let resp = client
            .post(envoy.url("/predict/heart"))
            .json(body)
            .send()
            .await?;
        let status = resp.status();
        let shadow_header = resp.headers().contains_key("x-coalmine-shadow");
        let version = resp
            .headers()
            .get("x-coalmine-version")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let answer: Value = resp.json().await.unwrap_or(Value::Null);
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        errors += usize::from(status != 200);
        foreign += usize::from(
            shadow_header || version.as_deref() != Some("v1") || answer["model_version"] != "v1",
        );
    }
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 * q) as usize).min(ms.len() - 1)];
    Ok(Seen {
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        errors,
        foreign,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_or_failing_shadow_changes_nothing_for_users() -> Result<()> {
    let _alone = QUIET.write().await;
    let dir = tempfile::tempdir()?;
    let v1 = ModelServer::trained(dir.path(), "v1", Training::FULL).await?;
    let v3 = ModelServer::trained_with_faults(dir.path(), "v3", Training::RETRAINED).await?;
    let c = ControllerProc::start(LEASE_MS).await?;
    let config = EnvoyConfig::shipped("envoy.yaml")?
        .upstream("heart-v1", v1.addr)?
        .upstream("heart-v3", v3.addr)?
        .controller(&c)?
        .plugin_config(&plugin_reading_outputs(LEASE_MS)?)?;
    let envoy = Envoy::start_as(config, "proxy-a").await?;
    c.heart_prod(json!({"check_interval_seconds": 1, "window_seconds": 600}))
        .await?;
    let client = reqwest::Client::new();
    register_v3(&c).await?;
    let bodies = patients()?;
    const N: usize = 400;
    // The controller's split in force: users answered through coalmine.
    poll(
        "the controller's split",
        Duration::from_secs(15),
        || async {
            let resp = client
                .post(envoy.url("/predict/heart"))
                .json(&bodies[0])
                .send()
                .await?;
            Ok(resp
                .headers()
                .contains_key("x-coalmine-version")
                .then_some(()))
        },
    )
    .await?;
    // Warm every connection, then the same run without a shadow.
    users(&client, &envoy, &bodies, 50).await?;
    let without = users(&client, &envoy, &bodies, N).await?;

    // A shadow that takes 500 ms to answer.
    v3.set_faults(&client, json!({"extra_latency_ms": 500}))
        .await?;
    start_shadow(&c, "v3", 100.0).await?;
    poll("copies under way", Duration::from_secs(15), || async {
        users(&client, &envoy, &bodies, 5).await?;
        let h = health(&c).await?;
        Ok((h["shadow"]["requests"].as_u64().unwrap_or(0) > 0).then_some(()))
    })
    .await?;
    let slow = users(&client, &envoy, &bodies, N).await?;
    let h = poll(
        "the slow shadow's latency",
        Duration::from_secs(15),
        || async {
            let h = health(&c).await?;
            Ok((h["shadow"]["requests"].as_u64().unwrap_or(0) >= 50).then_some(h))
        },
    )
    .await?;
    let shadow_p50 = h["shadow"]["p50_ms"].as_f64().unwrap_or(0.0);
    println!("slow shadow as the controller saw it: {}", h["shadow"]);
    ensure!(
        shadow_p50 >= 450.0,
        "the shadow was not slow: p50 {shadow_p50} ms"
    );

    // A shadow that fails every request.
    v3.set_faults(&client, json!({"extra_latency_ms": 0, "error_rate": 1.0}))
        .await?;
    let errors_before = h["shadow"]["errors"].as_u64().unwrap_or(0);
    let failing = users(&client, &envoy, &bodies, N).await?;
    let h = poll(
        "the failing shadow's errors",
        Duration::from_secs(15),
        || async {
            let h = health(&c).await?;
            let errors = h["shadow"]["errors"].as_u64().unwrap_or(0);
            Ok((errors >= errors_before + 100).then_some(h))
        },
    )
    .await?;
    println!("failing shadow as the controller saw it: {}", h["shadow"]);

    for (name, seen) in [("none", &without), ("slow", &slow), ("failing", &failing)] {
        println!(
            "users with shadow {name:<8} p50 {:6.2} ms  p99 {:6.2} ms  errors {}  answers not production's {}",
            seen.p50_ms, seen.p99_ms, seen.errors, seen.foreign
        );
    }
    for (name, seen) in [("slow", &slow), ("failing", &failing)] {
        ensure!(
            seen.errors == 0 && seen.foreign == 0,
            "{name}: users affected"
        );
        // Within noise: a user who waited for the shadow would wait 500 ms.
        ensure!(
            seen.p50_ms <= without.p50_ms * 1.5 + 2.0,
            "{name}: p50 {} ms against {} ms without a shadow",
            seen.p50_ms,
            without.p50_ms
        );
        ensure!(
            seen.p99_ms <= without.p99_ms * 2.0 + 20.0,
            "{name}: p99 {} ms against {} ms without a shadow",
            seen.p99_ms,
            without.p99_ms
        );
    }
    ensure!(without.errors == 0 && without.foreign == 0);
    Ok(())
}
